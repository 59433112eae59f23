"""Training data: chronological split, normalisation, windows, metrics. numpy only.

Each file is an independent sequence: windows never straddle two files and state
never flows from one file into the next. The last `val_frac` of every file is its
validation part; normalisation statistics come from the training parts alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgernn.errors import DataError
from edgernn.runtime.csvdata import Table


@dataclass
class SplitData:
    channels: list[str]
    files: list[str]
    series: list[np.ndarray]  # whole files, normalised, (T_i, C) float32
    split: list[int]  # index of the first validation row of each file
    mean: np.ndarray  # (C,)
    std: np.ndarray  # (C,)

    def train_parts(self) -> list[np.ndarray]:
        return [s[:k] for s, k in zip(self.series, self.split)]

    @property
    def n_train_rows(self) -> int:
        return int(sum(self.split))


def normalisation(parts: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per channel over the training parts; constant channels get std 1."""
    stacked = np.concatenate(parts, axis=0).astype(np.float64)
    mean = stacked.mean(axis=0)
    std = stacked.std(axis=0)
    tiny = std <= 1e-8 * np.maximum(1.0, np.abs(mean))
    std[tiny] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def split_tables(
    tables: Sequence[Table], val_frac: float, horizon: int, min_train: int = 8
) -> SplitData:
    if not 0.0 < val_frac < 1.0:
        raise DataError(f"val_frac must be between 0 and 1, got {val_frac}")
    splits = []
    for t in tables:
        n = len(t)
        n_val = max(int(round(n * val_frac)), horizon + 1)
        k = n - n_val
        if k < min_train + horizon:
            raise DataError(
                f"{t.path}: {n} rows is too short to train on with validation fraction "
                f"{val_frac} and horizon {horizon} (need at least {min_train + horizon + n_val})"
            )
        splits.append(k)
    mean, std = normalisation([t.values[:k] for t, k in zip(tables, splits)])
    return SplitData(
        channels=list(tables[0].channels),
        files=[t.path for t in tables],
        series=[((t.values - mean) / std).astype(np.float32) for t in tables],
        split=splits,
        mean=mean,
        std=std,
    )


def target_of(xn: np.ndarray, horizon: int, residual: bool) -> tuple[np.ndarray, np.ndarray]:
    """Inputs x[0:T-h] and the head's targets: x[t+h], or x[t+h] - x[t] when residual."""
    inputs = xn[:-horizon]
    target = xn[horizon:]
    return inputs, (target - inputs if residual else target)


def sample_windows(
    parts: Sequence[np.ndarray], window: int, horizon: int, batch: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A batch of (input, target) windows from random files and offsets.

    Returns X (B, W, C) and Y (B, W, C) where Y[:, t] = x[s + t + horizon].
    Files are drawn in proportion to the windows they hold.
    """
    usable = np.array([max(len(p) - horizon - window + 1, 0) for p in parts], dtype=np.float64)
    if usable.sum() == 0:
        w = min(len(p) - horizon for p in parts)
        raise DataError(f"window {window} is longer than the training parts allow (max {w})")
    files = rng.choice(len(parts), size=batch, p=usable / usable.sum())
    X = np.empty((batch, window, parts[0].shape[1]), dtype=np.float32)
    Y = np.empty_like(X)
    for b, f in enumerate(files):
        s = int(rng.integers(0, int(usable[f])))
        X[b] = parts[f][s : s + window]
        Y[b] = parts[f][s + horizon : s + horizon + window]
    return X, Y


def lanes(part: np.ndarray, horizon: int, n_lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut one file into n contiguous lanes for truncated BPTT: X, Y (lanes, L, C)."""
    inputs, target = part[:-horizon], part[horizon:]
    n_lanes = max(1, min(n_lanes, len(inputs) // 2))
    length = len(inputs) // n_lanes
    cut = n_lanes * length
    shape = (n_lanes, length, part.shape[1])
    return inputs[:cut].reshape(shape), target[:cut].reshape(shape)


def forecast_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R² in normalised units, averaged over channels."""
    err = y_pred - y_true
    sst = ((y_true - y_true.mean(axis=0)) ** 2).sum(axis=0)
    sse = (err**2).sum(axis=0)
    r2 = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), 0.0)
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "r2": float(np.mean(r2)),
    }


def robust_scale(errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and 1.4826 * MAD per channel (a std estimate that ignores outliers)."""
    med = np.median(errors, axis=0)
    mad = 1.4826 * np.median(np.abs(errors - med), axis=0)
    floor = 1e-6 * np.maximum(np.abs(errors).mean(axis=0), 1e-12)
    return med, np.maximum(mad, floor)


def validation_forecasts(
    data: SplitData, predict, horizon: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forecasts made from inside each validation part, state warmed on the training part.

    predict(xn (T, C)) -> normalised forecasts (T, C), run causally from the zero state
    over the whole file. Returns (forecast, truth, persistence), each (N, C), normalised.
    """
    preds, truths, persist = [], [], []
    for xn, k in zip(data.series, data.split):
        y = predict(xn)
        t = np.arange(k, len(xn) - horizon)
        preds.append(y[t])
        truths.append(xn[t + horizon])
        persist.append(xn[t])
    return np.concatenate(preds), np.concatenate(truths), np.concatenate(persist)
