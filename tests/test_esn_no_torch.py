"""An ESN trains, exports and evaluates without torch or onnx (#20 item 3): the graph is
written as protobuf bytes by export/onnx_writer.py and gated against the ESN's numpy forward."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from edgernn.cli import main
from edgernn.export.onnx_writer import esn_meta, reference_forward
from edgernn.runtime import Model
from edgernn.train.checkpoint import load_checkpoint

BLOCK = "import sys\nsys.modules['torch'] = None\nsys.modules['onnx'] = None\n"


def write_csv(path, n: int = 400, seed: int = 0, anomaly: bool = False) -> str:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    a = np.sin(t / 7) + 0.05 * rng.standard_normal(n)
    b = 3 * np.cos(t / 5) + 10 + 0.05 * rng.standard_normal(n)
    label = np.zeros(n, int)
    if anomaly:
        b[n * 3 // 4 : n * 3 // 4 + 30] += 8.0
        label[n * 3 // 4 : n * 3 // 4 + 30] = 1
    with open(path, "w") as fh:
        fh.write("a,b,anomaly\n" if anomaly else "a,b\n")
        for i in range(n):
            fh.write(f"{a[i]:.5f},{b[i]:.5f}" + (f",{label[i]}\n" if anomaly else "\n"))
    return str(path)


def run_blocked(*argv: str) -> subprocess.CompletedProcess:
    code = BLOCK + f"from edgernn.cli import main\nsys.exit(main({list(argv)!r}))\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


@pytest.mark.parametrize("layers,residual", [(1, True), (2, False)])
def test_esn_exports_without_torch_or_onnx(tmp_path, layers, residual):
    csv = write_csv(tmp_path / "d.csv")
    run = str(tmp_path / "run")
    out = str(tmp_path / "m.onnx")
    flags = ["--no-residual"] if not residual else []
    train = run_blocked("train", csv, "--cell", "esn", "--hidden", "8", "--layers", str(layers),
                        "--out", run, *flags)  # fmt: skip
    assert train.returncode == 0, train.stderr
    proc = run_blocked("export", run, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "torch is not installed" not in proc.stderr
    assert proc.stdout.startswith(f"wrote {out}: parity")

    model = Model(out, backend="numpy")
    meta = model.meta
    assert (meta.cell, meta.trained_as, meta.layers, meta.hidden) == ("rnn", "esn", layers, 8)
    assert meta.residual is residual and meta.channels == ["a", "b"]
    assert [(s.input, s.output) for s in meta.states] == [("h", "h_out")]
    assert meta.extra["producer"].startswith("edgernn ")

    # the graph computes the ESN: both backends, from a random non-zero state
    weights, ckpt, _ = load_checkpoint(run)
    mm = esn_meta(ckpt, weights)
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((40, 2, 2)) * np.asarray(mm.norm_std) + mm.norm_mean).astype(
        np.float32
    )
    h0 = (0.5 * rng.standard_normal((layers, 2, 8))).astype(np.float32)
    y_ref, h_ref = reference_forward(weights, mm, x, h0)
    for backend in ("numpy", "onnxruntime"):
        stream = Model(out, backend=backend).stream(state={"h": h0}, batch=2)
        y = stream.run(x)
        assert np.all(np.abs(y - y_ref) <= 1e-5 + 1e-5 * np.abs(y_ref)), backend
        h = stream.state["h"]
        assert np.all(np.abs(h - h_ref) <= 1e-5 + 1e-5 * np.abs(h_ref)), backend


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="needs onnx")
def test_written_graph_passes_onnx_checker_ir8_opset17(tmp_path):
    import onnx

    csv = write_csv(tmp_path / "d.csv")
    run = str(tmp_path / "run")
    assert run_blocked("train", csv, "--cell", "esn", "--hidden", "6", "--out", run).returncode == 0
    out = str(tmp_path / "m.onnx")
    assert run_blocked("export", run, "-o", out).returncode == 0
    proto = onnx.load(out)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version == 8
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 17)]
    assert [i.name for i in proto.graph.input] == ["x", "h"]
    assert [o.name for o in proto.graph.output] == ["y", "h_out"]
    assert "RNN" in [n.op_type for n in proto.graph.node]
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["trained_as"] == "esn" and json.loads(props["channels"]) == ["a", "b"]


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
def test_written_graph_matches_the_torch_export(tmp_path):
    """Same interface, same metadata, same numbers as the PyTorch exporter's ESN graph."""
    csv = write_csv(tmp_path / "d.csv")
    run = str(tmp_path / "run")
    assert main(["train", csv, "--cell", "esn", "--hidden", "8", "--layers", "2",
                 "--out", run]) == 0  # fmt: skip
    torch_out, bytes_out = str(tmp_path / "t.onnx"), str(tmp_path / "w.onnx")
    assert main(["export", run, "-o", torch_out]) == 0
    assert run_blocked("export", run, "-o", bytes_out).returncode == 0
    a, b = Model(torch_out, backend="onnxruntime"), Model(bytes_out, backend="onnxruntime")
    assert a.meta.to_props() == b.meta.to_props()
    x = np.random.default_rng(1).standard_normal((30, 3, 2)).astype(np.float32) * 2 + 5
    ya, yb = a.stream(batch=3).run(x), b.stream(batch=3).run(x)
    assert np.allclose(ya, yb, rtol=1e-5, atol=1e-5)


def test_evaluate_default_esn_without_torch(tmp_path):
    csv = write_csv(tmp_path / "e.csv", n=600, anomaly=True)
    proc = run_blocked("evaluate", csv, "--train-rows", "300", "--hidden", "16", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["pooled"]["events"] == 1


def test_evaluate_with_a_trained_cell_still_says_torch_is_missing(tmp_path):
    csv = write_csv(tmp_path / "d.csv")
    proc = run_blocked("evaluate", csv, "--train-rows", "200", "--cell", "lstm")
    assert proc.returncode != 0 and "torch is not installed" in proc.stderr
