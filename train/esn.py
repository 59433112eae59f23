"""Echo state network: a fixed random Elman reservoir, a ridge-regression readout.

numpy alone: seconds to fit, and a Pi can fit one on its own data. The result is
an ordinary Elman RNN + linear head (same weight names as the PyTorch Forecaster),
so it exports as the same kind of graph.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from edgernn.train.config import TrainConfig
from edgernn.train.data import target_of


def init_reservoir(cfg: TrainConfig, n_channels: int, rng: np.random.Generator) -> dict:
    """Random input and recurrent weights; each recurrent matrix scaled to the spectral radius."""
    h = cfg.hidden
    weights = {}
    for layer in range(cfg.layers):
        n_in = n_channels if layer == 0 else h
        w_in = rng.uniform(-1.0, 1.0, (h, n_in)) * cfg.input_scale
        w = rng.standard_normal((h, h))
        radius = np.max(np.abs(np.linalg.eigvals(w)))
        w *= cfg.spectral_radius / radius
        weights[f"rnn.weight_ih_l{layer}"] = w_in
        weights[f"rnn.weight_hh_l{layer}"] = w
        weights[f"rnn.bias_ih_l{layer}"] = rng.uniform(-0.1, 0.1, h)
        weights[f"rnn.bias_hh_l{layer}"] = np.zeros(h)
    return {k: v.astype(np.float32) for k, v in weights.items()}


def run_reservoir(weights: dict, xn: np.ndarray, layers: int, nonlinearity: str) -> np.ndarray:
    """Hidden states of the last layer for a normalised sequence xn (T, C) from zero state."""
    act = np.tanh if nonlinearity == "tanh" else (lambda v: np.maximum(v, 0.0))
    seq = xn.astype(np.float64)
    for layer in range(layers):
        w_in = weights[f"rnn.weight_ih_l{layer}"].astype(np.float64)
        w = weights[f"rnn.weight_hh_l{layer}"].astype(np.float64)
        b = (weights[f"rnn.bias_ih_l{layer}"] + weights[f"rnn.bias_hh_l{layer}"]).astype(np.float64)
        drive = seq @ w_in.T + b  # (T, H): the input part of every step at once
        h = np.zeros(w.shape[0])
        out = np.empty((len(seq), w.shape[0]))
        for t in range(len(seq)):
            h = act(drive[t] + w @ h)
            out[t] = h
        seq = out
    return seq  # (T, H)


def predict(weights: dict, xn: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """Normalised forecasts (T, C) for a normalised sequence, as the exported graph computes."""
    states = run_reservoir(weights, xn, cfg.layers, cfg.nonlinearity)
    y = states @ weights["head.weight"].T.astype(np.float64) + weights["head.bias"]
    if cfg.residual:
        y = y + xn
    return y.astype(np.float32)


def fit_esn(
    cfg: TrainConfig,
    train_parts: Iterable[np.ndarray],
    n_channels: int,
    target_parts: Iterable[np.ndarray] | None = None,
) -> dict:
    """Reservoir weights + ridge readout fitted on the training parts (normalised).

    The readout forecasts (the next sample, or its change), or, given `target_parts`
    (normalised (T_i, K) per file, --task regress), estimates those targets at each step.
    The normal equations are accumulated file by file, so only one file's reservoir
    states are ever in memory.
    """
    rng = np.random.default_rng(cfg.seed)
    weights = init_reservoir(cfg, n_channels, rng)
    targets = iter(target_parts) if target_parts is not None else None
    gram = np.zeros((cfg.hidden + 1, cfg.hidden + 1))  # phi1' phi1, phi1 = [states, 1]
    cross = 0.0  # phi1' y, (H + 1, outputs) after the first file
    n = 0
    for part in train_parts:
        states = run_reservoir(weights, part, cfg.layers, cfg.nonlinearity)
        if targets is None:
            _, target = target_of(part, cfg.horizon, cfg.residual)
        else:
            target = next(targets)
        washout = min(cfg.washout, max(len(target) - 1, 0))
        phi = states[washout : len(target)]  # (N_i, H)
        phi1 = np.hstack([phi, np.ones((len(phi), 1))])  # bias column
        gram += phi1.T @ phi1
        cross = cross + phi1.T @ target[washout:]
        n += len(phi)
    reg = cfg.ridge * n * np.eye(cfg.hidden + 1)
    reg[-1, -1] = 0.0  # the bias is not shrunk
    w_out = np.linalg.solve(gram + reg, cross)  # (H + 1, outputs)
    weights["head.weight"] = w_out[:-1].T.astype(np.float32)  # (outputs, H)
    weights["head.bias"] = w_out[-1].astype(np.float32)  # (outputs,)
    return weights
