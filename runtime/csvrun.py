"""`edgernn run MODEL --csv IN.csv`: stream a file through the model, causally.

One output row per input row: the row's inputs and the forecast made after seeing
it (horizon steps ahead). With skip_bad, rows with bad cells are written with empty
forecast cells, counted, and do not advance the model. A graph that is not a forecaster
(a classifier, a regressor, a wrapped graph) writes its named outputs instead
(columns.py); the anomaly detector serves forecasters only.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from edgernn.errors import EdgernnError
from edgernn.runtime.csvdata import read_csv
from edgernn.runtime.model import Model
from edgernn.runtime.monitor import Monitor
from edgernn.runtime.output import RecordWriter


@dataclass
class RunSummary:
    rows: int = 0
    forecasts: int = 0
    skipped: int = 0
    anomalies: int = 0
    seconds: float = 0.0
    skipped_lines: list[int] = field(default_factory=list)
    noun: str = "forecasts"  # what a step yields: "steps" for graphs other than forecasters

    def line(self) -> str:
        per = 1e6 * self.seconds / max(self.forecasts, 1)
        text = (
            f"edgernn: {self.rows} rows in, {self.forecasts} {self.noun}, {self.skipped} skipped "
            f"({per:.1f} us/sample)"
        )
        if self.skipped_lines:
            shown = ", ".join(map(str, self.skipped_lines[:5]))
            more = ", ..." if len(self.skipped_lines) > 5 else ""
            text += f"; skipped lines {shown}{more}"
        return text


def run_csv(
    model: Model,
    in_path: str,
    out_path: Optional[str],
    skip_bad: bool = False,
    detector=None,
) -> RunSummary:
    table = read_csv(in_path, channels=model.channels, on_bad="skip" if skip_bad else "error")
    # Opening the output truncates it: never the input itself (samefile follows links).
    if (
        out_path not in (None, "-")
        and os.path.exists(out_path)
        and os.path.samefile(in_path, out_path)
    ):
        raise EdgernnError(f"{out_path}: is the input file; write the output somewhere else")
    if not model.meta.is_forecaster:
        if detector is not None:
            raise EdgernnError(
                f"the anomaly detector scores forecasts; {model.path} is task {model.meta.task}"
            )
        return _run_graph(model, table, out_path)
    monitor = Monitor(model, detector=detector)
    leading = [table.time_column] if table.time_column is not None else []
    trailing = ["score", "anomaly", "onset"] if detector is not None else []
    bad = set(table.skipped_rows)
    summary = RunSummary(rows=len(table) + len(bad), skipped=len(bad), skipped_lines=sorted(bad))
    # Kept and skipped rows in file order, so the output stays one row per input row.
    order = sorted([(line, i) for i, line in enumerate(table.lines)] + [(line, -1) for line in bad])
    start = time.perf_counter()
    with RecordWriter(out_path, model.channels, leading=leading, trailing=trailing) as out:
        for line, i in order:
            if i < 0:
                out.write({"skipped": True, "line": line})
                continue
            when = table.time[i] if table.time is not None else None
            record = _record(table, i, monitor.process(table.values[i], time=when), model.channels)
            _report_event(record, f"line {line}" if when is None else when)
            out.write(record)
            summary.forecasts += 1
            summary.anomalies += int(record.get("anomaly") or 0)
    summary.seconds = time.perf_counter() - start
    return summary


def _run_graph(model: Model, table, out_path: Optional[str]) -> RunSummary:
    """Any other graph: every named output of each step, as flat columns."""
    from edgernn.runtime.columns import OutputColumns

    leading = [table.time_column] if table.time_column is not None else []
    columns = OutputColumns(model.meta, taken=leading + model.channels)
    bad = set(table.skipped_rows)
    summary = RunSummary(
        rows=len(table) + len(bad), skipped=len(bad), skipped_lines=sorted(bad), noun="steps"
    )
    order = sorted([(line, i) for i, line in enumerate(table.lines)] + [(line, -1) for line in bad])
    stream = model.stream()
    start = time.perf_counter()
    with RecordWriter(out_path, model.channels, leading=leading, values=columns.names) as out:
        for line, i in order:
            if i < 0:
                out.write({"skipped": True, "line": line})
                continue
            stream.step(table.values[i])
            record: dict = {}
            if table.time_column is not None:
                record[table.time_column] = table.time[i]
            record.update({c: float(v) for c, v in zip(model.channels, table.values[i])})
            record.update(columns.values(stream.outputs))
            out.write(record)
            summary.forecasts += 1
    summary.seconds = time.perf_counter() - start
    return summary


def _report_event(record: dict, line: str) -> None:
    """Alert events go to stderr as they open and close (the rows carry the flags);
    `line` says where: "line N", or the row's timestamp when the input has a time column."""
    opened, closed = record.get("event_opened"), record.get("event_closed")
    if opened:
        top = ", ".join(opened.get("top_channels", []))
        print(f"edgernn: alert #{opened['id']} opened at {line} ({top})", file=sys.stderr)
    if closed:
        print(
            f"edgernn: alert #{closed['id']} closed at {line}: {closed['flagged']} flagged "
            f"samples, peak score {closed['peak_score']:.2f} "
            f"({', '.join(closed.get('top_channels', []))})",
            file=sys.stderr,
        )


def _record(table, i: int, result: dict, channels: list[str]) -> dict:
    record: dict = {}
    if table.time_column is not None:
        record[table.time_column] = table.time[i]
    record.update({c: float(v) for c, v in zip(channels, table.values[i])})
    record["forecast"] = dict(zip(channels, np.asarray(result.pop("forecast")).tolist()))
    record.update(result)
    return record
