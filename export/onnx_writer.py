"""An echo state network's checkpoint -> ONNX bytes, with neither torch nor onnx.

A tiny protobuf writer (varints and length-delimited fields, the field numbers
runtime/numpy_backend.py's reader uses) builds the same kind of graph the PyTorch
exporter writes for an ESN: inputs x [batch, C], h [layers, batch, hidden]; outputs
y [batch, C], h_out; the normalisation inside the graph; one ONNX RNN node per layer,
the linear head, and the residual when the run has one. IR 8, opset 17.

The export is gated like the torch path: the graph is streamed by the runtime (numpy
and onnxruntime backends) from a random non-zero state and must match the ESN's own
numpy forward, and onnx.checker runs where onnx is importable.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from edgernn.errors import ExportError
from edgernn.runtime.metadata import ModelMeta, StateSpec

IR_VERSION = 8
OPSET = 17
TOLERANCE = 1e-5  # |a - b| <= TOLERANCE + TOLERANCE * |ref|

# TensorProto data types
FLOAT, INT64 = 1, 7
# AttributeProto types
ATTR_INT, ATTR_STRINGS = 2, 8


# --- protobuf wire format -------------------------------------------------------------


def varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 as two's complement, 10 bytes
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def field_bytes(number: int, data: bytes | str) -> bytes:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return varint((number << 3) | 2) + varint(len(data)) + data


# --- ONNX messages --------------------------------------------------------------------


def tensor(name: str, array: np.ndarray) -> bytes:
    """TensorProto: dims 1, data_type 2, name 8, raw_data 9 (little-endian)."""
    array = np.asarray(array)
    if array.dtype.kind == "i":
        code, array = INT64, array.astype("<i8")
    else:
        code, array = FLOAT, array.astype("<f4")
    out = b"".join(field_varint(1, int(d)) for d in array.shape)
    out += field_varint(2, code) + field_bytes(8, name)
    return out + field_bytes(9, np.ascontiguousarray(array).tobytes())


def attribute_int(name: str, value: int) -> bytes:
    """AttributeProto: name 1, i 3, type 20."""
    return field_bytes(1, name) + field_varint(3, value) + field_varint(20, ATTR_INT)


def attribute_strings(name: str, values: list[str]) -> bytes:
    """AttributeProto: name 1, strings 9, type 20."""
    out = field_bytes(1, name) + b"".join(field_bytes(9, v) for v in values)
    return out + field_varint(20, ATTR_STRINGS)


def node(op: str, inputs: list[str], outputs: list[str], name: str, attrs=()) -> bytes:
    """NodeProto: input 1, output 2, name 3, op_type 4, attribute 5."""
    out = b"".join(field_bytes(1, i) for i in inputs)
    out += b"".join(field_bytes(2, o) for o in outputs)
    out += field_bytes(3, name) + field_bytes(4, op)
    return out + b"".join(field_bytes(5, a) for a in attrs)


def value_info(name: str, shape: list) -> bytes:
    """ValueInfoProto name 1, type 2 -> TypeProto tensor_type 1 -> elem_type 1, shape 2 ->
    dim 1 -> dim_value 1 | dim_param 2."""
    dims = b"".join(
        field_bytes(1, field_bytes(2, d) if isinstance(d, str) else field_varint(1, int(d)))
        for d in shape
    )
    tensor_type = field_varint(1, FLOAT) + field_bytes(2, dims)
    return field_bytes(1, name) + field_bytes(2, field_bytes(1, tensor_type))


def model_bytes(
    nodes: list[bytes],
    initializers: list[bytes],
    inputs: list[bytes],
    outputs: list[bytes],
    props: dict[str, str],
    producer_version: str = "",
) -> bytes:
    """ModelProto: ir_version 1, producer_name 2, producer_version 3, graph 7,
    opset_import 8, metadata_props 14. GraphProto: node 1, name 2, initializer 5,
    input 11, output 12."""
    graph = b"".join(field_bytes(1, n) for n in nodes) + field_bytes(2, "main_graph")
    graph += b"".join(field_bytes(5, t) for t in initializers)
    graph += b"".join(field_bytes(11, v) for v in inputs)
    graph += b"".join(field_bytes(12, v) for v in outputs)
    out = field_varint(1, IR_VERSION) + field_bytes(2, "edgernn")
    if producer_version:
        out += field_bytes(3, producer_version)
    out += field_bytes(7, graph)
    out += field_bytes(8, field_bytes(1, "") + field_varint(2, OPSET))
    for key, value in props.items():
        out += field_bytes(14, field_bytes(1, key) + field_bytes(2, value))
    return out


# --- the ESN graph --------------------------------------------------------------------


def esn_meta(meta: dict, weights: dict, error_scale=None, extra: dict | None = None) -> ModelMeta:
    cfg = meta["model"]
    layers, hidden = int(cfg["layers"]), int(cfg["hidden"])
    n_channels = int(cfg["n_channels"])
    return ModelMeta(
        cell="rnn",
        nonlinearity=cfg.get("nonlinearity", "tanh"),
        trained_as="esn",
        layers=layers,
        hidden=hidden,
        horizon=int(cfg.get("horizon", 1)),
        residual=bool(cfg.get("residual", True)),
        channels=list(cfg.get("channels") or []) or [f"ch{i}" for i in range(n_channels)],
        input="x",
        output="y",
        states=[StateSpec.stacked("h", "h_out", layers, hidden)],
        norm_mean=np.asarray(weights["mean"], np.float32).tolist(),
        norm_std=np.asarray(weights["std"], np.float32).tolist(),
        error_scale=list(error_scale) if error_scale is not None else None,
        extra=dict(extra or {}),
    )


def esn_graph(weights: dict, mm: ModelMeta, producer_version: str = "") -> bytes:
    """The single-step graph of an ESN forecaster as ONNX bytes."""
    layers, hidden, c = mm.layers, mm.hidden, mm.n_channels
    act = {"tanh": "Tanh", "relu": "Relu"}[mm.nonlinearity]
    f32 = lambda k: np.asarray(weights[k], np.float32)  # noqa: E731
    inits = [
        tensor("model.mean", f32("mean")),
        tensor("model.std", f32("std")),
        tensor("axes0", np.array([0], np.int64)),
        tensor("axes1", np.array([1], np.int64)),
        tensor("model.head.weight_t", f32("head.weight").T),  # (H, C)
        tensor("model.head.bias", f32("head.bias")),
    ]
    nodes = [
        node("Sub", ["x", "model.mean"], ["x_centered"], "/model/Sub"),
        node("Div", ["x_centered", "model.std"], ["xn"], "/model/Div"),
        node("Unsqueeze", ["xn", "axes0"], ["seq0"], "/model/Unsqueeze"),  # (1, B, C)
    ]
    seq, finals = "seq0", []
    for i in range(layers):
        inits += [
            tensor(f"rnn.W_l{i}", f32(f"rnn.weight_ih_l{i}")[None]),
            tensor(f"rnn.R_l{i}", f32(f"rnn.weight_hh_l{i}")[None]),
            tensor(
                f"rnn.B_l{i}",
                np.concatenate([f32(f"rnn.bias_ih_l{i}"), f32(f"rnn.bias_hh_l{i}")])[None],
            ),
            tensor(f"slice_start_l{i}", np.array([i], np.int64)),
            tensor(f"slice_end_l{i}", np.array([i + 1], np.int64)),
        ]
        final = "h_out" if layers == 1 else f"h_out_l{i}"
        nodes += [
            node(
                "Slice",
                ["h", f"slice_start_l{i}", f"slice_end_l{i}", "axes0"],
                [f"h_l{i}"],
                f"/model/rnn/Slice_l{i}",
            ),  # fmt: skip
            node(
                "RNN",
                [seq, f"rnn.W_l{i}", f"rnn.R_l{i}", f"rnn.B_l{i}", "", f"h_l{i}"],
                [f"rnn_y_l{i}", final],
                f"/model/rnn/RNN_l{i}",
                [attribute_strings("activations", [act]), attribute_int("hidden_size", hidden)],
            ),
            node("Squeeze", [f"rnn_y_l{i}", "axes1"], [f"seq{i + 1}"], f"/model/rnn/Squeeze_l{i}"),
        ]
        seq = f"seq{i + 1}"
        finals.append(final)
    if layers > 1:
        nodes.append(
            node("Concat", finals, ["h_out"], "/model/rnn/Concat", [attribute_int("axis", 0)])
        )
    nodes += [
        node("Squeeze", [seq, "axes0"], ["last"], "/model/Squeeze"),  # (B, H)
        node("MatMul", ["last", "model.head.weight_t"], ["head_mm"], "/model/head/MatMul"),
        node("Add", ["head_mm", "model.head.bias"], ["head_out"], "/model/head/Add"),
    ]
    out = "head_out"
    if mm.residual:
        nodes.append(node("Add", ["head_out", "xn"], ["with_residual"], "/model/Add"))
        out = "with_residual"
    nodes += [
        node("Mul", [out, "model.std"], ["scaled"], "/model/Mul"),
        node("Add", ["scaled", "model.mean"], ["y"], "/model/Add_1"),
    ]
    return model_bytes(
        nodes,
        inits,
        [value_info("x", ["batch", c]), value_info("h", [layers, "batch", hidden])],
        [value_info("y", ["batch", c]), value_info("h_out", [layers, "batch", hidden])],
        mm.to_props(),
        producer_version,
    )


def reference_forward(weights: dict, mm: ModelMeta, x: np.ndarray, h0: np.ndarray):
    """The ESN's own numpy forward (float64): x (T, B, C) raw, h0 (L, B, H) ->
    y (T, B, C) raw, final state (L, B, H)."""
    act = np.tanh if mm.nonlinearity == "tanh" else (lambda v: np.maximum(v, 0.0))
    g = lambda k: np.asarray(weights[k], np.float64)  # noqa: E731
    mean, std = g("mean"), g("std")
    h = np.array(h0, np.float64)
    ys = []
    for xt in np.asarray(x, np.float64):
        xn = (xt - mean) / std
        inp = xn
        for i in range(mm.layers):
            b = g(f"rnn.bias_ih_l{i}") + g(f"rnn.bias_hh_l{i}")
            h[i] = act(inp @ g(f"rnn.weight_ih_l{i}").T + h[i] @ g(f"rnn.weight_hh_l{i}").T + b)
            inp = h[i]
        y = inp @ g("head.weight").T + g("head.bias")
        if mm.residual:
            y = y + xn
        ys.append(y * std + mean)
    return np.stack(ys), h


def check_esn_parity(
    path: str, weights: dict, mm: ModelMeta, steps: int = 64, batch: int = 3, seed: int = 0
) -> tuple[float, float, float]:
    """Stream the file with the runtime (numpy and onnxruntime backends) from a random
    non-zero state; the largest excess over |a - b| <= TOL + TOL * |ref| (outputs in
    normalised units, and the final state; 0.0 means the graph passes), and the largest
    absolute differences of the outputs and of the state."""
    from edgernn.runtime.model import Model

    rng = np.random.default_rng(seed)
    mean = np.asarray(weights["mean"], np.float64)
    std = np.asarray(weights["std"], np.float64)
    x = (rng.standard_normal((steps, batch, mm.n_channels)) * std + mean).astype(np.float32)
    h0 = (0.5 * rng.standard_normal((mm.layers, batch, mm.hidden))).astype(np.float32)
    y_ref, h_ref = reference_forward(weights, mm, x, h0)
    yn_ref = (y_ref - mean) / std
    worst, max_out, max_state = 0.0, 0.0, 0.0
    for backend in ("numpy", "onnxruntime"):
        runtime = Model(path, backend=backend)
        stream = runtime.stream(state={"h": h0}, batch=batch)
        y = np.asarray(stream.run(x), np.float64)
        yn = (y - mean) / std
        h = np.asarray(stream.state["h"], np.float64)
        max_out = max(max_out, float(np.max(np.abs(yn - yn_ref))))
        max_state = max(max_state, float(np.max(np.abs(h - h_ref))))
        for got, ref in ((yn, yn_ref), (h, h_ref)):
            excess = np.abs(got - ref) - (TOLERANCE + TOLERANCE * np.abs(ref))
            worst = max(worst, float(np.max(excess, initial=0.0)))
    return worst, max_out, max_state


def check_with_onnx(path: str) -> None:
    """onnx.checker (full check) where onnx is importable."""
    try:
        if importlib.util.find_spec("onnx") is None:
            return
        import onnx
    except (ImportError, ValueError):  # blocked (sys.modules['onnx'] = None) or absent
        return
    try:
        onnx.checker.check_model(onnx.load(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"ESN graph fails onnx.checker: {str(e).splitlines()[0]}") from e


def export_esn(
    weights: dict,
    meta: dict,
    out_path: str | os.PathLike,
    error_scale=None,
    extra_meta: dict | None = None,
    producer_version: str = "",
):
    """Write an ESN checkpoint's graph to `out_path` and gate it; returns a ParityReport."""
    from edgernn.export.onnx_export import ParityReport, staged

    out_path = os.fspath(out_path)
    mm = esn_meta(meta, weights, error_scale, extra_meta)
    data = esn_graph(weights, mm, producer_version)
    with staged(out_path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
        check_with_onnx(tmp)
        worst, max_out, max_state = check_esn_parity(tmp, weights, mm)
        if not worst <= 0.0:
            os.replace(tmp, out_path + ".failed")
            raise ExportError(
                f"parity check failed: the ESN graph differs from the ESN's numpy forward by "
                f"{worst:.3g} beyond tolerance; the graph was kept as {out_path}.failed"
            )
    return ParityReport(max_out, max_state, 64, 3)
