"""Reading sensor CSVs: header required, `,` `;` or tab separated.

A time/date column (named time/timestamp/datetime/date, or non-numeric in the first
data row) is skipped. So is a row index as pandas writes one (`df.to_csv()`: a first
header cell that is empty or "Unnamed: 0", integers 0, 1, 2, ... below it), with a note
on stderr; `Table.index` keeps its cells. `decimal=","` reads European exports (decimal
comma, `;` or tab between columns). Every other selected cell must be a finite number within float32
range; a bad one is an error naming the file, the row (1-based line number in the file)
and the column, or, with on_bad="skip", the row is skipped and counted. So is a line
that is not a CSV row at all (unterminated quote, invalid UTF-8, a cell over 128 KB,
a line over 4 MB): each is one bad row, and the rest of the file is read. Blank lines
are skipped and counted. `iter_csv` streams a file in chunks of rows (bounded memory);
`read_csv` is all of its chunks in one Table.
"""

from __future__ import annotations

import csv
import math
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgernn.errors import DataError

TIME_NAMES = {"time", "timestamp", "datetime", "date", "t", "ts"}
# A non-numeric first cell counts as a time column only when it looks like a date or
# clock time (2020-03-09 10:14:33, 10:14:33.5, 09/03/2020); other text is an error.
TIME_LIKE = re.compile(r"^\d{1,4}[-/.:]\d{1,2}([-/.:T ]\d|$)")
DELIMITERS = (",", ";", "\t")
# pandas' name for an index column written without a name: "" or "Unnamed: 0"
INDEX_NAME = re.compile(r"^(Unnamed: \d+)?$")
INTEGER = re.compile(r"^[+-]?\d+$")
DECIMAL_COMMA = re.compile(r"^[+-]?\d*,\d+$")
DECIMALS = (".", ",")
# The decimal mark when a reader is given none: the command line's --decimal sets it for
# the whole process (train's cache, evaluate's and quantize's readers alike).
_default_decimal = ["."]


def set_default_decimal(mark: str) -> None:
    if mark not in DECIMALS:
        raise DataError(f"the decimal mark must be '.' or ',', got {mark!r}")
    _default_decimal[0] = mark


def default_decimal() -> str:
    return _default_decimal[0]


def add_decimal_argument(parser) -> None:
    """--decimal for a command that reads CSVs (applied by edgernn.cli.main)."""
    parser.add_argument(
        "--decimal", choices=DECIMALS, default=".", metavar="MARK",
        help="the CSVs' decimal mark: ',' for European exports (decimal comma, columns "
        "separated by ';' or tabs); default %(default)s",
    )  # fmt: skip


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
    skip_reasons: dict[int, str] = field(default_factory=dict)  # line -> why it was skipped
    blank_rows: list[int] = field(default_factory=list)  # blank lines (no data), skipped
    index: list[str] | None = None  # a skipped row-index column (pandas), row-aligned
    index_column: str | None = None  # its header cell ("" or "Unnamed: 0")
    # line -> {column: cell} of the time and index columns of a row skipped as bad, where
    # the line was a CSV row: the output can still say when it was
    skipped_leading: dict[int, dict[str, str]] = field(default_factory=dict)

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


# Rows are parsed one physical line at a time: a quote left open on one line is that
# line's error and never swallows the lines after it (sensor logs have no multi-line
# cells). Each line is decoded on its own, so one invalid byte is one bad row.
MAX_LINE_BYTES = 4 << 20  # longer "lines" are binary junk, not rows
CHUNK_ROWS = 65536


class _OneLine:
    """The csv reader's input: exactly the line handed to it, then nothing (StopIteration
    ends the row instead of reading on into the next line)."""

    def __init__(self):
        self.line: str | None = None

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line, self.line = self.line, None
        if line is None:
            raise StopIteration
        return line


class _Lines:
    """(line number, text or None, why not) for every physical line of a binary file,
    each at most MAX_LINE_BYTES: memory stays bounded whatever the file holds."""

    def __init__(self, fh, first_line_no: int):
        self.fh, self.line_no = fh, first_line_no - 1

    def __iter__(self):
        return self

    def __next__(self) -> tuple[int, str | None, str]:
        raw = self.fh.readline(MAX_LINE_BYTES + 1)
        if not raw:
            raise StopIteration
        self.line_no += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):  # discard the rest of the line
                raw = self.fh.readline(MAX_LINE_BYTES)
            return self.line_no, None, f"is over {MAX_LINE_BYTES >> 20} MB long"
        try:
            return self.line_no, raw.decode("utf-8"), ""
        except UnicodeDecodeError:
            return self.line_no, None, "is not UTF-8 text"


def _parse_line(reader, feed: _OneLine, text: str) -> tuple[list[str] | None, str]:
    """(cells, "") or (None, why the line is not a CSV row)."""
    feed.line = text
    try:
        row = next(reader, [])
    except csv.Error as e:
        feed.line = None
        why = str(e)
        if "field larger than field limit" in why:
            why = f"has a cell over {csv.field_size_limit() // 1024} KB"
        return None, why
    if any("\n" in c or "\r" in c for c in row):
        return None, "has an unterminated quote"
    return row, ""


@dataclass
class _Layout:
    """What the header and the first data row decided, shared by every chunk."""

    header: list[str]
    delimiter: str
    channels: list[str]
    col_idx: list[int]
    keep_idx: list[int]
    time_col: int | None
    index_col: int | None = None
    decimal: str = "."


def iter_csv(
    path: str | os.PathLike,
    channels: Sequence[str] | None = None,
    ignore: Sequence[str] = (),
    keep: Sequence[str] = (),
    on_bad: str = "error",
    chunk_rows: int = CHUNK_ROWS,
    decimal: str | None = None,
) -> Iterator[Table]:
    """read_csv in bounded memory: the same validation, the rows yielded in file order
    as Tables of at most `chunk_rows` kept rows each (skipped rows are reported in the
    chunk they fall in). Every chunk has the same channels and time column."""
    path = os.fspath(path)
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
    decimal = decimal or default_decimal()
    if decimal not in DECIMALS:
        raise DataError(f"the decimal mark must be '.' or ',', got {decimal!r}")
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror})") from e
    with fh:
        header, delim = _read_header(fh, path)
        if decimal == "," and delim == "," and len(header) == 1:
            delim = ";"  # one column: no separator to tell, and the comma is the decimal mark
        if decimal == "," and delim == ",":
            raise DataError(
                f"{path}: decimal comma, but the header is comma-separated; a file with "
                "decimal commas separates its columns with ';' or tabs"
            )
        chunk = _Chunk(path)
        layout: _Layout | None = None
        reader_feed = _OneLine()
        reader = csv.reader(reader_feed, delimiter=delim)
        waiting: list[tuple[int, str]] = []  # bad/blank lines before the first data row
        for line_no, text, why in _Lines(fh, first_line_no=2):
            row = None
            if text is not None:
                row, why = _parse_line(reader, reader_feed, text)
            if row is not None and not any(c.strip() for c in row):
                # Blank lines carry no data: skipped in both modes, always counted.
                chunk.blank(line_no, on_bad)
                continue
            if row is None:
                if on_bad == "error":
                    raise DataError(f"{path}: row {line_no} {why}")
                if layout is None:
                    waiting.append((line_no, why))
                else:
                    chunk.skip(line_no, why)
                continue
            if layout is None:
                layout = _layout(path, header, delim, row, channels, ignore, keep)
                layout.decimal = decimal
                chunk.start(layout)
                for n, w in waiting:
                    chunk.skip(n, w)
            chunk.add(line_no, row, on_bad)
            if len(chunk) >= chunk_rows:
                yield chunk.table()
                chunk = _Chunk(path, layout)
        if layout is None:
            if waiting:
                raise DataError(f"{path}: no valid data rows")
            raise DataError(f"{path}: no data rows after the header")
        if len(chunk) or chunk.skipped or chunk.blanks or not chunk.yielded_any:
            yield chunk.table()


def _read_header(fh, path: str) -> tuple[list[str], str]:
    raw = fh.readline(MAX_LINE_BYTES + 1)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        first = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text CSV file") from e
    if len(raw) > MAX_LINE_BYTES:
        raise DataError(f"{path}: the header line is over {MAX_LINE_BYTES >> 20} MB long")
    if not first.strip():
        raise DataError(f"{path}: empty file (a header row is required)")
    delim = sniff_delimiter(first)
    try:
        header = [h.strip() for h in next(csv.reader([first], delimiter=delim))]
    except csv.Error as e:
        raise DataError(f"{path}: unreadable CSV header ({e})") from e
    if len(set(header)) != len(header):
        raise DataError(f"{path}: duplicate column names in header {header[:20]}")
    if all(_is_number(h) for h in header if h):
        raise DataError(f"{path}: line 1 looks like data, a header row with names is required")
    return header, delim


def _layout(path, header, delim, first_row, channels, ignore, keep) -> _Layout:
    time_col = _find_time_column(header, first_row)
    for name in list(ignore) + list(keep):
        if name not in header:
            raise DataError(f"{path}: no column {name!r} (columns: {', '.join(header)})")
    index_col = _find_index_column(path, header, first_row, time_col, channels, [*ignore, *keep])
    if channels is None:
        skipped = {header[j] for j in (time_col, index_col) if j is not None}
        excluded = set(ignore) | set(keep) | skipped
        channels = [h for h in header if h not in excluded]
        if "" in channels:  # a model would demand a column named ''
            raise DataError(
                f"{path}: column {header.index('') + 1} has no name in the header; "
                "name it (or drop it)"
            )
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
    return _Layout(
        header, delim, channels, [header.index(c) for c in channels],
        [header.index(k) for k in keep], time_col, index_col,
    )  # fmt: skip


def _find_index_column(path, header, first_row, time_col, channels, ignore) -> int | None:
    """The column pandas' to_csv writes for the row index, if any (noted on stderr):
    no name (or "Unnamed: N"), an integer in the first data row, and not asked for."""
    for j, name in enumerate(header):
        if j == time_col or name in (channels or ()) or name in ignore:
            continue
        if INDEX_NAME.match(name) and j < len(first_row) and INTEGER.match(first_row[j].strip()):
            shown = repr(name) if name else "unnamed"
            print(
                f"edgernn: note: {path}: column {j + 1} ({shown}) is a row index "
                "(0, 1, 2, ...): skipped, not a channel",
                file=sys.stderr,
            )
            return j
    return None


class _Chunk:
    """Rows of one chunk as they are validated: float32 values, never Python lists."""

    def __init__(self, path: str, layout: _Layout | None = None):
        self.path = path
        self.values: list[float] = []  # the kept rows' values, flat (float32 in table())
        self.extras: list[list[float]] = []
        self.times: list[str] = []
        self.index: list[str] = []
        self.lines: list[int] = []
        self.skipped: list[int] = []
        self.reasons: dict[int, str] = {}
        self.leading: dict[int, dict[str, str]] = {}
        self.blanks: list[int] = []
        self.yielded_any = layout is not None
        self.layout = layout

    def __len__(self) -> int:
        return len(self.lines)

    def start(self, layout: _Layout) -> None:
        self.layout = layout

    def skip(self, line_no: int, why: str) -> None:
        self.skipped.append(line_no)
        self.reasons[line_no] = why

    def blank(self, line_no: int, on_bad: str) -> None:
        self.blanks.append(line_no)
        if on_bad == "skip":  # reported with the skipped rows: one output row per input row
            self.skip(line_no, "is blank")

    def add(self, line_no: int, row: list[str], on_bad: str) -> None:
        lay = self.layout
        assert lay is not None
        try:
            if len(row) != len(lay.header):
                raise DataError(
                    f"{self.path}: row {line_no} has {len(row)} cells, the header has "
                    f"{len(lay.header)}"
                )
            if lay.decimal != ".":
                row = _with_decimal_point(row, lay.col_idx + lay.keep_idx, lay.decimal)
            values, extras = _fast_floats(row, lay.col_idx), _fast_floats(row, lay.keep_idx)
            if values is None or extras is None:  # the slow path says which cell and why
                values = [_cell(self.path, line_no, lay.header, row, j) for j in lay.col_idx]
                extras = [_cell(self.path, line_no, lay.header, row, j) for j in lay.keep_idx]
        except DataError as e:
            if on_bad == "error":
                raise
            self.skip(line_no, str(e).split(": ", 1)[-1])
            self._keep_leading(line_no, row)
            return
        self.values.extend(values)
        self.extras.append(extras)
        if lay.time_col is not None:
            self.times.append(row[lay.time_col].strip())
        if lay.index_col is not None:
            self.index.append(row[lay.index_col].strip())
        self.lines.append(line_no)

    def _keep_leading(self, line_no: int, row: list[str]) -> None:
        lay = self.layout
        assert lay is not None
        cells = {lay.header[j]: row[j].strip() for j in (lay.index_col, lay.time_col)
                 if j is not None and j < len(row)}  # fmt: skip
        if cells:
            self.leading[line_no] = cells

    def table(self) -> Table:
        lay = self.layout
        assert lay is not None
        n, c, k = len(self.lines), len(lay.channels), len(lay.keep_idx)
        values = np.array(self.values, dtype=np.float32)
        ex = np.asarray(self.extras, dtype=np.float64).reshape(n, k)
        keep = [lay.header[j] for j in lay.keep_idx]
        self.yielded_any = True
        return Table(
            path=self.path,
            channels=list(lay.channels),
            values=values.reshape(n, c),
            time=self.times if lay.time_col is not None else None,
            time_column=lay.header[lay.time_col] if lay.time_col is not None else None,
            extra={name: ex[:, i] for i, name in enumerate(keep)},
            skipped_rows=self.skipped,
            lines=self.lines,
            skip_reasons=self.reasons,
            blank_rows=self.blanks,
            index=self.index if lay.index_col is not None else None,
            index_column=lay.header[lay.index_col] if lay.index_col is not None else None,
            skipped_leading=self.leading,
        )


def _with_decimal_point(row: list[str], idx: list[int], decimal: str) -> list[str]:
    """The row with the numeric cells' decimal mark turned into a point."""
    row = list(row)
    for j in idx:
        row[j] = row[j].replace(decimal, ".")
    return row


def read_csv(
    path: str | os.PathLike,
    channels: Sequence[str] | None = None,
    ignore: Sequence[str] = (),
    keep: Sequence[str] = (),
    on_bad: str = "error",
    decimal: str | None = None,
) -> Table:
    """Read the numeric channels of a CSV file.

    channels: the columns to use, in this order (default: every numeric column).
    ignore: columns to drop. keep: columns (e.g. labels) returned in `Table.extra`
    and never used as channels. on_bad="skip": rows that are not valid (bad cells, wrong
    cell count, unterminated quote, invalid UTF-8, a cell over 128 KB) are skipped and
    listed in `skipped_rows` with the reason in `skip_reasons`; blank lines are always
    skipped and listed in `blank_rows` (and, when skipping, in `skipped_rows` too).
    """
    chunks = list(iter_csv(path, channels, ignore, keep, on_bad, decimal=decimal))
    first = chunks[0]
    table = Table(
        path=first.path,
        channels=first.channels,
        values=np.concatenate([t.values for t in chunks]),
        time=[v for t in chunks for v in t.time] if first.time is not None else None,
        time_column=first.time_column,
        extra={k: np.concatenate([t.extra[k] for t in chunks]) for k in first.extra},
        skipped_rows=[n for t in chunks for n in t.skipped_rows],
        lines=[n for t in chunks for n in t.lines],
        skip_reasons={n: w for t in chunks for n, w in t.skip_reasons.items()},
        blank_rows=[n for t in chunks for n in t.blank_rows],
        index=[v for t in chunks for v in t.index] if first.index is not None else None,
        index_column=first.index_column,
        skipped_leading={n: c for t in chunks for n, c in t.skipped_leading.items()},
    )
    if not len(table):
        raise DataError(f"{table.path}: no valid data rows")
    return table


def _fast_floats(row: list[str], idx: list[int]) -> list[float] | None:
    """The cells as floats when every one is a finite float32 number, else None."""
    try:
        values = [float(row[j]) for j in idx]
    except ValueError:
        return None
    # NaN fails every comparison, inf the range: both take the slow path
    return values if all(-FLOAT32_MAX <= v <= FLOAT32_MAX for v in values) else None


def _cell(path: str, line_no: int, header: list[str], row: list[str], j: int) -> float:
    cell = row[j].strip()
    if cell == "":
        raise DataError(f"{path}: row {line_no}, column {header[j]!r}: missing value")
    try:
        return _to_float(cell)
    except ValueError as e:
        comma = DECIMAL_COMMA.match(cell)
        hint = " (a decimal comma? read the file with --decimal ,)" if comma else ""
        raise DataError(
            f"{path}: row {line_no}, column {header[j]!r}: {cell[:20]!r} {e}{hint}"
        ) from None


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
    decimal: str | None = None,
) -> list[Table]:
    """Read several files as independent sequences; all must share the same channels."""
    tables: list[Table] = []
    for p in paths:
        t = read_csv(p, channels=channels, ignore=ignore, keep=keep, decimal=decimal)
        if tables and t.channels != tables[0].channels:
            raise DataError(
                f"{t.path}: channels {t.channels} differ from {tables[0].path}'s "
                f"{tables[0].channels}; pick common ones with --channels"
            )
        channels = t.channels
        tables.append(t)
    return tables
