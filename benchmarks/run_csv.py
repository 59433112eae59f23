"""`edgernn run --csv` side by side with the bare numpy equivalent, same file, same run.

    .venv/bin/python benchmarks/run_csv.py                       # 100k and 1M rows x 8, LSTM-32
    .venv/bin/python benchmarks/run_csv.py --rows 100000 --repeats 5 --model m.onnx

Every variant runs as its own process on the same file (the wall time includes the
interpreter start and the model load, for all of them alike), the variants interleaved
within each repeat; the report gives medians over the repeats of the wall time and of the
CPU time (user + system: less moved by other load on a shared machine) and the peak RSS
of each child (os.wait4's rusage):
  bare          np.loadtxt + Stream.run + np.savetxt ("%.9g": float32 exact)
  no-detector   edgernn run MODEL --csv IN -o OUT.csv --no-detector
  detector      edgernn run MODEL --csv IN -o OUT.csv (the model's calibration)
The detector variant can be limited to fewer repeats (--detector-repeats). Writes
benchmarks/results/run_csv.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "run_csv.json")
CHANNELS = [f"ch{k}" for k in range(8)]

BARE = """
import sys, numpy as np
from edgernn.runtime import Model
model_path, in_path, out_path = sys.argv[1:4]
stream = Model(model_path).stream()
X = np.loadtxt(in_path, delimiter=",", skiprows=1, dtype=np.float32, ndmin=2)
Y = stream.run(X)
np.savetxt(out_path, np.hstack([X, Y]), delimiter=",", fmt="%.9g")
"""


def signal(rows: int, seed: int = 0) -> np.ndarray:
    t = np.arange(rows)
    rng = np.random.default_rng(seed)
    return np.stack(
        [np.sin(2 * np.pi * t / (20 + 7 * k)) + 0.05 * rng.standard_normal(rows) for k in range(8)],
        axis=1,
    )


def write_data(path: str, rows: int) -> None:
    np.savetxt(path, signal(rows, seed=1), delimiter=",", header=",".join(CHANNELS),
               comments="", fmt="%.5f")  # fmt: skip


def build_model(folder: str) -> str:
    """LSTM-32 on 8 channels, one epoch (the weights do not change the timing)."""
    from edgernn.export import export_run
    from edgernn.train.config import TrainConfig
    from edgernn.train.fit import train_files

    csv = os.path.join(folder, "train.csv")
    np.savetxt(csv, signal(3000), delimiter=",", header=",".join(CHANNELS), comments="",
               fmt="%.5f")  # fmt: skip
    run = os.path.join(folder, "run")
    train_files([csv], TrainConfig(cell="lstm", hidden=32, epochs=1, progress=False), run)
    path = os.path.join(folder, "lstm32.onnx")
    export_run(run, path)
    return path


def in_child(function: str, *args):
    """One of this module's functions in its own process: a child's ru_maxrss starts at
    the RSS of the parent it was forked from, so this one must never hold torch or a
    whole data set."""
    code = (
        f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
        f"import run_csv; print(run_csv.{function}(*{args!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def run_child(cmd: list[str]) -> dict:
    """Wall seconds, CPU seconds (user + system) and peak RSS (MB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err[-500:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return {"seconds": wall, "cpu_s": cpu, "rss_mb": usage.ru_maxrss / 1024}


def commands(model: str, data: str, folder: str) -> dict[str, list[str]]:
    edgernn = [sys.executable, "-m", "edgernn", "run", model, "--csv", data, "-o"]
    return {
        "bare": [sys.executable, "-c", BARE, model, data, os.path.join(folder, "bare.csv")],
        "no-detector": edgernn + [os.path.join(folder, "nod.csv"), "--no-detector"],
        "detector": edgernn + [os.path.join(folder, "det.csv")],
    }


def bench_size(model: str, rows: int, folder: str, repeats: int, det_repeats: int) -> dict:
    data = os.path.join(folder, f"in{rows}.csv")
    in_child("write_data", data, rows)  # this process stays small (see build_in_child)
    cmds = commands(model, data, folder)
    runs: dict[str, list[dict]] = {name: [] for name in cmds}
    for rep in range(repeats):
        for name, cmd in cmds.items():  # interleaved: machine noise hits every variant alike
            if name == "detector" and rep >= det_repeats:
                continue
            runs[name].append(run_child(cmd))
            print(f"  {rows} rows, {name}, repeat {rep + 1}: {runs[name][-1]}", file=sys.stderr)
    os.remove(data)
    out = {}
    for name, got in runs.items():
        seconds = statistics.median(r["seconds"] for r in got)
        cpu = statistics.median(r["cpu_s"] for r in got)
        out[name] = {
            "repeats": len(got),
            "median_s": round(seconds, 3),
            "us_per_sample": round(1e6 * seconds / rows, 2),
            "cpu_median_s": round(cpu, 3),
            "cpu_us_per_sample": round(1e6 * cpu / rows, 2),
            "rss_mb": round(max(r["rss_mb"] for r in got), 1),
            "runs_s": [round(r["seconds"], 3) for r in got],
            "runs_cpu_s": [round(r["cpu_s"], 3) for r in got],
        }
    bare, bare_cpu = out["bare"]["median_s"], out["bare"]["cpu_median_s"]
    for name in ("no-detector", "detector"):
        out[name]["x_bare"] = round(out[name]["median_s"] / bare, 2)
        out[name]["x_bare_cpu"] = round(out[name]["cpu_median_s"] / bare_cpu, 2)
    return out


def table(results: dict) -> list[str]:
    lines = [
        "| rows × 8 | variant | µs/sample | × bare | CPU µs/sample | CPU × bare | peak RSS MB "
        "| repeats |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for rows, variants in results["sizes"].items():
        for name, r in variants.items():
            ratio, cpu_ratio = r.get("x_bare", 1.0), r.get("x_bare_cpu", 1.0)
            lines.append(
                f"| {int(rows):,} | {name} | {r['us_per_sample']:.1f} | {ratio:.2f} | "
                f"{r['cpu_us_per_sample']:.1f} | {cpu_ratio:.2f} | {r['rss_mb']:.0f} | "
                f"{r['repeats']} |"
            )
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="an exported forecaster with 8 channels ch0..ch7 "
                   "(default: train LSTM-32)")  # fmt: skip
    p.add_argument("--rows", default="100000,1000000", help="comma-separated file lengths")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--detector-repeats", type=int, default=None,
                   help="repeats of the detector variant for files over 200k rows (default: all)")
    p.add_argument("-o", "--out", default=RESULTS)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        model = args.model or in_child("build_model", folder)
        sizes = {}
        for rows in (int(r) for r in args.rows.split(",")):
            det = args.repeats
            if args.detector_repeats is not None and rows > 200_000:
                det = min(args.detector_repeats, args.repeats)
            sizes[str(rows)] = bench_size(model, rows, folder, args.repeats, det)
    results = {
        "what": "edgernn run --csv vs bare numpy loadtxt + Stream.run + savetxt, one process "
        "each, same file; medians of interleaved repeats, wall and CPU time incl. start and "
        "load",
        "model": "LSTM-32, 8 channels" if not args.model else os.path.basename(args.model),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}, numpy {np.__version__}",
        "sizes": sizes,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=2)
        fh.write("\n")
    print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
