"""`edgernn demo`: the whole story on an embedded pump dataset, nothing plugged in.

1. data      a healthy pump log to train on, and a live log with five labelled faults
2. train     a forecaster (GPU when there is one), validation vs persistence
3. export    the stateful single-step ONNX graph, parity-checked
4. quantize  int8 weights, with the deviation from the float model measured
5. live      an emulated microcontroller streams the live log over a virtual serial
             port (a pty, binary frames); `edgernn run --port` forecasts and scores
             every sample as it arrives, with the live terminal view
6. report    metrics.json and report.png in DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

import numpy as np

from edgernn.argtypes import int_at_least, positive_float, positive_int
from edgernn.errors import EdgernnError, require
from edgernn.pump import CHANNELS, FAULT_KINDS, UNITS, PumpLog, pump_log, write_csv

MIN_ROWS = 100  # fewest rows for --train-rows / --live-rows


class ArraySignal:
    """An emulator signal source that plays back recorded rows (the live pump log)."""

    def __init__(self, values: np.ndarray, rate: float):
        self.values = np.asarray(values, dtype=np.float32)
        self.rate = rate
        self.t = 0

    def next(self, n: int) -> np.ndarray:
        rows = self.values[self.t : self.t + n]
        if len(rows) < n:  # past the end: hold the last row (the run stops at `duration`)
            rows = np.concatenate([rows, np.repeat(self.values[-1:], n - len(rows), axis=0)])
        self.t += n
        return rows


def add_commands(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole pipeline on a built-in pump dataset, over a virtual serial port",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--out", default="edgernn-demo", metavar="DIR", help="default ./edgernn-demo")
    p.add_argument("--cell", choices=["rnn", "lstm", "gru", "esn"], default="lstm")
    p.add_argument("--hidden", type=positive_int, default=32)
    p.add_argument("--epochs", type=positive_int, default=12)
    # Training needs a 64-sample window plus 20% validation (81 rows at the least); the
    # live log needs room for five fault spans. 100 keeps both clear of the edge.
    p.add_argument("--train-rows", type=int_at_least(MIN_ROWS), default=8000,
                   help=f"healthy training log length (>= {MIN_ROWS})")  # fmt: skip
    p.add_argument("--live-rows", type=int_at_least(MIN_ROWS), default=4000,
                   help=f"live log length, with faults (>= {MIN_ROWS})")  # fmt: skip
    p.add_argument("--rate", type=positive_float, default=250.0,
                   help="emulated samples per second")  # fmt: skip
    p.add_argument(
        "--alarm-every", metavar="N", default="300",
        help="the detector's false-alarm budget: about one per N samples (default 300)",
    )  # fmt: skip
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    require("torch")
    require("onnx")
    out = os.path.abspath(args.out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise EdgernnError(f"{args.out}: exists and is not a directory")
    os.makedirs(out, exist_ok=True)
    started = time.perf_counter()

    train_log = pump_log(args.train_rows, seed=args.seed, faults=False)
    live_log = pump_log(args.live_rows, seed=args.seed + 1, faults=True, start=args.train_rows)
    train_csv = write_csv(os.path.join(out, "pump_train.csv"), train_log, with_labels=False)
    write_csv(os.path.join(out, "pump_live_labelled.csv"), live_log, with_labels=True)
    _log(f"[1/6] data: {args.train_rows} healthy rows to train on, {args.live_rows} live rows "
         f"with faults ({', '.join(FAULT_KINDS)})")  # fmt: skip

    run = _train(args, train_csv, out)
    model_path, int8_path, quant = _export_and_quantize(run.out_dir, out, train_csv)
    summary, records = _live(args, int8_path, live_log, out)
    metrics = _metrics(run, quant, summary, records, live_log, time.perf_counter() - started)
    with open(os.path.join(out, "metrics.json"), "w") as fh:
        json.dump(metrics, fh, indent=2)
    _report(out, records, live_log)
    _log("[6/6] report: " + _headline(metrics))
    print(f"demo outputs in {out}/")
    for name in ("model.onnx", "model.int8.onnx", "live.jsonl", "metrics.json", "report.png"):
        print(f"  {name}")
    return 0


# -- the steps -----------------------------------------------------------------------
def _train(args, train_csv: str, out: str):
    from edgernn.train import TrainConfig, train_files

    _log(f"[2/6] train: {args.cell}, hidden {args.hidden}, up to {args.epochs} epochs "
         f"(device {args.device})")  # fmt: skip
    cfg = TrainConfig(
        cell=args.cell, hidden=args.hidden, epochs=args.epochs, device=args.device, seed=args.seed
    )
    return train_files([train_csv], cfg, os.path.join(out, "run"), log=_log)


def _export_and_quantize(run_dir: str, out: str, calib_csv: str):
    from edgernn.export import export_run
    from edgernn.export.quantize import quantize_model

    model_path = os.path.join(out, "model.onnx")
    report = export_run(run_dir, model_path)
    _log(f"[3/6] export: {model_path} (parity {report.max_abs:.1e})")
    int8_path = os.path.join(out, "model.int8.onnx")
    quant = quantize_model(model_path, int8_path, mode="dynamic", calib=calib_csv)
    q = _quant_summary(quant)
    _log(f"[4/6] quantize: {int8_path}, {q['size_ratio']:.2f}x the float file, "
         f"forecast deviation {q['max_deviation_pct_of_std']:.2f}% of signal std")  # fmt: skip
    return model_path, int8_path, q


def _quant_summary(report) -> dict[str, Any]:
    return _jsonable({
        "mode": report.mode,
        "size_before": report.size_before,
        "size_after": report.size_after,
        "size_ratio": report.size_ratio,
        "deviation_pct_of_std": [100.0 * v for v in report.deviation_rel],
        "max_deviation_pct_of_std": 100.0 * report.worst_deviation,
        "flag_agreement": report.flag_agreement,
        "latency_us": {"float": report.latency_before_us, "int8": report.latency_after_us},
    })  # fmt: skip


def _live(args, model_path: str, log: PumpLog, out: str):
    from edgernn.cli import main as cli_main
    from edgernn.firmware_bridge.emulator import Emulator

    n = len(log.values)
    emu = Emulator(
        rate=args.rate, channels=len(CHANNELS), mode="binary", names=list(CHANNELS),
        seed=args.seed, duration=n / args.rate,
    )  # fmt: skip
    emu.signal = ArraySignal(log.values, args.rate)
    jsonl = os.path.join(out, "live.jsonl")
    summary_path = os.path.join(out, "live_summary.json")
    _log(f"[5/6] live: emulated pump on {emu.path} ({args.rate:.0f} samples/s, binary frames, "
         f"{n / args.rate:.0f} s); edgernn run --port {emu.path}")  # fmt: skip

    def unplug_when_done() -> None:
        emu.join()  # the device has sent every sample
        emu.drain(timeout=10.0)  # ... and the reader has taken every byte
        time.sleep(0.2)
        emu.unplug()  # a clean disconnect ends the run (--no-reconnect)

    emu.start()
    closer = threading.Thread(target=unplug_when_done, daemon=True)
    closer.start()
    argv = [
        "run", model_path, "--port", emu.path, "--no-reconnect", "-o", jsonl,
        "--summary-json", summary_path, "--live", "--detector-config",
        _detector_config(out, args.alarm_every),
    ]  # fmt: skip
    try:
        code = cli_main(argv)
    finally:
        emu.stop()
    if code != 0:
        raise EdgernnError(f"the live run exited with {code}")
    with open(summary_path) as fh:
        summary = json.load(fh)
    with open(jsonl) as fh:
        records = [json.loads(line) for line in fh]
    return summary, records


def _detector_config(out: str, alarm_every: str) -> str:
    """The demo's detector options, written as a config file the live run reads. The
    pump's healthy training log covers its normal operation (duty cycles, heating), so
    the validation errors' scale stays fixed (scale_span 0): a fault that lasts minutes
    is not absorbed into the scale while it lasts."""
    path = os.path.join(out, "detector.json")
    with open(path, "w") as fh:
        json.dump({"alarm_every": alarm_every, "scale_span": 0}, fh)
    return path


# -- results -------------------------------------------------------------------------
def _aligned(records: list[dict], log: PumpLog):
    """Per log row: forecast made for it, score, flag (NaN / 0 where the row never came)."""
    n, c = log.values.shape
    forecast_made = np.full((n, c), np.nan)
    score = np.full(n, np.nan)
    flag = np.zeros(n, dtype=np.int64)
    for r in records:
        seq = r.get("seq")
        if seq is None or not 0 <= seq < n or r.get("gap"):
            continue
        if r.get("score") is not None:
            score[seq] = r["score"]
        flag[seq] = int(r.get("anomaly") or 0)
        if seq + 1 < n and r.get("forecast"):
            forecast_made[seq + 1] = [r["forecast"][ch] for ch in CHANNELS]
    return forecast_made, score, flag


def _metrics(run, quant, summary, records, log: PumpLog, seconds: float) -> dict[str, Any]:
    from edgernn.runtime.evaluate import event_metrics, point_metrics

    _, _, flag = _aligned(records, log)
    per_kind = {}
    for kind, s, e in log.faults:
        hits = np.flatnonzero(flag[s:e])
        per_kind[kind] = {
            "rows": e - s,
            "flagged": int(len(hits)),
            "detected": bool(len(hits)),
            "delay_samples": int(hits[0]) if len(hits) else None,
        }
    return _jsonable({
        "forecast": {
            "validation_model": run.metrics["model"],
            "validation_persistence": run.metrics["persistence"],
            "units": run.metrics["units"],
        },
        "detection": {
            "point": point_metrics(log.label, flag),
            "events": event_metrics(log.label, flag),
            "per_fault": per_kind,
        },
        "quantization": quant,
        "latency_ms": {"p50": summary.get("latency_p50_ms"), "p99": summary.get("latency_p99_ms")},
        "samples": {k: summary.get(k) for k in (
            "samples", "forecasts", "invalid", "rejected", "missing", "device_dropped",
            "overflow", "unaccounted",
        )},  # fmt: skip
        "seconds": round(seconds, 1),
    })  # fmt: skip


def _headline(m: dict) -> str:
    p = m["detection"]["point"]
    f, b = m["forecast"]["validation_model"], m["forecast"]["validation_persistence"]
    return (
        f"forecast RMSE {f['rmse']:.3f} vs persistence {b['rmse']:.3f}; detection precision "
        f"{p['precision']:.2f} recall {p['recall']:.2f} F1 {p['f1']:.2f}; latency p99 "
        f"{m['latency_ms']['p99']} ms; {m['samples']['unaccounted']} samples unaccounted"
    )


def _report(out: str, records: list[dict], log: PumpLog) -> None:
    from edgernn.report import plot_report

    forecast, score, flag = _aligned(records, log)
    thresholds = np.full(len(log.values), np.nan)
    for r in records:
        seq = r.get("seq")
        if seq is not None and 0 <= seq < len(thresholds) and r.get("threshold") is not None:
            thresholds[seq] = r["threshold"]
    plot_report(
        os.path.join(out, "report.png"), CHANNELS, log.values, forecast, score, flag,
        truth=log.label, threshold=thresholds if np.isfinite(thresholds).any() else None,
        title="edgernn demo: pump, live over a virtual serial port", units=UNITS,
        faults=log.faults,
    )  # fmt: skip


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v
