"""Calibration suite for the detector: does one budget mean the same on every stream?

    python benchmarks/calibration.py                      # the README table
    python benchmarks/calibration.py --alarm-every 10000 --seeds 4 --json out.json

Six kinds of normal stream (all seeded):

    smooth          a sine (period 200) plus AR(1) noise
    flat_steps      a constant that steps to a new level about every 1,500 samples,
                    logged with one decimal (long runs of identical values)
    counts          Poisson counts whose rate wanders between about 2 and 12
    spiky           Gaussian noise with normal spikes (1 in 150 samples, 4-12 sigma, either sign)
    heteroscedastic a slow random-walk level (10..200) with noise proportional to it
    seasonal        5-minute samples with timestamps: a daily business-hours cycle, a
                    sharp 15-minute batch job every night at 02:00, noise; weekends quieter

The forecaster is persistence (forecast = the previous sample): the detector's
calibration must not depend on a good model. False alarms are measured on clean
streams (no injected anomaly) after a burn-in of BURN_IN samples: alarm onsets (events)
per sample against the budget (one per N samples), and the flagged-sample rate.
Detection: one anomaly injected per stream into a fresh copy, at a random point after
the burn-in; detected if an alert opens between its start and END_SLACK samples after
its end. Anomalies (magnitudes in units of the stream's own noise, sigma = robust std of
its first differences / sqrt 2; for flat_steps the normal steps' std, for spiky 3x the
noise, so an anomaly stands out of the normal spikes): spike (one sample, 8 sigma), level_shift (8 sigma, held),
drift (a ramp reaching 12 sigma over 300 samples, held), stuck (the value frozen for 300
samples), variance (noise x5 for 300 samples), frequency (the periodic part at 3x its
frequency for 300 samples; smooth and seasonal kinds only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta

import numpy as np

from edgernn.runtime.detector import Detector

KINDS = ("smooth", "flat_steps", "counts", "spiky", "heteroscedastic", "seasonal")
ANOMALIES = ("spike", "level_shift", "drift", "stuck", "variance", "frequency")
PERIODIC = ("smooth", "seasonal")
N_CLEAN, N_ANOMALY = 12_000, 6_000
BURN_IN = 1_000
DURATION = 300
END_SLACK = 30
FIVE_MIN = timedelta(minutes=5)
START = datetime(2024, 1, 1)


# ------------------------------------------------------------------------- the streams
def make_stream(kind: str, n: int, rng: np.random.Generator, anomaly=None):
    """(values (n,), timestamps or None, (start, end) of the anomaly or None)."""
    t = np.arange(n)
    window = None
    if anomaly is not None:
        start = int(rng.integers(BURN_IN + 500, n - DURATION - 200))
        length = 1 if anomaly == "spike" else DURATION
        window = (start, start + length - 1)
    fast = np.ones(n)  # time-warp factor of the periodic part (frequency anomaly)
    if anomaly == "frequency":
        fast[window[0] : window[1] + 1] = 3.0
    phase = np.cumsum(fast)
    times = None
    if kind == "smooth":
        periodic = np.sin(2 * np.pi * phase / 200)
        noise = _ar1(n, 0.5, 0.1, rng)
        values = periodic, noise
    elif kind == "flat_steps":
        jumps = rng.random(n) < 1 / 1500
        levels = 20.0 + np.cumsum(np.where(jumps, rng.normal(0, 3, n), 0.0))
        values = levels, np.zeros(n)
    elif kind == "counts":
        rate = 7 + 5 * np.sin(2 * np.pi * t / 3000 + rng.uniform(0, 6))
        values = np.zeros(n), rng.poisson(rate).astype(float)
    elif kind == "spiky":
        noise = rng.normal(0, 1, n)
        spikes = rng.random(n) < 1 / 150
        noise += np.where(spikes, rng.uniform(4, 12, n) * rng.choice([-1, 1], n), 0.0)
        values = 50.0 + np.zeros(n), noise
    elif kind == "heteroscedastic":
        level = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
        level = np.clip(level, 10, 200)
        values = level, level * 0.03 * rng.normal(0, 1, n)
    elif kind == "seasonal":
        times = [START + i * FIVE_MIN for i in range(n)]
        hours = (phase * 5 / 60) % 24
        weekday = np.array([d.weekday() < 5 for d in times])
        busy = np.exp(-((hours - 13) ** 2) / 8) * np.where(weekday, 1.0, 0.4)
        batch = ((hours >= 2) & (hours < 2.25)) * 30.0
        periodic = 20 + 60 * busy + batch
        values = periodic, _ar1(n, 0.3, 2.0, rng) * (1 + busy)
    else:
        raise ValueError(kind)
    base, noise = values
    x = base + noise
    sigma = float(np.median(np.abs(np.diff(x))) * 1.4826 / np.sqrt(2)) or 1.0
    if kind == "spiky":
        sigma *= 3.0  # normal spikes reach 12 sigma: an anomaly must stand out of them
    if kind == "flat_steps":
        sigma = 3.0  # no noise at all: sigma is the normal steps' size
    if anomaly is not None:
        x = _inject(x, base, noise, anomaly, window, sigma)
    if kind == "flat_steps":
        x = np.round(x, 1)
    if kind == "counts":
        x = np.maximum(np.round(x), 0)
    stamps = None if times is None else [d.isoformat(sep=" ") for d in times]
    return x, stamps, window


def _ar1(n: int, phi: float, sd: float, rng) -> np.ndarray:
    e = rng.normal(0, sd, n)
    out = np.empty(n)
    acc = 0.0
    for i in range(n):
        acc = phi * acc + e[i]
        out[i] = acc
    return out


def _inject(x, base, noise, anomaly: str, window, sigma: float) -> np.ndarray:
    x = x.copy()
    s, e = window
    span = slice(s, e + 1)
    if anomaly == "spike":
        x[s] += 8 * sigma
    elif anomaly == "level_shift":
        x[s:] += 8 * sigma
    elif anomaly == "drift":
        ramp = np.minimum(np.arange(len(x) - s) / DURATION, 1.0)
        x[s:] += 12 * sigma * ramp
    elif anomaly == "stuck":
        x[span] = x[s]
    elif anomaly == "variance":
        extra = np.random.default_rng(s).normal(0, 5 * sigma, e - s + 1)
        x[span] += extra
    # "frequency" is built into the stream (its periodic part runs faster)
    return x


# ------------------------------------------------------------------------- the runs
def run_detector(x: np.ndarray, stamps, options: dict) -> tuple[np.ndarray, np.ndarray]:
    """(flags, onsets) over the stream, persistence forecasts."""
    det = Detector(channels=["value"], **options)
    flags = np.zeros(len(x), dtype=bool)
    onsets = np.zeros(len(x), dtype=bool)
    prev = x[0]
    for i in range(len(x)):
        out = det.score_one([x[i]], [prev], None if stamps is None else stamps[i])
        flags[i], onsets[i] = out.anomaly, out.onset
        prev = x[i]
    return flags, onsets


def clean_run(job):
    kind, seed, options = job
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    x, stamps, _ = make_stream(kind, N_CLEAN, rng)
    flags, onsets = run_detector(x, stamps, options)
    part = slice(BURN_IN, None)
    return kind, int(onsets[part].sum()), int(flags[part].sum()), N_CLEAN - BURN_IN


def anomaly_run(job):
    kind, anomaly, seed, options = job
    rng = np.random.default_rng([seed, KINDS.index(kind), 100 + ANOMALIES.index(anomaly)])
    x, stamps, (s, e) = make_stream(kind, N_ANOMALY, rng, anomaly)
    _, onsets = run_detector(x, stamps, options)
    hits = np.flatnonzero(onsets[s : e + END_SLACK + 1])
    return kind, anomaly, bool(len(hits)), int(hits[0]) if len(hits) else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alarm-every", default="1000", help="the budget (samples; default 1000)")
    ap.add_argument("--seeds", type=int, default=6, help="streams per kind (and per anomaly)")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--options", default="{}", help="other detector options, JSON")
    ap.add_argument("--json", metavar="FILE", help="write the results here")
    args = ap.parse_args(argv)
    budget = float(args.alarm_every)
    options = {"alarm_every": budget, **json.loads(args.options)}
    kinds = [k for k in args.kinds.split(",") if k]
    started = time.perf_counter()
    clean_jobs = [(k, s, options) for k in kinds for s in range(args.seeds)]
    anomaly_jobs = [
        (k, a, s, options)
        for k in kinds
        for a in ANOMALIES
        if a != "frequency" or k in PERIODIC
        for s in range(args.seeds)
    ]
    with ProcessPoolExecutor(args.workers) as pool:
        clean = list(pool.map(clean_run, clean_jobs))
        detected = list(pool.map(anomaly_run, anomaly_jobs))
    result = summarise(kinds, clean, detected, budget)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["options"] = options
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


def summarise(kinds, clean, detected, budget: float) -> dict:
    rows = {}
    for kind in kinds:
        alarms = sum(c[1] for c in clean if c[0] == kind)
        flagged = sum(c[2] for c in clean if c[0] == kind)
        samples = sum(c[3] for c in clean if c[0] == kind)
        row = {
            "alarms": alarms,
            "samples": samples,
            "alarm_ratio": alarms / samples * budget,  # 1.0 = exactly the budget
            "flagged_ratio": flagged / samples * budget,
            "detection": {},
        }
        for anomaly in ANOMALIES:
            hits = [d for d in detected if d[0] == kind and d[1] == anomaly]
            if hits:
                delays = [d[3] for d in hits if d[2]]
                row["detection"][anomaly] = {
                    "detected": sum(d[2] for d in hits),
                    "runs": len(hits),
                    "median_delay": float(np.median(delays)) if delays else None,
                }
        rows[kind] = row
    return {"budget_samples": budget, "kinds": rows}


def format_table(result: dict) -> str:
    budget = result["budget_samples"]
    head = f"{'stream kind':16s} {'alarms/budget':>13s} {'flags/budget':>12s}  " + "  ".join(
        f"{a:>11s}" for a in ANOMALIES
    )
    lines = [f"budget: one false alarm per {budget:g} samples", head]
    for kind, row in result["kinds"].items():
        cells = []
        for a in ANOMALIES:
            d = row["detection"].get(a)
            if d is None:
                cells.append(f"{'-':>11s}")
            else:
                delay = "" if d["median_delay"] is None else f" ({d['median_delay']:.0f})"
                cells.append(f"{str(d['detected']) + '/' + str(d['runs']) + delay:>11s}")
        lines.append(
            f"{kind:16s} {row['alarm_ratio']:13.2f} {row['flagged_ratio']:12.2f}  " + "  ".join(cells)
        )
    lines.append(
        "alarms/budget: alert onsets per sample on clean streams x the budget (1 = on budget); "
        "flags/budget: the same for flagged samples; detection: detected/runs (median delay)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
