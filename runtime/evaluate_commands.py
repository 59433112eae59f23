"""`edgernn evaluate`: score the detector on labelled CSV files, streamed as live.

For each labelled CSV: fit a forecaster on its first N rows (plus any extra normal
files) and export it through the same gate as `edgernn export`, or take an existing
model (--model MODEL.onnx, no training); then stream the whole file sample by sample
through the runtime (Model + Monitor + Detector), exactly as a device would: causal,
one sample at a time, no look-ahead. The first N rows only warm the stream up; the
rows after them are scored against the labels: a 0/1 column, or labelled windows of
timestamps per file in a JSON file (--labels), the format public benchmarks use:

    {"machine_temperature.csv": [["2013-12-10 06:25:00", "2013-12-12 05:35:00"], ...]}

(a window may also be one timestamp: that row). Files are matched by their path, or
the end of it (a key "realKnownCause/x.csv" matches data/realKnownCause/x.csv).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from edgernn.argtypes import csv_list, non_negative_int, positive_int
from edgernn.errors import DataError, EdgernnError
from edgernn.runtime.csvdata import Table, add_decimal_argument, default_decimal, read_csv
from edgernn.runtime.detector import Detector, load_config, make_config, parse_time
from edgernn.runtime.evaluate import (
    NAB_PROFILES,
    NabScore,
    event_metrics,
    nab_score,
    nab_windows,
    onsets,
    point_metrics,
)

# Training flags `edgernn evaluate` passes through to TrainConfig.
TRAIN_FLAGS = (
    "cell", "hidden", "layers", "horizon", "residual", "epochs", "seed", "ridge", "spectral_radius",
)  # fmt: skip
@dataclass
class FileEvaluation:
    """One file's test part, streamed: labels, flags and scores per test row."""

    path: str
    train_rows: int
    labels: np.ndarray  # (N,) 0/1
    flags: np.ndarray  # (N,) 0/1
    scores: np.ndarray  # (N,) float, 0 where no verdict (warm-up, first forecast)
    events: list[dict] = field(default_factory=list)
    onsets: Optional[np.ndarray] = None  # (N,) 0/1: the sample opens an alert
    forecasts: Optional[np.ndarray] = None  # (N, C) the forecast made for each row
    times: Optional[list[str]] = None  # (N,) the time column, if any
    channels: list[str] = field(default_factory=list)
    time_column: Optional[str] = None
    skipped: dict[int, str] = field(default_factory=dict)  # --skip-bad-rows: line -> why

    def metrics(self, profile: str = "standard") -> dict[str, Any]:
        result: dict[str, Any] = dict(point_metrics(self.labels, self.flags))
        if self.skipped:
            result["skipped_rows"] = len(self.skipped)
        result.update(event_metrics(self.labels, self.flags))
        result["nab"] = self.nab(profile).to_dict()
        return result

    def nab(self, profile: str = "standard") -> NabScore:
        return nab_score(nab_windows(self.labels), onsets(self.flags), profile)


def write_table_head(table: Table, rows: int, path: str) -> None:
    """The first `rows` rows of a table's channels as a plain CSV (a training file). Rows
    skipped as bad among them are written as NaN rows, so that training with
    skip_bad_rows cuts its stretches where the file had them."""
    comma = default_decimal() == ","  # train reads it back with the process's --decimal
    values = table.values[:rows].tolist()
    if comma:
        values = [[repr(v).replace(".", ",") for v in row] for row in values]
    bad = getattr(table, "bad_rows", None)  # a Table; callers may pass anything with values
    if bad and rows:
        last = table.lines[rows - 1]
        at = np.searchsorted(table.lines, [n for n in bad if n < last])
        for k in sorted(at, reverse=True):  # a gap before kept row k
            values.insert(int(k), ["nan"] * len(table.channels))
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter=";" if comma else ",")
        writer.writerow(table.channels)
        writer.writerows(values)


def read_labelled(
    path: str,
    label: str,
    channels: Optional[Sequence[str]] = None,
    ignore: Sequence[str] = (),
    windows: Optional[dict] = None,
    skip_bad: bool = False,
) -> Table:
    """The file with its 0/1 labels in table.extra[label]: its label column, or, with
    `windows` (a --labels JSON), rows whose timestamp falls in one of the file's windows.
    skip_bad: rows with a bad cell (the label's too) are skipped, listed in the table."""
    on_bad = "skip" if skip_bad else "error"
    if windows is None:
        table = read_csv(path, channels=channels, ignore=ignore, keep=[label], on_bad=on_bad)
        labels = table.extra[label]
        if not np.isin(labels, (0, 1)).all():
            raise DataError(f"{path}: label column {label!r} must hold only 0 and 1")
        return table
    table = read_csv(path, channels=channels, ignore=ignore, on_bad=on_bad)
    table.extra[label] = labels_from_windows(path, table, windows_for(path, windows))
    return table


def windows_for(path: str, windows: dict) -> list:
    """The file's entry in a --labels JSON: by its path or the end of it."""
    norm = os.path.normpath(path).replace(os.sep, "/")
    matches = [k for k in windows if norm == k or norm.endswith("/" + k.lstrip("/"))]
    if not matches:
        raise DataError(f"{path}: no entry in the labels JSON (keys name files by path)")
    return windows[max(matches, key=len)]


def labels_from_windows(path: str, table: Table, windows) -> np.ndarray:
    """(N,) 0/1: rows whose timestamp lies in a window [t0, t1] (or equals a point)."""
    if table.time is None:
        raise DataError(f"{path}: labelled windows need a time column, and it has none")
    times = np.array([_stamp(path, t) for t in table.time])
    labels = np.zeros(len(table), dtype=np.int8)
    if not isinstance(windows, list):
        raise DataError(f"{path}: its labels must be a list of [start, end] windows")
    for w in windows:
        start, end = (w, w) if isinstance(w, (str, int, float)) else (w[0], w[-1]) if w else (None, None)
        if start is None:
            raise DataError(f"{path}: an empty window in the labels JSON")
        labels[(times >= _stamp(path, start)) & (times <= _stamp(path, end))] = 1
    return labels


def _stamp(path: str, value) -> float:
    seconds = parse_time(value)
    if seconds is None:
        raise DataError(f"{path}: {value!r} is not a timestamp")
    return seconds


def train_and_export(
    train_paths: Sequence[str],
    train_config,
    work_dir: str,
    channels: Sequence[str],
    log: Callable[[str], None],
) -> str:
    """Train on `train_paths`, export to work_dir/model.onnx; returns the model path."""
    from edgernn.export import export_run
    from edgernn.train import train_files

    run_dir = os.path.join(work_dir, "run")
    train_files(list(train_paths), train_config, run_dir, channels=list(channels), log=log)
    model_path = os.path.join(work_dir, "model.onnx")
    export_run(run_dir, model_path)
    return model_path


@dataclass
class Streamed:
    """Every row of a file streamed through Model + Monitor + Detector."""

    flags: np.ndarray  # (N,) 0/1
    scores: np.ndarray  # (N,)
    onsets: np.ndarray  # (N,) 0/1
    forecasts: np.ndarray  # (N, C) the forecast made for each row (NaN before the first)
    events: list[dict]
    channels: list[str]  # the model's channels (the forecasts' columns)


def stream_file(
    model_path: str, table: Table, detector_options: dict[str, Any], online_head: bool = True
) -> Streamed:
    """Stream every row of `table` through Model + Monitor + Detector, one at a time,
    with the row's timestamp when the file has a time column."""
    from edgernn.runtime.model import Model
    from edgernn.runtime.monitor import Monitor

    model = Model(model_path)
    if not model.meta.is_forecaster:
        raise EdgernnError(f"{model_path}: the detector scores forecasts; this is task {model.meta.task}")
    missing = [c for c in model.channels if c not in table.channels]
    if missing:
        raise DataError(f"the model's channel(s) {', '.join(missing)} are not in the file")
    values = table.values[:, [table.channels.index(c) for c in model.channels]]
    detector = Detector.from_meta(model.meta, **detector_options)
    monitor = Monitor(model, detector=detector, online_head=online_head)
    n = len(table)
    flags = np.zeros(n, dtype=np.int8)
    onsets = np.zeros(n, dtype=np.int8)
    scores = np.zeros(n, dtype=np.float64)
    forecasts = np.full((n, len(model.channels)), np.nan)
    for i in range(n):
        due = monitor.last_forecast
        if due is not None:
            forecasts[i] = due
        record = monitor.process(values[i], time=None if table.time is None else table.time[i])
        flags[i] = int(record.get("anomaly") or 0)
        onsets[i] = int(record.get("onset") or 0)
        scores[i] = float(record.get("score") or 0.0)
    detector.close_event()
    events = [e.to_dict() for e in detector.events]
    return Streamed(flags, scores, onsets, forecasts, events, list(model.channels))


def evaluate_file(
    path: str,
    train_rows: int,
    train_config,
    detector_kwargs: Optional[dict[str, Any]] = None,
    label: str = "anomaly",
    normal_files: Sequence[str] = (),
    channels: Optional[Sequence[str]] = None,
    ignore: Sequence[str] = (),
    work_dir: Optional[str] = None,
    log: Callable[[str], None] = lambda msg: None,
    model_path: Optional[str] = None,
    windows: Optional[dict] = None,
    online_head: bool = True,
    skip_bad: bool = False,
) -> FileEvaluation:
    """Fit on the first `train_rows` rows (+ normal_files) unless `model_path` names a
    model to use as it is; stream the file; score the rows from `train_rows` on.
    skip_bad: rows with a bad cell are skipped (not counted in `train_rows`, not
    streamed, listed in the result), and training cuts its stretches at them."""
    table = read_labelled(path, label, channels, ignore, windows, skip_bad)
    if skip_bad and table.bad_rows:
        train_config = dataclasses.replace(train_config, skip_bad_rows=True)
    if not 0 <= train_rows < len(table) or (model_path is None and train_rows == 0):
        raise DataError(
            f"{path}: has {len(table)} rows; --train-rows {train_rows} leaves nothing to "
            + ("test" if train_rows else "train on")
        )
    options = dict(detector_kwargs or {})
    if model_path is not None:
        streamed = stream_file(model_path, table, options, online_head)
    else:
        with tempfile.TemporaryDirectory(prefix="edgernn-eval-") as tmp:
            work = work_dir or tmp
            os.makedirs(work, exist_ok=True)
            head = os.path.join(tmp, "train_head.csv")
            write_table_head(table, train_rows, head)
            trained = train_and_export([head, *normal_files], train_config, work, table.channels, log)
            streamed = stream_file(trained, table, options, online_head)
    labels = table.extra[label].astype(np.int8)
    test = slice(train_rows, None)
    events = [e for e in streamed.events if e["end"] >= train_rows]
    return FileEvaluation(
        path, train_rows, labels[test], streamed.flags[test], streamed.scores[test], events,
        onsets=streamed.onsets[test], forecasts=streamed.forecasts[test],
        times=None if table.time is None else table.time[train_rows:],
        channels=streamed.channels, time_column=table.time_column,
        skipped=table.bad_rows,
    )  # fmt: skip


def pooled_metrics(results: Sequence[FileEvaluation], profile: str = "standard") -> dict:
    """Point metrics over all test rows pooled; events and NAB summed over files."""
    labels = np.concatenate([r.labels for r in results])
    flags = np.concatenate([r.flags for r in results])
    pooled: dict[str, Any] = dict(point_metrics(labels, flags))
    delays: list[int] = []
    n_events = n_false = 0
    for r in results:
        ev = event_metrics(r.labels, r.flags)
        delays += ev["delays"]
        n_events += ev["events"]
        n_false += ev["false_alarm_events"]
    pooled.update(
        events=n_events,
        detected=len(delays),
        detection_rate=len(delays) / n_events if n_events else 0.0,
        mean_delay=float(np.mean(delays)) if delays else None,
        median_delay=float(np.median(delays)) if delays else None,
        false_alarm_events=n_false,
    )
    total = results[0].nab(profile)
    for r in results[1:]:
        total = total + r.nab(profile)
    pooled["nab"] = total.to_dict()
    skipped = sum(len(r.skipped) for r in results)
    if skipped:
        pooled["skipped_rows"] = skipped
    return pooled


# ---------------------------------------------------------------------------------- CLI
def add_commands(subparsers) -> None:
    from edgernn.train.config import TrainConfig

    d = TrainConfig()
    p = subparsers.add_parser(
        "evaluate",
        help="score the anomaly detector on labelled CSV files",
        description="For each labelled CSV: train on its first N rows (plus any --normal "
        "files), or take --model as it is, then stream the file through the runtime's "
        "detector exactly as live and report point-wise precision/recall/F1/FAR/MAR, "
        "event detection rate and delay, and a NAB-style score.",
    )
    p.add_argument("data", nargs="+", help="labelled CSV file(s)")
    p.add_argument("--label", default="anomaly", help="the 0/1 label column (default anomaly)")
    p.add_argument(
        "--labels", metavar="JSON",
        help="labelled windows per file instead of a label column: "
        '{"file.csv": [["t0", "t1"], ...]} (timestamps of the time column)',
    )  # fmt: skip
    p.add_argument(
        "--model", metavar="MODEL.onnx",
        help="evaluate this model as it is (no training); --train-rows then only skips "
        "rows from scoring (default 0)",
    )  # fmt: skip
    p.add_argument(
        "--train-rows", type=non_negative_int, metavar="N",
        help="fit on each file's first N rows; the rest is the test part (required "
        "without --model)",
    )  # fmt: skip
    p.add_argument(
        "--normal", nargs="+", default=[], metavar="CSV",
        help="extra anomaly-free training files",
    )  # fmt: skip
    p.add_argument("--channels", type=csv_list, help="comma-separated channels to use")
    p.add_argument("--ignore", type=csv_list, default=[], help="comma-separated columns to drop")
    p.add_argument(
        "--skip-bad-rows", action="store_true",
        help="skip (and count) rows with missing or non-numeric cells instead of failing: "
        "not streamed, not scored, not counted in --train-rows; training cuts at them",
    )  # fmt: skip
    add_decimal_argument(p)
    p.add_argument("--out", metavar="DIR", help="write per-file predictions and summary.json here")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--profile", choices=sorted(NAB_PROFILES), default="standard")
    p.add_argument("--verbose", action="store_true", help="show training logs")
    g = p.add_argument_group("model (see `edgernn train`)")
    g.add_argument(
        "--cell", choices=["rnn", "lstm", "gru", "esn"], default="esn",
        help="recurrent cell (default %(default)s: an echo state network, fitted in "
        "seconds; `edgernn train` defaults to lstm)",
    )  # fmt: skip
    g.add_argument("--hidden", type=positive_int, default=d.hidden,
                   help="state size per layer (ESN: reservoir size) (default %(default)s)")
    g.add_argument("--layers", type=positive_int, default=d.layers,
                   help="stacked recurrent layers (default %(default)s)")
    g.add_argument("--horizon", type=positive_int, default=d.horizon,
                   help="forecast this many samples ahead (default %(default)s)")
    g.add_argument("--epochs", type=positive_int, default=d.epochs,
                   help="most training passes, PyTorch cells (default %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed, help="random seed (default %(default)s)")
    g.add_argument("--no-residual", dest="residual", action="store_false",
                   help="forecast the value itself, not the change from the current sample")
    g.add_argument("--ridge", type=float, default=d.ridge,
                   help="ESN readout ridge penalty (default %(default)s)")
    g.add_argument("--spectral-radius", type=float, default=d.spectral_radius,
                   help="ESN reservoir's spectral radius (default %(default)s)")
    add_detector_arguments(p)
    p.set_defaults(func=cmd_evaluate)


def add_detector_arguments(parser) -> None:
    """The detector's flags, shared by `edgernn run` and `edgernn evaluate`."""
    g = parser.add_argument_group("anomaly detector")
    g.add_argument(
        "--alarm-every", metavar="N|DURATION",
        help="the sensitivity: about one false alarm per N samples of normal operation "
        "(10000), or per DURATION when the input has a time column (7d, 12h, 30min); "
        "default: 7 days with timestamps, else 10000 samples",
    )  # fmt: skip
    g.add_argument(
        "--detector-config", metavar="FILE",
        help="expert detector options, JSON or TOML (see the README's detector section)",
    )  # fmt: skip
    g.add_argument(
        "--no-online-head", action="store_true",
        help="keep the trained forecaster's head: by default, with the detector on, its "
        "readout keeps learning from the stream (except samples the detector flags), "
        "and the forecasts written are the corrected ones",
    )  # fmt: skip


def detector_kwargs_from(args: argparse.Namespace) -> dict[str, Any]:
    """Detector options from --detector-config, with --alarm-every on top."""
    options: dict[str, Any] = {}
    if getattr(args, "detector_config", None):
        options.update(load_config(args.detector_config))
    if getattr(args, "alarm_every", None) is not None:
        options["alarm_every"] = args.alarm_every
    make_config(options)  # a bad value fails here, before any training or streaming
    return options


def cmd_evaluate(args: argparse.Namespace) -> int:
    from edgernn.errors import require
    from edgernn.train.config import TrainConfig

    det_kwargs = detector_kwargs_from(args)
    if args.model is None:
        if args.train_rows is None:
            raise EdgernnError("give --train-rows N (the rows each file trains on), or --model")
    elif args.normal:
        raise EdgernnError("--normal trains a model; with --model nothing is trained")
    train_rows = args.train_rows or 0
    cfg = TrainConfig(**{k: getattr(args, k) for k in TRAIN_FLAGS}, progress=False)
    if args.model is None and cfg.cell != "esn":
        # export runs the ONNX exporter and its parity gate; an ESN needs neither
        # (export/onnx_writer.py writes and checks its graph with numpy alone)
        require("torch")
        require("onnx")
    check_files(args)
    windows = read_windows(args.labels) if args.labels else None
    log = (lambda msg: print(msg, file=sys.stderr)) if args.verbose else (lambda msg: None)
    results = []
    for path in args.data:
        print(f"evaluating {path} ...", file=sys.stderr)
        try:
            results.append(
                evaluate_file(
                    path, train_rows, cfg, det_kwargs, label=args.label,
                    normal_files=args.normal, channels=args.channels, ignore=args.ignore,
                    log=log, model_path=args.model, windows=windows,
                    online_head=not args.no_online_head, skip_bad=args.skip_bad_rows,
                )
            )  # fmt: skip
            if results[-1].skipped:
                print(skip_line(path, results[-1].skipped), file=sys.stderr)
        except ValueError as e:  # a training setting the data cannot satisfy
            if isinstance(e, EdgernnError):
                raise
            raise EdgernnError(f"{path}: {e}") from None
    summary = {
        "files": {r.path: r.metrics(args.profile) for r in results},
        "pooled": pooled_metrics(results, args.profile),
        "train_rows": train_rows,
        "model": args.model,
        "detector": det_kwargs,
    }
    if args.out:
        write_outputs(args.out, results, summary)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def skip_line(path: str, skipped: dict[int, str]) -> str:
    """What --skip-bad-rows left out of a file, on one line."""
    shown = "; ".join(list(skipped.values())[:3])  # each reason names its row
    more = f"; {len(skipped) - 3} more" if len(skipped) > 3 else ""
    return f"{path}: skipped {len(skipped)} bad row(s), not scored ({shown}{more})"


def read_windows(path: str) -> dict:
    try:
        with open(path) as fh:
            windows = json.load(fh)
    except OSError as e:
        raise EdgernnError(f"{path}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise EdgernnError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(windows, dict):
        raise EdgernnError(f'{path}: labels must be an object {{"file.csv": [[t0, t1], ...]}}')
    return windows


def prediction_name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0] + "_pred.csv"


def check_files(args: argparse.Namespace) -> None:
    """Problems the run would only meet at its end (or never report) fail before any
    training: a file given twice, two files whose predictions would overwrite each
    other, an --out that is not a folder, the label fed to the model as an input."""
    seen: dict[str, str] = {}
    for path in args.data:
        real = os.path.realpath(path)
        if real in seen:
            also = "" if seen[real] == path else f" (also as {seen[real]})"
            raise EdgernnError(f"{path} is given twice{also}")
        seen[real] = path
    if args.channels and args.label in args.channels:
        raise EdgernnError(
            f"--channels names the label column {args.label!r}: the model would see the answer"
        )
    if not args.out:
        return
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise EdgernnError(f"--out {args.out} is not a folder")
    names: dict[str, str] = {}
    for path in args.data:
        name = prediction_name(path)
        if name in names:
            raise EdgernnError(
                f"{names[name]} and {path} would both write {args.out}/{name}; "
                "rename one or evaluate them separately"
            )
        names[name] = path


def write_outputs(out_dir: str, results: Sequence[FileEvaluation], summary: dict) -> None:
    try:
        os.makedirs(out_dir, exist_ok=True)
        for r in results:
            with open(os.path.join(out_dir, prediction_name(r.path)), "w", newline="") as fh:
                write_predictions(fh, r)
        with open(os.path.join(out_dir, "summary.json"), "w") as fh:
            json.dump(summary, fh, indent=2)
    except OSError as e:
        raise EdgernnError(f"{out_dir}: cannot write ({e.strerror})") from e


def write_predictions(fh, r: FileEvaluation) -> None:
    """One row per test row: row, the time column, label, forecasts, score, flag, onset."""
    writer = csv.writer(fh)
    head = ["row"] + ([r.time_column or "time"] if r.times is not None else [])
    writer.writerow(
        head + ["label"] + [f"{c}_forecast" for c in r.channels] + ["score", "anomaly", "onset"]
    )
    onsets = r.onsets if r.onsets is not None else np.zeros(len(r.flags), dtype=np.int8)
    for i in range(len(r.labels)):
        row: list[Any] = [r.train_rows + i] + ([r.times[i]] if r.times is not None else [])
        forecast = r.forecasts[i] if r.forecasts is not None else []
        row += [int(r.labels[i])] + ["" if v != v else f"{v:.7g}" for v in forecast]
        row += [f"{r.scores[i]:.6g}", int(r.flags[i]), int(onsets[i])]
        writer.writerow(row)


def format_summary(summary: dict) -> str:
    head = (
        f"{'file':30s} {'P':>6s} {'R':>6s} {'F1':>6s} {'FAR%':>6s} {'MAR%':>6s} "
        f"{'events':>7s} {'delay':>6s} {'NAB':>7s}"
    )
    lines = [head]
    rows = list(summary["files"].items()) + [("pooled", summary["pooled"])]
    for name, m in rows:
        delay = "-" if m["median_delay"] is None else f"{m['median_delay']:.0f}"
        nab = m["nab"]["score"]
        lines.append(
            f"{_short(name, 30):30s} {m['precision']:6.3f} {m['recall']:6.3f} {m['f1']:6.3f} "
            f"{100 * m['far']:6.2f} {100 * m['mar']:6.2f} "
            f"{m['detected']:>3d}/{m['events']:<3d} {delay:>6s} "
            f"{'-' if nab != nab else f'{nab:7.2f}':>7s}"
        )
    lines.append(
        "P/R/F1/FAR/MAR point-wise over test rows; events: labelled events with a flag "
        "inside; delay: median samples to the first flag; NAB: normalised NAB-style score"
    )
    return "\n".join(lines)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3) :]
