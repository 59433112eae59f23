"""SKAB (Skoltech Anomaly Benchmark, v0.9) with edgernn's streaming detector.

    python benchmarks/skab.py ../shared/data/skab --out skab-results

Protocol (SKAB's proposed leaderboard): each of the 34 labelled files is its own
experiment; its first 400 rows fit the model, the remaining rows are the test part.
Here, per file: train a forecaster on the first 400 rows (optionally plus the
anomaly-free file), export it through the parity-gated ONNX path, then stream the
whole file through Model + Monitor + Detector one sample at a time (causal, exactly as
live); rows from 400 on are scored. Outlier detection is scored point-wise over all
test rows pooled (F1, FAR, MAR); changepoint detection with SKAB's NAB-style score,
windows of 60 samples (60 s at 1 Hz) to the right of each labelled changepoint, the
predicted changepoints being the samples where our 0/1 flag changes.

Writes OUT/<folder>_<file>.csv (one row per test row: datetime, the labels, score,
anomaly_pred) and OUT/summary.json, and prints our row beside the published ones.
Nothing here looks at test labels except to score: every setting is a default or is
given on the command line. Defaults: a residual ESN forecaster; the training part is
the detector's warm-up; the detector's options are CHOSEN below, picked on
benchmarks/skab_validation.py alone (grids "eighth" and "ninth", no SKAB test labels);
per-file results are not printed unless --per-file is given.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
import time

import numpy as np

from edgernn.runtime.csvdata import read_csv
from edgernn.runtime.detector import load_config, make_config
from edgernn.runtime.evaluate import (
    NAB_PROFILES,
    changepoint_windows,
    changepoints_from_flags,
    nab_score,
    point_metrics,
)
from edgernn.runtime.evaluate_commands import (
    FileEvaluation,
    evaluate_file,
    pooled_metrics,
)
from edgernn.train.config import TrainConfig

TRAIN_ROWS = 400
FOLDERS = ("valve1", "valve2", "other")
CHANGEPOINT_WINDOW = 60
# Outlier detection on this protocol (F1, FAR %, MAR %), from SKAB's leaderboard.
PUBLISHED = [
    ("Conv-AE", 0.78, 13.55, 28.02),
    ("MSET", 0.78, 39.73, 14.13),
    ("T-squared+Q (PCA)", 0.76, 26.62, 24.92),
    ("LSTM-AE", 0.74, 29.96, 25.92),
    ("Vanilla LSTM (forecast error)", 0.54, 12.54, 59.53),
]
BEST_PUBLISHED_CHANGEPOINT = ("MSCRED", 32.42)  # NAB standard profile
# The novelty term's channels: all but the thermocouple, which drifts in normal operation.
NO_THERMOCOUPLE = [
    "Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature", "Voltage",
    "Volume Flow RateRMS",
]  # fmt: skip
# The detector's options on SKAB, chosen on benchmarks/skab_validation.py (grids "fifth"
# to "ninth": anomaly-free data and the labelled files' training parts with injected
# faults) by its rule, fixed before the grids ran: FAR <= 10 % on each part, lowest mean
# MAR. Grid "eighth" chose this (long part FAR 6.61 % / MAR 37.30 %, short part 0.01 % /
# 25.76 %); committed before the test ran with it. Grid "ninth" (budgets 200 / 1,000 /
# 5,000 x the level-shift statistic's span 20 / 10, when the default became 10) chose it
# again, span 20 (mean MAR 32.23 % against 32.49 % at span 10), so `span` is pinned here.
# The earlier detector's blind runs (0.41, 0.74, 0.76 F1) are in the README.
CHOSEN: dict = dict(
    alarm_every=1000.0, span=20.0, scale_span=0.0, reference=10.0,
    reference_channels=NO_THERMOCOUPLE,
)


def labelled_files(data_dir: str) -> list[str]:
    files = []
    for folder in FOLDERS:
        found = glob.glob(os.path.join(data_dir, folder, "*.csv"))
        files += sorted(found, key=lambda p: int(os.path.splitext(os.path.basename(p))[0]))
    if not files:
        sys.exit(f"skab.py: no labelled CSVs under {data_dir}/{{{','.join(FOLDERS)}}}")
    return files


def output_name(path: str) -> str:
    folder = os.path.basename(os.path.dirname(path))
    return f"{folder}_{os.path.basename(path)}"


def write_predictions(path: str, result: FileEvaluation, out_path: str) -> np.ndarray:
    """One row per test row; returns the test part's changepoint labels."""
    table = read_csv(path, keep=["anomaly", "changepoint"])
    test = slice(result.train_rows, None)
    changepoints = table.extra["changepoint"][test].astype(int)
    times = table.time[test] if table.time is not None else [""] * len(result.labels)
    with open(out_path, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter=";")
        writer.writerow(["datetime", "anomaly", "changepoint", "score", "anomaly_pred"])
        for t, y, cp, s, f in zip(times, result.labels, changepoints, result.scores, result.flags):
            writer.writerow([t, int(y), int(cp), f"{s:.6g}", int(f)])
    return changepoints


def main(argv=None) -> int:
    d = TrainConfig()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", help="SKAB data folder (valve1/, valve2/, other/, anomaly-free/)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--cell", default="esn", choices=["esn", "lstm", "gru", "rnn"])
    ap.add_argument("--hidden", type=int, default=d.hidden)
    ap.add_argument("--epochs", type=int, default=d.epochs)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument(
        "--no-residual", dest="residual", action="store_false",
        help="forecast the value instead of the change from the last sample (on the "
        "validation benchmark that misreads every drift as an anomaly)",
    )  # fmt: skip
    ap.add_argument(
        "--with-anomaly-free", action="store_true",
        help="add anomaly-free/anomaly-free.csv to every file's training data",
    )  # fmt: skip
    ap.add_argument(
        "--alarm-every", type=float, default=None,
        help="the false-alarm budget in samples (default: CHOSEN's)",
    )  # fmt: skip
    ap.add_argument(
        "--detector-config", metavar="FILE",
        help="detector options (JSON/TOML) replacing CHOSEN (the warm-up stays the training part)",
    )  # fmt: skip
    ap.add_argument(
        "--per-file", action="store_true",
        help="print each file's result (off by default: tuning must not look at them)",
    )  # fmt: skip
    ap.add_argument("--limit", type=int, default=0, help="first N files only (smoke runs)")
    args = ap.parse_args(argv)

    cfg = TrainConfig(
        cell=args.cell, hidden=args.hidden, epochs=args.epochs, seed=args.seed,
        residual=args.residual, progress=False,
    )  # fmt: skip
    det_kwargs = load_config(args.detector_config) if args.detector_config else dict(CHOSEN)
    if args.alarm_every is not None:
        det_kwargs["alarm_every"] = args.alarm_every
    det_kwargs["warmup"] = TRAIN_ROWS - 1  # the training part (the first forecast is due at row 1)
    make_config(det_kwargs)
    normal = []
    if args.with_anomaly_free:
        normal = [os.path.join(args.data_dir, "anomaly-free", "anomaly-free.csv")]
    files = labelled_files(args.data_dir)
    if args.limit:
        files = files[: args.limit]
    os.makedirs(args.out, exist_ok=True)

    results, cp_scores = [], {p: None for p in NAB_PROFILES}
    started = time.perf_counter()
    for path in files:
        r = evaluate_file(
            path, TRAIN_ROWS, cfg, det_kwargs, label="anomaly", normal_files=normal,
            ignore=["changepoint"],
        )  # fmt: skip
        results.append(r)
        cps = write_predictions(path, r, os.path.join(args.out, output_name(path)))
        predicted = changepoints_from_flags(r.flags)
        windows = changepoint_windows(cps, CHANGEPOINT_WINDOW)
        for profile in NAB_PROFILES:
            s = nab_score(windows, predicted, profile)
            cp_scores[profile] = s if cp_scores[profile] is None else cp_scores[profile] + s
        if args.per_file:
            m = point_metrics(r.labels, r.flags)
            print(
                f"{output_name(path):18s} F1 {m['f1']:.3f}  FAR {100 * m['far']:6.2f}%  "
                f"MAR {100 * m['mar']:6.2f}%",
                file=sys.stderr,
            )
    seconds = time.perf_counter() - started

    pooled = pooled_metrics(results)
    everything = point_metrics(
        np.concatenate([r.labels for r in results]),
        np.ones(sum(len(r.labels) for r in results), dtype=int),
    )
    summary = {
        "files": len(results),
        "test_rows": int(sum(len(r.labels) for r in results)),
        "train": cfg.to_dict(),
        "detector": det_kwargs,
        "anomaly_free_used": bool(normal),
        "outlier": {k: pooled[k] for k in ("precision", "recall", "f1", "far", "mar")},
        "events": {k: pooled[k] for k in ("events", "detected", "median_delay")},
        "changepoint_nab": {p: s.score for p, s in cp_scores.items()},
        "flag_everything": {k: everything[k] for k in ("f1", "far", "mar")},
        "seconds": round(seconds, 1),
    }
    with open(os.path.join(args.out, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    print(format_table(summary))
    return 0


def format_table(s: dict) -> str:
    lines = [
        f"SKAB v0.9, {s['files']} files, {s['test_rows']} test rows (first {TRAIN_ROWS} rows "
        "of each file fit the model)",
        "",
        f"{'outlier detection':34s} {'F1':>5s} {'FAR %':>7s} {'MAR %':>7s}",
    ]
    for name, f1, far, mar in PUBLISHED:
        lines.append(f"{name:34s} {f1:5.2f} {far:7.2f} {mar:7.2f}")
    fe = s["flag_everything"]
    lines.append(
        f"{'flag every test row':34s} {fe['f1']:5.2f} {100 * fe['far']:7.2f} {100 * fe['mar']:7.2f}"
    )
    o = s["outlier"]
    lines.append(
        f"{'edgernn (this run)':34s} {o['f1']:5.2f} {100 * o['far']:7.2f} {100 * o['mar']:7.2f}"
    )
    cp = s["changepoint_nab"]
    best = BEST_PUBLISHED_CHANGEPOINT
    lines += [
        "",
        f"changepoint NAB (60 s right windows): standard {cp['standard']:.2f}, "
        f"low FP {cp['reward_low_fp']:.2f}, low FN {cp['reward_low_fn']:.2f} "
        f"(best published standard: {best[0]} {best[1]:.2f})",
        f"events detected {s['events']['detected']}/{s['events']['events']}, median delay "
        f"{s['events']['median_delay']} samples; {s['seconds']} s",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
