"""`edgernn demo` with a small setting: the whole story runs and leaves its outputs."""

import json

from conftest import run_cli


def test_demo_small(tmp_path):
    out = tmp_path / "demo"
    proc = run_cli(
        "demo", "--out", str(out), "--epochs", "5", "--hidden", "24",
        "--train-rows", "2500", "--live-rows", "800", "--rate", "1000",
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for name in ("model.onnx", "model.int8.onnx", "live.jsonl", "metrics.json", "report.png"):
        assert (out / name).is_file(), name
        assert str(out / name) in proc.stdout or name in proc.stdout
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = json.loads((out / "metrics.json").read_text())
    assert (
        m["forecast"]["validation_model"]["rmse"] < m["forecast"]["validation_persistence"]["rmse"]
    )
    samples = m["samples"]
    assert samples["unaccounted"] == 0 and samples["rejected"] == 0 and samples["missing"] == 0
    assert samples["forecasts"] == samples["samples"] >= 800  # every sample got its forecast
    point = m["detection"]["point"]
    assert 0.0 <= point["f1"] <= 1.0 and point["tp"] + point["fn"] > 0
    assert set(m["detection"]["per_fault"]) == {
        "bearing",
        "cavitation",
        "stuck",
        "overload",
        "spikes",
    }
    assert m["quantization"]["size_ratio"] < 1.0
    assert m["latency_ms"]["p99"] is not None
    lines = (out / "live.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert {"seq", "forecast", "score", "anomaly"} <= set(first)
