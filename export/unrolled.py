"""The unrolled export variant: every recurrent cell written as primitive ops.

No LSTM/GRU/RNN op, no If/Loop/Scan: only MatMul, Add, Sub, Mul, Div, Sigmoid,
Tanh, Relu, Slice, Squeeze, Concat (Gather and Reshape where an existing cell node
is rewritten in place). That is what NPU converters, microcontroller toolchains and
the onnxruntime quantizer (which has no GRU/RNN support) accept. With `static_batch`
every shape in the graph is fixed.

The interface and metadata are those of `export_onnx`:
    inputs  x [batch, C] raw units, h [layers, batch, hidden] (and c for LSTM)
    outputs y [batch, C] raw units, h_out (and c_out)

Entry points, sharing the cell builders:
    export_unrolled(model, path)  a Forecaster -> a lean graph built with onnx.helper,
                                  parity-gated like export_onnx
    lean_unroll(proto, meta)      an exported graph -> the same lean graph, its weights
                                  read out of the cell nodes and the head, proved
                                  equal to the original on a probe (what `edgernn
                                  quantize` uses: at hidden 64 the exporter's plumbing
                                  is ~3% of an int8 file)
    unroll_cells(proto)           an existing graph -> the same graph with each
                                  LSTM/GRU/RNN node replaced by primitive ops in place
                                  (the fallback for graphs lean_unroll does not prove)

Weights are held in PyTorch's layout and gate order (LSTM i f g o, GRU r z n);
ONNX cell nodes (LSTM i o f c, GRU z r h) are reordered on the way in.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

import numpy as np

from edgernn.errors import ExportError, ModelFormatError, require
from edgernn.export.onnx_export import (
    DEFAULT_OPSET,
    PARITY_TOLERANCE,
    ParityReport,
    build_meta,
    ir_version_for,
    save_checked,
    set_metadata,
)

MIN_OPSET = 11  # Slice with tensor inputs, Gather with negative-index semantics
CELL_OPS = ("RNN", "LSTM", "GRU")
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
# ONNX gate blocks in PyTorch order: LSTM onnx (i o f c) -> torch (i f g o),
# GRU onnx (z r h) -> torch (r z n).
ONNX_TO_TORCH_GATES = {"rnn": [0], "lstm": [0, 2, 3, 1], "gru": [1, 0, 2]}
PRIMITIVE_OPS = frozenset(
    "MatMul Add Sub Mul Div Sigmoid Tanh Relu Slice Gather Reshape Concat Squeeze "
    "Unsqueeze Transpose Identity Constant".split()
)


@dataclass
class LayerWeights:
    """One recurrent layer in PyTorch layout: G gate blocks of `hidden` rows each."""

    w_ih: np.ndarray  # (G*H, in)
    w_hh: np.ndarray  # (G*H, H)
    b_ih: np.ndarray  # (G*H,)
    b_hh: np.ndarray  # (G*H,)

    @property
    def hidden(self) -> int:
        return self.w_hh.shape[1]


# ----------------------------------------------------------------------- graph builder
class GraphBuilder:
    """Collects nodes and initializers; hands out unique tensor names."""

    def __init__(self, opset: int, prefix: str = ""):
        self.onnx = require("onnx")
        self.opset = opset
        self.prefix = prefix
        self.nodes: list = []
        self.initializers: list = []
        self._counts: Counter = Counter()
        self._consts: dict = {}

    def name(self, hint: str) -> str:
        self._counts[hint] += 1
        n = self._counts[hint]
        return f"{self.prefix}{hint}" if n == 1 else f"{self.prefix}{hint}_{n}"

    def const(self, array: np.ndarray, hint: str) -> str:
        """An initializer; identical small constants (shapes, slice bounds) are shared."""
        array = np.array(array, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= 8 else None
        if key is not None and key in self._consts:
            return self._consts[key]
        name = self.name(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        if key is not None:
            self._consts[key] = name
        return name

    def ints(self, values) -> str:
        return self.const(np.asarray(values, dtype=np.int64), "i64")

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        out = out or self.name(op_type.lower())
        node = self.onnx.helper.make_node(
            op_type, list(inputs), [out], name=self.name(f"n_{op_type}"), **attrs
        )
        self.nodes.append(node)
        return out

    def slice(self, x: str, start: int, end: int) -> str:
        """x[..., start:end]: a gate block of a (B, N) or (1, B, N) tensor."""
        return self.op("Slice", x, self.ints([start]), self.ints([end]), self.ints([-1]))

    def squeeze0(self, x: str, out: str | None = None) -> str:
        """Drop a leading axis of length 1 (fails at run time if it is not 1)."""
        if self.opset >= 13:
            return self.op("Squeeze", x, self.ints([0]), out=out)
        return self.op("Squeeze", x, out=out, axes=[0])

    def rename(self, old: str, new: str) -> None:
        """Give the tensor `old` the name `new` everywhere (a graph output, say)."""
        for node in self.nodes:
            node.input[:] = [new if n == old else n for n in node.input]
            node.output[:] = [new if n == old else n for n in node.output]

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray | None, hint: str) -> str:
        """x @ weight.T (+ bias): a MatMul against a (in, out) initializer, which is
        the op the quantizers turn into integer arithmetic."""
        w = self.const(np.ascontiguousarray(weight.T, dtype=np.float32), hint + "_w")
        y = self.op("MatMul", x, w)
        if bias is None:
            return y
        return self.op("Add", y, self.const(bias.astype(np.float32), hint + "_b"))


# ------------------------------------------------------------------------- cell steps
def rnn_step(g: GraphBuilder, x: str, h: str, w: LayerWeights, nonlinearity: str, hint: str):
    pre = g.op(
        "Add", g.linear(x, w.w_ih, None, hint + "_ih"), g.linear(h, w.w_hh, None, hint + "_hh")
    )
    pre = g.op("Add", pre, g.const((w.b_ih + w.b_hh).astype(np.float32), hint + "_b"))  # (B, H)
    return g.op("Relu" if nonlinearity == "relu" else "Tanh", pre)


def lstm_step(g: GraphBuilder, x: str, h: str, c: str, w: LayerWeights, hint: str):
    hid = w.hidden
    gates = g.op(
        "Add", g.linear(x, w.w_ih, None, hint + "_ih"), g.linear(h, w.w_hh, None, hint + "_hh")
    )
    gates = g.op(
        "Add", gates, g.const((w.b_ih + w.b_hh).astype(np.float32), hint + "_b")
    )  # (B, 4H)
    i_f = g.op("Sigmoid", g.slice(gates, 0, 2 * hid))  # (B, 2H)
    i, f = g.slice(i_f, 0, hid), g.slice(i_f, hid, 2 * hid)
    cand = g.op("Tanh", g.slice(gates, 2 * hid, 3 * hid))
    o = g.op("Sigmoid", g.slice(gates, 3 * hid, 4 * hid))
    c_new = g.op("Add", g.op("Mul", f, c), g.op("Mul", i, cand))  # (B, H)
    h_new = g.op("Mul", o, g.op("Tanh", c_new))
    return h_new, c_new


def gru_step(g: GraphBuilder, x: str, h: str, w: LayerWeights, hint: str):
    """PyTorch's GRU (ONNX linear_before_reset=1): the reset gate scales W_hn h + b_hn.
    The r and z biases of both halves are summed into one vector."""
    hid = w.hidden
    b_x = np.concatenate([w.b_ih[: 2 * hid] + w.b_hh[: 2 * hid], w.b_ih[2 * hid :]])
    gi = g.linear(x, w.w_ih, b_x, hint + "_ih")  # (B, 3H)
    gh = g.linear(h, w.w_hh, None, hint + "_hh")  # (B, 3H)
    rz = g.op("Sigmoid", g.op("Add", g.slice(gi, 0, 2 * hid), g.slice(gh, 0, 2 * hid)))
    r, z = g.slice(rz, 0, hid), g.slice(rz, hid, 2 * hid)
    gh_n = g.op("Add", g.slice(gh, 2 * hid, 3 * hid), g.const(w.b_hh[2 * hid :], hint + "_bhn"))
    n = g.op("Tanh", g.op("Add", g.slice(gi, 2 * hid, 3 * hid), g.op("Mul", r, gh_n)))  # (B, H)
    # (1 - z) * n + z * h, written with one product less
    return g.op("Add", n, g.op("Mul", z, g.op("Sub", h, n)))  # (B, H)


def cell_step(
    g, cell: str, x: str, state: list[str], w: LayerWeights, nonlinearity: str, hint: str
):
    """One layer, one step: returns the new state tensors [h] or [h, c], each (B, H)."""
    if cell == "lstm":
        return list(lstm_step(g, x, state[0], state[1], w, hint))
    if cell == "gru":
        return [gru_step(g, x, state[0], w, hint)]
    return [rnn_step(g, x, state[0], w, nonlinearity, hint)]


# ------------------------------------------------------------------- whole-model graph
def forecaster_weights(model) -> tuple[list[LayerWeights], np.ndarray, np.ndarray]:
    """(layers, head weight (C, H), head bias (C,)) of a Forecaster, as float32 numpy."""

    def arr(t):
        return t.detach().cpu().numpy().astype(np.float32)

    rnn = model.rnn
    layers = [
        LayerWeights(
            arr(getattr(rnn, f"weight_ih_l{k}")),
            arr(getattr(rnn, f"weight_hh_l{k}")),
            arr(getattr(rnn, f"bias_ih_l{k}")),
            arr(getattr(rnn, f"bias_hh_l{k}")),
        )
        for k in range(model.config.layers)
    ]
    return layers, arr(model.head.weight), arr(model.head.bias)


@dataclass
class NetworkWeights:
    """A Forecaster as float32 numpy: normalise, a stack of cells, a linear head."""

    cell: str  # graph cell: rnn, lstm or gru
    nonlinearity: str  # rnn: tanh or relu
    layers: list[LayerWeights]
    head_w: np.ndarray  # (C, H)
    head_b: np.ndarray  # (C,)
    mean: np.ndarray  # (C,)
    std: np.ndarray  # (C,)
    residual: bool


def build_unrolled_graph(model, meta, opset: int = DEFAULT_OPSET, static_batch: int | None = None):
    """The unrolled single-step graph of a Forecaster, with `meta` in metadata_props."""
    cfg = model.config
    layers, head_w, head_b = forecaster_weights(model)
    net = NetworkWeights(
        cell=cfg.graph_cell, nonlinearity=cfg.nonlinearity, layers=layers,
        head_w=head_w, head_b=head_b,
        mean=model.mean.detach().cpu().numpy().astype(np.float32),
        std=model.std.detach().cpu().numpy().astype(np.float32),
        residual=cfg.residual,
    )  # fmt: skip
    return network_graph(net, meta, opset=opset, static_batch=static_batch)


def network_graph(
    net: NetworkWeights, meta, opset: int = DEFAULT_OPSET, static_batch: int | None = None
):
    """The unrolled single-step graph of `net`: [B, C] and [L, B, H] tensors from input
    to output, no torch plumbing (Unsqueeze/Transpose/Squeeze around each op)."""
    onnx = require("onnx")
    helper = onnx.helper
    n_layers, hid, n_ch = len(net.layers), net.layers[0].hidden, len(net.mean)
    batch = static_batch if static_batch is not None else "batch"
    state_in = [s.input for s in meta.states]
    state_out = [s.output for s in meta.states]

    g = GraphBuilder(opset)
    mean_c, std_c = g.const(net.mean, "norm_mean"), g.const(net.std, "norm_std")
    xn = g.op("Div", g.op("Sub", meta.input, mean_c), std_c)  # (B, C) normalised
    # Each layer computes on its state as a (1, B, H) slab (the (B, I) input broadcasts),
    # so a one-layer state is the graph input and output as is, with no reshapes.
    per_layer_out: list[list[str]] = [[] for _ in state_in]
    inp = xn
    for k, w in enumerate(net.layers):
        state_k = state_in
        if n_layers > 1:
            state_k = [
                g.op("Slice", s, g.ints([k]), g.ints([k + 1]), g.ints([0])) for s in state_in
            ]
        new = cell_step(g, net.cell, inp, state_k, w, net.nonlinearity, f"l{k}")  # (1, B, H)
        for outs, t in zip(per_layer_out, new):
            outs.append(t)
        inp = new[0]
    # y = (head(h) + [xn]) * std + mean, with the constants folded: the residual's
    # xn * std + mean is x itself, and the head bias joins the de-normalisation.
    y = g.op("Mul", g.linear(inp, net.head_w, None, "head"), std_c)  # (1, B, C)
    offset = net.head_b * net.std + (0 if net.residual else net.mean)
    y = g.op("Add", y, g.const(offset.astype(np.float32), "head_b"))
    if net.residual:
        y = g.op("Add", y, meta.input)
    g.squeeze0(y, out=meta.output)  # (B, C)
    for name, outs in zip(state_out, per_layer_out):
        if len(outs) == 1:
            g.rename(outs[0], name)
        else:
            g.op("Concat", *outs, out=name, axis=0)  # (L, B, H)

    f32 = onnx.TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(meta.input, f32, [batch, n_ch])]
    inputs += [helper.make_tensor_value_info(n, f32, [n_layers, batch, hid]) for n in state_in]
    outputs = [helper.make_tensor_value_info(meta.output, f32, [batch, n_ch])]
    outputs += [helper.make_tensor_value_info(n, f32, [n_layers, batch, hid]) for n in state_out]
    graph = helper.make_graph(
        g.nodes, f"edgernn_{net.cell}_unrolled", inputs, outputs, g.initializers
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgernn"
    )
    proto.ir_version = ir_version_for(opset)
    set_metadata(proto, meta.to_props())
    if static_batch is not None:
        # Every intermediate shape written out: what static-shape toolchains want to see.
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    return proto


def export_unrolled(
    model,
    path: str | os.PathLike,
    error_scale=None,
    extra_meta: dict | None = None,
    opset: int = DEFAULT_OPSET,
    static_batch: int | None = None,
    tolerance: float = PARITY_TOLERANCE,
    seed: int = 0,
) -> ParityReport:
    """Write `model` (a Forecaster) as an unrolled graph and check it like export_onnx:
    onnx.checker, then streaming parity against PyTorch's full sequence."""
    require("onnx")  # a clear error before any work when onnx is missing
    if opset < MIN_OPSET:
        raise ExportError(f"the unrolled export needs opset >= {MIN_OPSET}, got {opset}")
    if static_batch is not None and (not isinstance(static_batch, int) or static_batch < 1):
        raise ExportError(f"static_batch must be a positive integer, got {static_batch!r}")
    path = os.fspath(path)
    model = model.cpu().eval()
    extra = dict(extra_meta or {})
    extra["export"] = {"variant": "unrolled", "opset": opset, "static_batch": static_batch}
    meta = build_meta(model, error_scale, extra)
    proto = build_unrolled_graph(model, meta, opset=opset, static_batch=static_batch)
    return save_checked(
        proto, model, path, tolerance=tolerance, seed=seed, batch=static_batch or 3,
        what="unrolled graph",
    )  # fmt: skip


# ------------------------------------------------------ rewriting an existing graph
def unroll_cells(proto):
    """A copy of `proto` with every LSTM/GRU/RNN node replaced by primitive ops.

    The node must be what a single-step export writes: forward, one time step, an
    initial state given, weights as initializers. Anything else is refused with a
    ModelFormatError rather than rewritten into something that computes differently.
    """
    onnx = require("onnx")
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ModelFormatError(f"cannot unroll a graph of opset {opset} (needs >= {MIN_OPSET})")
    inits = {t.name: t for t in graph.initializer}
    new_nodes, new_inits = [], []
    for k, node in enumerate(graph.node):
        if node.op_type not in CELL_OPS or node.domain not in ("", "ai.onnx"):
            new_nodes.append(node)
            continue
        g = GraphBuilder(opset, prefix=f"unrolled{k}/")
        _rewrite_cell_node(g, node, inits)
        new_nodes.extend(g.nodes)
        new_inits.extend(g.initializers)
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    used = {name for n in graph.node for name in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return out


def lean_unroll(proto, meta, tolerance: float = PARITY_TOLERANCE):
    """The graph `proto` computes, rebuilt as `network_graph` writes it: cell nodes as
    primitive ops without the exporter's plumbing around them (about 8 fewer nodes per
    layer, which is a tenth of a quantized hidden-64 file).

    The cells, the head and the normalisation are read out of `proto` and the rebuilt
    graph is then run against `proto` on a random non-zero probe: it must agree within
    `tolerance` (outputs in normalised units, states absolute) or ModelFormatError, so
    a graph that merely looks like a Forecaster is never rewritten into something else.
    """
    net = _recognise_network(proto, meta)
    opset = _default_opset(proto)
    if opset < MIN_OPSET:
        raise ModelFormatError(f"cannot unroll a graph of opset {opset} (needs >= {MIN_OPSET})")
    dim = next(v for v in proto.graph.input if v.name == meta.input).type.tensor_type.shape.dim
    static_batch = dim[0].dim_value if dim and dim[0].HasField("dim_value") else None
    lean = network_graph(net, meta, opset=opset, static_batch=static_batch)
    error = probe_difference(proto, lean, meta, batch=static_batch or 4)
    if not error <= tolerance:
        raise ModelFormatError(
            f"the rebuilt graph differs from the original by {error:.3g} (tolerance {tolerance:g})"
        )
    return lean


def _default_opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _recognise_network(proto, meta) -> NetworkWeights:
    """Cells (one node per layer, in order) and the one (H, C) head of an export."""
    onnx = require("onnx")
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    cells = [n for n in graph.node if n.op_type in CELL_OPS]
    if [n.op_type.lower() for n in cells] != [meta.cell] * meta.layers:
        raise ModelFormatError(f"expected {meta.layers} {meta.cell} cell node(s)")
    parsed = [cell_node_weights(n, inits) for n in cells]
    heads = [
        n for n in graph.node
        if n.op_type == "MatMul" and n.input[1] in inits
        and tuple(inits[n.input[1]].dims) == (meta.hidden, meta.n_channels)
    ]  # fmt: skip
    if len(heads) != 1:
        raise ModelFormatError(f"expected one linear head, found {len(heads)}")
    head = heads[0]
    head_b = np.zeros(meta.n_channels, np.float32)
    for node in graph.node:
        if node.op_type == "Add" and head.output[0] in node.input:
            other = [i for i in node.input if i != head.output[0]]
            if other and other[0] in inits and tuple(inits[other[0]].dims) == (meta.n_channels,):
                head_b = onnx.numpy_helper.to_array(inits[other[0]]).astype(np.float32)
    head_w = onnx.numpy_helper.to_array(inits[head.input[1]]).astype(np.float32).T  # (C, H)
    return NetworkWeights(
        cell=meta.cell, nonlinearity=parsed[0][2], layers=[w for _, w, _ in parsed],
        head_w=np.ascontiguousarray(head_w), head_b=head_b,
        mean=np.asarray(meta.norm_mean, np.float32), std=np.asarray(meta.norm_std, np.float32),
        residual=meta.residual,
    )  # fmt: skip


def probe_difference(proto_a, proto_b, meta, batch: int = 4, seed: int = 0) -> float:
    """Largest difference between two graphs of the same interface on one random step
    from a random non-zero state: outputs in normalised units beyond float32's
    representation floor (as the export's parity gate measures), states absolute."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    std, mean = np.asarray(meta.norm_std, np.float32), np.asarray(meta.norm_mean, np.float32)
    feeds = {meta.input: (rng.standard_normal((batch, len(std))) * std + mean).astype(np.float32)}
    for s in meta.states:
        feeds[s.input] = (0.5 * rng.standard_normal((s.layers, batch, s.hidden))).astype(
            np.float32
        )  # (L, B, H)
    names = [meta.output] + [s.output for s in meta.states]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    a, b = (
        ort.InferenceSession(
            p.SerializeToString(), options, providers=["CPUExecutionProvider"]
        ).run(names, feeds)
        for p in (proto_a, proto_b)
    )
    floor = 4 * np.finfo(np.float32).eps * np.abs(a[0])
    errors = [np.max(np.maximum(np.abs(b[0] - a[0]) - floor, 0.0) / std)]
    errors += [np.max(np.abs(sb - sa)) for sa, sb in zip(a[1:], b[1:])]
    return float(max(errors))


def _rewrite_cell_node(g: GraphBuilder, node, inits: dict) -> None:
    cell, weights, nonlinearity = cell_node_weights(node, inits)
    hid = weights.hidden
    ins = list(node.input) + [""] * (8 - len(node.input))
    x = g.squeeze0(ins[0])  # (1, B, in) -> (B, in): single step only
    state = [g.squeeze0(ins[5])] + ([g.squeeze0(ins[6])] if cell == "lstm" else [])
    new = cell_step(g, cell, x, state, weights, nonlinearity, "cell")
    outs = list(node.output) + [""] * 3
    if outs[0]:
        g.op("Reshape", new[0], g.ints([1, 1, -1, hid]), out=outs[0])  # Y (T, dirs, B, H)
    for name, t in zip(outs[1:3], new):
        if name:
            g.op("Reshape", t, g.ints([1, -1, hid]), out=name)  # Y_h / Y_c (dirs, B, H)


def cell_node_weights(node, inits: dict) -> tuple[str, LayerWeights, str]:
    """(cell, weights in PyTorch layout, RNN nonlinearity) of an ONNX LSTM/GRU/RNN node
    that a single-step export writes; anything else is a ModelFormatError."""
    onnx = require("onnx")
    cell = node.op_type.lower()
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    where = f"{node.op_type} node {node.name or node.output[0]!r}"
    ins = list(node.input) + [""] * (8 - len(node.input))
    nonlinearity = _check_cell_attrs(cell, attrs, ins, where)
    w_ih, w_hh, bias = (_initializer(inits, ins[i], where) for i in (1, 2, 3))
    hid = int(attrs["hidden_size"])
    order = ONNX_TO_TORCH_GATES[cell]
    rows = [slice(b * hid, (b + 1) * hid) for b in order]

    def torch_order(mat):  # (G*H, ...) in ONNX gate order -> PyTorch gate order
        return np.concatenate([mat[r] for r in rows], axis=0).astype(np.float32)

    n_rows = GATES[cell] * hid
    if bias is None:
        bias = np.zeros((1, 2 * n_rows), dtype=np.float32)
    weights = LayerWeights(
        torch_order(w_ih[0]), torch_order(w_hh[0]),
        torch_order(bias[0, :n_rows]), torch_order(bias[0, n_rows:]),
    )  # fmt: skip
    return cell, weights, nonlinearity


def _check_cell_attrs(cell: str, attrs: dict, ins: list[str], where: str) -> str:
    """Refuse what the rewrite does not compute; return the RNN nonlinearity."""

    def refuse(why: str):
        raise ModelFormatError(f"cannot unroll {where}: {why}")

    if attrs.get("direction", b"forward") not in (b"forward", "forward"):
        refuse("only forward cells can stream")
    for name in ("clip", "activation_alpha", "activation_beta"):
        if name in attrs:
            refuse(f"attribute {name} is not supported")
    if attrs.get("layout", 0) != 0 or attrs.get("input_forget", 0) != 0:
        refuse("layout/input_forget are not supported")
    if ins[4]:
        refuse("sequence_lens is not supported (one step at a time)")
    if not ins[5] or (cell == "lstm" and not ins[6]):
        refuse("the initial state must be a graph input")
    if cell == "lstm" and ins[7]:
        refuse("peephole weights are not supported")
    if cell == "gru" and attrs.get("linear_before_reset", 0) != 1:
        refuse("only linear_before_reset=1 (PyTorch's GRU) is supported")
    acts = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
    defaults = {"rnn": ["Tanh"], "lstm": ["Sigmoid", "Tanh", "Tanh"], "gru": ["Sigmoid", "Tanh"]}
    if cell == "rnn" and acts in (["Relu"],):
        return "relu"
    if acts and acts != defaults[cell]:
        refuse(f"activations {acts} are not supported")
    return "tanh"


def _initializer(inits: dict, name: str, where: str) -> np.ndarray | None:
    if not name:
        return None
    if name not in inits:
        raise ModelFormatError(f"cannot unroll {where}: weight {name!r} is not an initializer")
    return require("onnx").numpy_helper.to_array(inits[name]).astype(np.float32)


def graph_ops(proto) -> set[str]:
    """Every op type in the graph (subgraphs of If/Loop included)."""
    ops: set[str] = set()

    def visit(graph):
        for node in graph.node:
            ops.add(node.op_type)
            for a in node.attribute:
                if a.g is not None and a.g.node:
                    visit(a.g)
                for sub in a.graphs:
                    visit(sub)

    visit(proto.graph)
    return ops
