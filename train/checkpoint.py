"""The self-describing checkpoint: RUN_DIR/checkpoint.npz.

One numpy archive holds the weights (PyTorch state_dict names) and, under "__meta__",
a JSON document with everything export needs: model arguments, channel names,
normalisation, training config, metrics, the validation error scale. It loads with
numpy alone (no pickle), so a Pi can read, fit (ESN) and inspect runs.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import numpy as np

from edgernn.errors import DataError, ModelFormatError

CHECKPOINT = "checkpoint.npz"
FORMAT = 1
META_KEY = "__meta__"
VAL_ERRORS_KEY = "__val_errors__"
MAX_VAL_ERRORS = 50_000  # rows of validation errors kept for detector calibration


def save_checkpoint(
    run_dir: str,
    weights: dict[str, np.ndarray],
    meta: dict[str, Any],
    val_errors: np.ndarray | None = None,
) -> str:
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, CHECKPOINT)
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
    arrays[META_KEY] = np.array(json.dumps({"format": FORMAT, **meta}))
    if val_errors is not None:
        arrays[VAL_ERRORS_KEY] = np.asarray(val_errors[-MAX_VAL_ERRORS:], dtype=np.float32)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # a crash never leaves half a checkpoint
    with open(os.path.join(run_dir, "metrics.json"), "w") as fh:
        json.dump(meta.get("metrics", {}), fh, indent=2)
    return path


def load_checkpoint(
    run_dir: str,
) -> tuple[dict[str, np.ndarray], dict[str, Any], np.ndarray | None]:
    """Returns (weights, meta, val_errors or None)."""
    path = checkpoint_path(run_dir)
    if not os.path.isfile(path):
        raise DataError(f"{run_dir}: no {CHECKPOINT} here; train one with `edgernn train`")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z[META_KEY]))
            val_errors = z[VAL_ERRORS_KEY] if VAL_ERRORS_KEY in z.files else None
            weights = {k: z[k] for k in z.files if k not in (META_KEY, VAL_ERRORS_KEY)}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise unusable(path, e) from e
    if not isinstance(meta, dict) or not isinstance(meta.get("format", 0), int):
        raise unusable(path, f"{META_KEY} is not a JSON object with an integer format")
    if meta.get("format", 0) > FORMAT:
        raise DataError(f"{path}: checkpoint format {meta['format']} is newer than this edgernn")
    return weights, meta, val_errors


def checkpoint_path(run_dir: str) -> str:
    return run_dir if run_dir.endswith(".npz") else os.path.join(run_dir, CHECKPOINT)


def unusable(path: str, why) -> ModelFormatError:
    """The one-line error for a damaged or foreign checkpoint; `why` is a reason or an
    exception (a multi-line one, like load_state_dict's, is folded onto one line)."""
    if isinstance(why, KeyError):
        why = f"no {why} entry"
    reason = " ".join(str(why).split()) or type(why).__name__
    return ModelFormatError(f"{path} is not a usable edgernn checkpoint ({reason})")
