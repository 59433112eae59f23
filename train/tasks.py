"""Tasks beyond forecasting: regress target columns (a soft sensor) or classify each step.

regress (--target COL ...): the head estimates the target columns at step t from the
    other channels up to t; the loss is MSE in the targets' normalised units (z-scores of
    the training parts), the baseline predicts the training mean.
classify (--label COL): the head outputs one logit per class at every step; the loss is
    cross-entropy, the baseline always answers the training parts' majority class. Class
    names come from the label column (text, or integers ordered numerically); the label
    column is never an input.

Inputs and numeric targets go through the same parse-once, memory-mapped cache as
forecasting (train/logs.py); labels are cached as a column of strings. Rows and the
chronological split are the forecaster's: the last `val_frac` of each file validates.
numpy only.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator, Sequence

import numpy as np

from edgernn.errors import DataError
from edgernn.runtime.csvdata import sniff_delimiter
from edgernn.train.config import TrainConfig
from edgernn.train.data import (
    Predict,
    SplitData,
    forecast_metrics,
    normalisation,
    split_tables,
)
from edgernn.train.logs import _write_atomic, cache_key, expand_paths, load_logs


# --------------------------------------------------------------------------- loading
def load_task_data(
    paths: Sequence[str],
    cfg: TrainConfig,
    cache_dir: str,
    channels: Sequence[str] | None,
    ignore: Sequence[str],
    rank: int = 0,
    world: int = 1,
    barrier=None,
) -> SplitData:
    """Inputs, per-step targets and the split for cfg.task (regress or classify)."""
    columns = list(cfg.targets) if cfg.task == "regress" else [cfg.label]
    what = "--target" if cfg.task == "regress" else "--label"
    for name in columns:
        if channels is not None and name in channels:
            raise DataError(f"{what} {name!r} is also an input channel: leave it out of --channels")
        if name in ignore:
            raise DataError(f"{what} {name!r} is also in --ignore")
    for path in expand_paths(paths):  # name the flag when a column is missing
        header = read_header(path)
        missing = [c for c in columns if c not in header]
        if header and missing:  # no header: the CSV reader below says what is wrong
            raise DataError(f"{path}: no {what} column {missing[0]!r} "
                            f"(columns: {', '.join(header)})")  # fmt: skip
    # Without --channels the inputs are every numeric column but the targets/label.
    inputs = load_logs(paths, cache_dir, channels, list(ignore) + columns, rank, world, barrier)
    data = split_tables(inputs, cfg.val_frac, cfg.horizon, min_train=max(cfg.washout, 8))
    data.task = cfg.task
    if cfg.task == "regress":
        targets = load_logs(paths, cache_dir, columns, (), rank, world, barrier)
        data.targets = [t.values for t in targets]
        data.target_names = columns
        data.target_mean, data.target_std = normalisation(
            [t[:k] for t, k in zip(data.targets, data.split)]
        )
    else:
        labels = [read_labels(p, cfg.label, cache_dir) for p in data.files]
        data.classes = class_names(labels, cfg.label)
        data.targets = [class_indices(col, data.classes) for col in labels]
    for f, t, x in zip(data.files, data.targets, data.raw):
        if len(t) != len(x):  # the same rows of the same file: a changed file mid-read
            raise DataError(f"{f}: {len(t)} target rows for {len(x)} input rows; read again")
    return data


def read_labels(path: str, column: str, cache_dir: str) -> np.ndarray:
    """The label column of one CSV as strings, row-aligned with csvdata.read_csv (blank rows
    dropped); cached beside the parsed inputs."""
    cached = os.path.join(cache_dir, cache_key(path, [column], ["__labels__"]) + ".labels.npy")
    if os.path.isfile(cached):
        return np.load(cached, allow_pickle=False)
    labels = np.asarray(_parse_labels(path, column), dtype=str)
    os.makedirs(cache_dir, exist_ok=True)

    def save(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, labels)

    _write_atomic(cached, save)
    return labels


def read_header(path: str) -> list[str]:
    """The column names of one CSV (the reader proper reports empty or unreadable files)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            first = fh.readline()
    except (OSError, UnicodeDecodeError):
        return []
    return [h.strip() for h in next(csv.reader([first], delimiter=sniff_delimiter(first)), [])]


def _parse_labels(path: str, column: str) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            first = fh.readline()
            delim = sniff_delimiter(first)
            header = [h.strip() for h in next(csv.reader([first], delimiter=delim))]
            if column not in header:
                raise DataError(f"{path}: no label column {column!r} (columns: {', '.join(header)})")
            j = header.index(column)
            out = []
            for line_no, row in enumerate(csv.reader(fh, delimiter=delim), start=2):
                if not any(c.strip() for c in row):
                    continue  # read_csv drops blank rows too: the rows stay aligned
                cell = row[j].strip() if j < len(row) else ""
                if not cell:
                    raise DataError(f"{path}: row {line_no}, column {column!r}: missing label")
                out.append(cell)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read the label column ({e})") from e
    return out


def class_names(labels: Sequence[np.ndarray], column: str) -> list[str]:
    """Sorted distinct labels over every file: numerically when all are integers."""
    distinct = set().union(*(set(np.unique(col).tolist()) for col in labels))
    try:
        as_int = {c: int(c) for c in distinct}
        names = sorted(distinct, key=as_int.__getitem__)
    except ValueError:
        names = sorted(distinct)
    if len(names) < 2:
        only = names[0] if names else ""
        raise DataError(f"label column {column!r} holds a single class ({only!r}): "
                        "nothing to classify")  # fmt: skip
    return names


def class_indices(labels: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """Each label's position in `classes`: (T,) int64 (a lookup per distinct label)."""
    distinct, inverse = np.unique(labels, return_inverse=True)
    position = {c: i for i, c in enumerate(classes)}
    return np.array([position[c] for c in distinct.tolist()], dtype=np.int64)[inverse.ravel()]


# ------------------------------------------------------------------------ batches
def gather_task_windows(
    data: SplitData, files: np.ndarray, starts: np.ndarray, window: int
) -> tuple[np.ndarray, np.ndarray]:
    """X (B, W, C) normalised inputs; Y the targets of the same steps: (B, W, K) or (B, W)."""
    x = np.stack([data.raw[f][s : s + window] for f, s in zip(files, starts)])
    y = np.stack([data.targets[f][s : s + window] for f, s in zip(files, starts)])
    return data.normalise(x), data.normalise_targets(y)


def task_lanes(inputs: np.ndarray, targets: np.ndarray, n_lanes: int):
    """One file cut into n contiguous lanes for truncated BPTT (views): X, Y (lanes, L, ...)."""
    length = len(inputs) // n_lanes
    cut = n_lanes * length
    return (inputs[:cut].reshape(n_lanes, length, inputs.shape[1]),
            targets[:cut].reshape(n_lanes, length, *targets.shape[1:]))  # fmt: skip


# --------------------------------------------------------------------- validation
def validation_parts(
    data: SplitData, predict: Predict, files: Sequence[int] | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per file: (head output, normalised target) over its validation part, the state
    warmed on the training part; predict(xn (T, C)) -> (T, K) normalised / logits."""
    for i in range(len(data.raw)) if files is None else files:
        k = data.split[i]
        out = predict(data.series(i))
        yield out[k:], data.normalise_targets(data.targets[i][k:])


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def validation_loss(
    data: SplitData, predict: Predict, files: Sequence[int] | None = None
) -> tuple[float, int]:
    """(sum of losses, count) over the files' validation parts: squared errors (regress)
    or negative log-likelihoods (classify). Early stopping watches their mean."""
    total, count = 0.0, 0
    for out, truth in validation_parts(data, predict, files):
        if data.task == "classify":
            total -= float(log_softmax(out)[np.arange(len(truth)), truth].sum())
            count += len(truth)
        else:
            total += float(((out.astype(np.float64) - truth) ** 2).sum())
            count += truth.size
    return total, count


def score_from_loss(task: str, total: float, count: int) -> float:
    """The validation score training minimises: RMSE (normalised) or mean cross-entropy."""
    if not count:
        return math.nan
    return total / count if task == "classify" else math.sqrt(total / count)


def class_metrics(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> dict:
    """Accuracy, macro-F1 (over classes in the truth or the predictions) and the confusion
    matrix (rows: true class, columns: predicted)."""
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (truth, pred), 1)
    tp = np.diag(confusion).astype(np.float64)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    present = (support + predicted) > 0
    f1 = np.where(present, 2 * tp / np.maximum(support + predicted, 1), 0.0)
    return {
        "accuracy": float(tp.sum() / max(len(truth), 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "confusion": confusion.tolist(),
    }


def majority_class(data: SplitData) -> int:
    counts = sum(np.bincount(t[:k], minlength=len(data.classes))
                 for t, k in zip(data.targets, data.split))  # fmt: skip
    return int(np.argmax(counts))


def task_summary(data: SplitData, predict: Predict) -> dict:
    """Validation metrics of the model beside its baseline (the 'metrics' of the checkpoint)."""
    outs, truths = zip(*validation_parts(data, predict))
    out, truth = np.concatenate(outs), np.concatenate(truths)
    if data.task == "regress":  # RMSE, MAE, R² in normalised units, averaged over targets
        model = forecast_metrics(truth, out)
        baseline = forecast_metrics(truth, np.zeros_like(truth))  # the training mean, z = 0
        raw_rmse = np.sqrt(((out - truth) ** 2).mean(axis=0)) * data.target_std
        model["rmse_raw"] = dict(zip(data.target_names, map(float, raw_rmse)))
        name, units = "training mean", "normalised (z-scores of the training parts' targets)"
    else:
        model = class_metrics(truth, out.argmax(axis=1), len(data.classes))
        model["cross_entropy"] = float(-log_softmax(out)[np.arange(len(truth)), truth].mean())
        majority = majority_class(data)
        baseline = class_metrics(truth, np.full_like(truth, majority), len(data.classes))
        name, units = f"majority class ({data.classes[majority]})", "per step"
    return {"task": data.task, "model": model, "baseline": baseline, "baseline_name": name,
            "units": units, "validation_rows": int(len(truth))}  # fmt: skip


def report(log, metrics: dict) -> None:
    """The validation table printed at the end of training."""
    m, b, name = metrics["model"], metrics["baseline"], metrics["baseline_name"]
    rows = metrics["validation_rows"]
    if metrics["task"] == "regress":
        log(f"validation, regress ({rows} steps, normalised target units):")
        log(f"  {'':16s} {'RMSE':>8s} {'MAE':>8s} {'R2':>8s}")
        for label, v in (("model", m), (name, b)):
            log(f"  {label:16s} {v['rmse']:8.4f} {v['mae']:8.4f} {v['r2']:8.4f}")
        gain = 100.0 * (1.0 - m["rmse"] / b["rmse"]) if b["rmse"] > 0 else 0.0
        log(f"  model RMSE is {abs(gain):.1f}% {'better' if gain > 0 else 'WORSE'} than "
            "predicting the training mean")  # fmt: skip
        return
    log(f"validation, classify ({rows} steps):")
    log(f"  {'':24s} {'accuracy':>8s} {'macro-F1':>8s}")
    for label, v in (("model", m), (name, b)):
        log(f"  {label:24s} {v['accuracy']:8.4f} {v['macro_f1']:8.4f}")
    verdict = "better" if m["accuracy"] > b["accuracy"] else "NOT better"
    log(f"  model accuracy is {verdict} than always answering the majority class")
