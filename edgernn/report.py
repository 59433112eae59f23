"""report.png: signals, forecasts, anomaly score, threshold, true vs detected anomalies.

Made to explain itself to someone who has not read the code: every panel says what it
shows and in which unit, the forecast is drawn over the signal (not hidden under it),
true faults are named bands, and detections sit in a strip of their own beside the
truth, so they cannot be mistaken for a data series.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np

from edgernn.errors import require

SIGNAL_COLOR = "#9a9a9a"
FORECAST_COLOR = "#1f5fbf"
FAULT_COLOR = "#d62728"
DETECTED_COLOR = "#ff7f0e"


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
    units: Optional[Sequence[str]] = None,  # (C,) unit of each channel, e.g. "°C"
    faults: Optional[Sequence[tuple[str, int, int]]] = None,  # named true spans
    xlabel: str = "sample",
) -> str:
    """Draw the report (arguments as in report_figure) and write it to `path` as PNG."""
    import matplotlib.pyplot as plt

    fig = report_figure(channels, values, forecasts, score, detected, truth, threshold,
                        title, units, faults, xlabel)  # fmt: skip
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report_figure(
    channels: Sequence[str],
    values: np.ndarray,
    forecasts: np.ndarray,
    score: np.ndarray,
    detected: np.ndarray,
    truth: Optional[np.ndarray] = None,
    threshold: Optional[np.ndarray] = None,
    title: str = "edgernn",
    units: Optional[Sequence[str]] = None,
    faults: Optional[Sequence[tuple[str, int, int]]] = None,
    xlabel: str = "sample",
):
    """The report as a matplotlib Figure: one panel per channel, the score, the events."""
    require("matplotlib", extra="train")
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    n_ch = len(channels)
    if faults is None and truth is not None:
        faults = [("fault", int(s), int(e)) for s, e in _spans(np.asarray(truth) > 0)]
    faults = list(faults or [])
    heights = [2.0] * n_ch + [1.6, 0.7]
    fig, axes = plt.subplots(
        n_ch + 2, 1, figsize=(12, sum(heights) + 0.6), sharex=True,
        gridspec_kw={"height_ratios": heights},
    )  # fmt: skip
    t = np.arange(len(values))
    for i, (ax, name) in enumerate(zip(axes, channels)):
        ax.plot(t, values[:, i], lw=1.2, color=SIGNAL_COLOR, label="signal (received)")
        ax.plot(t, forecasts[:, i], lw=0.7, color=FORECAST_COLOR, label="forecast", zorder=3)
        unit = units[i] if units is not None and units[i] else ""
        ax.set_ylabel(f"{name}\n[{unit}]" if unit else name, fontsize=8)
        _fault_bands(ax, faults, label_them=i == 0)
    axes[0].legend(loc="upper left", fontsize=7, ncol=2, framealpha=0.9)
    _score_panel(axes[n_ch], t, score, threshold, faults)
    _events_strip(axes[n_ch + 1], faults, detected, len(values))
    axes[-1].set_xlabel(xlabel)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _fault_bands(ax, faults, label_them: bool) -> None:
    for name, s, e in faults:
        ax.axvspan(s, e, color=FAULT_COLOR, alpha=0.10, lw=0)
        if label_them:  # the name once, at the top of the first panel
            ax.annotate(name, xy=((s + e) / 2, 1.0), xycoords=("data", "axes fraction"),
                        ha="center", va="bottom", fontsize=7, color=FAULT_COLOR)  # fmt: skip


def _score_panel(ax, t, score, threshold, faults) -> None:
    # The score is a surprisal (-log10 of a tail probability) and so already on a log
    # scale: a linear axis reads directly as "1 in 10^score".
    ax.plot(t, score, lw=0.7, color=FAULT_COLOR, label="anomaly score (-log10 p)")
    if threshold is not None:
        ax.plot(t, threshold, lw=0.9, ls="--", color="black", label="alarm threshold")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("anomaly score\n(-log10 p)", fontsize=8)
    _fault_bands(ax, faults, label_them=False)
    ax.legend(loc="upper left", fontsize=7, ncol=2, framealpha=0.9)


def _events_strip(ax, faults, detected, n: int) -> None:
    """Two rows of bars: the labelled faults, and what the detector flagged."""
    for _, s, e in faults:
        ax.broken_barh([(s, e - s)], (1.1, 0.8), color=FAULT_COLOR, alpha=0.6, lw=0)
    flagged = _spans(np.asarray(detected) > 0)
    if flagged:
        ax.broken_barh([(s, e - s) for s, e in flagged], (0.1, 0.8), color=DETECTED_COLOR,
                       lw=0)  # fmt: skip
    ax.set_ylim(0, 2)
    ax.set_yticks([0.5, 1.5])
    ax.set_yticklabels(["detected", "true fault"], fontsize=7)
    ax.set_xlim(0, max(n - 1, 1))
