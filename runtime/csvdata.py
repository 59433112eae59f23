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

    @property
    def bad_rows(self) -> dict[int, str]:
        """Rows skipped as bad (line number -> why, in file order); blank lines are left
        out: they hold no sample, so they are no gap in the stream."""
        blank = set(self.blank_rows)
        return {n: why for n, why in sorted(self.skip_reasons.items()) if n not in blank}


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
        rd = _Reader(path, header, delim, decimal, channels, ignore, keep, on_bad, chunk_rows)
        source, line_no = _Source(fh), 2
        while True:
            raw = source.block()
            if raw is None:  # no line end within a block: this line is read on its own
                yield from rd.line(*next(_Lines(source, line_no)))
                line_no += 1
                continue
            if not raw:
                break
            yield from (rd.block if fast_blocks[0] else rd.lines)(line_no, raw)
            line_no += raw.count(b"\n") + (not raw.endswith(b"\n"))
        if rd.layout is None:
            if rd.waiting:
                raise DataError(f"{path}: no valid data rows")
            raise DataError(f"{path}: no data rows after the header")
        chunk = rd.chunk
        if len(chunk) or chunk.skipped or chunk.blanks or not chunk.yielded_any:
            yield chunk.table()


# Whole blocks of lines are parsed at once where they are plain text (ASCII, no quote,
# no control character but tabs and CRLF line ends): each line split on the delimiter,
# each number column converted by one np.array call (Python's float() of every cell, in
# C), ranges checked vectorised. A line the block parse does not vouch for (another cell
# count, a cell float() refuses or that is not a finite float32, ...) goes through
# _Reader.line, the per-line reader, which is also the reference: the same rows, values,
# skip reasons, errors and chunk boundaries either way (tests/test_csv_speedpaths.py).
BLOCK_BYTES = 1 << 15  # read ahead (at most a quarter of MAX_LINE_BYTES)
_PLAIN_LINE = bytes(range(0x20, 0x7F)).replace(b'"', b"") + b"\t"
_PLAIN_TEXT = _PLAIN_LINE + b"\n"


def _plain(line: str) -> bool:
    """The line is split as csv splits it, no quote or control character in it."""
    return line.isascii() and not line.encode().translate(None, _PLAIN_LINE)


SLOW_PIECE = 16  # a block with a bad cell is halved until its pieces are this short
fast_blocks = [True]  # False: every line through the reference reader (tests, benchmarks)


class _Source:
    """The file after the header: blocks of whole lines, or readline() (for _Lines) where
    no line end comes within a block's size."""

    def __init__(self, fh):
        self.fh, self.buf, self.eof = fh, b"", False
        # a block is under twice this: every line in it is shorter than MAX_LINE_BYTES
        self.size = min(BLOCK_BYTES, MAX_LINE_BYTES // 4)

    def block(self) -> bytes | None:
        """The next whole lines (the last one may lack its newline at the end of the
        file); b"" at the end; None when the next line is too long for a block."""
        if len(self.buf) < self.size and not self.eof:
            more = self.fh.read(self.size)
            self.eof = not more
            self.buf += more
        cut = self.buf.rfind(b"\n")
        if cut < 0 and not self.eof:
            return None if len(self.buf) >= self.size else self.block()
        cut = len(self.buf) - 1 if cut < 0 else cut
        raw, self.buf = self.buf[: cut + 1], self.buf[cut + 1 :]
        return raw

    def readline(self, limit: int) -> bytes:
        if not self.buf:
            return self.fh.readline(limit)
        i = self.buf.find(b"\n", 0, limit)
        if i >= 0 or len(self.buf) >= limit:
            cut = i + 1 if i >= 0 else limit
            line, self.buf = self.buf[:cut], self.buf[cut:]
            return line
        line, self.buf = self.buf, b""
        return line + self.fh.readline(limit - len(line))


class _Reader:
    """iter_csv's state: the layout once the first data row is read, the chunk being
    filled; lines come in one at a time (line) or as blocks of whole lines (block)."""

    def __init__(self, path, header, delim, decimal, channels, ignore, keep, on_bad, chunk_rows):
        self.path, self.header, self.delim, self.decimal = path, header, delim, decimal
        self.channels, self.ignore, self.keep = channels, ignore, keep
        self.on_bad, self.chunk_rows = on_bad, chunk_rows
        self.layout: _Layout | None = None
        self.chunk = _Chunk(path)
        self.feed = _OneLine()
        self.reader = csv.reader(self.feed, delimiter=delim)
        self.waiting: list[tuple[int, str]] = []  # bad/blank lines before the first data row

    def line(self, line_no: int, text: str | None, why: str) -> Iterator[Table]:
        """One line (text None: not decodable, `why`), the reference for every row."""
        row = None
        if text is not None:
            row, why = _parse_line(self.reader, self.feed, text)
        if row is not None and not any(c.strip() for c in row):
            # Blank lines carry no data: skipped in both modes, always counted.
            self.chunk.blank(line_no, self.on_bad)
            return
        if row is None:
            if self.on_bad == "error":
                raise DataError(f"{self.path}: row {line_no} {why}")
            if self.layout is None:
                self.waiting.append((line_no, why))
            else:
                self.chunk.skip(line_no, why)
            return
        if self.layout is None:
            self.layout = _layout(
                self.path, self.header, self.delim, row, self.channels, self.ignore, self.keep
            )
            self.layout.decimal = self.decimal
            self.chunk.start(self.layout)
            for n, w in self.waiting:
                self.chunk.skip(n, w)
        self.chunk.add(line_no, row, self.on_bad)
        if len(self.chunk) >= self.chunk_rows:
            yield self.chunk.table()
            self.chunk = _Chunk(self.path, self.layout)

    def _raw_line(self, line_no: int, raw: bytes) -> Iterator[Table]:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return self.line(line_no, None, "is not UTF-8 text")
        return self.line(line_no, text, "")

    def lines(self, first: int, raw: bytes) -> Iterator[Table]:
        """A block's lines one by one through line(), as _Lines would read them."""
        pieces = raw.split(b"\n")
        last = pieces.pop()  # b"" when the block ends with a newline
        for k, piece in enumerate(pieces):
            yield from self._raw_line(first + k, piece + b"\n")
        if last:
            yield from self._raw_line(first + len(pieces), last)

    def block(self, first: int, raw: bytes) -> Iterator[Table]:
        """A block's lines: the plain ones parsed at once, the rest through line()."""
        pos = 0
        while self.layout is None and pos < len(raw):  # the first data row sets the layout
            nl = raw.find(b"\n", pos)
            end = len(raw) if nl < 0 else nl + 1
            yield from self._raw_line(first, raw[pos:end])
            first, pos = first + 1, end
        raw = raw[pos:]
        if not raw:
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield from self.lines(first, raw)
            return
        lines = text.split("\n")
        ended = lines[-1] == ""  # the last line has its newline
        if ended:
            lines.pop()
        lay = self.layout
        assert lay is not None
        cr = b"\r" in raw
        plain = raw.replace(b"\r\n", b"\n") if cr else raw  # csv drops a CR before the LF
        odd = not plain.isascii() or bool(plain.translate(None, _PLAIN_TEXT))
        parsed = _parse_block(lines, lay, odd, cr)
        if parsed is None:
            yield from self.lines(first, raw)
            return
        fast, values, extras, times, index = parsed
        n, done, pos = len(lines), 0, 0
        for k in np.flatnonzero(~fast).tolist() + [n]:
            if k > pos:  # lines pos..k-1, parsed
                take = slice(done, done + k - pos)
                yield from self._add_rows(
                    first + pos, values[take], extras[take],
                    None if times is None else times[take], None if index is None else index[take],
                )  # fmt: skip
                done += k - pos
            if k < n:
                yield from self.line(first + k, lines[k] + ("\n" if ended or k < n - 1 else ""), "")
            pos = k + 1

    def _add_rows(self, first, values, extras, times, index) -> Iterator[Table]:
        at = 0
        while at < len(values):
            take = max(1, min(len(values) - at, self.chunk_rows - len(self.chunk)))
            cut = slice(at, at + take)
            self.chunk.add_rows(
                range(first + at, first + at + take), values[cut], extras[cut],
                None if times is None else times[cut], None if index is None else index[cut],
            )  # fmt: skip
            at += take
            if len(self.chunk) >= self.chunk_rows:
                yield self.chunk.table()
                self.chunk = _Chunk(self.path, self.layout)


def _parse_block(lines: list[str], lay: _Layout, odd: bool, cr: bool):
    """(fast, values, extras, times, index) for a block's lines, `fast` marking the
    lines the parse vouches for and the rest of the tuple theirs, in order (values
    float32, extras float64, times and index lists of stripped cells or None); None when
    there are none. `odd`: some line may hold a quote, a control character or non-ASCII
    text; `cr`: some line ends in CR LF (csv drops the CR)."""
    d, ncols = lay.delimiter, len(lay.header)
    clean = [line[:-1] if line.endswith("\r") else line for line in lines] if cr else lines
    ok = [line.count(d) == ncols - 1 for line in clean]
    if odd:  # quoted cells and such: those lines are read on their own
        ok = [o and _plain(line) for o, line in zip(ok, clean)]
    good_at = np.flatnonzero(ok)
    if not len(good_at):
        return None
    good = clean if len(good_at) == len(clean) else [clean[k] for k in good_at.tolist()]
    cells = d.join(good).split(d)  # every good line has ncols cells
    cols = lay.col_idx + lay.keep_idx
    every = lay.decimal == "." and cols == list(range(ncols))
    got = np.empty((len(good), len(cols)), dtype=np.float64)
    parsed = np.zeros(len(good), dtype=bool)
    pending = [(0, len(good))]
    while pending:  # halved where a cell is refused, down to SLOW_PIECE lines
        lo, hi = pending.pop()
        try:
            if every:  # all the columns, in order: one call
                got[lo:hi] = np.array(cells[lo * ncols : hi * ncols], dtype=np.float64).reshape(
                    hi - lo, ncols
                )
            for i, j in enumerate(() if every else cols):
                column = cells[lo * ncols + j : hi * ncols : ncols]
                if lay.decimal != ".":
                    column = d.join(column).replace(lay.decimal, ".").split(d)
                got[lo:hi, i] = np.array(column, dtype=np.float64)
            parsed[lo:hi] = True
        except ValueError:
            if hi - lo > SLOW_PIECE:
                mid = (lo + hi) // 2
                pending += [(mid, hi), (lo, mid)]
    with np.errstate(invalid="ignore"):
        vouched = parsed & (np.abs(got) <= FLOAT32_MAX).all(axis=1)  # NaN, inf: slow
    if not vouched.any():
        return None
    fast = np.zeros(len(lines), dtype=bool)
    fast[good_at[vouched]] = True
    got = got[vouched]
    c = len(lay.col_idx)

    def leading(j):
        if j is None:
            return None
        column = cells[j::ncols]
        if not vouched.all():
            column = [cell for cell, v in zip(column, vouched.tolist()) if v]
        return [cell.strip() for cell in column]

    return (
        fast,
        got[:, :c].astype(np.float32),
        got[:, c:],
        leading(lay.time_col),
        leading(lay.index_col),
    )


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
        self.pieces: list[tuple[np.ndarray, np.ndarray]] = []  # (values, extras) before them
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

    def add_rows(self, lines, values: np.ndarray, extras: np.ndarray, times, index) -> None:
        """Rows a block parse vouched for: float32 values, float64 extras, the stripped
        time and index cells (None where the layout has none)."""
        self._settle()
        self.pieces.append((values, extras))
        self.lines.extend(lines)
        if times is not None:
            self.times.extend(times)
        if index is not None:
            self.index.extend(index)

    def _settle(self) -> None:
        """The rows add() has kept so far, as arrays after the pieces before them."""
        if self.extras:
            lay = self.layout
            assert lay is not None
            n = len(self.extras)
            values = np.array(self.values, dtype=np.float32).reshape(n, len(lay.channels))
            extras = np.asarray(self.extras, dtype=np.float64).reshape(n, len(lay.keep_idx))
            self.pieces.append((values, extras))
            self.values, self.extras = [], []

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
        self._settle()
        if len(self.pieces) == 1:
            values, ex = self.pieces[0]
        else:
            values = np.concatenate([v for v, _ in self.pieces] or [np.zeros((0, c), np.float32)])
            ex = np.concatenate([e for _, e in self.pieces] or [np.zeros((0, k))]).reshape(n, k)
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
