"""What `Stream.step` adds over the bare C step, per reference model, fast call vs ctypes.

    .venv/bin/python benchmarks/stream_overhead.py                 # LSTM-64, GRU-64, LSTM-64x2
    .venv/bin/python benchmarks/stream_overhead.py --rounds 9 --out results.json

For each reference model (exported as `edgernn bench` does, 1 channel, hidden 64) in one
process: `Stream.step` as it runs by default (the fast-call extension of runtime/cstep.py
where Python's headers are installed), `Stream.step` on the ctypes call (the extension
switched off on that stream: what it costs without the headers), timed call by call as
`edgernn bench` times it (perf_counter_ns around each call; the median per-call time,
timer included), interleaved round by round; then the bare C step timed in C
(runtime/cfloor.py). "+µs" is the median Stream.step minus the C step. JSON to
benchmarks/results/stream_overhead.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def time_calls(fn, samples: np.ndarray, n: int, offset: int) -> np.ndarray:
    out = np.empty(n, dtype=np.int64)
    clock = time.perf_counter_ns
    for i in range(n):
        x = samples[(offset + i) % len(samples)]
        t0 = clock()
        fn(x)
        out[i] = clock() - t0
    return out


def main(argv=None) -> int:
    from edgernn.runtime import cfloor
    from edgernn.runtime.bench import BenchConfig, build_reference_models
    from edgernn.runtime.model import Model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--samples", type=int, default=2000, help="timed calls per round and way")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "stream_overhead.json"))
    args = ap.parse_args(argv)

    rows = []
    print(f"{'model':<11} {'C step µs':>9} {'Stream.step µs':>14} {'+µs':>6} "
          f"{'ctypes path µs':>14} {'+µs':>6}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="edgernn-overhead-") as tmp:
        for label, path, _ in build_reference_models(tmp, BenchConfig()):
            model = Model(path, backend="c")
            fast, slow = model.stream(), model.stream()
            slow._fast_step = slow._fast_bound = None  # the ctypes call, as without Python.h
            ways = {"fast": fast.step, "ctypes": slow.step}
            samples = (20 + 5 * np.random.default_rng(0).standard_normal((4096, 1))).astype(
                np.float32
            )
            for fn in ways.values():
                time_calls(fn, samples, 500, 0)
            times = {name: [] for name in ways}
            gc.disable()
            try:
                for r in range(args.rounds):
                    order = list(ways) if r % 2 == 0 else list(ways)[::-1]
                    for name in order:
                        times[name].append(time_calls(ways[name], samples, args.samples, r))
            finally:
                gc.enable()
            floor = cfloor.measure_floor(model._engine.net, rounds=200)
            med = {n: float(np.median(np.concatenate(t))) / 1e3 for n, t in times.items()}
            row = {
                "model": label,
                "c_step_us": round(floor.step_us, 3),
                "stream_step_us": round(med["fast"], 3),
                "stream_overhead_us": round(med["fast"] - floor.step_us, 3),
                "fast_call": fast._fast_step is not None,
                "ctypes_stream_step_us": round(med["ctypes"], 3),
                "ctypes_overhead_us": round(med["ctypes"] - floor.step_us, 3),
            }
            rows.append(row)
            print(f"{label:<11} {row['c_step_us']:9.3f} {row['stream_step_us']:14.3f} "
                  f"{row['stream_overhead_us']:6.2f} {row['ctypes_stream_step_us']:14.3f} "
                  f"{row['ctypes_overhead_us']:6.2f}", flush=True)  # fmt: skip
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"rounds": args.rounds, "samples": args.samples,
                   "loadavg_1min": os.getloadavg()[0], "rows": rows}, f, indent=1)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
