"""Per-channel freezing and hysteresis: a channel that drifts during another channel's
fault does not hold the alarm once the fault ends, an alarm holds through a dip with
`release`, and every option survives a JSON state round trip and comes in through the
CLI flags."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from conftest import assert_resumes_exactly

from edgernn.errors import InputError
from edgernn.runtime.detector import Detector
from edgernn.runtime.evaluate_commands import add_detector_arguments, detector_kwargs_from

WARMUP, ONSET, LENGTH, N = 400, 600, 300, 1200


def drift_during_fault(seed: int = 0) -> np.ndarray:
    """(N, 2) white noise; channel 1 shifts by +6 over ONSET..ONSET+LENGTH while channel 0
    starts drifting at ONSET (0.01 std per sample: 3 std by the fault's end)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, 2))
    x[ONSET:, 0] += 0.01 * np.arange(N - ONSET)
    x[ONSET : ONSET + LENGTH, 1] += 6.0
    return x


def run(x: np.ndarray, **kwargs) -> np.ndarray:
    settings = dict(threshold="holdout", warmup=WARMUP, baseline=120, forecast_weight=0.0,
                    min_score=0.0, margin=1.5)  # fmt: skip
    det = Detector(**{**settings, **kwargs})
    forecasts = np.vstack([x[:1], x[:-1]])
    return np.array([det.score_one(x[t], forecasts[t]).anomaly for t in range(len(x))])


def test_freeze_lets_quiet_channels_track_so_the_alarm_ends_with_the_fault():
    x = drift_during_fault()
    after = slice(ONSET + LENGTH + 30, N)
    frozen_all = run(x)
    per_channel = run(x, freeze=3.0)
    assert frozen_all[ONSET : ONSET + LENGTH].mean() > 0.9
    assert per_channel[ONSET : ONSET + LENGTH].mean() > 0.9
    assert frozen_all[after].mean() > 0.5  # the drift piled up behind the frozen baseline
    assert per_channel[after].mean() < 0.05


def test_release_holds_an_alarm_through_a_dip():
    # One channel, no smoothing, fixed threshold 3: the score is |error|.
    errors = [0.0, 4.0, 2.5, 2.5, 1.0, 2.5]
    plain = Detector(error_scale=[1.0], threshold="fixed", fixed_threshold=3.0, warmup=0,
                     smoothing=1, adapt=0.0)  # fmt: skip
    held = Detector(**{**plain.get_params(), "release": 0.5})
    assert [plain.score_error([e]).anomaly for e in errors] == [0, 1, 0, 0, 0, 0]
    assert [held.score_error([e]).anomaly for e in errors] == [0, 1, 1, 1, 0, 0]


@pytest.mark.parametrize(
    "extra", [dict(freeze=3.0), dict(release=0.7), dict(freeze=3.0, release=0.8)]
)
def test_state_resumes_exactly_with_the_new_options(extra):
    x = drift_during_fault(seed=3)
    forecasts = np.vstack([x[:1], x[:-1]])
    params = dict(threshold="holdout", warmup=WARMUP, baseline=60, min_score=0.0, **extra)

    def step(det, t):
        o = det.score_one(x[t], forecasts[t])
        return o.score, o.anomaly

    cuts = (350, ONSET + 20, ONSET + LENGTH + 5)
    assert_resumes_exactly(lambda: Detector(**params), step, N, cuts)


@pytest.mark.parametrize(
    "kwargs",
    [dict(freeze=-1.0), dict(freeze=float("nan")), dict(release=0.0), dict(release=1.5)],
)  # fmt: skip
def test_bad_settings_are_one_line_input_errors(kwargs):
    with pytest.raises(InputError) as info:
        Detector(**kwargs)
    assert "\n" not in str(info.value)


def test_cli_flags_reach_the_detector():
    parser = argparse.ArgumentParser()
    add_detector_arguments(parser)
    args = parser.parse_args(["--freeze", "3", "--release", "0.7"])
    kwargs = detector_kwargs_from(args)
    assert kwargs == dict(freeze=3.0, release=0.7)
    det = Detector(**kwargs)
    assert Detector(**det.get_params()).get_params() == det.get_params()
