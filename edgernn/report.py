"""report.png: signals, forecasts, anomaly score, threshold, true vs detected anomalies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np

from edgernn.errors import require


def _spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) runs of True in a 0/1 array."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def plot_report(
    path: str,
    channels: Sequence[str],
    values: np.ndarray,  # (T, C) samples as received
    forecasts: np.ndarray,  # (T, C) forecast made for each sample (NaN where none)
    score: np.ndarray,  # (T,) NaN during warm-up
    detected: np.ndarray,  # (T,) 0/1
    truth: Optional[np.ndarray] = None,  # (T,) 0/1
    threshold: Optional[np.ndarray] = None,  # (T,) or None
    title: str = "edgernn",
) -> str:
    require("matplotlib", extra="train")
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    n_ch = len(channels)
    fig, axes = plt.subplots(n_ch + 1, 1, figsize=(12, 2.0 * (n_ch + 1)), sharex=True)
    t = np.arange(len(values))
    for i, (ax, name) in enumerate(zip(axes, channels)):
        ax.plot(t, values[:, i], lw=0.7, color="#333333", label="signal")
        ax.plot(t, forecasts[:, i], lw=0.7, color="#1f77b4", alpha=0.8, label="forecast")
        ax.set_ylabel(name, fontsize=8)
        _shade(ax, truth, detected)
    axes[0].legend(loc="upper right", fontsize=7, ncol=2)
    ax = axes[-1]
    ax.plot(t, score, lw=0.7, color="#d62728", label="score")
    if threshold is not None:
        ax.plot(t, threshold, lw=0.8, ls="--", color="black", label="threshold")
    _shade(ax, truth, detected)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylabel("anomaly score", fontsize=8)
    ax.set_xlabel("sample")
    ax.legend(loc="upper right", fontsize=7, ncol=2)
    fig.suptitle(f"{title}   (red band: true fault, orange ticks: detected)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _shade(ax, truth, detected) -> None:
    if truth is not None:
        for s, e in _spans(np.asarray(truth) > 0):
            ax.axvspan(s, e, color="#d62728", alpha=0.12, lw=0)
    lo, hi = ax.get_ylim()
    marks = np.flatnonzero(np.asarray(detected) > 0)
    if len(marks):
        ax.vlines(marks, lo, lo + 0.06 * (hi - lo), color="#ff7f0e", lw=0.6)
    ax.set_ylim(lo, hi)
