"""Synthetic streams with injected faults: spikes, level shifts, drift, stuck sensors and
frequency changes are each detected, with the calibration export stores and without
one, with a bound on false alarms on the clean part.

The forecaster is a vector autoregression x[t+1] = A x[t] + b fitted by least squares
on a clean training part: a real one-step forecaster (it captures the rotation between
the two sine channels and the mean reversion of the third) that trains in
milliseconds, so these tests exercise the detector, not a network.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgernn.runtime.detector import Detector, calibrate

N, TRAIN, ONSET, LENGTH = 2200, 1000, 1600, 200
OMEGA = 2 * np.pi / 50


def clean_signal(seed: int = 0) -> np.ndarray:
    """(N, 3): a sine/cosine pair (amplitude 2, noise 0.02) and an AR(1) level at 5.0."""
    rng = np.random.default_rng(seed)
    t = np.arange(N)
    x = np.empty((N, 3))
    x[:, 0] = 2 * np.sin(OMEGA * t) + 0.02 * rng.standard_normal(N)
    x[:, 1] = 2 * np.cos(OMEGA * t) + 0.02 * rng.standard_normal(N)
    level = np.empty(N)
    level[0] = 0.0
    for i in range(1, N):
        level[i] = 0.8 * level[i - 1] + 0.1 * rng.standard_normal()
    x[:, 2] = 5.0 + level
    return x


def inject(x: np.ndarray, kind: str) -> tuple[np.ndarray, int]:
    """The signal with one fault starting at ONSET; returns (signal, last faulty index)."""
    x = x.copy()
    end = ONSET + LENGTH
    t = np.arange(ONSET, end)
    if kind == "spike":
        x[ONSET, 1] += 1.0
        return x, ONSET
    if kind == "level_shift":
        x[ONSET:end, 2] += 1.0
    elif kind == "drift":
        x[ONSET:end, 2] += 0.02 * (t - ONSET)
    elif kind == "stuck":
        x[ONSET:end, 0] = x[ONSET, 0]
    elif kind == "frequency":
        x[ONSET:end, 0] = 2 * np.sin(OMEGA * ONSET + 2 * OMEGA * (t - ONSET))
        x[ONSET:end, 1] = 2 * np.cos(OMEGA * ONSET + 2 * OMEGA * (t - ONSET))
    else:
        raise ValueError(kind)
    return x, end - 1


def fit_var(x: np.ndarray) -> np.ndarray:
    """Least-squares [A | b] for x[t+1] = A x[t] + b: (C + 1, C)."""
    inputs = np.hstack([x[:-1], np.ones((len(x) - 1, 1))])
    coef, *_ = np.linalg.lstsq(inputs, x[1:], rcond=None)
    return coef


def forecasts(coef: np.ndarray, x: np.ndarray) -> np.ndarray:
    """forecast[t] = the forecast made at t - 1 for sample t (row 0: the sample itself)."""
    f = np.hstack([x, np.ones((len(x), 1))]) @ coef
    return np.vstack([x[:1], f[:-1]])


@pytest.fixture(scope="module")
def model_and_calibration():
    clean = clean_signal()
    coef = fit_var(clean[: TRAIN - 300])
    val_errors = forecasts(coef, clean)[TRAIN - 300 : TRAIN] - clean[TRAIN - 300 : TRAIN]
    return coef, calibrate(val_errors)


MODES = ("calibrated", "learnt")  # center/scale from calibrate(), or from the stream


def run_detector(mode: str, x: np.ndarray, coef, cal) -> tuple[np.ndarray, Detector]:
    scale = {"error_scale": cal["scale"], "error_center": cal["center"]} if mode == "calibrated" else {}
    det = Detector(channels=["sin", "cos", "level"], alarm_every=2000, **scale)
    f = forecasts(coef, x)
    flags = np.array([det.score_one(x[t], f[t]).anomaly for t in range(len(x))])
    return flags, det


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["spike", "level_shift", "drift", "stuck", "frequency"])
def test_each_fault_is_detected_with_few_false_alarms(kind, mode, model_and_calibration):
    coef, cal = model_and_calibration
    x, last = inject(clean_signal(), kind)
    flags, det = run_detector(mode, x, coef, cal)
    clean_part = flags[det.config.warmup : ONSET]
    assert clean_part.mean() <= 0.005, f"{clean_part.sum()} false alarms on the clean part"
    # Onset faults must be caught within 20 samples; a drift only grows, so anywhere in it.
    deadline = last if kind == "drift" else ONSET + 20
    assert flags[ONSET : deadline + 1].any(), f"{kind} not detected ({mode})"


@pytest.mark.parametrize("mode", MODES)
def test_clean_stream_raises_at_most_one_alert(mode, model_and_calibration):
    coef, cal = model_and_calibration
    flags, det = run_detector(mode, clean_signal(seed=11), coef, cal)
    det.close_event()
    assert len(det.events) <= 1
    assert flags.mean() <= 0.005


@pytest.mark.parametrize("kind", ["level_shift", "stuck", "frequency"])
def test_alert_names_the_faulty_channels(kind, model_and_calibration):
    coef, cal = model_and_calibration
    x, _ = inject(clean_signal(), kind)
    _, det = run_detector("calibrated", x, coef, cal)
    det.close_event()
    first = next(ev for ev in det.events if ev.end >= ONSET)
    expected = {"level_shift": {"level"}, "stuck": {"sin", "cos"}, "frequency": {"sin", "cos"}}
    assert first.top_channels[0] in expected[kind]
