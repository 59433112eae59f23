"""The live per-sample path's lean calls (issue 16): OnlineHead.step() with its own
buffers and Detector.score_fields() straight to the kernel give the same numbers,
records, events and states as learn() / correct(), score_one() and
_detector_fields, on every mix of the calls and across save / resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgernn.errors import InputError
from edgernn.runtime.adapt import OnlineHead
from edgernn.runtime.detector import ckernel
from edgernn.runtime.detector.core import Detector
from edgernn.runtime.monitor import _detector_fields


def _data(n: int, c: int, hidden: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    X = (np.sin(t / 9.0 + np.arange(c)) + 0.1 * rng.standard_normal((n, c))).astype(np.float32)
    X[n // 2 :] += 0.5  # a shift the head learns
    Y = (X + 0.05 * rng.standard_normal((n, c))).astype(np.float32)
    H = rng.uniform(-1, 1, (n, hidden)).astype(np.float32)
    w = np.where(rng.random(n) < 0.1, 0.0, 1.0)
    return X, Y, H, w


def _same_state(a: dict, b: dict) -> None:
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.mark.parametrize("horizon", [1, 3])
@pytest.mark.parametrize("block", [64, 5])
def test_step_matches_learn_correct_and_resumes_anywhere(horizon, block):
    n, c, hidden = 300, 3, 6
    X, Y, H, w = _data(n, c, hidden)
    std = np.array([1.0, 2.0, 0.5])
    ref = OnlineHead(hidden, c, std, horizon, block=block)
    live = OnlineHead(hidden, c, std, horizon, block=block)
    want, got = np.empty((n, c)), np.empty((n, c))
    for t in range(n):
        ref.learn(X[t : t + 1], w[t : t + 1])
        want[t] = ref.correct(Y[t : t + 1], H[t : t + 1])[0]
        if t % 53 == 20:  # a sample through learn() / correct() between steps
            live.learn(X[t : t + 1], w[t : t + 1])
            got[t] = live.correct(Y[t : t + 1], H[t : t + 1])[0]
        else:
            got[t] = live.step(X[t], Y[t], H[t], float(w[t]))
        if t % 37 == 11:  # a save mid-block, read by step() and by a fresh head
            _same_state(live.state_dict(), ref.state_dict())
            if t % 2:
                fresh = OnlineHead(hidden, c, std, horizon, block=block)
                fresh.load_state_dict(json.loads(json.dumps(live.state_dict())))
                live = fresh
    np.testing.assert_array_equal(got, want)
    _same_state(live.state_dict(), ref.state_dict())


def test_step_mixed_with_run_chunk_and_learn_correct():
    n, c, hidden = 400, 2, 4
    X, Y, H, w = _data(n, c, hidden, seed=3)
    std = np.array([1.5, 0.7])
    ref, mixed = OnlineHead(hidden, c, std, 2), OnlineHead(hidden, c, std, 2)
    want = np.empty((n, c))
    for t in range(n):
        ref.learn(X[t : t + 1], w[t : t + 1])
        want[t] = ref.correct(Y[t : t + 1], H[t : t + 1])[0]
    got = np.empty((n, c))
    t = 0
    while t < n:
        if (t // 50) % 3 == 1:  # a chunk through run_chunk
            b = min(n, t + 50)
            Yc = Y[t:b].astype(np.float64).copy()
            mixed.run_chunk(Yc, H[t:b], X[t:b], lambda a, e, t=t: w[t + a : t + e])
            got[t:b] = Yc
            t = b
        elif (t // 50) % 3 == 2:
            mixed.learn(X[t : t + 1], w[t : t + 1])
            got[t] = mixed.correct(Y[t : t + 1], H[t : t + 1])[0]
            t += 1
        else:
            got[t] = mixed.step(X[t], Y[t], H[t], float(w[t]))
            t += 1
    np.testing.assert_array_equal(got, want)
    _same_state(mixed.state_dict(), ref.state_dict())


def test_step_without_a_forecast_due_raises():
    head = OnlineHead(2, 1, [1.0], horizon=1)
    head.step(np.ones(1, np.float32), np.ones(1, np.float32), np.zeros(2, np.float32))
    head._phi, head._base = np.zeros((0, 3)), np.zeros((0, 1))  # a forecast lost
    with pytest.raises(InputError, match="not made"):
        head.step(np.ones(1, np.float32), np.ones(1, np.float32), np.zeros(2, np.float32))


def _stream(n: int, c: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    x = np.sin(np.arange(n)[:, None] / 6.0 + np.arange(c)) + 0.1 * rng.standard_normal((n, c))
    x[[150, 151, 152, 260, 300], 0] += 8.0  # events to open and close
    f = x + 0.1 * rng.standard_normal(x.shape)
    return x.astype(np.float32), f.astype(np.float32)


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_score_fields_is_score_one_and_its_fields(backend):
    if backend == "c":
        try:
            ckernel.load_library()
        except ckernel.CStepUnavailable as e:
            pytest.skip(str(e))
    x, f = _stream(400, 3)
    opts = {"warmup": 60, "alarm_every": 100, "backend": backend}
    a, b = Detector(**opts), Detector(**opts)
    for i in range(len(x)):
        want = a.score_one(x[i], f[i])
        got, fields = b.score_fields(x[i], f[i])
        assert fields == _detector_fields(want)
        assert list(fields) == list(_detector_fields(want))
        assert type(fields["anomaly"]) is int and type(fields["score"]) is float
        assert got.score == want.score and got.threshold == want.threshold
        np.testing.assert_array_equal(got.contributions, want.contributions)
        if i == 200:
            b.load_state_dict(json.loads(json.dumps(b.state_dict())))
    _same_state(a.state_dict(), b.state_dict())
    assert [e.to_dict() if hasattr(e, "to_dict") else vars(e) for e in a.events] == [
        e.to_dict() if hasattr(e, "to_dict") else vars(e) for e in b.events
    ]
    assert len(a.events) >= 1


def test_score_fields_refuses_what_score_one_refuses():
    x, f = _stream(400, 2)
    det = Detector(warmup=30)
    for i in range(100):
        det.score_fields(x[i], f[i])
    before = json.dumps(det.state_dict(), sort_keys=True)
    bad = x[100].copy()
    bad[1] = np.nan
    with pytest.raises(InputError, match="sample holds NaN"):
        det.score_fields(bad, f[100])
    big = f[100].copy()
    big[0] = np.inf
    with pytest.raises(InputError, match="forecast holds NaN"):
        det.score_fields(x[100], big)
    with pytest.raises(InputError, match="channels"):
        det.score_fields(x[100][:1], f[100][:1])
    assert json.dumps(det.state_dict(), sort_keys=True) == before
    huge = np.full(2, 1e300)  # float64, beyond float32: scored as score_one scores it
    twin = Detector(warmup=30)
    twin.load_state_dict(json.loads(before))
    out, _ = det.score_fields(huge, huge)
    assert out.score == twin.score_one(huge, huge).score


def test_score_fields_goes_through_a_replaced_score_one():
    calls = []

    class Counted(Detector):
        def score_one(self, x, forecast, time=None):
            calls.append(1)
            return super().score_one(x, forecast, time)

    x, f = _stream(400, 2)
    det = Counted(warmup=30)
    for i in range(200):
        det.score_fields(x[i], f[i])
    assert len(calls) == 200
    plain = Detector(warmup=30)
    plain.score_one = lambda *a, **k: calls.append(2) or Detector.score_one(plain, *a, **k)
    plain.score_fields(x[0], f[0])
    assert calls[-1] == 2
