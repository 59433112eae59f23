"""The anomaly detector: contracts every component keeps (exact save/resume through
JSON, reset = fresh, deterministic twins), the calibrated score, the false-alarm budget,
events with timestamps, configuration and building from model metadata."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta

import numpy as np
import pytest
from conftest import assert_resumes_exactly

from edgernn.errors import InputError, ModelFormatError
from edgernn.runtime.detector import (
    Detector,
    calibrate,
    load_config,
    parse_budget,
    parse_time,
    robust_center_scale,
)
from edgernn.runtime.detector.alerts import EventTracker
from edgernn.runtime.detector.normalise import ErrorNormaliser, SampleFloors, SeasonalProfile
from edgernn.runtime.detector.tails import TailTable
from edgernn.runtime.metadata import ModelMeta, StateSpec

START = datetime(2024, 3, 1)


def stamps(n: int, minutes: float = 5.0) -> list[str]:
    return [(START + timedelta(minutes=minutes * i)).isoformat(sep=" ") for i in range(n)]


def gaussian_stream(n: int, channels: int = 2, seed: int = 0):
    """(samples, persistence forecasts): iid noise around a slow sine."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    x = 10 + np.sin(2 * np.pi * t / 300) + rng.standard_normal((n, channels))
    return x, np.vstack([x[:1], x[:-1]])


# ------------------------------------------------------------- component contracts
def _rng(t: int) -> np.random.Generator:
    return np.random.default_rng([7, t])  # the same draws for sample t in every run


def _tail_table():
    return TailTable(3, -3.0, 5.0, 160, log=True, memory=500)


def _tail_step(table, t):
    v = np.abs(_rng(t).standard_normal(3)) * (1 + t % 3)
    p = table.probability(v, np.exp(-v), 10.0)
    table.add(v, 0.25 if t % 7 == 0 else 1.0)
    return p.tolist()


def _normaliser_step(norm, t):
    e, floor = _rng(t).standard_normal(2) * 3, np.full(2, 1e-3)
    z = norm.normalise(e, floor).tolist() if norm.ready else None
    norm.update(e, floor, learning=t < 30)
    return z


def _floors_step(floors, t):
    rng = _rng(t)
    floors.observe(np.array([float(rng.integers(0, 5)), rng.standard_normal()]))
    return floors.floor().tolist()


def _profile_step(profile, t):
    z, when = np.array([math.sin(t / 3)]), 3600.0 * t
    usual = profile.center(when)
    profile.update(z, when)
    return None if usual is None else usual.tolist()


def _events_step(tracker, t):
    flagged = t % 9 in (3, 4, 6)
    return tracker.update(t, flagged, float(t % 5), np.array([0.3, 0.7]), f"t{t}")


COMPONENTS = {
    "tails": (_tail_table, _tail_step),
    "normaliser": (lambda: ErrorNormaliser(2, span=50, n_init=5), _normaliser_step),
    "floors": (lambda: SampleFloors(2, 0.1, 1000), _floors_step),
    "profile": (lambda: SeasonalProfile(1, 86400.0, 3600.0, 96), _profile_step),
    "events": (lambda: EventTracker(["a", "b"], holdoff=2), _events_step),
}


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_component_state_round_trips_through_json_exactly(name):
    """A component saved mid-stream and loaded into a fresh one continues identically."""
    make, step = COMPONENTS[name]
    whole = make()
    expected = [step(whole, t) for t in range(120)]
    first = make()
    got = [step(first, t) for t in range(60)]
    resumed = make()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    got += [step(resumed, t) for t in range(60, 120)]
    assert got == expected


# Detector settings every contract below runs against (river style).
SETTINGS = {
    "default": ({}, False),
    "timestamps": ({"alarm_every": "2d"}, True),
    "frozen_scale": ({"scale_span": 0, "alarm_every": 500}, False),
    "reference": ({"reference": 10.0, "alarm_every": 500}, False),
    "strict": ({"flagged_weight": 0.0, "alarm_every": 200, "span": 5}, False),
}


def _fault_stream(n: int = 1500, seed: int = 0):
    x, f = gaussian_stream(n, seed=seed)
    x[1100, 1] += 12.0  # a spike on channel b
    f[1101, 1] += 12.0  # persistence carries it one step
    return x, f


def _scorer(settings, with_time):
    x, f = _fault_stream()
    times = stamps(len(x)) if with_time else [None] * len(x)

    def step(det, t):
        out = det.score_one(x[t], f[t], time=times[t])
        return (out.score, out.anomaly, out.onset, out.contributions.tolist(),
                out.event_opened, out.event_closed)  # fmt: skip

    return step


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_contract_state_dict_resume_is_exact(name):
    settings, with_time = SETTINGS[name]
    step = _scorer(settings, with_time)
    assert_resumes_exactly(
        lambda: Detector(channels=["a", "b"], **settings), step, 1150, cuts=(60, 1100, 1101)
    )


def test_resume_is_exact_where_tails_are_extrapolated():
    """A budget of one alarm per 20 samples puts the extrapolated tail inside the data
    (tails.py anchors it at 3x the budget's rate): that state resumes exactly too."""
    step = _scorer({}, False)
    assert_resumes_exactly(
        lambda: Detector(channels=["a", "b"], alarm_every=20, level_span=50), step, 900,
        cuts=(300, 700),
    )  # fmt: skip


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_contract_reset_and_twin_replay_identically(name):
    settings, with_time = SETTINGS[name]
    step = _scorer(settings, with_time)
    det = Detector(channels=["a", "b"], **settings)
    first = [step(det, t) for t in range(400)]
    det.reset()
    assert [step(det, t) for t in range(400)] == first
    twin = Detector(**det.get_params())
    assert [step(twin, t) for t in range(400)] == first


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_contract_spike_is_flagged_once_and_named(name):
    """A 12-sigma spike opens one alert naming its channel, and the flag does not smear
    over the following samples (no EWMA of the score)."""
    settings, with_time = SETTINGS[name]
    x, f = _fault_stream()
    times = stamps(len(x)) if with_time else [None] * len(x)
    det = Detector(channels=["a", "b"], **settings)
    outs = [det.score_one(x[t], f[t], time=times[t]) for t in range(len(x))]
    spike = outs[1100]
    assert spike.anomaly and spike.onset and spike.event_opened["top_channels"][0] == "b"
    assert sum(o.anomaly for o in outs[1100:1120]) <= 3  # the spike and its echo at most
    assert not any(o.onset for o in outs[1101:1120])


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_contract_warmup_is_neutral_and_bad_samples_raise(name):
    settings, _ = SETTINGS[name]
    det = Detector(channels=["a", "b"], **settings)
    x, f = gaussian_stream(100)
    outs = [det.score_one(x[t], f[t]) for t in range(100)]
    assert all(o.warming_up and not o.anomaly and o.threshold is None and o.score == 0.0
               for o in outs)  # fmt: skip
    for bad in ([1.0], [1.0, float("nan")], [[1.0, 2.0]], ["a", "b"]):
        with pytest.raises(InputError):
            det.score_one(bad, [0.0, 0.0])


# ------------------------------------------------------------------ the score's meaning
def test_score_is_a_calibrated_surprisal_on_gaussian_noise():
    """P(score >= s) is about 10^-s: score 2 on 1 % of normal samples, 3 on 0.1 %."""
    x, f = gaussian_stream(12_000, channels=1, seed=4)
    det = Detector(channels=["a"], alarm_every=1e9)  # flag nothing: measure the score
    scores = np.array([det.score_one(x[t], f[t]).score for t in range(len(x))])[2000:]
    for s in (1.0, 2.0, 3.0):
        rate = (scores >= s).mean()
        assert 0.5 * 10**-s <= rate <= 2.0 * 10**-s, (s, rate)


@pytest.mark.parametrize("budget", [300, 1000])
def test_false_alarms_follow_the_budget(budget):
    x, f = gaussian_stream(10_000, channels=2, seed=5)
    det = Detector(channels=["a", "b"], alarm_every=budget)
    outs = [det.score_one(x[t], f[t]) for t in range(len(x))]
    onsets = sum(o.onset for o in outs[2000:])
    expected = 8_000 / budget
    assert expected / 2.5 <= onsets <= 2.5 * expected, (onsets, expected)


def test_budget_in_days_uses_the_sampling_interval():
    x, f = gaussian_stream(400, channels=1)
    det = Detector(channels=["a"], alarm_every="1d")
    times = stamps(len(x), minutes=5)
    for t in range(len(x)):
        det.score_one(x[t], f[t], time=times[t])
    assert det.threshold == pytest.approx(math.log10(288))  # 288 five-minute samples a day
    assert Detector(channels=["a"]).threshold == pytest.approx(4.0)  # no timestamps: 10,000


def test_scale_never_collapses_on_a_flat_quantised_channel():
    """A constant integer channel that steps once by one unit: a finite, large score."""
    det = Detector(channels=["count"], alarm_every=1000)
    x = np.full(600, 7.0)
    x[500] = 8.0
    outs = [det.score_one([x[t]], [x[t - 1] if t else x[0]]) for t in range(len(x))]
    assert all(math.isfinite(o.score) for o in outs)
    assert outs[500].anomaly and outs[500].score < 50
    assert not any(o.anomaly for o in outs[100:500])


def test_events_carry_timestamps_and_onset_differs_from_alarm():
    x, f = gaussian_stream(1000, channels=1, seed=7)
    x[700:720, 0] += 30.0  # a 20-sample fault the forecasts do not follow
    times = stamps(len(x))
    det = Detector(channels=["temp"], alarm_every=1000, holdoff=5)
    outs = [det.score_one(x[t], f[t], time=times[t]) for t in range(len(x))]
    det.close_event()
    ev = next(e for e in det.events if e.start >= 690)
    assert ev.start == 700 and ev.start_time == times[700]
    assert ev.end_time == times[ev.end] and ev.peak_time == times[ev.peak_index]
    assert outs[700].onset and sum(o.onset for o in outs[700:730]) == 1
    assert all(o.anomaly for o in outs[700:720])  # in alarm throughout, one onset
    assert ev.top_channels == ["temp"]


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_score_is_news_inside_a_lasting_alert(backend):
    """Inside an open alert a row scores only where it tops the alert's peak so far
    (README, "News"): the flag says the fault goes on, `surprisal` keeps every row's
    value, and for any threshold each alert's first crossing row keeps its score."""
    if backend == "c":
        pytest.importorskip("edgernn.runtime.detector.ckernel").load_library()
    x, f = gaussian_stream(1200, channels=1, seed=3)
    x[700:760, 0] += np.concatenate([np.linspace(8, 40, 30), np.linspace(40, 8, 30)])
    det = Detector(channels=["temp"], alarm_every=1000, holdoff=5, backend=backend)
    outs = [det.score_one(x[t], f[t]) for t in range(len(x))]
    block = Detector(channels=["temp"], alarm_every=1000, holdoff=5, backend=backend)
    rows = block.score_block(x, f)
    score = np.array([o.score for o in outs])
    surprisal = np.array([o.surprisal for o in outs])
    np.testing.assert_allclose(rows.score, score, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(rows.surprisal, surprisal, rtol=1e-9, atol=1e-12)
    assert outs[700].onset and all(o.anomaly for o in outs[700:760])
    assert (score[700:760] == 0).sum() >= 25, "the fading half repeats the peak"
    assert all(o.repeat == (o.score == 0.0 and o.surprisal > 0.0) for o in outs[700:760])
    events = np.array([o.event or 0 for o in outs])
    for threshold in np.linspace(0.5, surprisal.max(), 40):
        for ev in set(events[events > 0]):
            inside = np.flatnonzero((events == ev) & (surprisal >= threshold))
            if len(inside):
                assert score[inside[0]] == surprisal[inside[0]]
    outside = np.concatenate([[0], events[:-1]]) == 0  # no alert open as the row came
    np.testing.assert_array_equal(score[outside], surprisal[outside])


def test_daily_pattern_is_learnt_from_the_time_column():
    """A sharp nightly batch job the persistence forecast cannot foresee alarms while
    it is new, and is normal once the time-of-day baseline has seen it."""
    n = 288 * 12  # twelve days of 5-minute samples
    rng = np.random.default_rng(8)
    hours = (np.arange(n) * 5 / 60) % 24
    x = 10 + 0.5 * rng.standard_normal(n) + 20.0 * ((hours >= 2) & (hours < 2.25))
    f = np.concatenate([x[:1], x[:-1]])
    times = stamps(n)
    det = Detector(channels=["load"], alarm_every=2000, warmup=50)
    onsets = np.array([det.score_one([x[t]], [f[t]], time=times[t]).onset for t in range(n)])
    last_days = onsets[288 * 6 :].sum()
    assert last_days <= 2, f"{last_days} alarms in the last six days"


@pytest.mark.parametrize("span", [None, 5.0])
@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_a_noiseless_daily_pattern_is_normal_once_seen(backend, span):
    """A daily square wave with next to no noise: persistence misses each switch by
    the same 60 units every day, over a thousand error scales. The scale moves between
    days, so a baseline kept in z left errors of hundreds of scales at every switch;
    kept in the error's units it subtracts them. After each switch the quiet stretch
    drives the stuck-value statistic up: over a window shorter than 20 it reached its
    cap before the tails learnt it, so its window does not follow `span`."""
    n = 288 * 14
    rng = np.random.default_rng(5)
    x = np.where((np.arange(n) % 288) < 144, 20.0, 80.0) + 1e-4 * rng.standard_normal(n)
    f = np.concatenate([x[:1], x[:-1]])
    if backend == "c":
        pytest.importorskip("edgernn.runtime.detector.ckernel").load_library()
    options = {} if span is None else {"span": span}
    det = Detector(channels=["v"], backend=backend, **options)
    flags = det.score_block(x[:, None], f[:, None], times=stamps(n)).anomaly
    assert flags[288 * 3 :].sum() == 0, np.flatnonzero(flags[288 * 3 :]) + 288 * 3


def test_a_profile_saved_in_z_units_resumes_in_error_units():
    """States written before the profile kept error units hold z: loading one converts it
    with the scale the stream resumes with."""
    n = 288 * 3
    rng = np.random.default_rng(3)
    x = 10 + rng.standard_normal(n) + 5.0 * ((np.arange(n) % 288) < 12)
    f = np.concatenate([x[:1], x[:-1]])
    det = Detector(channels=["v"], backend="numpy")
    det.score_block(x[:, None], f[:, None], times=stamps(n))
    state = json.loads(json.dumps(det.state_dict()))
    profile = state["parts"]["profile"]
    assert profile["units"] == "error"
    scales = [state["parts"][k]["scale"] for k in ("model", "level_norm")]
    bound = np.maximum(np.array(scales), det._floors.floor()).reshape(-1)
    del profile["units"]
    profile["mean"] = (np.array(profile["mean"]) / bound).tolist()  # as z
    old = Detector(channels=["v"], backend="numpy")
    old.load_state_dict(state)
    np.testing.assert_allclose(old._profile.mean, det._profile.mean, rtol=1e-12, atol=1e-12)
    assert old.state_dict()["parts"]["profile"]["units"] == "error"


# ----------------------------------------------------------------- settings and input
def test_budget_parsing():
    assert parse_budget(5000).samples == 5000
    assert parse_budget("5000").samples == 5000
    assert parse_budget("7d").seconds == 7 * 86400
    assert parse_budget("12h").seconds == 12 * 3600
    assert parse_budget("auto").samples is None and parse_budget("auto").seconds is None
    for bad in ("7 parsecs", "-3d", 1, True, "nan"):
        with pytest.raises(InputError):
            parse_budget(bad)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"alarm_evry": 10}, "unknown detector option"),
        ({"warmup": 1}, "warmup must be an integer >= 2"),
        ({"season": "monthly"}, "season must be one of"),
        ({"flagged_weight": 2}, "flagged_weight must be in [0, 1]"),
        ({"reference": 5, "reference_channels": ["zz"]}, "not channels"),
        ({"memory": float("inf")}, "memory must be a finite number"),
    ],
)
def test_bad_settings_are_one_line_input_errors(options, message):
    with pytest.raises(InputError, match=None) as info:
        Detector(channels=["a"], **options)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_config_files_json_and_toml(tmp_path):
    (tmp_path / "d.json").write_text('{"alarm_every": "3d", "warmup": 200}')
    assert load_config(str(tmp_path / "d.json")) == {"alarm_every": "3d", "warmup": 200}
    (tmp_path / "d.toml").write_text('[detector]\nalarm_every = 5000\nspan = 10\n')
    assert load_config(str(tmp_path / "d.toml")) == {"alarm_every": 5000, "span": 10}
    (tmp_path / "bad.json").write_text('{"holdof": 3}')
    with pytest.raises(InputError, match="unknown detector option"):
        load_config(str(tmp_path / "bad.json"))
    with pytest.raises(InputError, match="not valid JSON"):
        (tmp_path / "broken.json").write_text("{")
        load_config(str(tmp_path / "broken.json"))


def test_parse_time_forms():
    assert parse_time("1970-01-02 00:00:00") == 86400.0
    assert parse_time("1970-01-02T00:00:00Z") == 86400.0
    assert parse_time("1970-01-02T01:00:00+01:00") == 86400.0 + 3600  # wall clock as written
    assert parse_time("1700000000") == 1.7e9 and parse_time(1.7e12) == 1.7e9
    assert parse_time("12") is None and parse_time("yesterday") is None


def test_damaged_or_foreign_state_is_an_input_error():
    det = Detector(channels=["a"])
    det.score_one([1.0], [1.0])
    state = det.state_dict()
    with pytest.raises(InputError, match="other detector settings"):
        Detector(channels=["a"], alarm_every=50).load_state_dict(state)
    state["parts"] = {}
    with pytest.raises(InputError, match="damaged detector state"):
        Detector(channels=["a"]).load_state_dict(state)


# ---------------------------------------------------------- calibration and metadata
def test_calibrate_is_json_and_robust():
    rng = np.random.default_rng(0)
    errors = rng.standard_normal((500, 2)) * [0.5, 3.0]
    cal = json.loads(json.dumps(calibrate(errors)))
    assert cal["format"] == 2 and np.allclose(cal["scale"], [0.5, 3.0], rtol=0.15)
    assert cal["validation"]["rows"] == 500
    center, scale = robust_center_scale(np.array([[1.0], [1.0], [1.0], [2.0]]))
    assert center[0] == 1.0 and scale[0] > 0  # mostly identical errors: a usable scale
    for bad in (np.zeros((1, 2)), np.zeros(5), np.full((4, 1), np.nan)):
        with pytest.raises(InputError):
            calibrate(bad)


def _meta(**extra) -> ModelMeta:
    return ModelMeta(
        cell="lstm", layers=1, hidden=4, channels=["a", "b"],
        states=[StateSpec("h", "h_out", (1, None, 4))], norm_mean=[0, 0], norm_std=[1, 1],
        **extra,
    )  # fmt: skip


def test_from_meta_reads_calibrations_old_and_new():
    errors = np.random.default_rng(1).standard_normal((200, 2))
    det = Detector.from_meta(_meta(extra={"detector": calibrate(errors, alarm_every=300)}))
    assert det.error_scale is not None and det.options["alarm_every"] == 300
    assert Detector.from_meta(_meta(extra={"detector": calibrate(errors)}), alarm_every=50).options[
        "alarm_every"
    ] == 50
    old = {"format": 1, "center": [0, 0], "scale": [1, 2], "threshold": "fixed",
           "fixed_threshold": 4.0, "params": {"smoothing": 5}}  # fmt: skip
    det = Detector.from_meta(_meta(extra={"detector": old}))  # the old detector's params ignored
    assert det.error_scale == [1.0, 2.0]
    assert Detector.from_meta(_meta(error_scale=[1.0, 1.0])).error_scale == [1.0, 1.0]
    assert Detector.from_meta(_meta()).error_scale is None  # learnt from the stream


@pytest.mark.parametrize(
    "cal",
    [{"format": 9, "center": [0, 0], "scale": [1, 1]}, {"center": [0], "scale": [1]},
     {"center": [0, 0], "scale": [1, 0]}, {"center": "x"}],
)  # fmt: skip
def test_from_meta_rejects_damaged_calibration(cal):
    with pytest.raises(ModelFormatError):
        Detector.from_meta(_meta(extra={"detector": cal}))


@pytest.mark.parametrize(
    "stamp", [1733040000250, 1733040000.25, float("nan"), float("inf"), 1e30, -1e30, "garbage", 7]
)
def test_odd_timestamps_never_end_a_run(stamp):
    # A device clock in epoch milliseconds, NaN, inf or out of the calendar is no
    # clock (or a converted one), never an exception after the warm-up.
    from edgernn.runtime.detector import Detector

    det = Detector(channels=["a", "b"])
    rng = np.random.default_rng(0)
    for i in range(300):
        x = rng.standard_normal(2)
        step = 1000 * i if isinstance(stamp, int) and stamp > 1e11 else 0
        out = det.score_one(x, x + 0.1 * rng.standard_normal(2), time=stamp + step
                            if isinstance(stamp, (int, float)) and np.isfinite(stamp) else stamp)  # fmt: skip
    assert np.isfinite(out.score)
