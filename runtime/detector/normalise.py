"""Per-channel online normalisers: an error in units of what is usual for this channel.

`ErrorNormaliser` turns a forecast error e (C,) into z = (e - center) / scale with a
center and scale tracked online (Huber-clipped exponential averages: a spike moves
them no more than 3 scales' worth, so one outlier barely registers). Its scale never
collapses: it is floored by

  * a quarter of the data's resolution (the decimal quantum of the samples: integer
    counts, values logged with two decimals), so a flat quantised channel's one-step
    change is about 4 units, not infinity;
  * `level_floor` x the mean absolute sample-to-sample change, so a smooth signal the
    model forecasts almost perfectly does not turn rounding noise into alarms;
  * a tiny fraction of the signal's level (float32 rounding).

`SeasonalProfile` is the seasonal baseline used when the input has timestamps: per
time-of-day (or time-of-week) bin, the usual normalised error at that time.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

CLIP = 3.0  # Huber clip of the center/scale updates, in scales
CENTER_SLOWER = 10.0  # the center's span is this many times the scale's
MEAN_ABS_TO_STD = math.sqrt(math.pi / 2)  # mean |x| of a Gaussian times this is its std
MAD_TO_STD = 1.4826
MAX_DECIMALS = 6  # resolutions finer than 1e-6 count as continuous
_POWERS = 10.0 ** np.arange(MAX_DECIMALS + 1)
_FLOAT32_TOL = 4.0 * 2.0**-24  # relative rounding of a float32 sample


def robust_center_scale(errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and robust std per channel (1.4826 MAD, else 1.2533 mean |dev| when most
    errors are identical); 0 where a channel never varies (the floors take over)."""
    errors = np.asarray(errors, dtype=np.float64)
    center = np.median(errors, axis=0)
    dev = np.abs(errors - center)
    scale = MAD_TO_STD * np.median(dev, axis=0)
    return center, np.where(scale > 0, scale, MEAN_ABS_TO_STD * dev.mean(axis=0))


class SampleFloors:
    """What the samples themselves say about the smallest meaningful error scale."""

    def __init__(self, n: int, level_floor: float, memory: float):
        self.level_floor, self.memory = level_floor, memory
        self.decimals = np.zeros(n, dtype=np.int64)
        self.prev: Optional[np.ndarray] = None
        self._means = np.zeros((2, n))  # rows: mean_level, mean_change (one update)
        self.mean_level, self.mean_change = self._means
        self._rates = np.empty((2, 1))
        self.n = 0
        self._decimals_changed()

    def _decimals_changed(self) -> None:
        """Refresh what depends on the decimals only (they change rarely)."""
        quantised = self.decimals <= MAX_DECIMALS
        self._quantised = bool(quantised.any())
        self._continuous = ~quantised
        self._scales = _POWERS[np.minimum(self.decimals, MAX_DECIMALS)]
        resolution = np.where(quantised, 10.0 ** -self.decimals.astype(float), 0.0)
        self._resolution_floor = 0.25 * resolution

    def _still_exact(self, x: np.ndarray) -> bool:
        """Whether each quantised channel's x is exact at its decimals (then they stay:
        they grow only when no power up to them is exact): observe()'s test on one
        power per channel."""
        y = x * self._scales
        exact = np.abs(y - np.round(y)) <= _FLOAT32_TOL * np.abs(y) + 1e-9
        exact |= self._continuous
        return bool(exact.all())

    def observe(self, x: np.ndarray) -> None:
        if self._quantised and not self._still_exact(x):  # some channel still looks quantised
            y = x[None, :] * _POWERS[:, None]  # (decimals, C)
            exact = np.abs(y - np.round(y)) <= _FLOAT32_TOL * np.abs(y) + 1e-9
            exact[-1] = True  # past MAX_DECIMALS: continuous
            needed = np.argmax(exact, axis=0)
            needed[~exact[:-1].any(axis=0)] = MAX_DECIMALS + 1
            np.maximum(self.decimals, needed, out=self.decimals)
            self._decimals_changed()
        self.n += 1
        rate = max(1.0 / self.n, 1.0 / self.memory)
        if self.prev is None:
            self.mean_level += rate * (np.abs(x) - self.mean_level)
            self.prev = x.copy()
            return
        # both means in one (2, C) update: |x| and |x - prev|
        step = np.empty_like(self._means)
        np.subtract(x, self.prev, out=step[1])
        step[0] = x
        np.abs(step, out=step)
        step -= self._means
        _scale_rows(step, self._rates, rate, max(1.0 / (self.n - 1), 1.0 / self.memory))
        self._means += step
        self.prev[:] = x

    def floor(self) -> np.ndarray:
        floor = np.maximum(self._resolution_floor, self.level_floor * self.mean_change)
        level = 1e-6 * self.mean_level
        level += 1e-12
        return np.maximum(floor, level, out=floor)

    def state_dict(self) -> dict:
        return {
            "decimals": self.decimals.tolist(),
            "prev": None if self.prev is None else self.prev.tolist(),
            "mean_change": self.mean_change.tolist(),
            "mean_level": self.mean_level.tolist(),
            "n": self.n,
        }

    def load_state_dict(self, d: dict) -> None:
        self.decimals = np.asarray(d["decimals"], dtype=np.int64)
        self.prev = None if d["prev"] is None else np.asarray(d["prev"], dtype=np.float64)
        self._means = np.stack(
            [np.asarray(d["mean_level"], dtype=np.float64), np.asarray(d["mean_change"], dtype=np.float64)]
        )
        self.mean_level, self.mean_change = self._means
        self.n = int(d["n"])
        self._decimals_changed()


class ErrorNormaliser:
    """z = (e - center) / max(scale, floor), center and scale tracked online.

    span: EWMA span of the trackers (0: they only learn while `learning` is passed, i.e.
    during warm-up, as running averages). n_init: errors whose median / MAD start the
    trackers when no calibration gives them.
    """

    def __init__(
        self, n: int, span: float, n_init: int, center=None, scale=None, centered: bool = False
    ):
        self.span, self.n_init, self.centered = span, n_init, centered
        self.center = None if center is None else np.asarray(center, dtype=np.float64).copy()
        self.scale = None if scale is None else np.asarray(scale, dtype=np.float64).copy()
        if self.scale is not None and self.center is None:
            self.center = np.zeros(n)
        self.pending: list[list[float]] = []  # the first errors, until the trackers start
        self.n = 0 if self.scale is None else n_init  # a calibration counts as n_init errors

    @property
    def ready(self) -> bool:
        return self.scale is not None

    def deviation(self, e: np.ndarray, floor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(e - center, the scale floored): what normalise() and update() both use, for
        a caller that does both on one error before the trackers move."""
        return e - self.center, np.maximum(self.scale, floor)

    def normalise(self, e: np.ndarray, floor: np.ndarray, deviation=None) -> np.ndarray:
        d, bound = self.deviation(e, floor) if deviation is None else deviation
        return d / bound

    def update(
        self, e: np.ndarray, floor: np.ndarray, learning: bool, weight: float = 1.0, deviation=None
    ) -> None:
        """Learn from one error worth `weight` samples (`deviation`: deviation(e, floor)
        if known). The center moves CENTER_SLOWER times slower than the scale: a slow
        drift must not become the new center."""
        if self.scale is None:
            self.pending.append(e.tolist())
            if len(self.pending) >= self.n_init:
                self.center, self.scale = robust_center_scale(np.array(self.pending))
                if self.centered:
                    self.center = np.zeros_like(self.center)
                self.n, self.pending = len(self.pending), []
            return
        rates = self.advance(learning, weight)
        if rates is None:
            return
        rate, slow = rates
        d, bound = self.deviation(e, floor) if deviation is None else deviation
        limit = CLIP * bound
        size = np.minimum(np.abs(d), limit)  # |the Huber-clipped deviation|
        if not self.centered:
            step = np.copysign(size, d)  # clip(d, -limit, limit)
            step *= slow
            self.center = self.center + step
        step = MEAN_ABS_TO_STD * size
        step -= self.scale
        step *= rate
        self.scale = self.scale + step

    def advance(self, learning: bool, weight: float) -> Optional[tuple[float, float]]:
        """Count one more error (once ready); (the scale's rate, the center's rate), or
        None when the trackers do not move (span 0 after the warm-up)."""
        self.n += 1
        if self.span > 0:
            rate = weight * max(1.0 / self.n, 2.0 / (self.span + 1.0))
            return rate, max(1.0 / self.n, rate / CENTER_SLOWER)
        if learning:
            rate = 1.0 / self.n
            return rate, rate
        return None

    def state_dict(self) -> dict:
        return {
            "center": None if self.center is None else self.center.tolist(),
            "scale": None if self.scale is None else self.scale.tolist(),
            "pending": self.pending,
            "n": self.n,
        }

    def load_state_dict(self, d: dict) -> None:
        self.center = None if d["center"] is None else np.asarray(d["center"], dtype=np.float64)
        self.scale = None if d["scale"] is None else np.asarray(d["scale"], dtype=np.float64)
        self.pending = [list(map(float, e)) for e in d["pending"]]
        self.n = int(d["n"])


class NormaliserPair:
    """Two ready normalisers of one length and span (the detector's forecast error and
    level deviation) updated as one (2, C) problem: the same arithmetic per element as
    ErrorNormaliser, in half the small-array calls. Their center / scale become rows of
    shared arrays, updated in place; link again after either's arrays are replaced
    (load_state_dict)."""

    def __init__(self, first: ErrorNormaliser, second: ErrorNormaliser):
        if first.span != second.span or first.center.shape != second.center.shape:
            raise ValueError("a normaliser pair needs one span and one length")
        self.parts = (first, second)
        self.center = np.stack([first.center, second.center])
        self.scale = np.stack([first.scale, second.scale])
        first.center, second.center = self.center[0], self.center[1]
        first.scale, second.scale = self.scale[0], self.scale[1]
        self._rates = np.empty((2, 1))
        self._moving = [row for row, part in enumerate(self.parts) if not part.centered]

    def deviation(self, errors: np.ndarray, floor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """errors (2, C), the floor (C,): (errors - center, the scales floored); errors
        is overwritten."""
        d = np.subtract(errors, self.center, out=errors)
        return d, np.maximum(self.scale, floor)

    def update(self, deviation, learning: bool, weight: float = 1.0) -> None:
        """Both normalisers' update() from deviation() of this sample."""
        first, second = self.parts
        rates = first.advance(learning, weight), second.advance(learning, weight)
        if rates[0] is None or rates[1] is None:  # one span: both or neither move
            return
        d, bound = deviation
        limit = CLIP * bound
        size = np.abs(d)
        np.minimum(size, limit, out=size)  # |the Huber-clipped deviation|
        for row in self._moving:  # the centers that move (not `centered`)
            step = np.copysign(size[row], d[row])  # clip(d, -limit, limit)
            step *= rates[row][1]
            self.center[row] += step
        step = MEAN_ABS_TO_STD * size
        step -= self.scale
        _scale_rows(step, self._rates, rates[0][0], rates[1][0])
        self.scale += step


def _scale_rows(rows: np.ndarray, buffer: np.ndarray, first: float, second: float) -> None:
    """rows (2, C) *= (first, second) per row; one scalar product when they are equal
    (the usual case once the trackers' rates settle: cheaper than broadcasting)."""
    if first == second:
        rows *= first
    else:
        buffer[0, 0], buffer[1, 0] = first, second
        rows *= buffer


class SeasonalProfile:
    """The usual error at each time of day (or week), in the error's own units (centred,
    not divided by the scale): a forecaster that misses a daily pattern (a nightly batch
    job, the morning ramp) errs the same way at the same time every day, and that error
    is normal. Units, not z: z's unit (the scale) moves between days, and a large error
    that repeats exactly would otherwise leave a large z every day.

    One bin per sample interval (at most `max_bins`); a bin's value follows a running
    average over its first days, then an exponential one over `periods` periods. A bin
    answers once a whole period has been seen and it holds at least one sample.
    """

    def __init__(self, n: int, period: float, step: float, max_bins: int, periods: float = 7.0):
        self.period, self.periods = period, periods
        self.bins = int(max(1, min(max_bins, round(period / step))))
        self.mean = np.zeros((self.bins, n))
        self.count = np.zeros(self.bins)
        self.first: Optional[float] = None

    def _bin(self, when: float) -> int:
        return int((when % self.period) / self.period * self.bins) % self.bins

    def center(self, when: float) -> Optional[np.ndarray]:
        """The usual error in this sample's bin, or None while it is not known."""
        if self.first is None:
            self.first = when
        b = self._bin(when)
        if when - self.first < self.period or self.count[b] < 1:
            return None
        return self.mean[b]

    def update(self, z: np.ndarray, when: float) -> None:
        b = self._bin(when)
        self.count[b] += 1
        rate = max(1.0 / self.count[b], 1.0 / self.periods)
        self.mean[b] += rate * (z - self.mean[b])

    def state_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "count": self.count.tolist(), "first": self.first,
                "units": "error"}  # fmt: skip

    def load_state_dict(self, d: dict) -> None:
        self.mean = np.asarray(d["mean"], dtype=np.float64).reshape(self.mean.shape)
        self.count = np.asarray(d["count"], dtype=np.float64)
        self.first = None if d["first"] is None else float(d["first"])



SCALE_BINS = 24  # bins per period at most: the hours of a day (of a week: 7 hours each)
SCALE_SAMPLES = 4  # ... with at least this many samples each a period (coarser: fewer bins)
SCALE_PERIODS = 14.0  # periods of memory
SCALE_WARM = 3.0  # periods' worth of samples before a bin answers
SCALE_CLIP = 4.0  # a bin's factor lies within [1/this, this]
# The tails are learnt again once, SCALE_RELEARN periods after the scale's first sample
# (a period after its bins answer) and once each bin has had RELEARN_SAMPLES samples,
# where its factors span more than RELEARN_SPREAD on some channel: learnt in the day's
# units, which such a stream's hours do not share (core.py, _relearn_due). White noise
# gives 1.6-1.8 over 24 bins of 48 samples; Poisson counts on a daily cycle 3.2-3.8.
# Over 12 bins of 16 samples (4 days at 30 minutes) white noise passed 2.5 in 7 of 40
# streams, hence the samples' bound (with 32: 0-2 of 40 white, spiky or AR(1) streams at
# 15 or 30 minutes or hourly).
SCALE_RELEARN = SCALE_WARM + 1.0
RELEARN_SAMPLES = 32.0
RELEARN_SPREAD = 2.5


class SeasonalScale:
    """The usual size of z at each time of day, against the day's: where the noise
    follows the clock (event counts, Poisson, are noisier by day than by night; a load
    busier at noon), one error scale for the whole day makes a busy hour's normal noise
    look like a burst and a quiet day at a busy hour like any night, so a day without
    its daily cycle went unseen. z is divided by its bin's factor, the bin's mean
    |clip(z)| over the mean of the bins that answer, so its unit is this hour's.

    The means are learnt from unflagged samples. A bin answers once a whole period has
    been seen and it holds SCALE_WARM periods' worth of samples; its memory is
    SCALE_PERIODS periods, long enough that a factor's own noise (about 4 %) stays
    small beside the differences it is there for.
    """

    def __init__(self, n: int, period: float, step: float):
        self.period = period
        per_period = period / step
        self.bins = int(max(1, min(SCALE_BINS, per_period // SCALE_SAMPLES)))
        per_bin = per_period / self.bins
        self.memory, self.min_count = SCALE_PERIODS * per_bin, SCALE_WARM * per_bin
        self.mean = np.zeros((self.bins, n))
        self.count = np.zeros(self.bins)
        self.first: Optional[float] = None
        self.checked: Optional[bool] = False  # relearn's check made (None: not saved)

    def bin(self, when: float) -> int:
        return int((when % self.period) / self.period * self.bins) % self.bins

    def factor(self, when: float, b: int) -> Optional[np.ndarray]:
        """(n,) the factor of bin b, or None while it does not answer."""
        if self.first is None:
            self.first = when
        if when - self.first < self.period or self.count[b] < self.min_count:
            return None
        known = self.count >= self.min_count
        overall = self.mean[known].sum(axis=0) / float(known.sum())
        factor = np.divide(self.mean[b], overall, out=np.ones_like(overall), where=overall > 0)
        return np.clip(factor, 1.0 / SCALE_CLIP, SCALE_CLIP, out=factor)

    def relearn_time(self, first: Optional[float] = None) -> Optional[float]:
        """When the tails' relearning check is due (None: no sample seen yet), from the
        scale's first sample (or `first`, where the kernel is about to set it)."""
        first = self.first if first is None else first
        if first is None:
            return None
        per_bin = self.min_count / SCALE_WARM  # samples a bin gets each period
        return first + max(SCALE_RELEARN, RELEARN_SAMPLES / per_bin) * self.period

    def units_differ(self) -> bool:
        """Whether the factors of the bins that answer span more than RELEARN_SPREAD
        (largest over smallest) on some channel: the hours' units are not the day's."""
        known = self.count >= self.min_count
        if known.sum() < 2:
            return False
        mean = self.mean[known]
        overall = mean.mean(axis=0)
        factor = np.divide(mean, overall, out=np.ones_like(mean), where=overall > 0)
        np.clip(factor, 1.0 / SCALE_CLIP, SCALE_CLIP, out=factor)
        return bool((factor.max(axis=0) > RELEARN_SPREAD * factor.min(axis=0)).any())

    def update(self, size: np.ndarray, b: int) -> None:
        """Learn an unflagged sample's |clip(z)| (n,) in bin b."""
        self.count[b] += 1
        rate = max(1.0 / self.count[b], 1.0 / self.memory)
        self.mean[b] += rate * (size - self.mean[b])

    def state_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "count": self.count.tolist(), "first": self.first,
                "checked": self.checked}  # fmt: skip

    def load_state_dict(self, d: dict) -> None:
        self.mean = np.asarray(d["mean"], dtype=np.float64).reshape(self.mean.shape)
        self.count = np.asarray(d["count"], dtype=np.float64).reshape(self.count.shape)
        self.first = None if d["first"] is None else float(d["first"])
        checked = d.get("checked")  # None: saved before the check existed (core.py)
        self.checked = None if checked is None else bool(checked)
