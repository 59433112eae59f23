"""Patterns counted by their episodes (tails.py PeakTable) and the energy's prior
(core.py _prior): a flat baseline's frequent normal spikes become normal after about 8
episodes of them, without one fault's many outliers making the next fault ordinary, and a
noise burst on such a stream is flagged; numpy and the kernel agree, and both resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_resumes_exactly

from edgernn.runtime.detector import Detector, ckernel

try:
    ckernel.load_library()
    BACKENDS = ["numpy", "c"]
except ckernel.CStepUnavailable:  # no compiler: numpy is all there is
    BACKENDS = ["numpy"]


def spiky(n: int, seed: int, burst_at: int | None = None):
    """A flat baseline (noise 0.3) with 1 % of normal one-sample spikes of 3-8 units
    (10-27 noise sd), forecast as its baseline; burst_at: 100 samples of noise 2.5
    from there (spike-sized values, one after another)."""
    rng = np.random.default_rng(seed)
    x = 0.3 * rng.standard_normal(n)
    spikes = rng.random(n) < 0.01
    x[spikes] += rng.uniform(3, 8, spikes.sum())
    if burst_at is not None:
        x[burst_at : burst_at + 100] += 2.5 * rng.standard_normal(100)
    return x, np.flatnonzero(spikes)


@pytest.mark.parametrize("backend", BACKENDS)
def test_frequent_normal_spikes_become_normal_and_a_burst_still_alarms(backend):
    for seed in range(3):
        x, spikes = spiky(4000, seed, burst_at=3000)
        det = Detector(backend=backend)  # one false alarm per 10,000 samples: 4
        out = det.score_block(x[:, None], np.zeros((len(x), 1)))
        later = spikes[(spikes >= 2000) & (spikes < 3000)]
        # before: every normal spike scored 8-13, a false alarm each, to the end
        assert np.median(out.score[later]) < 3.0, seed
        assert int(out.anomaly[later].sum()) <= 1, seed
        # before: the burst's spike-sized values were "spikes" and it scored 3.3 at most
        assert out.anomaly[3000:3010].any(), seed


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_faults_outliers_do_not_make_the_next_fault_normal(backend):
    """A noise burst is one episode however many outliers it holds: a spike after it
    is as surprising as on a stream that never had one."""
    rng = np.random.default_rng(7)
    calm = rng.standard_normal(5000)
    x = calm.copy()
    x[2000:2150] += 6.0 * rng.standard_normal(150)  # 150 samples, most beyond 3 sd
    x[4000] += 12.0
    episodes = []
    for series in (calm, x):
        det = Detector(backend=backend)
        out = det.score_block(series[:, None], np.zeros((len(x), 1)))
        episodes.append(det._first.peaks._padded[0, 0])  # all, decayed
    assert out.anomaly[2000:2010].any()
    assert out.anomaly[4000] and out.score[4000] >= 6.0
    # Gaussian noise has its own (0.27 % beyond 3 sd); the burst added one or two
    assert episodes[1] - episodes[0] <= 2.5, episodes


def test_the_backends_agree_with_episodes():
    if "c" not in BACKENDS:
        pytest.skip("no C compiler")
    x, _ = spiky(4000, 11, burst_at=3000)
    scores = [
        Detector(backend=b).score_block(x[:, None], np.zeros((len(x), 1))).score
        for b in ("numpy", "c")
    ]
    np.testing.assert_allclose(scores[1], scores[0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_is_exact_with_episodes(backend):
    x, _ = spiky(2500, 12)

    def step(det, t):
        out = det.score_one([x[t]], [0.0])
        return out.score, out.anomaly, out.onset

    # one cut inside an open episode (a spike just before it), one anywhere
    cut = int(np.flatnonzero(np.abs(x[1500:]) > 3)[0]) + 1502
    assert_resumes_exactly(lambda: Detector(backend=backend), step, len(x), cuts=(cut, 2001))


def test_a_state_saved_before_episodes_resumes():
    x, _ = spiky(3000, 13)
    det = Detector(backend="numpy")
    det.score_block(x[:1500, None], np.zeros((1500, 1)))
    state = det.state_dict()
    del state["parts"]["episodes"]  # what an older version saved
    old = Detector(**state["params"], backend="numpy")
    old.load_state_dict(state)
    out = old.score_block(x[1500:, None], np.zeros((1500, 1)))
    assert np.isfinite(out.score).all()
    assert old._first.peaks._padded[0, 0] > 0  # counting episodes from then on


def test_a_damaged_episode_table_is_a_clear_error():
    from edgernn.errors import InputError

    det = Detector(backend="numpy")
    det.score_block(np.zeros((200, 1)), np.zeros((200, 1)))
    state = det.state_dict()
    for key, wrong in (("peak", [0.0, 1.0]), ("quiet", [[0.0]]), ("survival", [[0.0]])):
        damaged = json.loads(json.dumps(state))
        damaged["parts"]["episodes"][key] = wrong
        with pytest.raises(InputError, match="damaged detector state"):
            Detector(**state["params"], backend="numpy").load_state_dict(damaged)
