"""`edgernn export RUN_DIR -o model.onnx`: checkpoint -> checked ONNX graph."""

from __future__ import annotations

import importlib.util

import numpy as np

from edgernn import __version__
from edgernn.errors import ExportError, require
from edgernn.export.onnx_export import DEFAULT_OPSET, ParityReport, export_onnx
from edgernn.train.checkpoint import checkpoint_path, load_checkpoint, unusable


def load_forecaster(run_dir: str):
    """Rebuild the trained Forecaster from a checkpoint. Returns (model, meta, val_errors)."""
    torch = require("torch")
    from edgernn.train.config import ModelConfig
    from edgernn.train.model import Forecaster

    weights, meta, val_errors = load_checkpoint(run_dir)
    try:  # the archive read, but its model arguments or weights may not fit together
        model = Forecaster(ModelConfig(**meta["model"]))
        state = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in weights.items()}
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise unusable(checkpoint_path(run_dir), e) from e
    return model.eval(), meta, val_errors


def detector_calibration(val_errors):
    """The anomaly detector's calibration from validation errors, when that layer exists."""
    if val_errors is None or importlib.util.find_spec("edgernn.runtime.detector") is None:
        return None
    from edgernn.runtime import detector

    calibrate = getattr(detector, "calibrate", None)
    return calibrate(val_errors) if calibrate is not None else None


def export_run(
    run_dir: str,
    out_path: str,
    opset: int = DEFAULT_OPSET,
    unrolled: bool = False,
    static_batch: int | None = None,
) -> ParityReport:
    """Export RUN_DIR's checkpoint; `unrolled` writes primitive ops only (export/unrolled.py)."""
    model, meta, val_errors = load_forecaster(run_dir)
    task = model.config.task
    kept = ("model", "persistence") if task == "forecast" else ("model", "baseline", "baseline_name")
    extra = {
        "producer": f"edgernn {__version__}",
        "metrics": {k: meta["metrics"][k] for k in kept if k in meta.get("metrics", {})},
    }
    if task != "forecast":  # a regressor or classifier: format-2 graph, no detector
        if unrolled or static_batch is not None:
            raise ExportError(f"--unrolled exports forecasters only; this run's task is {task}")
        from edgernn.export.tasks import export_task_onnx

        return export_task_onnx(model, out_path, extra_meta=extra, opset=opset)
    calibration = detector_calibration(val_errors)
    if calibration is not None:
        extra["detector"] = calibration
    if unrolled:
        from edgernn.export.unrolled import export_unrolled

        return export_unrolled(
            model, out_path, error_scale=meta.get("error_scale"), extra_meta=extra, opset=opset,
            static_batch=static_batch,
        )  # fmt: skip
    return export_onnx(
        model, out_path, error_scale=meta.get("error_scale"), extra_meta=extra, opset=opset
    )
