"""The detector's compiled kernel (runtime/detector/kernel.c) against the numpy reference.

The kernel computes what the numpy code computes, in the same order and in double
precision; what is left is libm's exp / log10 / pow against numpy's own SIMD versions
(an ulp or so), so scores agree to TOL (relative; about 1e-13 is seen) and flags,
onsets and events are identical on these streams. score_block is checked against
score_one row by row (exactly: one kernel), states saved by one backend resume on the
other, and a bad row raises score_one's error.
"""

from __future__ import annotations

import math
import platform
import shutil
import subprocess
from datetime import datetime, timedelta

import numpy as np
import pytest

from edgernn.errors import InputError
from edgernn.runtime.detector import Detector, ckernel
from edgernn.runtime.monitor import _detector_fields

TOL = 1e-9  # relative, on scores and contributions
KINDS = ("smooth", "flat_steps", "counts", "spiky", "heteroscedastic", "seasonal")

try:
    ckernel.load_library()
    HAVE_KERNEL = True
except ckernel.CStepUnavailable:  # no compiler here: the numpy fallback is all there is
    HAVE_KERNEL = False
needs_kernel = pytest.mark.skipif(not HAVE_KERNEL, reason="no C compiler")


def channel(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """One channel of a benchmarks/calibration.py-style stream."""
    t = np.arange(n)
    if kind == "smooth":
        return np.sin(2 * np.pi * t / 200) + 0.1 * rng.standard_normal(n)
    if kind == "flat_steps":
        jumps = rng.random(n) < 1 / 300
        return np.round(20.0 + np.cumsum(np.where(jumps, rng.normal(0, 3, n), 0.0)), 1)
    if kind == "counts":
        return rng.poisson(7 + 5 * np.sin(2 * np.pi * t / 700)).astype(float)
    if kind == "spiky":
        spikes = rng.random(n) < 1 / 100
        return 50 + rng.normal(0, 1, n) + np.where(spikes, rng.uniform(4, 12, n), 0.0)
    if kind == "heteroscedastic":
        level = np.clip(100 * np.exp(np.cumsum(rng.normal(0, 0.01, n))), 10, 200)
        return level + level * 0.03 * rng.normal(0, 1, n)
    if kind == "seasonal":  # 5-minute samples: a daily cycle and a nightly batch job
        hours = (t * 5 / 60) % 24
        busy = np.exp(-((hours - 13) ** 2) / 8)
        return 20 + 60 * busy + ((hours >= 2) & (hours < 2.25)) * 30.0 + rng.normal(0, 2, n)
    raise ValueError(kind)


def stream(kind: str, c: int, n: int = 1400, seed: int = 0):
    """(samples (n, c), persistence forecasts, timestamps or None), faults injected."""
    rng = np.random.default_rng(seed)
    x = np.stack([channel(kind, n, rng) for _ in range(c)], axis=1)
    sd = float(np.std(np.diff(x[:, 0]))) or 1.0
    x[n // 2, 0] += 10 * sd  # a spike
    x[3 * n // 4 :, c - 1] += 6 * sd  # a level shift
    if kind == "counts":
        x = np.maximum(np.round(x), 0)
    f = np.vstack([x[:1], x[:-1]])
    times = None
    if kind == "seasonal":
        start = datetime(2024, 1, 1)
        times = [(start + timedelta(minutes=5 * i)).isoformat(sep=" ") for i in range(n)]
    return x, f, times


OPTIONS = {"warmup": 150, "alarm_every": 300, "holdoff": 3}


def run(det, x, f, times):
    return [det.score_one(x[i], f[i], None if times is None else times[i]) for i in range(len(x))]


def close(a, b) -> bool:
    """Equal, floats to TOL (event dicts, state dicts)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=TOL, abs_tol=1e-300)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(close(u, v) for u, v in zip(a, b))
    if isinstance(a, np.ndarray):
        return np.allclose(a, b, rtol=TOL, atol=1e-12)
    return a == b


def assert_same_outputs(want, got):
    for i, (a, b) in enumerate(zip(want, got)):
        assert math.isclose(a.score, b.score, rel_tol=TOL, abs_tol=1e-12), (i, a.score, b.score)
        assert (a.anomaly, a.onset, a.warming_up, a.event) == (
            b.anomaly, b.onset, b.warming_up, b.event
        ), i  # fmt: skip
        assert a.threshold == b.threshold, i
        assert np.allclose(a.contributions, b.contributions, rtol=TOL, atol=1e-12), i
        assert close(a.event_opened, b.event_opened) and close(a.event_closed, b.event_closed), i


@needs_kernel
@pytest.mark.parametrize("c", [1, 3, 8])
@pytest.mark.parametrize("kind", KINDS)
def test_kernel_matches_numpy(kind, c):
    x, f, times = stream(kind, c, seed=c)
    want_det = Detector(backend="numpy", **OPTIONS)
    got_det = Detector(backend="c", **OPTIONS)
    assert (want_det.backend, got_det.backend) == ("numpy", "c")
    want, got = run(want_det, x, f, times), run(got_det, x, f, times)
    assert_same_outputs(want, got)
    assert sum(o.anomaly for o in want) > 0  # the faults are found: events are compared
    assert close([e.to_dict() for e in want_det.events], [e.to_dict() for e in got_det.events])
    assert close(want_det.state_dict(), got_det.state_dict())


@needs_kernel
@pytest.mark.parametrize("kind,c", [("spiky", 3), ("seasonal", 2), ("flat_steps", 8)])
def test_score_block_equals_score_one_over_random_chunkings(kind, c):
    x, f, times = stream(kind, c, n=1200, seed=5)
    one = Detector(backend="c", **OPTIONS)
    want = run(one, x, f, times)
    rng = np.random.default_rng(c)
    for _ in range(2):
        det, at, got = Detector(backend="c", **OPTIONS), 0, []
        while at < len(x):
            size = int(rng.choice([1, 2, 7, 33, 150, 600]))
            block = det.score_block(
                x[at : at + size], f[at : at + size], None if times is None else times[at : at + size]
            )
            got += block.records()
            at += size
        assert got == [_detector_fields(o) for o in want]
        assert det.state_dict() == one.state_dict()
    numpy_block = Detector(backend="numpy", **OPTIONS).score_block(x, f, times)  # no kernel
    assert_same_outputs(want, [numpy_block.output(i) for i in range(len(x))])


@needs_kernel
def test_time_tracking_inside_a_block_with_odd_timestamps():
    # The interval becomes known mid-block (50 gaps), some stamps are unreadable or
    # missing (no clock for that row), a few are epoch numbers.
    x, f, _ = stream("seasonal", 2, n=900, seed=3)
    start = datetime(2024, 3, 1)
    times = [(start + timedelta(minutes=5 * i)).isoformat(sep=" ") for i in range(len(x))]
    times[40], times[41], times[300] = "not a time", None, float("nan")
    times[500] = (start + timedelta(minutes=5 * 500) - datetime(1970, 1, 1)).total_seconds()
    want_det, got_det = Detector(backend="numpy", **OPTIONS), Detector(backend="c", **OPTIONS)
    want = run(want_det, x, f, times)
    block = got_det.score_block(x, f, times)
    assert_same_outputs(want, [block.output(i) for i in range(len(x))])
    assert close(want_det.state_dict(), got_det.state_dict())
    assert got_det.state_dict()["parts"]["profile"] is not None


@needs_kernel
@pytest.mark.parametrize("first,second", [("c", "numpy"), ("numpy", "c")])
def test_state_saved_by_one_backend_resumes_on_the_other(first, second):
    x, f, times = stream("seasonal", 3, n=1400, seed=9)
    whole = run(Detector(backend="numpy", **OPTIONS), x, f, times)
    half = len(x) // 2 + 3  # inside the spike's event
    a = Detector(backend=first, **OPTIONS)
    run(a, x[:half], f[:half], times[:half])
    b = Detector(backend=second, **OPTIONS)
    b.load_state_dict(a.state_dict())
    resumed = run(b, x[half:], f[half:], times[half:])
    assert_same_outputs(whole[half:], resumed)


@needs_kernel
def test_level_span_and_scale_span_options():
    x, f, _ = stream("smooth", 3, seed=2)
    for options in ({"level_span": 50.0}, {"scale_span": 0, "flagged_weight": 0.0},
                    {"memory": 500.0, "span": 5.0, "level_floor": 0.0}):  # fmt: skip
        want = run(Detector(backend="numpy", **OPTIONS, **options), x, f, None)
        got = run(Detector(backend="c", **OPTIONS, **options), x, f, None)
        assert_same_outputs(want, got)


@needs_kernel
def test_calibrated_detector_matches():
    x, f, _ = stream("heteroscedastic", 3, seed=4)
    cal = {"error_center": [0.1, 0.0, -0.1], "error_scale": [2.0, 3.0, 2.5]}
    want = run(Detector(backend="numpy", channels=["a", "b", "c"], **cal, **OPTIONS), x, f, None)
    got = run(Detector(backend="c", channels=["a", "b", "c"], **cal, **OPTIONS), x, f, None)
    assert_same_outputs(want, got)


@needs_kernel
def test_bad_rows_raise_score_ones_error_after_the_rows_before():
    x, f, _ = stream("smooth", 2, n=300)
    x[250, 1] = np.nan
    det = Detector(backend="c", **OPTIONS)
    with pytest.raises(InputError, match="sample holds NaN or inf"):
        det.score_block(x, f)
    assert det.t == 250
    ref = Detector(backend="numpy", **OPTIONS)
    run(ref, x[:250], f[:250], None)
    assert close(ref.state_dict(), det.state_dict())
    with pytest.raises(InputError, match="forecast holds NaN or inf"):
        det.score_block(x[:5], np.full((5, 2), np.inf))
    with pytest.raises(InputError, match="has 3 channels, the detector 2"):
        det.score_block(np.zeros((4, 3)), np.zeros((4, 3)))
    with pytest.raises(InputError, match="matrix"):
        det.score_block(np.zeros(4), np.zeros(4))
    assert len(det.score_block(np.zeros((0, 2)), np.zeros((0, 2)))) == 0


def test_backend_choice_is_explicit(monkeypatch):
    monkeypatch.delenv("EDGERNN_DETECTOR_BACKEND", raising=False)
    assert Detector(backend="numpy").backend == "numpy"
    monkeypatch.setenv("EDGERNN_DETECTOR_BACKEND", "numpy")
    assert Detector().backend == "numpy"
    monkeypatch.delenv("EDGERNN_DETECTOR_BACKEND")
    with pytest.raises(InputError, match="unknown detector backend"):
        Detector(backend="gpu")
    det = Detector(channels=["a"], reference=50.0)  # the expert reference term: numpy only
    assert det.backend == "numpy" and "reference" in det.fallback_reason
    with pytest.raises(ckernel.CStepUnavailable):
        Detector(channels=["a"], reference=50.0, backend="c")
    if HAVE_KERNEL:
        assert Detector().backend == "c" and Detector().fallback_reason is None


def test_no_compiler_falls_back_to_numpy(monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.delenv("EDGERNN_DETECTOR_BACKEND", raising=False)
    ckernel.load_library.cache_clear()
    try:
        det = Detector()
        assert det.backend == "numpy" and "compiler" in det.fallback_reason
        x, f, _ = stream("smooth", 2, n=200)
        assert len(det.score_block(x, f).records()) == 200
    finally:
        monkeypatch.undo()
        ckernel.load_library.cache_clear()


FUSED = {  # instruction prefixes of fused multiply-adds
    "aarch64-linux-gnu-gcc": ("fmadd", "fmsub", "fnmadd", "fnmsub", "fmla", "fmls"),
    "arm-linux-gnueabihf-gcc": ("vfma", "vfms", "vfnma", "vfnms"),
    "gcc": ("vfmadd", "vfmsub", "vfnmadd", "vfnmsub"),  # this machine's, with -march=native
}


@pytest.mark.parametrize("cc", sorted(FUSED))
def test_kernel_compiles_for_the_pi_without_fused_multiply_adds(cc, tmp_path):
    # A contracted a * b + c rounds once, numpy twice: kernel.c turns contraction off.
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} not installed")
    native = ["-march=native"] if cc == "gcc" else []
    if native and platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the x86 check")
    asm = tmp_path / "k.s"
    proc = subprocess.run(
        [cc, "-O3", *native, "-Wall", "-Werror", "-fPIC", "-S", ckernel.SOURCE_PATH, "-o",
         str(asm)], capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    fused = [w for w in asm.read_text().split() if w.startswith(FUSED[cc])]
    assert not fused
