"""Resource limits on model files (runtime/limits.py): memory bombs are refused in one
line before any backend allocates, real models pass."""

from __future__ import annotations

import resource

import numpy as np
import pytest
from conftest import run_cli

from edgernn.errors import ModelFormatError
from edgernn.runtime import limits
from edgernn.runtime.limits import check_graph_limits
from edgernn.runtime.model import Model

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _save(tmp_path, nodes, inputs, inits=(), name="bomb.onnx", opset=17):
    out = nodes[-1].output[0]
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        initializer=list(inits),
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / name
    onnx.save(model, str(path))
    return str(path)


def _x(shape=("batch", 3)):
    return [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))]


def _concat_chain(n: int = 40):
    nodes, prev = [], "x"
    for i in range(n):
        nodes.append(helper.make_node("Concat", [prev, prev], [f"c{i}"], axis=1))
        prev = f"c{i}"
    return nodes


def _const(name, values):
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _declared_only(name, dims):
    t = TensorProto(name=name, data_type=TensorProto.FLOAT)
    t.dims.extend(dims)
    return t


BOMBS = {
    "concat chain": lambda: (_concat_chain(), _x(), []),
    "tile": lambda: ([helper.make_node("Tile", ["x", "r"], ["y"])], _x(), [_const("r", [1, 10**9])]),
    "expand": lambda: (
        [helper.make_node("Expand", ["x", "s"], ["y"])], _x((1, 1)), [_const("s", [10**5, 10**5])],
    ),
    "constant of shape": lambda: (
        [helper.make_node("ConstantOfShape", ["s"], ["z"]), helper.make_node("Add", ["x", "z"], ["y"])],
        _x((1, 1)), [_const("s", [10**6, 10**6])],
    ),
    "shape arithmetic": lambda: (
        [
            helper.make_node("Shape", ["x"], ["sh"]),
            helper.make_node("Mul", ["sh", "k"], ["big"]),
            helper.make_node("Expand", ["x", "big"], ["y"]),
        ],
        _x((1, 3)), [_const("k", [10**5, 10**5])],
    ),
    "declared input": lambda: ([helper.make_node("Relu", ["x"], ["y"])], _x((10**6, 10**6)), []),
    "declared initializer": lambda: (
        [helper.make_node("Add", ["x", "w"], ["y"])], _x(),
        [_declared_only("w", [10**6, 10**6])],
    ),
}  # fmt: skip


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_memory_bombs_are_refused_before_any_backend_allocates(tmp_path, bomb):
    path = _save(tmp_path, *BOMBS[bomb]())
    with pytest.raises(ModelFormatError, match="over the limit") as e:
        check_graph_limits(path)
    assert "\n" not in str(e.value)
    for backend in ("numpy", "onnxruntime", "auto"):
        with pytest.raises(ModelFormatError, match="over the limit"):
            Model(path, backend=backend)


def test_the_concat_bomb_through_the_cli_is_one_line_in_bounded_memory(tmp_path):
    path = _save(tmp_path, *BOMBS["concat chain"]())
    for argv in (["info", path], ["run", path, "--csv", path], ["bench", path]):
        proc = run_cli(*argv, timeout=60)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.startswith("edgernn: error:") and "Traceback" not in proc.stderr
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KB on Linux
    assert children < 1_000_000  # the issue saw 2.1 GB, then a traceback


def test_node_count_file_size_and_nesting_limits(tmp_path, monkeypatch):
    path = _save(tmp_path, _concat_chain(3), _x())
    check_graph_limits(path)  # 3 doublings: small
    monkeypatch.setattr(limits, "MAX_NODES", 2)
    with pytest.raises(ModelFormatError, match="over 2 nodes"):
        check_graph_limits(path)
    monkeypatch.setattr(limits, "MAX_NODES", 100)
    monkeypatch.setattr(limits, "MAX_FILE_BYTES", 100)
    with pytest.raises(ModelFormatError, match="bytes, over the 100-byte limit"):
        Model(path)
    monkeypatch.setattr(limits, "MAX_FILE_BYTES", 1 << 30)
    leaf = body = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "b", [], [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])  # fmt: skip
    for depth in range(20):
        node = helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=leaf)
        body = helper.make_graph([node], f"b{depth}", [], [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])  # fmt: skip
    deep = _save(tmp_path, [node], _x(), name="deep.onnx")
    with pytest.raises(ModelFormatError, match="nested over 16 deep"):
        check_graph_limits(deep)


def test_every_real_model_passes(exported_models, tmp_path):
    from edgernn.export.unrolled import export_unrolled

    for _, path in exported_models.values():
        check_graph_limits(path)
    for static in (None, 4):
        unrolled = str(tmp_path / f"unrolled{static}.onnx")
        export_unrolled(exported_models[("lstm", 2)][0], unrolled, static_batch=static)
        check_graph_limits(unrolled)


def test_metadata_state_sizes_are_bounded(exported_models, tmp_path):
    model = onnx.load(exported_models[("gru", 1)][1])
    for key, value in (("hidden", "100000"), ("layers", "100000")):
        for p in model.metadata_props:
            if p.key == key:
                p.value = value
    path = str(tmp_path / "huge-state.onnx")
    onnx.save(model, path)
    with pytest.raises(ModelFormatError, match="layers x hidden .* over the size limit"):
        check_graph_limits(path)
