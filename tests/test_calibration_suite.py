"""benchmarks/calibration.py in small: on a few of its kinds of normal stream the
false alarms stay near the budget, and an injected anomaly opens an alert."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def cal():
    return load_benchmark("calibration")


@pytest.mark.parametrize("kind", ["counts", "spiky", "seasonal"])
def test_false_alarms_near_the_budget(cal, kind):
    budget, n = 1000, 9000
    rng = np.random.default_rng([3, cal.KINDS.index(kind)])
    x, stamps, _ = cal.make_stream(kind, n, rng)
    _, onsets = cal.run_detector(x, stamps, {"alarm_every": budget})
    alarms = int(onsets[cal.BURN_IN :].sum())
    expected = (n - cal.BURN_IN) / budget
    # One seed of 8,000 samples: about 8 alarms expected, so the bounds are loose (the
    # benchmark's 2x target is over 3 seeds of 11,000); a conservative miss is the
    # likelier one (counts: 0.55 of the budget there).
    assert expected / 4 <= alarms <= 2.5 * expected, (kind, alarms, expected)


@pytest.mark.parametrize("kind, anomaly", [("smooth", "spike"), ("seasonal", "level_shift"),
                                           ("smooth", "variance")])  # fmt: skip
def test_injected_anomaly_opens_an_alert(cal, kind, anomaly):
    rng = np.random.default_rng([4, cal.KINDS.index(kind)])
    x, stamps, (start, end) = cal.make_stream(kind, 4000, rng, anomaly)
    _, onsets = cal.run_detector(x, stamps, {"alarm_every": 1000})
    assert onsets[start : end + cal.END_SLACK + 1].any()
