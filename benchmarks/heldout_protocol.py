"""The held-out benchmark's protocol, on synthetic streams we make ourselves.

    python benchmarks/heldout_protocol.py --out /tmp/heldout --workers 2

The project is judged on a public benchmark of real single-value streams we do not
have (server metrics, traffic, ad exchange, social-media volume, machine and ambient
temperature): each stream's first 15 % trains a model with `edgernn train` defaults,
`edgernn run` defaults score the whole file, and the benchmark's own scorer sweeps ONE
threshold over the `score` column of every file (NAB scoring, standard profile: every
row at or above the threshold is a detection; inside a labelled window only the
earliest counts, early is worth more; each one outside costs 0.11). This script runs
that protocol end to end, through the command line as a user would, on streams made
from first principles to have the same kinds of normal behaviour:

    cpu          daily cycle + noise, a slow upward trend of the level (normal)
    spiky        a flat baseline with frequent normal one-sample spikes
    counts       integer event counts (Poisson) following a daily cycle
    temperature  a smooth AR(2) process with a slow drift (machine temperature)
    ambient      daily and weekly cycles, noise that grows with the level
    traffic      values quantised to 1 unit, occasional normal level regimes

Each stream (5-minute samples, 14-28 days) gets 1-3 anomalies of a kind its normal
behaviour does not have (spikes, level shifts, a changed cycle, a stuck value, a noise
burst, a drift), placed after the first 15 %, labelled with NAB's windows (10 % of the
file in all, centred on each anomaly's start). Everything is seeded.

Compared with, in the same run on the same files: persistence forecast + rolling
z-score of its error (window 288), the baseline the issue names; and "flag nothing".
Reports the NAB score (0 = flag nothing, 100 = every window detected at its start, no
false positive) at the best global threshold of each method, and the score at edgernn's
own default flags (score >= its threshold, no sweep), and at its alerts' onsets only (the
`onset` column: the first row of each alert, what an operator is paged for). Results:
OUT/heldout.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from edgernn.runtime.evaluate import nab_score, nab_windows

STEP_S = 300  # 5-minute samples
DAY = 86400 // STEP_S  # samples per day
START = 1_700_000_000  # the first timestamp (epoch seconds)
KINDS = ("cpu", "spiky", "counts", "temperature", "ambient", "traffic")
TRAIN_FRAC = 0.15
Z_WINDOW = 288


# ------------------------------------------------------------------------------ streams
def normal_stream(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n)
    day = np.sin(2 * np.pi * t / DAY)
    if kind == "cpu":
        return 40 + 15 * day + 4 * rng.standard_normal(n) + 10 * t / n
    if kind == "spiky":
        x = 5 + 0.3 * rng.standard_normal(n)
        spikes = rng.random(n) < 0.01
        x[spikes] += rng.uniform(3, 8, spikes.sum())
        return x
    if kind == "counts":
        return rng.poisson(np.maximum(0.5, 6 + 5 * day)).astype(float)
    if kind == "temperature":
        x = np.zeros(n)
        e = rng.standard_normal(n) * 0.3
        for i in range(2, n):
            x[i] = 1.6 * x[i - 1] - 0.65 * x[i - 2] + e[i]
        return 80 + x + 3 * np.sin(2 * np.pi * t / (n / 1.5))
    if kind == "ambient":
        week = np.sin(2 * np.pi * t / (7 * DAY))
        level = 20 + 4 * day + 2 * week
        return level + 0.05 * level * rng.standard_normal(n)
    if kind == "traffic":
        regime = np.repeat(rng.choice([60.0, 55.0, 65.0], n // 500 + 1), 500)[:n]
        return np.round(regime + 5 * day + 2 * rng.standard_normal(n))
    raise ValueError(kind)


# How long each anomaly lasts, in samples. Most outlast their NAB window (10 % of the
# stream over the anomalies' count, centred on the start), and a shift or a drift ends
# with a step back as large as itself: rows flagged there are false positives to NAB.
DURATION = {"spike": 1, "shift": 3 * DAY, "cycle": DAY, "stuck": DAY // 2, "noise": DAY // 2,
            "drift": 2 * DAY}  # fmt: skip
END_ROWS = 50  # rows after an anomaly's end counted as its own (the step back, the echo)


def inject(x: np.ndarray, kind: str, where: int, rng: np.random.Generator) -> None:
    """One anomaly starting at `where`, in place; sized by the stream's own spread."""
    if kind not in DURATION:
        raise ValueError(kind)
    sd = float(np.std(np.diff(x[:where]))) or 1.0
    spread = float(np.std(x[:where])) or 1.0
    end = min(len(x), where + DURATION[kind])
    if kind == "spike":
        x[where] += rng.choice([-1, 1]) * max(8 * sd, 3 * spread)
    elif kind == "shift":
        x[where:end] += rng.choice([-1, 1]) * 1.5 * spread
    elif kind == "cycle":  # the daily pattern stops for a day: the value holds its mean
        x[where:end] = np.mean(x[where - DAY : where]) + 0.3 * sd * rng.standard_normal(end - where)
    elif kind == "stuck":
        x[where:end] = x[where - 1]
    elif kind == "noise":
        x[where:end] += 3 * sd * rng.standard_normal(end - where)
    else:  # drift
        x[where:end] += np.linspace(0, 2.5 * spread, end - where)


def anomaly_rows(s: dict) -> np.ndarray:
    """(rows,) bool: the rows each injected anomaly of stream `s` lasts, plus END_ROWS."""
    rows = np.zeros(s["rows"], dtype=bool)
    for anomaly, start in s["anomalies"]:
        rows[start : start + DURATION[anomaly] + END_ROWS] = True
    return rows


ANOMALIES = {  # the anomaly kinds each stream kind may get (what its normal lacks)
    "cpu": ("spike", "shift", "stuck", "noise"),
    "spiky": ("shift", "noise", "drift"),
    "counts": ("spike", "shift", "cycle"),
    "temperature": ("spike", "shift", "drift", "stuck"),
    "ambient": ("spike", "cycle", "shift"),
    "traffic": ("spike", "stuck", "noise"),
}


def make_stream(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray, list]:
    """(values (n,), labels (n,) 0/1 at each anomaly's start, [(anomaly kind, start)])."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(14, 29)) * DAY
    x = normal_stream(kind, n, rng)
    labels = np.zeros(n, dtype=np.int8)
    count = int(rng.integers(1, 4))
    first = int(TRAIN_FRAC * n) + DAY
    slots = np.linspace(first, n - 3 * DAY, count + 1).astype(int)
    anomalies = []
    for i in range(count):
        where = int(rng.integers(slots[i], slots[i + 1]))
        anomalies.append((str(rng.choice(ANOMALIES[kind])), where))
        inject(x, anomalies[-1][0], where, rng)
        labels[where] = 1
    if kind in ("counts", "traffic"):
        x = np.round(x)
    return x, labels, anomalies


def write_csv(path: str, x: np.ndarray) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "value"])
        for i, v in enumerate(x):
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(START + STEP_S * i))
            w.writerow([stamp, f"{v:.4f}".rstrip("0").rstrip(".") or "0"])


# ------------------------------------------------------------------------------ methods
RUN_ARGS: list = []  # extra `edgernn run` arguments (--run-args), e.g. a detector config
TRAIN_ARGS: list = []  # extra `edgernn train` arguments (--train-args), e.g. another cell
REUSE = [False]  # --reuse: keep a model trained by an earlier run of this script


def edgernn_scores(path: str, work: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`edgernn train` on the first 15 % then `edgernn run` on all, both defaults:
    (score column, anomaly column, onset column)."""
    edgernn = [sys.executable, "-m", "edgernn"]
    with open(path) as fh:
        rows = fh.read().splitlines()
    head = os.path.join(work, "train.csv")
    with open(head, "w") as fh:
        fh.write("\n".join(rows[: 1 + int(TRAIN_FRAC * (len(rows) - 1))]) + "\n")
    run_dir, model, out = (os.path.join(work, p) for p in ("run", "model.onnx", "out.csv"))
    steps = [
        [*edgernn, "train", head, "--out", run_dir, "--no-progress", *TRAIN_ARGS],
        [*edgernn, "export", run_dir, "-o", model],
    ]
    if REUSE[0] and os.path.exists(model):
        steps = []
    for cmd in (*steps, [*edgernn, "run", model, "--csv", path, "-o", out, *RUN_ARGS]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[2:4])}: {proc.stderr.strip()[-400:]}")
    with open(out) as fh:
        table = list(csv.DictReader(fh))
    score = np.array([float(r["score"]) if r["score"] else 0.0 for r in table])
    flag = np.array([int(r["anomaly"] or 0) for r in table])
    onset = np.array([int(r["onset"] or 0) for r in table])
    return score, flag, onset


def zscore_scores(x: np.ndarray) -> np.ndarray:
    """|persistence error - its rolling mean| / its rolling std over the previous
    Z_WINDOW errors (causal)."""
    err = np.concatenate([[0.0], np.diff(x)])
    out = np.zeros(len(x))
    c1 = np.concatenate([[0.0], np.cumsum(err)])
    c2 = np.concatenate([[0.0], np.cumsum(err**2)])
    for i in range(2, len(x)):
        lo = max(0, i - Z_WINDOW)
        k = i - lo
        mean = (c1[i] - c1[lo]) / k
        var = max((c2[i] - c2[lo]) / k - mean**2, 1e-12)
        out[i] = abs(err[i] - mean) / np.sqrt(var)
    return out


def one_stream(job) -> dict:
    kind, seed, out_dir = job
    x, labels, anomalies = make_stream(kind, seed)
    work = os.path.join(out_dir, f"{kind}-{seed}")
    os.makedirs(work, exist_ok=True)
    path = os.path.join(work, "data.csv")
    write_csv(path, x)
    began = time.time()
    score, flag, onset = edgernn_scores(path, work)
    return {
        "kind": kind, "seed": seed, "rows": len(x), "labels": labels.tolist(), "anomalies": anomalies,
        "edgernn": score.tolist(), "edgernn_flags": flag.tolist(), "edgernn_onsets": onset.tolist(),
        "zscore": zscore_scores(x).tolist(), "seconds": round(time.time() - began, 1),
    }  # fmt: skip


# ------------------------------------------------------------------------------ scoring
def nab_total(streams: list[dict], flags_of) -> float:
    """NAB's normalised score over all streams: 100 (perfect) .. 0 (flag nothing)."""
    raw = null = perfect = 0.0
    for s in streams:
        labels = np.asarray(s["labels"])
        windows = nab_windows(labels, centred_points=True)
        scored = slice(int(TRAIN_FRAC * len(labels)), None)  # the probationary 15 % unscored
        flags = np.asarray(flags_of(s), dtype=np.int8).copy()
        flags[: scored.start] = 0
        r = nab_score(windows, flags)
        raw, null, perfect = raw + r.raw, null + r.null, perfect + r.perfect
    return 100.0 * (raw - null) / (perfect - null)


def windows_and_mask(labels: np.ndarray) -> tuple[list, np.ndarray]:
    """NAB's windows of a stream's labels, and the (rows,) bool mask of their rows."""
    windows = nab_windows(labels, centred_points=True)
    inside = np.zeros(len(labels), dtype=bool)
    for a, b in windows:
        inside[a : b + 1] = True
    return windows, inside


def unflag_past_windows(s: dict, threshold: float) -> np.ndarray:
    """Flags at `threshold`, less those an anomaly itself draws after its window (what
    NAB counts as false positives in a fault that outlasts its window): how much of
    the score is lost to flagging a fault for as long as it lasts."""
    flags = np.asarray(s["edgernn"]) >= threshold
    _, inside = windows_and_mask(np.asarray(s["labels"]))
    return flags & ~(anomaly_rows(s) & ~inside)


def best_threshold(streams: list[dict], key: str) -> tuple[float, float]:
    """(best NAB total, its threshold) over one global threshold. Candidates: 201
    quantiles of all scores (50 % .. 100 %), a fixed grid 0 .. 10 in steps of 0.05, then
    steps of 0.005 around the best. The quantiles alone leave wide gaps in the top
    0.25 % (from about 3 to 50), where the best threshold lies: a change that moved which
    quantiles fell near it moved the figure by up to 5 points with the same flags."""
    every = np.concatenate([np.asarray(s[key]) for s in streams])
    grid = np.quantile(every, np.linspace(0.5, 1.0, 201))
    best = _best_of(streams, key, np.unique(np.concatenate([grid, np.arange(0.0, 10.0, 0.05)])))
    if not np.isfinite(best[1]):
        return best
    fine = best[1] + np.arange(-0.05, 0.05, 0.005)
    return max(best, _best_of(streams, key, fine[fine > 0]), key=lambda b: b[0])


def _best_of(streams: list[dict], key: str, candidates) -> tuple[float, float]:
    best = (0.0, float("inf"))  # flag nothing
    for th in candidates:
        total = nab_total(streams, lambda s: np.asarray(s[key]) >= th)  # noqa: B023
        if total > best[0]:
            best = (total, float(th))
    return best


def window_report(streams: list[dict], key: str, threshold: float) -> dict:
    """Window by window at one threshold: per anomaly kind, windows caught / all and the
    median delay of the first detection (samples from the anomaly's start; negative: a
    flag inside the window before it began); false-positive rows per stream kind, and
    how many of them lie within an anomaly (anomaly_rows: the fault still going on past
    its window, or its end); and each missed window with its best score in the 20
    samples from its start."""
    caught: dict = {}
    delays: dict = {}
    false_rows: dict = {}
    in_anomalies: dict = {}
    missed = []
    for s in streams:
        labels = np.asarray(s["labels"])
        flags = np.asarray(s[key]) >= threshold
        flags[: int(TRAIN_FRAC * len(labels))] = False
        windows, inside = windows_and_mask(labels)
        false_rows[s["kind"]] = false_rows.get(s["kind"], 0) + int((flags & ~inside).sum())
        ongoing = int((flags & ~inside & anomaly_rows(s)).sum())
        in_anomalies[s["kind"]] = in_anomalies.get(s["kind"], 0) + ongoing
        for anomaly, start in s["anomalies"]:
            a, b = next((a, b) for a, b in windows if a <= start <= b)
            hits = np.flatnonzero(flags[a : b + 1])
            total = caught.setdefault(anomaly, [0, 0])
            total[1] += 1
            if len(hits):
                total[0] += 1
                delays.setdefault(anomaly, []).append(int(a + hits[0] - start))
            else:
                onset = float(np.max(np.asarray(s[key])[start : start + 20]))
                missed.append({"stream": f"{s['kind']}-{s['seed']}", "anomaly": anomaly,
                               "start": start, "onset_score": round(onset, 2)})  # fmt: skip
    return {
        "caught": {k: f"{v[0]}/{v[1]}" for k, v in sorted(caught.items())},
        "median_delay": {k: float(np.median(v)) for k, v in sorted(delays.items())},
        "false_positive_rows": false_rows,
        "false_positive_rows_within_anomalies": in_anomalies,
        "missed": missed,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, default=8,
                    help="streams per kind (8: 95 windows; fewer move by a lucky window)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reuse", action="store_true", help="reuse models OUT holds already")
    ap.add_argument("--run-args", default="", help="extra `edgernn run` arguments")
    ap.add_argument("--train-args", default="", help="extra `edgernn train` arguments")
    args = ap.parse_args(argv)
    RUN_ARGS.extend(args.run_args.split())
    TRAIN_ARGS.extend(args.train_args.split())
    REUSE[0] = args.reuse
    os.makedirs(args.out, exist_ok=True)
    began = time.time()
    jobs = [(k, s, args.out) for s in range(args.seeds) for k in KINDS]
    with ProcessPoolExecutor(args.workers) as pool:
        streams = list(pool.map(one_stream, jobs))
    result = {"streams": len(streams), "windows": int(sum(sum(s["labels"]) for s in streams))}
    for key in ("edgernn", "zscore"):
        score, th = best_threshold(streams, key)
        result[key] = {"nab_best": round(score, 1), "threshold": th}
    result["edgernn"]["nab_default_flags"] = round(
        nab_total(streams, lambda s: s["edgernn_flags"]), 1
    )
    result["edgernn"]["nab_alert_onsets"] = round(
        nab_total(streams, lambda s: s["edgernn_onsets"]), 1
    )
    result["edgernn"]["nab_best_if_faults_past_windows_went_unflagged"] = round(
        nab_total(streams, lambda s: unflag_past_windows(s, result["edgernn"]["threshold"])), 1
    )
    per_kind = {}
    for kind in KINDS:
        mine = [s for s in streams if s["kind"] == kind]
        per_kind[kind] = {
            key: round(nab_total(mine, lambda s: np.asarray(s[key]) >= result[key]["threshold"]), 1)  # noqa: B023
            for key in ("edgernn", "zscore")
        }  # fmt: skip
    result["per_kind_at_global_threshold"] = per_kind
    result["edgernn_windows_at_global_threshold"] = window_report(
        streams, "edgernn", result["edgernn"]["threshold"]
    )
    result["seconds"] = round(time.time() - began, 1)
    print(json.dumps(result, indent=1))
    with open(os.path.join(args.out, "heldout.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
