"""Run an exported edgernn graph with numpy alone: no onnx, no onnxruntime.

Three layers, each usable on its own:

* `load_onnx(path)` reads the ModelProto fields the runtime needs (initializers,
  nodes, attributes, graph inputs/outputs, metadata_props) with a ~100-line
  protobuf wire-format reader. That is what lets a board with no onnxruntime wheel
  (32-bit Raspberry Pi OS) load the same .onnx file.
* `Interpreter` executes the graph node by node for the small op set the exporters
  emit (the RNN/LSTM/GRU cells, elementwise maths, shape ops, MatMul/Gemm,
  DequantizeLinear). It is the numpy reference of the graph's semantics.
* `Network` is the graph recognised as what it is: normalise, a stack of cells,
  a linear head, optional residual. `extract_network` reads the weights out of the
  cell nodes and then *checks* the recognition by running the interpreter and the
  fused network side by side on a random probe: a graph that merely looks similar
  is refused, never run wrong. The fused step is a few matmuls and ufuncs per
  layer; the C backend (cstep.py) compiles the same Network.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from edgernn.errors import EdgernnError, ModelFormatError

# ----------------------------------------------------------------------------------
# protobuf wire format (https://protobuf.dev/programming-guides/encoding/)

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise ValueError("varint too long")


def _fields(buf: memoryview):
    """Yield (field number, wire type, value) of one message; LEN values are memoryviews."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire == _LEN:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise ValueError("truncated message")
            value, pos = buf[pos : pos + size], pos + size
        elif wire == _I64:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == _I32:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value


def _signed(v: int) -> int:
    """int64 fields arrive as unsigned varints (two's complement, 10 bytes)."""
    return v - (1 << 64) if v >= 1 << 63 else v


def _ints(wire: int, value) -> list[int]:
    """A repeated int64 field: packed (LEN) or one varint."""
    if wire == _VARINT:
        return [_signed(value)]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(_signed(v))
    return out


def _text(value) -> str:
    return bytes(value).decode("utf-8")


# ONNX TensorProto.DataType -> numpy
_DTYPES = {
    1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32,
    7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64,
}  # fmt: skip


def _tensor(buf) -> tuple[str, np.ndarray]:
    name, dims, dtype_code, raw = "", [], 1, None
    floats, int32s, int64s, doubles = [], [], [], []
    for number, wire, value in _fields(buf):
        if number == 1:
            dims.extend(_ints(wire, value))
        elif number == 2:
            dtype_code = value
        elif number == 8:
            name = _text(value)
        elif number == 9:
            raw = bytes(value)
        elif number == 4:
            floats.append(value)
        elif number == 5:
            int32s.extend(_ints(wire, value))
        elif number == 7:
            int64s.extend(_ints(wire, value))
        elif number == 10:
            doubles.append(value)
        elif number == 14 and value == 1:
            raise ModelFormatError(f"tensor {name!r} keeps its data in an external file")
    if dtype_code not in _DTYPES:
        raise ModelFormatError(f"tensor {name!r} has unsupported data type {dtype_code}")
    dtype = np.dtype(_DTYPES[dtype_code]).newbyteorder("<")
    if raw is not None:
        arr = np.frombuffer(raw, dtype=dtype)
    elif floats:
        arr = np.frombuffer(b"".join(bytes(v) for v in floats), dtype="<f4")
    elif doubles:
        arr = np.frombuffer(b"".join(bytes(v) for v in doubles), dtype="<f8")
    elif int64s:
        arr = np.array(int64s, dtype=np.int64)
    else:
        # int32_data also carries the small types (int8, uint8, bool, float16 bits).
        arr = np.array(int32s, dtype=np.int32)
        arr = arr.astype(np.uint16).view(np.float16) if dtype_code == 10 else arr
    arr = arr.astype(dtype.newbyteorder("="), copy=False)
    size = int(np.prod(dims)) if dims else 1
    if arr.size != size:
        raise ModelFormatError(f"tensor {name!r} holds {arr.size} values for shape {dims}")
    return name, arr.reshape(dims).copy()


@dataclass
class Node:
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict
    name: str = ""
    domain: str = ""


def _attribute(buf):
    name, kind = "", 0
    scalar = {}
    ints, floats, strings, tensors = [], [], [], []
    for number, wire, value in _fields(buf):
        if number == 1:
            name = _text(value)
        elif number == 20:
            kind = value
        elif number == 2:
            scalar["f"] = struct.unpack("<f", value)[0]
        elif number == 3:
            scalar["i"] = _signed(value)
        elif number == 4:
            scalar["s"] = bytes(value).decode("utf-8", "replace")
        elif number == 5:
            scalar["t"] = _tensor(value)[1]
        elif number == 7:
            floats.extend(
                struct.unpack(f"<{len(value) // 4}f", value) if wire == _LEN else
                struct.unpack("<f", value)
            )  # fmt: skip
        elif number == 8:
            ints.extend(_ints(wire, value))
        elif number == 9:
            strings.append(bytes(value).decode("utf-8", "replace"))
        elif number == 10:
            tensors.append(_tensor(value)[1])
        elif number in (6, 11):
            raise ModelFormatError(f"attribute {name!r} holds a subgraph, which is not supported")
    # AttributeType: FLOAT=1 INT=2 STRING=3 TENSOR=4 FLOATS=6 INTS=7 STRINGS=8 TENSORS=9
    by_kind = {1: "f", 2: "i", 3: "s", 4: "t"}
    if kind in by_kind:
        return name, scalar.get(by_kind[kind])
    return name, {6: floats, 7: ints, 8: strings, 9: tensors}.get(
        kind, next(iter(scalar.values()), ints)
    )


def _node(buf) -> Node:
    node = Node("", [], [], {})
    for number, _, value in _fields(buf):
        if number == 1:
            node.inputs.append(_text(value))
        elif number == 2:
            node.outputs.append(_text(value))
        elif number == 3:
            node.name = _text(value)
        elif number == 4:
            node.op_type = _text(value)
        elif number == 5:
            key, attr = _attribute(value)
            node.attrs[key] = attr
        elif number == 7:
            node.domain = _text(value)
    return node


def _value_info(buf) -> tuple[str, list]:
    """(name, shape) with ints for fixed dims and None for symbolic ones."""
    name, shape = "", []
    for number, _, value in _fields(buf):
        if number == 1:
            name = _text(value)
        elif number == 2:  # TypeProto
            for n2, _, tensor_type in _fields(value):
                if n2 != 1:
                    continue
                for n3, _, shape_proto in _fields(tensor_type):
                    if n3 != 2:
                        continue
                    for n4, _, dim in _fields(shape_proto):
                        if n4 != 1:
                            continue
                        size = None
                        for n5, _, v in _fields(dim):
                            if n5 == 1:
                                size = _signed(v)
                        shape.append(size)
    return name, shape


@dataclass
class Graph:
    nodes: list[Node]
    initializers: dict[str, np.ndarray]
    inputs: dict[str, list]  # name -> shape (None for symbolic dims); initializers excluded
    outputs: dict[str, list]


@dataclass
class OnnxModel:
    graph: Graph
    metadata: dict[str, str]
    opset: int
    ir_version: int = 0
    producer: str = ""


def _graph(buf) -> Graph:
    nodes, inits, inputs, outputs = [], {}, {}, {}
    for number, _, value in _fields(buf):
        if number == 1:
            nodes.append(_node(value))
        elif number == 5:
            name, arr = _tensor(value)
            inits[name] = arr
        elif number == 11:
            name, shape = _value_info(value)
            inputs[name] = shape
        elif number == 12:
            name, shape = _value_info(value)
            outputs[name] = shape
        elif number == 15:
            raise ModelFormatError("sparse initializers are not supported")
    for name in inits:
        inputs.pop(name, None)
    return Graph(nodes, inits, inputs, outputs)


def parse_model(data: bytes, source: str = "model") -> OnnxModel:
    """Decode a serialized ModelProto; ModelFormatError if it is not one."""
    graph, metadata, opset, ir_version, producer = None, {}, 0, 0, ""
    try:
        for number, _, value in _fields(memoryview(data)):
            if number == 1:
                ir_version = value
            elif number == 2:
                producer = _text(value)
            elif number == 7:
                graph = _graph(value)
            elif number == 8:  # OperatorSetIdProto: domain 1, version 2
                entry = dict((n, v) for n, _, v in _fields(value))
                if not bytes(entry.get(1, b"")) or bytes(entry.get(1, b"")) == b"ai.onnx":
                    opset = max(opset, int(entry.get(2, 0)))
            elif number == 14:
                entry = {n: _text(v) for n, _, v in _fields(value)}
                metadata[entry.get(1, "")] = entry.get(2, "")
    except ModelFormatError as e:
        raise ModelFormatError(f"{source}: {e}") from e
    except (ValueError, IndexError, TypeError, UnicodeDecodeError, struct.error) as e:
        raise ModelFormatError(f"{source} is not a readable ONNX model ({e})") from e
    if graph is None or not graph.nodes:
        raise ModelFormatError(f"{source} is not an ONNX model (no graph)")
    return OnnxModel(graph, metadata, opset, ir_version, producer)


def load_onnx(path: str | os.PathLike) -> OnnxModel:
    with open(path, "rb") as f:
        return parse_model(f.read(), source=os.fspath(path))


# ----------------------------------------------------------------------------------
# activations shared by the interpreter and the fused step


def sigmoid(x: np.ndarray) -> np.ndarray:
    # The tanh form never overflows (1 / (1 + exp(-x)) warns for x < -88).
    return np.tanh(x * np.float32(0.5)) * np.float32(0.5) + np.float32(0.5)


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.float32(0))


_ACTIVATIONS: dict[str, Callable] = {"sigmoid": sigmoid, "tanh": np.tanh, "relu": relu}


# ----------------------------------------------------------------------------------
# the interpreter


def _axes(node: Node, env: dict, index: int) -> Optional[list[int]]:
    """Axes come as an attribute before opset 13 and as an optional input after."""
    if "axes" in node.attrs:
        return list(node.attrs["axes"])
    if len(node.inputs) > index and node.inputs[index]:
        return [int(a) for a in env[node.inputs[index]]]
    return None


def _slice(node, env, x):
    if "starts" in node.attrs:  # opset < 10
        starts, ends = node.attrs["starts"], node.attrs["ends"]
        axes = node.attrs.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        ins = node.inputs + [""] * (5 - len(node.inputs))
        starts, ends = list(env[ins[1]]), list(env[ins[2]])
        axes = list(env[ins[3]]) if ins[3] else list(range(len(starts)))
        steps = list(env[ins[4]]) if ins[4] else [1] * len(starts)
    index = [slice(None)] * x.ndim
    for a, s, e, st in zip(axes, starts, ends, steps):
        index[int(a)] = slice(int(s), int(e), int(st))
    return x[tuple(index)]


def _split(node, env, x):
    axis = node.attrs.get("axis", 0)
    sizes = node.attrs.get("split")
    if sizes is None and len(node.inputs) > 1 and node.inputs[1]:
        sizes = [int(s) for s in env[node.inputs[1]]]
    if sizes is None:
        n = len(node.outputs)
        sizes = [-(-x.shape[axis] // n)] * n
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


def _gemm(node, env, a, b, c=None):
    if node.attrs.get("transA", 0):
        a = a.T
    if node.attrs.get("transB", 0):
        b = b.T
    out = np.float32(node.attrs.get("alpha", 1.0)) * (a @ b)
    if c is not None:
        out = out + np.float32(node.attrs.get("beta", 1.0)) * c
    return out


def _dequantize(node, env, x, scale, zero_point=None):
    axis = node.attrs.get("axis", 1)
    if scale.ndim == 1 and x.ndim > 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero_point = zero_point.reshape(shape) if zero_point is not None else None
    zp = 0 if zero_point is None else zero_point.astype(np.float32)
    return ((x.astype(np.float32) - zp) * scale).astype(np.float32)


def _check_cell_attrs(node: Node, defaults: list[str]) -> list[Callable]:
    a = node.attrs
    if a.get("direction", "forward") != "forward":
        raise ModelFormatError(f"{node.op_type} direction {a['direction']!r} is not supported")
    if a.get("layout", 0) != 0 or "clip" in a or a.get("input_forget", 0):
        raise ModelFormatError(f"{node.op_type} with layout/clip/input_forget is not supported")
    names = [s.lower() for s in a.get("activations", defaults)]
    unknown = [n for n in names if n not in _ACTIVATIONS]
    if unknown or len(names) != len(defaults):
        raise ModelFormatError(f"{node.op_type} activations {names} are not supported")
    return [_ACTIVATIONS[n] for n in names]


def _cell_inputs(node: Node, env: dict, n_state: int):
    ins = node.inputs + [""] * (8 - len(node.inputs))
    if ins[4]:
        raise ModelFormatError(f"{node.op_type} with sequence_lens is not supported")
    if node.op_type == "LSTM" and ins[7] and np.any(env[ins[7]]):
        raise ModelFormatError("LSTM peepholes are not supported")
    x, w, r = env[ins[0]], env[ins[1]][0], env[ins[2]][0]
    hidden = r.shape[-1]
    b = env[ins[3]][0] if ins[3] else np.zeros(2 * w.shape[0], np.float32)
    batch = x.shape[1]
    states = [
        env[ins[5 + i]][0] if ins[5 + i] else np.zeros((batch, hidden), np.float32)
        for i in range(n_state)
    ]
    return x, w, r, b, states


def _lstm(node, env, *_):
    f, g, h_act = _check_cell_attrs(node, ["Sigmoid", "Tanh", "Tanh"])
    x, w, r, b, (h, c) = _cell_inputs(node, env, 2)
    hidden = r.shape[-1]
    ys = []
    for xt in x:
        gates = xt @ w.T + h @ r.T + b[: 4 * hidden] + b[4 * hidden :]  # (B, 4H) i,o,f,c
        i, o, fg, cc = np.split(gates, 4, axis=1)
        c = f(fg) * c + f(i) * g(cc)
        h = f(o) * h_act(c)
        ys.append(h)
    return np.stack(ys)[:, None], h[None], c[None]


def _gru(node, env, *_):
    f, g = _check_cell_attrs(node, ["Sigmoid", "Tanh"])
    x, w, r, b, (h,) = _cell_inputs(node, env, 1)
    hidden = r.shape[-1]
    wb, rb = b[: 3 * hidden], b[3 * hidden :]
    rz, rr, rh = np.split(r, 3)
    ys = []
    for xt in x:
        xw = xt @ w.T + wb  # (B, 3H) z,r,h
        z = f(xw[:, :hidden] + h @ rz.T + rb[:hidden])
        rg = f(xw[:, hidden : 2 * hidden] + h @ rr.T + rb[hidden : 2 * hidden])
        if node.attrs.get("linear_before_reset", 0):
            n = g(xw[:, 2 * hidden :] + rg * (h @ rh.T + rb[2 * hidden :]))
        else:
            n = g(xw[:, 2 * hidden :] + (rg * h) @ rh.T + rb[2 * hidden :])
        h = (1 - z) * n + z * h
        ys.append(h)
    return np.stack(ys)[:, None], h[None]


def _rnn(node, env, *_):
    (f,) = _check_cell_attrs(node, ["Tanh"])
    x, w, r, b, (h,) = _cell_inputs(node, env, 1)
    hidden = r.shape[-1]
    ys = []
    for xt in x:
        h = f(xt @ w.T + h @ r.T + b[:hidden] + b[hidden:])
        ys.append(h)
    return np.stack(ys)[:, None], h[None]


def _f32(fn):
    return lambda node, env, *a: fn(*a)


_OPS: dict[str, Callable] = {
    "Identity": _f32(lambda x: x),
    "Add": _f32(np.add),
    "Sub": _f32(np.subtract),
    "Mul": _f32(np.multiply),
    "Div": _f32(np.divide),
    "Neg": _f32(np.negative),
    "Sigmoid": _f32(sigmoid),
    "Tanh": _f32(np.tanh),
    "Relu": _f32(relu),
    "MatMul": _f32(np.matmul),
    "Gemm": _gemm,
    "Transpose": lambda n, env, x: np.transpose(x, n.attrs.get("perm")),
    "Unsqueeze": lambda n, env, x, *_: np.expand_dims(x, tuple(_axes(n, env, 1))),
    "Squeeze": lambda n, env, x, *_: np.squeeze(x, axis=_tuple(_axes(n, env, 1))),
    "Reshape": lambda n, env, x, shape: _reshape(x, shape),
    "Flatten": lambda n, env, x: x.reshape(int(np.prod(x.shape[: n.attrs.get("axis", 1)])), -1),
    "Concat": lambda n, env, *xs: np.concatenate(xs, axis=n.attrs["axis"]),
    "Slice": lambda n, env, x, *_: _slice(n, env, x),
    "Split": lambda n, env, x, *_: _split(n, env, x),
    "Gather": lambda n, env, x, i: np.take(x, i, axis=n.attrs.get("axis", 0)),
    "Shape": lambda n, env, x: np.array(x.shape, dtype=np.int64),
    "Cast": lambda n, env, x: x.astype(_DTYPES[n.attrs["to"]]),
    "DequantizeLinear": _dequantize,
    "Exp": _f32(np.exp),
    "Sqrt": _f32(np.sqrt),
    "Pow": _f32(np.power),
    "Max": _f32(lambda *xs: np.maximum.reduce(np.broadcast_arrays(*xs))),
    "Min": _f32(lambda *xs: np.minimum.reduce(np.broadcast_arrays(*xs))),
    "Clip": lambda n, env, x, lo=None, hi=None: np.clip(
        x, -np.inf if lo is None else lo, np.inf if hi is None else hi
    ),
    "Softmax": lambda n, env, x: _softmax(x, n.attrs.get("axis", -1)),
    "LSTM": _lstm,
    "GRU": _gru,
    "RNN": _rnn,
}


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _tuple(axes):
    return None if axes is None else tuple(axes)


def _reshape(x, shape):
    shape = [x.shape[i] if s == 0 else int(s) for i, s in enumerate(shape)]
    return x.reshape(shape)


def _where_these_ops_run(ops) -> str:
    """What to do about ops numpy lacks: onnxruntime where it is installed; where it is
    not (32-bit ARM has no wheel), quantised ops mean: deploy the float or fp16 model."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        quantised = any("Quantize" in op or "Integer" in op for op in ops)
        return (
            "onnxruntime, which runs them, is not installed (none exists for 32-bit ARM): "
            + ("deploy the float or fp16 model instead of the int8 one" if quantised
               else "install it, or export the model with ops numpy runs")
        )  # fmt: skip
    return "use backend='onnxruntime'"


class Interpreter:
    """Execute a Graph with numpy. Constant subgraphs (weights behind DequantizeLinear,
    Constant nodes) are folded once at construction; `run` executes the rest."""

    def __init__(self, graph: Graph, source: str = "model"):
        unknown = sorted(
            {n.op_type for n in graph.nodes if n.op_type not in _OPS and n.op_type != "Constant"}
        )
        if unknown or any(n.domain not in ("", "ai.onnx") for n in graph.nodes):
            ops = unknown or sorted({f"{n.domain}.{n.op_type}" for n in graph.nodes if n.domain})
            raise ModelFormatError(
                f"{source}: the numpy backend does not implement ops {ops}; "
                + _where_these_ops_run(ops)
            )
        self.graph, self.source = graph, source
        self.constants: dict[str, np.ndarray] = {"": None, **graph.initializers}
        self.nodes: list[Node] = []
        for node in graph.nodes:
            if node.op_type == "Constant" and node.outputs:
                self.constants[node.outputs[0]] = _constant(node, source)
            elif all(i in self.constants for i in node.inputs if i):
                for name, value in zip(node.outputs, self._exec(node, self.constants)):
                    self.constants[name] = value
            else:
                self.nodes.append(node)

    def _exec(self, node: Node, env: dict) -> list:
        missing = [i for i in node.inputs if i and i not in env]
        if missing:  # a damaged graph: a node reads a name nothing produces
            raise ModelFormatError(
                f"{self.source}: node {node.name or node.op_type} reads {missing[0]!r}, "
                "which no node, input or initializer provides"
            )
        args = [env[i] if i else None for i in node.inputs]
        while args and args[-1] is None:
            args.pop()
        try:
            out = _OPS[node.op_type](node, env, *args)
        except ModelFormatError as e:
            raise ModelFormatError(f"{self.source}: {e}") from e
        except (ValueError, IndexError, KeyError, TypeError, ArithmeticError) as e:
            raise ModelFormatError(
                f"{self.source}: node {node.name or node.op_type} failed in the numpy backend ({e})"
            ) from e
        return list(out) if isinstance(out, (tuple, list)) else [out]

    def run(
        self, feeds: dict[str, np.ndarray], outputs: list[str], keep_dtype: bool = False
    ) -> list[np.ndarray]:
        """The named outputs: float32, or each in its own dtype with keep_dtype."""
        env = dict(self.constants)
        env.update(feeds)
        for node in self.nodes:
            for name, value in zip(node.outputs, self._exec(node, env)):
                env[name] = value
        missing = [name for name in outputs if name not in env]
        if missing:
            raise ModelFormatError(f"{self.source}: the graph computes no {missing[0]!r}")
        if keep_dtype:
            return [np.asarray(env[name]) for name in outputs]
        return [np.asarray(env[name], dtype=np.float32) for name in outputs]


def _constant(node: Node, source: str) -> np.ndarray:
    a = node.attrs
    if "value" in a:
        return a["value"]
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):  # fmt: skip
        if key in a:
            return np.array(a[key], dtype=dtype)
    raise ModelFormatError(f"{source}: Constant node with unsupported attributes {sorted(a)}")


# ----------------------------------------------------------------------------------
# the recognised network and its fused step

_CELL_OPS = {"RNN": "rnn", "LSTM": "lstm", "GRU": "gru"}
N_STATE = {"rnn": 1, "lstm": 2, "gru": 1}


@dataclass
class Layer:
    """One cell as a single stacked matmul: gates = [x, h] @ weight + bias.

    weight (I + H, G), bias (G,). Column blocks follow ONNX gate order:
    lstm i,o,f,c (G = 4H); gru z,r,n_x,n_h (G = 4H: the candidate's input and
    recurrent parts stay apart because r multiplies only the recurrent part);
    rnn one block (G = H).
    """

    weight: np.ndarray
    bias: np.ndarray
    hidden: int


@dataclass
class Network:
    cell: str
    nonlinearity: str
    hidden: int
    layers: list[Layer]
    mean: np.ndarray  # (C,)
    std: np.ndarray  # (C,)
    head_weight: np.ndarray  # (H, C)
    head_bias: np.ndarray  # (C,)
    residual: bool
    n_state: int = field(init=False)

    def __post_init__(self):
        self.n_state = N_STATE[self.cell]

    @property
    def n_channels(self) -> int:
        return self.mean.shape[0]


def _stack_layer(cell: str, w: np.ndarray, r: np.ndarray, b: np.ndarray) -> Layer:
    hidden, n_in = r.shape[1], w.shape[1]
    wb, rb = b[: w.shape[0]], b[w.shape[0] :]
    if cell == "gru":
        zero_x = np.zeros((n_in, hidden), np.float32)
        zero_h = np.zeros((hidden, hidden), np.float32)
        top = np.concatenate([w[: 2 * hidden].T, w[2 * hidden :].T, zero_x], axis=1)
        bottom = np.concatenate([r[: 2 * hidden].T, zero_h, r[2 * hidden :].T], axis=1)
        bias = np.concatenate(
            [wb[: 2 * hidden] + rb[: 2 * hidden], wb[2 * hidden :], rb[2 * hidden :]]
        )
    else:
        top, bottom, bias = w.T, r.T, wb + rb
    weight = np.ascontiguousarray(np.concatenate([top, bottom]), dtype=np.float32)
    return Layer(weight, np.ascontiguousarray(bias, dtype=np.float32), hidden)


def _cell_layers(interp: Interpreter, meta, source: str) -> list[Layer]:
    cells = [n for n in interp.nodes if n.op_type in _CELL_OPS]
    kinds = {_CELL_OPS[n.op_type] for n in cells}
    if kinds != {meta.cell} or len(cells) != meta.layers:
        raise ModelFormatError(
            f"{source}: expected {meta.layers} {meta.cell} cell node(s) in the graph, "
            f"found {[n.op_type for n in cells]}"
        )
    layers = []
    for node in cells:
        ins = node.inputs + [""] * (8 - len(node.inputs))
        if not all(i in interp.constants for i in ins[1:3]) or (
            ins[3] and ins[3] not in interp.constants
        ):
            raise ModelFormatError(f"{source}: {node.op_type} weights are not constants")
        if node.attrs.get("hidden_size", meta.hidden) != meta.hidden:
            raise ModelFormatError(f"{source}: {node.op_type} hidden_size disagrees with metadata")
        if meta.cell == "gru" and not node.attrs.get("linear_before_reset", 0):
            raise ModelFormatError(f"{source}: GRU without linear_before_reset is not fused")
        _check_cell_attrs(
            node,
            {"lstm": ["Sigmoid", "Tanh", "Tanh"], "gru": ["Sigmoid", "Tanh"]}.get(
                meta.cell, [meta.nonlinearity.capitalize()]
            ),
        )
        w = interp.constants[ins[1]][0].astype(np.float32)
        r = interp.constants[ins[2]][0].astype(np.float32)
        gates = w.shape[0]
        b = (
            interp.constants[ins[3]][0].astype(np.float32)
            if ins[3]
            else np.zeros(2 * gates, np.float32)
        )
        layers.append(_stack_layer(meta.cell, w, r, b))
    return layers


def _head(interp: Interpreter, meta, source: str) -> tuple[np.ndarray, np.ndarray]:
    """The one MatMul/Gemm with a constant (H, C) weight, and the constant added to it."""
    h, c = meta.hidden, meta.n_channels
    found = []
    for node in interp.nodes:
        if node.op_type not in ("MatMul", "Gemm") or len(node.inputs) < 2:
            continue
        w = interp.constants.get(node.inputs[1])
        if w is None:
            continue
        if node.op_type == "Gemm" and node.attrs.get("transB", 0):
            w = w.T
        if w.shape == (h, c):
            found.append((node, w))
    if len(found) != 1:
        raise ModelFormatError(
            f"{source}: cannot find the one linear head ({h} -> {c}) in the graph"
        )
    node, w = found[0]
    bias = np.zeros(c, np.float32)
    if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2]:
        bias = interp.constants[node.inputs[2]]
    else:
        for other in interp.nodes:
            if other.op_type == "Add" and node.outputs[0] in other.inputs:
                const = [interp.constants.get(i) for i in other.inputs if i != node.outputs[0]]
                if const and const[0] is not None and np.shape(const[0]) == (c,):
                    bias = const[0]
    return np.ascontiguousarray(w, np.float32), np.ascontiguousarray(bias, np.float32).reshape(c)


PROBE_TOLERANCE = 1e-4


def extract_network(model: OnnxModel, meta, interp: Optional[Interpreter] = None,
                    source: str = "model") -> Network:  # fmt: skip
    """Recognise the graph as a Network and prove it on a random probe (else ModelFormatError)."""
    interp = interp or Interpreter(model.graph, source)
    try:
        return _extract_network(interp, meta, source)
    except EdgernnError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, ArithmeticError) as e:
        # A damaged graph: weights of other shapes than the metadata's network has.
        raise ModelFormatError(
            f"{source}: the graph does not hold the {meta.cell} network its metadata "
            f"describes ({str(e)[:120]})"
        ) from e


def _extract_network(interp: Interpreter, meta, source: str) -> Network:
    net = Network(
        cell=meta.cell,
        nonlinearity=meta.nonlinearity,
        hidden=meta.hidden,
        layers=_cell_layers(interp, meta, source),
        mean=np.asarray(meta.norm_mean, np.float32),
        std=np.asarray(meta.norm_std, np.float32),
        head_weight=np.zeros(0),
        head_bias=np.zeros(0),
        residual=meta.residual,
    )
    net.head_weight, net.head_bias = _head(interp, meta, source)
    verify_network(net, interp, meta, source)
    return net


def verify_network(net: Network, interp: Interpreter, meta, source: str) -> None:
    rng = np.random.default_rng(1234)
    batch = 3
    x = (rng.standard_normal((batch, net.n_channels)) * net.std + net.mean).astype(np.float32)
    states = (0.5 * rng.standard_normal((net.n_state, meta.layers, batch, meta.hidden))).astype(
        np.float32
    )
    feeds = {meta.input: x, **{s.input: states[i] for i, s in enumerate(meta.states)}}
    names = [meta.output] + [s.output for s in meta.states]
    want = interp.run(feeds, names)
    y = np.empty_like(x)
    new = np.empty_like(states)
    fused_step(net, x, states, new, y)
    errors = [np.max(np.abs((y - want[0]) / net.std))]
    errors += [np.max(np.abs(new[i] - want[1 + i])) for i in range(net.n_state)]
    if not max(errors) <= PROBE_TOLERANCE:
        raise ModelFormatError(
            f"{source}: the graph does not compute the {meta.cell} network its metadata "
            f"describes (probe differs by {max(errors):.3g})"
        )


@dataclass
class _Prepared:
    """Per-layer weights split and pre-scaled for the fewest numpy calls per step."""

    w_x: list[np.ndarray]  # (I, G) per layer
    w_h: list[np.ndarray]  # (H, G)
    bias: list[np.ndarray]  # (G,)


def _prepare(net: Network) -> _Prepared:
    # Sigmoid gates (lstm i,o,f; gru z,r) get their columns pre-scaled by 1/2 so one
    # tanh over all gates serves both: sigmoid(g) = tanh(g / 2) / 2 + 1/2.
    n_sig = {"lstm": 3, "gru": 2}.get(net.cell, 0) * net.hidden
    w_x, w_h, bias = [], [], []
    for layer in net.layers:
        scale = np.ones(layer.weight.shape[1], np.float32)
        scale[:n_sig] = 0.5
        w = layer.weight * scale
        n_in = w.shape[0] - net.hidden
        w_x.append(np.ascontiguousarray(w[:n_in]))
        w_h.append(np.ascontiguousarray(w[n_in:]))
        bias.append(layer.bias * scale)
    return _Prepared(w_x, w_h, bias)


def fused_step(
    net: Network, x: np.ndarray, s_in: np.ndarray, s_out: np.ndarray, y: np.ndarray
) -> None:
    """One step. x (B, C) raw units; s_in/s_out (S, L, B, H); y (B, C) written in place."""
    prep = net.__dict__.get("_prepared")
    if prep is None:
        prep = net.__dict__["_prepared"] = _prepare(net)
    half = np.float32(0.5)
    xn = (x - net.mean) / net.std  # (B, C)
    inp = xn
    hd = net.hidden
    for i in range(len(net.layers)):
        g = inp @ prep.w_x[i]  # (B, G)
        g += s_in[0, i] @ prep.w_h[i]
        g += prep.bias[i]
        if net.cell == "lstm":
            t = np.tanh(g)  # i, o, f (pre-halved) and the candidate, one call
            sig = t[:, : 3 * hd]
            sig *= half
            sig += half
            c = s_out[1, i]
            np.multiply(sig[:, 2 * hd :], s_in[1, i], out=c)
            c += sig[:, :hd] * t[:, 3 * hd :]
            np.multiply(sig[:, hd : 2 * hd], np.tanh(c), out=s_out[0, i])
        elif net.cell == "gru":
            zr = np.tanh(g[:, : 2 * hd])
            zr *= half
            zr += half
            n = g[:, 2 * hd : 3 * hd] + zr[:, hd:] * g[:, 3 * hd :]
            np.tanh(n, out=n)
            h = s_out[0, i]
            np.subtract(s_in[0, i], n, out=h)
            h *= zr[:, :hd]
            h += n
        else:
            s_out[0, i] = _ACTIVATIONS[net.nonlinearity](g)
        inp = s_out[0, i]
    out = inp @ net.head_weight
    out += net.head_bias
    if net.residual:
        out += xn
    out *= net.std
    np.add(out, net.mean, out=y)
