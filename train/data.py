"""Training data: chronological split, normalisation, windows, metrics. numpy only.

Each file is an independent sequence: windows never straddle two files and state
never flows from one file into the next. The last `val_frac` of every file is its
validation part; normalisation statistics come from the training parts alone.

Nothing here holds the whole data set normalised in memory: the raw values may be
memory maps (train/logs.py), statistics are accumulated chunk by chunk, and windows,
lane chunks and validation files are normalised when they are used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgernn.errors import DataError

STATS_CHUNK = 1 << 16  # rows per chunk when accumulating normalisation statistics


@dataclass
class SplitData:
    channels: list[str]
    files: list[str]
    raw: list[np.ndarray]  # whole files in raw units, (T_i, C) float32, possibly memory maps
    split: list[int]  # index of the first validation row of each file
    mean: np.ndarray  # (C,)
    std: np.ndarray  # (C,)
    # Tasks other than forecasting (train/tasks.py) carry per-step targets beside the inputs:
    task: str = "forecast"
    targets: list[np.ndarray] = field(default_factory=list)  # per file: regress (T_i, K) raw
    # values, possibly memory maps; classify (T_i,) int64 class indices
    target_names: list[str] = field(default_factory=list)  # regress: the target columns
    classes: list[str] = field(default_factory=list)  # classify: class names, index order
    target_mean: np.ndarray | None = None  # regress: (K,) from the training parts
    target_std: np.ndarray | None = None

    def normalise(self, values: np.ndarray) -> np.ndarray:
        return ((np.asarray(values, dtype=np.float32) - self.mean) / self.std).astype(np.float32)

    def normalise_targets(self, values: np.ndarray) -> np.ndarray:
        """What the head is trained to output: z-scored targets, or class indices."""
        if self.task == "classify":
            return np.asarray(values, dtype=np.int64)
        v = np.asarray(values, dtype=np.float32)
        return ((v - self.target_mean) / self.target_std).astype(np.float32)

    @property
    def loss_terms(self) -> int:
        """Loss elements per time step: one per forecast channel or target, one per label."""
        return {"forecast": self.n_channels, "regress": len(self.target_names),
                "classify": 1}[self.task]  # fmt: skip

    def series(self, i: int) -> np.ndarray:
        """File i, whole and normalised: (T_i, C)."""
        return self.normalise(self.raw[i])

    def train_part(self, i: int) -> np.ndarray:
        return self.normalise(self.raw[i][: self.split[i]])

    def train_parts(self) -> Iterator[np.ndarray]:
        """The normalised training parts, one file at a time."""
        return (self.train_part(i) for i in range(len(self.raw)))

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def n_train_rows(self) -> int:
        return int(sum(self.split))

    @property
    def n_val_rows(self) -> int:
        return int(sum(len(r) for r in self.raw)) - self.n_train_rows


def normalisation(parts: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per channel over the training parts; constant channels get std 1.

    Chunk by chunk (Chan et al.'s pairwise update, float64), so memory-mapped parts are
    read once and never copied whole.
    """
    n, mean, m2 = 0, 0.0, 0.0
    for part in parts:
        for s in range(0, len(part), STATS_CHUNK):
            x = np.asarray(part[s : s + STATS_CHUNK], dtype=np.float64)  # (n_b, C)
            n_b, mean_b = len(x), x.mean(axis=0)
            m2_b = ((x - mean_b) ** 2).sum(axis=0)
            delta, total = mean_b - mean, n + n_b
            mean = mean + delta * (n_b / total)
            m2 = m2 + m2_b + delta**2 * (n * n_b / total)
            n = total
    mean, std = np.asarray(mean), np.sqrt(np.asarray(m2) / n)
    tiny = std <= 1e-8 * np.maximum(1.0, np.abs(mean))
    std[tiny] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def train_rows(n: int, val_frac: float, horizon: int) -> tuple[int, int]:
    """(training rows, validation rows) of a file of n rows."""
    n_val = max(int(round(n * val_frac)), horizon + 1)
    return n - n_val, n_val


def long_enough(n: int, val_frac: float, horizon: int, min_train: int = 8) -> bool:
    """Whether split_tables can split a file of n rows."""
    return train_rows(n, val_frac, horizon)[0] >= min_train + horizon


def split_tables(tables: Sequence, val_frac: float, horizon: int, min_train: int = 8) -> SplitData:
    """Split every file (anything with .path and .values (T, C): a Table or a LogFile)."""
    if not 0.0 < val_frac < 1.0:
        raise DataError(f"val_frac must be between 0 and 1, got {val_frac}")
    splits = []
    for t in tables:
        n = len(t.values)
        k, n_val = train_rows(n, val_frac, horizon)
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
        raw=[t.values for t in tables],
        split=splits,
        mean=mean,
        std=std,
    )


def target_of(xn: np.ndarray, horizon: int, residual: bool) -> tuple[np.ndarray, np.ndarray]:
    """Inputs x[0:T-h] and the head's targets: x[t+h], or x[t+h] - x[t] when residual."""
    inputs = xn[:-horizon]
    target = xn[horizon:]
    return inputs, (target - inputs if residual else target)


# ------------------------------------------------------------------- random windows
def usable_starts(data: SplitData, window: int, horizon: int) -> np.ndarray:
    """Window start positions available in each file's training part: (n_files,)."""
    usable = np.array([max(k - horizon - window + 1, 0) for k in data.split], dtype=np.int64)
    if usable.sum() == 0:
        w = min(data.split) - horizon
        raise DataError(f"window {window} is longer than the training parts allow (max {w})")
    return usable


def draw_windows(
    usable: np.ndarray, batch: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(file, start) of `batch` random windows; files drawn in proportion to their windows.

    Only indices are drawn, so every rank can draw the same global batch and read the
    data of its own share alone.
    """
    files = rng.choice(len(usable), size=batch, p=usable / usable.sum())
    starts = rng.integers(0, usable[files])
    return files, starts


def gather_windows(
    data: SplitData, files: np.ndarray, starts: np.ndarray, window: int, horizon: int
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised windows: X (B, W, C) and Y (B, W, C) where Y[:, t] = x[s + t + horizon]."""
    seg = np.empty((len(files), window + horizon, data.n_channels), dtype=np.float32)
    for b, (f, s) in enumerate(zip(files, starts)):
        seg[b] = data.raw[f][s : s + window + horizon]
    seg = data.normalise(seg)
    return seg[:, :window], seg[:, horizon:]


def sample_windows(
    data: SplitData, window: int, horizon: int, batch: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A batch of random (input, target) windows from the training parts."""
    files, starts = draw_windows(usable_starts(data, window, horizon), batch, rng)
    return gather_windows(data, files, starts, window, horizon)


# -------------------------------------------------------------------- truncated BPTT
def n_lanes_for(rows: int, horizon: int, n_lanes: int, at_least: int = 1) -> int:
    return max(at_least, min(n_lanes, (rows - horizon) // 2))


def lanes(part: np.ndarray, horizon: int, n_lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut one file into n contiguous lanes for truncated BPTT: X, Y (lanes, L, C).

    Views, not copies: on a memory map nothing is read until a chunk is sliced out.
    """
    inputs, target = part[:-horizon], part[horizon:]
    length = len(inputs) // n_lanes
    cut = n_lanes * length
    shape = (n_lanes, length, part.shape[1])
    return inputs[:cut].reshape(shape), target[:cut].reshape(shape)


# ------------------------------------------------------------------------- metrics
class MetricSums:
    """RMSE, MAE and R² (normalised units, averaged over channels) from running sums."""

    def __init__(self, n_channels: int):
        self.n = 0
        self.sse = np.zeros(n_channels)
        self.sae = np.zeros(n_channels)
        self.sum_y = np.zeros(n_channels)
        self.sum_yy = np.zeros(n_channels)

    def add(self, y_true: np.ndarray, y_pred: np.ndarray) -> None:
        y = np.asarray(y_true, dtype=np.float64)
        err = np.asarray(y_pred, dtype=np.float64) - y
        self.n += len(y)
        self.sse += (err**2).sum(axis=0)
        self.sae += np.abs(err).sum(axis=0)
        self.sum_y += y.sum(axis=0)
        self.sum_yy += (y**2).sum(axis=0)

    def result(self) -> dict[str, float]:
        n = max(self.n, 1)
        sst = np.maximum(self.sum_yy - self.sum_y**2 / n, 0.0)
        r2 = np.where(sst > 0, 1.0 - self.sse / np.where(sst > 0, sst, 1.0), 0.0)
        size = n * len(self.sse)
        return {
            "rmse": float(math.sqrt(self.sse.sum() / size)),
            "mae": float(self.sae.sum() / size),
            "r2": float(np.mean(r2)),
        }


def forecast_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R² in normalised units, averaged over channels."""
    sums = MetricSums(y_true.shape[1])
    sums.add(y_true, y_pred)
    return sums.result()


def robust_scale(errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and 1.4826 * MAD per channel (a std estimate that ignores outliers)."""
    med = np.median(errors, axis=0)
    mad = 1.4826 * np.median(np.abs(errors - med), axis=0)
    floor = 1e-6 * np.maximum(np.abs(errors).mean(axis=0), 1e-12)
    return med, np.maximum(mad, floor)


# ---------------------------------------------------------------------- validation
Predict = Callable[[np.ndarray], np.ndarray]


def validation_parts(
    data: SplitData, predict: Predict, horizon: int, files: Sequence[int] | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per file: (forecast, truth, persistence), each (N_i, C), normalised.

    Forecasts are made from inside each validation part with the state warmed on the
    training part: predict(xn (T, C)) runs causally from the zero state over the file.
    """
    for i in range(len(data.raw)) if files is None else files:
        xn, k = data.series(i), data.split[i]
        y = predict(xn)
        t = np.arange(k, len(xn) - horizon)
        yield y[t], xn[t + horizon], xn[t]


def validation_sse(
    data: SplitData, predict: Predict, horizon: int, files: Sequence[int] | None = None
) -> tuple[float, int]:
    """Sum of squared normalised errors and their count over the given files' validation."""
    sse, count = 0.0, 0
    for pred, truth, _ in validation_parts(data, predict, horizon, files):
        sse += float(((pred.astype(np.float64) - truth) ** 2).sum())
        count += pred.size
    return sse, count


def validation_summary(
    data: SplitData, predict: Predict, horizon: int, max_errors: int
) -> tuple[dict, dict, int, np.ndarray]:
    """Model and persistence metrics over every validation part, and the raw-unit errors.

    Returns (model metrics, persistence metrics, rows, errors (N, C)): every error when
    there are at most `max_errors`, else an even subsample across files (the detector's
    calibration needs their distribution, not all of them).
    """
    rows = sum(max(len(r) - k - horizon, 0) for r, k in zip(data.raw, data.split))
    stride = max(1, math.ceil(rows / max_errors))
    model, persistence = MetricSums(data.n_channels), MetricSums(data.n_channels)
    kept, seen = [], 0
    for pred, truth, persist in validation_parts(data, predict, horizon):
        model.add(truth, pred)
        persistence.add(truth, persist)
        first = (-seen) % stride  # keep global rows 0, stride, 2*stride, ...
        kept.append(((pred - truth) * data.std)[first::stride])  # raw units
        seen += len(pred)
    errors = np.concatenate(kept).astype(np.float32)
    return model.result(), persistence.result(), rows, errors
