"""The novelty baseline and the warm-up holdout threshold: a sustained level shift keeps
alarming where a tracking forecaster's error fades, a slow drift seen in the warm-up does
not alarm, the holdout threshold is the quantile it says, and the state resumes exactly."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from conftest import assert_resumes_exactly

from edgernn.errors import InputError
from edgernn.runtime.detector import Detector
from edgernn.runtime.evaluate_commands import add_detector_arguments, detector_kwargs_from

WARMUP, ONSET, LENGTH, N = 400, 600, 300, 1100


def level_shift_stream(seed: int = 0, drift: float = 0.0) -> np.ndarray:
    """(N, 2) white noise (std 1); channel 1 shifts by +4 over ONSET..ONSET+LENGTH;
    channel 0 drifts by `drift` per sample throughout."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, 2))
    x[:, 0] += drift * np.arange(N)
    x[ONSET : ONSET + LENGTH, 1] += 4.0
    return x


def run(x: np.ndarray, **kwargs) -> tuple[np.ndarray, Detector]:
    """A persistence forecaster (forecast = previous sample): its error spikes at a
    level shift's onset, then goes back to normal while the shift lasts."""
    settings = dict(threshold="holdout", warmup=WARMUP, channels=["a", "b"], min_score=0.0)
    det = Detector(**{**settings, **kwargs})
    forecasts = np.vstack([x[:1], x[:-1]])
    flags = np.array([det.score_one(x[t], forecasts[t]).anomaly for t in range(len(x))])
    return flags, det


def test_baseline_keeps_alarming_through_a_sustained_shift():
    x = level_shift_stream()
    with_baseline, det = run(x, baseline=120, forecast_weight=0.0)
    forecast_only, _ = run(x)
    shift = slice(ONSET, ONSET + LENGTH)
    assert with_baseline[shift].mean() > 0.9  # frozen while flagged: the shift keeps scoring
    assert forecast_only[shift].mean() < 0.2  # the onset spike, then the error is normal again
    assert with_baseline[WARMUP:ONSET].mean() < 0.05
    assert with_baseline[ONSET + LENGTH + 50 :].mean() < 0.05  # back to the old level: quiet
    det.close_event()
    assert any(ev.top_channels[0] == "b" for ev in det.events if ev.start >= ONSET)


def test_slow_drift_seen_in_the_warm_up_does_not_alarm():
    x = level_shift_stream(seed=1, drift=0.02)  # 8 std over the warm-up
    flags, _ = run(x, baseline=120, forecast_weight=0.0)
    assert flags[WARMUP:ONSET].mean() < 0.05
    assert flags[ONSET : ONSET + LENGTH].mean() > 0.8


def test_holdout_threshold_is_margin_times_the_quantile_of_holdout_scores():
    # One channel, scale 1, no smoothing: a score is |error|. Holdout = the last 4 of 8
    # warm-up samples; the first holdout score is skipped (the smoothing's warm-up).
    det = Detector(
        error_scale=[1.0], threshold="holdout", warmup=8, holdout=0.5, smoothing=1,
        quantile=1.0, margin=2.0, min_score=0.0, adapt=0.0,
    )  # fmt: skip
    for e in [9.0, 9.0, 9.0, 9.0, 7.0, 1.0, 3.0, 2.0]:
        assert det.score_error([e]).threshold is None
    out = det.score_error([5.0])
    assert out.threshold == pytest.approx(6.0)  # 2 x max(1, 3, 2)
    assert not out.anomaly and det.score_error([6.5]).anomaly


def test_state_resumes_exactly_with_a_baseline():
    x = level_shift_stream(seed=2)
    forecasts = np.vstack([x[:1], x[:-1]])
    params = dict(threshold="holdout", warmup=WARMUP, baseline=60, min_score=0.0)

    def step(det, t):
        o = det.score_one(x[t], forecasts[t])
        return o.score, o.anomaly, o.threshold

    # cuts: inside the holdout, at its end, inside the shift
    assert_resumes_exactly(lambda: Detector(**params), step, N, (300, WARMUP, 700))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(baseline=0.5),
        dict(baseline=float("inf")),
        dict(forecast_weight=-1.0),
        dict(holdout=1.0),
        dict(quantile=0.0),
        dict(margin=0.0),
        dict(baseline=10, warmup=2),  # a holdout of 1 sample cannot give a scale
        dict(threshold="holdout", warmup=0),
    ],
)
def test_bad_novelty_settings_are_one_line_input_errors(kwargs):
    with pytest.raises(InputError) as info:
        Detector(**kwargs)
    assert "\n" not in str(info.value)


def test_baseline_needs_the_sample():
    det = Detector(baseline=10, warmup=10)
    with pytest.raises(InputError):
        det.score_error([1.0, 2.0])
    assert det.t == 0


def test_cli_flags_reach_the_detector():
    parser = argparse.ArgumentParser()
    add_detector_arguments(parser)
    args = parser.parse_args(
        ["--threshold", "holdout", "--baseline", "120", "--forecast-weight", "0.5",
         "--holdout", "0.25", "--quantile", "0.95", "--margin", "1.2"]
    )  # fmt: skip
    kwargs = detector_kwargs_from(args)
    assert kwargs == dict(
        threshold="holdout", baseline=120.0, forecast_weight=0.5, holdout=0.25,
        quantile=0.95, margin=1.2,
    )  # fmt: skip
    det = Detector(**kwargs, warmup=100)
    assert Detector(**det.get_params()).get_params() == det.get_params()


# -- reference novelty --------------------------------------------------------------------
def test_reference_keeps_alarming_through_a_slow_onset_the_tracking_baseline_absorbs():
    # A shift that creeps in over 150 samples: a tracking baseline follows it before it
    # is ever flagged; a reference fixed at the end of the warm-up does not move.
    x = level_shift_stream(seed=3)
    x[ONSET : ONSET + LENGTH, 1] -= 4.0
    x[ONSET : ONSET + LENGTH, 1] += 4.0 * np.minimum(np.arange(LENGTH) / 150, 1.0)
    reference, _ = run(
        x, novelty="reference", baseline=10, forecast_weight=0.0, holdout=0.8, margin=1.5
    )
    tracking, _ = run(x, baseline=120, forecast_weight=0.0)
    late = slice(ONSET + 150, ONSET + LENGTH)
    assert reference[late].mean() > 0.9
    assert tracking[late].mean() < reference[late].mean() - 0.3
    assert reference[WARMUP:ONSET].mean() < 0.05
    assert reference[ONSET + LENGTH + 30 :].mean() < 0.05


def test_novelty_channels_leave_a_drifting_sensor_to_the_forecast_term():
    x = level_shift_stream(seed=4)
    x[WARMUP:, 0] += 0.01 * np.arange(N - WARMUP)  # channel a drifts 7 std after warm-up
    common = dict(novelty="reference", baseline=10, forecast_weight=0.0, holdout=0.8, margin=1.5)
    every, _ = run(x, **common)
    only_b, det = run(x, novelty_channels=["b"], **common)
    assert every[WARMUP + 400 :].mean() > 0.5  # the drift alone alarms
    assert only_b[WARMUP:ONSET].mean() < 0.05 and only_b[ONSET + LENGTH + 30 :].mean() < 0.05
    assert only_b[ONSET : ONSET + LENGTH].mean() > 0.9
    assert Detector(**det.get_params()).get_params() == det.get_params()
    by_index, _ = run(x, novelty_channels=[1], **common)
    assert np.array_equal(by_index, only_b)


def test_reference_scale_has_a_noise_floor():
    # Channel b alternates 0/1 through the warm-up (a ripple sampled at twice its
    # period): its smoothed level hardly moves, so the smoothed spread alone would be
    # tiny. Afterwards the same 0/1 values come in random order, as sensor noise does:
    # the floor (the raw std / sqrt(span)) keeps that from reading as a fault.
    rng = np.random.default_rng(5)
    x = rng.standard_normal((N, 2))
    x[:WARMUP, 1] = np.arange(WARMUP) % 2
    x[WARMUP:, 1] = rng.integers(0, 2, N - WARMUP)
    flags, _ = run(
        x, novelty="reference", baseline=30, forecast_weight=0.0, holdout=0.8, margin=1.5
    )
    assert flags[WARMUP:].mean() < 0.05


def test_state_resumes_exactly_with_a_reference():
    x = level_shift_stream(seed=6)
    forecasts = np.vstack([x[:1], x[:-1]])
    params = dict(
        threshold="holdout", warmup=WARMUP, baseline=20, novelty="reference", holdout=0.5,
        novelty_channels=["b"], channels=["a", "b"], min_score=0.0,
    )  # fmt: skip

    def step(det, t):
        o = det.score_one(x[t], forecasts[t])
        return o.score, o.anomaly, o.threshold

    assert_resumes_exactly(lambda: Detector(**params), step, N, (100, 300, WARMUP, 700))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(novelty="static"),
        dict(novelty_channels=["c"], channels=["a", "b"]),
        dict(novelty_channels=["a"]),  # names need the channel names
        dict(novelty_channels=[2], channels=["a", "b"]),
        dict(novelty_channels="a", channels=["a", "b"]),
        dict(novelty_channels=[-1]),
        dict(novelty="reference", baseline=0.0),  # a mode without a novelty term
        dict(novelty_channels=["a"], channels=["a", "b"], baseline=0.0),
    ],
)
def test_bad_reference_settings_are_one_line_input_errors(kwargs):
    with pytest.raises(InputError) as info:
        Detector(**{"baseline": 10.0, "warmup": 50, **kwargs})
    assert "\n" not in str(info.value)


def test_novelty_index_beyond_the_samples_is_an_input_error():
    det = Detector(baseline=10, warmup=20, novelty_channels=[3], novelty="reference")
    with pytest.raises(InputError, match="out of range"):
        for _ in range(30):
            det.score_one([0.0, 1.0], [0.0, 1.0])


def test_cli_novelty_flags_reach_the_detector():
    parser = argparse.ArgumentParser()
    add_detector_arguments(parser)
    args = parser.parse_args(
        ["--novelty", "reference", "--novelty-channels", "a, b", "--combine", "top2"]
    )
    assert detector_kwargs_from(args) == dict(
        novelty="reference", novelty_channels=["a", "b"], combine="top2"
    )
