"""Backpropagation through time with PyTorch: random windows or truncated BPTT.

window: each batch holds random windows from the training parts, the state starts
    at zero and the first `burn_in` steps warm it without carrying loss.
tbptt:  each file is cut into `batch_size` contiguous lanes walked chunk by chunk,
    the hidden state carried (and detached) from one chunk to the next, so the
    model learns from dependencies longer than a window.
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch

from edgernn.train.config import TrainConfig, model_config_from
from edgernn.train.data import SplitData, lanes, sample_windows, validation_forecasts
from edgernn.train.model import Forecaster


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from edgernn.errors import EdgernnError

        raise EdgernnError("--device cuda asked for, but PyTorch sees no CUDA GPU")
    return torch.device(name)


def make_predict(model: Forecaster, device: torch.device):
    """Full-sequence normalised forecasts, as the streaming graph computes them."""

    def predict(xn: np.ndarray) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            x = torch.from_numpy(xn).to(device).unsqueeze(0)  # (1, T, C)
            y, _ = model.forward_normalised(x)
        return y.squeeze(0).float().cpu().numpy()  # (T, C)

    return predict


def _clip(model: Forecaster, cfg: TrainConfig) -> None:
    if cfg.clip == "norm":
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_value)
    elif cfg.clip == "value":
        torch.nn.utils.clip_grad_value_(model.parameters(), cfg.clip_value)


def _steps_per_epoch(cfg: TrainConfig, data: SplitData) -> int:
    """Optimizer steps in an epoch: about one pass over the training rows, at least 10."""
    burn = min(cfg.burn_in, cfg.window - 1)
    return cfg.steps_per_epoch or max(
        10, math.ceil(data.n_train_rows / (cfg.batch_size * (cfg.window - burn)))
    )


def _window_epoch(model, opt, cfg, data, rng, device) -> tuple[float, int]:
    parts = data.train_parts()
    burn = min(cfg.burn_in, cfg.window - 1)
    steps = _steps_per_epoch(cfg, data)
    total = 0.0
    for _ in range(steps):
        X, Y = sample_windows(parts, cfg.window, cfg.horizon, cfg.batch_size, rng)
        x = torch.from_numpy(X).to(device)  # (B, W, C)
        y = torch.from_numpy(Y).to(device)  # (B, W, C)
        pred, _ = model.forward_normalised(x)
        loss = torch.mean((pred[:, burn:] - y[:, burn:]) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _clip(model, cfg)
        opt.step()
        total += loss.item()
    return total / steps, steps * cfg.batch_size * cfg.window


def _tbptt_epoch(model, opt, cfg, data, rng, device) -> tuple[float, int]:
    """Walk every file (in random order) lane by lane, as many passes as the step budget needs."""
    total, n, samples = 0.0, 0, 0
    steps = _steps_per_epoch(cfg, data)
    while n < steps:
        for f in rng.permutation(len(data.series)):
            total, n, samples = _tbptt_file(model, opt, cfg, data.train_parts()[f], device,
                                            total, n, samples)  # fmt: skip
    return total / max(n, 1), samples


def _tbptt_file(model, opt, cfg, part, device, total, n, samples):
    X, Y = lanes(part, cfg.horizon, cfg.batch_size)
    state = None  # a new file is a new sequence: state never flows across files
    for s in range(0, X.shape[1], cfg.window):
        x = torch.from_numpy(np.ascontiguousarray(X[:, s : s + cfg.window])).to(device)
        y = torch.from_numpy(np.ascontiguousarray(Y[:, s : s + cfg.window])).to(device)
        pred, state = model.forward_normalised(x, state)  # (lanes, w, C)
        state = tuple(t.detach() for t in state)  # truncate the gradient, keep the state
        loss = torch.mean((pred - y) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _clip(model, cfg)
        opt.step()
        total, n, samples = total + loss.item(), n + 1, samples + x.shape[0] * x.shape[1]
    return total, n, samples


def _progress(cfg: TrainConfig, total: int):
    if cfg.progress:
        try:
            from tqdm import tqdm

            return tqdm(total=total, desc="train", unit="epoch", leave=False)
        except ImportError:
            pass
    return None


def train_bptt(cfg: TrainConfig, data: SplitData, log=print):
    """Train a Forecaster; returns (model on CPU, history list of dicts)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = resolve_device(cfg.device)
    model = Forecaster(model_config_from(cfg, data.channels))
    model.set_normalisation(data.mean, data.std)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    epoch_fn = _window_epoch if cfg.bptt == "window" else _tbptt_epoch

    best_rmse, best_state, bad_epochs, history = math.inf, None, 0, []
    bar = _progress(cfg, cfg.epochs)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        start = time.perf_counter()
        train_loss, samples = epoch_fn(model, opt, cfg, data, rng, device)
        rate = samples / max(time.perf_counter() - start, 1e-9)
        pred, truth, _ = validation_forecasts(data, make_predict(model, device), cfg.horizon)
        val_rmse = float(np.sqrt(np.mean((pred - truth) ** 2)))
        history.append({"epoch": epoch, "train_mse": train_loss, "val_rmse": val_rmse})
        if val_rmse < best_rmse - 1e-7:
            best_rmse, best_state, bad_epochs = val_rmse, copy.deepcopy(model.state_dict()), 0
        else:
            bad_epochs += 1
        if bar is not None:
            bar.set_postfix(loss=f"{train_loss:.4f}", val=f"{val_rmse:.4f}", sps=f"{rate:.0f}")
            bar.update(1)
        if bad_epochs >= cfg.patience:
            break
    if bar is not None:
        bar.close()
    if best_state is None:
        from edgernn.errors import EdgernnError

        raise EdgernnError("training diverged (validation error is NaN); try a lower --lr")
    model.load_state_dict(best_state)
    log(f"trained {epoch} epochs on {device.type}; best validation RMSE {best_rmse:.4f}")
    return model.cpu().eval(), history
