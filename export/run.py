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
    """Export RUN_DIR's checkpoint; `unrolled` writes primitive ops only (export/unrolled.py).

    An ESN forecaster exports without torch or onnx (export/onnx_writer.py) when either
    is missing: the same graph, written as protobuf bytes and gated against numpy."""
    if not unrolled and static_batch is None and opset == DEFAULT_OPSET and not _torch_and_onnx():
        esn = _esn_forecaster(run_dir)
        if esn is not None:
            from edgernn.export.onnx_writer import export_esn

            weights, meta, val_errors = esn
            extra = _extra_meta(meta, "forecast")
            calibration = detector_calibration(val_errors)
            if calibration is not None:
                extra["detector"] = calibration
            return export_esn(weights, meta, out_path, error_scale=meta.get("error_scale"),
                              extra_meta=extra)  # fmt: skip
    model, meta, val_errors = load_forecaster(run_dir)
    task = model.config.task
    extra = _extra_meta(meta, task)
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


def _extra_meta(meta: dict, task: str) -> dict:
    kept = ("model", "persistence") if task == "forecast" else ("model", "baseline", "baseline_name")
    return {
        "producer": f"edgernn {__version__}",
        "metrics": {k: meta["metrics"][k] for k in kept if k in meta.get("metrics", {})},
    }


def _importable(name: str) -> bool:
    """Whether `import name` would work (False also when sys.modules blocks it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _torch_and_onnx() -> bool:
    return _importable("torch") and _importable("onnx")


def _esn_forecaster(run_dir: str):
    """(weights, meta, val_errors) when RUN_DIR holds an ESN forecaster, else None."""
    weights, meta, val_errors = load_checkpoint(run_dir)
    cfg = meta.get("model") if isinstance(meta.get("model"), dict) else {}
    if cfg.get("cell") != "esn" or cfg.get("task", "forecast") != "forecast":
        return None
    if cfg.get("bidirectional"):
        return None
    return weights, meta, val_errors
