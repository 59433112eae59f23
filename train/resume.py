"""The training state behind `--resume RUN`: RUN_DIR/train_state.pt.

Written by rank 0 at the end of every epoch (atomic replace, so a crash or a kill
leaves the previous epoch's file): model, optimizer, scheduler and grad-scaler
states, the RNG states of numpy (shared by all ranks), python and torch (one per
rank), the epoch, the best weights so far, the early-stopping counter and the
history. On CPU with the same seed, N epochs + resume gives bit-identical weights to
an uninterrupted run. It is a torch file (the checkpoint.npz stays numpy-only) and
loads with weights_only=True: nothing in it is pickled code.
"""

from __future__ import annotations

import os
from typing import Any

from edgernn.errors import DataError
from edgernn.train.config import RESUMABLE_CHANGES, TrainConfig

STATE_FILE = "train_state.pt"
STATE_FORMAT = 1


def state_path(run_dir: str) -> str:
    return os.path.join(run_dir, STATE_FILE)


def save_train_state(run_dir: str, state: dict[str, Any]) -> str:
    import torch

    os.makedirs(run_dir, exist_ok=True)
    path = state_path(run_dir)
    tmp = f"{path}.{os.getpid()}.tmp"
    torch.save({"format": STATE_FORMAT, **state}, tmp)
    os.replace(tmp, path)
    return path


def load_train_state(run_dir: str) -> dict[str, Any]:
    import torch

    path = state_path(run_dir)
    if not os.path.isfile(path):
        raise DataError(
            f"{run_dir}: nothing to resume (no {STATE_FILE}; it is written after each "
            "epoch of PyTorch training)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a damaged file; all mean the same
        raise DataError(f"{path}: unreadable training state ({type(e).__name__})") from e
    if not isinstance(state, dict) or state.get("format", 0) > STATE_FORMAT:
        raise DataError(f"{path}: not a training state this edgernn can read")
    return state


def _flag(name: str) -> str:
    return "--no-progress" if name == "progress" else "--" + name.replace("_", "-")


def check_config(state: dict[str, Any], cfg: TrainConfig) -> None:
    """Refuse a resume whose optimisation settings differ from the saved run."""
    saved = TrainConfig.from_dict({"level_jitter": 0.0, **state["config"]}).to_dict()
    for name, value in cfg.to_dict().items():
        if name not in RESUMABLE_CHANGES and saved[name] != value:
            raise DataError(
                f"cannot resume with {_flag(name)} {value}: the run was trained with "
                f"{saved[name]} (only {', '.join(map(_flag, RESUMABLE_CHANGES))} may change)"
            )


def check_files(state: dict[str, Any], files: list[str]) -> None:
    if list(state["files"]) != list(files):
        raise DataError(
            "cannot resume on different data files: the run was trained on "
            f"{len(state['files'])} file(s) starting {state['files'][0]}"
        )


def plan_resume(
    run_dir: str,
    given: dict[str, Any],
    data: list[str],
    out: str | None,
    channels: list[str] | None,
    ignore: list[str] | None,
) -> tuple[list[str], dict[str, Any], str, list[str] | None, list[str]]:
    """What `edgernn train --resume RUN_DIR [flags]` runs: the saved run's data and
    settings, with the flags given on the command line on top (checked when it starts).

    Returns (data, config dict, out dir, channels, ignore)."""
    from edgernn.errors import require

    require("torch")
    if out and os.path.abspath(out) != os.path.abspath(run_dir):
        raise DataError("--resume continues RUN_DIR in place: leave out --out (or give the same)")
    state = load_train_state(run_dir)
    saved = state.get("data_args", {"channels": None, "ignore": []})
    return (
        list(data) or list(state["files"]),
        {"level_jitter": 0.0, **state["config"], **given},  # (saved before it existed: none)
        run_dir,
        channels if channels is not None else saved["channels"],
        ignore if ignore is not None else list(saved["ignore"]),
    )
