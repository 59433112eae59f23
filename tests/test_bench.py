"""`edgernn bench` and benchmarks/bench_step.py: they run, report every alternative
and agree with the reference numerically. Timings are reported, never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from edgernn.runtime.bench import BenchConfig, format_report, macs_per_sample, run_bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--quick", "--samples", "30", "--rounds", "1", "--batch", "8"]


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "edgernn", "bench", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _check_report(report: dict, want_alternatives: set):
    for entry in report["single"]:
        results = entry["results"]
        assert want_alternatives <= set(results)
        for name, r in results.items():
            assert 0 < r["p50_us"] <= r["p99_us"], name
            assert r["samples_per_s"] > 0 and r["ratio_to_edgernn"] > 0
            if "max_abs_diff" in r:  # every stateful alternative computes the same forecasts
                assert r["max_abs_diff"] < 1e-3, name
        assert results[f"edgernn ({entry['edgernn_backend']})"]["ratio_to_edgernn"] == 1.0
    batched = report["batched"]
    assert batched["gemm_gflops"] > 0
    for r in batched["backends"].values():
        assert r["gflops"] > 0 and 0 < r["gemm_fraction"]
    auto = report["footprint"]["auto"]
    assert auto["import_s"] > 0 and auto["load_ms"] > 0 and auto["rss_mb"] > 0
    assert not auto["torch_imported"]


def test_bench_cli_on_a_model_file(exported_models, tmp_path):
    _, path = exported_models[("gru", 2)]
    out = tmp_path / "report.json"
    proc = _cli(path, "--json", "-o", str(out), *TINY)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == report
    _check_report(report, {"edgernn (numpy)", "edgernn (onnxruntime)", "onnxruntime session.run"})
    assert report["batched"]["batch"] == 8
    assert any("torch eager" in note for note in report["notes"])  # skipped, and said so
    table = format_report(report)
    for name in report["single"][0]["results"]:
        assert name in table
    assert "GEMM" in table and "RSS" in table
    floor = report["single"][0]["c_floor"]
    if "edgernn (c)" in report["single"][0]["results"]:  # the C step against the L2 floor
        assert floor["step_us"] > 0 and floor["floor_us"] > 0 and "L2 floor" in table
    else:
        assert floor is None


def test_bench_reference_models_include_torch_and_window():
    pytest.importorskip("torch")
    cfg = BenchConfig(samples=30, rounds=1, batch=4, batch_steps=2, hidden=8)
    report = run_bench(None, cfg)
    assert [e["model"] for e in report["single"]] == ["lstm-8", "gru-8", "lstm-8x2"]
    _check_report(report, {"onnxruntime session.run", "torch eager", "window-50 onnxruntime"})


def test_bench_bad_input_is_one_line(tmp_path):
    proc = _cli(str(tmp_path / "missing.onnx"), *TINY)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"edgernn: error: {tmp_path / 'missing.onnx'}: no such model file"
    ]
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    proc = _cli(str(bad), *TINY)
    assert proc.returncode == 1 and proc.stderr.startswith("edgernn: error:")
    assert "Traceback" not in proc.stderr
    proc = _cli("--batch", "0")
    assert proc.returncode == 2


def test_macs_per_sample_counts_the_issue_example(exported_models):
    from edgernn.runtime import Model

    meta = Model(exported_models[("lstm", 1)][1]).meta  # 3 channels, hidden 16
    assert macs_per_sample(meta) == 4 * 16 * (3 + 16) + 16 * 3
    # The issue's LSTM-64 on one channel: ~17k multiply-adds per step.
    meta.channels, meta.hidden = ["a"], 64
    meta.norm_mean, meta.norm_std = [0.0], [1.0]
    assert macs_per_sample(meta) == 4 * 64 * 65 + 64


def test_benchmark_script_writes_json_and_png(exported_models, tmp_path):
    pytest.importorskip("matplotlib")
    _, path = exported_models[("rnn", 1)]
    script = os.path.join(ROOT, "benchmarks", "bench_step.py")
    proc = subprocess.run(
        [sys.executable, script, path, "--quick", "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "bench_step.json").read_text())
    assert report["single"][0]["model"] == os.path.basename(path)
    png = (tmp_path / "bench_step.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert np.isfinite(report["batched"]["gemm_gflops"])
