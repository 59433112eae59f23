"""Online tail probabilities: what fraction of normal samples scored at least this?

`TailTable` keeps, for K statistics at once, an exponentially forgetting histogram of
the values seen on normal samples and answers P(V >= v) for each:

  * inside the data: the histogram's upper tail (linear inside a bin);
  * beyond its last `TAIL_COUNT` values: an exponential tail in the value (a GPD of
    shape 0, as in peaks-over-threshold) through that point, its scale from the
    quantiles at TAIL_COUNT and 4 x TAIL_COUNT samples from the top, so a value a
    little past the largest one seen is a little more surprising, not infinitely so;
  * a prior tail, worth `prior_weight` samples, keeps the answer sane before there is
    data and bounds how certain a short history can make it.

Values live on a fixed grid (log10 or linear), so an update is a few vector operations
and the state is a plain array (exact save/resume). The table stores, per statistic,
the weight at or above each bin ("survival counts"), which makes both the update and the
tail lookup O(bins) with no sort.
"""

from __future__ import annotations

import math

import numpy as np

TAIL_COUNT = 25.0  # effective samples above which the tail is extrapolated, not counted
FIT_RATIO = 4.0  # ... with the slope between its quantile and 4x as many samples' one
MIN_DECAY = 0.05  # the tail's scale is at least this fraction of its anchor value


class TailTable:
    """Upper-tail probabilities of K statistics over a grid of `bins` cells on [lo, hi]
    (log10 of the value when `log`, else the value itself)."""

    def __init__(self, k: int, lo: float, hi: float, bins: int, log: bool, memory: float):
        self.k, self.lo, self.hi, self.bins, self.log = k, lo, hi, bins, log
        self.width = (hi - lo) / bins
        self.decay = 1.0 - 1.0 / memory
        self.centers = lo + self.width * (np.arange(bins) + 0.5)  # grid units
        self._cells = np.arange(bins)
        self._rows = np.arange(k)
        self.survival = np.zeros((k, bins))  # weight at or above each bin
        self.total = 0.0
        # Tail fraction always extrapolated (set by the detector: a few times its
        # false-alarm rate, so flagged samples, learnt at a fraction of their weight,
        # never sit below the anchor and bias the fit).
        self.extrapolate_below = 0.0

    def _position(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(grid coordinate, bin index, fraction of the bin below the value)."""
        g = np.log10(np.maximum(values, 1e-300)) if self.log else values
        g = np.minimum(np.maximum(g, self.lo), self.hi)
        pos = (g - self.lo) / self.width
        index = np.minimum(pos.astype(np.int64), self.bins - 1)
        return g, index, pos - index

    def add(self, values: np.ndarray, weight: float = 1.0) -> None:
        """One sample's K values, worth `weight` samples (older ones fade at the
        memory's rate)."""
        _, index, _ = self._position(values)
        survival = self.survival
        survival *= self.decay
        if weight == 1.0:
            survival += self._cells <= index[:, None]
        else:
            survival += weight * (self._cells <= index[:, None])
        self.total = self.total * self.decay + weight

    def probability(self, values: np.ndarray, prior: np.ndarray, prior_weight: float) -> np.ndarray:
        """P(V >= v) per statistic: the data's tail mixed with `prior` (K,) tail
        probabilities worth `prior_weight` samples."""
        counted = self.counted(values)
        return (counted + prior_weight * prior) / (self.total + prior_weight)

    def counted(self, values: np.ndarray) -> np.ndarray:
        """Weight of the normal samples at or above each value (extrapolated in the tail)."""
        if self.total <= 0.0:
            return np.zeros(self.k)
        g, index, frac = self._position(values)
        at = self.survival[self._rows, index]
        last = self.bins - 1  # the weight at or above the next bin (none past the last)
        above = self.survival[self._rows, np.minimum(index + 1, last)] * (index < last)
        counted = at - frac * (at - above)
        anchor = max(TAIL_COUNT, self.extrapolate_below * self.total)
        rows = np.flatnonzero(counted < anchor)
        if len(rows):
            counted[rows] = self._extrapolate(rows, g[rows], counted[rows], anchor)
        return counted

    def _extrapolate(
        self, rows: np.ndarray, g: np.ndarray, counted: np.ndarray, anchor: float
    ) -> np.ndarray:
        """Past the last `anchor` samples of the statistics `rows`: an exponential tail
        whose slope comes from two quantiles below it (anchor and FIT_RATIO x anchor
        samples from the top), not from the samples above: those include flagged
        samples, never learnt, and a fit on them would steepen with every flag."""
        survival = self.survival[rows]
        fit = FIT_RATIO * anchor
        g_tail, g_fit = self._quantile(survival, anchor), self._quantile(survival, fit)
        if self.log:  # the tail is exponential in the value itself, not in its log
            v, v_tail, v_fit = 10.0**g, 10.0**g_tail, 10.0**g_fit
        else:
            v, v_tail, v_fit = g, g_tail, g_fit
        decay = (v_tail - v_fit) / math.log(FIT_RATIO)
        decay = np.maximum(decay, MIN_DECAY * np.maximum(np.abs(v_tail), self.width))
        tail = anchor * np.exp(-np.maximum(v - v_tail, 0.0) / decay)
        # too few samples for a tail fit, or not past the anchor: the counts as they are
        use = (survival[:, 0] >= fit) & (g > g_tail)
        return np.where(use, tail, counted)

    def _quantile(self, survival: np.ndarray, weight: float) -> np.ndarray:
        """Per row, the grid point with `weight` at or above it (counted()'s inverse)."""
        j = np.maximum((survival >= weight).sum(axis=1) - 1, 0)  # rows are non-increasing
        at = survival[np.arange(len(j)), j]
        nxt = np.where(j + 1 < self.bins, survival[np.arange(len(j)), np.minimum(j + 1, self.bins - 1)], 0.0)
        span = at - nxt
        frac = np.where(span > 0, (at - weight) / np.where(span > 0, span, 1.0), 0.0)
        return self.lo + self.width * (j + np.clip(frac, 0.0, 1.0))

    def state_dict(self) -> dict:
        return {"survival": self.survival.tolist(), "total": self.total}

    def load_state_dict(self, d: dict) -> None:
        survival = np.asarray(d["survival"], dtype=np.float64)
        if survival.shape != self.survival.shape:
            raise ValueError(f"tail table shape {survival.shape}, expected {self.survival.shape}")
        self.survival = survival
        self.total = float(d["total"])
