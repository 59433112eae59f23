"""`edgernn train`: read CSVs, split, fit (BPTT or ESN), measure, write the checkpoint."""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edgernn import __version__
from edgernn.errors import EdgernnError
from edgernn.runtime.csvdata import read_many
from edgernn.train.checkpoint import save_checkpoint
from edgernn.train.config import TrainConfig, model_config_from
from edgernn.train.data import (
    SplitData,
    forecast_metrics,
    robust_scale,
    split_tables,
    validation_forecasts,
)


@dataclass
class RunResult:
    out_dir: str
    checkpoint: str
    metrics: dict[str, Any]
    meta: dict[str, Any]
    weights: dict[str, np.ndarray]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def train_files(
    paths: Sequence[str],
    cfg: TrainConfig,
    out_dir: str,
    channels: Sequence[str] | None = None,
    ignore: Sequence[str] = (),
    log: Callable[[str], None] = _log,
) -> RunResult:
    try:
        model_cfg = model_config_from(cfg, ["_"])  # validates the architecture early
    except ValueError as e:
        raise EdgernnError(str(e)) from None
    tables = read_many(paths, channels=channels, ignore=ignore)
    data = split_tables(tables, cfg.val_frac, cfg.horizon, min_train=max(cfg.washout, 8))
    model_cfg = model_config_from(cfg, data.channels)
    log(
        f"data: {len(tables)} file(s), {data.n_train_rows} training rows, "
        f"{sum(len(s) for s in data.series) - data.n_train_rows} validation rows, "
        f"channels {', '.join(data.channels)}"
    )
    started = time.perf_counter()
    if cfg.cell == "esn":
        weights, predict, history = _fit_esn(cfg, data)
    else:
        weights, predict, history = _fit_bptt(cfg, data, log)
    seconds = time.perf_counter() - started

    pred, truth, persist = validation_forecasts(data, predict, cfg.horizon)
    metrics = {
        "model": forecast_metrics(truth, pred),
        "persistence": forecast_metrics(truth, persist),
        "units": "normalised (z-scores of the training parts), averaged over channels",
        "validation_rows": int(len(truth)),
        "train_seconds": round(seconds, 3),
        "history": history,
    }
    val_errors = (pred - truth) * data.std  # raw units, for the anomaly detector
    center, scale = robust_scale(val_errors)
    meta = {
        "model": model_cfg.to_dict(),
        "train": cfg.to_dict(),
        "channels": data.channels,
        "files": data.files,
        "norm": {"mean": data.mean.tolist(), "std": data.std.tolist()},
        "error_center": center.tolist(),
        "error_scale": scale.tolist(),
        "metrics": metrics,
        "versions": _versions(),
    }
    weights = dict(weights, mean=data.mean, std=data.std)
    path = save_checkpoint(out_dir, weights, meta, val_errors)
    _report(log, metrics, cfg.horizon)
    log(f"wrote {path}")
    return RunResult(out_dir, path, metrics, meta, weights)


def _fit_esn(cfg: TrainConfig, data: SplitData):
    from edgernn.train import esn

    weights = esn.fit_esn(cfg, data.train_parts())
    return weights, (lambda xn: esn.predict(weights, xn, cfg)), []


def _fit_bptt(cfg: TrainConfig, data: SplitData, log):
    from edgernn.train.bptt import make_predict, train_bptt

    model, history = train_bptt(cfg, data, log)
    weights = {k: v.numpy() for k, v in model.state_dict().items() if k not in ("mean", "std")}
    import torch

    return weights, make_predict(model, torch.device("cpu")), history


def _report(log, metrics: dict, horizon: int) -> None:
    m, p = metrics["model"], metrics["persistence"]
    log(
        f"validation, {horizon} step(s) ahead ({metrics['validation_rows']} forecasts, normalised units):"
    )
    log(f"  {'':12s} {'RMSE':>8s} {'MAE':>8s} {'R2':>8s}")
    log(f"  {'model':12s} {m['rmse']:8.4f} {m['mae']:8.4f} {m['r2']:8.4f}")
    log(f"  {'persistence':12s} {p['rmse']:8.4f} {p['mae']:8.4f} {p['r2']:8.4f}")
    if p["rmse"] > 0:
        gain = 100.0 * (1.0 - m["rmse"] / p["rmse"])
        verdict = "better" if gain > 0 else "WORSE"
        log(f"  model RMSE is {abs(gain):.1f}% {verdict} than persistence (forecast = last value)")


def _versions() -> dict[str, str]:
    versions = {
        "edgernn": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        versions["torch"] = torch.__version__
    return versions
