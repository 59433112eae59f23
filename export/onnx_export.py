"""Export a trained Forecaster as a stateful single-step ONNX graph.

Inputs:  x [batch, C] raw units, h [layers, batch, hidden] (and c for LSTM)
Outputs: y [batch, C] raw units, h_out (and c_out)

The export gates itself: onnx.checker, then a parity run in which the edgernn
runtime steps the graph sample by sample from a random non-zero state and must
match PyTorch running the whole sequence (outputs and final state) within
`tolerance`. Outputs are compared in normalised units (y - mean) / std, the scale
the network computes in, so a channel measured in hundreds of volts is held to the
same relative precision as one measured in millivolts; only the float32 representation
floor of the raw output value (4 ulps) is allowed on top. States are held to
|a - b| <= tolerance + STATE_RTOL * |b|: an LSTM cell state that integrates to |c| ~ 40
carries a few float32 ulps of rounding (~1e-5 absolute) while the outputs agree to 1e-6.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from edgernn.errors import ExportError, require
from edgernn.runtime.metadata import ModelMeta, StateSpec

DEFAULT_OPSET = 17
MIN_OPSET = 11  # older opsets lack kernels in onnxruntime for ops the graph needs
PARITY_TOLERANCE = 1e-5
STATE_RTOL = 1e-5  # the part of a state's tolerance that scales with its magnitude


@dataclass
class ParityReport:
    max_abs_output: float
    max_abs_state: float
    steps: int
    batch: int

    @property
    def max_abs(self) -> float:
        return max(self.max_abs_output, self.max_abs_state)


def state_names(model) -> tuple[list[str], list[str]]:
    names = ["h", "c"][: model.n_state]
    return names, [n + "_out" for n in names]


def build_meta(model, error_scale=None, extra: dict | None = None) -> ModelMeta:
    cfg = model.config
    ins, outs = state_names(model)
    return ModelMeta(
        cell=cfg.graph_cell,
        nonlinearity=cfg.nonlinearity,
        trained_as="esn" if cfg.cell == "esn" else "bptt",
        layers=cfg.layers,
        hidden=cfg.hidden,
        horizon=cfg.horizon,
        residual=cfg.residual,
        channels=list(cfg.channels) or [f"ch{i}" for i in range(cfg.n_channels)],
        input="x",
        output="y",
        states=[StateSpec.stacked(i, o, cfg.layers, cfg.hidden) for i, o in zip(ins, outs)],
        norm_mean=model.mean.detach().cpu().tolist(),
        norm_std=model.std.detach().cpu().tolist(),
        error_scale=list(error_scale) if error_scale is not None else None,
        extra=dict(extra or {}),
    )


def ir_version_for(opset: int) -> int:
    """The oldest IR version that supports `opset`: what older runtimes can still read
    (onnx 1.23 writes IR 14 by default, which onnxruntime 1.31 refuses)."""
    onnx = require("onnx")
    candidates = [ir for _, ir, op, *_ in onnx.helper.VERSION_TABLE if op >= opset]
    if not candidates:
        raise ExportError(f"opset {opset} is newer than this onnx package supports")
    return min(candidates)


def export_onnx(
    model,
    path: str | os.PathLike,
    error_scale=None,
    extra_meta: dict | None = None,
    opset: int = DEFAULT_OPSET,
    tolerance: float = PARITY_TOLERANCE,
    seed: int = 0,
) -> ParityReport:
    """Write `model` (a Forecaster) to `path` and check it; raises ExportError on failure."""
    require("torch")
    require("onnx")
    check_opset(opset)
    path = os.fspath(path)
    model = model.cpu().eval()
    meta = build_meta(model, error_scale, extra_meta)
    proto = trace_single_step(model, ["y"], opset)
    stamp(proto, opset, meta.to_props())
    return save_checked(proto, model, path, tolerance=tolerance, seed=seed)


def check_opset(opset: int) -> None:
    if opset < MIN_OPSET:
        raise ExportError(f"opset must be >= {MIN_OPSET}, got {opset}")


def trace_single_step(model, primary: list[str], opset: int):
    """The ONNX graph of one step of `model` (a Forecaster, on the CPU, in eval mode):
    inputs x and the states, outputs `primary` and the next states, batch axes dynamic."""
    torch = require("torch")
    onnx = require("onnx")
    from edgernn.train.model import SingleStep

    ins, outs = state_names(model)
    dynamic_axes = {n: {0: "batch"} for n in ["x", *primary]}
    dynamic_axes.update({n: {1: "batch"} for n in ins + outs})
    example = (torch.zeros(1, model.config.n_channels), *model.init_state(1))
    with tempfile.TemporaryDirectory() as tmp:
        raw_path = os.path.join(tmp, "raw.onnx")
        with warnings.catch_warnings():
            # The exporter warns that RNNs with batch_first/explicit state may behave
            # differently for other batch sizes: the parity run settles that.
            warnings.simplefilter("ignore")
            _torch_export(
                SingleStep(model),
                example,
                raw_path,
                input_names=["x", *ins],
                output_names=[*primary, *outs],
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                dynamo=False,
            )
        return onnx.load(raw_path)


def stamp(proto, opset: int, props: dict[str, str]) -> None:
    """The IR version for `opset`, the producer, and `props` as the graph's metadata."""
    proto.ir_version = ir_version_for(opset)
    proto.producer_name = "edgernn"
    set_metadata(proto, props)


def check_graph(proto, what: str = "exported graph") -> None:
    """onnx.checker (full check); a failure is one ExportError line."""
    onnx = require("onnx")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{what} fails onnx.checker: {str(e).splitlines()[0]}") from e


def set_metadata(proto, props: dict[str, str]) -> None:
    """Replace the graph's metadata_props with `props`."""
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def save_checked(
    proto,
    model,
    path: str,
    tolerance: float = PARITY_TOLERANCE,
    seed: int = 0,
    batch: int = 3,
    what: str = "exported graph",
    parity: Optional[Callable[[str], ParityReport]] = None,
) -> ParityReport:
    """The export gate every graph variant passes: onnx.checker, save, then streaming
    parity against PyTorch; a graph that fails parity is kept as PATH.failed. `parity`
    runs that check on the saved file (default: check_parity, the forecaster's)."""
    onnx = require("onnx")
    check_graph(proto, what)
    with staged(path) as tmp:
        onnx.save(proto, tmp)
        if parity is None:
            report = check_parity(model, tmp, batch=batch, seed=seed)
        else:
            report = parity(tmp)
        if not report.max_abs <= tolerance:
            os.replace(tmp, path + ".failed")
            raise ExportError(
                f"parity check failed: {what} differs from PyTorch by {report.max_abs:.3g} "
                f"(tolerance {tolerance:g}); the graph was kept as {path}.failed for inspection"
            )
    return report


@contextlib.contextmanager
def staged(path: str):
    """Yield a temporary name beside `path`; it replaces `path` only if the block succeeds,
    so a failed export or quantization never costs the file already at `path`. The block
    may move the temporary file away itself (to PATH.failed)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def _torch_export(*args, **kwargs) -> None:
    """torch.onnx.export, its refusals (an opset it cannot write) as one-line errors."""
    torch = require("torch")
    try:
        with _quiet_stdout():
            torch.onnx.export(*args, **kwargs)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"the PyTorch ONNX exporter refused: {first}") from e


@contextlib.contextmanager
def _quiet_stdout():
    """Silence file descriptor 1. torch's TorchScript exporter turns its C++ log on for
    good and, when an export fails, prints the whole graph to stdout from C++, which
    sys.stdout redirection does not reach."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def check_parity(model, path: str, steps: int = 64, batch: int = 3, seed: int = 0) -> ParityReport:
    """Stream the exported graph with the runtime; compare with PyTorch's full sequence."""
    torch = require("torch")
    from edgernn.runtime.model import Model

    rng = np.random.default_rng(seed)
    cfg = model.config
    mean = model.mean.cpu().numpy()
    std = model.std.cpu().numpy()
    xn = rng.standard_normal((batch, steps, cfg.n_channels)).astype(np.float32)
    x = (xn * std + mean).astype(np.float32)  # (B, T, C) raw units
    state0 = [
        (0.5 * rng.standard_normal((cfg.layers, batch, cfg.hidden))).astype(np.float32)
        for _ in range(model.n_state)
    ]  # random non-zero state: a zero start hides state-handling bugs

    with torch.no_grad():
        y_ref, state_ref = model(torch.from_numpy(x), tuple(torch.from_numpy(s) for s in state0))
    y_ref = y_ref.numpy()

    runtime = Model(path, backend="onnxruntime")  # the gate checks the ONNX graph itself
    stream = runtime.stream(
        state={s.input: v for s, v in zip(runtime.meta.states, state0)}, batch=batch
    )
    y_rt = stream.run(np.transpose(x, (1, 0, 2)))  # (T, B, C)
    y_rt = np.transpose(y_rt, (1, 0, 2))  # (B, T, C)
    # Raw outputs cannot be closer than float32 resolves them: a temperature of 26.05
    # with std 0.03 is held to ~2e-6 / 0.03 = 6e-5 of its std by float32 itself. That
    # representation floor (a few ulps of |y|) is allowed; everything beyond it counts.
    floor = 4 * np.finfo(np.float32).eps * np.abs(y_ref)
    out_err = float(np.max(np.maximum(np.abs(y_rt - y_ref) - floor, 0.0) / std))
    final = stream.state
    state_err = max(
        beyond_relative(final[s.input], ref.numpy(), STATE_RTOL)
        for s, ref in zip(runtime.meta.states, state_ref)
    )
    return ParityReport(out_err, state_err, steps, batch)


def beyond_relative(actual: np.ndarray, ref: np.ndarray, rtol: float) -> float:
    """The largest |actual - ref| beyond rtol * |ref|: compared with an absolute tolerance
    atol it is the test |actual - ref| <= atol + rtol * |ref| (numpy.isclose's rule)."""
    diff = np.abs(np.asarray(actual, np.float64) - np.asarray(ref, np.float64))
    return float(np.max(np.maximum(diff - rtol * np.abs(ref), 0.0), initial=0.0))
