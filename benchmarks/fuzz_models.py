"""Long fuzz of model files: bit flips and truncations of every cell through the CLI.

The same seeded generators and worker as tests/test_hostile_models.py (tests/hostile.py),
many more variants: every variant through `info`, `run` and `quantize` (even those
`info` refuses), every 25th through `bench`. Workers are separate processes, so a hard
crash is caught and named. Prints a summary and writes it as JSON.

    python benchmarks/fuzz_models.py [--per-model 500] [--seed 0] [--workers 2]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(os.path.dirname(HERE), "tests")
sys.path.insert(0, TESTS)

from hostile import mutants  # noqa: E402

CELLS = [("rnn", "tanh", 1), ("rnn", "relu", 1), ("lstm", "tanh", 1), ("gru", "tanh", 1),
         ("lstm", "tanh", 2), ("gru", "tanh", 2)]  # fmt: skip
CHUNK = 60  # variants per worker process


def build_models(folder: str) -> list[tuple[str, str]]:
    from conftest import make_model

    from edgernn.export.onnx_export import export_onnx

    out = []
    for cell, nl, layers in CELLS:
        path = os.path.join(folder, f"{cell}-{nl}-{layers}.onnx")
        export_onnx(make_model(cell, layers, nonlinearity=nl, seed=layers), path)
        out.append((f"{cell}-{nl}-{layers}", path))
    return out


def run_chunk(cases: list[dict], folder: str, index: int) -> tuple[list[dict], str]:
    spec = os.path.join(folder, f"chunk{index}.json")
    with open(spec, "w") as f:
        json.dump(cases, f)
    env = dict(os.environ, EDGERNN_CACHE_DIR=os.path.join(folder, "cache"))
    proc = subprocess.run([sys.executable, os.path.join(TESTS, "hostile.py"), spec],
                          capture_output=True, text=True, env=env)  # fmt: skip
    results = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    crash = ""
    if proc.returncode != 0:
        last = [ln for ln in proc.stderr.splitlines() if ln.startswith("case ")][-1:]
        crash = f"worker exit {proc.returncode} at {last}"
    return results, crash


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-model", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "fuzz_models.json"))
    args = ap.parse_args()
    started = time.time()
    with tempfile.TemporaryDirectory() as folder:
        cases = []
        for name, path in build_models(folder):
            with open(path, "rb") as f:
                data = f.read()
            for k, (how, blob) in enumerate(mutants(data, args.per_model, args.seed + len(cases))):
                variant = os.path.join(folder, f"{name}-{k}.onnx")
                with open(variant, "wb") as f:
                    f.write(blob)
                commands = ["info", "run", "quantize"] + (["bench"] if k % 25 == 0 else [])
                cases.append({"name": f"{name} #{k} {how}", "path": variant,
                              "commands": commands, "all": True})  # fmt: skip
        chunks = [cases[i : i + CHUNK] for i in range(0, len(cases), CHUNK)]
        with ThreadPoolExecutor(args.workers) as pool:
            done = list(pool.map(lambda ic: run_chunk(ic[1], folder, ic[0]), enumerate(chunks)))
    results = [r for chunk, _ in done for r in chunk]
    crashes = [c for _, c in done if c]
    tracebacks, codes = [], collections.Counter()
    for r in results:
        for command, out in r.items():
            if not isinstance(out, dict):
                continue
            if "traceback" in out:
                tracebacks.append(f"{r['name']} / {command}: {out['traceback'].splitlines()[-1]}")
            else:
                codes[(command, out["code"])] += 1
    summary = {
        "variants": len(cases),
        "results": len(results),
        "seconds": round(time.time() - started, 1),
        "tracebacks": len(tracebacks),
        "crashes": crashes,
        "exit_codes": {f"{c} {code}": n for (c, code), n in sorted(codes.items())},
        "max_worker_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "first_tracebacks": tracebacks[:20],
        "seed": args.seed,
        "per_model": args.per_model,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps({k: v for k, v in summary.items() if k != "first_tracebacks"}, indent=2))
    for line in tracebacks[:20]:
        print(line)
    return 1 if tracebacks or crashes or len(results) != len(cases) else 0


if __name__ == "__main__":
    sys.exit(main())
