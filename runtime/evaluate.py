"""Scoring a detector's 0/1 flags against 0/1 labels (numpy only).

Point-wise: precision, recall, F1, false-alarm rate FAR = FP / (FP + TN) and
missed-alarm rate MAR = FN / (FN + TP) over samples, as SKAB reports them.

Event-wise: every run of 1s in the labels is an event; it is detected if any flag
falls inside it, with delay = first flag - event start (samples). Runs of flags that
touch no labelled event are false-alarm events.

NAB-style (Lavin & Ahmad 2015, "Evaluating Real-time Anomaly Detection Algorithms -
the Numenta Anomaly Benchmark"), implemented from the paper's description:
  * each labelled window rewards its earliest flag with tp_weight * sigma(y) / sigma(-1),
    sigma(y) = 2 / (1 + exp(5y)) - 1, y = -1 at the window's first sample rising to ~0
    at its last: early detection earns nearly the full reward, late detection little;
  * a window with no flag costs fn_weight;
  * every flag outside the windows costs fp_weight * |sigma(y)|, y the distance past
    the previous window's end in window widths (a flag just after a window costs
    little, one 3+ widths after, or before any window, costs the full fp_weight);
  * normalised: 100 * (raw - null) / (perfect - null), null = no flags at all
    (every window missed), perfect = every window flagged on its first sample.
Profiles (tp, fp, fn weights): standard (1, 0.11, 1), reward_low_fp (1, 0.22, 1),
reward_low_fn (1, 0.11, 2). Windows are the labelled runs themselves, or, for point
labels, NAB's windows centred on each label, 10% of the series long in total; SKAB's
changepoint score uses windows of `width` samples to the right of each changepoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from edgernn.errors import InputError

NAB_PROFILES: dict[str, tuple[float, float, float]] = {
    "standard": (1.0, 0.11, 1.0),
    "reward_low_fp": (1.0, 0.22, 1.0),
    "reward_low_fn": (1.0, 0.11, 2.0),
}


def _as_flags(v, name: str) -> np.ndarray:
    arr = np.asarray(v)
    if arr.ndim != 1:
        raise InputError(f"{name} must be a 1-D 0/1 array, got shape {arr.shape}")
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise InputError(f"{name} must hold only 0 and 1")
        arr = arr.astype(bool)
    return arr


def _pair(labels, preds) -> tuple[np.ndarray, np.ndarray]:
    y, p = _as_flags(labels, "labels"), _as_flags(preds, "predictions")
    if len(y) != len(p):
        raise InputError(f"labels ({len(y)}) and predictions ({len(p)}) differ in length")
    return y, p


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else 0.0


# ------------------------------------------------------------------------- point-wise
def point_metrics(labels, preds) -> dict[str, float]:
    """Counts and point-wise precision, recall, F1, FAR, MAR (fractions, not %)."""
    y, p = _pair(labels, preds)
    tp = int(np.sum(y & p))
    fp = int(np.sum(~y & p))
    fn = int(np.sum(y & ~p))
    tn = int(np.sum(~y & ~p))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "far": _ratio(fp, fp + tn),
        "mar": _ratio(fn, fn + tp),
    }


# ------------------------------------------------------------------------- event-wise
def runs(flags) -> list[tuple[int, int]]:
    """Inclusive (start, end) of every run of 1s."""
    f = _as_flags(flags, "flags")
    padded = np.concatenate(([False], f, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(s), int(e) - 1) for s, e in zip(edges[::2], edges[1::2])]


def event_metrics(labels, preds) -> dict[str, object]:
    """Detection rate and delays over labelled events; false-alarm events."""
    y, p = _pair(labels, preds)
    events = runs(y)
    delays = []
    for start, end in events:
        hits = np.flatnonzero(p[start : end + 1])
        if len(hits):
            delays.append(int(hits[0]))
    false_events = [r for r in runs(p) if not y[r[0] : r[1] + 1].any()]
    return {
        "events": len(events),
        "detected": len(delays),
        "detection_rate": _ratio(len(delays), len(events)),
        "delays": delays,
        "mean_delay": float(np.mean(delays)) if delays else None,
        "median_delay": float(np.median(delays)) if delays else None,
        "false_alarm_events": len(false_events),
    }


# ---------------------------------------------------------------------------- NAB-style
@dataclass
class NabScore:
    raw: float
    null: float  # raw score of a detector that never fires
    perfect: float  # raw score of one that fires on the first sample of every window
    windows: int
    detected: int
    false_positives: int

    @property
    def score(self) -> float:
        """Normalised: 0 = never fires, 100 = perfect. NaN when there are no windows."""
        span = self.perfect - self.null
        return 100.0 * (self.raw - self.null) / span if span > 0 else math.nan

    def __add__(self, other: NabScore) -> NabScore:
        """Scores over several files add up before normalising (as NAB does)."""
        return NabScore(
            self.raw + other.raw,
            self.null + other.null,
            self.perfect + other.perfect,
            self.windows + other.windows,
            self.detected + other.detected,
            self.false_positives + other.false_positives,
        )

    def to_dict(self) -> dict[str, float]:
        return dict(asdict(self), score=self.score)


def scaled_sigmoid(y: float) -> float:
    """NAB's reward curve: 0.9866 at y = -1, 0 at y = 0, -0.9866 at y = 1, -1 from y = 3."""
    if y >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def merge_windows(windows: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort and merge overlapping or touching windows."""
    merged: list[tuple[int, int]] = []
    for s, e in sorted(windows):
        if merged and s <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def nab_windows(labels, centred_points: bool = False, window_frac: float = 0.1):
    """Windows from 0/1 labels: the labelled runs; or, with centred_points, NAB's
    windows of (window_frac * length / n_labels) samples centred on each run's start."""
    y = _as_flags(labels, "labels")
    events = runs(y)
    if not centred_points or not events:
        return events
    width = max(1, int(window_frac * len(y) / len(events)))
    return merge_windows(
        [(max(0, s - width // 2), min(len(y) - 1, s + width - width // 2 - 1)) for s, _ in events]
    )


def changepoint_windows(changepoints, width: int = 60) -> list[tuple[int, int]]:
    """SKAB's changepoint windows: `width` samples from each changepoint to its right."""
    c = _as_flags(changepoints, "changepoints")
    return merge_windows([(int(i), min(len(c) - 1, int(i) + width)) for i in np.flatnonzero(c)])


def onsets(preds) -> np.ndarray:
    """Alarms raised: the samples where the 0/1 flag goes from 0 to 1."""
    p = _as_flags(preds, "predictions").astype(np.int8)
    return np.diff(p, prepend=0) > 0


def changepoints_from_flags(preds) -> np.ndarray:
    """Predicted changepoints: the samples where the 0/1 flag changes (alarms raised or
    cleared); the first sample counts as raised if it is already flagged."""
    p = _as_flags(preds, "predictions").astype(np.int8)
    return np.diff(p, prepend=0) != 0


def nab_score(
    windows: Sequence[tuple[int, int]],
    detections,
    profile: str = "standard",
) -> NabScore:
    """Score 0/1 detections (one per sample) against windows (inclusive sample ranges)."""
    if profile not in NAB_PROFILES:
        raise InputError(f"unknown NAB profile {profile!r}; choose from {', '.join(NAB_PROFILES)}")
    tp_w, fp_w, fn_w = NAB_PROFILES[profile]
    d = _as_flags(detections, "detections")
    windows = merge_windows(windows)
    max_tp = scaled_sigmoid(-1.0)
    best = [None] * len(windows)  # best reward per window (the earliest detection's)
    fp_total, n_fp = 0.0, 0
    w, prev = 0, None  # next window to reach; last window passed
    for i in np.flatnonzero(d):
        while w < len(windows) and windows[w][1] < i:
            prev = windows[w]
            w += 1
        if w < len(windows) and windows[w][0] <= i:
            start, end = windows[w]
            width = end - start + 1
            reward = tp_w * scaled_sigmoid(-(end - i + 1) / width) / max_tp
            best[w] = reward if best[w] is None else max(best[w], reward)
        else:
            n_fp += 1
            if prev is None:
                fp_total -= fp_w
            else:
                width = prev[1] - prev[0] + 1
                fp_total += fp_w * scaled_sigmoid((i - prev[1]) / max(width - 1, 1))
    raw = fp_total + sum(-fn_w if b is None else b for b in best)
    n = len(windows)
    return NabScore(raw, -fn_w * n, tp_w * n, n, sum(b is not None for b in best), n_fp)


def evaluate_flags(labels, preds, profile: str = "standard") -> dict[str, object]:
    """Everything for one labelled series: point-wise, event-wise and NAB-style (the
    labelled runs are the windows; each alarm raised, a 0 -> 1 flag, is a detection)."""
    y, p = _pair(labels, preds)
    result: dict[str, object] = dict(point_metrics(y, p))
    result.update(event_metrics(y, p))
    result["nab"] = nab_score(nab_windows(y), onsets(p), profile).to_dict()
    return result


__all__ = [
    "NAB_PROFILES",
    "NabScore",
    "changepoint_windows",
    "changepoints_from_flags",
    "evaluate_flags",
    "event_metrics",
    "merge_windows",
    "nab_score",
    "nab_windows",
    "onsets",
    "point_metrics",
    "runs",
    "scaled_sigmoid",
]
