"""The anomaly detector: the dynamic threshold by hand, contracts every strategy keeps,
events, calibration, and building from model metadata."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import assert_resumes_exactly

from edgernn.errors import InputError, ModelFormatError
from edgernn.runtime.detector import (
    STRATEGIES,
    Detector,
    calibrate,
    dynamic_threshold,
    prune_sequences,
    robust_center_scale,
)
from edgernn.runtime.metadata import ModelMeta, StateSpec


# ------------------------------------------------------------- the hand-worked example
def test_dynamic_threshold_hand_worked_example():
    """values: nine 1s then a 10, no error buffer.

    mean = 1.9; std = sqrt((9 * 0.9**2 + 8.1**2) / 10) = sqrt(7.29) = 2.7.
    z = 2.5: eps = 1.9 + 6.75 = 8.65, only the 10 is above. Removing it leaves nine 1s:
      delta_mean / mean = 0.9 / 1.9, delta_std / std = 2.7 / 2.7 = 1; one run of one
      value: score = (0.47368 + 1) / (1**2 + 1) = 0.73684.
    z = 3.0: eps = 1.9 + 8.1 = 10.0; 10 >= 10 still flags it: the same score; ties go
      to the larger z.
    z = 3.5: eps = 11.35 flags nothing, nor does any larger z.
    So epsilon = 10.0, one sequence (9, 9); pruning compares its max 10 with the
    largest normal value 1: (10 - 1) / 10 = 0.9 >= p = 0.13, so it stays.
    """
    result = dynamic_threshold([1.0] * 9 + [10.0], buffer=0)
    assert result.z == 3.0
    assert result.epsilon == pytest.approx(10.0)
    assert result.sequences == [(9, 9)]
    assert result.kept == [(9, 9)]


def test_dynamic_threshold_buffer_widens_sequences():
    result = dynamic_threshold([1.0] * 9 + [10.0] + [1.0] * 5, buffer=2)
    assert result.sequences == [(7, 11)]  # the 10 at 9 plus two neighbours either side


def test_pruning_hand_worked():
    """Maxima 5 and 4.6, normal max 3: 5 -> 4.6 drops 8% (< 13%) but 4.6 -> 3.0 drops
    35%, so both stay. With 3.2 instead of 4.6: 5 -> 3.2 is a clear drop (36%), then
    3.2 -> 3.0 drops only 6%: the 3.2 run is pruned, the 5 stays."""
    base = [1, 5, 1, 1, 4.6, 1, 1, 3.0, 1]
    mask = np.zeros(9, dtype=bool)
    mask[[1, 4]] = True
    assert prune_sequences(base, [(1, 1), (4, 4)], mask, p=0.13) == [(1, 1), (4, 4)]
    base[4] = 3.2
    assert prune_sequences(base, [(1, 1), (4, 4)], mask, p=0.13) == [(1, 1)]


def test_dynamic_threshold_flat_window_flags_nothing():
    assert dynamic_threshold([2.0] * 30).kept == []
    assert dynamic_threshold([]).kept == []


def test_dynamic_threshold_guardrail_refuses_half_the_window():
    # Half the window high: no z may flag half of it, so epsilon falls back to z_max.
    result = dynamic_threshold([1.0] * 10 + [5.0] * 10, z_max=6.0)
    assert result.z is None
    assert result.kept == []


# ------------------------------------------------------------------------ helpers
def gaussian_errors(n=600, channels=3, seed=0, scale=(1.0, 2.0, 0.5)):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, channels)) * np.asarray(scale)[:channels]


def make_detector(strategy: str, **kwargs) -> Detector:
    defaults = dict(
        error_scale=[1.0, 2.0, 0.5],
        channels=["a", "b", "c"],
        threshold=strategy,
        fixed_threshold=3.0,
        warmup=20,
    )
    defaults.update(kwargs)
    return Detector(**defaults)


def stream_with_anomaly(n=600, seed=0):
    """Gaussian errors with a burst in channel b at 300..340."""
    e = gaussian_errors(n, seed=seed)
    e[300:340, 1] += 20.0
    return e


def outputs_as_tuples(outs):
    return [(o.score, o.anomaly, o.threshold, o.event, o.event_closed is not None) for o in outs]


# ---------------------------------------------------------- contracts, every strategy
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_contract_detects_burst_and_names_channel(strategy):
    det = make_detector(strategy)
    outs = [det.score_error(e) for e in stream_with_anomaly()]
    flags = np.array([o.anomaly for o in outs])
    assert flags[300:320].any()
    assert flags[:300].mean() < 0.02  # clean part: a bound on false alarms
    det.close_event()
    burst = [ev for ev in det.events if ev.start <= 330 and ev.end >= 300]
    assert burst and burst[0].top_channels[0] == "b"
    peak = outs[burst[0].peak_index]
    assert int(np.argmax(peak.contributions)) == 1
    assert peak.contributions.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_contract_warmup_is_neutral(strategy):
    det = make_detector(strategy, warmup=30)
    outs = [det.score_error(e) for e in 50.0 * np.ones((30, 3))]  # huge errors
    assert all(o.score == 0.0 and not o.anomaly and o.warming_up for o in outs)
    assert not det.score_error(np.zeros(3)).warming_up


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_contract_state_dict_resume_is_exact(strategy):
    errors = stream_with_anomaly(seed=1)

    def step(det, t):
        return outputs_as_tuples([det.score_error(errors[t])])[0]

    # cuts: in warm-up, inside the burst's event, near its end
    assert_resumes_exactly(lambda: make_detector(strategy), step, len(errors), (10, 310, 335))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_contract_reset_and_twin_replay_identically(strategy):
    errors = stream_with_anomaly(seed=2)
    det = make_detector(strategy)
    first = outputs_as_tuples([det.score_error(e) for e in errors])
    det.reset()
    assert outputs_as_tuples([det.score_error(e) for e in errors]) == first
    twin = Detector(**det.get_params())
    assert outputs_as_tuples([twin.score_error(e) for e in errors]) == first


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_contract_flagged_samples_do_not_feed_statistics(strategy):
    det = make_detector(strategy, adapt=0.01)
    flagged_scores = set()
    for e in stream_with_anomaly(seed=3):
        before = (det.center, det.scale, json.dumps(det._strategy.state_dict()))
        out = det.score_error(e)
        if out.anomaly:
            flagged_scores.add(out.score)
            assert np.array_equal(det.center, before[0])
            assert np.array_equal(det.scale, before[1])
            if strategy == "gaussian":
                assert json.dumps(det._strategy.state_dict()) == before[2]
        if strategy == "dynamic":  # flagged scores may sit in the recent batch, never the reference
            assert not flagged_scores & set(det._strategy.state_dict()["reference"])
    assert flagged_scores


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_contract_score_one_matches_score_error(strategy):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((100, 3)) * 10 + 50
    f = x + stream_with_anomaly(100, seed=4)
    a, b = make_detector(strategy), make_detector(strategy)
    assert outputs_as_tuples([a.score_one(xi, fi) for xi, fi in zip(x, f)]) == outputs_as_tuples(
        [b.score_error(fi - xi) for xi, fi in zip(x, f)]
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_contract_bad_samples_raise_input_error(strategy):
    det = make_detector(strategy)
    with pytest.raises(InputError):
        det.score_one([1.0, float("nan"), 2.0], [1.0, 1.0, 1.0])
    with pytest.raises(InputError):
        det.score_one([1.0, 2.0], [1.0, 2.0])
    with pytest.raises(InputError):
        det.score_one([[1.0, 2.0, 3.0]], [[1.0, 2.0, 3.0]])
    with pytest.raises(InputError):
        det.score_one(["a", "b", "c"], [1.0, 2.0, 3.0])
    assert det.t == 0  # nothing half-counted


@pytest.mark.parametrize(
    "combine, expected",
    [("mean", math.sqrt((9 + 16 + 1 + 0) / 4)), ("top2", math.sqrt((9 + 16) / 2)),
     ("top3", math.sqrt((9 + 16 + 1) / 3)), ("max", 4.0)],
)  # fmt: skip
def test_combine_rules_on_a_known_error(combine, expected):
    """Unit scales, no smoothing: per-channel z = the error; the score is the RMS over
    all channels, the K worst, or the worst."""
    det = Detector(
        error_scale=[1.0] * 4, threshold="fixed", fixed_threshold=100.0, smoothing=1,
        warmup=0, adapt=0.0, combine=combine,
    )  # fmt: skip
    out = det.score_error([3.0, -4.0, 1.0, 0.0])
    assert out.score == pytest.approx(expected)
    assert Detector(**det.get_params()).combine == combine


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(threshold="magic"),
        dict(smoothing=0.5),
        dict(warmup=-1),
        dict(window=0),
        dict(adapt=1.5),
        dict(z=float("nan")),
        dict(error_scale=[1.0, 0.0, 1.0]),
        dict(error_scale=[1.0, 1.0]),
        dict(threshold="fixed", fixed_threshold=None),
        dict(combine="median"),
        dict(smoothing="10"),
    ],
)
def test_bad_settings_raise_one_line_input_errors(kwargs):
    with pytest.raises(InputError) as info:
        make_detector(kwargs.pop("threshold", "dynamic"), **kwargs)
    assert "\n" not in str(info.value)


def test_damaged_state_is_an_input_error():
    det = make_detector("gaussian")
    with pytest.raises(InputError):
        det.load_state_dict({"params": {"threshold": "gaussian"}})
    with pytest.raises(InputError):
        det.load_state_dict(make_detector("dynamic").state_dict())


# ------------------------------------------------------------------------------ events
def test_events_open_peak_and_close_after_holdoff():
    det = Detector(
        error_scale=[1.0], threshold="fixed", fixed_threshold=3.0, smoothing=1, warmup=0,
        holdoff=2, channels=["only"], adapt=0.0,
    )  # fmt: skip
    outs = [det.score_error([e]) for e in [0, 0, 5, 0, 6, 0, 0, 0, 4, 0, 0]]
    assert [o.score for o in outs] == [0, 0, 5, 0, 6, 0, 0, 0, 4, 0, 0]  # 1 channel, no smoothing
    assert [int(o.anomaly) for o in outs] == [0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0]
    assert outs[2].event_opened["start"] == 2
    assert [o.event for o in outs] == [None, None, 1, 1, 1, 1, None, None, 2, 2, None]
    closed = outs[6].event_closed
    assert closed["id"] == 1 and closed["start"] == 2 and closed["end"] == 4
    assert closed["peak_score"] == 6 and closed["peak_index"] == 4 and closed["flagged"] == 2
    assert closed["top_channels"] == ["only"]
    assert outs[10].event_closed["id"] == 2
    assert [e.id for e in det.events] == [1, 2]
    assert all(o.to_record()["anomaly"] in (0, 1) for o in outs)


def test_close_event_at_end_of_stream():
    det = Detector(error_scale=[1.0], threshold="fixed", fixed_threshold=1.0, warmup=0)
    det.score_error([9.0])
    ev = det.close_event()
    assert ev is not None and ev.closed and det.close_event() is None


# ------------------------------------------------------------------------- calibration
def test_calibrate_is_json_and_matches_the_error_scale():
    errors = gaussian_errors(4000, seed=5)
    cal = calibrate(errors, threshold="gaussian", smoothing=5)
    assert json.loads(json.dumps(cal)) == cal
    assert np.allclose(cal["scale"], [1.0, 2.0, 0.5], rtol=0.1)
    assert np.allclose(cal["center"], 0.0, atol=0.1)
    assert cal["threshold"] == "gaussian" and cal["params"] == {"smoothing": 5}
    assert cal["fixed_threshold"] >= 2.0  # never below min_score
    assert cal["validation"]["score_p50"] == pytest.approx(1.0, abs=0.2)


def test_calibrate_quantised_errors_get_a_usable_scale():
    errors = np.zeros((100, 2))
    errors[::5, 0] = 0.5  # a quantised sensor: mostly exact forecasts
    center, scale = robust_center_scale(errors)
    assert scale[0] > 0.05  # falls back from MAD = 0 to the mean absolute deviation
    assert 0 < scale[1] < 1e-5  # a channel that never moves: a tiny floor, not zero


def test_calibrate_rejects_bad_input():
    with pytest.raises(InputError):
        calibrate(np.zeros(5))
    with pytest.raises(InputError):
        calibrate(np.zeros((10, 2)), warp=3)
    with pytest.raises(InputError):
        calibrate(np.full((10, 2), np.nan))


def meta_with(extra=None, error_scale=None) -> ModelMeta:
    return ModelMeta(
        cell="gru", layers=1, hidden=4, channels=["a", "b", "c"],
        states=[StateSpec("h", "h_out", 1, 4)], norm_mean=[0.0] * 3, norm_std=[1.0] * 3,
        error_scale=error_scale, extra=dict(extra or {}),
    )  # fmt: skip


def test_from_meta_reads_the_calibration_and_overrides():
    cal = calibrate(gaussian_errors(2000, seed=6), threshold="fixed", holdoff=3)
    props = meta_with({"detector": cal}).to_props()  # through the metadata strings
    meta = ModelMeta.from_props(props)
    det = Detector.from_meta(meta)
    assert det.threshold == "fixed" and det.holdoff == 3
    assert det.fixed_threshold == pytest.approx(cal["fixed_threshold"])
    assert np.allclose(det.scale, cal["scale"]) and det.channels == ["a", "b", "c"]
    det2 = Detector.from_meta(meta, threshold="gaussian", holdoff=None)
    assert det2.threshold == "gaussian" and det2.holdoff == 3


def test_from_meta_falls_back_to_error_scale_then_warmup():
    det = Detector.from_meta(meta_with(error_scale=[1.0, 2.0, 3.0]))
    assert np.allclose(det.scale, [1.0, 2.0, 3.0])
    det = Detector.from_meta(meta_with(), warmup=40)
    assert det.scale is None
    errors = gaussian_errors(41, seed=7)
    for e in errors[:40]:
        assert det.score_error(e).score == 0.0 and det.scale is None
    assert det.score_error(errors[40]).score > 0  # learnt from the 40 warm-up errors
    assert np.allclose(det.scale, [1.0, 2.0, 0.5], rtol=0.5)  # 40 samples: rough
    with pytest.raises(InputError):
        Detector.from_meta(meta_with(), threshold="fixed")  # nothing to take a value from


def test_from_meta_rejects_damaged_calibration():
    with pytest.raises(ModelFormatError):
        Detector.from_meta(meta_with({"detector": {"center": [0.0], "scale": [1.0]}}))
    with pytest.raises(ModelFormatError):
        Detector.from_meta(meta_with({"detector": {"scale": "oops"}}))


def test_score_is_about_one_on_calibrated_normal_errors():
    det = make_detector("gaussian", error_scale=[1.0, 2.0, 0.5])
    scores = [det.score_error(e).score for e in gaussian_errors(2000, seed=8)][20:]
    assert 0.8 < float(np.median(scores)) < 1.2
    assert math.isfinite(max(scores))
