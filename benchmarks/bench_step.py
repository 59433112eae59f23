"""Per-sample speed benchmark: writes the `edgernn bench` report as JSON plus a PNG plot.

    .venv/bin/python benchmarks/bench_step.py                 # reference models
    .venv/bin/python benchmarks/bench_step.py model.onnx      # one exported model
    .venv/bin/python benchmarks/bench_step.py --quick         # a short smoke run

Output: <out-dir>/bench_step.json and <out-dir>/bench_step.png (default out-dir:
benchmarks/results). The printed table is the one `edgernn bench` prints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# One BLAS thread before numpy loads: the GEMM reference and the numpy backend are
# single-thread figures (the GEMM rate itself is measured in a fresh process anyway).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from edgernn.runtime.bench import BenchConfig, format_report, run_bench  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    single = report["single"]
    fig, axes = plt.subplots(1, len(single) + 1, figsize=(5 * (len(single) + 1), 4.5))
    for ax, entry in zip(axes, single):
        names = list(entry["results"])
        p50 = [entry["results"][n]["p50_us"] for n in names]
        p99 = [entry["results"][n]["p99_us"] for n in names]
        y = range(len(names))
        ax.barh(
            y, p50, color=["tab:green" if n.startswith("edgernn") else "tab:gray" for n in names]
        )
        ax.scatter(p99, y, marker="|", s=200, color="black", label="p99")
        ax.set_yticks(list(y), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("µs per sample (bar: p50)")
        ax.set_title(f"{entry['model']} ({entry['cell']}, {entry['layers']} layer(s), 1 thread)")
        ax.legend(loc="lower right", fontsize=8)
    ax = axes[-1]
    b = report["batched"]
    names = list(b["backends"])
    ax.bar(names, [b["backends"][n]["gflops"] for n in names], color="tab:green")
    ax.axhline(b["gemm_gflops"], color="black", linestyle="--", label="single-thread GEMM")
    ax.axhline(b["gemm_gflops"] / 2, color="gray", linestyle=":", label="50% of GEMM")
    ax.set_ylabel("GFLOP/s")
    ax.set_title(f"{b['batch']} streams stepped together ({b['model']})")
    ax.legend(fontsize=8)
    fig.suptitle(f"edgernn per-sample speed on {report['machine']['cpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="an exported model (default: reference models)")
    parser.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args(argv)
    cfg = BenchConfig.quick() if args.quick else BenchConfig()
    report = run_bench(args.model, cfg, progress=lambda msg: print(msg, file=sys.stderr))
    os.makedirs(args.out_dir, exist_ok=True)
    json_path = os.path.join(args.out_dir, "bench_step.json")
    with open(json_path, "w") as f:
        json.dump(report, f, indent=2)
    png_path = os.path.join(args.out_dir, "bench_step.png")
    plot(report, png_path)
    print(format_report(report))
    print(f"\nwrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
