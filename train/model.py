"""The network: a (stacked) recurrent cell and a linear head, normalisation inside.

forward(x, state) -> (y, new_state), x in raw sensor units. y is, by the config's task:
forecast, the next sample of every channel (raw units); regress, the target columns at
this step (raw units, the head works in the targets' normalised units); classify, one
logit per class (SingleStep adds the probabilities). The same module runs a whole
sequence for training and one step for export, so the exported graph is the trained
network, not a re-implementation of it.
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
        self.head = nn.Linear(h, config.n_outputs)
        # Normalisation travels with the weights (and into the exported graph).
        self.register_buffer("mean", torch.zeros(c))
        self.register_buffer("std", torch.ones(c))
        if config.task == "regress":  # the targets' own scale: the loss is per-target z-scores
            self.register_buffer("target_mean", torch.zeros(config.n_outputs))
            self.register_buffer("target_std", torch.ones(config.n_outputs))

    @property
    def n_state(self) -> int:
        return 2 if self.config.graph_cell == "lstm" else 1

    def init_state(self, batch: int, device=None) -> tuple[torch.Tensor, ...]:
        shape = (self.config.layers, batch, self.config.hidden)
        return tuple(torch.zeros(shape, device=device) for _ in range(self.n_state))  # (L, B, H)

    def set_normalisation(self, mean, std, target_mean=None, target_std=None) -> None:
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(std, dtype=torch.float32))
        if target_mean is not None:
            self.target_mean.copy_(torch.as_tensor(target_mean, dtype=torch.float32))
            self.target_std.copy_(torch.as_tensor(target_std, dtype=torch.float32))

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, ...] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """x: (B, T, C) raw units; state: tuple of (L, B, H). Returns y (B, T, n_outputs):
        raw units (forecast, regress) or logits (classify)."""
        xn = (x - self.mean) / self.std  # (B, T, C)
        yn, new_state = self.forward_normalised(xn, state)
        return self.denormalise(yn), new_state

    def denormalise(self, yn: torch.Tensor) -> torch.Tensor:
        """The head's output in the units the task reports."""
        task = self.config.task
        if task == "forecast":
            return yn * self.std + self.mean
        if task == "regress":
            return yn * self.target_std + self.target_mean
        return yn  # logits

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
    """Export wrapper: one time step, state in and out as separate named tensors.

    Outputs: y (B, n_outputs) then the states; a classifier returns its class
    probabilities first, then the logits, then the states."""

    def __init__(self, model: Forecaster):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, *state: torch.Tensor):
        y, new_state = self.model(x.unsqueeze(1), tuple(state))  # x: (B, C) -> (B, 1, C)
        y = y.squeeze(1)
        if self.model.config.task == "classify":
            return (torch.softmax(y, dim=-1), y, *new_state)  # (B, K), (B, K), (L, B, H)...
        return (y, *new_state)  # (B, n_outputs), (L, B, H)...
