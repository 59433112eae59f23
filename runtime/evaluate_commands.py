"""`edgernn evaluate`: train on the head of each labelled file, stream the rest live.

For each labelled CSV: fit a forecaster on its first N rows (plus any extra normal
files), export it through the same gate as `edgernn export`, then stream the whole file
sample by sample through the runtime (Model + Monitor + Detector), exactly as a device
would: causal, one sample at a time, no look-ahead. The first N rows only warm the
stream up; the rows after them are scored against the labels.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from edgernn.argtypes import csv_list, nonempty_csv_list, positive_int
from edgernn.errors import DataError, EdgernnError
from edgernn.runtime.csvdata import Table, read_csv
from edgernn.runtime.detector import COMBINES, NOVELTY_MODES, STRATEGIES, Detector
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
# Detector flags -> Detector keyword arguments (None: keep the calibrated value).
DETECTOR_FLAGS = {
    "threshold": "threshold",
    "threshold_value": "fixed_threshold",
    "smoothing": "smoothing",
    "warmup": "warmup",
    "holdoff": "holdoff",
    "min_score": "min_score",
    "threshold_window": "window",
    "z": "z",
    "p": "p",
    "adapt": "adapt",
    "baseline": "baseline",
    "combine": "combine",
    "forecast_weight": "forecast_weight",
    "holdout": "holdout",
    "quantile": "quantile",
    "margin": "margin",
    "release": "release",
    "freeze": "freeze",
    "novelty": "novelty",
    "novelty_channels": "novelty_channels",
}


@dataclass
class FileEvaluation:
    """One file's test part, streamed: labels, flags and scores per test row."""

    path: str
    train_rows: int
    labels: np.ndarray  # (N,) 0/1
    flags: np.ndarray  # (N,) 0/1
    scores: np.ndarray  # (N,) float, 0 where no verdict (warm-up, first forecast)
    events: list[dict] = field(default_factory=list)

    def metrics(self, profile: str = "standard") -> dict[str, Any]:
        result: dict[str, Any] = dict(point_metrics(self.labels, self.flags))
        result.update(event_metrics(self.labels, self.flags))
        result["nab"] = self.nab(profile).to_dict()
        return result

    def nab(self, profile: str = "standard") -> NabScore:
        return nab_score(nab_windows(self.labels), onsets(self.flags), profile)


def write_table_head(table: Table, rows: int, path: str) -> None:
    """The first `rows` rows of a table's channels as a plain CSV (a training file)."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(table.channels)
        writer.writerows(table.values[:rows].tolist())


def read_labelled(
    path: str, label: str, channels: Optional[Sequence[str]] = None, ignore: Sequence[str] = ()
) -> Table:
    table = read_csv(path, channels=channels, ignore=ignore, keep=[label])
    labels = table.extra[label]
    if not np.isin(labels, (0, 1)).all():
        raise DataError(f"{path}: label column {label!r} must hold only 0 and 1")
    return table


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


def stream_file(model_path: str, table: Table, detector_kwargs: dict[str, Any]):
    """Stream every row of `table` through Model + Monitor + Detector, one at a time.
    Returns (flags, scores, events) over all rows."""
    from edgernn.runtime.model import Model
    from edgernn.runtime.monitor import Monitor

    model = Model(model_path)
    detector = Detector.from_meta(model.meta, **detector_kwargs)
    monitor = Monitor(model, detector=detector)
    n = len(table)
    flags = np.zeros(n, dtype=np.int8)
    scores = np.zeros(n, dtype=np.float64)
    for i in range(n):
        record = monitor.process(table.values[i])
        flags[i] = int(record.get("anomaly") or 0)
        scores[i] = float(record.get("score") or 0.0)
    detector.close_event()
    return flags, scores, [e.to_dict() for e in detector.events]


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
) -> FileEvaluation:
    """Fit on the first `train_rows` rows (+ normal_files), stream the file, score the rest."""
    table = read_labelled(path, label, channels, ignore)
    if not 0 < train_rows < len(table):
        raise DataError(
            f"{path}: has {len(table)} rows; --train-rows {train_rows} leaves nothing to test"
        )
    with tempfile.TemporaryDirectory(prefix="edgernn-eval-") as tmp:
        work = work_dir or tmp
        os.makedirs(work, exist_ok=True)
        head = os.path.join(tmp, "train_head.csv")
        write_table_head(table, train_rows, head)
        model_path = train_and_export(
            [head, *normal_files], train_config, work, table.channels, log
        )
        flags, scores, events = stream_file(model_path, table, dict(detector_kwargs or {}))
    labels = table.extra[label].astype(np.int8)
    test = slice(train_rows, None)
    events = [e for e in events if e["end"] >= train_rows]
    return FileEvaluation(path, train_rows, labels[test], flags[test], scores[test], events)


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
    return pooled


# ---------------------------------------------------------------------------------- CLI
def add_commands(subparsers) -> None:
    from edgernn.train.config import TrainConfig

    d = TrainConfig()
    p = subparsers.add_parser(
        "evaluate",
        help="score the anomaly detector on labelled CSV files",
        description="For each labelled CSV: train on its first N rows (plus any --normal "
        "files), then stream the rest through the runtime's detector exactly as live and "
        "report point-wise precision/recall/F1/FAR/MAR, event detection rate and delay, "
        "and a NAB-style score.",
    )
    p.add_argument("data", nargs="+", help="labelled CSV file(s)")
    p.add_argument("--label", default="anomaly", help="the 0/1 label column (default anomaly)")
    p.add_argument(
        "--train-rows", type=positive_int, required=True, metavar="N",
        help="fit on each file's first N rows; the rest is the test part",
    )  # fmt: skip
    p.add_argument(
        "--normal", nargs="+", default=[], metavar="CSV",
        help="extra anomaly-free training files",
    )  # fmt: skip
    p.add_argument("--channels", type=csv_list, help="comma-separated channels to use")
    p.add_argument("--ignore", type=csv_list, default=[], help="comma-separated columns to drop")
    p.add_argument("--out", metavar="DIR", help="write per-file predictions and summary.json here")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--profile", choices=sorted(NAB_PROFILES), default="standard")
    p.add_argument("--verbose", action="store_true", help="show training logs")
    g = p.add_argument_group("model (see `edgernn train`)")
    g.add_argument("--cell", choices=["rnn", "lstm", "gru", "esn"], default="esn")
    g.add_argument("--hidden", type=positive_int, default=d.hidden)
    g.add_argument("--layers", type=positive_int, default=d.layers)
    g.add_argument("--horizon", type=positive_int, default=d.horizon)
    g.add_argument("--epochs", type=positive_int, default=d.epochs)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--no-residual", dest="residual", action="store_false")
    g.add_argument("--ridge", type=float, default=d.ridge, help="ESN readout ridge penalty")
    g.add_argument("--spectral-radius", type=float, default=d.spectral_radius, help="ESN")
    add_detector_arguments(p)
    p.set_defaults(func=cmd_evaluate)


def add_detector_arguments(parser) -> None:
    """The detector flags (shared with `edgernn run` if the lead wires them there)."""
    g = parser.add_argument_group("anomaly detector (default: the model's calibration)")
    g.add_argument("--threshold", choices=STRATEGIES, help="threshold strategy")
    g.add_argument("--threshold-value", type=float, help="the fixed threshold's value")
    g.add_argument("--smoothing", type=float, help="EWMA span of the error, samples")
    g.add_argument("--warmup", type=int, help="samples with a neutral score at the start")
    g.add_argument("--holdoff", type=int, help="quiet samples that close an alert event")
    g.add_argument("--min-score", type=float, help="never flag a score below this")
    g.add_argument("--threshold-window", type=positive_int, help="trailing window, samples")
    g.add_argument("--z", type=float, help="gaussian threshold: mean + z * std")
    g.add_argument("--p", type=float, help="dynamic threshold: pruning ratio")
    g.add_argument("--adapt", type=float, help="online scale tracking rate (0 = frozen)")
    g.add_argument(
        "--combine", choices=COMBINES,
        help="channels -> score: RMS over all ('mean'), the worst ('max'), or the 2 or 3 "
        "worst ('top2', 'top3')",
    )  # fmt: skip
    g.add_argument(
        "--baseline", type=float, metavar="SPAN",
        help="add a novelty term: each sample against a slow EWMA baseline of the stream "
        "(span in samples; frozen while flagged, so a sustained shift keeps alarming)",
    )  # fmt: skip
    g.add_argument(
        "--forecast-weight", type=float,
        help="weight of the forecast error beside the baseline term (0 = novelty only)",
    )  # fmt: skip
    g.add_argument(
        "--holdout", type=float, metavar="FRAC",
        help="last fraction of the warm-up that learns the baseline scale and the "
        "holdout threshold",
    )  # fmt: skip
    g.add_argument("--quantile", type=float, help="holdout threshold: this quantile of the scores")
    g.add_argument("--margin", type=float, help="holdout threshold: times this margin")
    g.add_argument(
        "--freeze", type=float, metavar="Z",
        help="on flagged samples only channels with baseline |z| above Z freeze their "
        "baseline; the others keep tracking (0 = all freeze)",
    )  # fmt: skip
    g.add_argument(
        "--novelty", choices=NOVELTY_MODES,
        help="novelty term: 'tracking' (a slow baseline that follows normal samples) or "
        "'reference' (a short EWMA of the samples, span --baseline, against a reference "
        "fixed at the end of the warm-up)",
    )  # fmt: skip
    g.add_argument(
        "--novelty-channels", type=nonempty_csv_list, metavar="NAMES",
        help="comma-separated channels in the novelty term (default: all); leave out "
        "sensors that drift in normal operation",
    )  # fmt: skip
    g.add_argument(
        "--release", type=float, metavar="RATIO",
        help="hysteresis: an alarm holds while the score stays above RATIO x the threshold "
        "(1 = none)",
    )  # fmt: skip


def detector_kwargs_from(args: argparse.Namespace) -> dict[str, Any]:
    kwargs = {dst: getattr(args, src, None) for src, dst in DETECTOR_FLAGS.items()}
    if kwargs.get("fixed_threshold") is not None and kwargs.get("threshold") is None:
        kwargs["threshold"] = "fixed"  # --threshold-value alone means a fixed threshold
    return {k: v for k, v in kwargs.items() if v is not None}


def check_detector_flags(det_kwargs: dict[str, Any]) -> None:
    """Bad detector flags fail before any training. Channel names in --novelty-channels
    are checked later, against each file's columns, once they are known."""
    named = [c for c in det_kwargs.get("novelty_channels") or [] if isinstance(c, str)]
    Detector(**{"fixed_threshold": 1.0, "channels": named or None, **det_kwargs})


def cmd_evaluate(args: argparse.Namespace) -> int:
    from edgernn.errors import require
    from edgernn.train.config import TrainConfig

    require("torch")  # export runs the ONNX exporter and its parity gate
    require("onnx")
    cfg = TrainConfig(**{k: getattr(args, k) for k in TRAIN_FLAGS}, progress=False)
    det_kwargs = detector_kwargs_from(args)
    check_detector_flags(det_kwargs)
    check_files(args)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.verbose else (lambda msg: None)
    results = []
    for path in args.data:
        print(f"evaluating {path} ...", file=sys.stderr)
        try:
            results.append(
                evaluate_file(
                    path, args.train_rows, cfg, det_kwargs, label=args.label,
                    normal_files=args.normal, channels=args.channels, ignore=args.ignore,
                    log=log,
                )
            )  # fmt: skip
        except ValueError as e:  # a training setting the data cannot satisfy
            if isinstance(e, EdgernnError):
                raise
            raise EdgernnError(f"{path}: {e}") from None
    summary = {
        "files": {r.path: r.metrics(args.profile) for r in results},
        "pooled": pooled_metrics(results, args.profile),
        "train_rows": args.train_rows,
        "detector": det_kwargs,
    }
    if args.out:
        write_outputs(args.out, results, summary)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


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
                writer = csv.writer(fh)
                writer.writerow(["row", "label", "score", "anomaly"])
                for i, (y, s, f) in enumerate(zip(r.labels, r.scores, r.flags)):
                    writer.writerow([r.train_rows + i, int(y), f"{s:.6g}", int(f)])
        with open(os.path.join(out_dir, "summary.json"), "w") as fh:
            json.dump(summary, fh, indent=2)
    except OSError as e:
        raise EdgernnError(f"{out_dir}: cannot write ({e.strerror})") from e


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
