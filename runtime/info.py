"""`edgernn info MODEL.onnx`: what a model file is, without running it."""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

from edgernn.runtime.metadata import shape_json
from edgernn.runtime.model import Model

GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def parameter_count(cell: str, layers: int, hidden: int, channels: int) -> int:
    """Trainable parameters of the recurrent stack and linear head (PyTorch layout)."""
    g = GATES[cell]
    total = 0
    for layer in range(layers):
        n_in = channels if layer == 0 else hidden
        total += g * hidden * (n_in + hidden + 2)  # W_ih, W_hh, b_ih, b_hh
    return total + hidden * channels + channels  # head


def graph_ops(path: str) -> dict[str, int]:
    """Op histogram of the graph, read with the runtime's own ONNX reader (no onnx needed)."""
    from edgernn.runtime.numpy_backend import load_onnx

    return dict(Counter(node.op_type for node in load_onnx(path).graph.nodes))


def describe(path: str) -> dict[str, Any]:
    model = Model(path)
    if model.generic:
        return describe_graph(model)
    m = model.meta
    desc: dict[str, Any] = {
        "path": path,
        "file_bytes": os.path.getsize(path),
        "cell": m.cell,
        "nonlinearity": m.nonlinearity if m.cell == "rnn" else None,
        "trained_as": m.trained_as,
        "layers": m.layers,
        "hidden": m.hidden,
        "channels": m.channels,
        "horizon": m.horizon,
        "residual": m.residual,
        "parameters": parameter_count(m.cell, m.layers, m.hidden, m.n_channels),
        "input": {"name": m.input, "shape": ["batch", m.n_channels]},
        "output": {"name": m.output, "shape": ["batch", m.n_channels]},
        "state": [
            {"input": s.input, "output": s.output, "shape": [s.layers, "batch", s.hidden]}
            for s in m.states
        ],
        "normalisation": {"mean": m.norm_mean, "std": m.norm_std},
        "error_scale": m.error_scale,
        "ops": graph_ops(path),
    }
    desc.update(m.extra)
    return desc


def describe_graph(model: Model) -> dict[str, Any]:
    """Any graph that is not one of our forecasters: its inputs, constants, outputs and
    states (shapes with "batch" at the batch axis), task and op histogram."""
    m = model.meta
    desc: dict[str, Any] = {
        "path": model.path,
        "file_bytes": os.path.getsize(model.path),
        "task": m.task,
        "channels": m.channels,
        "input": {"name": m.input, "shape": shape_json(model.input_shape)},
        "consts": [
            {"name": c.name, "dtype": c.dtype, "shape": shape_json(c.shape), "value": c.value}
            for c in m.consts
        ],
        "outputs": [
            {"name": o.name, "shape": shape_json(o.shape), "primary": o.name == m.output,
             **({"columns": list(o.columns)} if o.columns is not None else {})}
            for o in m.outputs
        ],  # fmt: skip
        "state": [s.to_json() for s in m.states],
        "classes": m.classes,
        "targets": m.targets,
        "batchable": model.batchable,
        "ops": graph_ops(model.path),
    }
    for key, value in m.extra.items():
        desc.setdefault(key, value)
    return desc


def format_description(d: dict[str, Any]) -> str:
    if "task" in d and "cell" not in d:
        return format_graph_description(d)
    cell = d["cell"] + (f" ({d['nonlinearity']})" if d.get("nonlinearity") else "")
    lines = [
        f"{d['path']}: edgernn model, {d['file_bytes'] / 1024:.1f} KiB",
        f"  cell         {cell}, {d['layers']} layer(s) x {d['hidden']} hidden, "
        f"trained as {d['trained_as']}",
        f"  parameters   {d['parameters']:,}",
        f"  channels     {', '.join(d['channels'])}",
        f"  horizon      {d['horizon']} step(s) ahead"
        + (" (residual head)" if d["residual"] else ""),
        f"  input        {d['input']['name']} {d['input']['shape']}",
        f"  output       {d['output']['name']} {d['output']['shape']}",
    ]
    for s in d["state"]:
        lines.append(f"  state        {s['input']} -> {s['output']} {s['shape']}")
    mean = ", ".join(f"{v:.4g}" for v in d["normalisation"]["mean"])
    std = ", ".join(f"{v:.4g}" for v in d["normalisation"]["std"])
    lines.append(f"  norm mean    [{mean}]")
    lines.append(f"  norm std     [{std}]")
    metrics = d.get("metrics") if isinstance(d.get("metrics"), dict) else {}
    mm, pp = metrics.get("model"), metrics.get("persistence")  # metadata: any JSON
    if isinstance(mm, dict) and isinstance(pp, dict):
        if all(isinstance(m.get("rmse"), (int, float)) for m in (mm, pp)):
            lines.append(
                f"  validation   RMSE {mm['rmse']:.4f} vs persistence {pp['rmse']:.4f} (normalised)"
            )
    q = d.get("quantization")
    if isinstance(q, dict):
        mode = q.get("mode")
        weights = "float16" if mode == "fp16" else "int8"
        if q.get("weight_bits") == 7:
            weights = "int8 (7-bit range)"
        acts = {"dynamic": "uint8 per step", "static": "uint8 calibrated"}.get(mode, "float32")
        lines.append(
            f"  quantized    {mode}: {weights} weights, {acts} activations"
            + (", per-channel scales" if q.get("per_channel") else "")
        )
    det = d.get("detector")
    if isinstance(det, dict):
        val = det.get("validation", {})
        fixed = det.get("fixed_threshold")
        lines.append(
            f"  detector     default threshold {det.get('threshold')}"
            + (f", fixed threshold {fixed:.3g}" if fixed is not None else "")
            + (
                f"; validation score p50 {val['score_p50']:.3g}, p99 {val['score_p99']:.3g}"
                if "score_p50" in val and "score_p99" in val
                else ""
            )
        )
    lines.append(_ops_line(d))
    return "\n".join(lines)


def _ops_line(d: dict[str, Any]) -> str:
    if d["ops"] is None:
        return "  ops          (install onnx to list the graph's ops)"
    return "  ops          " + ", ".join(f"{k} x{v}" for k, v in sorted(d["ops"].items()))


def format_graph_description(d: dict[str, Any]) -> str:
    producer = f" ({d['producer']})" if isinstance(d.get("producer"), str) else ""
    lines = [
        f"{d['path']}: stateful graph, task {d['task']}, {d['file_bytes'] / 1024:.1f} KiB"
        + producer,
        f"  input        {d['input']['name']} {d['input']['shape']}"
        + ("" if d["batchable"] else " (no batch axis: one stream per call)"),
        f"  channels     {', '.join(d['channels'])}",
    ]
    for c in d["consts"]:
        value = json.dumps(c["value"])
        value = value if len(value) <= 40 else value[:37] + "..."
        lines.append(f"  const        {c['name']} {c['dtype']} {c['shape']} = {value}")
    for o in d["outputs"]:
        cols = f" columns {', '.join(o['columns'])}" if o.get("columns") else ""
        lines.append(
            f"  output       {o['name']} {o['shape']}{' (primary)' if o['primary'] else ''}{cols}"
        )
    for s in d["state"]:
        lines.append(f"  state        {s['input']} -> {s['output']} {s['dtype']} {s['shape']}")
    if d.get("classes"):
        lines.append(f"  classes      {', '.join(d['classes'])}")
    if d.get("targets"):
        lines.append(f"  targets      {', '.join(d['targets'])}")
    q = d.get("quantization")
    if isinstance(q, dict):
        lines.append(f"  quantized    {q.get('mode')}")
    lines.append(_ops_line(d))
    return "\n".join(lines)
