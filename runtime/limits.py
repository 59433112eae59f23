"""Resource limits on model files, checked before any parser or runtime allocates.

A 28 KB graph of 40 chained `Concat(x, x)` asks constant folding and onnxruntime for
2^40 elements; a declared [10^12] input makes a kernel allocate it. `check_graph_limits`
walks the protobuf wire format (the runtime's own reader, numpy_backend.py; no onnx
import, no tensor data decoded beyond small integer constants) and refuses, in one
line, a file that is too large, has too many nodes or nested graphs, declares too
large a tensor, or whose intermediate tensors grow too large. Intermediate sizes are
estimated from static shapes: graph inputs (symbolic dimensions counted as 1),
initializers and constants, propagated through the shape-changing ops (Concat, Tile,
Expand, Pad, Reshape, ConstantOfShape, MatMul, the recurrent cells, ...). An op it
cannot follow leaves its outputs unknown: this bounds what can be bounded without
shape inference, it is not a proof that a graph is small.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from edgernn.errors import ModelFormatError
from edgernn.runtime import numpy_backend as nb

MAX_FILE_BYTES = 1 << 30  # 1 GiB: edge models are KBs to MBs
MAX_NODES = 500_000  # an unrolled export of a long window has thousands
MAX_TENSOR_ELEMENTS = 1 << 27  # 128 Mi elements (512 MB of float32) for any one tensor
MAX_TOTAL_ELEMENTS = 1 << 29  # all estimated intermediates together
MAX_GRAPH_DEPTH = 16  # subgraphs (If/Loop bodies) nested in subgraphs
SMALL_CONSTANT = 4096  # integer constants read for shape arithmetic (shapes, repeats, pads)

Shape = tuple[int, ...]


def check_graph_limits(path: str | os.PathLike) -> None:
    """ModelFormatError (one line) if the model file at `path` exceeds a limit."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot read ({e.strerror})") from e
    if size > MAX_FILE_BYTES:
        raise ModelFormatError(f"{path}: {size:,} bytes, over the {MAX_FILE_BYTES:,}-byte limit")
    with open(path, "rb") as f:
        data = f.read()
    try:
        _check_model(memoryview(data), path)
    except ModelFormatError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, struct.error,
            UnicodeDecodeError, RecursionError) as e:  # fmt: skip
        raise ModelFormatError(f"{path} is not a loadable ONNX model ({e})") from e


# ----------------------------------------------------------------------------------
# walking the wire format


@dataclass
class _Walk:
    source: str
    nodes: int = 0
    total: int = 0  # estimated elements of every intermediate tensor so far


@dataclass
class _Node:
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)


def _check_model(buf: memoryview, source: str) -> None:
    walk = _Walk(source)
    sizes: dict[str, int] = {}
    for number, wire, value in nb._fields(buf):
        if number == 7 and wire == nb._LEN:
            _check_graph(value, walk, depth=0)
        elif number == 14 and wire == nb._LEN:
            _check_metadata_entry(value, source, sizes)
    if sizes.get("layers", 1) * sizes.get("hidden", 1) > MAX_TENSOR_ELEMENTS:
        raise ModelFormatError(
            f"{source}: metadata layers x hidden ({sizes['layers']} x {sizes['hidden']}) "
            "is over the size limit of a state"
        )


def _check_graph(buf, walk: _Walk, depth: int) -> None:
    if depth > MAX_GRAPH_DEPTH:
        raise ModelFormatError(f"{walk.source}: subgraphs nested over {MAX_GRAPH_DEPTH} deep")
    nodes: list[_Node] = []
    shapes: dict[str, Optional[Shape]] = {}
    values: dict[str, np.ndarray] = {}  # small integer constants
    for number, wire, value in nb._fields(buf):
        if wire != nb._LEN:
            continue
        if number == 1:
            walk.nodes += 1
            if walk.nodes > MAX_NODES:
                raise ModelFormatError(f"{walk.source}: over {MAX_NODES} nodes")
            nodes.append(_node(value, walk, depth))
        elif number == 5:
            name, dims, small = _tensor_head(value, walk.source)
            shapes[name] = dims
            if small is not None:
                values[name] = small
        elif number in (11, 12, 13):
            name, dims = _value_info(value, walk.source)
            if number == 11 and name not in shapes:
                shapes[name] = dims
        elif number == 15:
            _tensor_head(next((v for n, w, v in nb._fields(value) if n == 1), b""), walk.source)
    _estimate(nodes, shapes, values, walk)


def _node(buf, walk: _Walk, depth: int) -> _Node:
    node = _Node("", [], [])
    for number, wire, value in nb._fields(buf):
        if wire != nb._LEN:
            continue
        if number == 1:
            node.inputs.append(nb._text(value))
        elif number == 2:
            node.outputs.append(nb._text(value))
        elif number == 4:
            node.op = nb._text(value)
        elif number == 5:
            name, attr = _attribute(value, walk, depth)
            node.attrs[name] = attr
    return node


def _attribute(buf, walk: _Walk, depth: int):
    """(name, value) for the ints/int/tensor attributes shape arithmetic needs; subgraphs
    are walked (their nodes count) but not estimated through."""
    name, ints, scalar = "", [], None
    for number, wire, value in nb._fields(buf):
        if number == 1 and wire == nb._LEN:
            name = nb._text(value)
        elif number == 3 and wire == nb._VARINT:
            scalar = nb._signed(value)
        elif number == 4 and wire == nb._LEN:
            scalar = bytes(value).decode("utf-8", "replace")
        elif number == 8:
            ints.extend(nb._ints(wire, value))
        elif number == 5 and wire == nb._LEN:
            _, dims, small = _tensor_head(value, walk.source)
            scalar = ("tensor", dims, small)
        elif number == 10 and wire == nb._LEN:
            _tensor_head(value, walk.source)
        elif number in (6, 11) and wire == nb._LEN:
            _check_graph(value, walk, depth + 1)
    return name, scalar if scalar is not None else ints


def _elements(dims: Shape, what: str, source: str) -> int:
    n = 1
    for d in dims:
        if d < 0:
            raise ModelFormatError(f"{source}: {what} has a negative dimension {list(dims)}")
        n *= d
    if n > MAX_TENSOR_ELEMENTS:
        raise ModelFormatError(
            f"{source}: {what} would hold {n:.3g} elements (shape {list(dims)[:8]}), over "
            f"the limit of {MAX_TENSOR_ELEMENTS:.3g}"
        )
    return n


def _tensor_head(buf, source: str) -> tuple[str, Shape, Optional[np.ndarray]]:
    """(name, declared dims, values if a small integer tensor) without decoding big data."""
    name, dims, dtype = "", [], 1
    for number, wire, value in nb._fields(buf):
        if number == 1:
            dims.extend(nb._ints(wire, value))
        elif number == 2 and wire == nb._VARINT:
            dtype = value
        elif number == 8 and wire == nb._LEN:
            name = nb._text(value)
    n = _elements(tuple(dims), f"tensor {name!r}", source)
    small = None
    if dtype in (6, 7) and n <= SMALL_CONSTANT:  # int32 / int64: shapes, repeats, pads
        try:
            small = nb._tensor(buf)[1].astype(np.int64)
        except (ModelFormatError, ValueError, TypeError, IndexError, struct.error):
            small = None
    return name, tuple(dims), small


def _value_info(buf, source: str) -> tuple[str, Optional[Shape]]:
    name, shape = nb._value_info(buf)
    _check_dim_names(buf, source)
    if not shape:
        return name, None  # no shape declared (or a scalar): nothing to bound
    dims = tuple(1 if d is None else d for d in shape)  # symbolic: counted as 1
    _elements(dims, f"declared tensor {name!r}", source)
    return name, dims


def _check_dim_names(buf, source: str) -> None:
    """Symbolic dimension names and denotations are text onnxruntime decodes as UTF-8
    (`get_inputs()` raised UnicodeDecodeError on a damaged one)."""
    for number, wire, type_proto in nb._fields(buf):
        if number != 2 or wire != nb._LEN:
            continue
        for n1, w1, tensor in nb._fields(type_proto):
            for n2, w2, shape in nb._fields(tensor) if n1 == 1 and w1 == nb._LEN else ():
                for n3, w3, dim in nb._fields(shape) if n2 == 2 and w2 == nb._LEN else ():
                    for n4, w4, text in nb._fields(dim) if n3 == 1 and w3 == nb._LEN else ():
                        if n4 in (2, 3) and w4 == nb._LEN:
                            nb._text(text)  # UnicodeDecodeError: not loadable


# ----------------------------------------------------------------------------------
# metadata: sizes a runtime allocates from (hidden, layers, state shapes)


def _check_metadata_entry(buf, source: str, sizes: dict[str, int]) -> None:
    entry = {n: v for n, w, v in nb._fields(buf) if w == nb._LEN}
    try:  # onnxruntime fails on (or crashes decoding) metadata that is not UTF-8
        key = bytes(entry.get(1, b"")).decode("utf-8")
        bytes(entry.get(2, b"")).decode("utf-8")
    except UnicodeDecodeError:
        raise ModelFormatError(f"{source}: a metadata entry is not UTF-8 text") from None
    raw = bytes(entry.get(2, b""))
    if key not in ("layers", "hidden", "state") or len(raw) > 1 << 20:
        return  # everything else (and malformed values) is metadata.py's to judge
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return
    if key in ("layers", "hidden") and type(value) is int:
        if value > MAX_TENSOR_ELEMENTS:
            raise ModelFormatError(f"{source}: metadata {key} {value} is over the size limit")
        sizes[key] = max(value, 1)
    if key == "state" and isinstance(value, list):
        for spec in value[:1024]:
            shape = spec.get("shape") if isinstance(spec, dict) else None
            if isinstance(shape, list) and all(type(d) is int for d in shape if d != "batch"):
                dims = tuple(1 if d == "batch" else d for d in shape)
                _elements(dims, f"metadata state {spec.get('input')!r}", source)


# ----------------------------------------------------------------------------------
# estimating intermediate sizes from static shapes


def _estimate(nodes: list[_Node], shapes: dict, values: dict, walk: _Walk) -> None:
    for node in nodes:
        ins = [shapes.get(i) if i else None for i in node.inputs]
        try:
            outs = _infer(node, ins, [values.get(i) for i in node.inputs], values)
        except (ValueError, IndexError, TypeError, KeyError, OverflowError):
            outs = None  # an op used in a way not followed here: outputs unknown
        _fold_value(node, [values.get(i) for i in node.inputs], values)
        for k, name in enumerate(node.outputs):
            shape = outs[k] if outs is not None and k < len(outs) else None
            shapes[name] = shape
            if shape is not None:
                walk.total += _elements(shape, f"intermediate {name!r} ({node.op})", walk.source)
                if walk.total > MAX_TOTAL_ELEMENTS:
                    raise ModelFormatError(
                        f"{walk.source}: intermediate tensors would hold over "
                        f"{MAX_TOTAL_ELEMENTS:.3g} elements in all (at {node.op} {name!r})"
                    )


_SAME = {
    "Identity",
    "Relu",
    "Sigmoid",
    "Tanh",
    "Neg",
    "Abs",
    "Exp",
    "Log",
    "Sqrt",
    "Erf",
    "Cast",
    "Softmax",
    "LogSoftmax",
    "Clip",
    "Dropout",
    "DequantizeLinear",
    "QuantizeLinear",
    "LeakyRelu",
    "Elu",
    "Selu",
    "HardSigmoid",
    "Softplus",
    "Not",
    "IsNaN",
    "IsInf",
    "Sign",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Round",
    "LayerNormalization",
    "BatchNormalization",
    "InstanceNormalization",
    "CumSum",
    "Slice",
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL2",
    "Trilu",
}  # fmt: skip  (Slice and the reductions: the input's shape as an upper bound)
_BROADCAST = {
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Equal", "Greater", "Less",
    "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Mod", "PRelu", "Sum", "Mean",
}  # fmt: skip


def _broadcast(*shapes: Shape) -> Shape:
    rank = max(len(s) for s in shapes)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    return tuple(max(dims) for dims in zip(*padded))


def _size(shape: Shape) -> int:
    return int(np.prod(shape, dtype=object)) if shape else 1


def _infer(node: _Node, ins: list, vals: list, values: dict) -> Optional[list]:
    op, a = node.op, node.attrs
    known = [s for s in ins if s is not None]
    if op == "Constant":
        value = a.get("value")
        if isinstance(value, tuple) and value[0] == "tensor":
            if value[2] is not None:
                values[node.outputs[0]] = value[2]
            return [value[1]]
        return [(len(a["value_ints"]),)] if "value_ints" in a else None
    if op == "Shape" and ins and ins[0] is not None:
        values[node.outputs[0]] = np.array(ins[0], np.int64)
        return [(len(ins[0]),)]
    if op == "ConstantOfShape":
        return [tuple(int(d) for d in vals[0])] if vals and vals[0] is not None else None
    if not ins or ins[0] is None:
        return None
    x = ins[0]
    if op in _SAME:
        return [x] * len(node.outputs)
    if op in _BROADCAST:
        present = [i for i in node.inputs if i]
        return [_broadcast(*known)] if len(known) == len(present) else None
    if op == "Concat":
        if len(known) != len(ins):
            return None
        axis = a.get("axis", 0)
        axis = axis + len(x) if axis < 0 else axis
        out = list(_broadcast(*known))
        out[axis] = sum(s[axis] for s in known)
        return [tuple(out)]
    if op == "Tile" and vals[1] is not None:
        return [tuple(d * int(r) for d, r in zip(x, vals[1]))]
    if op == "Expand" and vals[1] is not None:
        return [_broadcast(x, tuple(int(d) for d in vals[1]))]
    if op == "Pad":
        pads = vals[1] if len(vals) > 1 and vals[1] is not None else a.get("pads")
        if pads is None or len(pads) != 2 * len(x):
            return None
        return [tuple(d + int(pads[i]) + int(pads[i + len(x)]) for i, d in enumerate(x))]
    if op in ("Resize", "Upsample"):
        scales = next((v for v in vals[1:] if v is not None and len(v) == len(x)), None)
        return None if scales is None else [tuple(d * max(int(s), 1) for d, s in zip(x, scales))]
    if op == "Reshape" and vals[1] is not None:
        return [_reshape(x, [int(d) for d in vals[1]])]
    if op in ("Flatten", "Squeeze", "Unsqueeze", "Transpose"):
        return [(_size(x),)]  # same number of elements
    if op == "MatMul" and len(known) == 2 and ins[1] is not None:
        b = ins[1]
        if len(x) < 2 or len(b) < 2:
            return [(_size(x) * _size(b) // max(x[-1], 1),)]
        return [_broadcast(x[:-2], b[:-2]) + (x[-2], b[-1])]
    if op == "Gemm" and ins[1] is not None and len(x) == 2 and len(ins[1]) == 2:
        m = x[1] if a.get("transA", 0) else x[0]
        n = ins[1][0] if a.get("transB", 0) else ins[1][1]
        return [(m, n)]
    if op == "Gather" and len(known) == 2 and ins[1] is not None:
        axis = a.get("axis", 0)
        axis = axis + len(x) if axis < 0 else axis
        return [x[:axis] + ins[1] + x[axis + 1 :]]
    if op == "Split":
        return [x] * len(node.outputs)  # each part at most the input
    if op in ("LSTM", "GRU", "RNN") and len(x) == 3:
        h = a.get("hidden_size")
        if type(h) is not int:
            return None
        d = 2 if a.get("direction") == "bidirectional" else 1
        t, b = (x[1], x[0]) if a.get("layout", 0) else (x[0], x[1])
        return [(t, d, b, h), (d, b, h), (d, b, h)]
    return None


_INT_OPS = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Max": np.maximum,
    "Min": np.minimum,
}  # fmt: skip


def _fold_value(node: _Node, vals: list, values: dict) -> None:
    """Small integer arithmetic on shapes (Shape -> Mul -> Expand): its values, so the
    size it leads to is known."""
    if not vals or any(v is None for v in vals) or len(node.outputs) != 1:
        return
    try:
        if node.op in _INT_OPS and len(vals) == 2:
            out = _INT_OPS[node.op](vals[0], vals[1])
        elif node.op == "Concat":
            out = np.concatenate([np.atleast_1d(v) for v in vals])
        elif node.op in ("Identity", "Cast", "Squeeze", "Unsqueeze", "Reshape"):
            out = vals[0].reshape(-1)
        elif node.op == "Gather" and len(vals) == 2:
            out = np.take(vals[0], vals[1], axis=node.attrs.get("axis", 0) or 0)
        else:
            return
    except (ValueError, IndexError, TypeError, OverflowError):
        return
    if out.size <= SMALL_CONSTANT:
        values[node.outputs[0]] = np.asarray(out, np.int64)


def _reshape(x: Shape, shape: list[int]) -> Shape:
    total = _size(x)
    dims = [x[i] if d == 0 and i < len(x) else d for i, d in enumerate(shape)]
    if dims.count(-1) == 1:
        rest = _size(tuple(d for d in dims if d != -1))
        dims[dims.index(-1)] = total // rest if rest else 0
    return tuple(dims)
