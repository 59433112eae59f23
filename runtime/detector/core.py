"""The detector: forecast errors in, a calibrated surprisal and alert events out.

Per sample (x, the forecast made for it, optionally its timestamp):

1. normalise   z = per-channel error in robust units (normalise.py), and optionally the
               sample's distance from its own slow average (`level_span`) too; with
               timestamps, each minus its usual value at this time of day is tried
               too, and the smaller kept (a daily pattern the forecaster misses, such
               as a nightly batch job, is normal).
2. statistics  per channel: |z| (spikes), |EWMA(clip z)| over `span` samples (level
               shifts; the clip keeps one spike from smearing), EWMA(min(z^2, 9)) over
               20 and its inverse (variance up, stuck / frozen values), and, when
               enabled, the distance from the slow average (drifts a forecaster follows).
3. surprisal   each statistic's tail probability under what the stream has shown to be
               normal (tails.py, flagged samples excluded; relearnt once where
               the error scale by time of day shows the hours' units are not the
               day's, _relearn_due); the smallest gives
               T = -log10(min p), whose own tail probability P gives the score:
               score = -log10 P. A score of 3 is a 1-in-1,000 sample on this stream.
4. verdict     flag when score >= log10(samples per false alarm): the false-alarm
               budget (`alarm_every`, "about one alarm per N samples / N days").
5. events      flags grouped into alerts with onset, end, peak, channels, times.

Everything is deterministic; `state_dict()` is JSON-able and resumes exactly.
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional, Union

import numpy as np

from edgernn.errors import InputError
from edgernn.runtime.detector import ckernel, regime
from edgernn.runtime.detector.alerts import Event, EventTracker
from edgernn.runtime.detector.calibration import _from_calibration
from edgernn.runtime.detector.config import (
    CONFIG_KEYS,
    DEFAULT_ALARM_EVERY_DAYS,
    DEFAULT_ALARM_EVERY_SAMPLES,
    make_config,
)
from edgernn.runtime.detector.normalise import (
    CLIP,
    ErrorNormaliser,
    NormaliserPair,
    SampleFloors,
    SeasonalProfile,
    SeasonalScale,
)
from edgernn.runtime.detector.outputs import BlockResult, DetectorOutput, _detector_fields_of
from edgernn.runtime.detector.reference import ReferenceTerm
from edgernn.runtime.detector.tails import PeakTable, TailTable
from edgernn.runtime.detector.timeparse import as_seconds, as_seconds_array, format_time

MAX_SCORE = 50.0
OPTIONAL_PARTS = ("season_scale", "episodes")  # state parts older versions did not save
ENERGY_PRIOR_SCALE = 0.5  # see _prior
PRIOR_WEIGHT = 10.0  # samples' worth of the prior tails
MIN_SECOND_STAGE = 30.0  # first-stage samples before the second stage learns
# The energy's window, fixed (not `span`): over 20 squares its normal spread is about 0.3
# (see _prior). Over 10 or 14 the stuck-value statistic reached its cap on the quiet
# stretch after each jump of a noiseless square wave before the tails learnt it, and a
# stream idle in training alarmed for a day once it came alive (tests/test_detector.py,
# tests/test_detector_regime.py; README, "The shift statistic over 10 samples").
ENERGY_SPAN = 20.0
MIN_ENERGY = 0.01  # stuck-value statistic 1 / EWMA(z^2) tops out at 100 (a flat channel)
N_INIT = 20  # errors whose median / MAD start an uncalibrated normaliser
N_STEPS = 50  # time steps whose median is the sampling interval
PERIODS = {"day": (86400.0, 1440), "week": (604800.0, 2016)}  # seconds, most bins
_UNSET = object()
ANCHOR_RATE = 3.0  # tails below this many times the false-alarm rate are extrapolated
# The time-of-day baseline learns errors of at most this many scales: a bound for
# numbers, not for patterns. Under the scale's floor (0.1 x the mean sample-to-sample
# change) a noiseless pattern's repeating error reaches 10 x samples per period / jumps
# per period scales (1,440 for a daily square wave in 5-minute samples), and the
# baseline must learn it whole.
MAX_USUAL = 1e9
STAT_GRID = (-2.0, 4.0, 72)  # statistics: log10 from 0.01 to 10,000, 12 cells a decade
TOP_GRID = (0.0, 30.0, 240)  # T = -log10 p_min: 0 to 30 in steps of 0.125
N_STATS = 5  # statistics per channel (see _statistics)
BACKENDS = ("auto", "c", "numpy")
_F32 = np.dtype(np.float32)


class Detector:
    """One stream's anomaly detector (see the module docstring).

    >>> det = Detector(channels=["cpu", "mem"])           # or Detector.from_meta(model)
    >>> out = det.score_one(sample, forecast, time="2024-05-01 10:00:00")
    >>> out.score, out.anomaly, out.onset, det.events

    channels: channel names (events name them). error_center, error_scale: the forecast
    error's per-channel center / scale from validation (calibrate(); None: learnt from
    the first errors). Every other keyword is a DetectorConfig option (config.py).

    backend: "auto" (default, or $EDGERNN_DETECTOR_BACKEND): the compiled kernel
    (ckernel.py, kernel.c) where it builds and loads, else numpy; "c": the kernel or an
    error; "numpy": the reference implementation. Both compute the same scores, flags
    and events, and either resumes the other's state_dict(). `det.backend` says which
    runs, `det.fallback_reason` why not "c" under "auto".
    """

    def __init__(
        self,
        channels: Optional[list[str]] = None,
        error_center=None,
        error_scale=None,
        backend: Optional[str] = None,
        **options,
    ):
        self.channels = None if channels is None else [str(c) for c in channels]
        self.error_center = _vector(error_center, "error_center")
        self.error_scale = _vector(error_scale, "error_scale")
        self.config = make_config(options)
        self.options = self.config.to_dict()
        self._n = self._known_channels()
        self._choose_backend(backend)
        self.reset()

    def _choose_backend(self, backend: Optional[str]) -> None:
        requested = backend or os.environ.get("EDGERNN_DETECTOR_BACKEND") or "auto"
        if requested not in BACKENDS:
            raise InputError(f"unknown detector backend {requested!r}; choose from auto, c, numpy")
        self._requested, self._lib = requested, None
        self.backend, self.fallback_reason = "numpy", None
        if requested == "numpy":
            return
        why = None
        if self.config.reference > 0:
            why = "the reference term (option reference) runs in numpy only"
        else:
            try:
                self._lib = ckernel.load_library()
            except ckernel.CStepUnavailable as e:
                why = str(e)
        if why is not None:
            self._no_kernel(why)
        else:
            self.backend = "c"

    def _no_kernel(self, why: str) -> None:
        if self._requested == "c":
            raise ckernel.CStepUnavailable(f"detector backend c: {why}")
        self._lib, self.backend, self.fallback_reason = None, "numpy", why

    def _attach_kernel(self, lib) -> None:
        """Use `lib` (a loaded kernel) from now on (ckernel's probe)."""
        self._lib, self.backend = lib, "c"
        self._kernel = ckernel.Kernel(lib, self)

    def _known_channels(self) -> Optional[int]:
        sizes = {len(v) for v in (self.channels, self.error_center, self.error_scale) if v}
        if len(sizes) > 1:
            raise InputError("channels, error_center and error_scale differ in length")
        if self.error_scale is not None and not all(s > 0 for s in self.error_scale):
            raise InputError("error_scale must be > 0 for every channel")
        ref = self.config.reference_channels
        if ref is not None and (self.channels is None or not set(ref) <= set(self.channels)):
            missing = sorted(set(ref) - set(self.channels or []))
            raise InputError(f"reference channel(s) {', '.join(missing)} are not channels")
        return sizes.pop() if sizes else None

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments, JSON-able: Detector(**det.get_params()) is a fresh twin."""
        return {
            "channels": self.channels,
            "error_center": self.error_center,
            "error_scale": self.error_scale,
            **self.options,
        }

    @classmethod
    def from_meta(cls, meta, **options) -> Detector:
        """From a model (or its ModelMeta): its calibration's center / scale if any, else
        its error scale, else learnt from the stream. None-valued options are ignored."""
        meta = getattr(meta, "meta", meta)
        kwargs: dict[str, Any] = {"channels": list(meta.channels)}
        calibration = meta.extra.get("detector")
        if isinstance(calibration, dict):
            kwargs.update(_from_calibration(calibration, meta.n_channels))
        elif meta.error_scale is not None:
            kwargs["error_scale"] = list(meta.error_scale)
        kwargs.update({k: v for k, v in options.items() if v is not None})
        return cls(**kwargs)

    # -- state -------------------------------------------------------------------------
    def reset(self) -> None:
        """Back to the state right after construction: warm-up again, no events."""
        self.t = 0
        self._learning_until = self.config.warmup  # no verdicts before this sample
        self._floors: Optional[SampleFloors] = None
        self._model: Optional[ErrorNormaliser] = None
        self._level_norm: Optional[ErrorNormaliser] = None
        self._profile: Optional[SeasonalProfile] = None
        self._season_scale: Optional[SeasonalScale] = None  # made with the profile
        self._level: Optional[np.ndarray] = None  # slow EWMA of the samples
        self._first: Optional[TailTable] = None
        self._second: Optional[TailTable] = None
        self._mean: Optional[np.ndarray] = None  # EWMA of clipped z
        self._energy: Optional[np.ndarray] = None  # EWMA of min(z^2, CLIP^2)
        self._moments: Optional[np.ndarray] = None  # (2, C): rows _mean, _energy
        # (regime.REGIME_ROWS, C), once the normalisers are ready (regime.py)
        self._regime: Optional[np.ndarray] = None
        self._reference: Optional[ReferenceTerm] = None  # the expert option `reference`
        self._steps: list[float] = []
        self._step: Optional[float] = None  # the sampling interval, seconds
        self._last_time: Optional[float] = None
        self._events = EventTracker(self.channels, self.config.holdoff)
        # constants of the per-sample path (the config does not change)
        self._threshold_step: Any = _UNSET  # the _step the cached threshold is for
        self._threshold = self._anchor_fraction = 0.0
        self._alpha = 2.0 / (self.config.span + 1.0)
        self._drift_unit = math.sqrt(self._alpha / (2.0 - self._alpha))
        self._energy_alpha = 2.0 / (ENERGY_SPAN + 1.0)
        self._alphas = np.array([[self._alpha], [self._energy_alpha]])  # (2, 1)
        self._pair: Optional[NormaliserPair] = None  # the normalisers, once both ready
        self._kernel = None if self._lib is None else ckernel.Kernel(self._lib, self)
        if self._n is not None:
            self._build(self._n)

    def _build(self, n: int) -> None:
        cfg = self.config
        self._n = n
        if self._kernel is not None and n > ckernel.MAX_CHANNELS:
            self._no_kernel(f"more than {ckernel.MAX_CHANNELS} channels")
            self._kernel = None
        # constants of the per-sample path as arrays (numpy's max / min take them faster
        # than Python floats; same values)
        self._consts = {
            "clip": np.full(n, CLIP), "-clip": np.full(n, -CLIP),
            "min_energy": np.full(n, MIN_ENERGY), "tiny": np.full(N_STATS * n, 1e-300),
        }  # fmt: skip
        self._floors = SampleFloors(n, cfg.level_floor, cfg.memory)
        self._model = ErrorNormaliser(
            n, cfg.scale_span, N_INIT, self.error_center, self.error_scale
        )
        self._level_norm = ErrorNormaliser(n, cfg.scale_span, N_INIT, centered=True)
        self._first = TailTable(N_STATS * n, *STAT_GRID, log=True, memory=cfg.memory)
        self._first.peaks = PeakTable(self._first, n)  # |z|: the one-sample statistic
        self._second = TailTable(1, *TOP_GRID, log=False, memory=cfg.memory)
        if cfg.reference > 0:
            self._reference = ReferenceTerm(self._ref_index(), cfg.reference, cfg.warmup, N_INIT,
                                            STAT_GRID, cfg.memory, PRIOR_WEIGHT)  # fmt: skip

    def _reference_fields(self) -> dict[str, Any]:
        """The reference term's state keys (the same when it is off)."""
        if self._reference is None:
            return {"smooth": None, "ref_seen": [], "ref": None}
        return self._reference.state_fields()

    def _ref_index(self) -> list[int]:
        chosen = self.config.reference_channels
        if chosen is None:
            return list(range(self._n))
        return [self.channels.index(c) for c in chosen]

    @property
    def n_channels(self) -> Optional[int]:
        return self._n

    @property
    def events(self) -> list[Event]:
        """Closed events, oldest first (the last 100)."""
        return self._events.closed

    @property
    def open_event(self) -> Optional[Event]:
        return self._events.open

    @property
    def threshold(self) -> float:
        """The score a sample must reach to be flagged: log10(samples per false alarm)."""
        budget = self.config.budget
        if budget.samples is not None:
            samples = budget.samples
        elif budget.seconds is not None and self._step:
            samples = budget.seconds / self._step
        elif self._step:  # "auto" with timestamps
            samples = DEFAULT_ALARM_EVERY_DAYS * 86400.0 / self._step
        else:  # "auto" without, or a duration before the interval is known
            samples = DEFAULT_ALARM_EVERY_SAMPLES
        return math.log10(max(samples, 2.0))

    def _current_threshold(self) -> float:
        """The threshold, recomputed only when the sampling interval it depends on
        changes; the tails' anchors follow it (set every sample: the tables may have
        been rebuilt)."""
        if self._threshold_step is not self._step:
            self._threshold_step = self._step
            self._threshold = self.threshold
            self._anchor_fraction = ANCHOR_RATE * 10.0**-self._threshold
        ref_table = None if self._reference is None else self._reference.table
        for table in (self._first, self._second, ref_table):
            if table is not None:
                table.extrapolate_below = self._anchor_fraction
        return self._threshold

    def close_event(self) -> Optional[Event]:
        """Close the open event now (e.g. at the end of a file); returns it, or None."""
        return self._events.close()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly, as JSON-able values."""
        parts = {
            name: None if part is None else part.state_dict()
            for name, part in self._parts().items()
        }
        return {
            "params": self.get_params(),
            "t": self.t,
            "learning_until": self._learning_until,
            "n_channels": self._n,
            "parts": parts,
            "mean": _list(self._mean),
            "energy": _list(self._energy),
            "level": _list(self._level),
            "regime": _list(self._regime),
            **self._reference_fields(),
            "steps": self._steps,
            "step": self._step,
            "last_time": self._last_time,
            "events": self._events.state_dict(),
        }

    def _parts(self) -> dict[str, Any]:
        return {
            "floors": self._floors, "model": self._model, "level_norm": self._level_norm,
            "profile": self._profile, "first": self._first, "second": self._second,
            "ref_table": None if self._reference is None else self._reference.table,
            "season_scale": self._season_scale,
            "episodes": None if self._first is None else self._first.peaks,
        }  # fmt: skip

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Resume from state_dict(); the saved detector must have had the same settings."""
        try:
            if {k: d["params"].get(k) for k in CONFIG_KEYS} != self.options:
                raise InputError("saved detector state was made with other detector settings")
            n = d["n_channels"]
            if n is not None and self._n is not None and n != self._n:
                raise InputError(f"saved detector state has {n} channels, this detector {self._n}")
            self.reset()
            if n is not None:
                self._build(int(n))
            self.t = int(d["t"])
            self._learning_until = int(d.get("learning_until", self.config.warmup))
            self._step = None if d["step"] is None else float(d["step"])
            if d["parts"]["profile"] is not None:
                self._make_season()
            for name, part in self._parts().items():
                saved = d["parts"].get(name) if name in OPTIONAL_PARTS else d["parts"][name]
                if saved is None and name in OPTIONAL_PARTS:
                    continue  # saved before it existed: it starts afresh
                if (saved is None) != (part is None):
                    raise ValueError(f"{name} present in one of the states only")
                if part is not None:
                    part.load_state_dict(saved)
            self._mean, self._energy = _array(d["mean"]), _array(d["energy"])
            self._moments = None  # rebuilt from them
            self._level = _array(d["level"])
            self._regime = regime.rows_from_state(_array(d.get("regime")), self._n)
            self._pair = None  # the normalisers' arrays were replaced
            if self._kernel is not None:
                self._kernel.invalidate()
            if self._reference is not None:
                self._reference.load_state_fields(d)
            self._steps = [float(s) for s in d["steps"]]
            self._last_time = None if d["last_time"] is None else float(d["last_time"])
            self._events.load_state_dict(d["events"])
            scale = self._season_scale
            if scale is not None and scale.checked is None:  # saved before the check
                due = scale.relearn_time()
                scale.checked = due is not None and self._last_time is not None and (
                    self._last_time >= due
                )
            saved_profile = d["parts"]["profile"]
            if saved_profile is not None and saved_profile.get("units") != "error":
                self._profile_in_units()
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise InputError(f"damaged detector state ({e!r})") from None

    def _profile_in_units(self) -> None:
        """The seasonal profile just loaded from an earlier edgernn's state holds z:
        times the scale the stream resumes with, it is in the error's units again (the
        scale it had when each bin learnt is gone; the current one is the best estimate)."""
        profile, scales = self._profile, (self._model.scale, self._level_norm.scale)
        if any(s is None for s in scales):
            profile.mean[:] = 0.0  # no scale yet (nothing much learnt): learn afresh
            profile.count[:] = 0.0
            return
        profile.mean *= np.maximum(np.stack(scales), self._floors.floor()).reshape(-1)

    # -- scoring -----------------------------------------------------------------------
    def score_one(self, x, forecast, time: Union[str, float, None] = None) -> DetectorOutput:
        """Score sample x [C] against the forecast made for it [C] (raw units); `time`:
        its timestamp (text from a time column, or epoch seconds), if the input has one."""
        x = self._check(x, "sample")
        forecast = self._check(forecast, "forecast")
        when = as_seconds(time)
        if self._kernel is not None and self._kernel_ready():
            return self._score_kernel_one(x, forecast, time, when)
        return self._score_numpy(x, forecast, time, when)

    def score_fields(self, x: np.ndarray, forecast: np.ndarray) -> tuple[DetectorOutput, dict]:
        """score_one(x, forecast) (no timestamp) and its record fields as
        runtime/monitor.py's _detector_fields makes them, for the per-sample path (the
        live run): x and forecast numpy vectors. Where they are float32, finite, of the
        detector's channels and the kernel is ready, straight to it: no conversions, checks or
        record made twice; anything else, or where score_one is replaced (a subclass's),
        through score_one (its errors too)."""
        kernel, n = self._kernel, self._n
        if (
            x.shape != (n,) or forecast.shape != (n,) or x.dtype != _F32 or forecast.dtype != _F32
            or not self.live_ready()
        ):  # fmt: skip
            out = self.score_one(x, forecast)
            return out, _detector_fields_of(out)
        flat, W, score, flags, contrib = kernel.one_rows()
        np.concatenate((x, forecast), out=flat)  # the rows x and f, in one call
        # finite float32 values: their squares' sum is finite (< 2C x 1.2e77, so no
        # overflow warning), a NaN or inf makes it NaN or inf: then score_one's error
        if not math.isfinite(flat.dot(flat)):
            out = self.score_one(x, forecast)
            return out, _detector_fields_of(out)
        W[0] = math.nan
        threshold, anchor = self.live_threshold()
        t = self.t
        kernel.call(1, threshold, anchor)
        return self.kernel_verdict(t, threshold)

    # -- the live loop's C scoring (runtime/livescore.py) ----------------------------
    def live_ready(self) -> bool:
        """Whether score_fields() runs the kernel on the next sample (one of the
        detector's channels, float32 and finite): the kernel loaded, the normalisers
        ready, score_one not replaced."""
        return (
            self._kernel is not None and self._n is not None
            and type(self).score_one is Detector.score_one and "score_one" not in self.__dict__
            and (self._pair is not None and self._moments is not None or self._kernel_ready())
        )  # fmt: skip

    def live_threshold(self) -> tuple[float, float]:
        """The threshold and the tails' anchor the kernel takes for the next sample
        without a timestamp."""
        threshold = self._threshold
        if self._threshold_step is not self._step:
            threshold = self._current_threshold()
        return threshold, self._anchor_fraction

    def kernel_verdict(self, t: int, threshold: float) -> tuple[DetectorOutput, dict]:
        """score_fields()'s result for sample t, which the kernel has just scored into
        its one() buffers (without a timestamp) against `threshold`."""
        _, _, score, flags, contrib = self._kernel.one_rows()
        fl = int(flags[0])
        contributions = contrib[0].copy()
        if fl & ckernel.F_LEARNING:
            return (DetectorOutput(0.0, False, None, True, contributions),
                    {"score": 0.0, "anomaly": 0, "onset": 0})  # fmt: skip
        value, flagged = float(score[0]), bool(fl & ckernel.F_FLAGGED)
        out = DetectorOutput(value, flagged, threshold, False, contributions)
        if not fl & ckernel.F_REPLAY:  # no event open or opened: to_record()'s keys
            return out, {"score": value, "anomaly": int(flagged), "onset": 0,
                         "threshold": threshold}  # fmt: skip
        self._track_event(out, t, format_time(None))
        return out, _detector_fields_of(out)

    def _track_event(self, out: DetectorOutput, t: int, stamp: Optional[str]) -> None:
        """The event tracker on sample t's verdict: the event opened or closed on it, the
        open event's id. A sample inside an open alert that does not top its peak so far
        tells nothing new: its score reads 0 (the flag says the alert goes on), so one
        threshold on the score sees each alert where it first crosses it, and again only
        where it grows, not on every row of a fault that lasts (README, "News")."""
        repeat = self._events.repeats(out.score)
        opened, closed = self._events.update(t, out.anomaly, out.score, out.contributions, stamp)
        out.onset, out.event_opened, out.event_closed = opened is not None, opened, closed
        if self._events.open is not None:
            out.event = self._events.open.id
        if repeat:
            out.mark_repeat()

    def _score_numpy(self, x: np.ndarray, forecast: np.ndarray, time, when) -> DetectorOutput:
        """score_one() in numpy (the reference; the kernel computes the same)."""
        self._track_time(when)
        if when is not None:
            self._relearn_due(when)
        t = self.t
        self.t += 1
        learning = t < self._learning_until
        errors = self._errors(x, forecast)  # (2, C): the forecast error, the level's
        repeat = self._floors.prev == x if self._floors.prev is not None else None
        self._floors.observe(x)
        floor = self._floors.floor()
        if self._pair is None:
            if not self._model.ready or not self._level_norm.ready:
                self._model.update(errors[0], floor, learning)
                self._level_norm.update(errors[1], floor, learning)
                return self._neutral()
            self._form_pair()
        deviation = self._pair.deviation(errors, floor)
        z = (deviation[0] / deviation[1]).reshape(-1)
        usual = self._seasonal_center(when)
        if self._profile is not None and when is not None:
            # in the error's own units: an error that repeats every day is subtracted
            # exactly, however the scale (the unit of z) moves in between
            dev, bound = deviation[0].reshape(-1), deviation[1].reshape(-1)
            self._profile.update(np.clip(dev, -MAX_USUAL * bound, MAX_USUAL * bound), when)
            if usual is not None:  # what is usual at this time of day is normal
                unusual = (dev - usual) / bound
                z = np.where(np.abs(unusual) < np.abs(z), unusual, z)
        scale_bin, size = -1, None
        if self._profile is not None and when is not None:  # z in this hour's units
            scale_bin = self._season_scale.bin(when)
            n = self._n
            size = np.minimum(np.abs(z[:n]), CLIP)
            factor = self._season_scale.factor(when, scale_bin)
            if factor is not None:
                z[:n] /= factor
        stats = self._statistics(z)
        threshold = self._current_threshold()
        at_first = self._first.locate(stats)
        p_first = self._first.probability_at(at_first, self._prior(stats), PRIOR_WEIGHT)
        p_ref = None if self._reference is None else self._reference.probability(x, t, floor)
        score, top, top_bin = self._surprisal(
            p_first if p_ref is None else np.concatenate([p_first, p_ref])
        )
        flagged = not learning and score >= threshold
        # What normal looks like is learnt from unflagged samples and from each alert's
        # onset: a pattern that keeps coming back (normal spikes the warm-up did not
        # show) becomes normal at its true rate, while the rest of a sustained fault
        # teaches nothing and keeps scoring. The trackers (scale, slow average) follow
        # flagged samples at `flagged_weight`, so a lasting change of regime is absorbed.
        onset = flagged and self._events.open is None
        self._learn(at_first[1], top_bin, 1.0 if onset or not flagged else 0.0)
        if onset or not flagged:
            self._first.peaks.observe(stats[: self._n])
        if scale_bin >= 0 and not flagged:
            self._season_scale.update(size, scale_bin)
        weight = self.config.flagged_weight if flagged else 1.0
        if weight > 0:
            self._pair.update(deviation, learning, weight)
            if self.config.level_span > 0:
                self._level += weight * (2.0 / (self.config.level_span + 1.0)) * (x - self._level)
        if self._model.span > 0:  # a frozen scale stays frozen
            regime.follow(self._regime, self._model.scale, deviation, repeat, flagged)
        contributions = self._contributions(p_first, p_ref)
        if learning:  # no verdict yet: a neutral score, the stream is still being learnt
            return DetectorOutput(0.0, False, None, True, contributions)
        out = DetectorOutput(score, flagged, threshold, False, contributions)
        self._track_event(out, t, time if isinstance(time, str) else format_time(when))
        return out

    # -- the compiled kernel ---------------------------------------------------------
    def _kernel_ready(self) -> bool:
        """Whether the next sample's computation is the kernel's: the normalisers are
        ready (their pair formed, the moments made). Before that, numpy."""
        if self._pair is None:
            if self._model is None or not self._model.ready or not self._level_norm.ready:
                return False
            if self._level is None or self._floors.prev is None:
                return False
            self._form_pair()
            self._kernel.invalidate()
        if self._moments is None:
            self._ensure_moments()
            self._kernel.invalidate()
        return True

    def _score_kernel_one(self, x, forecast, time, when) -> DetectorOutput:
        self._track_time(when)
        if when is not None:
            self._season_due()
            self._relearn_due(when)
        threshold = self._threshold  # the kernel takes the anchor as an argument
        if self._threshold_step is not self._step:
            threshold = self._current_threshold()
        X, F, W, score, flags, contrib = self._kernel.one()
        X[0], F[0], W[0] = x, forecast, math.nan if when is None else when
        t = self.t
        self._kernel.call(1, threshold, self._anchor_fraction)
        fl = int(flags[0])
        contributions = contrib[0].copy()
        if fl & ckernel.F_LEARNING:
            return DetectorOutput(0.0, False, None, True, contributions)
        value, flagged = float(score[0]), bool(fl & ckernel.F_FLAGGED)
        out = DetectorOutput(value, flagged, threshold, False, contributions)
        if fl & ckernel.F_REPLAY:
            self._track_event(out, t, time if isinstance(time, str) else format_time(when))
        return out

    def score_block(self, X, F, times=None) -> BlockResult:
        """score_one() on each row of X [N, C] against F [N, C] (`times`: N timestamps
        or None), as arrays: the same verdicts, events and state as N calls, in one
        kernel call per stretch of rows on the c backend. A bad row raises score_one's
        InputError after the rows before it were scored."""
        X, F = _matrix(X, "samples"), _matrix(F, "forecasts")
        if X.shape != F.shape:
            raise InputError(f"samples {X.shape} and forecasts {F.shape} differ in shape")
        times = None if times is None else list(times)
        if times is not None and len(times) != len(X):
            raise InputError(f"{len(times)} timestamps for {len(X)} rows")
        n_rows = len(X)
        if n_rows and (self._n is None or X.shape[1] != self._n):
            self._check(X[0], "sample")  # builds the detector, or raises its error
        bad = n_rows
        if not (np.isfinite(X).all() and np.isfinite(F).all()):
            bad = int(np.argmin(np.isfinite(X).all(axis=1) & np.isfinite(F).all(axis=1)))
        result = BlockResult.empty(bad, self._n or X.shape[1])
        whens = None if times is None else as_seconds_array(times[:bad])
        i = 0
        while i < bad and (self._kernel is None or not self._kernel_ready()):
            when = None if whens is None or math.isnan(whens[i]) else float(whens[i])
            result.set(i, self._score_numpy(X[i], F[i], None if times is None else times[i], when))
            i += 1
        if i < bad:
            self._kernel_rows(X, F, times, whens, i, bad, result)
        if bad < n_rows:  # the same error score_one gives, the rows before it scored
            self.score_one(X[bad], F[bad], None if times is None else times[bad])
        return result

    def score_rows(self, X, F, lo: int, hi: int, result: BlockResult, times=None,
                   whens=None) -> None:
        """score_block() of rows lo..hi-1 of X / F (contiguous float64 [N, C], a whole
        chunk's), into the same rows of `result` (a BlockResult of N rows): the same
        verdicts, events and state. `times` (N timestamps or None) and `whens`
        (as_seconds_array(times[lo:hi]) in rows lo..hi-1 at least) are the chunk's too.
        A chunk scored in short pieces (the online head's) pays the conversions once per
        chunk; a piece goes to the kernel directly once it is ready."""
        if hi <= lo:
            return
        fast = (
            self._kernel is not None and X.shape[1] == self._n and self._kernel_ready()
            and (whens is None or self._step is not None)
            and bool(np.isfinite(X[lo:hi]).all()) and bool(np.isfinite(F[lo:hi]).all())
        )  # fmt: skip
        if fast:
            self._kernel_rows(X, F, times, whens, lo, hi, result)
            return
        part = self.score_block(X[lo:hi], F[lo:hi], times=None if times is None else times[lo:hi])
        result.put(lo, part)

    def _kernel_rows(self, X, F, times, whens, start: int, stop: int, result) -> None:
        """Rows [start, stop) through the kernel: the time tracking first (once the
        sampling interval is known from some row on, the rows before it are one stretch
        and the rest another: the threshold and the season depend on it), one kernel
        call per stretch, then the event tracker on the rows it must see (flagged, or
        inside an open event) only."""
        stretches = []
        split = start  # the first row with the interval (as it stands) known
        if whens is not None and self._step is None:
            stretches.append((start, self._current_threshold(), self._anchor_fraction, False))
            split = stop
            for j in range(start, stop):
                w = float(whens[j])
                if w == w:
                    self._track_time(w)
                    if self._step is not None:
                        split = j
                        break
        if split < stop:
            seasons = False  # the rows have timestamps: the season may be due
            if whens is not None and self._step is not None:
                timed = np.flatnonzero(~np.isnan(whens[split:stop]))
                if len(timed):
                    self._last_time = float(whens[split + timed[-1]])
                    seasons = True
            stretches.append((split, self._current_threshold(), self._anchor_fraction, seasons))
        bounds = [stretch[0] for stretch in stretches[1:]] + [stop]
        if len(stretches) > 1 and stretches[1][0] == start:
            stretches, bounds = stretches[1:], bounds[1:]
        nan_when = self._kernel.nan_when(stop) if whens is None else None
        for (lo, threshold, anchor, seasons), hi in zip(stretches, bounds):
            cut = None
            if seasons:
                self._season_due()
                cut = self._relearn_row(whens, lo, hi)
            if cut is not None:  # the tails' relearning check is due at row `cut`
                if cut > lo:
                    self._run_stretch(X, F, times, whens, nan_when, lo, cut, threshold, anchor,
                                      result)  # fmt: skip
                self._relearn_due(float(whens[cut]))
                lo = cut
            self._run_stretch(X, F, times, whens, nan_when, lo, hi, threshold, anchor, result)

    def _run_stretch(self, X, F, times, whens, nan_when, lo, hi, threshold, anchor, result) -> None:
        """Rows [lo, hi) through the kernel at one threshold, then the event tracker on
        the rows it must see."""
        t0 = self.t
        flags = result.flags[lo:hi]
        score, contrib = result.raw_score[lo:hi], result.contributions[lo:hi]
        whole = (X, F, nan_when if whens is None else whens, result.raw_score,
                 result.flags, result.contributions)  # fmt: skip
        if not self._kernel.run_rows(whole, lo, hi, threshold, anchor):
            w = nan_when[lo:hi] if whens is None else np.ascontiguousarray(whens[lo:hi])
            Xs, Fs = np.ascontiguousarray(X[lo:hi]), np.ascontiguousarray(F[lo:hi])
            self._kernel.run(Xs, Fs, w, threshold, anchor, score, flags, contrib)
        result.raw_threshold[lo:hi] = threshold
        for r in np.flatnonzero(flags & ckernel.F_REPLAY).tolist():
            i = lo + r
            raw = None if times is None else times[i]
            when = None if whens is None or math.isnan(whens[i]) else float(whens[i])
            stamp = raw if isinstance(raw, str) else format_time(when)
            flagged = bool(flags[r] & ckernel.F_FLAGGED)
            if self._events.repeats(float(score[r])):  # as _track_event
                flags[r] |= ckernel.F_REPEAT
            opened, closed = self._events.update(
                t0 + r, flagged, float(score[r]), contrib[r], stamp
            )
            if opened is not None:
                result.opened[i] = opened
            if closed is not None:
                result.closed[i] = closed
            if self._events.open is not None:
                result.event[i] = self._events.open.id

    def _surprisal(self, p: np.ndarray) -> tuple[float, float, int]:
        """(score, T, T's bin in the second stage): T = -log10 of the smallest tail
        probability, the score -log10 of T's own tail probability (prior: K independent
        statistics, P = K 10^-T)."""
        smallest = max(float(np.minimum.reduce(p)), 1e-300)
        top = -math.log10(smallest)
        prior = min(1.0, len(p) * smallest)
        tail, top_bin = self._second.scalar_probability(top, prior, PRIOR_WEIGHT)
        return min(-math.log10(max(float(tail), 1e-300)), MAX_SCORE), top, top_bin

    def _errors(self, x: np.ndarray, forecast: np.ndarray) -> np.ndarray:
        """(2, C): the forecast error and x minus its slow average (which moves on
        normal samples, see score_one); the latter zeros when the statistic is off
        (level_span 0: its tail probability is then 1)."""
        if self._level is None:
            self._level = x.copy()
        errors = np.empty((2, len(x)))
        np.subtract(forecast, x, out=errors[0])
        if self.config.level_span <= 0:
            errors[1] = 0.0
        else:
            np.subtract(x, self._level, out=errors[1])
        return errors

    def _statistics(self, z_both: np.ndarray) -> np.ndarray:
        """(5C,) from z_both = [z, z_level] (2C,): |z|, |EWMA(clip z)| in its own std
        units, EWMA(min(z^2, 9)), its inverse, and |z_level|, the sample's distance from
        its slow average. Written in place into one fresh array (fewer small calls)."""
        n = self._n
        z = z_both[:n]
        self._ensure_moments()
        step = np.empty((2, n))  # clip(z), then its square: both EWMAs in one update
        clipped = np.maximum(z, self._consts["-clip"], out=step[0])
        np.minimum(clipped, self._consts["clip"], out=clipped)
        np.multiply(clipped, clipped, out=step[1])
        step -= self._moments
        step *= self._alphas
        self._moments += step
        mean, energy = self._mean, self._energy
        stats = np.empty(N_STATS * n)
        drift = np.abs(mean, out=stats[n : 2 * n])
        drift /= self._drift_unit
        stats[2 * n : 3 * n] = energy
        inverse = np.maximum(energy, self._consts["min_energy"], out=stats[3 * n : 4 * n])
        np.divide(1.0, inverse, out=inverse)
        np.abs(z, out=stats[:n])
        np.abs(z_both[n:], out=stats[4 * n :])
        return stats

    def _form_pair(self) -> None:
        """The normalisers are ready: updated as one pair from now on."""
        self._pair = NormaliserPair(self._model, self._level_norm)
        if self._regime is None:
            self._regime = regime.start_rows(self._model.scale)

    def _ensure_moments(self) -> None:
        if self._moments is None:  # mean and energy as the rows of one array
            if self._mean is None:
                self._mean, self._energy = np.zeros(self._n), np.ones(self._n)
            self._moments = np.stack([self._mean, self._energy])
            self._mean, self._energy = self._moments

    def _prior(self, stats: np.ndarray) -> np.ndarray:
        """The statistics' prior tail probabilities: exp(-v), and for the energy, whose
        normal value is 1 with a spread of about 0.3 (an EWMA of 20 squares),
        exp(-(v - 1) / ENERGY_PRIOR_SCALE). With exp(-v) a noise burst's energy (3-6)
        could never score above 3-4: the prior alone, worth 10 samples, held its tail
        probability at 10^-4 where the data said far less."""
        prior = np.negative(stats)
        n = self._n
        energy = prior[2 * n : 3 * n]
        energy += 1.0
        np.minimum(energy, 0.0, out=energy)
        energy /= ENERGY_PRIOR_SCALE
        return np.exp(prior, out=prior)

    def _learn(self, stat_bins: np.ndarray, top_bin: int, weight: float) -> None:
        """Learn this sample's statistics (their first-stage bins) and T (its bin)."""
        if weight <= 0:
            return
        if self._first.total >= MIN_SECOND_STAGE:
            self._second.add_scalar(top_bin, weight)
        self._first.add_at(stat_bins, weight)
        if self._reference is not None:
            self._reference.learn(weight)

    def _contributions(self, p_first: np.ndarray, p_ref: Optional[np.ndarray]) -> np.ndarray:
        logs = np.log10(np.maximum(p_first, self._consts["tiny"]))
        surprise = np.negative(np.minimum.reduce(logs.reshape(N_STATS, self._n), axis=0))
        if p_ref is not None:
            self._reference.add_surprise(surprise, p_ref)
        total = float(np.add.reduce(surprise))
        return surprise / total if total > 0 else np.zeros(self._n)

    # -- time and seasons --------------------------------------------------------------
    def _relearn_due(self, when: float) -> None:
        """The tails' relearning check, once, on the first sample at the error scale by
        time of day's relearn_time() (4 periods after its first sample: a period after
        its bins answer; later where a bin has had fewer than RELEARN_SAMPLES by then).
        Until the bins answer, z is in the day's units, and the tails learn it
        so: on a stream whose noise follows the clock (Poisson counts, quiet by night),
        the quiet hours' small errors looked like stuck values, and the tail of that
        statistic learnt then made a day without its cycle ordinary for the rest of the
        stream. Where the bins' factors span more than RELEARN_SPREAD, the tails are
        forgotten and learnt again in the hours' units; elsewhere (the factors' own noise)
        they are kept: relearning costs the normal patterns they had learnt (README,
        "Tails relearnt in the hours' units")."""
        scale = self._season_scale
        if scale is None or scale.checked or scale.first is None or when < scale.relearn_time():
            return
        scale.checked = True
        if scale.units_differ():
            self._first.clear()
            self._second.clear()
            # a warm-up again: against the bare prior, the first samples would alarm
            self._learning_until = self.t + self.config.warmup
            if self._kernel is not None:
                self._kernel.invalidate()

    def _relearn_row(self, whens: Optional[np.ndarray], lo: int, hi: int) -> Optional[int]:
        """The row of [lo, hi) the kernel must stop before for _relearn_due, or None.
        The kernel sets the scale's first sample at the first timed row where unset."""
        scale = self._season_scale
        if whens is None or scale is None or scale.checked:
            return None
        first = scale.first
        if first is None:
            timed = np.flatnonzero(~np.isnan(whens[lo:hi]))
            if not len(timed):
                return None
            first = float(whens[lo + timed[0]])
        due = np.flatnonzero(whens[lo:hi] >= scale.relearn_time(first))
        return lo + int(due[0]) if len(due) else None

    def _track_time(self, when: Optional[float]) -> None:
        if when is None:
            return
        if self._last_time is not None and self._step is None:
            gap = when - self._last_time
            if gap > 0:
                self._steps.append(gap)
            if len(self._steps) >= N_STEPS:
                self._step = float(np.median(self._steps))
                self._steps = []
        self._last_time = when

    def _season(self) -> Optional[str]:
        season = self.config.season
        return "day" if season == "auto" else (None if season == "none" else season)

    def _make_season(self) -> None:
        period, max_bins = PERIODS[self._season()]
        self._profile = SeasonalProfile(2 * self._n, period, self._step, max_bins)
        self._season_scale = SeasonalScale(self._n, period, self._step)

    def _season_due(self) -> bool:
        """Make the seasonal profile if it is due (the interval known, the season fine
        enough for it); whether there is one."""
        if self._profile is None and self._step is not None and self._season() is not None:
            period, _ = PERIODS[self._season()]
            if period / self._step >= 4:  # else sampled too coarsely for the season
                self._make_season()
        return self._profile is not None

    def _seasonal_center(self, when: Optional[float]) -> Optional[np.ndarray]:
        """The usual error at this time of day, once known (None without timestamps)."""
        if when is None or self._step is None or self._season() is None:
            return None
        if self._profile is None and not self._season_due():
            return None
        usual = self._profile.center(when)
        return None if usual is None else usual.copy()

    # -- helpers -----------------------------------------------------------------------
    def _neutral(self) -> DetectorOutput:
        return DetectorOutput(0.0, False, None, True, np.zeros(self._n))

    def _check(self, v, what: str) -> np.ndarray:
        try:
            arr = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise InputError(f"{what} is not numeric: {e}") from None
        if arr.ndim != 1:
            raise InputError(f"{what} must be a vector [channels], got shape {arr.shape}")
        if self._n is None:
            self._build(len(arr))
        if len(arr) != self._n:
            raise InputError(f"{what} has {len(arr)} channels, the detector {self._n}")
        if not all(map(math.isfinite, arr.tolist())):  # cheaper than numpy at this size
            raise InputError(f"{what} holds NaN or inf")
        return arr


def _matrix(v, what: str) -> np.ndarray:
    try:
        arr = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"{what} are not numeric: {e}") from None
    if arr.ndim != 2:
        raise InputError(f"{what} must be a matrix [rows, channels], got shape {arr.shape}")
    return arr


def _vector(v, name: str) -> Optional[list[float]]:
    if v is None:
        return None
    if isinstance(v, str) or not hasattr(v, "__len__"):
        raise InputError(f"{name} must be a list (one entry per channel), got {v!r}")
    try:
        out = [float(a) for a in v]
    except (TypeError, ValueError):
        raise InputError(f"{name} must hold numbers") from None
    if not all(math.isfinite(a) for a in out):
        raise InputError(f"{name} must be finite")
    return out


def _list(v: Optional[np.ndarray]) -> Optional[list]:
    return None if v is None else v.tolist()


def _array(v) -> Optional[np.ndarray]:
    return None if v is None else np.asarray(v, dtype=np.float64)
