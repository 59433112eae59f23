"""Smaller models for small devices: int8 (dynamic or static) and float16 weights.

    quantize_model("model.onnx", "model.int8.onnx", mode="dynamic")

Modes:
    dynamic  int8 weights; activations quantized to uint8 at run time, per step.
             LSTM cells use onnxruntime's DynamicQuantizeLSTM; RNN/GRU cells (which the
             onnxruntime quantizer does not handle) are first rewritten as primitive ops
             (export/unrolled.py) so their MatMuls become MatMulInteger.
    static   int8 weights and int8 activation ranges calibrated on a CSV (QDQ format,
             what NPU toolchains consume). Cells are always unrolled. Only MatMul inputs
             are quantized: the recurrent state itself stays float32, so rounding does
             not compound from step to step.
    fp16     weights stored as float16 and cast back to float32 when the graph loads:
             half the file, float32 arithmetic, float32 inputs and outputs.

The result keeps the stateful single-step interface and every metadata key of the
source, plus a `quantization` entry ({"mode", "per_channel"}), so
`edgernn.runtime.Model` and `edgernn run` use it unchanged. A run that leaves any weight
op unquantized fails instead of writing a file that only looks quantized.

What is not weights is kept small, exactly (at hidden 64 a 20 KB float file leaves a
~6 KB int8 one, of which the int8 W_hh alone is 4 KB): cells are rebuilt without the
exporter's plumbing (export/unrolled.py lean_unroll), then compact_graph drops dead
nodes, default zero points, duplicate constants and long names.

Every run is measured on a held-out stream (--eval CSV, else the tail of the
calibration CSV, else a synthetic stream shaped by the model's normalisation): file
size, forecast deviation from the float model, forecast error against the actual
samples, anomaly-flag agreement (when the model carries a detector) and per-step
latency before and after.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import platform
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from edgernn.errors import ExportError, InputError, ModelFormatError, require
from edgernn.export.onnx_export import ir_version_for, set_metadata, staged
from edgernn.export.unrolled import CELL_OPS, graph_ops, lean_unroll, unroll_cells
from edgernn.runtime.csvdata import read_csv
from edgernn.runtime.metadata import ModelMeta
from edgernn.runtime.model import Model

MODES = ("dynamic", "static", "fp16")
EVAL_FRACTION = 0.25  # tail of the calibration CSV held out for evaluation
MIN_EVAL_ROWS = 16
MAX_CALIB_SAMPLES = 4096  # calibration ranges settle long before this
CALIB_BATCH = 256  # samples per calibration run (the graph has a batch axis)
SYNTHETIC_STEPS = 1000
LATENCY_STEPS = 200
LATENCY_REPEATS = 3
WEIGHT_OPS = ("MatMul", "Gemm", *CELL_OPS)  # ops whose initializer inputs are weights
# What the file's `quantization` entry carries: the mode (weight and activation types
# follow from it) and the scale granularity. Op and parameter counts, the source and the
# calibration file are in the report; stored, they would be 1% of a hidden-64 float file.
STORED_KEYS = ("mode", "per_channel", "weight_bits")
INT8_OPS = {
    "dynamic": ("MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"),
    "static": ("DequantizeLinear",),
}


@dataclass
class QuantizeReport:
    mode: str
    path: str
    channels: list[str]
    size_before: int
    size_after: int
    eval_source: str
    eval_steps: int
    skipped_rows: int  # bad CSV rows skipped (--skip-bad-rows), calibration and evaluation
    deviation_rel: list[float]  # RMSE(quantized - float forecast) / signal std, per channel
    deviation_max: list[float]  # max |quantized - float forecast|, raw units, per channel
    error_before: Optional[list[float]]  # forecast RMSE vs the actual samples / signal std
    error_after: Optional[list[float]]
    flag_agreement: Optional[float]  # share of scored samples with the same anomaly flag
    flags_before: Optional[int]
    flags_after: Optional[int]
    latency_before_us: float  # both on onnxruntime
    latency_after_us: float
    default_backends: tuple[str, str] = ("onnxruntime", "onnxruntime")  # what Model() picks
    default_latency_us: Optional[tuple[float, float]] = None  # when that is not onnxruntime
    quantization: dict = field(default_factory=dict)  # what was done; STORED_KEYS go in the file

    @property
    def size_ratio(self) -> float:
        return self.size_after / self.size_before

    @property
    def worst_deviation(self) -> float:
        return max(self.deviation_rel)

    def lines(self) -> list[str]:
        """The report as printed by `edgernn quantize`."""
        q = self.quantization
        out = [
            f"wrote {self.path}: {self.mode} ({q['weights']} weights, {q['activations']}"
            f"{', cells unrolled' if q.get('unrolled') else ''})",
            f"  size      {_kib(self.size_before)} -> {_kib(self.size_after)} "
            f"({self.size_ratio:.2f}x)",
            f"  eval      {self.eval_source}, {self.eval_steps} steps"
            + (f" ({self.skipped_rows} bad rows skipped)" if self.skipped_rows else ""),
            "  deviation " + ", ".join(
                f"{c} {100 * r:.2f}% of std (max {m:.3g})"
                for c, r, m in zip(self.channels, self.deviation_rel, self.deviation_max)
            ),
        ]  # fmt: skip
        if self.error_before is not None and self.error_after is not None:
            out.append(
                f"  forecast  RMSE vs actual {100 * np.mean(self.error_before):.2f}% -> "
                f"{100 * np.mean(self.error_after):.2f}% of std (mean over channels)"
            )
        if self.flag_agreement is not None:
            out.append(
                f"  anomalies flags agree on {100 * self.flag_agreement:.2f}% of samples "
                f"({self.flags_before} -> {self.flags_after} flagged)"
            )
        out.append(
            f"  latency   {self.latency_before_us:.1f} -> {self.latency_after_us:.1f} us/step "
            "(onnxruntime, median, 1 thread)"
        )
        if self.default_latency_us is not None:
            (bf, bq), (lf, lq) = self.default_backends, self.default_latency_us
            out.append(
                f"            {lf:.1f} ({bf}) -> {lq:.1f} ({bq}) us/step on the default backends"
            )
        return out

    def to_dict(self) -> dict:
        d = dict(vars(self))
        d["size_ratio"] = self.size_ratio
        return d


def _probe_runs(model: Model) -> None:
    """One step on zeros: a graph that does not run as its metadata says (a damaged
    file) fails here in one line, not deep inside quantization."""
    n = model.fixed_batch
    model.stream(batch=n).step(np.zeros((n, model.n_channels) if n else model.n_channels, np.float32))


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


# ------------------------------------------------------------------------ entry point
def quantize_model(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    mode: str = "dynamic",
    calib: Optional[str] = None,
    eval_csv: Optional[str] = None,
    unroll: bool = False,
    per_channel: bool = False,
    skip_bad_rows: bool = False,
    max_deviation: Optional[float] = None,
) -> QuantizeReport:
    """Quantize the edgernn model `src` into `dst` and measure what it cost.

    calib: CSV for static calibration (its tail is held out for evaluation unless
    eval_csv is given). unroll: write LSTM cells as primitive ops too (portable
    MatMulInteger instead of onnxruntime's DynamicQuantizeLSTM). per_channel: one int8
    scale per weight column (about half the deviation, a ~10% larger file). max_deviation: fail,
    keeping the file as DST.failed, when the forecast deviates from the float model by
    more than this fraction of the signal std on any channel.
    """
    onnx = require("onnx")
    src, dst = os.fspath(src), os.fspath(dst)
    if mode not in MODES:
        raise InputError(f"unknown quantization mode {mode!r}; choose from {', '.join(MODES)}")
    if os.path.exists(dst) and os.path.exists(src) and os.path.samefile(src, dst):  # links too
        raise InputError("the output path is the input model; write the quantized model elsewhere")
    # Both models are compared on onnxruntime, the one backend that runs every variant.
    float_model = Model(src, backend="onnxruntime")  # loadable edgernn model or one-line error
    _probe_runs(float_model)
    meta = float_model.meta
    if "quantization" in meta.extra:
        raise InputError(f"{src} is already quantized ({meta.extra['quantization'].get('mode')})")
    if mode == "static" and float_model.generic:
        raise InputError(
            f"--mode static calibrates edgernn forecasters; {src} is task {meta.task}: use "
            "--mode dynamic or fp16"
        )
    if mode == "static" and calib is None:
        raise InputError("--mode static needs calibration data: --calib DATA.csv")
    on_bad = "skip" if skip_bad_rows else "error"
    calib_x, eval_x, eval_source, skipped = _split_data(meta, calib, eval_csv, on_bad)

    proto = onnx.load(src)
    if float_model.input_shape[0] is None:  # a graph without a batch axis has none to fix
        _refuse_fixed_batch(proto, meta, src)
    props = {p.key: p.value for p in proto.metadata_props}  # copied verbatim
    if mode == "static" or unroll or _needs_unroll(proto, mode):
        # any other graph's cells are rewritten in place (the lean rebuild knows ours only)
        proto = unroll_cells(proto) if float_model.generic else _unroll(proto, meta)
    with tempfile.TemporaryDirectory() as tmp:
        if mode == "dynamic":
            out = _quantize_dynamic(proto, tmp, per_channel)
        elif mode == "static":
            feeds = calibration_feeds(float_model, calib_x)
            out = _quantize_static(proto, feeds, tmp, per_channel)
        else:
            out = convert_fp16(proto)
    compact_graph(out)
    ops = check_quantized(out, mode)  # on the graph as written
    entry = _metadata_entry(mode, ops, out, src, calib, calib_x)
    if mode != "fp16":
        entry["per_channel"] = per_channel
        entry["weight_bits"] = weight_bits()
    with staged(dst) as tmp:  # dst is replaced only by a model that passes
        _write(out, tmp, props, {k: entry[k] for k in STORED_KEYS if k in entry})
        quant_model = _load_written(tmp, dst)
        report = measure(float_model, quant_model, eval_x, eval_source)
        report.path, report.mode, report.quantization = dst, mode, entry
        report.skipped_rows = skipped
        if max_deviation is not None and report.worst_deviation > max_deviation:
            os.replace(tmp, dst + ".failed")
            raise ExportError(
                f"quantized forecast deviates by {100 * report.worst_deviation:.2f}% of signal "
                f"std (limit {100 * max_deviation:.3g}%); the model was kept as {dst}.failed"
            )
    return report


def _needs_unroll(proto, mode: str) -> bool:
    """The onnxruntime quantizer turns LSTM into DynamicQuantizeLSTM but leaves GRU and
    RNN float: those are unrolled so their MatMuls quantize."""
    ops = graph_ops(proto)
    return mode == "dynamic" and bool(ops & {"GRU", "RNN"})


def _unroll(proto, meta: ModelMeta):
    """Cells as primitive ops: the lean rebuild where the graph is recognised and proved
    to compute the same step, else each cell node rewritten in place."""
    if not graph_ops(proto) & set(CELL_OPS):
        return proto  # exported unrolled already, in the lean form
    try:
        return lean_unroll(proto, meta)
    except ModelFormatError:
        return unroll_cells(proto)


# ------------------------------------------------------------------------------- data
def _refuse_fixed_batch(proto, meta: ModelMeta, src: str) -> None:
    """A graph exported with a fixed batch of N > 1 cannot be streamed one sample at a
    time, so it can be neither calibrated nor measured here."""
    x = next((v for v in proto.graph.input if v.name == meta.input), None)
    dim = x.type.tensor_type.shape.dim[0] if x is not None else None
    if dim is not None and dim.HasField("dim_value") and dim.dim_value != 1:
        raise InputError(
            f"{src} has a fixed batch of {dim.dim_value}; quantize the export with a dynamic "
            "(or 1) batch and fix the batch afterwards"
        )


def _split_data(meta: ModelMeta, calib, eval_csv, on_bad: str):
    """(calibration rows or None, evaluation rows, description of the evaluation rows,
    bad rows skipped)."""
    skipped = 0
    calib_x = None
    if calib is not None:
        calib_x, skipped = _read(calib, meta, on_bad)
    if eval_csv is not None:
        eval_x, n = _read(eval_csv, meta, on_bad)
        skipped += n
        source = os.path.basename(eval_csv)
    elif calib_x is not None:
        cut = int(round(len(calib_x) * (1 - EVAL_FRACTION)))
        calib_x, eval_x = calib_x[:cut], calib_x[cut:]
        source = f"last {len(eval_x)} rows of {os.path.basename(calib)} (held out)"
    else:
        eval_x = synthetic_stream(meta)
        scaled = "from the model's normalisation" if meta.norm_std else "at unit scale"
        source = f"synthetic stream {scaled} (pass --eval CSV for real data)"
    if len(eval_x) < MIN_EVAL_ROWS:
        raise InputError(
            f"the evaluation stream has {len(eval_x)} rows; at least {MIN_EVAL_ROWS} are needed"
        )
    if calib_x is not None and len(calib_x) < MIN_EVAL_ROWS:
        raise InputError(
            f"{calib} leaves {len(calib_x)} calibration rows; at least {MIN_EVAL_ROWS} are needed"
        )
    return calib_x, eval_x, source, skipped


def _read(path: str, meta: ModelMeta, on_bad: str) -> tuple[np.ndarray, int]:
    table = read_csv(path, channels=meta.channels, on_bad=on_bad)
    return table.values, len(table.skipped_rows)  # (T, C)


def synthetic_stream(meta: ModelMeta, steps: int = SYNTHETIC_STEPS, seed: int = 0) -> np.ndarray:
    """Smooth noise plus a slow oscillation in normalised units, mapped to raw units:
    something with the model's scale when no data file is given."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)[:, None]
    noise = rng.standard_normal((steps, meta.n_channels))
    smooth = np.zeros_like(noise)
    for i in range(1, steps):
        smooth[i] = 0.95 * smooth[i - 1] + 0.3 * noise[i]  # AR(1), std ~ 1
    phase = rng.uniform(0, 2 * np.pi, meta.n_channels)
    xn = 0.7 * np.sin(2 * np.pi * t / 50 + phase) + 0.7 * smooth  # (T, C)
    if not meta.norm_std:  # a graph without our normalisation: unit scale
        return xn.astype(np.float32)
    return (xn * np.asarray(meta.norm_std) + np.asarray(meta.norm_mean)).astype(np.float32)


def calibration_feeds(model: Model, X: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Graph inputs seen when streaming X through the float model: each sample paired
    with the state it actually meets, so state ranges are realistic, not zeros."""
    step = max(1, len(X) // MAX_CALIB_SAMPLES)
    stream = model.stream()
    xs, states = [], []
    for t, x in enumerate(X):
        if t % step == 0:
            xs.append(x)
            states.append(stream.state)  # name -> (L, H)
        stream.step(x)
    feeds = []
    for i in range(0, len(xs), CALIB_BATCH):
        feed = {model.meta.input: np.stack(xs[i : i + CALIB_BATCH]).astype(np.float32)}
        for name in states[0]:
            feed[name] = np.stack(
                [s[name] for s in states[i : i + CALIB_BATCH]], axis=1
            )  # (L, B, H)
        feeds.append(feed)
    return feeds


# ----------------------------------------------------------------------- quantizers
@contextlib.contextmanager
def _quiet():
    """The onnxruntime quantizer logs advice (pre-processing, opset) on the root logger."""
    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.WARNING))
    try:
        yield
    finally:
        logging.disable(previous)


VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def weight_bits() -> int:
    """7 on x86 CPUs without VNNI, else 8. There onnxruntime's uint8 x int8 kernels add
    pairs of products in int16, which saturates with full-range int8 weights: on an
    AVX2-only EPYC a 2-layer RNN's worst deviation was 0.22 (under 0.02 with VNNI), and
    the deviation report and `--max-deviation` measure on the machine that quantizes.
    7-bit weights (onnxruntime's reduce_range) cannot saturate; they round twice as
    coarsely, so where the kernels allow (VNNI, ARM: the Pi) the weights keep 8 bits."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return 8
    try:
        with open("/proc/cpuinfo") as fh:
            flags = set(fh.read().split())
    except OSError:  # not Linux: cannot tell, so the safe choice
        return 7
    return 8 if flags & set(VNNI_FLAGS) else 7


def _quantize_dynamic(proto, tmp: str, per_channel: bool = False):
    onnx = require("onnx")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = os.path.join(tmp, "dynamic.onnx")
    with _quiet():
        quantize_dynamic(
            proto,
            out,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "LSTM"],
            per_channel=per_channel,
            reduce_range=weight_bits() == 7,
        )
    return onnx.load(out)


def _quantize_static(proto, feeds: list[dict], tmp: str, per_channel: bool = False):
    onnx = require("onnx")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Feeds(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    out = os.path.join(tmp, "static.onnx")
    with _quiet():
        quantize_static(
            proto, out, Feeds(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            reduce_range=weight_bits() == 7,
            calibrate_method=CalibrationMethod.MinMax,
        )  # fmt: skip
    model = onnx.load(out)
    keep_float_paths(model)
    return model


def keep_float_paths(proto) -> None:
    """Only MatMuls read quantize-dequantized activations; every other reader of such a
    tensor gets the float original back. The quantizer hands the rounded copy to all
    readers, which would put int8 rounding into the recurrent state and the output;
    where the rounded copy took over a graph output's name (a state output that the
    next layer or the head also multiplies), the float original gets the name back."""
    graph = proto.graph
    produced = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    for dq in [n for n in graph.node if n.op_type == "DequantizeLinear"]:
        q = produced.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue  # a weight: its DequantizeLinear reads an initializer
        original = q.input[0]
        if dq.output[0] in outputs:
            name = dq.output[0]
            _rename(graph, name, name + "_rounded")
            _rename(graph, original, name)
            original = name
        for node in graph.node:
            if node.op_type in ("MatMul", "QuantizeLinear", "DequantizeLinear"):
                continue
            for k, name in enumerate(node.input):
                if name == dq.output[0]:
                    node.input[k] = original
    if any(dq.output[0] in outputs for dq in graph.node if dq.op_type == "DequantizeLinear"):
        raise ExportError("static quantization rounded a graph output; refusing to write it")


def _rename(graph, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]


def convert_fp16(proto):
    """Weights stored as float16, each cast back to float32 by a Cast node at load
    (onnxruntime folds the casts once), so arithmetic and I/O stay float32.
    Normalisation constants and biases stay float32: they set the absolute scale."""
    onnx = require("onnx")
    from onnx import TensorProto, helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    weights = _weight_initializers(graph)
    casts, converted = [], []
    for init in graph.initializer:
        if init.name not in weights:
            converted.append(init)
            continue
        w = numpy_helper.to_array(init)
        if w.size and np.abs(w).max() > np.finfo(np.float16).max:
            raise ExportError(f"weight {init.name!r} exceeds the float16 range (|w| > 65504)")
        half = w.astype(np.float16)
        converted.append(numpy_helper.from_array(half, init.name + "_fp16"))
        casts.append(
            helper.make_node("Cast", [init.name + "_fp16"], [init.name], to=TensorProto.FLOAT)
        )
    del graph.initializer[:]
    graph.initializer.extend(converted)
    nodes = casts + list(graph.node)  # casts first: the graph stays topologically sorted
    del graph.node[:]
    graph.node.extend(nodes)
    return out


def _weight_initializers(graph) -> set[str]:
    """Float32 initializers read as the weight (not data) input of a MatMul/Gemm/cell."""
    from onnx import TensorProto

    floats = {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    names = set()
    for node in graph.node:
        if node.op_type in WEIGHT_OPS:
            names.update(n for n in node.input[1:] if n in floats)
    return names


def check_quantized(proto, mode: str) -> dict[str, int]:
    """Refuse a result with any weight op left float; return the quantized op counts."""
    from onnx import TensorProto

    graph = proto.graph
    left = sorted(
        f"{n.op_type} {n.name or n.output[0]!r}"
        for n in graph.node
        if n.op_type in WEIGHT_OPS and _weight_initializers_of(n, graph)
    )
    if left:
        raise ExportError(
            f"{mode} quantization left {len(left)} weight op(s) float ({', '.join(left[:3])}); "
            "refusing to write a partly quantized model"
        )
    counts = Counter(n.op_type for n in graph.node)
    if mode == "fp16":
        n_half = sum(t.data_type == TensorProto.FLOAT16 for t in graph.initializer)
        found = {"Cast": counts["Cast"]} if n_half else {}
    else:
        found = {op: counts[op] for op in INT8_OPS[mode] if counts[op]}
    if not found:
        raise ExportError(f"{mode} quantization produced no quantized ops; nothing was written")
    return found


def _weight_initializers_of(node, graph) -> bool:
    from onnx import TensorProto

    floats = {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    return any(n in floats for n in node.input[1:])


# ----------------------------------------------------------------------------- output
def _metadata_entry(mode, ops, proto, src, calib, calib_x) -> dict:
    from onnx import TensorProto

    weight_types = {
        TensorProto.INT8: "int8",
        TensorProto.UINT8: "int8",
        TensorProto.FLOAT16: "float16",
    }
    params = Counter()
    for t in proto.graph.initializer:
        params[weight_types.get(t.data_type, "other")] += int(np.prod(t.dims))
    entry = {
        "mode": mode,
        "weights": "float16" if mode == "fp16" else "int8",
        "activations": {
            "dynamic": "uint8 per step",
            "static": "uint8 calibrated",
            "fp16": "float32",
        }[mode],
        # cells as primitive ops (unrolled here, or exported that way)
        "unrolled": not graph_ops(proto) & {*CELL_OPS, "DynamicQuantizeLSTM"},
        "ops": ops,
        "quantized_params": params["float16" if mode == "fp16" else "int8"],
        "source": os.path.basename(src),
        "source_bytes": os.path.getsize(src),
    }
    if mode == "static":
        entry["calibration"] = {"file": os.path.basename(calib), "rows": int(len(calib_x))}
    return entry


def compact_graph(proto) -> None:
    """Shrink what is not weights, exactly: Constant nodes become initializers, nodes
    whose results nobody reads go, identical initializers are stored once, all-zero
    weight zero points (the default) are left out, node names go and internal tensors
    get one- or two-letter names. The quantizer's names
    (`/model/rnn/LSTM_output_0_quantized_scale`) can outweigh a small model's weights.
    Graph inputs and outputs, which the metadata names, stay."""
    from onnx import numpy_helper

    graph = proto.graph
    constants = [
        n for n in graph.node if n.op_type == "Constant" and _constant_value(n) is not None
    ]
    for node in constants:
        graph.initializer.append(numpy_helper.from_array(_constant_value(node), node.output[0]))
        graph.node.remove(node)
    _drop_dead_nodes(graph)
    _drop_zero_weight_zero_points(graph)
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    alias: dict[str, str] = {}  # duplicate initializer -> the copy that is kept
    seen: dict[tuple, str] = {}
    used = {name for n in graph.node for name in n.input}
    unique = []
    for init in graph.initializer:
        if init.name not in used:
            continue
        key = (init.data_type, tuple(init.dims), numpy_helper.to_array(init).tobytes())
        if key in seen:
            alias[init.name] = seen[key]
        else:
            seen[key] = init.name
            unique.append(init)
    del graph.initializer[:]
    graph.initializer.extend(_packed_ints(t) for t in unique)
    names = _short_names(keep)
    mapping: dict[str, str] = {}

    def short(name: str) -> str:
        name = alias.get(name, name)
        if not name or name in keep:
            return name
        if name not in mapping:
            mapping[name] = next(names)
        return mapping[name]

    for init in graph.initializer:
        init.name = short(init.name)
    for node in graph.node:
        node.ClearField("name")  # cleared, not set to "": an empty string is still stored
        node.ClearField("doc_string")
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    del graph.value_info[:]
    graph.name = "edgernn"
    graph.ClearField("doc_string")


def _packed_ints(init):
    """An int64 initializer (shapes, axes, slice bounds) as varints: a byte or two per
    value instead of raw_data's eight."""
    from onnx import TensorProto, helper, numpy_helper

    if init.data_type != TensorProto.INT64:
        return init
    values = numpy_helper.to_array(init)
    return helper.make_tensor(init.name, TensorProto.INT64, values.shape, values.ravel().tolist())


def _short_names(taken: set[str]):
    """a .. z, A .. Z, then two letters: every name a serialized byte or two."""
    import itertools
    import string

    letters = string.ascii_letters
    for n in itertools.count(1):
        for chars in itertools.product(letters, repeat=n):
            name = "".join(chars)
            if name not in taken:
                yield name


def _drop_dead_nodes(graph) -> None:
    """Nodes none of whose results is read: the QDQ pair static quantization leaves on
    each MatMul output once keep_float_paths has handed its readers the float tensor."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {name for n in graph.node for name in n.input} | outputs
        dead = [n for n in graph.node if not any(o in read for o in n.output if o)]
        if not dead:
            return
        for node in dead:
            graph.node.remove(node)


# The weight's zero point: an optional last input that defaults to 0.
_WEIGHT_ZERO_POINT = {"MatMulInteger": (1, 3), "DequantizeLinear": (0, 2)}


def _drop_zero_weight_zero_points(graph) -> None:
    """int8 weights are quantized symmetrically: their zero point is all zeros, which is
    what the op assumes when the input is left out (activation zero points stay)."""
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type not in _WEIGHT_ZERO_POINT or node.domain not in ("", "ai.onnx"):
            continue
        w_at, zp_at = _WEIGHT_ZERO_POINT[node.op_type]
        if len(node.input) != zp_at + 1:
            continue
        weight, zp = inits.get(node.input[w_at]), inits.get(node.input[zp_at])
        if weight is None or zp is None or weight.data_type != TensorProto.INT8:
            continue
        if not numpy_helper.to_array(zp).any():
            del node.input[zp_at]


def _constant_value(node) -> Optional[np.ndarray]:
    from onnx import helper, numpy_helper

    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(helper.get_attribute_value(a))
    return None


def _write(proto, dst: str, props: dict[str, str], entry: dict) -> None:
    onnx = require("onnx")
    set_metadata(proto, {**props, "quantization": _json(entry)})
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    proto.ir_version = ir_version_for(opset)
    proto.producer_name = "edgernn"
    proto.ClearField("producer_version")  # the quantizer's, not ours
    proto.ClearField("doc_string")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"quantized graph fails onnx.checker: {str(e).splitlines()[0]}") from e
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    onnx.save(proto, dst)


def _json(value) -> str:
    import json

    return json.dumps(value, separators=(",", ":"))


def _load_written(tmp: str, dst: str) -> Model:
    try:
        return Model(tmp, backend="onnxruntime")
    except ModelFormatError as e:
        os.replace(tmp, dst + ".failed")
        raise ExportError(f"the quantized model does not load ({e}); kept as {dst}.failed") from e


# ---------------------------------------------------------------------- measurement
def measure(float_model: Model, quant_model: Model, X: np.ndarray, source: str) -> QuantizeReport:
    """Stream X through both models and compare (see QuantizeReport)."""
    meta = float_model.meta
    y_f = float_model.stream().run(X)  # (T, C)
    y_q = quant_model.stream().run(X)
    if float_model.generic:  # the primary output's deviation, relative to its own spread
        y_f, y_q = y_f.reshape(len(X), -1).astype(np.float64), y_q.reshape(len(X), -1)
        scale = y_f.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
    else:
        scale = X.std(axis=0)
        scale = np.where(scale > 0, scale, np.asarray(meta.norm_std, dtype=np.float32))
    diff = y_q - y_f
    dev_rel = np.sqrt((diff**2).mean(axis=0)) / scale
    errors = [None, None]
    h = meta.horizon
    if not float_model.generic and not source.startswith("synthetic") and len(X) > h:
        target = X[h:]  # y[t] forecasts x[t + h]
        errors = [
            (np.sqrt(((y[:-h] - target) ** 2).mean(axis=0)) / scale).tolist() for y in (y_f, y_q)
        ]
    flags = anomaly_flags(float_model, quant_model, X)
    lat_f, lat_q = step_latency([float_model, quant_model], X)
    defaults = [Model(m.path) for m in (float_model, quant_model)]  # auto: c, ort or numpy
    backends = (defaults[0].backend, defaults[1].backend)
    default_latency = None
    if backends != ("onnxruntime", "onnxruntime"):
        default_latency = tuple(step_latency(defaults, X))
    return QuantizeReport(
        mode="",
        path=quant_model.path,
        channels=_primary_columns(meta) if float_model.generic else list(meta.channels),
        size_before=os.path.getsize(float_model.path),
        size_after=os.path.getsize(quant_model.path),
        eval_source=source,
        eval_steps=len(X),
        skipped_rows=0,
        deviation_rel=dev_rel.tolist(),
        deviation_max=np.abs(diff).max(axis=0).tolist(),
        error_before=errors[0],
        error_after=errors[1],
        flag_agreement=flags[0],
        flags_before=flags[1],
        flags_after=flags[2],
        latency_before_us=lat_f,
        latency_after_us=lat_q,
        default_backends=backends,
        default_latency_us=default_latency,
    )


def _primary_columns(meta: ModelMeta) -> list[str]:
    """Names of the primary output's values: its columns, else output_i."""
    from edgernn.runtime.metadata import concrete

    o = meta.primary
    size = int(np.prod(concrete(o.shape, None), dtype=np.int64))
    if size == 1:
        return [o.name]
    if o.columns is not None and len(o.columns) == size:
        return [f"{o.name}_{c}" for c in o.columns]
    return [f"{o.name}_{i}" for i in range(size)]


def anomaly_flags(float_model: Model, quant_model: Model, X: np.ndarray):
    """(agreement, flagged by float, flagged by quantized) when the model carries a
    detector calibration (or an error scale) and the detector layer is installed;
    (None, None, None) otherwise."""
    meta = float_model.meta
    if not meta.is_forecaster or ("detector" not in meta.extra and meta.error_scale is None):
        return None, None, None
    if importlib.util.find_spec("edgernn.runtime.detector") is None:
        return None, None, None
    from edgernn.runtime.detector import Detector
    from edgernn.runtime.monitor import Monitor

    runs = []
    for model in (float_model, quant_model):
        monitor = Monitor(model, detector=Detector.from_meta(model.meta))
        runs.append([monitor.process(x).get("anomaly") for x in X])
    scored = [(a, b) for a, b in zip(*runs) if a is not None and b is not None]
    if not scored:
        return None, None, None
    a, b = np.array(scored, dtype=bool).T
    return float((a == b).mean()), int(a.sum()), int(b.sum())


def step_latency(models: list[Model], X: np.ndarray) -> list[float]:
    """Median single-sample step time per model, in microseconds. The models take turns
    repeat by repeat, so a burst of load on a shared machine hits them alike."""
    xs = X[: LATENCY_STEPS + 20]
    times: list[list[float]] = [[] for _ in models]
    for _ in range(LATENCY_REPEATS):
        for model, acc in zip(models, times):
            stream = model.stream()
            for i, x in enumerate(xs):
                t0 = time.perf_counter()
                stream.step(x)
                if i >= 20:  # the first steps pay for allocation
                    acc.append(time.perf_counter() - t0)
    return [1e6 * float(np.median(t)) for t in times]
