"""The detector's compiled kernel (kernel.c): N samples per call, in place on the
Detector's own numpy state, so state_dict() / load_state_dict() are unchanged and a
state saved by one backend resumes on the other.

The library is built, cached and checked by runtime/cstep.py's machinery (private
cache folder, digest sidecar, a private copy dlopened, the source digest checked) and,
on load, proved against the numpy detector on a short probe stream. No compiler, a
failed build or a failed probe raises CStepUnavailable; the detector then runs numpy.
A probe passed is recorded beside the library (LIB.probed: the library's digest, numpy's
and Python's versions): a later process loading the same bytes under the same numpy
skips it (tens of ms per start on a Pi, for the CSV formatter too).
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import platform
import sys
from typing import Optional

import numpy as np

from edgernn.runtime.cstep import (
    CStepUnavailable,
    _dlopen_fresh,
    _source_marker,
    compile_library,
    remove_library,
)

SOURCE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernel.c")
MAX_CHANNELS = 256  # kernel.c's stack buffers
F_FLAGGED, F_LEARNING, F_ONSET, F_REPLAY = 1, 2, 4, 8
# Set in Python by the event tracker (the kernel never sets it): inside an open alert,
# the row does not top the alert's peak so far, so its score column reads 0.
F_REPEAT = 16
PROBE_TOLERANCE = 1e-9  # relative, on the scores of the probe stream

_p, _d, _l = ctypes.c_void_p, ctypes.c_double, ctypes.c_long
# run()'s arrays: x, f, when, score, flags, contrib
_IO_TYPES = tuple(np.dtype(t) for t in ("f8", "f8", "f8", "f8", "i4", "f8"))


class _Table(ctypes.Structure):
    _fields_ = [("padded", _p), ("lo", _d), ("hi", _d), ("width", _d), ("decay", _d),
                ("k", _l), ("bins", _l), ("log", _l)]  # fmt: skip


class _Det(ctypes.Structure):
    _fields_ = [
        ("n", _l), ("first", _Table), ("second", _Table), ("peaks", _p), ("peak", _p),
        ("quiet", _p), ("center", _p), ("scale", _p),
        ("means", _p), ("prev", _p), ("decimals", _p), ("neg_powers", _p), ("moments", _p),
        ("level", _p), ("regime", _p), ("prof_mean", _p), ("prof_count", _p), ("prof_bins", _l),
        ("period", _d), ("periods", _d), ("ss_mean", _p), ("ss_count", _p), ("ss_bins", _l),
        ("ss_memory", _d), ("ss_min", _d), ("dbl", _p), ("cnt", _p),
        ("alpha", _d), ("energy_alpha", _d), ("drift_unit", _d), ("level_span", _d),
        ("flagged_weight", _d), ("level_floor", _d), ("memory", _d), ("scale_span", _d),
        ("threshold", _d), ("anchor_fraction", _d), ("log_fit_ratio", _d), ("mean_abs_to_std", _d),
        ("warmup", _l), ("holdoff", _l),
        ("x", _p), ("f", _p), ("when", _p), ("score", _p), ("flags", _p), ("contrib", _p),
    ]  # fmt: skip
    _io = ("x", "f", "when", "score", "flags", "contrib")


def kernel_source() -> str:
    with open(SOURCE_PATH) as f:
        return f.read()


@functools.lru_cache(maxsize=1)
def load_library() -> ctypes.CDLL:
    """The compiled kernel (built once per machine, loaded once per process)."""
    source = kernel_source()
    problem = None
    for rebuild in (False, True):  # a damaged cache is deleted and built again once
        lib_path = compile_library(source, rebuild=rebuild)
        try:
            lib = _dlopen_fresh(lib_path)
        except OSError as e:
            problem = f"loading it failed ({str(e)[:160]})"
            continue
        try:
            marker = (ctypes.c_char * 65).in_dll(lib, "edgernn_source_sha256").value
        except ValueError:
            marker = None
        if marker != _source_marker(source)[1].encode():
            problem = "it was built from other source"
            continue
        lib.edgernn_detect.argtypes = [_p, _l]
        lib.edgernn_detect.restype = ctypes.c_int
        # the CSV float formatter (runtime/output.py float32_repr_lines)
        lib.edgernn_shortest.argtypes = [_p, _l, _p, _p, _p, _p, _p, _p, _d, _p, _p, _p]
        lib.edgernn_shortest.restype = _l
        lib.edgernn_repr_lines.argtypes = [_p, _p, _p, _l, _l, _p, _l, _p, _p]
        lib.edgernn_repr_lines.restype = _l
        # the online head's products (runtime/adapt.py head_rows, livescore.py)
        lib.edgernn_head_rows.argtypes = [_p, _p, _l, _l, _l, _p]
        lib.edgernn_head_rows.restype = None
        lib.edgernn_head_forecast.argtypes = [_p, _p, _p, _p, _l, _l, _p]
        lib.edgernn_head_forecast.restype = None
        lib.edgernn_cache_path = lib_path  # for probe_known() / probe_passed()
        if probe_known(lib, "detector"):
            return lib
        try:
            problem = _probe(lib)
        except Exception as e:  # a kernel that breaks the probe is no kernel
            problem = f"its probe failed ({e!r:.160})"
        if problem is None:
            probe_passed(lib, "detector")
            return lib
    remove_library(lib_path)
    raise CStepUnavailable(f"the compiled detector kernel is unusable: {problem}")


def _probe_line(lib, what: str) -> Optional[str]:
    """What LIB.probed holds once `what`'s probe passed on this library: the digest
    recorded when it was built (compile_library checked the file against it), and the
    versions the reference side ran on; None when the digest cannot be read."""
    try:
        with open(lib.edgernn_cache_path + ".sha256") as f:
            digest = f.read().split()[0]
    except (OSError, IndexError, AttributeError):
        return None
    python = ".".join(map(str, sys.version_info[:3]))
    return f"{what} {digest} numpy-{np.__version__} python-{python} {platform.machine()}"


def probe_known(lib, what: str) -> bool:
    """Whether `what`'s probe already passed on this very library (LIB.probed)."""
    line = _probe_line(lib, what)
    try:
        with open(lib.edgernn_cache_path + ".probed") as f:
            return line is not None and line in f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return False


def probe_passed(lib, what: str) -> None:
    """Record `what`'s passed probe in LIB.probed (replaced whole: a reader never sees
    half a file; the cache folder is private, see cstep.library_dir). Best effort."""
    line = _probe_line(lib, what)
    if line is None:
        return
    path = lib.edgernn_cache_path + ".probed"
    try:
        with open(path) as f:
            kept = [k for k in f.read().splitlines() if not k.startswith(f"{what} ")]
    except (OSError, UnicodeDecodeError):
        kept = []
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write("\n".join([*kept, line]) + "\n")
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _probe(lib) -> Optional[str]:
    """A short stream (spikes, a quantised channel, timestamps) through both backends."""
    from edgernn.runtime.detector.core import Detector

    rng = np.random.default_rng(7)
    n = 160
    x = np.stack([np.sin(np.arange(n) / 5.0), np.round(5 * rng.random(n))], axis=1)
    x[130, 0] += 6.0
    f = x + 0.1 * rng.standard_normal(x.shape)
    times = 1.7e9 + 600.0 * np.arange(n)
    options = {"warmup": 40, "alarm_every": 50, "level_span": 30.0}
    want = Detector(backend="numpy", **options)
    got = Detector(backend="numpy", **options)
    got._attach_kernel(lib)
    a = np.array([want.score_one(x[i], f[i], time=times[i]).score for i in range(n)])
    b = got.score_block(x, f, times=times).score
    if not np.allclose(a, b, rtol=PROBE_TOLERANCE, atol=1e-12):
        return f"its probe scores differ from numpy's by {float(np.max(np.abs(a - b))):.3g}"
    return None


class Kernel:
    """One detector's binding: the C struct over its arrays, rebuilt when they change."""

    def __init__(self, lib, det):
        self.lib, self.det = lib, det
        self.dbl = (ctypes.c_double * 4)()  # ctypes arrays: cheaper items than numpy's
        self.cnt = (ctypes.c_int64 * 7)()
        self.ctx: Optional[_Det] = None
        self._arrays: tuple = ()
        self._one = None  # N = 1 buffers
        self._io = None  # "one" while the struct points at them
        self._nan = np.full(4096, math.nan)
        self._bases: Optional[tuple] = None  # run_rows(): the last arrays, their addresses
        self._neg_powers = 10.0 ** -np.arange(7).astype(float)
        self._live = None  # enter_live()'s addresses, for its struct and buffers

    def invalidate(self) -> None:
        self.ctx = None

    def _bind(self) -> None:
        det = self.det
        cfg, n = det.config, det._n
        floors, pair, profile = det._floors, det._pair, det._profile
        peaks = det._first.peaks
        arrays = [
            det._first._padded, det._second._padded, peaks._padded, peaks.peak, peaks.quiet,
            pair.center, pair.scale, floors._means, floors.prev, det._moments, det._level,
            det._regime,
        ]  # fmt: skip
        scale = det._season_scale
        if profile is not None:
            arrays += [profile.mean, profile.count, scale.mean, scale.count]
        for a in arrays:
            if a.dtype != np.float64 or not a.flags.c_contiguous:
                raise ValueError("a detector state array is not contiguous float64")
        if floors.decimals.dtype != np.int64 or not floors.decimals.flags.c_contiguous:
            raise ValueError("the decimals are not contiguous int64")
        if pair._moving != [0]:
            raise ValueError("the kernel expects a centered level normaliser")
        ctx = _Det()
        ctx.n = n
        for field, table in (("first", det._first), ("second", det._second)):
            t = getattr(ctx, field)
            t.padded = table._padded.ctypes.data
            t.lo, t.hi, t.width, t.decay = table.lo, table.hi, table.width, table.decay
            t.k, t.bins, t.log = table.k, table.bins, int(table.log)
        ctx.peaks, ctx.peak, ctx.quiet = (a.ctypes.data for a in arrays[2:5])
        ctx.center, ctx.scale = pair.center.ctypes.data, pair.scale.ctypes.data
        ctx.means, ctx.prev = floors._means.ctypes.data, floors.prev.ctypes.data
        ctx.decimals, ctx.neg_powers = floors.decimals.ctypes.data, self._neg_powers.ctypes.data
        ctx.moments, ctx.level = det._moments.ctypes.data, det._level.ctypes.data
        ctx.regime = det._regime.ctypes.data
        if profile is not None:
            ctx.prof_mean, ctx.prof_count = profile.mean.ctypes.data, profile.count.ctypes.data
            ctx.prof_bins, ctx.period, ctx.periods = profile.bins, profile.period, profile.periods
            ctx.ss_mean, ctx.ss_count = scale.mean.ctypes.data, scale.count.ctypes.data
            ctx.ss_bins, ctx.ss_memory, ctx.ss_min = scale.bins, scale.memory, scale.min_count
        ctx.dbl, ctx.cnt = ctypes.addressof(self.dbl), ctypes.addressof(self.cnt)
        ctx.alpha, ctx.energy_alpha = det._alpha, det._energy_alpha
        ctx.drift_unit = det._drift_unit
        ctx.level_span, ctx.flagged_weight = float(cfg.level_span), float(cfg.flagged_weight)
        ctx.level_floor, ctx.memory = float(cfg.level_floor), float(floors.memory)
        ctx.scale_span = float(det._model.span)
        from edgernn.runtime.detector.normalise import MEAN_ABS_TO_STD
        from edgernn.runtime.detector.tails import _LOG_FIT_RATIO

        ctx.log_fit_ratio, ctx.mean_abs_to_std = _LOG_FIT_RATIO, MEAN_ABS_TO_STD
        ctx.warmup, ctx.holdoff = det._learning_until, cfg.holdoff
        self._io = None
        self.ctx = ctx
        self._address = ctypes.addressof(ctx)
        self._arrays = (arrays, floors.decimals)  # kept alive with the struct
        self._profile, self._scale = profile, scale

    def run(self, X, F, when, threshold: float, anchor: float, score, flags, contrib) -> None:
        """Score rows X / F (contiguous float64 (N, C)), `when` (N,) seconds or NaN,
        into score (N,), flags (N,) int32 and contrib (N, C); the detector's scalar
        state goes in and out through dbl / cnt."""
        self.call(len(X), threshold, anchor, (X, F, when, score, flags, contrib))

    def run_rows(self, arrays: tuple, lo: int, hi: int, threshold: float, anchor: float) -> bool:
        """run() on rows lo..hi-1 of whole arrays (x, f, when, score, flags, contrib as
        run() takes them), their addresses looked up once for as long as the same arrays
        come back (a chunk scored piece by piece); False, nothing run, where one of them
        is not C-contiguous or not of run()'s dtype."""
        bases = self._bases
        if bases is None or any(a is not b for a, b in zip(arrays, bases[0])):
            if not all(a.flags.c_contiguous and a.dtype == t for a, t in zip(arrays, _IO_TYPES)):
                return False
            bases = self._bases = (arrays, [(a.ctypes.data, a.strides[0]) for a in arrays])
        addresses = tuple(base + lo * stride for base, stride in bases[1])
        self.call(hi - lo, threshold, anchor, addresses=addresses)
        return True

    def call(self, n: int, threshold: float, anchor: float, buffers=None, addresses=None) -> None:
        """run() on `buffers` (x, f, when, score, flags, contrib) or at their
        `addresses`, or on one()'s."""
        if buffers is not None:
            addresses = tuple(b.ctypes.data for b in buffers)
        self._prepare(threshold, anchor, addresses)
        rc = self.lib.edgernn_detect(self._address, n)
        if rc != 0:
            raise CStepUnavailable(f"the detector kernel refused the call ({rc})")
        self._pull()

    def _prepare(self, threshold: float, anchor: float, addresses) -> None:
        """The struct bound to the detector's arrays, the threshold and anchor set, its
        rows pointed at `addresses` (None: one()'s buffers), the scalar state pushed."""
        det = self.det
        if (
            self.ctx is None
            or self._profile is not det._profile
            or self._scale is not det._season_scale
        ):
            self._bind()
        ctx = self.ctx
        ctx.threshold, ctx.anchor_fraction = threshold, anchor
        if addresses is not None:
            ctx.x, ctx.f, ctx.when, ctx.score, ctx.flags, ctx.contrib = addresses
            self._io = None
        elif self._io is None:
            ctx.x, ctx.f, ctx.when, ctx.score, ctx.flags, ctx.contrib = self._one_addresses()
            self._io = "one"
        self._push()

    def _push(self) -> None:
        """The detector's scalar state into dbl / cnt, where the kernel keeps it."""
        det, dbl, cnt = self.det, self.dbl, self.cnt
        events, profile, floors = det._events, det._profile, det._floors
        dbl[0], dbl[1] = det._first.total, det._second.total
        dbl[2] = math.nan if profile is None or profile.first is None else profile.first
        scale = det._season_scale
        dbl[3] = math.nan if scale is None or scale.first is None else scale.first
        cnt[0], cnt[1], cnt[2], cnt[3] = det.t, floors.n, det._model.n, det._level_norm.n
        cnt[4], cnt[5], cnt[6] = events.open is not None, events.quiet, 0

    def _pull(self) -> None:
        """dbl / cnt back into the detector (the event tracker's own state is Python's:
        it sees every row the kernel marks F_REPLAY)."""
        det, dbl, cnt = self.det, self.dbl, self.cnt
        profile, floors = det._profile, det._floors
        det._first.total, det._second.total = dbl[0], dbl[1]
        if profile is not None and dbl[2] == dbl[2]:
            profile.first = dbl[2]
        if det._season_scale is not None and dbl[3] == dbl[3]:
            det._season_scale.first = dbl[3]
        det.t, floors.n, det._model.n, det._level_norm.n = cnt[0], cnt[1], cnt[2], cnt[3]
        if cnt[6]:
            floors._decimals_changed()
            cnt[6] = 0

    def enter_live(self, threshold: float, anchor: float) -> tuple[int, ...]:
        """For a caller that runs the kernel itself, one sample a call, on one()'s
        buffers (runtime/livescore.py, in C): the struct bound to them, the threshold
        and anchor set, the scalar state pushed. Returns (edgernn_detect's address, the
        struct's, x and f's (2C float64, x then f), score's, flags', contrib's). Until
        leave_live(), the detector's scalar state is the kernel's (dbl / cnt)."""
        rows = self.one_rows()
        rows[1][0] = math.nan  # when: no timestamp
        self._prepare(threshold, anchor, None)
        ctx, live = self.ctx, self._live
        if live is None or live[0] is not ctx or live[1] is not rows:  # (looked up once)
            xf, _, score, flags, contrib = rows
            fn = ctypes.cast(self.lib.edgernn_detect, ctypes.c_void_p).value
            self._live = live = (ctx, rows, (fn, self._address, xf.ctypes.data, score.ctypes.data,
                                             flags.ctypes.data, contrib.ctypes.data))  # fmt: skip
        return live[2]

    def leave_live(self) -> None:
        """The scalar state back from the kernel (after enter_live())."""
        self._pull()

    def nan_when(self, n: int) -> np.ndarray:
        """(at least n,) NaN: no timestamps."""
        if len(self._nan) < n:
            self._nan = np.full(max(n, 2 * len(self._nan)), math.nan)
        return self._nan

    def one(self):
        """Preallocated N = 1 buffers: x, f, when, score, flags, contrib (call(1, ...)
        without buffers runs on them)."""
        if self._one is None or self._one[0].shape[1] != self.det._n:
            n = self.det._n
            xf = np.zeros((2, n))  # x and f: the rows of one array (one_rows())
            self._one = (xf[:1], xf[1:], np.full(1, math.nan),
                         np.zeros(1), np.zeros(1, dtype=np.int32), np.zeros((1, n)))  # fmt: skip
            self._one_rows = (xf.reshape(-1), *self._one[2:])
            self._io = None
        return self._one

    def one_rows(self):
        """one()'s buffers with x and f as the two rows of one array, seen flat (2C,):
        xf, when, score, flags, contrib."""
        if self._one is None or self._one[0].shape[1] != self.det._n:
            self.one()
        return self._one_rows

    def _one_addresses(self) -> tuple:
        return tuple(b.ctypes.data for b in self.one())
