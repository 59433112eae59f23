"""Reading sensor CSVs: header required, `,` `;` or tab separated.

A time/date column (named time/timestamp/datetime/date, or non-numeric in the first
data row) is skipped. Every other selected cell must be a finite number within float32
range; a bad one is an error naming the file, the row (1-based line number in the file)
and the column, or, with on_bad="skip", the row is skipped and counted.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edgernn.errors import DataError

TIME_NAMES = {"time", "timestamp", "datetime", "date", "t", "ts"}
# A non-numeric first cell counts as a time column only when it looks like a date or
# clock time (2020-03-09 10:14:33, 10:14:33.5, 09/03/2020); other text is an error.
TIME_LIKE = re.compile(r"^\d{1,4}[-/.:]\d{1,2}([-/.:T ]\d|$)")
DELIMITERS = (",", ";", "\t")


@dataclass
class Table:
    """Numeric columns of one CSV file."""

    path: str
    channels: list[str]
    values: np.ndarray  # (T, C) float32
    time: list[str] | None = None  # the skipped time column, if any, row-aligned
    time_column: str | None = None  # its name
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. label columns
    skipped_rows: list[int] = field(default_factory=list)  # line numbers skipped as bad
    lines: list[int] = field(default_factory=list)  # line number of every kept row

    def __len__(self) -> int:
        return len(self.values)


def sniff_delimiter(header_line: str) -> str:
    counts = {d: header_line.count(d) for d in DELIMITERS}
    best = max(counts, key=counts.get)
    return best if counts[best] > 0 else ","


# Values are stored as float32: anything larger in magnitude would turn into inf.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _to_float(cell: str) -> float:
    """The cell's value; ValueError saying why when it is not a usable float32."""
    try:
        v = float(cell)
    except ValueError:
        v = math.nan
    if not math.isfinite(v):
        raise ValueError("is not a finite number")
    if abs(v) > FLOAT32_MAX:
        raise ValueError("is out of float32 range")
    return v


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def read_csv(
    path: str | os.PathLike,
    channels: Sequence[str] | None = None,
    ignore: Sequence[str] = (),
    keep: Sequence[str] = (),
    on_bad: str = "error",
) -> Table:
    """Read the numeric channels of a CSV file.

    channels: the columns to use, in this order (default: every numeric column).
    ignore: columns to drop. keep: columns (e.g. labels) returned in `Table.extra`
    and never used as channels.
    """
    path = os.fspath(path)
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror})") from e
    with fh:
        try:
            first = fh.readline()
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not a text CSV file") from e
        if not first.strip():
            raise DataError(f"{path}: empty file (a header row is required)")
        delim = sniff_delimiter(first)
        header = [h.strip() for h in next(csv.reader([first], delimiter=delim))]
        if len(set(header)) != len(header):
            raise DataError(f"{path}: duplicate column names in header {header}")
        if all(_is_number(h) for h in header if h):
            raise DataError(f"{path}: line 1 looks like data, a header row with names is required")
        try:
            rows = list(csv.reader(fh, delimiter=delim))
        except (csv.Error, UnicodeDecodeError) as e:
            raise DataError(f"{path}: unreadable CSV ({e})") from e

    rows_with_line = [(i + 2, r) for i, r in enumerate(rows) if any(c.strip() for c in r)]
    if not rows_with_line:
        raise DataError(f"{path}: no data rows after the header")
    time_col = _find_time_column(header, rows_with_line[0][1])
    for name in list(ignore) + list(keep):
        if name not in header:
            raise DataError(f"{path}: no column {name!r} (columns: {', '.join(header)})")

    if channels is None:
        excluded = set(ignore) | set(keep) | ({header[time_col]} if time_col is not None else set())
        channels = [h for h in header if h not in excluded]
    else:
        channels = list(channels)
        missing = [c for c in channels if c not in header]
        if missing:
            raise DataError(
                f"{path}: no column(s) {', '.join(map(repr, missing))} "
                f"(columns: {', '.join(header)})"
            )
    if not channels:
        raise DataError(f"{path}: no numeric channels left to use")
    col_idx = [header.index(c) for c in channels]
    keep_idx = [header.index(k) for k in keep]

    values, extras, times, skipped, lines = [], [], [], [], []
    for line_no, row in rows_with_line:
        try:
            if len(row) != len(header):
                raise DataError(
                    f"{path}: row {line_no} has {len(row)} cells, the header has {len(header)}"
                )
            values.append([_cell(path, line_no, header, row, j) for j in col_idx])
            extras.append([_cell(path, line_no, header, row, j) for j in keep_idx])
            if time_col is not None:
                times.append(row[time_col].strip())
            lines.append(line_no)
        except DataError:
            if on_bad == "error":
                raise
            if len(values) > len(extras):
                values.pop()
            skipped.append(line_no)
    if not values:
        raise DataError(f"{path}: no valid data rows")
    arr = np.asarray(values, dtype=np.float32).reshape(len(values), len(channels))
    ex = np.asarray(extras, dtype=np.float64).reshape(len(values), len(keep))
    return Table(
        path=path,
        channels=channels,
        values=arr,
        time=times if time_col is not None else None,
        time_column=header[time_col] if time_col is not None else None,
        extra={k: ex[:, i] for i, k in enumerate(keep)},
        skipped_rows=skipped,
        lines=lines,
    )


def _cell(path: str, line_no: int, header: list[str], row: list[str], j: int) -> float:
    cell = row[j].strip()
    if cell == "":
        raise DataError(f"{path}: row {line_no}, column {header[j]!r}: missing value")
    try:
        return _to_float(cell)
    except ValueError as e:
        raise DataError(f"{path}: row {line_no}, column {header[j]!r}: {cell[:20]!r} {e}") from None


def _find_time_column(header: list[str], first_row: list[str]) -> int | None:
    for j, name in enumerate(header):
        if name.strip().lower() in TIME_NAMES:
            return j
    for j, cell in enumerate(first_row[: len(header)]):
        cell = cell.strip()
        if not _is_number(cell) and TIME_LIKE.match(cell):
            return j
    return None


def read_many(
    paths: Sequence[str | os.PathLike],
    channels: Sequence[str] | None = None,
    ignore: Sequence[str] = (),
    keep: Sequence[str] = (),
) -> list[Table]:
    """Read several files as independent sequences; all must share the same channels."""
    tables: list[Table] = []
    for p in paths:
        t = read_csv(p, channels=channels, ignore=ignore, keep=keep)
        if tables and t.channels != tables[0].channels:
            raise DataError(
                f"{t.path}: channels {t.channels} differ from {tables[0].path}'s "
                f"{tables[0].channels}; pick common ones with --channels"
            )
        channels = t.channels
        tables.append(t)
    return tables
