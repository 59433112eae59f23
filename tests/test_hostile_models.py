"""Zero tracebacks, zero crashes: bit-flipped and truncated models of every cell, and
crafted metadata, through `info`, `run`, `quantize` and `bench`.

The commands run in worker processes (tests/hostile.py), two at a time; a worker that
dies by a signal fails the test naming the variant it was on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from hostile import mutants

HERE = os.path.dirname(os.path.abspath(__file__))
CELLS = [("rnn", 1), ("rnn-relu", 1), ("lstm", 1), ("gru", 1), ("lstm", 2), ("gru", 2)]
PER_MODEL = 36  # 6 models x 36 = 216 variants


def run_workers(cases: list[dict], tmp_path, workers: int = 2) -> list[dict]:
    env = dict(os.environ, EDGERNN_CACHE_DIR=str(tmp_path / "cache"))
    chunks = [cases[i::workers] for i in range(workers)]

    def one(i: int) -> list[dict]:
        spec = tmp_path / f"cases{i}.json"
        spec.write_text(json.dumps(chunks[i]))
        proc = subprocess.run(
            [sys.executable, os.path.join(HERE, "hostile.py"), str(spec)],
            capture_output=True, text=True, timeout=600, env=env,
        )  # fmt: skip
        last = [ln for ln in proc.stderr.splitlines() if ln.startswith("case ")][-1:]
        assert proc.returncode == 0, (
            f"worker died ({proc.returncode}) at {last}: {proc.stderr[-2000:]}"
        )
        return [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]

    with ThreadPoolExecutor(workers) as pool:
        results = [r for chunk in pool.map(one, range(workers)) for r in chunk]
    assert len(results) == len(cases)
    return results


def tracebacks(results: list[dict]) -> list[str]:
    return [
        f"{r['name']} / {command}: {' | '.join(out['traceback'].strip().splitlines()[-3:])}"
        for r in results
        for command, out in r.items()
        if isinstance(out, dict) and "traceback" in out
    ]


def test_bit_flips_and_truncations_of_every_cell_never_traceback(exported_models, tmp_path):
    cases, accepted = [], 0
    for cell, layers in CELLS:
        data = open(exported_models[(cell, layers)][1], "rb").read()
        for k, (how, blob) in enumerate(mutants(data, PER_MODEL, seed=len(cases))):
            path = tmp_path / f"{cell}{layers}-{k}.onnx"
            path.write_bytes(blob)
            commands = ["info", "run"] + (["quantize"] if k % 3 == 0 else [])
            commands += ["bench"] if k in (0, 2) else []  # bench runs subprocesses: two
            cases.append({"name": f"{cell}-{layers} #{k} {how}", "path": str(path),
                          "commands": commands})  # fmt: skip
    results = run_workers(cases, tmp_path)
    assert len(cases) >= 200
    assert not tracebacks(results), "\n".join(tracebacks(results))
    accepted = sum(1 for r in results if r["info"].get("code") == 0)
    refused = [r["info"]["error"] for r in results if r["info"].get("code")]
    assert all(e.startswith("edgernn: error:") for e in refused), refused[:5]
    # Both kinds were exercised: mutants the runtime refuses, and ones it runs.
    assert accepted >= 20 and len(refused) >= 100, (accepted, len(refused))


DEEP = "[" * 100_000 + "]" * 100_000
CRAFTED = {
    "deep channels": {"channels": DEEP},
    "deep state": {"state": DEEP},
    "deep detector": {"detector": DEEP},
    "deep metrics": {"metrics": '{"a":' * 50_000 + "1" + "}" * 50_000},
    "negative layers": {"layers": "-1"},
    "zero hidden": {"hidden": "0"},
    "negative hidden": {"hidden": "-16"},
    "huge hidden": {"hidden": "100000000", "layers": "1000"},
    "huge layers": {"layers": "1000000000000"},
    "float layers": {"layers": "1.5"},
    "nonlinearity upper": {"nonlinearity": "TANH"},
    "nonlinearity unknown": {"nonlinearity": "swish"},
    "cell unknown": {"cell": "transformer"},
    "cell upper": {"cell": "LSTM"},
    "metrics string": {"metrics": "not json at all"},
    "metrics list": {"metrics": "[1, 2, 3]"},
    "detector string": {"detector": '"calibrated"'},
    "detector junk": {"detector": '{"threshold": "high", "window": -4}'},
    "horizon zero": {"horizon": "0"},
    "horizon huge": {"horizon": "1000000000000"},
    "norm_std zero": {"norm_std": "[0, 0, 0]"},
    "norm_mean short": {"norm_mean": "[1]"},
    "norm_mean nan": {"norm_mean": "[NaN, 1, 2]"},
    "error_scale negative": {"error_scale": "[-1, -1, -1]"},
    "channels not names": {"channels": "[1, 2, 3]"},
    "channels escape": {"channels": '["\\u001b[2J", "\\u0007b", "c"]'},
    "state not list": {"state": '{"input": "h"}'},
    "state huge shape": {"state": '[{"input": "h", "output": "hn", "shape": [100000, "batch", 100000]}]'},
    "format 2 forecaster bare": {"edgernn_format": "2", "task": "forecast", "outputs": "[]"},
    "format 9": {"edgernn_format": "9"},
    "format text": {"edgernn_format": "two"},
    "residual odd": {"residual": "yes"},
}  # fmt: skip


def _craft(src: str, dst: str, changes: dict[str, str]) -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.load(src)
    props = {p.key: p.value for p in model.metadata_props}
    props.update(changes)
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, dst)


def test_crafted_metadata_is_refused_in_one_line_or_runs(exported_models, tmp_path):
    cases = []
    for i, (name, changes) in enumerate(sorted(CRAFTED.items())):
        cell = ("lstm", 1) if i % 2 and "nonlinearity" not in name else ("rnn", 1)
        path = str(tmp_path / f"crafted{i}.onnx")
        _craft(exported_models[cell][1], path, changes)
        commands = ["info", "run", "quantize"] + (["bench"] if name == "zero hidden" else [])
        cases.append({"name": name, "path": path, "commands": commands, "all": True})
    results = run_workers(cases, tmp_path)
    assert not tracebacks(results), "\n".join(tracebacks(results))
    by_name = {r["name"]: r for r in results}
    for name in ("negative layers", "zero hidden", "huge hidden", "nonlinearity unknown",
                 "deep channels", "deep state", "format 9", "state huge shape"):  # fmt: skip
        assert by_name[name]["info"]["code"] == 1, (name, by_name[name])
    for r in results:
        for command in ("info", "run", "quantize"):
            out = r[command]
            assert out["code"] in (0, 1) and (not out["code"] or out["error"].startswith(
                "edgernn: error:")), (r["name"], command, out)  # fmt: skip


# Variants the long fuzz (benchmarks/fuzz_models.py --seed 11 --per-model 250) found
# tracebacks in: a dimension name that is not UTF-8, a Constant node without outputs,
# an axis too large for C, cell weights of the wrong rank, a state shape the graph's
# cells refuse at run time. (model index in fuzz_models.CELLS, variant index)
FOUND = {(2, 26), (2, 54), (2, 162), (4, 64), (5, 52), (5, 228), (5, 246)}
FUZZ_CELLS = [("rnn", 1), ("rnn-relu", 1), ("lstm", 1), ("gru", 1), ("lstm", 2), ("gru", 2)]


def test_variants_the_long_fuzz_found_are_one_line_errors(exported_models, tmp_path):
    cases = []
    for m, k in sorted(FOUND):
        data = open(exported_models[FUZZ_CELLS[m]][1], "rb").read()
        how, blob = list(mutants(data, k + 1, seed=11 + 250 * m))[k]
        path = tmp_path / f"found{m}-{k}.onnx"
        path.write_bytes(blob)
        cases.append({"name": f"{FUZZ_CELLS[m]} #{k} {how}", "path": str(path),
                      "commands": ["info", "run", "quantize"], "all": True})  # fmt: skip
    results = run_workers(cases, tmp_path)
    assert not tracebacks(results), "\n".join(tracebacks(results))
