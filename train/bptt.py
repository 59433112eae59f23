"""Backpropagation through time with PyTorch: random windows or truncated BPTT.

window: each batch holds random windows from the training parts, the state starts
    at zero and the first `burn_in` steps warm it without carrying loss.
tbptt:  each file is cut into `batch_size` contiguous lanes walked chunk by chunk,
    the hidden state carried (and detached) from one chunk to the next, so the
    model learns from dependencies longer than a window.

`batch_size` is the global batch: under torchrun every rank draws the same batch of
window indices (or lanes) and trains on its share, with the loss scaled so that the
all-reduced gradient is the gradient of the whole batch's mean loss. N processes thus
take the same optimisation steps as one, N times faster.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from edgernn.errors import DataError, EdgernnError
from edgernn.train.config import TrainConfig, level_jitter_for, model_config_from
from edgernn.train.data import (
    SplitData,
    draw_windows,
    gather_windows,
    lanes,
    n_lanes_for,
    usable_starts,
    validation_sse,
)
from edgernn.train.distributed import Dist, wrap
from edgernn.train.model import Forecaster
from edgernn.train.resume import save_train_state
from edgernn.train.tasks import (
    gather_task_windows,
    score_from_loss,
    task_lanes,
    validation_loss,
)

# History keys and the name of the validation score: squared errors, or (classify)
# cross-entropy, the loss a classifier trains on and early-stops by.
LOSS_NAMES = (("train_mse", "val_rmse", "RMSE"), ("train_ce", "val_ce", "cross-entropy"))
PREDICT_CHUNK = 8192  # time steps per forward pass when forecasting a whole file
REFRESH_SECONDS = 0.5  # progress-bar refresh period inside an epoch


@dataclass
class Batch:
    x: np.ndarray  # (b, W, C) this rank's share, normalised
    y: np.ndarray  # targets, normalised: (b, W, C) forecast, (b, W, K) regress, (b, W) classes
    denom: int  # loss elements in the whole (global) batch
    loss_from: int  # leading steps that only warm the state
    new_sequence: bool  # the state starts at zero


@dataclass
class Progress:
    """Where training stands; saved each epoch for --resume."""

    epoch: int = 0
    best_rmse: float = math.inf
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


def make_predict(model: Forecaster, device: torch.device):
    """Full-sequence normalised forecasts from the zero state, as the streaming graph
    computes them; chunked with the state carried, so a long file never builds a
    (T, hidden) activation at once."""

    def predict(xn: np.ndarray) -> np.ndarray:
        model.eval()
        out = np.empty((len(xn), model.config.n_outputs), dtype=np.float32)
        state = None
        with torch.no_grad():
            for s in range(0, len(xn), PREDICT_CHUNK):
                x = torch.from_numpy(np.ascontiguousarray(xn[s : s + PREDICT_CHUNK]))
                y, state = model.forward_normalised(x.to(device).unsqueeze(0), state)  # (1, t, C)
                out[s : s + PREDICT_CHUNK] = y.squeeze(0).float().cpu().numpy()
        return out  # (T, n_outputs): normalised forecasts or targets, or logits

    return predict


# ------------------------------------------------------------------------- batches
def steps_per_epoch(cfg: TrainConfig, data: SplitData) -> int:
    """Optimizer steps in an epoch: about one pass over the training rows, at least 10."""
    burn = min(cfg.burn_in, cfg.window - 1)
    return cfg.steps_per_epoch or max(
        10, math.ceil(data.n_train_rows / (cfg.batch_size * (cfg.window - burn)))
    )


def level_shifts(jitter: float, rng, n: int, n_channels: int) -> np.ndarray:
    """Offsets (n, 1, C) that shift each of n training windows (or lanes) as a whole, input
    and target alike, by ~N(0, jitter) training stds (config.level_jitter_for's).

    Why: a short training part shows a few levels only, and nothing in it says how the
    forecast should behave at another one. Left alone, a training seed decides: one model
    tracks a new level, the next keeps pulling its forecasts back towards the levels it was
    trained on, and every sample of a new normal regime scores as an error. Shifted copies
    of its windows teach the model that the dynamics, not the absolute level, carry the
    forecast. Drawn for the global batch, so every rank draws the same."""
    return rng.normal(0.0, jitter, (n, 1, n_channels)).astype(np.float32)


def window_batches(cfg: TrainConfig, data: SplitData, rng, ctx: Dist) -> Iterator[Batch]:
    forecast = data.task == "forecast"
    shift = cfg.horizon if forecast else 0  # other tasks' targets belong to the same step
    usable = usable_starts(data, cfg.window, shift)
    burn = min(cfg.burn_in, cfg.window - 1)
    mine = slice(ctx.rank, None, ctx.world)
    jitter = level_jitter_for(cfg, data.n_channels) if forecast else 0.0
    for _ in range(steps_per_epoch(cfg, data)):
        files, starts = draw_windows(usable, cfg.batch_size, rng)  # the global batch
        if forecast:
            X, Y = gather_windows(data, files[mine], starts[mine], cfg.window, cfg.horizon)
            if jitter > 0:
                shift_by = level_shifts(jitter, rng, cfg.batch_size, data.n_channels)[mine]
                X, Y = X + shift_by, Y + shift_by
        else:
            X, Y = gather_task_windows(data, files[mine], starts[mine], cfg.window)
        denom = cfg.batch_size * (cfg.window - burn) * data.loss_terms
        yield Batch(X, Y, denom, burn, new_sequence=True)


def tbptt_batches(cfg: TrainConfig, data: SplitData, rng, ctx: Dist) -> Iterator[Batch]:
    """Walk every file (in random order) lane by lane, as many passes as the step budget needs."""
    steps, n = steps_per_epoch(cfg, data), 0
    mine = slice(ctx.rank, None, ctx.world)
    forecast = data.task == "forecast"
    shift = cfg.horizon if forecast else 0
    jitter = level_jitter_for(cfg, data.n_channels) if forecast else 0.0
    while n < steps:
        for f in rng.permutation(len(data.raw)):
            part = data.raw[f][: data.split[f]]  # raw view: chunks are read and normalised lazily
            n_lanes = n_lanes_for(len(part), shift, cfg.batch_size, at_least=ctx.world)
            if forecast:
                X, Y = lanes(part, cfg.horizon, n_lanes)  # (lanes, L, C) views
            else:
                X, Y = task_lanes(part, data.targets[f][: data.split[f]], n_lanes)
            if X.shape[1] == 0:
                raise DataError(f"{data.files[f]}: too short to cut into {n_lanes} lanes")
            if jitter > 0:  # one shift per lane, for the whole pass
                shift_by = level_shifts(jitter, rng, n_lanes, data.n_channels)[mine]
            for s in range(0, X.shape[1], cfg.window):
                x = data.normalise(X[mine, s : s + cfg.window])
                y = Y[mine, s : s + cfg.window]
                y = data.normalise(y) if forecast else data.normalise_targets(y)
                if jitter > 0:
                    x, y = x + shift_by, y + shift_by
                denom = n_lanes * x.shape[1] * data.loss_terms
                yield Batch(x, y, denom, 0, new_sequence=(s == 0))
                n += 1


# ---------------------------------------------------------------------- the steps
def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 where the GPU supports it, else fp16 (with a GradScaler)."""
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def grad_scaler(device: torch.device, enabled: bool):
    """fp16 needs loss scaling (bf16 has fp32's range and does not); disabled it is a no-op."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type, enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # torch < 2.3


def to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    if device.type == "cuda":
        # Pinned host memory lets the copy overlap with the GPU still busy on the last step.
        return t.pin_memory().to(device, non_blocking=True)
    return t


def clip_gradients(model: Forecaster, cfg: TrainConfig) -> None:
    if cfg.clip == "norm":
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_value)
    elif cfg.clip == "value":
        torch.nn.utils.clip_grad_value_(model.parameters(), cfg.clip_value)


class Trainer:
    """One model, its optimizer, scheduler, AMP policy and the process group."""

    def __init__(self, cfg: TrainConfig, data: SplitData, ctx: Dist, extra_state=None):
        self.cfg, self.data, self.ctx, self.device = cfg, data, ctx, ctx.device
        self.extra_state = dict(extra_state or {})  # saved as is, e.g. how the data was read
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.rng = np.random.default_rng(cfg.seed)  # shared by all ranks: same global batches
        self.model = Forecaster(model_config_from(cfg, data.channels, data.classes))
        self.model.set_normalisation(data.mean, data.std, data.target_mean, data.target_std)
        self.model.to(self.device)
        if ctx.rank > 0:
            torch.manual_seed(cfg.seed + 7919 * ctx.rank)  # distinct dropout masks per rank
        self.net = wrap(self.model, ctx)
        self.opt = torch.optim.Adam(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.sched = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=cfg.epochs)
            if cfg.schedule == "cosine"
            else torch.optim.lr_scheduler.LambdaLR(self.opt, lambda epoch: 1.0)
        )
        self.amp = amp_dtype(cfg.amp, self.device)
        self.scaler = grad_scaler(self.device, enabled=self.amp == torch.float16)
        self.progress = Progress()

    # ---------------------------------------------------------------- one epoch
    def train_epoch(self, on_refresh) -> tuple[float, float, float]:
        """Returns (train mse over all ranks, time steps trained over all ranks, seconds)."""
        self.net.train()
        cfg, ctx = self.cfg, self.ctx
        batches = window_batches if cfg.bptt == "window" else tbptt_batches
        start, last = time.perf_counter(), time.perf_counter()
        sq_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        denom, samples, state = 0, 0, None
        for batch in batches(cfg, self.data, self.rng, ctx):
            if batch.new_sequence:
                state = None  # a new window batch or a new file: state never crosses files
            sq, state = self.step(batch, state)
            sq_sum += sq
            denom += batch.denom
            samples += batch.x.shape[0] * batch.x.shape[1]
            if on_refresh is not None and time.perf_counter() - last > REFRESH_SECONDS:
                last = time.perf_counter()
                # an estimate: this rank's rate times the ranks (exact figures at epoch end)
                on_refresh(sq_sum.item() * ctx.world / denom, samples * ctx.world / (last - start))
        total_sq, total_samples = ctx.sum([sq_sum.item(), float(samples)])
        return total_sq / max(denom, 1), total_samples, time.perf_counter() - start

    def step(self, batch: Batch, state):
        x, y = to_device(batch.x, self.device), to_device(batch.y, self.device)  # (b, W, C)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            pred, state = self.net(x, state)  # (b, W, n_outputs)
        pred, y = pred.float()[:, batch.loss_from :], y[:, batch.loss_from :]
        if self.data.task == "classify":  # summed like the squared errors: scaled below
            sq = torch.nn.functional.cross_entropy(
                pred.reshape(-1, pred.shape[-1]), y.reshape(-1), reduction="sum"
            )
        else:
            sq = ((pred - y) ** 2).sum()
        # DDP averages gradients over ranks: scaling by world/denom makes that average the
        # gradient of the global batch's mean loss, whatever each rank's share.
        loss = sq * (self.ctx.world / batch.denom)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)  # clip the true gradients, not the scaled ones
        clip_gradients(self.model, self.cfg)
        self.scaler.step(self.opt)
        self.scaler.update()
        state = tuple(t.detach().float() for t in state)  # truncate the gradient, keep the state
        return sq.detach(), state

    def validate(self) -> float:
        """Validation RMSE (normalised; for a classifier, the mean cross-entropy) over all
        files; each rank predicts its share."""
        mine = range(self.ctx.rank, len(self.data.raw), self.ctx.world)
        predict = make_predict(self.model, self.device)
        if self.data.task == "forecast":
            loss, count = validation_sse(self.data, predict, self.cfg.horizon, mine)
        else:
            loss, count = validation_loss(self.data, predict, mine)
        loss, count = self.ctx.sum([loss, float(count)])
        return score_from_loss(self.data.task, loss, count)

    # ---------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        """Everything --resume needs; collective (every rank must call it)."""
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        rngs = self.ctx.gather({"torch": torch.get_rng_state(), "cuda": cuda})
        p = self.progress
        return {
            **self.extra_state,
            "config": self.cfg.to_dict(),
            "files": self.data.files,
            "channels": self.data.channels,
            "world": self.ctx.world,
            "epoch": p.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_rmse": p.best_rmse,
            "best_state": p.best_state,
            "bad_epochs": p.bad_epochs,
            "stopped_early": p.stopped_early,
            "history": p.history,
            "rng": {
                "numpy": self.rng.bit_generator.state,
                "python": random.getstate(),
                "ranks": rngs,
            },  # fmt: skip
        }

    def load_state_dict(self, state: dict[str, Any], log) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.rng.bit_generator.state = state["rng"]["numpy"]
        random.setstate(state["rng"]["python"])
        ranks = state["rng"]["ranks"]
        if len(ranks) == self.ctx.world:
            torch.set_rng_state(ranks[self.ctx.rank]["torch"])
            if self.device.type == "cuda" and ranks[self.ctx.rank]["cuda"] is not None:
                torch.cuda.set_rng_state(ranks[self.ctx.rank]["cuda"], self.device)
        else:
            log(f"note: the run had {len(ranks)} process(es), now {self.ctx.world}: dropout "
                "masks will differ from an uninterrupted run")  # fmt: skip
        self.progress = Progress(
            epoch=int(state["epoch"]),
            best_rmse=float(state["best_rmse"]),
            best_state=state["best_state"],
            bad_epochs=int(state["bad_epochs"]),
            stopped_early=bool(state["stopped_early"]),
            history=list(state["history"]),
        )

    # ---------------------------------------------------------------- the loop
    def fit(self, run_dir: str, log) -> tuple[Forecaster, list[dict[str, Any]]]:
        cfg, ctx, p = self.cfg, self.ctx, self.progress
        bar = _progress_bar(cfg, ctx, p.epoch)
        refresh = None
        if bar is not None:

            def refresh(loss, rate):
                bar.set_postfix(loss=f"{loss:.4f}", sps=f"{rate:.0f}")

        for epoch in range(p.epoch + 1, cfg.epochs + 1):
            if p.bad_epochs >= cfg.patience:
                break
            train_mse, samples, seconds = self.train_epoch(refresh)
            self.sched.step()
            val_rmse = self.validate()
            rate = samples / max(seconds, 1e-9)
            train_key, val_key, _ = LOSS_NAMES[self.data.task == "classify"]
            p.history.append({"epoch": epoch, train_key: train_mse, val_key: val_rmse,
                              "samples_per_s": round(rate, 1)})  # fmt: skip
            if val_rmse < p.best_rmse - 1e-7:
                p.best_rmse, p.bad_epochs = val_rmse, 0
                p.best_state = {
                    k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()
                }
            else:
                p.bad_epochs += 1
            p.epoch = epoch
            p.stopped_early = p.bad_epochs >= cfg.patience and epoch < cfg.epochs
            state = self.state_dict()  # collective: every rank takes part
            if ctx.is_main and run_dir:
                save_train_state(run_dir, state)
            if bar is not None:
                bar.set_postfix(loss=f"{train_mse:.4f}", val=f"{val_rmse:.4f}", sps=f"{rate:.0f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        if p.best_state is None:
            raise EdgernnError("training diverged (validation error is NaN); try a lower --lr")
        self.model.load_state_dict(p.best_state)
        amp = f", {str(self.amp).replace('torch.', '')} autocast" if self.amp else ""
        procs = f" x {ctx.world} processes" if ctx.enabled else ""
        score = LOSS_NAMES[self.data.task == "classify"][2]
        log(f"trained {p.epoch} epochs on {self.device.type}{procs}{amp}; "
            f"best validation {score} {p.best_rmse:.4f}")  # fmt: skip
        return self.model.cpu().eval(), p.history


def _progress_bar(cfg: TrainConfig, ctx: Dist, done: int):
    if cfg.progress and ctx.is_main:
        try:
            from tqdm import tqdm

            # disable=None: no bar when stderr is not a terminal (logs, CI, pipes)
            return tqdm(
                total=cfg.epochs,
                initial=done,
                desc="train",
                unit="epoch",
                leave=False,
                disable=None,
            )
        except ImportError:
            pass
    return None


def train_bptt(
    cfg: TrainConfig, data: SplitData, log=print, ctx: Dist | None = None, run_dir: str = "",
    resume_state: dict[str, Any] | None = None, extra_state: dict[str, Any] | None = None,
):  # fmt: skip
    """Train a Forecaster; returns (model on CPU, history list of dicts)."""
    if cfg.burn_in < 0:
        raise DataError(f"--burn-in must be >= 0, got {cfg.burn_in}")
    ctx = ctx or Dist()
    if cfg.batch_size < ctx.world:
        raise DataError(f"--batch-size {cfg.batch_size} is smaller than the {ctx.world} processes")
    if cfg.amp in ("bf16", "fp16") and ctx.device.type != "cuda":
        log(f"note: --amp {cfg.amp} applies on a GPU; training in float32 on {ctx.device.type}")
    trainer = Trainer(cfg, data, ctx, extra_state)
    if resume_state is not None:
        trainer.load_state_dict(resume_state, log)
        log(f"resuming after epoch {trainer.progress.epoch} of {cfg.epochs}")
    return trainer.fit(run_dir, log)
