"""The reference term (expert option `reference`, numpy only): each reference channel's
EWMA against a reference fixed on the first half of the warm-up.

A forecaster follows a slow fault (a valve closing over minutes), so its errors stay
small; the distance of the channel's smoothed value from where normal operation put it
does not. The reference (per channel: the median and spread of the EWMA) is fixed from
the samples of the warm-up's first half, the spread never below the raw samples' own
spread / sqrt(span) nor the sample floor; the second half of the warm-up and every
unflagged sample after it teach a tail table how far normal operation strays from it.
The statistic is |EWMA(x) - reference| / spread, its tail probability one more input
of the detector's surprisal (core.py, step 3).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from edgernn.runtime.detector.normalise import robust_center_scale
from edgernn.runtime.detector.tails import TailTable


class ReferenceTerm:
    """The reference term on the channels `index` (positions in the sample vector).

    span: the EWMA's span in samples; warmup: the detector's warm-up (its first half
    fixes the reference); n_init: samples before the EWMA is trusted; grid, memory: the
    tail table's grid (lo, hi, bins; log10 units) and memory; prior_weight: the exp(-v)
    prior's weight in samples."""

    def __init__(self, index: list[int], span: float, warmup: int, n_init: int,
                 grid: tuple, memory: float, prior_weight: float):  # fmt: skip
        self.index = list(index)
        self.span, self.alpha = span, 2.0 / (span + 1.0)
        self.half, self.n_init, self.prior_weight = warmup // 2, n_init, prior_weight
        self.table = TailTable(len(self.index), *grid, log=True, memory=memory)
        self.smooth: Optional[np.ndarray] = None  # EWMA of the reference channels
        self.seen: list[list[float]] = []  # smoothed and raw samples that fix the reference
        self.ref: Optional[np.ndarray] = None  # (2, R): the reference's center and spread
        self.stat: Optional[np.ndarray] = None  # this sample's statistic, for learn()

    def probability(self, x: np.ndarray, t: int, floor: np.ndarray) -> np.ndarray:
        """(R,) tail probabilities of sample t (x: the whole sample, floor: the sample
        floors); 1 while the reference is not fixed yet."""
        xs = x[self.index]
        if self.smooth is None:
            self.smooth = xs.copy()
        else:
            self.smooth = self.smooth + self.alpha * (xs - self.smooth)
        if self.ref is None:
            if t >= self.n_init:
                self.seen.append(self.smooth.tolist() + xs.tolist())
            if t + 1 < self.half or len(self.seen) < 2:
                return np.ones(len(self.index))
            self._fix(floor)
        self.stat = np.abs(self.smooth - self.ref[0]) / self.ref[1]
        return self.table.probability(self.stat, np.exp(-self.stat), self.prior_weight)

    def _fix(self, floor: np.ndarray) -> None:
        r = len(self.index)
        seen = np.array(self.seen)
        center, spread = robust_center_scale(seen[:, :r])
        _, raw = robust_center_scale(seen[:, r:])
        spread = np.maximum.reduce([spread, raw / math.sqrt(self.span), floor[self.index]])
        self.ref, self.seen = np.stack([center, spread]), []

    def learn(self, weight: float) -> None:
        """Learn this sample's statistic, worth `weight` samples (once the reference is
        fixed)."""
        if self.ref is not None:
            self.table.add(self.stat, weight)

    def add_surprise(self, surprise: np.ndarray, p: np.ndarray) -> None:
        """Raise each reference channel's surprise (C,) to its term's, -log10 p."""
        idx = self.index
        surprise[idx] = np.maximum(surprise[idx], -np.log10(np.maximum(p, 1e-300)))

    # -- state: the detector's own keys ("smooth", "ref_seen", "ref"; the table is
    # its part "ref_table"), as before the term had a module of its own
    def state_fields(self) -> dict[str, Any]:
        return {
            "smooth": None if self.smooth is None else self.smooth.tolist(),
            "ref_seen": self.seen,
            "ref": None if self.ref is None else self.ref.tolist(),
        }

    def load_state_fields(self, d: dict[str, Any]) -> None:
        self.smooth = None if d["smooth"] is None else np.asarray(d["smooth"], dtype=np.float64)
        self.seen = [list(map(float, r)) for r in d["ref_seen"]]
        self.ref = None if d["ref"] is None else np.asarray(d["ref"], dtype=np.float64)
