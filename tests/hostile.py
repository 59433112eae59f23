"""Seeded generators of hostile model files, and a worker that runs the CLI on them.

Used by tests/test_hostile_models.py (small, fast) and benchmarks/fuzz_models.py (long).
The worker runs `edgernn info/run/quantize/bench` *in-process* through `cli.main` (what a
user sees: exit 0, or 1 with `edgernn: error: ...`), so any other exception is a
traceback the user would have seen. It runs in a child process of the test, so a hard
crash (SIGSEGV, SIGBUS) is caught too and names the variant that caused it.

    python tests/hostile.py CASES.json   ->  one JSON line per case on stdout
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Iterator

import numpy as np

COMMANDS = ("info", "run", "quantize", "bench")


def mutants(data: bytes, n: int, seed: int) -> Iterator[tuple[str, bytes]]:
    """n variants of `data`: bit flips (1..8 bits) and truncations, alternating. A third
    of the flips land in the first 1.5 KB (nodes, graph structure), a third in the last
    3 KB (inputs, outputs, metadata), a third anywhere (mostly weights)."""
    rng = np.random.default_rng(seed)
    size = len(data)
    for i in range(n):
        if i % 2:
            cut = int(rng.integers(0, size))
            yield f"truncated at {cut}", data[:cut]
            continue
        region = i // 2 % 3
        lo, hi = ((0, min(size, 1536)), (max(0, size - 3072), size), (0, size))[region]
        buf = bytearray(data)
        flips = []
        for _ in range(int(rng.integers(1, 9))):
            pos, bit = int(rng.integers(lo, hi)), int(rng.integers(0, 8))
            buf[pos] ^= 1 << bit
            flips.append(f"{pos}.{bit}")
        yield f"bits {' '.join(flips)}", bytes(buf)


def write_csv(path: str, channels: list[str], rows: int = 24) -> None:
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        f.write(",".join(channels) + "\n")
        for row in 10 + rng.standard_normal((rows, len(channels))):
            f.write(",".join(f"{v:.4f}" for v in row) + "\n")


def run_command(command: str, model: str, workdir: str, csv_path: str) -> dict:
    """One CLI command in-process: {"code": exit code, "error": first stderr line} or
    {"traceback": ...} for anything that escaped main()."""
    from edgernn.cli import main

    out = os.path.join(workdir, "out")
    argv = {
        "info": ["info", model],
        "run": ["run", model, "--csv", csv_path, "-o", out + ".csv"],
        "quantize": ["quantize", model, "-o", out + ".onnx", "--mode", "dynamic"],
        "bench": ["bench", model, "--samples", "10", "--rounds", "1", "--batch", "2", "--json"],
    }[command]
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main(argv)
    except SystemExit as e:  # argparse: usage errors
        code = e.code
    except BaseException:
        return {"traceback": traceback.format_exc()[-1500:]}
    lines = err.getvalue().strip().splitlines()
    if "Traceback" in err.getvalue():
        return {"traceback": err.getvalue()[-1500:]}
    return {"code": code, "error": lines[-1][:200] if code and lines else ""}


def work(cases: list[dict]) -> None:
    """cases: {"path", "name", "commands"}; prints one JSON result per case."""
    with tempfile.TemporaryDirectory() as workdir:
        csv_path = os.path.join(workdir, "in.csv")
        write_csv(csv_path, ["ch0", "ch1", "ch2"])
        for case in cases:
            print(f"case {case['name']}", file=sys.__stderr__, flush=True)  # names a crash
            result = {"name": case["name"]}
            for command in case["commands"]:
                result[command] = run_command(command, case["path"], workdir, csv_path)
                if command == "info" and result[command].get("code") and not case.get("all"):
                    break  # a model info refuses, the others refuse the same way (Model)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        work(json.load(f))
