"""`edgernn demo`: the whole pipeline on an embedded synthetic pump, in one command.

Generates a multi-sensor machine log, trains a forecaster, exports and checks it,
then streams a held-out log through the runtime and writes everything to DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from edgernn.errors import require

PUMP_CHANNELS = ("vibration", "current", "temperature", "pressure")


def pump_signal(n: int, seed: int = 0) -> np.ndarray:
    """A pump with duty cycles: (n, 4) vibration [g], current [A], temperature [C], pressure [bar]."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    duty = (np.sin(2 * np.pi * t / 400.0) > -0.3).astype(np.float64)  # on/off cycles
    load = np.convolve(duty, np.ones(20) / 20.0, mode="same")  # motor ramps, not steps
    vibration = 0.2 + 0.8 * load * (1 + 0.3 * np.sin(2 * np.pi * t / 7.0)) + 0.03 * rng.standard_normal(n)
    current = 0.5 + 4.5 * load + 0.05 * rng.standard_normal(n)
    heat = np.zeros(n)
    for i in range(1, n):  # temperature follows the load slowly
        heat[i] = heat[i - 1] + (load[i] - heat[i - 1]) / 150.0
    temperature = 25.0 + 30.0 * heat + 0.002 * t / 10.0 + 0.1 * rng.standard_normal(n)
    pressure = 1.0 + 2.0 * load + 0.1 * np.sin(2 * np.pi * t / 50.0) + 0.02 * rng.standard_normal(n)
    return np.stack([vibration, current, temperature, pressure], axis=1)


def write_csv(path: str, values: np.ndarray, names=PUMP_CHANNELS) -> str:
    with open(path, "w") as fh:
        fh.write("t," + ",".join(names) + "\n")
        for i, row in enumerate(values):
            fh.write(f"{i}," + ",".join(f"{v:.5f}" for v in row) + "\n")
    return path


def add_commands(sub) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on a built-in pump dataset")
    p.add_argument("--out", default="edgernn-demo", metavar="DIR", help="default ./edgernn-demo")
    p.add_argument("--rows", type=int, default=6000, help="training log length")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--cell", choices=["rnn", "lstm", "gru", "esn"], default="lstm")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    require("torch")
    from edgernn.export import export_run
    from edgernn.runtime import Model
    from edgernn.runtime.csvrun import run_csv
    from edgernn.train import TrainConfig, train_files

    os.makedirs(args.out, exist_ok=True)
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    train_csv = write_csv(os.path.join(args.out, "pump_train.csv"), pump_signal(args.rows, seed=0))
    live_csv = write_csv(os.path.join(args.out, "pump_live.csv"), pump_signal(2000, seed=1))
    log(f"[1/3] training a {args.cell} forecaster on {train_csv}")
    cfg = TrainConfig(cell=args.cell, hidden=args.hidden, epochs=args.epochs)
    run = train_files([train_csv], cfg, os.path.join(args.out, "run"), log=log)
    model_path = os.path.join(args.out, "model.onnx")
    report = export_run(run.out_dir, model_path)
    log(f"[2/3] exported {model_path} (parity {report.max_abs:.1e})")
    start = time.perf_counter()
    summary = run_csv(Model(model_path), live_csv, os.path.join(args.out, "forecasts.csv"))
    log(f"[3/3] streamed {live_csv}: {summary.line()}")
    metrics = {
        "forecast": run.metrics["model"],
        "persistence": run.metrics["persistence"],
        "stream": {
            "rows": summary.rows,
            "forecasts": summary.forecasts,
            "skipped": summary.skipped,
            "us_per_sample": 1e6 * summary.seconds / max(summary.forecasts, 1),
            "seconds": time.perf_counter() - start,
        },
    }
    with open(os.path.join(args.out, "metrics.json"), "w") as fh:
        json.dump(metrics, fh, indent=2)
    print(f"demo outputs in {os.path.abspath(args.out)}/: model.onnx, forecasts.csv, metrics.json")
    return 0
