"""A lasting regime of larger errors is absorbed in a bounded time
(runtime/detector/regime.py), on both backends, without absorbing what must stay an alarm.

Before this mechanism the error scale could grow only as fast as its Huber clip let it
(about 0.7 % a flagged sample): errors 10x larger for good stayed in alarm for 210-312
samples on these streams, 100x for about 600, and a stream idle while it was trained
that then came alive (10^7 x) for about 900.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_resumes_exactly

from edgernn.runtime.detector import Detector, ckernel

try:
    ckernel.load_library()
    BACKENDS = ["numpy", "c"]
except ckernel.CStepUnavailable:  # no compiler: numpy is all there is
    BACKENDS = ["numpy"]

START = 1_700_000_000.0  # epoch seconds; 5-minute samples


def flags_of(det: Detector, x: np.ndarray, f: np.ndarray) -> np.ndarray:
    out = det.score_block(x[:, None], f[:, None], times=START + 300.0 * np.arange(len(x)))
    return out.anomaly.astype(bool)


def noise_then(factor: float, seed: int, n: int = 3000, change: int = 1000):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    x[change:] *= factor
    return x, np.zeros(n)  # the forecast: the true mean


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("factor", [10.0, 100.0, 1e4])
def test_larger_errors_for_good_end_their_alert_soon(backend, factor):
    for seed in range(3):
        x, f = noise_then(factor, seed)
        flags = flags_of(Detector(channels=["v"], backend=backend), x, f)
        after = np.flatnonzero(flags[1000:1500])
        assert len(after) and after[0] < 5, (seed, after[:5])  # the change is flagged
        assert len(after) < 100, (seed, len(after))  # ... and then absorbed


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stream_idle_while_trained_comes_alive_without_a_day_long_alarm(backend):
    rng = np.random.default_rng(3)
    n, alive = 4000, 900
    x = np.zeros(n)
    x[alive:] = rng.gamma(2.0, 1e7, n - alive)  # bytes per interval
    f = np.concatenate([[0.0], x[:-1]])  # persistence
    det = Detector(channels=["bytes"], error_center=[0.0], error_scale=[1e-12], backend=backend)
    flags = flags_of(det, x, f)
    assert flags[alive]
    assert flags[alive:].sum() < 150  # about 900 before


@pytest.mark.parametrize("backend", BACKENDS)
def test_smaller_errors_are_not_absorbed_fast_a_stuck_value_keeps_alarming(backend):
    rng = np.random.default_rng(4)
    x = 50.0 + rng.standard_normal(2000)
    x[1200:1400] = x[1199]  # stuck for 200 samples
    f = np.concatenate([[x[0]], x[:-1]])
    flags = flags_of(Detector(channels=["v"], backend=backend), x, f)
    assert flags[1200:1400].sum() > 150


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_spike_and_its_echo_never_move_the_scale_even_with_a_short_span(backend):
    x, f = noise_then(1.0, 5)
    x[1500] += 40.0
    f[1501] += 40.0  # persistence carries it one step
    det = Detector(channels=["v"], span=3, backend=backend)
    flags_of(det, x[:1500], f[:1500])
    before = float(det._model.scale[0])
    flags_of(det, x[1500:1503], f[1500:1503])
    assert float(det._model.scale[0]) < 1.5 * before


def test_a_frozen_scale_stays_frozen():
    x, f = noise_then(100.0, 6)
    det = Detector(channels=["v"], scale_span=0, warmup=100)
    flags_of(det, x[:1000], f[:1000])
    frozen = float(det._model.scale[0])
    flags_of(det, x[1000:], f[1000:])
    assert float(det._model.scale[0]) == frozen


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "factor, seed, n, cuts",
    [(30.0, 7, 1200, (905, 915)), (0.1, 12, 1300, (950, 1010))],  # larger, then smaller
)
def test_resume_is_exact_through_a_regime_change(backend, factor, seed, n, cuts):
    x, f = noise_then(factor, seed, n=n, change=900)
    times = START + 300.0 * np.arange(len(x))

    def step(det, t):
        out = det.score_one([x[t]], [f[t]], time=times[t])
        return out.score, out.anomaly, out.onset

    assert_resumes_exactly(
        lambda: Detector(channels=["v"], backend=backend), step, len(x), cuts=cuts
    )


def test_the_backends_resume_each_other_through_a_regime_change():
    if "c" not in BACKENDS:
        pytest.skip("no C compiler")
    x, f = noise_then(30.0, 8, n=1200, change=900)
    times = START + 300.0 * np.arange(len(x))
    whole = Detector(channels=["v"], backend="numpy")
    want = whole.score_block(x[:, None], f[:, None], times=times).score
    first = Detector(channels=["v"], backend="c")
    got = list(first.score_block(x[:910, None], f[:910, None], times=times[:910]).score)
    second = Detector(channels=["v"], backend="numpy")
    second.load_state_dict(first.state_dict())
    got += list(second.score_block(x[910:, None], f[910:, None], times=times[910:]).score)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_after_a_passing_burst_the_scale_returns_and_the_quiet_does_not_alarm(backend):
    """A jump is provisional: when the larger errors stop, the scale goes back to where
    it was, so the ordinary noise after a burst is not a 'stuck' alarm."""
    for seed in range(3):
        x, f = noise_then(1.0, 10 + seed)
        x[1000:1150] *= 30.0  # a burst, then the old noise again
        det = Detector(channels=["v"], backend=backend)
        flags_of(det, x[:1000], f[:1000])
        old = float(det._model.scale[0])
        flags = flags_of(det, x[1000:1400], f[1000:1400])
        assert flags[0] or flags[1]  # the burst is flagged
        assert flags[190:].sum() <= 3, (seed, np.flatnonzero(flags[150:]) + 150)
        assert float(det._model.scale[0]) < 1.5 * old


# -- a lasting regime of smaller errors -------------------------------------------------
# Before, only the slow tracker (a quarter rate while flagged) followed errors that became
# smaller for good: 10x smaller stayed in alarm for 270-730 samples on these streams.


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("factor", [0.1, 0.3])
def test_smaller_errors_for_good_end_their_alert_soon(backend, factor):
    for seed in range(3):
        x, f = noise_then(factor, seed, n=4000)
        flags = flags_of(Detector(channels=["v"], backend=backend), x, f)
        assert flags[1000:].sum() < 150, (seed, flags[1000:].sum())
        assert flags[1500:].sum() <= 5, (seed, np.flatnonzero(flags[1500:])[:5] + 1500)
    x, f = noise_then(0.1, 0, n=4000)  # the drop itself is an alert
    assert flags_of(Detector(channels=["v"], backend=backend), x, f)[1000:1100].any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stuck_value_a_forecaster_misses_a_little_keeps_alarming(backend):
    """The forecast of a stuck value is rarely the value itself (a recurrent model drifts
    around it), so its errors look like a quieter regime; the value repeating itself
    exactly is what tells them apart, and the stuck value stays an alarm."""
    rng = np.random.default_rng(11)
    x = 50.0 + rng.standard_normal(2400)
    x[1200:1600] = x[1199]  # stuck for 400 samples
    f = np.concatenate([[x[0]], x[:-1]])
    f[1200:1600] += 0.05 * np.sin(np.arange(400) / 15.0)  # the forecaster's slow wander
    flags = flags_of(Detector(channels=["v"], backend=backend), x, f)
    assert flags[1200:1600].sum() > 350


def test_the_backends_agree_through_a_quieter_regime():
    if "c" not in BACKENDS:
        pytest.skip("no C compiler")
    x, f = noise_then(0.1, 13, n=2500)
    times = START + 300.0 * np.arange(len(x))
    scores = [
        Detector(channels=["v"], backend=b).score_block(x[:, None], f[:, None], times=times).score
        for b in ("numpy", "c")
    ]
    np.testing.assert_allclose(scores[1], scores[0], rtol=1e-9, atol=1e-12)


def test_a_state_saved_before_the_quiet_rule_resumes():
    x, f = noise_then(0.1, 14, n=2500)
    times = START + 300.0 * np.arange(len(x))
    det = Detector(channels=["v"], backend="numpy")
    det.score_block(x[:800, None], f[:800, None], times=times[:800])
    state = det.state_dict()
    state["regime"] = state["regime"][:4]  # what an older version saved
    old = Detector(**state["params"], backend="numpy")
    old.load_state_dict(state)
    flags = old.score_block(x[800:, None], f[800:, None], times=times[800:]).anomaly
    assert flags[200:].sum() < 150  # it has the rule from then on
