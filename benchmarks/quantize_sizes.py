"""Quantization benchmark for the README: hidden 64/128 x rnn/lstm/gru x dynamic/static/fp16.

Each model is trained briefly (300 Adam steps) on a synthetic 3-channel signal,
exported with its validation error scale (so anomaly flags can be compared), then quantized with a calibration CSV whose last 25% is held out for the
measurements. Prints a markdown table; --json writes every report too.

    .venv/bin/python benchmarks/quantize_sizes.py                 # ~3 min on 2 cores
    .venv/bin/python benchmarks/quantize_sizes.py --hidden 64 --cells gru --steps 50

Targets (issue 5): int8 file <= 0.3x the float file for hidden >= 64 with forecast
deviation <= 1% of the signal std; fp16 <= 0.55x. --per-channel rows store one float32
scale per weight column on top (at hidden 64 about 2.5% of the float file). Latency is per single-sample step
on onnxruntime with one thread, the median of 3 x 200 steps; the `default` column is
the float model on the backend Model() picks by default (the generated C step where a
compiler exists), which quantized graphs cannot use.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

from edgernn.export.quantize import MODES, quantize_model

CHANNELS = ("vibration", "temperature", "current")
WINDOW = 64
BATCH = 32


def synthetic_signal(n: int, seed: int = 0) -> np.ndarray:
    """Three coupled channels with daily-style periodicity, drift and noise: (n, 3)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    vib = (
        np.sin(2 * np.pi * t / 37) + 0.4 * np.sin(2 * np.pi * t / 11) + 0.1 * rng.standard_normal(n)
    )
    temp = 40 + 3 * np.sin(2 * np.pi * t / 200) + 0.02 * np.cumsum(rng.standard_normal(n)) / 10
    cur = 2.0 + 0.5 * vib + 0.3 * np.cos(2 * np.pi * t / 53) + 0.05 * rng.standard_normal(n)
    return np.stack([vib, temp, cur], axis=1)


def write_csv(path: str, values: np.ndarray) -> str:
    with open(path, "w") as fh:
        fh.write(",".join(CHANNELS) + "\n")
        for row in values:
            fh.write(",".join(f"{v:.5f}" for v in row) + "\n")
    return path


def train_and_export(cell: str, hidden: int, train: np.ndarray, work: str, steps: int) -> str:
    """A short Adam fit on random windows (a self-contained stand-in for `edgernn train`,
    which this benchmark does not need to exercise), exported with its error scale."""
    import torch

    from edgernn.export.onnx_export import export_onnx
    from edgernn.train.model import Forecaster, ModelConfig

    torch.manual_seed(0)
    model = Forecaster(ModelConfig(n_channels=3, cell=cell, hidden=hidden, channels=list(CHANNELS)))
    model.set_normalisation(train.mean(axis=0), train.std(axis=0))
    xn = torch.from_numpy(((train - train.mean(axis=0)) / train.std(axis=0)).astype(np.float32))
    cut = int(0.8 * len(xn))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        starts = rng.integers(0, cut - WINDOW - 1, BATCH)
        batch = torch.stack([xn[s : s + WINDOW + 1] for s in starts])  # (B, W+1, C)
        pred, _ = model.forward_normalised(batch[:, :-1])
        loss = torch.nn.functional.mse_loss(pred[:, 8:], batch[:, 9:])  # 8 burn-in steps
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    with torch.no_grad():
        val = torch.from_numpy(train[cut:].astype(np.float32))[None]  # (1, T, C) raw
        pred, _ = model(val)
    errors = (pred[0, :-1] - val[0, 1:]).numpy()  # (T-1, C) raw units
    error_scale = 1.4826 * np.median(np.abs(errors - np.median(errors, axis=0)), axis=0)
    path = os.path.join(work, f"{cell}{hidden}.onnx")
    export_onnx(model, path, error_scale=error_scale.tolist())
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--cells", nargs="+", default=["rnn", "lstm", "gru"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--steps", type=int, default=300, help="Adam steps per model")
    parser.add_argument(
        "--per-channel", action="store_true", help="add per-channel rows for the int8 modes"
    )
    parser.add_argument("--json", metavar="OUT.json", help="also write every report here")
    args = parser.parse_args(argv)

    rows, reports = [], []
    with tempfile.TemporaryDirectory() as work:
        signal = synthetic_signal(6000)
        calib_csv = write_csv(os.path.join(work, "calib.csv"), signal[4000:])
        for hidden in args.hidden:
            for cell in args.cells:
                src = train_and_export(cell, hidden, signal[:4000], work, args.steps)
                variants = [(m, False) for m in args.modes]
                if args.per_channel:
                    variants += [(m, True) for m in args.modes if m != "fp16"]
                for mode, per_channel in variants:
                    dst = os.path.join(work, f"{cell}{hidden}.{mode}{int(per_channel)}.onnx")
                    r = quantize_model(
                        src, dst, mode=mode, calib=calib_csv, per_channel=per_channel
                    )
                    reports.append({"cell": cell, "hidden": hidden, **r.to_dict()})
                    rows.append(_row(cell, hidden, mode + (" per-ch" if per_channel else ""), r))
                    print(rows[-1], file=sys.stderr, flush=True)
    header = (
        "| cell | hidden | mode | float KiB | size ratio | deviation (% std, worst ch.) "
        "| max abs dev | forecast RMSE float -> quant (% std) | flags agree "
        "| us/step ort float -> quant | us/step default float |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    print("\n".join(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(reports, fh, indent=2)
    return 0


def _row(cell: str, hidden: int, mode: str, r) -> str:
    err = (
        f"{100 * np.mean(r.error_before):.2f} -> {100 * np.mean(r.error_after):.2f}"
        if r.error_before is not None
        else "-"
    )
    flags = f"{100 * r.flag_agreement:.1f}%" if r.flag_agreement is not None else "-"
    default = (
        f"{r.default_latency_us[0]:.1f} ({r.default_backends[0]})"
        if r.default_latency_us is not None
        else f"{r.latency_before_us:.1f} (onnxruntime)"
    )
    return (
        f"| {cell} | {hidden} | {mode} | {r.size_before / 1024:.1f} | {r.size_ratio:.3f} "
        f"| {100 * r.worst_deviation:.3f} | {max(r.deviation_max):.2g} | {err} | {flags} "
        f"| {r.latency_before_us:.1f} -> {r.latency_after_us:.1f} | {default} |"
    )


if __name__ == "__main__":
    sys.exit(main())
