"""The `edgernn` command line.

Every command reports user errors (EdgernnError) as one line on stderr, prefixed
`edgernn: error:`, and exits 1; usage errors exit 2 (argparse). No tracebacks for
anything a user can cause.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable, Optional

from edgernn import __version__
from edgernn.argtypes import auto_or_non_negative_float, csv_list, positive_int
from edgernn.errors import EdgernnError, MissingDependencyError

# Modules that register further subcommands with add_commands(subparsers), by the
# commands each adds: `edgernn CMD` builds CMD's parser only (importing every command's
# options costs a Pi a good part of a second at each start); help and unknown commands
# build them all. tests/test_cli_lazy.py checks this table against the modules.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "edgernn.demo": ("demo",),
    "edgernn.runtime.evaluate_commands": ("evaluate",),
    "edgernn.export.commands": ("quantize",),
    "edgernn.runtime.bench_commands": ("bench",),
    "edgernn.runtime.wrap_commands": ("wrap",),
    "edgernn.firmware_bridge.commands": ("ports", "emulate"),
    "edgernn.deployfiles": ("deploy",),
}


def add_decimal_argument(parser) -> None:
    from edgernn.runtime.csvdata import add_decimal_argument as add

    add(parser)


# --------------------------------------------------------------------------- train
def add_train(sub) -> None:
    from edgernn.train.config import TrainConfig

    d = TrainConfig()
    p = sub.add_parser(
        "train",
        help="train a forecaster, soft sensor or classifier on CSV files",
        description="Train a recurrent forecaster (or, with --target / --task classify, a "
        "per-step regressor or classifier) on one or more CSV files (each file is an "
        "independent sequence) and write a self-describing checkpoint to RUN_DIR.",
        epilog="Scale out with PyTorch's launcher, unchanged: `torchrun --nproc_per_node=N -m "
        "edgernn train DATA... --out RUN_DIR` (DDP; NCCL on GPUs, gloo on CPU; add --nnodes, "
        "--node_rank, --rdzv_backend=c10d, --rdzv_endpoint=HOST:PORT, --rdzv_id for several "
        "machines). --batch-size is the global batch, split across the processes.",
    )
    p.add_argument(
        "data", nargs="*",
        help="CSV files (header row), directories (every *.csv below them) or glob patterns",
    )  # fmt: skip
    p.add_argument("--out", metavar="RUN_DIR", help="output run directory")
    p.add_argument(
        "--resume", metavar="RUN_DIR",
        help="continue RUN_DIR's training from its last finished epoch (its data and settings; "
        "--epochs/--patience/--device/--amp may change)",
    )  # fmt: skip
    p.add_argument("--channels", type=csv_list, help="comma-separated channels to use")
    p.add_argument("--ignore", type=csv_list, default=[], help="comma-separated columns to drop")
    add_decimal_argument(p)
    g = p.add_argument_group("task")
    g.add_argument(
        "--task", choices=["forecast", "regress", "classify"], default=d.task,
        help="forecast: the next sample of every channel (default); regress: the --target "
        "columns from the other channels, per step (a soft sensor); classify: the --label "
        "column's class, per step",
    )  # fmt: skip
    g.add_argument(
        "--target", dest="targets", action="append", metavar="COL",
        help="regress this column (repeat for several); implies --task regress",
    )  # fmt: skip
    g.add_argument(
        "--label", metavar="COL",
        help="classify: the column holding each step's class (text or integers; never an "
        "input); implies --task classify",
    )  # fmt: skip
    g = p.add_argument_group("model")
    g.add_argument("--cell", choices=["rnn", "lstm", "gru", "esn"], default=d.cell,
                   help="recurrent cell; esn (echo state network) needs no PyTorch "
                   "(default %(default)s; `edgernn evaluate` defaults to esn)")  # fmt: skip
    g.add_argument("--hidden", type=positive_int, default=d.hidden,
                   help="state size per layer (ESN: reservoir size) (default %(default)s)")  # fmt: skip
    g.add_argument("--layers", type=positive_int, default=d.layers,
                   help="stacked recurrent layers (default %(default)s)")  # fmt: skip
    g.add_argument("--nonlinearity", choices=["tanh", "relu"], default=d.nonlinearity,
                   help="activation of rnn and esn cells (default %(default)s)")  # fmt: skip
    g.add_argument("--dropout", type=float, default=d.dropout,
                   help="dropout between stacked layers, training only (default %(default)s)")  # fmt: skip
    g.add_argument("--horizon", type=positive_int, default=d.horizon,
                   help="forecast this many samples ahead (default %(default)s)")  # fmt: skip
    g.add_argument(
        "--no-residual", dest="residual", action="store_false",
        help="forecast the value itself, not the change from the current sample (default: "
        "the change)",
    )  # fmt: skip
    g.add_argument("--level-jitter", type=auto_or_non_negative_float, default=d.level_jitter,
                   metavar="STDS|auto",
                   help="lstm/gru/rnn forecasters: shift each training window, input and "
                   "target, by a random level of about this many training stds, so forecasts "
                   "follow the dynamics, not the levels seen in training; auto: 1 for one "
                   "channel, 0 for several (default %(default)s)")  # fmt: skip
    g.add_argument(
        "--bidirectional", action="store_true",
        help="refused: bidirectional models are not causal and cannot stream",
    )  # fmt: skip
    g = p.add_argument_group("optimisation")
    g.add_argument("--val-frac", type=float, default=d.val_frac,
                   help="the last fraction of every file, held out for validation "
                   "(default %(default)s)")  # fmt: skip
    g.add_argument("--skip-bad-rows", action="store_true",
                   help="skip (and count) rows with missing or non-numeric cells instead "
                   "of failing; each ends a stretch that trains on its own (forecasting)")  # fmt: skip
    g.add_argument("--bptt", choices=["window", "tbptt"], default=d.bptt,
                   help="window: random windows from a zero state; tbptt: contiguous chunks, "
                   "state carried across them (default %(default)s)")  # fmt: skip
    g.add_argument("--window", type=positive_int, default=d.window,
                   help="time steps per backprop window / truncated-BPTT chunk "
                   "(default %(default)s)")  # fmt: skip
    g.add_argument("--burn-in", type=int, default=d.burn_in,
                   help="leading steps of a window that warm the state but carry no loss "
                   "(default %(default)s)")  # fmt: skip
    g.add_argument("--batch-size", type=positive_int, default=d.batch_size,
                   help="windows per optimiser step, over all processes (default %(default)s)")  # fmt: skip
    g.add_argument("--epochs", type=positive_int, default=d.epochs,
                   help="most passes of training; early stopping may end sooner "
                   "(default %(default)s)")  # fmt: skip
    g.add_argument("--steps-per-epoch", type=int, default=d.steps_per_epoch,
                   help="optimiser steps per epoch; 0: about one pass over the training rows "
                   "(default %(default)s)")  # fmt: skip
    g.add_argument("--lr", type=float, default=d.lr,
                   help="Adam learning rate (default %(default)s)")  # fmt: skip
    g.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="Adam weight decay (L2 penalty) (default %(default)s)")  # fmt: skip
    g.add_argument("--clip", choices=["norm", "value", "none"], default=d.clip,
                   help="gradient clipping: by global norm, by value, or none "
                   "(default %(default)s)")  # fmt: skip
    g.add_argument("--clip-value", type=float, default=d.clip_value,
                   help="the norm or value --clip clips to (default %(default)s)")  # fmt: skip
    g.add_argument("--patience", type=positive_int, default=d.patience,
                   help="early stopping: epochs without validation improvement "
                   "(default %(default)s)")  # fmt: skip
    g.add_argument("--seed", type=int, default=d.seed,
                   help="random seed: the same data and seed train the same model "
                   "(default %(default)s)")  # fmt: skip
    g.add_argument("--schedule", choices=["constant", "cosine"], default=d.schedule,
                   help="learning rate over the epochs (default %(default)s)")  # fmt: skip
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d.device,
                   help="where to train; auto: a GPU if there is one (default %(default)s)")  # fmt: skip
    g.add_argument(
        "--amp", choices=["auto", "bf16", "fp16", "off"], default=d.amp,
        help="mixed precision on GPU (auto: bf16 where supported, else fp16; default "
        "%(default)s)",
    )  # fmt: skip
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no per-epoch progress lines")  # fmt: skip
    g.add_argument("--cache-dir", default=d.cache_dir, metavar="DIR",
                   help="parsed-CSV cache, shareable between runs (default RUN_DIR/cache)")  # fmt: skip
    g = p.add_argument_group("echo state network (--cell esn)")
    g.add_argument("--spectral-radius", type=float, default=d.spectral_radius,
                   help="reservoir weights' largest eigenvalue magnitude: memory length "
                   "(default %(default)s)")  # fmt: skip
    g.add_argument("--input-scale", type=float, default=d.input_scale,
                   help="scale of the input weights (default %(default)s)")  # fmt: skip
    g.add_argument("--ridge", type=float, default=d.ridge,
                   help="ridge penalty of the readout fit (default %(default)s)")  # fmt: skip
    g.add_argument("--washout", type=int, default=d.washout,
                   help="leading samples of each file that warm the reservoir, not fitted "
                   "(default %(default)s)")  # fmt: skip
    # Flags left out parse as None, so cmd_train can tell what was given (--resume keeps
    # the run's own settings for the rest); the defaults above are for --help.
    p.set_defaults(func=cmd_train, ignore=None, **dict.fromkeys(d.to_dict()))
    _show_config_defaults(p, d.to_dict())


def _show_config_defaults(parser, defaults: dict) -> None:
    """%(default)s in a help text says the TrainConfig value: set_defaults(None) above
    replaced the arguments' own defaults."""
    for action in parser._actions:
        if action.help and action.dest in defaults:
            action.help = action.help.replace("%(default)s", str(defaults[action.dest]))


def cmd_train(args) -> int:
    from edgernn.train.config import TrainConfig
    from edgernn.train.logs import rank_from_env

    if args.bidirectional:
        raise EdgernnError(
            "bidirectional models look at future samples: they are not causal and cannot "
            "stream one sample at a time"
        )
    names = set(TrainConfig.__dataclass_fields__)
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    data, out, channels, ignore = args.data, args.out, args.channels, args.ignore or []
    if args.resume:
        from edgernn.train.resume import plan_resume

        data, given, out, channels, ignore = plan_resume(args.resume, given, data, out, channels,
                                                         args.ignore)  # fmt: skip
    elif not data or not out:
        raise EdgernnError("give the data (CSV files, directories or globs) and --out RUN_DIR, "
                           "or --resume RUN_DIR")  # fmt: skip
    try:
        cfg = TrainConfig.from_dict(given)
    except ValueError as e:
        raise EdgernnError(str(e)) from None
    if args.level_jitter not in (None, "auto", 0) and not cfg.level_jitter:  # (dropped by cfg)
        raise EdgernnError("--level-jitter applies to lstm, gru and rnn forecasters (an ESN's "
                           "ridge readout, a regressor and a classifier train without it)")  # fmt: skip
    if cfg.cell != "esn":
        from edgernn.errors import require

        require("torch")
    from edgernn.train.fit import train_files

    try:
        train_files(data, cfg, out, channels=channels, ignore=ignore, resume=bool(args.resume))
    except EdgernnError:
        if rank_from_env()[0] != 0:
            # Under torchrun rank 0 meets the same error and reports it (then torchrun stops
            # this rank): one message, not one per process. Exiting first would get rank 0
            # killed before it prints. Still here after the wait: the error is ours alone.
            import time

            time.sleep(10.0)
        raise
    return 0


# -------------------------------------------------------------------------- export
def add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained run, or your own PyTorch module, as a stateful single-step "
        "ONNX graph",
        description="Export RUN_DIR's checkpoint as an ONNX graph (x + state in, forecast + "
        "next state out), checked by onnx.checker and a streaming parity run. With --module: "
        "any recurrent PyTorch module of yours, gated the same way.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", nargs="?", help="a run from `edgernn train`")
    p.add_argument("-o", "--out", required=True, metavar="MODEL.onnx")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument(
        "--unrolled", action="store_true",
        help="primitive ops only (MatMul/Add/Sigmoid/Tanh...): no LSTM/GRU/RNN op, no "
        "If/Loop; what NPU converters and microcontroller toolchains accept",
    )  # fmt: skip
    p.add_argument(
        "--static-batch", type=positive_int, metavar="N",
        help="with --unrolled: fix the batch dimension to N (fully static shapes)",
    )  # fmt: skip
    add_module_export_arguments(p)
    p.set_defaults(func=cmd_export)


def add_module_export_arguments(p) -> None:
    from edgernn.export.module_cli import parse_example_shape

    g = p.add_argument_group("your own PyTorch module (instead of RUN_DIR)")
    g.add_argument(
        "--module", metavar="PKG.MOD:FACTORY",
        help="the module to export: an nn.Module attribute, or a callable returning one "
        "(pkg.mod:build, or file.py:build)",
    )  # fmt: skip
    g.add_argument("--weights", metavar="MODEL.pt",
                   help="a state_dict (or a whole module) saved with torch.save")  # fmt: skip
    g.add_argument("--example-shape", type=parse_example_shape, metavar="T,F",
                   help="steps and input features of the example sequence the gates run")  # fmt: skip
    g.add_argument("--time-first", action="store_true",
                   help="the module takes [time, batch, features] (default batch first)")  # fmt: skip
    g.add_argument("--channels", type=csv_list, help="comma-separated input feature names")
    g.add_argument("--task", choices=["custom", "regress", "classify"], default="custom")
    g.add_argument("--classes", type=csv_list, help="classify: comma-separated class names")
    g.add_argument("--targets", type=csv_list, help="regress: comma-separated target names")
    g.add_argument("--output-names", type=csv_list, help="comma-separated output names")


def cmd_export(args) -> int:
    from edgernn.errors import require

    if args.module is not None:
        require("torch")
        require("onnx")
        return cmd_export_module(args)
    from edgernn.export import export_run

    if args.run_dir is None:
        raise EdgernnError("give RUN_DIR (a run from `edgernn train`) or --module PKG.MOD:FACTORY")
    from edgernn.export.module_cli import module_flags_given

    if module_flags_given(args):
        raise EdgernnError(f"{module_flags_given(args)[0]} is for --module exports")
    if args.static_batch is not None and not args.unrolled:
        raise EdgernnError("--static-batch needs --unrolled")
    report = export_run(
        args.run_dir, args.out, opset=args.opset, unrolled=args.unrolled,
        static_batch=args.static_batch,
    )  # fmt: skip
    print(
        f"wrote {args.out}: parity max abs error {report.max_abs:.2e} over {report.steps} steps "
        f"x {report.batch} streams (outputs in normalised units, states)"
    )
    return 0


def cmd_export_module(args) -> int:
    from edgernn.export.module_cli import export_from_args

    if args.run_dir is not None:
        raise EdgernnError("give RUN_DIR or --module, not both")
    if args.unrolled or args.static_batch is not None:
        raise EdgernnError("--unrolled/--static-batch are for RUN_DIR exports")
    print(export_from_args(args).line())
    return 0


# ----------------------------------------------------------------------------- run
def add_run(sub) -> None:
    from edgernn.firmware_bridge.options import add_mqtt_arguments, add_serial_arguments
    from edgernn.runtime.evaluate_commands import add_detector_arguments

    p = sub.add_parser(
        "run",
        help="stream samples through a model (CSV file or serial port)",
        description="Stream a CSV file, or a serial device with --port, through a model "
        "sample by sample. Each output row/object holds the inputs, the forecast and, when "
        "the model carries a detector calibration, the anomaly score and flag.",
    )
    p.add_argument("model", metavar="MODEL.onnx")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", metavar="IN.csv", help="input CSV; columns matched by name")
    add_decimal_argument(p)
    p.add_argument(
        "-o", "--out", metavar="OUT.csv|OUT.jsonl",
        help="output file (.csv or .jsonl); default: stdout (CSV for --csv, JSON lines for --port)",
    )  # fmt: skip
    p.add_argument(
        "--skip-bad-rows", action="store_true",
        help="--csv: skip (and count) rows with missing or non-numeric cells instead of failing",
    )  # fmt: skip
    p.add_argument(
        "--backend", choices=["auto", "c", "numpy", "onnxruntime"], default=None,
        help="execution backend (default: auto = compiled C step, else onnxruntime, else numpy)",
    )  # fmt: skip
    p.add_argument(
        "--no-detector", action="store_true",
        help="forecasts only: no anomaly score even when the model carries a calibration",
    )  # fmt: skip
    add_detector_arguments(p)
    p.add_argument(
        "--events", metavar="SETTINGS",
        help="classifiers: the decision layer's settings, e.g. 'enter=0.6,exit=0.4,"
        "min-samples=3,background=idle' (these are the defaults, no background): an event "
        "opens when a class reaches enter, holds while it stays >= exit, counts after "
        "min-samples steps; the `event` column holds the decided class",
    )  # fmt: skip
    add_serial_arguments(p, src)

    add_mqtt_arguments(p, src)
    p.set_defaults(func=cmd_run)


def make_detector(model, args):
    """The model's calibrated detector with the command line's overrides, or None."""
    from edgernn.runtime.detector import Detector
    from edgernn.runtime.evaluate_commands import detector_kwargs_from

    if args.no_detector:
        return None
    overrides = detector_kwargs_from(args)
    if not model.meta.is_forecaster:  # the detector scores forecast errors
        if overrides:
            raise EdgernnError(f"the anomaly detector scores forecasts; {model.path} is task "
                               f"{model.meta.task}")  # fmt: skip
        return None
    if "detector" not in model.meta.extra and model.meta.error_scale is None and not overrides:
        return None  # an uncalibrated model and no threshold asked for: forecasts only
    try:
        return Detector.from_meta(model.meta, **overrides)
    except ValueError as e:
        raise EdgernnError(f"detector: {e}") from None


def make_decider(model, args):
    """A classifier's decision layer (runtime/decision.py) with --events settings, or None."""
    from edgernn.runtime.decision import ClassEvents, parse_settings

    if model.meta.task != "classify":
        if args.events is not None:
            raise EdgernnError(f"--events is for classifiers; {model.path} is task "
                               f"{model.meta.task}")  # fmt: skip
        return None
    try:
        return ClassEvents.from_meta(model.meta, **parse_settings(args.events or ""))
    except ValueError as e:
        raise EdgernnError(f"--events: {e}") from None


def cmd_run(args) -> int:
    from edgernn.runtime import Model

    model = Model(args.model, backend=args.backend)
    detector = make_detector(model, args)
    if not model.meta.is_forecaster and args.csv is None:  # live output is forecast-shaped
        raise EdgernnError(f"live runs (--port, --mqtt) serve forecasters; {model.path} is task "
                           f"{model.meta.task}: run it with --csv")  # fmt: skip
    # One detector per device of a fleet, each with the command line's settings.
    factory = (lambda: make_detector(model, args)) if detector is not None else None
    if args.mqtt is not None:
        from edgernn.firmware_bridge.mqtt_run import run_mqtt

        return run_mqtt(args, model, detector_factory=factory)
    if getattr(args, "more_ports", None):
        from edgernn.firmware_bridge.serial_fleet import run_serial_fleet

        return run_serial_fleet(args, model, detector_factory=factory)
    if args.csv is not None and args.publish is not None:
        raise EdgernnError("--publish goes with --port or --mqtt (a live run), not --csv")
    if args.csv is None:
        from edgernn.firmware_bridge.live import run_serial

        return run_serial(args, model, detector=detector)
    from edgernn.runtime.csvrun import run_csv

    summary = run_csv(model, args.csv, args.out, skip_bad=args.skip_bad_rows, detector=detector,
                      decider=make_decider(model, args),
                      online_head=not args.no_online_head)  # fmt: skip
    print(summary.line(), file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- info
def add_info(sub) -> None:
    p = sub.add_parser("info", help="describe a model file")
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)


def cmd_info(args) -> int:
    import json

    from edgernn.runtime.info import describe, format_description

    desc = describe(args.model)
    print(json.dumps(desc, indent=2) if args.json else format_description(desc))
    return 0


# ---------------------------------------------------------------------------- main
def build_parser(argv: Optional[list[str]] = None) -> argparse.ArgumentParser:
    """The command line's parser; given the arguments, with the chosen command's
    subparser only when argv starts with a known command (the same parser for it)."""
    parser = argparse.ArgumentParser(
        prog="edgernn",
        description="Train, export and stream recurrent forecasters on edge devices.",
    )
    parser.add_argument("--version", action="version", version=f"edgernn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    chosen = argv[0] if argv else None
    own = {"train": add_train, "export": add_export, "run": add_run, "info": add_info}
    wanted = [m for m, names in COMMAND_MODULES.items() if chosen in names]
    if chosen in own:
        own[chosen](sub)
    elif wanted:
        importlib.import_module(wanted[0]).add_commands(sub)
    else:
        for add in own.values():
            add(sub)
        for name in COMMAND_MODULES:
            importlib.import_module(name).add_commands(sub)
    return parser


# Commands whose numpy keeps BLAS's own threads: training (torch on aarch64 uses
# OpenBLAS itself) and export.
BLAS_THREADED_COMMANDS = ("train", "export")


def single_threaded_blas(argv: list[str]) -> None:
    """One BLAS thread for the commands that stream (run, evaluate, bench, demo, ...).
    They hand BLAS only tiny products, one sample or one chunk at a time (the online
    head's 33 x 33 solve, its (64, 33) Gram update), where OpenBLAS's worker threads
    only spin: measured here, every solve kept a second core busy (CPU time twice the
    wall time), which on a 1 kHz serial stream delayed the next line by the length of
    the spin (most of the p99 latency). An explicit setting wins; too late once numpy
    is imported (edgernn.cli.main called from a process of one's own)."""
    if "numpy" in sys.modules:
        return
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in BLAS_THREADED_COMMANDS:
        for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    single_threaded_blas(argv)
    args = build_parser(argv).parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        if getattr(args, "decimal", ".") != ".":
            from edgernn.runtime.csvdata import set_default_decimal

            set_default_decimal(args.decimal)
        code = func(args) or 0
        _flush_stdout()  # a full disk or closed pipe shows here, not at interpreter exit
        return code
    except MissingDependencyError as e:
        print(f"edgernn: error: {e}", file=sys.stderr)
        return 1
    except EdgernnError as e:
        print(f"edgernn: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edgernn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `edgernn run ... | head`: the reader went away; that is not an error.
        _drop_stdout()
        return 0
    except OSError as e:
        # A file the user named cannot be written or read (a directory, a full disk, ...).
        _drop_stdout()
        # os.replace(tmp, dst) names both; the destination is the path the user gave.
        name = e.filename2 or e.filename
        print(f"edgernn: error: {name}: {e.strerror}" if name and e.strerror
              else f"edgernn: error: {e}", file=sys.stderr)  # fmt: skip
        return 1


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except OSError as e:  # name the stream (OSError() keeps the subclass, e.g. BrokenPipe)
        raise OSError(e.errno, e.strerror, "stdout") from e


def _drop_stdout() -> None:
    """Point stdout at /dev/null: output still buffered for a broken or full stdout
    would fail again (with a traceback) when the interpreter flushes it at exit."""
    try:
        sys.stdout.flush()
    except OSError:
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
