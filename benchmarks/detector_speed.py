"""The anomaly detector's cost per sample: numpy (the reference) against the compiled
kernel, side by side in one run.

    .venv/bin/python benchmarks/detector_speed.py [--rows 20000] [--repeats 5]

Per channel count (1 and 8): score_one on the numpy backend, score_one on the c backend
(the live serial path: one call per sample), score_block over the whole stream, and
score_block in chunks of 4096 rows with the records run --csv writes (the CSV path).
A sine per channel with noise, persistence forecasts, default options; each variant
starts from a fresh detector and is timed past its first 1,000 samples (the warm-up is
numpy on every backend). Medians of the repeats, in microseconds per sample. Writes
benchmarks/results/detector_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

from edgernn.runtime.detector import Detector

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "detector_speed.json")
SKIP = 1000  # samples scored before the clock starts
CHUNK = 4096  # run --csv's chunk


def stream(rows: int, channels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(rows)[:, None]
    x = np.sin(2 * np.pi * t / (20 + 7 * np.arange(channels))) + 0.05 * rng.standard_normal(
        (rows, channels)
    )
    return x, np.vstack([x[:1], x[:-1]])


def per_sample(variant: str, x: np.ndarray, f: np.ndarray) -> float:
    backend = "numpy" if variant == "numpy score_one" else "c"
    det = Detector(backend=backend)
    for i in range(SKIP):
        det.score_one(x[i], f[i])
    rest_x, rest_f = x[SKIP:], f[SKIP:]
    start = time.perf_counter()
    if variant.endswith("score_one"):
        for i in range(len(rest_x)):
            det.score_one(rest_x[i], rest_f[i])
    elif variant == "c score_block":
        det.score_block(rest_x, rest_f)
    else:  # chunks and records, as run --csv
        for at in range(0, len(rest_x), CHUNK):
            det.score_block(rest_x[at : at + CHUNK], rest_f[at : at + CHUNK]).records()
    return 1e6 * (time.perf_counter() - start) / len(rest_x)


VARIANTS = ("numpy score_one", "c score_one", "c score_block", "c score_block + records")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--numpy-rows", type=int, default=4_000, help="rows of the numpy variant")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("-o", "--out", default=RESULTS)
    args = p.parse_args(argv)
    assert Detector().backend == "c", Detector().fallback_reason
    results: dict = {}
    for channels in (1, 8):
        x, f = stream(args.rows, channels)
        runs: dict = {v: [] for v in VARIANTS}
        for _ in range(args.repeats):  # interleaved: drifts in machine load hit all alike
            for v in VARIANTS:
                n = args.numpy_rows if v.startswith("numpy") else args.rows
                runs[v].append(per_sample(v, x[:n], f[:n]))
        median = {v: round(statistics.median(r), 3) for v, r in runs.items()}
        results[str(channels)] = {
            "us_per_sample": median,
            "runs_us": {v: [round(u, 3) for u in r] for v, r in runs.items()},
            "speedup_score_one": round(median["numpy score_one"] / median["c score_one"], 1),
            "speedup_block": round(median["numpy score_one"] / median["c score_block"], 1),
        }
    out = {
        "what": "detector cost per sample (us), medians of interleaved repeats; one process",
        "rows": args.rows,
        "numpy_rows": args.numpy_rows,
        "repeats": args.repeats,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}, numpy {np.__version__}",
        "channels": results,
        "live_1khz_8ch_core_percent": round(
            results["8"]["us_per_sample"]["c score_one"] * 1000 / 1e6 * 100, 2
        ),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=2)
        fh.write("\n")
    for channels, r in results.items():
        cells = ", ".join(f"{v} {u:.2f}" for v, u in r["us_per_sample"].items())
        print(f"{channels} channel(s): {cells} us/sample")
    print(f"live path, 1 kHz x 8 channels: {out['live_1khz_8ch_core_percent']} % of one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
