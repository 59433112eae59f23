"""The forecaster: a (stacked) recurrent cell and a linear head, normalisation inside.

forward(x, state) -> (y, new_state), x and y in raw sensor units. The same module
runs a whole sequence for training and one step for export, so the exported graph
is the trained network, not a re-implementation of it.
"""

from __future__ import annotations

import torch
from torch import nn

from edgernn.train.config import ModelConfig


class Forecaster(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c, h = config.n_channels, config.hidden
        kwargs = dict(
            input_size=c,
            hidden_size=h,
            num_layers=config.layers,
            batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        cell = config.graph_cell
        if cell == "rnn":
            self.rnn = nn.RNN(nonlinearity=config.nonlinearity, **kwargs)
        elif cell == "lstm":
            self.rnn = nn.LSTM(**kwargs)
        else:
            self.rnn = nn.GRU(**kwargs)
        self.head = nn.Linear(h, c)
        # Normalisation travels with the weights (and into the exported graph).
        self.register_buffer("mean", torch.zeros(c))
        self.register_buffer("std", torch.ones(c))

    @property
    def n_state(self) -> int:
        return 2 if self.config.graph_cell == "lstm" else 1

    def init_state(self, batch: int, device=None) -> tuple[torch.Tensor, ...]:
        shape = (self.config.layers, batch, self.config.hidden)
        return tuple(torch.zeros(shape, device=device) for _ in range(self.n_state))  # (L, B, H)

    def set_normalisation(self, mean, std) -> None:
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, ...] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """x: (B, T, C) raw units; state: tuple of (L, B, H). Returns y (B, T, C) raw units."""
        xn = (x - self.mean) / self.std  # (B, T, C)
        yn, new_state = self.forward_normalised(xn, state)
        return yn * self.std + self.mean, new_state

    def forward_normalised(self, xn: torch.Tensor, state=None):
        """Training path: normalised in, normalised out (keeps the loss scale-free)."""
        if state is None:
            state = self.init_state(xn.shape[0], xn.device)
        rnn_state = state if self.n_state == 2 else state[0]
        out, new = self.rnn(xn, rnn_state)  # (B, T, H)
        new_state = tuple(new) if self.n_state == 2 else (new,)
        yn = self.head(out)  # (B, T, C)
        if self.config.residual:
            yn = yn + xn
        return yn, new_state


class SingleStep(nn.Module):
    """Export wrapper: one time step, state in and out as separate named tensors."""

    def __init__(self, model: Forecaster):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, *state: torch.Tensor):
        y, new_state = self.model(x.unsqueeze(1), tuple(state))  # x: (B, C) -> (B, 1, C)
        return (y.squeeze(1), *new_state)  # (B, C), (L, B, H)...
