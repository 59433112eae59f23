"""Online tail probabilities: what fraction of normal samples scored at least this?

`TailTable` keeps, for K statistics at once, an exponentially forgetting histogram of
the values seen on normal samples and answers P(V >= v) for each:

  * inside the data: the histogram's upper tail (linear inside a bin);
  * beyond its last `TAIL_COUNT` values: an exponential tail in the value (a GPD of
    shape 0, as in peaks-over-threshold) through that point, its scale from the
    quantiles at TAIL_COUNT and 4 x TAIL_COUNT samples from the top, so a value a
    little past the largest one seen is a little more surprising, not infinitely so;
  * a prior tail, worth `prior_weight` samples, keeps the answer sane before there is
    data and bounds how certain a short history can make it;
  * with a `PeakTable` (the detector's spike statistic): never below the rate of the
    episodes seen, once SEEN_COUNT of them peaked at or above the value.

Values live on a fixed grid (log10 or linear), so an update is a few vector operations
and the state is a plain array (exact save/resume). The table stores, per statistic,
the weight at or above each bin ("survival counts"), which makes both the update and the
tail lookup O(bins) with no sort.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

TAIL_COUNT = 25.0  # effective samples above which the tail is extrapolated, not counted
SEEN_COUNT = 8.0  # ... yet a pattern seen in this many episodes counts at its own rate
EPISODE_GAP = 20  # samples under EPISODE_LEVEL that end an episode
EPISODE_LEVEL = 3.0  # (the Huber clip: a value above it is an outlier)
FIT_RATIO = 4.0  # ... with the slope between its quantile and 4x as many samples' one
MIN_DECAY = 0.05  # the tail's scale is at least this fraction of its anchor value
_LOG_FIT_RATIO = math.log(FIT_RATIO)
_LOG_2 = math.log(2.0)


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
        # The counts live in a (k, bins + 1) buffer whose last column stays 0: the
        # weight above the last bin, so a lookup needs no bounds mask. `survival` is
        # its (k, bins) view.
        self._padded = np.zeros((k, bins + 1))
        self._flat = self._padded.reshape(-1)
        self._row_starts = self._rows * (bins + 1)
        # row i: 1.0 at the bins at or below bin i, else 0.0 (the padding included), the
        # float form of `cells <= i` (adding a float row costs no cast)
        self._at_or_below = (np.arange(bins + 1) <= np.arange(bins)[:, None]).astype(np.float64)
        # the grid's constants as (k,) arrays: numpy's max / min take them faster than
        # Python floats (same values, same results)
        self._tiny, self._lo, self._hi = np.full(k, 1e-300), np.full(k, lo), np.full(k, hi)
        self._last_bin = np.full(k, bins - 1)
        self.total = 0.0
        # Tail fraction always extrapolated (set by the detector: a few times its
        # false-alarm rate, so flagged samples, learnt at a fraction of their weight,
        # never sit below the anchor and bias the fit).
        self.extrapolate_below = 0.0
        self.peaks: Optional[PeakTable] = None  # episodes of its first rows (the detector sets)

    @property
    def survival(self) -> np.ndarray:
        """(k, bins): the weight at or above each bin."""
        return self._padded[:, : self.bins]

    def _position(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(grid coordinate, bin index, fraction of the bin below the value)."""
        g = np.log10(np.maximum(values, self._tiny)) if self.log else np.array(values, dtype=np.float64)
        np.maximum(g, self._lo, out=g)
        np.minimum(g, self._hi, out=g)
        pos = g - self._lo
        pos /= self.width
        index = pos.astype(np.int64)
        np.minimum(index, self._last_bin, out=index)
        return g, index, pos - index

    def locate(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The values' grid position, for probability_at() and add_at() (one sample's
        lookup and update share it)."""
        return self._position(values)

    def add(self, values: np.ndarray, weight: float = 1.0) -> None:
        """One sample's K values, worth `weight` samples (older ones fade at the
        memory's rate)."""
        self.add_at(self._position(values)[1], weight)

    def add_at(self, index: np.ndarray, weight: float = 1.0) -> None:
        """add() at bin indices from locate()."""
        padded = self._padded  # decaying or adding 0 keeps the padding 0
        padded *= self.decay
        mask = self._at_or_below[index]
        if weight != 1.0:
            mask *= weight
        padded += mask
        self.total = self.total * self.decay + weight

    def probability(self, values: np.ndarray, prior: np.ndarray, prior_weight: float) -> np.ndarray:
        """P(V >= v) per statistic: the data's tail mixed with `prior` (K,) tail
        probabilities worth `prior_weight` samples."""
        return self.probability_at(self._position(values), prior, prior_weight)

    def probability_at(self, position, prior: np.ndarray, prior_weight: float) -> np.ndarray:
        """probability() at a position from locate()."""
        counted = self._counted_at(position)
        return (counted + prior_weight * prior) / (self.total + prior_weight)

    def scalar_probability(self, value: float, prior: float, prior_weight: float) -> tuple[float, int]:
        """probability() of a one-statistic linear-grid table for one value, in floats
        (the same arithmetic, without small-array calls), and the value's bin index for
        add_scalar()."""
        g = min(max(value, self.lo), self.hi)
        pos = (g - self.lo) / self.width
        index = min(int(pos), self.bins - 1)
        if self.total <= 0.0:
            counted = 0.0
        else:
            at, above = self._flat[index], self._flat[index + 1]
            counted = float(at - (pos - index) * (at - above))
            anchor = max(TAIL_COUNT, self.extrapolate_below * self.total)
            if counted < anchor:
                rows = np.zeros(1, dtype=np.int64)
                g_row, counted_row = np.array([g]), np.array([counted])
                counted = float(self._extrapolate(rows, g_row, counted_row, anchor)[0])
        return (counted + prior_weight * prior) / (self.total + prior_weight), index

    def add_scalar(self, index: int, weight: float = 1.0) -> None:
        """add() of one value to a one-statistic table, at its bin index (adding 0 to
        the bins above it changes nothing, so only the bins at or below are touched)."""
        self._padded *= self.decay  # the padding stays 0
        self._padded[0, : index + 1] += weight
        self.total = self.total * self.decay + weight

    def counted(self, values: np.ndarray) -> np.ndarray:
        """Weight of the normal samples at or above each value (extrapolated in the tail)."""
        return self._counted_at(self._position(values))

    def _counted_at(self, position) -> np.ndarray:
        if self.total <= 0.0:
            return np.zeros(self.k)
        g, index, frac = position
        cell = self._row_starts + index
        at = self._flat[cell]
        above = self._flat[cell + 1]  # the padding column: nothing above the last bin
        counted = at - frac * (at - above)
        anchor = max(TAIL_COUNT, self.extrapolate_below * self.total)
        rows = (counted < anchor).nonzero()[0]
        if len(rows):
            counted[rows] = self._extrapolate(
                rows, g[rows], counted[rows], anchor, (index[rows], frac[rows])
            )
        return counted

    def _extrapolate(
        self, rows: np.ndarray, g: np.ndarray, counted: np.ndarray, anchor: float, cells=None
    ) -> np.ndarray:
        """Past the last `anchor` samples of the statistics `rows`: an exponential tail
        whose slope comes from two quantiles below it (anchor and FIT_RATIO x anchor
        samples from the top), not from the samples above: those include flagged
        samples, never learnt, and a fit on them would steepen with every flag."""
        survival = self._padded[rows]
        fit = FIT_RATIO * anchor
        g_tail, g_fit = self._quantiles(survival, anchor, fit)
        if self.log:  # the tail is exponential in the value itself, not in its log
            v, v_tail, v_fit = 10.0**g, 10.0**g_tail, 10.0**g_fit
        else:
            v, v_tail, v_fit = g, g_tail, g_fit
        decay = v_tail - v_fit
        decay /= _LOG_FIT_RATIO
        floor = np.abs(v_tail)
        np.maximum(floor, self.width, out=floor)
        floor *= MIN_DECAY
        np.maximum(decay, floor, out=decay)
        excess = v - v_tail
        np.maximum(excess, 0.0, out=excess)
        np.negative(excess, out=excess)
        excess /= decay
        tail = np.exp(excess)
        tail *= anchor
        peaks = self.peaks
        if peaks is not None and cells is not None:
            seen = rows < peaks.k
            if seen.any():
                tail[seen] = peaks.at_least_seen(
                    rows[seen], cells[0][seen], cells[1][seen], v[seen], tail[seen],
                    v_tail[seen], decay[seen], anchor,
                )
        # too few samples for a tail fit, or not past the anchor: the counts as they are
        use = survival[:, 0] >= fit
        use &= g > g_tail
        return np.where(use, tail, counted)

    def _quantiles(self, padded: np.ndarray, *weights: float) -> list[np.ndarray]:
        """Per weight, per row of padded survival counts: the grid point with that
        weight at or above it (counted()'s inverse); all weights in one pass."""
        w = np.array(weights)[:, None]  # (W, 1) against (W, rows)
        j = np.add.reduce(padded >= w[:, :, None], axis=2)  # rows are non-increasing
        j -= 1
        np.maximum(j, 0, out=j)
        rows = self._rows[: padded.shape[0]]
        at = padded[rows, j]
        nxt = padded[rows, j + 1]  # j + 1 == bins: the padding, 0
        span = at - nxt
        frac = np.zeros_like(span)
        np.divide(at - w, span, out=frac, where=span > 0)
        np.maximum(frac, 0.0, out=frac)
        np.minimum(frac, 1.0, out=frac)
        grid = j + frac
        grid *= self.width
        grid += self.lo
        return list(grid)

    def clear(self) -> None:
        """Forget everything learnt (in place: the kernel keeps its addresses)."""
        self._padded[:] = 0.0
        self.total = 0.0
        if self.peaks is not None:
            self.peaks.clear()

    def state_dict(self) -> dict:
        return {"survival": self.survival.tolist(), "total": self.total}

    def load_state_dict(self, d: dict) -> None:
        survival = np.asarray(d["survival"], dtype=np.float64)
        if survival.shape != self.survival.shape:
            raise ValueError(f"tail table shape {survival.shape}, expected {self.survival.shape}")
        self._padded[:, : self.bins] = survival
        self.total = float(d["total"])


class PeakTable:
    """Episodes of a TailTable's first k statistics (the detector's |z|): runs of
    values above EPISODE_LEVEL with gaps shorter than EPISODE_GAP learnt samples, each
    learnt once, at its peak, in a histogram on the table's grid that forgets with it.

    A TailTable extrapolates past its last TAIL_COUNT samples, so a normal pattern
    rarer than that (a flat baseline's 1 % of normal spikes in its first 2,500
    samples) scored as if never seen: 4-15 for every normal spike. Counting samples
    from fewer lets one fault teach the next: a noise burst's hundred outliers made
    the next burst and the next spike ordinary. Episodes count occurrences instead:
    where SEEN_COUNT of them peaked at or above a value, its tail probability is at
    least their rate; past the last SEEN_COUNT, an exponential tail through them, with
    the slope between the SEEN_COUNT-th and half as many episodes' peaks or between them
    and the table's anchor, whichever falls slower (a population of its own, such as
    normal spikes, falls off at its own rate, not the body's)."""

    def __init__(self, table: TailTable, k: int):
        self.table, self.k = table, k
        self._padded = np.zeros((k, table.bins + 1))  # the last column stays 0
        self.peak = np.zeros(k)  # the open episode's peak so far (0: none open)
        self.quiet = np.zeros(k)  # learnt samples under the level since its last one
        self._level = np.full(k, EPISODE_LEVEL)
        self._rows = np.arange(k)

    def observe(self, values: np.ndarray) -> None:
        """One learnt sample's k values (a flagged sample is not learnt, so a fault's
        episode is its onset alone)."""
        self._padded *= self.table.decay
        above = values > self._level
        if above.any():
            np.maximum(self.peak, np.where(above, values, 0.0), out=self.peak)
        opened = self.peak > 0.0
        if not opened.any():
            return
        self.quiet[above] = 0.0
        self.quiet[opened & ~above] += 1.0
        ended = opened & (self.quiet >= EPISODE_GAP)
        if ended.any():
            index = self._bins_of(self.peak)
            for r in np.flatnonzero(ended).tolist():
                self._padded[r, : index[r] + 1] += 1.0
            self.peak[ended] = 0.0
            self.quiet[ended] = 0.0

    def _bins_of(self, values: np.ndarray) -> np.ndarray:
        """The table's bin of each value (TailTable._position's, for k values)."""
        t = self.table
        g = np.log10(np.maximum(values, 1e-300)) if t.log else np.array(values, dtype=np.float64)
        np.clip(g, t.lo, t.hi, out=g)
        pos = g - t.lo
        pos /= t.width
        return np.minimum(pos.astype(np.int64), t.bins - 1)

    def at_least_seen(self, rows, index, frac, v, tail, v_tail, decay, anchor: float) -> np.ndarray:
        """max(tail, the episodes' tail) for statistics `rows` at grid cells index / frac
        (values v), given the table's tail there, its anchor value and slope."""
        survival = self._padded[rows]
        enough = survival[:, 0] >= SEEN_COUNT
        if not enough.any():
            return tail
        table = self.table
        g_seen, g_half = table._quantiles(survival, SEEN_COUNT, 0.5 * SEEN_COUNT)
        v_seen, v_half = (10.0**g_seen, 10.0**g_half) if table.log else (g_seen, g_half)
        at = survival[self._rows[: len(rows)], index]
        above = survival[self._rows[: len(rows)], index + 1]
        counted = at - frac * (at - above)
        spread = (v_seen - v_tail) / math.log(anchor / SEEN_COUNT)
        np.maximum(spread, (v_half - v_seen) / _LOG_2, out=spread)
        np.maximum(spread, decay, out=spread)
        beyond = SEEN_COUNT * np.exp(-np.maximum(v - v_seen, 0.0) / spread)
        seen = np.where(counted >= SEEN_COUNT, counted, beyond)
        return np.where(enough, np.maximum(tail, seen), tail)

    def clear(self) -> None:
        self._padded[:] = 0.0
        self.peak[:] = 0.0
        self.quiet[:] = 0.0

    def state_dict(self) -> dict:
        return {"survival": self._padded[:, : self.table.bins].tolist(),
                "peak": self.peak.tolist(), "quiet": self.quiet.tolist()}  # fmt: skip

    def load_state_dict(self, d: dict) -> None:
        survival = np.asarray(d["survival"], dtype=np.float64)
        peak, quiet = (np.asarray(d[key], dtype=np.float64) for key in ("peak", "quiet"))
        if survival.shape != (self.k, self.table.bins) or (peak.shape, quiet.shape) != ((self.k,),) * 2:
            raise ValueError(f"episode table of shape {survival.shape}")
        self._padded[:, : self.table.bins] = survival
        self.peak[:], self.quiet[:] = peak, quiet
