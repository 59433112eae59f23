"""`edgernn bench [MODEL.onnx] [--json]`: the per-sample speed table (see bench.py)."""

from __future__ import annotations

import json
import sys

from edgernn.argtypes import positive_int


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="measure per-sample latency against plain onnxruntime, torch and windowing",
        description="Time Stream.step per sample (p50/p99) for every edgernn backend "
        "against plain onnxruntime session.run, PyTorch eager stepping and a "
        "50-sample sliding window; step many streams together against this machine's "
        "single-thread GEMM rate; measure import time, load time and memory. Without "
        "MODEL.onnx, exports LSTM-64, GRU-64 and 2-layer LSTM-64 reference models "
        "(needs the [train] extra).",
    )
    p.add_argument("model", nargs="?", metavar="MODEL.onnx", help="model to bench")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-o", "--out", metavar="REPORT.json", help="also write the JSON report here")
    p.add_argument("--batch", type=positive_int, help="streams stepped together (default 1024)")
    p.add_argument("--samples", type=positive_int, help="timed samples per round (default 2000)")
    p.add_argument("--rounds", type=positive_int, help="interleaved rounds (default 5)")
    p.add_argument(
        "--quick", action="store_true", help="a short run (smaller models, fewer samples)"
    )
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from edgernn.runtime.bench import BenchConfig, format_report, run_bench

    cfg = BenchConfig.quick() if args.quick else BenchConfig()
    for name in ("batch", "samples", "rounds"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    report = run_bench(args.model, cfg, progress=lambda msg: print(msg, file=sys.stderr))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
