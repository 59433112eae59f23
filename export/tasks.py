"""Export a regressor or classifier trained by `edgernn train` (format-2 metadata).

Inputs:  x [batch, C] raw units, h [layers, batch, hidden] (and c for LSTM)
Outputs: regress:  y [batch, K] the target columns in raw units, then the next states
         classify: probs [batch, K] class probabilities (softmax inside the graph, the
                   primary output), logits [batch, K], then the next states

The same gate as a forecaster's (export/onnx_export.py): onnx.checker, then a parity
run that streams the graph step by step from a random non-zero state and must match
PyTorch on the whole sequence, every output and the final states. Regressed values are
compared in the targets' normalised units, probabilities as they are, logits and states
with a part of the tolerance that scales with their magnitude.
"""

from __future__ import annotations

import os

import numpy as np

from edgernn import __version__
from edgernn.errors import require
from edgernn.export.onnx_export import (
    DEFAULT_OPSET,
    PARITY_TOLERANCE,
    STATE_RTOL,
    ParityReport,
    beyond_relative,
    check_opset,
    save_checked,
    stamp,
    state_names,
    trace_single_step,
)
from edgernn.runtime.metadata import ModelMeta, OutputSpec, StateSpec


def output_names(model) -> list[str]:
    """The graph's non-state outputs, the primary one first."""
    return ["probs", "logits"] if model.config.task == "classify" else ["y"]


def build_task_meta(model, extra: dict | None = None) -> ModelMeta:
    """Format-2 metadata of a regressor or classifier."""
    cfg = model.config
    ins, outs = state_names(model)
    columns = tuple(cfg.classes if cfg.task == "classify" else cfg.targets)
    network = {"cell": cfg.graph_cell, "layers": cfg.layers, "hidden": cfg.hidden,
               "nonlinearity": cfg.nonlinearity,
               "trained_as": "esn" if cfg.cell == "esn" else "bptt"}  # fmt: skip
    return ModelMeta(
        task=cfg.task,
        channels=list(cfg.channels) or [f"ch{i}" for i in range(cfg.n_channels)],
        input="x",
        output=output_names(model)[0],
        outputs=[OutputSpec(name, (None, len(columns)), columns) for name in output_names(model)],
        states=[StateSpec.stacked(i, o, cfg.layers, cfg.hidden) for i, o in zip(ins, outs)],
        classes=list(cfg.classes) if cfg.task == "classify" else None,
        targets=list(cfg.targets) if cfg.task == "regress" else None,
        time_axis="batch_first",
        norm_mean=model.mean.detach().cpu().tolist(),
        norm_std=model.std.detach().cpu().tolist(),
        extra={"producer": f"edgernn {__version__} export", "network": network,
               **dict(extra or {})},  # fmt: skip
    )


def export_task_onnx(
    model,
    path: str | os.PathLike,
    extra_meta: dict | None = None,
    opset: int = DEFAULT_OPSET,
    tolerance: float = PARITY_TOLERANCE,
    seed: int = 0,
) -> ParityReport:
    """Write `model` (a Forecaster whose task is regress or classify) to `path`, gated."""
    require("torch")
    require("onnx")
    check_opset(opset)
    path = os.fspath(path)
    model = model.cpu().eval()
    meta = build_task_meta(model, extra_meta)
    proto = trace_single_step(model, output_names(model), opset)
    stamp(proto, opset, meta.to_props())
    return save_checked(proto, model, path, tolerance=tolerance,
                        parity=lambda tmp: check_task_parity(model, tmp, seed=seed))  # fmt: skip


def check_task_parity(
    model, path: str, steps: int = 64, batch: int = 3, seed: int = 0
) -> ParityReport:
    """Stream the graph with onnxruntime, one step at a time, from a random non-zero state;
    compare every output and the final states with PyTorch's whole-sequence run."""
    torch = require("torch")
    ort = require("onnxruntime")
    import onnx

    cfg = model.config
    rng = np.random.default_rng(seed)
    mean, std = model.mean.cpu().numpy(), model.std.cpu().numpy()
    x = (rng.standard_normal((batch, steps, cfg.n_channels)) * std + mean).astype(np.float32)
    state0 = [(0.5 * rng.standard_normal((cfg.layers, batch, cfg.hidden))).astype(np.float32)
              for _ in range(model.n_state)]  # fmt: skip  # a zero start hides state bugs
    with torch.no_grad():
        y_ref, state_ref = model(torch.from_numpy(x), tuple(map(torch.from_numpy, state0)))
    y_ref = y_ref.numpy()  # (B, T, K): raw targets or logits

    meta = ModelMeta.from_props(
        {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}, path
    )  # the metadata written must read back
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    ins = [s.input for s in meta.states]
    outs = [o.name for o in meta.outputs] + [s.output for s in meta.states]
    state = dict(zip(ins, state0))
    got = {o.name: [] for o in meta.outputs}
    for t in range(steps):
        result = dict(zip(outs, session.run(outs, {meta.input: x[:, t], **state})))
        for o in meta.outputs:
            got[o.name].append(result[o.name])
        state = {s.input: result[s.output] for s in meta.states}
    got = {k: np.stack(v, axis=1) for k, v in got.items()}  # (B, T, K)

    if cfg.task == "regress":
        target_std = model.target_std.cpu().numpy()
        floor = 4 * np.finfo(np.float32).eps * np.abs(y_ref)  # float32's own resolution
        out_err = float(np.max(np.maximum(np.abs(got["y"] - y_ref) - floor, 0.0) / target_std))
    else:
        probs_ref = torch.softmax(torch.from_numpy(y_ref), dim=-1).numpy()
        out_err = max(float(np.max(np.abs(got["probs"] - probs_ref))),
                      beyond_relative(got["logits"], y_ref, STATE_RTOL))  # fmt: skip
    state_err = max(beyond_relative(state[s.input], ref.numpy(), STATE_RTOL)
                    for s, ref in zip(meta.states, state_ref))  # fmt: skip
    return ParityReport(out_err, state_err, steps, batch)
