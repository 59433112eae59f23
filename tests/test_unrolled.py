"""The unrolled export variant: primitive ops only, same interface and metadata as
export_onnx, parity-gated; and the rewrite of cell nodes in an exported graph."""

import json

import numpy as np
import onnx
import pytest
from conftest import make_model

from edgernn.errors import ExportError, ModelFormatError
from edgernn.export import unrolled
from edgernn.export.onnx_export import check_parity, export_onnx
from edgernn.export.unrolled import PRIMITIVE_OPS, export_unrolled, graph_ops, unroll_cells
from edgernn.runtime import Model

CASES = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh"), ("esn", "tanh")]
FORBIDDEN = {"RNN", "LSTM", "GRU", "If", "Loop", "Scan"}


def _props(path) -> dict:
    return {p.key: p.value for p in onnx.load(path).metadata_props}


def _stream_inputs(model, steps=60, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    mean, std = model.mean.numpy(), model.std.numpy()
    x = rng.standard_normal((steps, batch, model.config.n_channels)) * std + mean
    return x.astype(np.float32)  # (T, B, C) raw units


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell,nl", CASES, ids=[f"{c}-{n}" for c, n in CASES])
def test_unrolled_export_matches_pytorch_with_primitive_ops(tmp_path, cell, nl, layers):
    model = make_model(cell, layers, nonlinearity=nl, seed=layers)
    report = export_unrolled(model, tmp_path / "u.onnx", error_scale=[1.0, 2.0, 3.0])
    assert report.max_abs <= 1e-5 and report.steps > 0
    proto = onnx.load(tmp_path / "u.onnx")
    ops = graph_ops(proto)
    assert ops <= PRIMITIVE_OPS and not ops & FORBIDDEN
    assert "MatMul" in ops
    # Same interface and metadata as the standard export, plus what variant it is.
    export_onnx(model, tmp_path / "f.onnx", error_scale=[1.0, 2.0, 3.0])
    props, ref = _props(tmp_path / "u.onnx"), _props(tmp_path / "f.onnx")
    assert json.loads(props.pop("export")) == {
        "variant": "unrolled",
        "opset": 17,
        "static_batch": None,
    }
    assert props == ref
    runtime = Model(tmp_path / "u.onnx", backend="onnxruntime")
    assert runtime.meta.cell == model.config.graph_cell
    assert [s.input for s in runtime.state_specs] == (["h", "c"] if cell == "lstm" else ["h"])


@pytest.mark.parametrize("opset", [11, 13, 21])
def test_unrolled_opsets(tmp_path, opset):
    model = make_model("gru", 2)
    report = export_unrolled(model, tmp_path / "u.onnx", opset=opset)
    assert report.max_abs <= 1e-5
    proto = onnx.load(tmp_path / "u.onnx")
    assert [o.version for o in proto.opset_import if o.domain == ""] == [opset]


def test_unrolled_refuses_old_opset(tmp_path):
    with pytest.raises(ExportError, match="opset >= 11"):
        export_unrolled(make_model("lstm"), tmp_path / "u.onnx", opset=9)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_static_batch_fixes_every_shape(tmp_path, cell):
    model = make_model(cell, 2)
    report = export_unrolled(model, tmp_path / "s.onnx", static_batch=4)
    assert report.batch == 4 and report.max_abs <= 1e-5
    proto = onnx.load(tmp_path / "s.onnx")
    values = list(proto.graph.input) + list(proto.graph.output) + list(proto.graph.value_info)
    assert len(proto.graph.value_info) > 10  # intermediate shapes are written out
    for v in values:
        dims = v.type.tensor_type.shape.dim
        assert dims and all(d.HasField("dim_value") for d in dims), v.name
    assert "Shape" not in graph_ops(proto)


def test_static_batch_one_streams_in_the_runtime(tmp_path):
    model = make_model("lstm", 1)
    export_unrolled(model, tmp_path / "s.onnx", static_batch=1)
    export_onnx(model, tmp_path / "f.onnx")
    x = _stream_inputs(model, batch=1)[:, 0]
    y_static = Model(tmp_path / "s.onnx", backend="onnxruntime").stream().run(x)
    y_ref = Model(tmp_path / "f.onnx", backend="onnxruntime").stream().run(x)
    np.testing.assert_allclose(y_static, y_ref, atol=1e-4, rtol=1e-5)


def test_parity_gate_rejects_a_wrong_graph(tmp_path, monkeypatch):
    real = unrolled.forecaster_weights

    def corrupted(model):
        layers, head_w, head_b = real(model)
        layers[0].w_hh = layers[0].w_hh * 1.01  # a small error must not pass
        return layers, head_w, head_b

    monkeypatch.setattr(unrolled, "forecaster_weights", corrupted)
    path = tmp_path / "u.onnx"
    with pytest.raises(ExportError, match="parity check failed"):
        export_unrolled(make_model("gru"), path)
    assert not path.exists() and (tmp_path / "u.onnx.failed").exists()


@pytest.mark.parametrize("cell,nl", CASES[:4], ids=[f"{c}-{n}" for c, n in CASES[:4]])
def test_unroll_cells_rewrites_an_exported_graph(tmp_path, cell, nl):
    model = make_model(cell, 2, nonlinearity=nl)
    export_onnx(model, tmp_path / "f.onnx")
    proto = unroll_cells(onnx.load(tmp_path / "f.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert not graph_ops(proto) & FORBIDDEN
    onnx.save(proto, tmp_path / "r.onnx")
    # The rewritten graph passes the same parity gate as the original export.
    report = check_parity(model, str(tmp_path / "r.onnx"))
    assert report.max_abs <= 1e-5
    x = _stream_inputs(model)
    a = Model(tmp_path / "f.onnx", backend="onnxruntime").stream(batch=2).run(x)
    b = Model(tmp_path / "r.onnx", backend="onnxruntime").stream(batch=2).run(x)
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)


def _cell_node(proto):
    return next(n for n in proto.graph.node if n.op_type in ("LSTM", "GRU", "RNN"))


@pytest.mark.parametrize(
    "cell,attr,value,why",
    [
        ("lstm", "direction", b"bidirectional", "only forward"),
        ("lstm", "clip", 3.0, "clip"),
        ("gru", "linear_before_reset", 0, "linear_before_reset"),
        ("rnn", "activations", [b"Sigmoid"], "activations"),
    ],
)
def test_unroll_cells_refuses_what_it_cannot_compute(tmp_path, cell, attr, value, why):
    export_onnx(make_model(cell), tmp_path / "f.onnx")
    proto = onnx.load(tmp_path / "f.onnx")
    node = _cell_node(proto)
    kept = [a for a in node.attribute if a.name != attr]
    del node.attribute[:]
    node.attribute.extend(kept + [onnx.helper.make_attribute(attr, value)])
    with pytest.raises(ModelFormatError, match=why):
        unroll_cells(proto)


def test_unroll_cells_refuses_weights_that_are_not_constants(tmp_path):
    export_onnx(make_model("gru"), tmp_path / "f.onnx")
    proto = onnx.load(tmp_path / "f.onnx")
    _cell_node(proto).input[2] = "h"  # R now comes from a graph input
    with pytest.raises(ModelFormatError, match="not an initializer"):
        unroll_cells(proto)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell,nl", CASES[:4], ids=[f"{c}-{n}" for c, n in CASES[:4]])
def test_lean_unroll_rebuilds_an_exported_graph(tmp_path, cell, nl, layers):
    """The rebuild drops the exporter's plumbing and still passes the export's parity
    gate; a one-layer state goes in and out of the cell with no reshape at all."""
    model = make_model(cell, layers, nonlinearity=nl)
    export_onnx(model, tmp_path / "f.onnx")
    proto = onnx.load(tmp_path / "f.onnx")
    meta = Model(tmp_path / "f.onnx", backend="onnxruntime").meta
    lean = unrolled.lean_unroll(proto, meta)
    onnx.checker.check_model(lean, full_check=True)
    ops = graph_ops(lean)
    assert ops <= PRIMITIVE_OPS and not ops & FORBIDDEN
    assert not ops & {"Transpose", "Unsqueeze", "Gather"}
    assert "Reshape" not in ops and ("Concat" in ops) == (layers > 1)
    assert len(lean.graph.node) < len(unroll_cells(proto).graph.node)
    onnx.save(lean, tmp_path / "r.onnx")
    assert check_parity(model, str(tmp_path / "r.onnx")).max_abs <= 1e-5


def test_lean_unroll_refuses_a_graph_it_does_not_reproduce(tmp_path):
    """The network is read from the cells, the head and the metadata; a graph whose
    normalisation disagrees with its metadata fails the probe instead of being
    rewritten into what the metadata says."""
    model = make_model("gru", 1)
    export_onnx(model, tmp_path / "f.onnx")
    proto = onnx.load(tmp_path / "f.onnx")
    meta = Model(tmp_path / "f.onnx", backend="onnxruntime").meta
    mean = next(t for t in proto.graph.initializer if t.name == "model.mean")
    shifted = onnx.numpy_helper.to_array(mean) + 0.5
    mean.CopyFrom(onnx.numpy_helper.from_array(shifted.astype(np.float32), "model.mean"))
    with pytest.raises(ModelFormatError, match="differs from the original"):
        unrolled.lean_unroll(proto, meta)
    _cell_node(proto).op_type = "LSTM"
    with pytest.raises(ModelFormatError, match="expected 1 gru cell"):
        unrolled.lean_unroll(proto, meta)


def test_lean_graph_without_residual(tmp_path):
    """Without the residual the head bias and the mean fold into one constant."""
    model = make_model("gru", 2)
    model.config.residual = False
    export_onnx(model, tmp_path / "f.onnx")
    assert export_unrolled(model, tmp_path / "u.onnx").max_abs <= 1e-5
    meta = Model(tmp_path / "f.onnx", backend="onnxruntime").meta
    assert meta.residual is False
    lean = unrolled.lean_unroll(onnx.load(tmp_path / "f.onnx"), meta)
    onnx.save(lean, tmp_path / "r.onnx")
    assert check_parity(model, str(tmp_path / "r.onnx")).max_abs <= 1e-5
