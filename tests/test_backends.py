"""Every backend x every cell against the onnxruntime reference, plus the guarantees
the fast backends rest on: they load without onnx/onnxruntime, they refuse graphs
they do not understand, and a rejected sample leaves the state untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import random_start, stream_outputs

from edgernn.errors import EdgernnError, InputError, ModelFormatError
from edgernn.runtime import Model
from edgernn.runtime import cstep as cstep_mod
from edgernn.runtime import numpy_backend as nb

TOL = 1e-5
CELLS = [(cell, layers) for cell in ("rnn", "rnn-relu", "lstm", "gru") for layers in (1, 2)]
HAVE_CC = cstep_mod._compiler() is not None
FAST_BACKENDS = [
    "numpy",
    pytest.param("c", marks=pytest.mark.skipif(not HAVE_CC, reason="no C compiler")),
]


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("batch", [None, 4])
@pytest.mark.parametrize("key", CELLS, ids=[f"{c}-{n}" for c, n in CELLS])
def test_backend_matches_onnxruntime(exported_models, key, batch, backend):
    _, path = exported_models[key]
    ref, fast = Model(path, backend="onnxruntime"), Model(path, backend=backend)
    assert fast.backend == backend and ref.backend == "onnxruntime"
    state, X = random_start(ref, batch or 1, seed=len(key[0]) + key[1])
    y_ref, s_ref = stream_outputs(ref, state, X, batch)
    y, s = stream_outputs(fast, state, X, batch)
    assert y.shape == y_ref.shape
    assert np.max(np.abs(y - y_ref)) <= TOL
    for name in s_ref:
        assert np.max(np.abs(s[name] - s_ref[name])) <= TOL


@pytest.mark.parametrize("key", CELLS, ids=[f"{c}-{n}" for c, n in CELLS])
def test_interpreter_matches_onnxruntime(exported_models, key):
    """The node-by-node interpreter (what runs unrolled graphs, and what the fused
    backends are proved against at load) agrees with onnxruntime on its own."""
    import onnxruntime as ort

    _, path = exported_models[key]
    parsed = nb.load_onnx(path)
    interp = nb.Interpreter(parsed.graph)
    model = Model(path, backend="onnxruntime")
    state, X = random_start(model, 3)
    feeds = {"x": X[0], **state}
    names = [o.name for o in ort.InferenceSession(path).get_outputs()]
    want = ort.InferenceSession(path).run(names, feeds)
    got = interp.run(feeds, names)
    for a, b in zip(got, want):
        assert np.max(np.abs(a - b)) <= TOL


def test_protobuf_reader_matches_onnx(exported_models):
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    _, path = exported_models[("lstm", 2)]
    proto = onnx.load(path)
    parsed = nb.load_onnx(path)
    assert parsed.metadata == {p.key: p.value for p in proto.metadata_props}
    assert [n.op_type for n in parsed.graph.nodes] == [n.op_type for n in proto.graph.node]
    assert [n.inputs for n in parsed.graph.nodes] == [list(n.input) for n in proto.graph.node]
    for init in proto.graph.initializer:
        np.testing.assert_array_equal(
            parsed.graph.initializers[init.name], numpy_helper.to_array(init)
        )
    assert parsed.opset == proto.opset_import[0].version
    assert parsed.graph.inputs["h"] == [2, None, 16]


def test_protobuf_reader_typed_fields():
    """Tensors stored as float_data / int64_data (not raw_data), negative ints, attributes."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    floats = helper.make_tensor("w", TensorProto.FLOAT, [2, 2], [1.5, -2.0, 3.25, 0.0])
    ints = helper.make_tensor("axes", TensorProto.INT64, [2], [-1, 7])
    node = helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0], name="t")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, "b"])], [floats, ints],
    )  # fmt: skip
    parsed = nb.parse_model(helper.make_model(graph).SerializeToString())
    np.testing.assert_array_equal(parsed.graph.initializers["w"], [[1.5, -2.0], [3.25, 0.0]])
    np.testing.assert_array_equal(parsed.graph.initializers["axes"], [-1, 7])
    assert parsed.graph.nodes[0].attrs == {"perm": [1, 0]}
    assert parsed.graph.inputs == {"x": [None, 2]}


def test_garbage_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x0a\xff\xff\xff\xff\x0f not protobuf")
    for backend in ("numpy", "auto"):
        with pytest.raises(ModelFormatError) as err:
            Model(bad, backend=backend)
        assert "\n" not in str(err.value)


def _edited(path: str, out: str, edit) -> str:
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(path)
    edit(proto, onnx)
    onnx.save(proto, out)
    return out


def test_unknown_op_is_refused_by_fast_backends_and_run_by_auto(exported_models, tmp_path):
    _, path = exported_models[("lstm", 1)]

    def add_abs(proto, onnx):  # y = Abs(y): an op the numpy interpreter does not implement
        for node in proto.graph.node:
            node.output[:] = [o if o != "y" else "y_pre" for o in node.output]
        proto.graph.node.append(onnx.helper.make_node("Abs", ["y_pre"], ["y"]))

    edited = _edited(path, str(tmp_path / "abs.onnx"), add_abs)
    for backend in ("numpy", "c"):
        with pytest.raises(ModelFormatError, match="Abs"):
            Model(edited, backend=backend)
    auto = Model(edited)
    assert auto.backend == "onnxruntime" and "Abs" in auto.fallback_reason
    assert auto.stream().step(np.ones(3)).shape == (3,)


def test_graph_disagreeing_with_metadata_is_not_fused(exported_models, tmp_path):
    """Flip the residual flag: the cells are recognisable but the network is not what
    the metadata says. The C backend refuses; numpy falls back to interpreting the
    graph and still matches onnxruntime."""
    _, path = exported_models[("gru", 1)]

    def flip(proto, onnx):
        for prop in proto.metadata_props:
            if prop.key == "residual":
                prop.value = "0" if prop.value == "1" else "1"

    edited = _edited(path, str(tmp_path / "flipped.onnx"), flip)
    with pytest.raises(ModelFormatError, match="does not compute"):
        Model(edited, backend="c")
    ref, interp = Model(edited, backend="onnxruntime"), Model(edited, backend="numpy")
    state, X = random_start(ref, 2)
    y_ref, _ = stream_outputs(ref, state, X[:8], 2)
    y, _ = stream_outputs(interp, state, X[:8], 2)
    assert np.max(np.abs(y - y_ref)) <= TOL


def test_unrolled_graph_runs_on_numpy_backend(exported_models, tmp_path):
    unrolled = pytest.importorskip("edgernn.export.unrolled")
    if not hasattr(unrolled, "export_unrolled"):
        pytest.skip("export_unrolled not available")
    model, _ = exported_models[("lstm", 2)]
    path = str(tmp_path / "unrolled.onnx")
    unrolled.export_unrolled(model, path)
    ref, fast = Model(path, backend="onnxruntime"), Model(path, backend="numpy")
    state, X = random_start(ref, 3)
    y_ref, s_ref = stream_outputs(ref, state, X[:10], 3)
    y, s = stream_outputs(fast, state, X[:10], 3)
    assert np.max(np.abs(y - y_ref)) <= TOL


@pytest.mark.parametrize("backend", ["onnxruntime", *FAST_BACKENDS])
def test_bad_sample_leaves_state_untouched(exported_models, backend):
    _, path = exported_models[("lstm", 2)]
    model = Model(path, backend=backend)
    stream = model.stream()
    stream.step(np.arange(3.0))
    before = stream.state
    for bad in ([np.nan, 0, 0], [0, np.inf, 0]):
        with pytest.raises(InputError, match="NaN or inf"):
            stream.step(np.asarray(bad, dtype=np.float32))
    with pytest.raises(InputError, match="sample 1 "):
        stream.run(np.array([[0, 0, 0], [0, np.nan, 0]], dtype=np.float32))
    with pytest.raises(InputError, match="shape"):
        stream.step(np.zeros(4))
    with pytest.raises(InputError, match="not numeric"):
        stream.step(["a", "b", "c"])
    after = stream.state
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])


@pytest.mark.parametrize("backend", ["onnxruntime", *FAST_BACKENDS])
def test_split_resume_and_outputs_are_fresh_arrays(exported_models, backend):
    _, path = exported_models[("gru", 2)]
    model = Model(path, backend=backend)
    X = np.random.default_rng(3).standard_normal((12, 5, 3)).astype(np.float32) * 10
    whole = model.stream(batch=5).run(X)
    first = model.stream(batch=5)
    ys = [first.step(x) for x in X[:7]]  # every returned forecast must survive later steps
    resumed = model.stream(state=first.state, batch=5)
    rest = resumed.run(X[7:])
    np.testing.assert_allclose(np.concatenate([np.stack(ys), rest]), whole, rtol=0, atol=1e-6)
    resumed.reset()
    assert all(not v.any() for v in resumed.state.values())


def test_auto_falls_back_without_a_compiler(exported_models, tmp_path, monkeypatch):
    _, path = exported_models[("rnn", 1)]
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("EDGERNN_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(EdgernnError, match="no C compiler"):
        Model(path, backend="c")
    auto = Model(path)
    assert auto.backend == "onnxruntime" and "compiler" in auto.fallback_reason
    monkeypatch.setenv("EDGERNN_BACKEND", "numpy")
    assert Model(path).backend == "numpy"


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler")
def test_broken_compiler_falls_back(exported_models, tmp_path, monkeypatch):
    _, path = exported_models[("rnn", 1)]
    fake = tmp_path / "cc"
    fake.write_text("#!/bin/sh\necho 'fake-cc: internal error' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    monkeypatch.setenv("EDGERNN_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(EdgernnError, match="compiling the C step failed"):
        Model(path, backend="c")
    assert Model(path).backend == "onnxruntime"


_BLOCKED = """
import sys, json
import numpy as np
sys.modules["onnxruntime"] = None
sys.modules["onnx"] = None
sys.modules["torch"] = None
from edgernn.runtime import Model
x = np.load(sys.argv[2])
out = {}
for backend in ("numpy", "auto"):
    model = Model(sys.argv[1], backend=backend)
    out[backend] = [model.backend, model.stream(batch=x.shape[1]).run(x).tolist()]
print(json.dumps(out))
"""


def test_numpy_backend_runs_with_onnx_and_onnxruntime_blocked(exported_models, tmp_path):
    _, path = exported_models[("lstm", 2)]
    X = np.random.default_rng(0).standard_normal((6, 2, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    want = Model(path, backend="onnxruntime").stream(batch=2).run(X)
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCKED, path, str(tmp_path / "x.npy")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["numpy"][0] == "numpy"
    assert out["auto"][0] in ("c", "numpy")
    for backend in out:
        assert np.max(np.abs(np.asarray(out[backend][1]) - want)) <= 1e-4  # raw units


def test_runtime_import_pulls_in_no_torch_onnx_or_onnxruntime():
    code = (
        "import sys, json, edgernn.runtime, edgernn.runtime.numpy_backend, edgernn.runtime.cstep;"
        "print(json.dumps([m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler")
def test_compiled_library_is_cached_per_shape(exported_models, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGERNN_CACHE_DIR", str(tmp_path))
    a, b = exported_models[("lstm", 1)][1], exported_models[("gru", 1)][1]
    Model(a, backend="c")
    Model(a, backend="c")
    Model(b, backend="c")
    libs = os.listdir(tmp_path / "cstep")
    assert len([f for f in libs if f.endswith(".so")]) == 2  # one per shape, not per load
