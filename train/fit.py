"""`edgernn train`: read CSVs, split, fit (BPTT or ESN), measure, write the checkpoint.

Runs unchanged as one process or as N under torchrun (see train/distributed.py).
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edgernn import __version__
from edgernn.errors import DataError, EdgernnError
from edgernn.train.checkpoint import CHECKPOINT, MAX_VAL_ERRORS, save_checkpoint
from edgernn.train.config import TrainConfig, model_config_from
from edgernn.train.data import (
    SplitData,
    long_enough,
    robust_scale,
    split_tables,
    validation_summary,
)
from edgernn.train.logs import load_logs, rank_from_env, skip_note
from edgernn.train.resume import state_path


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
    resume: bool = False,
) -> RunResult:
    """Train on CSV files, directories of them or glob patterns; write out_dir/checkpoint.npz.

    Under torchrun every rank calls this; rank 0 alone logs and writes files, and the
    other ranks return a RunResult with the (identical) weights and empty metrics/meta.
    resume=True continues out_dir's run from its last finished epoch.
    """
    try:
        model_config_from(cfg, ["_"], ["_a", "_b"])  # validates the architecture early
    except ValueError as e:
        raise EdgernnError(str(e)) from None
    if cfg.cell == "esn":
        return _train_esn(paths, cfg, out_dir, channels, ignore, log, resume)
    from edgernn.train import distributed

    ctx = distributed.setup(cfg.device)
    try:
        result = _train_bptt(paths, cfg, out_dir, channels, ignore,
                             log if ctx.is_main else _quiet, resume, ctx)  # fmt: skip
        # Every rank waits here for rank 0's checkpoint: a rank that tears its process
        # group down and exits while another still uses it dies in gloo's threads
        # ("terminate called without an active exception"), and torchrun kills the rest.
        ctx.barrier()
        return result
    finally:
        ctx.close()


def _quiet(msg: str) -> None:
    pass


def _load(paths, cfg, out_dir, channels, ignore, log, rank=0, world=1, barrier=None) -> SplitData:
    cache = cfg.cache_dir or os.path.join(out_dir, "cache")
    if cfg.task == "forecast":
        logs = load_logs(paths, cache, channels, ignore, rank=rank, world=world, barrier=barrier,
                         skip_bad=cfg.skip_bad_rows)  # fmt: skip
        if cfg.skip_bad_rows:
            logs = _long_stretches(logs, cfg, log)
        data = split_tables(logs, cfg.val_frac, cfg.horizon, min_train=max(cfg.washout, 8))
    else:
        from edgernn.train.tasks import load_task_data

        data = load_task_data(paths, cfg, cache, channels, ignore, rank, world, barrier)
    outputs = {"regress": f", targets {', '.join(data.target_names)}",
               "classify": f", classes {', '.join(data.classes)}"}.get(cfg.task, "")  # fmt: skip
    log(
        f"data: {len(data.files)} {'stretch(es)' if cfg.skip_bad_rows else 'file(s)'}, "
        f"{data.n_train_rows} training rows, "
        f"{data.n_val_rows} validation rows, channels {', '.join(data.channels)}{outputs}"
    )
    return data


def _long_stretches(logs: list, cfg, log) -> list:
    """--skip-bad-rows: the stretches long enough to train on; one note per file with bad
    rows (how many, the first reasons, what was kept and dropped)."""
    min_train = max(cfg.washout, 8)
    kept, by_file = [], {}
    for lg in logs:
        source = lg.path.rsplit(" rows ", 1)[0] if lg.lines else lg.path
        entry = by_file.setdefault(source, (lg.skipped, [], []))
        fits = long_enough(len(lg), cfg.val_frac, cfg.horizon, min_train)
        (entry[1] if fits else entry[2]).append(len(lg))
        if fits:
            kept.append(lg)
    for source, (skipped, good, short) in by_file.items():
        if skipped:
            log(skip_note(source, skipped, good, short))
    if not kept:
        raise DataError("--skip-bad-rows: no stretch between bad rows is long enough to train on")
    return kept


def _train_esn(paths, cfg, out_dir, channels, ignore, log, resume) -> RunResult:
    from edgernn.train import esn

    if resume:
        raise EdgernnError("--resume applies to PyTorch training; an ESN fits in one pass")
    rank, _, _ = rank_from_env()
    if rank != 0:  # a ridge fit is not worth distributing: rank 0 fits, the others wait out
        return RunResult(out_dir, os.path.join(out_dir, CHECKPOINT), {}, {}, {})
    data = _load(paths, cfg, out_dir, channels, ignore, log)
    started = time.perf_counter()
    targets = None
    if cfg.task == "regress":  # the ridge readout fits the targets instead of the next sample
        targets = (data.normalise_targets(t[:k]) for t, k in zip(data.targets, data.split))
    weights = esn.fit_esn(cfg, data.train_parts(), data.n_channels, targets)
    seconds = time.perf_counter() - started
    predict = lambda xn: esn.predict(weights, xn, cfg)  # noqa: E731
    # An ESN writes no train_state.pt; one left by an earlier PyTorch run in this folder
    # would let `--resume` continue that run over this checkpoint.
    with contextlib.suppress(FileNotFoundError):
        os.remove(state_path(out_dir))
    return _finish(cfg, data, out_dir, weights, predict, [], seconds, log, {})


def _train_bptt(paths, cfg, out_dir, channels, ignore, log, resume, ctx) -> RunResult:
    import torch

    from edgernn.train.bptt import make_predict, train_bptt
    from edgernn.train.resume import check_config, check_files, load_train_state

    state = load_train_state(out_dir) if resume else None
    if state is not None:
        check_config(state, cfg)  # before reading any data
    data = _load(paths, cfg, out_dir, channels, ignore, log, ctx.rank, ctx.world, ctx.barrier)
    if state is not None:
        check_files(state, data.files)
    started = time.perf_counter()
    data_args = {
        "channels": list(channels) if channels is not None else None,
        "ignore": list(ignore),
    }
    model, history = train_bptt(cfg, data, log, ctx, out_dir, state, {"data_args": data_args})
    seconds = time.perf_counter() - started
    weights = {k: v.numpy() for k, v in model.state_dict().items() if k not in NORM_BUFFERS}
    _dump_weights_for_tests(weights, ctx.rank)
    if not ctx.is_main:
        return RunResult(out_dir, os.path.join(out_dir, CHECKPOINT), {}, {}, weights)
    from edgernn.train.bptt import amp_dtype

    amp = amp_dtype(cfg.amp, ctx.device)
    hardware = {
        "device": ctx.device.type,
        "processes": ctx.world,
        "amp": str(amp).replace("torch.", "") if amp is not None else "off",
        "resumed_after_epoch": int(state["epoch"]) if state is not None else None,
    }
    predict = make_predict(model, torch.device("cpu"))
    return _finish(cfg, data, out_dir, weights, predict, history, seconds, log, hardware)


def _dump_weights_for_tests(weights: dict[str, np.ndarray], rank: int) -> None:
    """EDGERNN_DUMP_WEIGHTS=DIR: every rank writes DIR/rank<N>.npz (checks DDP kept them equal)."""
    out = os.environ.get("EDGERNN_DUMP_WEIGHTS")
    if out:
        os.makedirs(out, exist_ok=True)
        np.savez(os.path.join(out, f"rank{rank}.npz"), **weights)


# The model's normalisation buffers: written into the checkpoint from the data, not trained.
NORM_BUFFERS = ("mean", "std", "target_mean", "target_std")


def _finish(cfg, data, out_dir, weights, predict, history, seconds, log, hardware) -> RunResult:
    """Final validation metrics, detector errors, the checkpoint (rank 0 only)."""
    if cfg.task != "forecast":
        return _finish_task(cfg, data, out_dir, weights, predict, history, seconds, log, hardware)
    model_m, persistence_m, rows, val_errors = validation_summary(
        data, predict, cfg.horizon, MAX_VAL_ERRORS
    )
    metrics = {
        "model": model_m,
        "persistence": persistence_m,
        "units": "normalised (z-scores of the training parts), averaged over channels",
        "validation_rows": rows,
        "train_seconds": round(seconds, 3),
        "history": history,
    }
    center, scale = robust_scale(val_errors)  # raw units, for the anomaly detector
    meta = {
        "model": model_config_from(cfg, data.channels).to_dict(),
        "train": cfg.to_dict(),
        "channels": data.channels,
        "files": data.files,
        "norm": {"mean": data.mean.tolist(), "std": data.std.tolist()},
        "error_center": center.tolist(),
        "error_scale": scale.tolist(),
        "metrics": metrics,
        "versions": _versions(),
    }
    if hardware:
        meta["hardware"] = hardware
    weights = dict(weights, mean=data.mean, std=data.std)
    path = save_checkpoint(out_dir, weights, meta, val_errors)
    _report(log, metrics, cfg.horizon)
    log(f"wrote {path}")
    return RunResult(out_dir, path, metrics, meta, weights)


def _finish_task(cfg, data, out_dir, weights, predict, history, seconds, log, hardware):
    """_finish for regress / classify: metrics beside the baseline, no detector errors."""
    from edgernn.train.tasks import report, task_summary

    metrics = dict(task_summary(data, predict), train_seconds=round(seconds, 3), history=history)
    meta = {
        "model": model_config_from(cfg, data.channels, data.classes).to_dict(),
        "train": cfg.to_dict(),
        "task": cfg.task,
        "channels": data.channels,
        "files": data.files,
        "norm": {"mean": data.mean.tolist(), "std": data.std.tolist()},
        "metrics": metrics,
        "versions": _versions(),
    }
    weights = dict(weights, mean=data.mean, std=data.std)
    if cfg.task == "regress":
        meta["targets"] = data.target_names
        meta["target_norm"] = {"mean": data.target_mean.tolist(), "std": data.target_std.tolist()}
        weights.update(target_mean=data.target_mean, target_std=data.target_std)
    else:
        meta["classes"] = data.classes
    if hardware:
        meta["hardware"] = hardware
    path = save_checkpoint(out_dir, weights, meta)
    report(log, metrics)
    log(f"wrote {path}")
    return RunResult(out_dir, path, metrics, meta, weights)


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
