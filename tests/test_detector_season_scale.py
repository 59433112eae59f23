"""The error scale by time of day (normalise.py SeasonalScale): where the noise follows
the clock, z is in the hour's units, so a day that loses its daily cycle is seen even
though its values look like any night's; numpy and the kernel agree, and both resume."""

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

START = 1_700_000_000.0  # epoch seconds
DAY = 288  # 5-minute samples a day


def counts(days: int, seed: int, flat_day: int | None = None):
    """Event counts, Poisson around a daily cycle (noisy by day, quiet by night), and a
    forecast that knows the cycle: the errors are the Poisson noise. flat_day: that day
    the count holds its mean (the cycle stops), and the errors are no larger than a
    night's: only against this hour's usual noise are they too small."""
    rng = np.random.default_rng(seed)
    t = np.arange(days * DAY)
    rate = np.maximum(0.5, 6.0 + 5.0 * np.sin(2 * np.pi * t / DAY))
    x = rng.poisson(rate).astype(float)
    f = rate.copy()
    if flat_day is not None:
        day = slice(flat_day * DAY, (flat_day + 1) * DAY)
        x[day] = np.round(6.0 + rng.standard_normal(DAY))
        # a forecaster following the values errs by about a night's noise
        f[day] = x[day] + rng.standard_normal(DAY)
    return x, f, START + 300.0 * t


def flags(backend, x, f, times):
    det = Detector(channels=["n"], backend=backend)
    return det.score_block(x[:, None], f[:, None], times=times).anomaly.astype(bool)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_day_without_its_cycle_scores_above_every_normal_day(backend):
    """Against one scale for the whole day the flat day's errors are a night's, and it
    scored below the normal days' peaks (1.6-2.3 against 2.7-3.9); in the hour's units
    it scores above them (3.3-4.2 against 2.3-2.9)."""
    for seed in range(3):
        x, f, times = counts(14, seed, flat_day=10)
        det = Detector(channels=["n"], backend=backend)
        score = det.score_block(x[:, None], f[:, None], times=times).score
        assert score[10 * DAY : 11 * DAY].max() > score[4 * DAY : 10 * DAY].max() + 0.2, seed


@pytest.mark.parametrize("backend", BACKENDS)
def test_normal_counts_stay_near_the_budget(backend):
    for seed in range(3):
        x, f, times = counts(14, 10 + seed)
        det = Detector(channels=["n"], backend=backend, alarm_every=1000)
        out = det.score_block(x[:, None], f[:, None], times=times)
        onsets = int(out.onset[4 * DAY :].sum())
        assert onsets <= 3 * (len(x) - 4 * DAY) / 1000, (seed, onsets)


def test_the_backends_agree_with_the_season_scale():
    if "c" not in BACKENDS:
        pytest.skip("no C compiler")
    x, f, times = counts(8, 20, flat_day=6)
    scores = [
        Detector(channels=["n"], backend=b).score_block(x[:, None], f[:, None], times=times).score
        for b in ("numpy", "c")
    ]
    np.testing.assert_allclose(scores[1], scores[0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_is_exact_with_the_season_scale(backend):
    x, f, times = counts(6, 21, flat_day=5)

    def step(det, t):
        out = det.score_one([x[t]], [f[t]], time=times[t])
        return out.score, out.anomaly, out.onset

    assert_resumes_exactly(
        lambda: Detector(channels=["n"], backend=backend), step, len(x), cuts=(4 * DAY + 7,)
    )


def test_a_state_saved_before_the_season_scale_resumes():
    x, f, times = counts(8, 22)
    det = Detector(channels=["n"], backend="numpy")
    det.score_block(x[: 2 * DAY, None], f[: 2 * DAY, None], times=times[: 2 * DAY])
    state = det.state_dict()
    del state["parts"]["season_scale"]  # what an older version saved
    old = Detector(**state["params"], backend="numpy")
    old.load_state_dict(state)
    rest = slice(2 * DAY, None)
    out = old.score_block(x[rest, None], f[rest, None], times=times[rest])
    assert np.isfinite(out.score).all() and old._season_scale is not None
    assert old._season_scale.count.sum() > 0  # learning from then on
