"""`edgernn quantize`: int8 / float16 versions of an exported model, with a report of
what they cost (size, forecast deviation, anomaly flags, latency)."""

from __future__ import annotations

import argparse
import json

from edgernn.errors import require
from edgernn.runtime.csvdata import add_decimal_argument


def _percent(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value / 100


def add_commands(sub) -> None:
    from edgernn.export.quantize import MODES

    p = sub.add_parser(
        "quantize",
        help="write an int8 or float16 version of a model and report what it costs",
        description="Quantize an exported edgernn model. The result keeps the stateful "
        "single-step interface and metadata, so `edgernn run` uses it unchanged. The "
        "report compares it with the float model on a held-out stream: --eval CSV, else "
        "the last 25% of --calib, else a synthetic stream.",
    )
    p.add_argument("model", metavar="MODEL.onnx", help="float model from `edgernn export`")
    p.add_argument("-o", "--out", required=True, metavar="OUT.onnx")
    p.add_argument(
        "--mode", choices=MODES, default="dynamic",
        help="dynamic: int8 weights, activations quantized per step (default); "
        "static: int8 QDQ calibrated on --calib; fp16: float16 weights",
    )  # fmt: skip
    p.add_argument("--calib", metavar="DATA.csv", help="calibration data (needed for static)")
    p.add_argument("--eval", metavar="EVAL.csv", help="held-out data for the report")
    add_decimal_argument(p)
    p.add_argument(
        "--unroll", action="store_true",
        help="write LSTM cells as primitive ops too (standard MatMulInteger instead of "
        "onnxruntime's DynamicQuantizeLSTM); RNN/GRU and static mode always are",
    )  # fmt: skip
    p.add_argument(
        "--per-channel", action="store_true",
        help="int8: one scale per weight column (about half the deviation, ~10%% larger file)",
    )  # fmt: skip
    p.add_argument(
        "--max-deviation", type=_percent, metavar="PCT",
        help="fail (keeping OUT.onnx.failed) if the forecast deviates from the float model "
        "by more than PCT%% of the signal std on any channel",
    )  # fmt: skip
    p.add_argument(
        "--skip-bad-rows", action="store_true",
        help="skip (and count) CSV rows with missing or non-numeric cells",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(args) -> int:
    require("onnx")
    from edgernn.export.quantize import quantize_model

    report = quantize_model(
        args.model, args.out, mode=args.mode, calib=args.calib, eval_csv=args.eval,
        unroll=args.unroll, per_channel=args.per_channel, skip_bad_rows=args.skip_bad_rows, max_deviation=args.max_deviation,
    )  # fmt: skip
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print("\n".join(report.lines()))
    return 0
