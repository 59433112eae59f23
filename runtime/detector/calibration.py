"""The detector calibration `edgernn export` stores in a model ("detector" metadata), and
reading it back."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgernn.errors import InputError, ModelFormatError
from edgernn.runtime.detector.config import CONFIG_KEYS, make_config
from edgernn.runtime.detector.normalise import robust_center_scale

CALIBRATION_FORMAT = 2  # 1: the old detector's (center/scale are read, the rest ignored)


def calibrate(val_errors, **options) -> dict[str, Any]:
    """The detector calibration export stores in the model ("detector" metadata):
    robust per-channel center / scale of the validation forecast errors [T, C] (raw
    units, forecast - sample), the options given, and the validation scores' spread."""
    errors = np.asarray(val_errors, dtype=np.float64)
    if errors.ndim != 2 or errors.shape[0] < 2:
        raise InputError(f"validation errors must be [T >= 2, channels], got {errors.shape}")
    errors = errors[np.isfinite(errors).all(axis=1)]
    if len(errors) < 2:
        raise InputError("validation errors hold fewer than 2 finite rows")
    make_config(options)
    center, scale = robust_center_scale(errors)
    floor = 1e-6 * np.maximum(np.abs(errors).mean(axis=0), 1e-6)
    scale = np.maximum(scale, floor)
    from edgernn.runtime.detector.core import Detector  # core reads calibrations: no cycle

    probe = Detector(error_center=center, error_scale=scale, **{**options, "warmup": 2})
    zero = np.zeros(errors.shape[1])
    scores = np.array([probe.score_one(zero - err, zero).surprisal for err in errors])[1:]
    return {
        "format": CALIBRATION_FORMAT,
        "center": center.tolist(),
        "scale": scale.tolist(),
        "threshold": "budget",
        "params": dict(options),
        "validation": {
            "rows": int(len(errors)),
            "score_p50": float(np.median(scores)),
            "score_p99": float(np.quantile(scores, 0.99)),
            "score_max": float(scores.max()),
        },
    }


def _from_calibration(cal: dict, n_channels: int) -> dict[str, Any]:
    try:
        if int(cal.get("format", 1)) > CALIBRATION_FORMAT:
            raise ModelFormatError(
                f"detector calibration format {cal['format']} is newer than this edgernn reads"
            )
        center = [float(v) for v in cal["center"]]
        scale = [float(v) for v in cal["scale"]]
        options = {}
        if int(cal.get("format", 1)) >= 2:  # format 1's params belong to the old detector
            options = {k: v for k, v in dict(cal.get("params", {})).items() if k in CONFIG_KEYS}
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFormatError(f"damaged detector calibration in the model metadata ({e!r})") from None
    if len(center) != n_channels or len(scale) != n_channels:
        raise ModelFormatError(
            f"detector calibration has {len(scale)} channels, the model {n_channels}"
        )
    if not all(math.isfinite(s) and s > 0 for s in scale):
        raise ModelFormatError("detector calibration holds a scale that is not > 0")
    return {"error_center": center, "error_scale": scale, **options}
