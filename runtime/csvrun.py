"""`edgernn run MODEL --csv IN.csv`: stream a file through the model, causally.

One output row per input row: the row's inputs and the forecast made after seeing
it (horizon steps ahead). With skip_bad, rows with bad cells are written with empty
forecast cells, counted, and do not advance the model. A graph that is not a forecaster
(a classifier, a regressor, a wrapped graph) writes its named outputs instead
(columns.py); the anomaly detector serves forecasters only.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from edgernn.errors import DataError, EdgernnError
from edgernn.runtime.adapt import OnlineHead, learn_weight, learn_weights
from edgernn.runtime.csvdata import iter_csv
from edgernn.runtime.detector import ckernel
from edgernn.runtime.detector.outputs import BlockResult
from edgernn.runtime.detector.timeparse import as_seconds_array
from edgernn.runtime.model import Model
from edgernn.runtime.monitor import _detector_fields
from edgernn.runtime.output import RecordWriter, _jsonable, _needs_quotes


@dataclass
class RunSummary:
    rows: int = 0
    forecasts: int = 0
    skipped: int = 0
    anomalies: int = 0
    seconds: float = 0.0
    skipped_lines: list[int] = field(default_factory=list)
    noun: str = "forecasts"  # what a step yields: "steps" for graphs other than forecasters
    # where the first skipped rows were: their time cells when the input has a time
    # column (a row that was no CSV row at all: "line N"), else empty (line numbers)
    skipped_at: list[str] = field(default_factory=list)

    def line(self) -> str:
        per = 1e6 * self.seconds / max(self.forecasts, 1)
        text = (
            f"edgernn: {self.rows} rows in, {self.forecasts} {self.noun}, {self.skipped} skipped "
            f"({per:.1f} us/sample)"
        )
        more = ", ..." if len(self.skipped_lines) > 5 else ""
        if self.skipped_at:
            text += f"; skipped rows at {', '.join(self.skipped_at[:5])}{more}"
        elif self.skipped_lines:
            text += f"; skipped lines {', '.join(map(str, self.skipped_lines[:5]))}{more}"
        return text


# Rows per chunk: Stream.run's call costs nothing at this size, and a chunk's Python rows
# (cells, formatted floats) stay a few MB.
RUN_CHUNK_ROWS = 4096
# skipped_lines keeps the first few only: the summary line shows five (memory stays flat
# whatever the file holds)
SHOWN_SKIPPED = 6


def run_csv(
    model: Model,
    in_path: str,
    out_path: Optional[str],
    skip_bad: bool = False,
    detector=None,
    chunk_rows: int = RUN_CHUNK_ROWS,
    decider=None,
    online_head: bool = True,
) -> RunSummary:
    """The file in chunks of rows (bounded memory, whatever its length): each chunk read
    and checked, stepped through the model in one Stream.run, scored sample by sample
    and written in one block; the output holds the same values as stepping row by row.
    A bad row (without skip_bad) past the first chunk ends the run with the rows before
    its chunk written. online_head: with a detector, correct the forecaster's readout
    online (runtime/adapt.py), as Monitor does."""
    chunks = iter_csv(
        in_path, channels=model.channels, on_bad="skip" if skip_bad else "error",
        chunk_rows=chunk_rows,
    )  # fmt: skip
    first = next(chunks)  # the header, the layout and the first rows checked before writing
    if not len(first):  # only the last chunk can be short of kept rows: there are none
        raise DataError(f"{first.path}: no valid data rows")
    # Opening the output truncates it: never the input itself (samefile follows links).
    if (
        out_path not in (None, "-")
        and os.path.exists(out_path)
        and os.path.samefile(in_path, out_path)
    ):
        raise EdgernnError(f"{out_path}: is the input file; write the output somewhere else")
    tables = itertools.chain([first], chunks)
    if not model.meta.is_forecaster:
        if detector is not None:
            raise EdgernnError(
                f"the anomaly detector scores forecasts; {model.path} is task {model.meta.task}"
            )
        return _run_graph(model, first, tables, out_path, decider)
    leading = _leading_columns(first)
    trailing = ["score", "anomaly", "onset"] if detector is not None else []
    summary = RunSummary()
    forecasts = _Forecasts(model, online_head=detector is not None and online_head)
    start = time.perf_counter()
    with RecordWriter(out_path, model.channels, leading=leading, trailing=trailing) as out:
        for table in tables:
            _count(summary, table)
            Y = forecasts.run(table.values)
            verdicts = (
                forecasts.score(detector, table, Y) if detector is not None else None
            )
            leading = _csv_leading(table) if out.fmt == "csv" else None
            if leading is not None:
                _write_csv_block(out, table, Y, verdicts, *leading)
            else:
                records = None if verdicts is None else verdicts.records()
                _write_records(out, table, Y, records, model.channels)
            if verdicts is not None:
                summary.anomalies += verdicts.anomalies()
    summary.seconds = time.perf_counter() - start
    return summary


def _leading_columns(table) -> list[str]:
    """The input's row index (pandas) and time column, written before the values."""
    return [c for c in (table.index_column, table.time_column) if c is not None]


def _leading_cells(table, i: int) -> dict:
    cells = {}
    if table.index_column is not None:
        cells[table.index_column] = table.index[i]
    if table.time_column is not None:
        cells[table.time_column] = table.time[i]
    return cells


def _count(summary: RunSummary, table) -> None:
    summary.rows += len(table) + len(table.skipped_rows)
    summary.forecasts += len(table)
    summary.skipped += len(table.skipped_rows)
    room = SHOWN_SKIPPED - len(summary.skipped_lines)
    shown = sorted(table.skipped_rows)[: max(room, 0)]
    summary.skipped_lines.extend(shown)
    if table.time_column is not None:
        summary.skipped_at.extend(_skipped_time(table, n) or f"line {n}" for n in shown)


def _skipped_time(table, line: int) -> Optional[str]:
    """The time cell of a row skipped as bad (None: the line was no CSV row)."""
    return table.skipped_leading.get(line, {}).get(table.time_column)


def _skipped_record(table, line: int) -> dict:
    """What a skipped row's output holds: its time (and row index) cells, where readable."""
    return {"skipped": True, "line": line, **table.skipped_leading.get(line, {})}


class _Forecasts:
    """The stream's forecasts, a chunk at a time, and the forecast each sample is due
    to be scored against (the one made `horizon` samples before it, across chunks)."""

    def __init__(self, model: Model, online_head: bool = False):
        self.stream = model.stream()
        self.horizon = model.horizon
        self.seen = 0  # samples stepped so far
        self._tail = np.zeros((0, model.n_channels), dtype=np.float32)  # the last `horizon`
        self.head = OnlineHead.for_model(model) if online_head else None
        self._features: Optional[np.ndarray] = None  # the chunk's, for the head

    def run(self, X: np.ndarray) -> np.ndarray:
        """The trained model's forecasts for the chunk (score() corrects them in place
        when there is an online head)."""
        if not len(X):
            return np.zeros_like(X)
        if self.head is None:
            return self.stream.run(X)
        Y, self._features = self.stream.run_features(X)
        return Y

    def score(self, detector, table, Y: np.ndarray) -> _Verdicts:
        """The detector's verdicts on every row of the chunk, as Monitor.process makes
        them; alert events reported on stderr in row order. With an online head, Y is
        corrected in place and the rows are scored in pieces that end where the head
        re-solves (the same order as Monitor: a piece's forecasts corrected, its rows
        scored, then learnt unless flagged)."""
        if not hasattr(detector, "score_rows"):  # a detector of another kind
            return self._score_pieces(detector, table, Y)
        n, tail = len(Y), len(self._tail)
        made = np.concatenate([self._tail, Y])  # made[i + tail - horizon]: row i's forecast
        start = max(0, min(n, self.horizon - self.seen))  # rows with no forecast due
        rows = _ChunkRows(detector, table, made, start, tail - self.horizon)
        if self.head is None:
            rows.weigh(0, n)
        else:
            self.head.run_chunk(made[tail:], self._features, table.values, rows.weigh)
            Y[:] = made[tail:]
        self.seen += n
        self._tail = made[len(made) - min(self.horizon, len(made)) :].copy()
        return _Verdicts(n, start, rows.result)

    def _score_pieces(self, detector, table, Y: np.ndarray) -> _Verdicts:
        """score() for a detector with score_block or score_one only: records by row."""
        if self.head is None:
            return _Verdicts.of_records(self._score(detector, table, Y, 0, len(Y))[0])
        verdicts: list[dict] = []
        a = 0
        while a < len(Y):
            b = a + min(self.head.room, len(Y) - a)
            Y[a:b] = self.head.correct(Y[a:b], self._features[a:b])
            piece, weights = self._score(detector, table, Y, a, b)
            self.head.learn(table.values[a:b], weights)
            verdicts += piece
            a = b
        return _Verdicts.of_records(verdicts)

    def _score(self, detector, table, Y: np.ndarray, a: int, b: int) -> tuple[list[dict], np.ndarray]:
        """score() of rows a..b-1 (Y[:b] final), and the weight the online head learns
        each row with (adapt.learn_weight's, from the block's arrays). The rows go to
        the detector as one block (Detector.score_block: one kernel call, the same
        verdicts as score_one row by row)."""
        made = np.concatenate([self._tail, Y[a:b]])  # made[i + len(tail) - horizon] is row a+i's
        lag = len(self._tail) - self.horizon
        n = b - a
        start = max(0, min(n, self.horizon - self.seen))  # rows with no forecast due
        verdicts = [{"score": None, "anomaly": 0, "onset": 0} for _ in range(start)]
        weights = np.ones(n)
        if start < n and hasattr(detector, "score_block"):
            rows = slice(a + start, b)
            times = None if table.time is None else table.time[rows]
            block = detector.score_block(
                table.values[rows], made[start + lag : n + lag], times=times
            )
            verdicts += block.records()
            weights[start:] = learn_weights(block.anomaly)
            for i in sorted({*block.opened, *block.closed}):
                row = a + start + i
                where = f"line {table.lines[row]}" if table.time is None else table.time[row]
                _report_event(verdicts[start + i], where)
        else:  # a detector with score_one only
            for i in range(start, n):
                row = a + i
                when = table.time[row] if table.time is not None else None
                due, x = made[i + lag], table.values[row]
                out = (
                    detector.score_one(x, due) if when is None
                    else detector.score_one(x, due, time=when)
                )  # fmt: skip
                verdicts.append(_detector_fields(out))
                weights[i] = learn_weight(verdicts[-1])
                _report_event(verdicts[-1], f"line {table.lines[row]}" if when is None else when)
        self.seen += n
        self._tail = made[len(made) - min(self.horizon, len(made)) :].copy()
        return verdicts, weights


class _ChunkRows:
    """A chunk's rows as the detector scores them, piece by piece (Detector.score_rows):
    the samples, timestamps and results held as whole-chunk arrays, each piece's due
    forecasts copied in once they are final. weigh(a, b) scores the chunk's rows a..b-1
    and gives the weights the online head learns them with."""

    def __init__(self, detector, table, made: np.ndarray, start: int, lag: int):
        self.detector, self.table, self.made = detector, table, made
        self.start, self.lag = start, lag  # made[i + lag] is row i's due forecast
        self.X = np.ascontiguousarray(table.values[start:], dtype=np.float64)
        self.F = np.empty_like(self.X)
        self.result = BlockResult.empty(len(self.X), self.X.shape[1])
        self.times = None if table.time is None else table.time[start:]
        # parsed piece by piece, as score_block does: as_seconds_array's way of parsing
        # depends on every cell it is given (a whole chunk's could differ)
        self.whens = None if self.times is None else np.full(len(self.times), np.nan)

    def weigh(self, a: int, b: int) -> np.ndarray:
        weights = np.ones(b - a)
        lo, hi = max(a, self.start) - self.start, b - self.start
        if lo >= hi:
            return weights
        result, start = self.result, self.start
        self.F[lo:hi] = self.made[lo + start + self.lag : hi + start + self.lag]
        opened, closed = len(result.opened), len(result.closed)
        if self.whens is not None:
            self.whens[lo:hi] = as_seconds_array(self.times[lo:hi])
        self.detector.score_rows(self.X, self.F, lo, hi, result, self.times, self.whens)
        weights[lo + start - a :] = learn_weights(result.flags[lo:hi] & ckernel.F_FLAGGED)
        if len(result.opened) > opened or len(result.closed) > closed:
            events = [*list(result.opened)[opened:], *list(result.closed)[closed:]]
            for i in sorted(set(events)):
                self._report(i)
        return weights

    def _report(self, i: int) -> None:
        """Row i's alert events on stderr, as _report_event writes a record's."""
        row, table = self.start + i, self.table
        where = f"line {table.lines[row]}" if table.time is None else table.time[row]
        record = {"event_opened": self.result.opened.get(i),
                  "event_closed": self.result.closed.get(i)}  # fmt: skip
        _report_event(record, where)


class _Verdicts:
    """A chunk's verdicts for the writers: rows before `start` had no forecast due, the
    rest are `block`'s (a BlockResult), or every row's record fields (`records`)."""

    def __init__(self, n: int, start: int, block=None, records: Optional[list[dict]] = None):
        self.n, self.start, self.block, self._records = n, start, block, records

    @classmethod
    def of_records(cls, records: list[dict]) -> _Verdicts:
        return cls(len(records), 0, records=records)

    def records(self) -> list[dict]:
        """Each row's record fields, as Monitor writes them (JSON lines)."""
        if self._records is None:
            due = self.block.records() if self.block is not None else []
            self._records = [{"score": None, "anomaly": 0, "onset": 0} for _ in range(self.start)]
            self._records += due
        return self._records

    def anomalies(self) -> int:
        if self.block is None:
            return sum(int(r.get("anomaly") or 0) for r in self.records())
        return int(np.count_nonzero(self.block.flags & ckernel.F_FLAGGED))

    def scores(self) -> np.ndarray:
        """(n, 1) float32, NaN (an empty cell) where there is no score."""
        if self.block is None:
            scores = [np.nan if r.get("score") is None else r["score"] for r in self.records()]
            return np.asarray(scores, dtype=np.float64).astype(np.float32)[:, None]
        scores = np.full(self.n, np.nan)
        scores[self.start :] = self.block.score
        return scores.astype(np.float32)[:, None]

    def cells(self):
        """The anomaly and onset cells: (n, 2) ints, or (records) a tuple per row."""
        if self.block is None:
            return [(_int_cell(r.get("anomaly")), _int_cell(r.get("onset"))) for r in self.records()]
        flags = np.zeros(self.n, dtype=np.int32)
        flags[self.start :] = self.block.flags
        return np.stack([flags & ckernel.F_FLAGGED, (flags & ckernel.F_ONSET) >> 2], axis=1)


def _gaps(table) -> np.ndarray:
    """Output positions of the chunk's skipped rows among its rows in file order."""
    skipped = np.asarray(sorted(table.skipped_rows), dtype=np.int64)
    return np.searchsorted(np.asarray(table.lines, dtype=np.int64), skipped) + np.arange(
        len(skipped)
    )


def _csv_leading(table) -> Optional[tuple[Optional[list[str]], bool]]:
    """(leading cells, whether they are CSV text) of a chunk's kept rows for
    _write_csv_block: the time cells, or a row index's and the time column's joined
    ("i,t"); None where csv would quote one of those (then records go one by one)."""
    if table.index is None:
        return table.time, False
    if not json_blocks[0]:
        return None
    cells = [table.index] + ([table.time] if table.time is not None else [])
    if any(_needs_quotes(cell) for column in cells for cell in column):
        return None
    return [",".join(row) for row in zip(*cells)], True


def _write_csv_block(out: RecordWriter, table, Y: np.ndarray, verdicts, leading, text) -> None:
    floats = [table.values, Y]
    trailing = None
    if verdicts is not None:
        floats.append(verdicts.scores())
        trailing = verdicts.cells()
    floats = np.hstack(floats)
    if not table.skipped_leading:
        out.write_block(
            floats, leading=leading, trailing=trailing, gaps=_gaps(table), leading_text=text
        )
        return
    # Skipped rows keep their time cell (rare: the block is cut at each of them)
    skipped = sorted(table.skipped_rows)
    kept_before = np.searchsorted(np.asarray(table.lines, dtype=np.int64), skipped).tolist()
    start = 0
    for stop, line in zip(kept_before, skipped):
        _write_rows(out, floats, leading, trailing, start, stop, text)
        out.write(_skipped_record(table, line))
        start = stop
    _write_rows(out, floats, leading, trailing, start, len(floats), text)


def _write_rows(out, floats, leading, trailing, start: int, stop: int, text=False) -> None:
    if stop > start:
        out.write_block(
            floats[start:stop], leading=None if leading is None else leading[start:stop],
            trailing=None if trailing is None else trailing[start:stop], leading_text=text,
        )  # fmt: skip


def _int_cell(v) -> Optional[int]:
    return None if v is None else int(v)


def _write_records(out: RecordWriter, table, Y: np.ndarray, verdicts, channels) -> None:
    """JSON lines: one record per row, skipped rows in their place."""
    if out.fmt == "jsonl" and _write_json_block(out, table, Y, verdicts, channels):
        return
    skipped = sorted(table.skipped_rows)
    rows = sorted([(line, i) for i, line in enumerate(table.lines)] + [(n, -1) for n in skipped])
    for line, i in rows:
        if i < 0:
            out.write(_skipped_record(table, line))
            continue
        record = _leading_cells(table, i)
        record.update({c: float(v) for c, v in zip(channels, table.values[i])})
        record["forecast"] = dict(zip(channels, Y[i].tolist()))
        if verdicts is not None:
            record.update(verdicts[i])
        out.write(record)


def _write_json_block(out: RecordWriter, table, Y: np.ndarray, verdicts, channels) -> bool:
    """_write_records' lines in one RecordWriter.write_json_block call (the same bytes);
    False, nothing written, where a key would repeat (a channel named like the time
    column, "forecast" or a detector field: write() keeps such a key's first place)."""
    if not json_blocks[0]:
        return False
    lead = _leading_columns(table)
    fixed = [*lead, *channels, "forecast"]
    if len(set(fixed)) < len(fixed):
        return False
    heads = tails = None
    if lead:
        names = [json.dumps(c) for c in lead]
        cells = [table.index] if table.index_column is not None else []
        cells += [table.time] if table.time_column is not None else []
        heads = ["".join(f"{k}:{json.dumps(v)}," for k, v in zip(names, row)) for row in zip(*cells)]
    if verdicts is not None:
        taken = set(fixed)
        if any(not taken.isdisjoint(r) for r in verdicts):
            return False
        tails = [
            "," + json.dumps(_jsonable(r), separators=(",", ":"))[1:-1] if r else ""
            for r in verdicts
        ]
    skipped = sorted(table.skipped_rows)
    inserts = [(int(k), _skipped_record(table, n)) for k, n in zip(_gaps(table), skipped)]
    out.write_json_block(np.hstack([table.values, Y]), heads, tails, inserts)
    return True


json_blocks = [True]  # False: JSON lines (and CSV with a row index) record by record (the reference)


def _run_graph(model: Model, first, tables, out_path: Optional[str], decider=None) -> RunSummary:
    """Any other graph: every named output of each step, as flat columns; a classifier's
    decision layer (`decider`, runtime/decision.py) adds the decided class (`event`) and
    reports each event on stderr as it ends."""
    from edgernn.runtime.columns import OutputColumns

    leading = _leading_columns(first)
    columns = OutputColumns(model.meta, taken=leading + model.channels)
    names = columns.names + (["event"] if decider is not None else [])
    summary = RunSummary(noun="steps")
    stream = model.stream()
    start = time.perf_counter()
    with RecordWriter(out_path, model.channels, leading=leading, values=names) as out:
        for table in tables:
            _count(summary, table)
            skipped = sorted(table.skipped_rows)
            order = sorted(
                [(line, i) for i, line in enumerate(table.lines)] + [(n, -1) for n in skipped]
            )
            for line, i in order:
                if i < 0:
                    out.write(_skipped_record(table, line))
                    continue
                stream.step(table.values[i])
                record = _leading_cells(table, i)
                record.update({c: float(v) for c, v in zip(model.channels, table.values[i])})
                record.update(columns.values(stream.outputs))
                if decider is not None:
                    when = table.time[i] if table.time_column is not None else None
                    decision = decider.step(stream.outputs[model.meta.output], when)
                    record["event"] = decision.label
                    _report_class_event(decision.event)
                out.write(record)
    if decider is not None:
        _report_class_event(decider.flush())
    summary.seconds = time.perf_counter() - start
    return summary


def _report_class_event(event) -> None:
    """A classifier's event, on stderr as it ends (start/end: time values or row indices)."""
    if event is not None:
        print(
            f"edgernn: event {event.label} from {event.start} to {event.end}: "
            f"{event.samples} samples, peak p {event.peak:.2f}",
            file=sys.stderr,
        )


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
