"""Writing per-sample records as CSV or JSON lines (to a file or stdout).

A record is a dict: optional leading fields (time, seq, row), the input values by
channel name, "forecast" (channel -> value) and optional trailing fields (score,
anomaly, ...). JSON lines keep "forecast" nested; CSV flattens it into
`<channel>_forecast` columns. Floats are written as the shortest decimal that reads
back as the same float32 (the runtime computes in float32): exact, and no longer.
"""

from __future__ import annotations

import csv
import functools
import itertools
import json
import math
import operator
import os
import sys
from collections.abc import Sequence
from typing import IO, Any, NoReturn, Optional

import numpy as np

from edgernn.errors import EdgernnError
from edgernn.runtime.filelocks import check_csv_header, open_output

FORMATS = ("csv", "jsonl")


def format_for(path: Optional[str], default: str = "csv") -> str:
    if path is None or path == "-":
        return default
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        return "csv"
    if ext in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise EdgernnError(f"{path}: output must end in .csv or .jsonl")


def _num(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, (bool, int, str)):
        return v
    f = float(v)
    return float(str(np.float32(f))) if math.isfinite(f) else None


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "tolist") and getattr(v, "ndim", 0) > 0:
        return [_jsonable(x) for x in v.tolist()]
    return _num(v.item() if hasattr(v, "item") else v)


_POW10 = 10.0 ** np.arange(23)  # exact in float64


def _exponent_tables() -> tuple[np.ndarray, ...]:
    """Per float32 exponent field e: the scaling 10**k0 that leaves 9 or 10 significant
    digits above the point (as a multiplier and a divisor, one of them 1.0, both exact),
    half an ulp in those units, whether every grid 10**(k0 + j), j <= 10, is exact, k0."""
    e = np.arange(256)
    k0 = np.floor((e - 127) * np.log10(2.0)).astype(np.int64) - 8  # <= floor(log10 |v|) - 8
    usable = (k0 >= -22) & (k0 <= 12) & (e > 0) & (e < 255)
    k0 = np.where(usable, k0, 0)
    mul = np.where(k0 < 0, _POW10[np.abs(k0)], 1.0)
    div = np.where(k0 < 0, 1.0, _POW10[np.abs(k0)])
    half = np.ldexp(1.0, e - 151) * mul / div
    return mul, div, half, usable, k0


_MUL, _DIV, _HALF, _USABLE, _K0 = _exponent_tables()
_SURE = 1e-5  # relative margin within which float64 does not decide a comparison for sure


def _shortest(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sure, digits, expo) for a flat float32 array: where `sure`, |v|'s shortest
    decimal is digits * 10**_K0[expo] (digits a whole float64); see float32_decimals."""
    bits = v.view(np.uint32)
    expo = (bits >> 23) & 0xFF
    with np.errstate(all="ignore"):  # signalling NaNs, inf: left to the scalar formula
        s = np.abs(v.astype(np.float64)) * _MUL[expo] / _DIV[expo]  # one is 1.0: one rounding
        half = _HALF[expo]
        sure = _USABLE[expo] & ((bits & 0x7FFFFF) != 0)
        digits = np.zeros_like(s)  # |v|'s shortest decimal, in units of 10**k0
        found = np.zeros(s.shape, dtype=bool)
        live = np.flatnonzero(sure)
        for j in range(11):
            p = _POW10[j]
            sl, hl = s[live], half[live]
            scaled = sl / p
            point = np.rint(scaled) * p
            dist = np.abs(point - sl)
            sure[live[np.abs(dist - hl) < _SURE * hl]] = False
            ok = dist < hl
            live = live[ok]
            if not live.size:
                break
            digits[live] = point[ok]
            found[live] = True
            near_tie = np.abs(scaled[ok] - np.floor(scaled[ok]) - 0.5) < _SURE
            sure[live[near_tie]] = False  # which grid point is nearer: not sure
    return sure & found, digits, expo


def _shortest_bisected(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sure, m, q): where `sure`, |v|'s shortest decimal is m * 10**q, m a whole float64
    with no trailing zero. _shortest's answer by bisection over the grids, on whole
    arrays: grid j = 0 is always within v's half-ulp and grid 10 never is, and a grid
    within it makes every finer one so, so four halvings find the coarsest j that is. It
    is taken where both j and j + 1 are decided beyond doubt and j's nearest point is no
    near tie (whatever the halvings decided on the way; then m, the point in units of
    10**j, ends in no 0, else grid j + 1 would hold it), else left to the scalar formula
    as _shortest leaves it."""
    bits = v.view(np.uint32)
    expo = (bits >> 23) & 0xFF
    with np.errstate(all="ignore"):
        s = np.abs(v.astype(np.float64)) * _MUL[expo] / _DIV[expo]
        half = _HALF[expo]
        lo = np.zeros(v.shape, dtype=np.intp)  # within half an ulp
        hi = np.full(v.shape, 10, dtype=np.intp)  # not
        for _ in range(4):  # 10 -> 5 -> 3 -> 2 -> 1 grids left
            mid = (lo + hi) >> 1
            p = _POW10[mid]
            ok = np.abs(np.rint(s / p) * p - s) < half
            lo = np.maximum(lo, mid * ok)  # mid where ok (mid > lo), else lo
            hi = np.minimum(hi, mid + 10 * ok)  # mid where not ok (mid < hi), else hi
        p = _POW10[lo]
        scaled = s / p
        m = np.rint(scaled)
        dist = np.abs(m * p - s)
        p = _POW10[lo + 1]
        dist_up = np.abs(np.rint(s / p) * p - s)
        margin = _SURE * half
        sure = (
            _USABLE[expo]
            & ((bits & 0x7FFFFF) != 0)
            & (dist < half - margin)
            & (dist_up > half + margin)
            & (np.abs(scaled - np.floor(scaled) - 0.5) >= _SURE)
            & (np.fmod(m, 10.0) != 0)
        )
    return sure, m, _K0[expo] + lo


def float32_decimals(values) -> np.ndarray:
    """float(str(np.float32(v))) for every value, vectorised: the float64 nearest the
    shortest decimal that reads back as the same float32 (NaN where v is not finite).

    s = |v| scaled to 9 or 10 digits above the point; the shortest digits lie on the
    coarsest grid 10**j whose point nearest s is within v's half-ulp (then so is every
    finer grid's, so j counts up until one fails; numpy's Dragon4 also takes the nearest
    point). Exact where v's rounding interval is symmetric and float64 decides every
    comparison beyond doubt; the rest (powers of two, subnormals, huge or tiny values,
    near ties: a few in 100,000) go through numpy's scalar str, so every value equals
    the scalar formula's."""
    v = np.ascontiguousarray(values, dtype=np.float32).ravel()
    sure, digits, expo = _shortest(v)
    with np.errstate(all="ignore"):
        out = v.astype(np.float64)  # zeros stay as they are (-0.0 too)
        out = np.where(sure, np.copysign(digits * _DIV[expo] / _MUL[expo], out), out)
    for i in np.flatnonzero(~sure & (out != 0)).tolist():
        x = v[i]
        out[i] = float(str(x)) if np.isfinite(x) else np.nan
    return out.reshape(np.shape(values))


fast_format = [True]  # False: write_block formats through Python's repr (the reference)
FORMAT_VALUES = 8192  # values formatted at once by float32_repr_lines


def _repr_digits(text: str) -> tuple[int, int]:
    """(m, q) with |float(text)| == m * 10**q and m ending in no 0 (or 0), for a repr
    such as '-1.5e-07' or '120.0'."""
    mantissa, _, exponent = text.lstrip("-").partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).rstrip("0")
    q = int(exponent or 0) - len(frac) + len(whole + frac) - len(digits)
    return int(digits or 0), q if digits else 0


# "0000" .. "9999" as four ASCII bytes each, in memory order whatever the byte order
_QUADS = np.frombuffer(b"".join(b"%04d" % i for i in range(10000)), dtype=np.uint32)


def _digit_block(x: np.ndarray, width: int) -> np.ndarray:
    """The last `width` decimal digits of whole float64s 0 <= x < 10**16, as ASCII
    (len(x), width), most significant first: four digits at a time from _QUADS
    (float64 arithmetic below 2**53, where x / 10**4 is one rounding off the exact
    quotient, far less than its distance to the next integer; int64 above)."""
    limbs = -(-width // 4)
    parts = np.empty((len(x), limbs), dtype=np.uint32)
    if len(x) and x.max() >= 2.0**53:
        rest = x.astype(np.int64)
        for k in range(limbs):
            rest, parts[:, limbs - 1 - k] = np.divmod(rest, 10_000)
        parts[:] = _QUADS[parts]
    else:
        rest = x
        for k in range(limbs):
            above = np.floor(rest / 1e4)
            parts[:, limbs - 1 - k] = _QUADS[(rest - above * 1e4).astype(np.intp)]
            rest = above
    return parts.view(np.uint8).reshape(len(x), 4 * limbs)[:, 4 * limbs - width :]


c_format = [True]  # False: float32_repr_lines in numpy only (the reference of the C one)
_USABLE_U8 = _USABLE.astype(np.uint8)
VALUE_BYTES = 40  # the longest text of a value and its separator (32 and 1)


def float32_repr_lines(floats: np.ndarray, suffix: Optional[np.ndarray] = None) -> bytes:
    """The rows of a 2-D float32 array as CSV lines (see _repr_lines_numpy), through the
    compiled formatter where it loads (the same bytes: the same float64 operations and
    layout; the probe checks it on load), else numpy. suffix: (rows, k >= 1) uint8,
    ASCII written after each row's last value, before its "\n"."""
    floats = np.asarray(floats, dtype=np.float32)
    lib = _format_kernel() if c_format[0] and floats.ndim == 2 else None
    if lib is None:
        return _repr_lines_numpy(floats, suffix)
    return _repr_lines_c(lib, floats, suffix)


def _repr_lines_c(lib, floats: np.ndarray, suffix: Optional[np.ndarray]) -> bytes:
    """float32_repr_lines in kernel.c: _shortest_bisected's pass, the values it is not
    sure of through the scalar formula here, then the text."""
    rows, cols = floats.shape
    v = np.ascontiguousarray(floats).ravel()
    m, q, unsure = np.empty(v.size), np.empty(v.size, dtype=np.int64), np.empty(v.size, dtype=np.int64)
    k = lib.edgernn_shortest(
        v.ctypes.data, v.size, _MUL.ctypes.data, _DIV.ctypes.data, _HALF.ctypes.data,
        _USABLE_U8.ctypes.data, _K0.ctypes.data, _POW10.ctypes.data, _SURE, m.ctypes.data,
        q.ctypes.data, unsure.ctypes.data,
    )  # fmt: skip
    for i in unsure[:k].tolist():
        m[i], q[i] = _repr_digits(repr(float(str(v[i]))))
    width = 0
    if suffix is not None:
        suffix = np.ascontiguousarray(suffix, dtype=np.uint8)
        width = suffix.shape[1]
    out = np.empty(rows * (cols * VALUE_BYTES + width + 1), dtype=np.uint8)
    n = lib.edgernn_repr_lines(
        v.ctypes.data, m.ctypes.data, q.ctypes.data, rows, cols,
        None if suffix is None else suffix.ctypes.data, width, _POW10.ctypes.data,
        out.ctypes.data,
    )  # fmt: skip
    return out[:n].tobytes()


@functools.lru_cache(maxsize=1)
def _format_kernel():
    """The compiled formatter (in the detector kernel's library: built and cached once
    per machine), or None where it does not load or its probe fails: numpy formats."""
    from edgernn.runtime.detector import ckernel

    try:
        lib = ckernel.load_library()
    except ckernel.CStepUnavailable:
        return None
    if ckernel.probe_known(lib, "format"):
        return lib
    if not _format_probe(lib):
        return None
    ckernel.probe_passed(lib, "format")
    return lib


def _format_probe(lib) -> bool:
    """The C text equals numpy's on values near every edge (notation, powers of two,
    subnormals, signs, non-finite) and on random ones, with a suffix."""
    rng = np.random.default_rng(11)
    edges = np.concatenate([
        10.0 ** np.arange(-45, 39), -np.ldexp(1.0, np.arange(-149, 128, 3)),
        [0.0, -0.0, np.inf, -np.inf, np.nan, 1 / 3, 3.4028235e38, 1e-45, 1e16, 9.999999e15,
         1e-4, 9.99999e-5, 123456789, 16777217, 0.1],
        rng.standard_normal(400) * 10.0 ** rng.integers(-12, 12, 400),
    ]).astype(np.float32)  # fmt: skip
    floats = edges[: len(edges) // 7 * 7].reshape(-1, 7)
    suffix = np.frombuffer(b",1,0" * len(floats), dtype=np.uint8).reshape(-1, 4)
    want = _repr_lines_numpy(floats, suffix), _repr_lines_numpy(floats)
    return (_repr_lines_c(lib, floats, suffix), _repr_lines_c(lib, floats, None)) == want


def _repr_lines_numpy(floats: np.ndarray, suffix: Optional[np.ndarray] = None) -> bytes:
    """The rows of a 2-D float32 array as CSV lines, ASCII: each value as
    repr(float(str(np.float32(v)))) (the shortest decimal that reads back as the same
    float32, written as Python writes a float), empty where it is not finite; "," between
    values, "\n" after each row. Vectorised: the digits from _shortest_bisected, the few
    values it is not sure of through the scalar formula, then every character placed in a
    grid of fixed columns (sign, integer digits right-aligned, point, fraction digits
    left-aligned, exponent, separator) and the grid's used cells read out in order.
    suffix: (rows, k >= 1) uint8, ASCII written after each row's last value, before its
    "\n" (fixed-width trailing cells: their text is placed in the grid too, never
    joined line by line)."""
    floats = np.asarray(floats, dtype=np.float32)
    step = max(1, FORMAT_VALUES // max(floats.shape[1], 1))
    if len(floats) > step:  # a few thousand values at a time: the temporaries stay small
        pieces = (
            _repr_lines_numpy(floats[i : i + step], None if suffix is None else suffix[i : i + step])
            for i in range(0, len(floats), step)
        )
        return b"".join(pieces)
    rows, width = floats.shape
    v = np.ascontiguousarray(floats).ravel()
    sure, m, q = _shortest_bisected(v)
    keep = np.isfinite(v)
    m = np.where(sure, m, 0.0)
    q = np.where(sure, q, 0)
    for i in np.flatnonzero(~sure & keep & (v != 0)).tolist():
        m[i], q[i] = _repr_digits(repr(float(str(v[i]))))
    # Python's repr: 0.d1..dn * 10**decpt, positional when -4 < decpt <= 16
    nd = np.searchsorted(_POW10[1:10], m, side="right") + 1  # m < 10**9: 9 digits at most
    decpt = nd + q
    expo_form = (decpt <= -4) | (decpt > 16)
    fw = np.where(expo_form, nd - 1, np.maximum(-q, 1)) * keep  # fraction digits (0: no point)
    with np.errstate(all="ignore"):
        cut = _POW10[np.where(expo_form, nd - 1, np.clip(-q, 0, 22))]  # <= 10**12
        whole = np.floor(m / cut)  # m < 10**10: one rounding off, never across an integer
        frac = m - whole * cut
        whole = np.where(~expo_form & (q > 0), m * _POW10[np.clip(q, 0, 22)], whole)
    ni = np.searchsorted(_POW10[1:17], whole, side="right") + 1
    ni_max, fw_max = int(ni[keep].max(initial=1)), int(fw.max(initial=0))
    neg = np.signbit(v) & keep
    exp_at = keep & expo_form
    blocks: list[tuple[np.ndarray | int, np.ndarray]] = []  # (characters, used): columns
    if neg.any():
        blocks.append((45, neg[:, None]))  # "-"
    lead = np.arange(ni_max)[None, :] >= (ni_max - ni)[:, None]
    blocks.append((_digit_block(whole, ni_max), lead & keep[:, None]))
    if fw_max:
        blocks.append((46, (fw > 0)[:, None]))  # "."
        frac = frac * _POW10[fw_max - fw]  # left-aligned in fw_max digits
        blocks.append((_digit_block(frac, fw_max), np.arange(fw_max)[None, :] < fw[:, None]))
    if exp_at.any():
        e = decpt - 1
        chars = np.empty((v.size, 4), dtype=np.uint8)
        chars[:, 0] = 101  # "e"
        chars[:, 1] = np.where(e < 0, 45, 43)
        chars[:, 2:] = _digit_block(np.abs(e).astype(np.float64), 2)
        blocks.append((chars, np.repeat(exp_at[:, None], 4, axis=1)))
    sep = np.full((rows, width), 44, dtype=np.uint8)
    sep[:, -1] = 10 if suffix is None else suffix[:, 0]  # "\n", or the suffix's first
    blocks.append((sep.reshape(-1, 1), np.ones((v.size, 1), dtype=bool)))
    widths = [np.shape(used)[1] for _, used in blocks]
    extra = 0 if suffix is None else suffix.shape[1]  # the rest of the suffix and "\n"
    total = sum(widths)
    grid = np.empty((rows, width * total + extra), dtype=np.uint8)
    mask = np.ones(grid.shape, dtype=bool)
    cells = grid[:, : width * total].reshape(rows, width, total)  # (row, value, column)
    used_cells = mask[:, : width * total].reshape(rows, width, total)
    at = 0
    for (chars, used), w in zip(blocks, widths):
        cells[:, :, at : at + w] = chars if np.ndim(chars) == 0 else chars.reshape(rows, width, w)
        used_cells[:, :, at : at + w] = used.reshape(rows, width, w)
        at += w
    if extra:
        grid[:, -extra:-1] = suffix[:, 1:]
        grid[:, -1] = 10
    return grid[mask].tobytes()


class RecordWriter:
    def __init__(
        self,
        path: Optional[str],
        channels: Sequence[str],
        leading: Sequence[str] = (),
        trailing: Sequence[str] = (),
        fmt: Optional[str] = None,
        flush: bool = False,
        append: bool = False,
        values: Optional[Sequence[str]] = None,
    ):
        self.fmt = fmt or format_for(path)
        self.channels = list(channels)
        # values: a graph's flat output columns (records hold them as top-level keys)
        # in place of the forecaster's nested "forecast" -> `<channel>_forecast` columns.
        self.values = None if values is None else list(values)
        self.leading = list(leading)
        self.trailing = list(trailing)
        self.flush = flush
        self.count = 0
        self.name = path if path not in (None, "-") else "stdout"
        self._owned: Optional[IO[str]] = None
        # append: what the file holds stays and records go after it (no second CSV
        # header); else it is truncated. Either way the file is locked for this run.
        self.appended_to = 0  # bytes already in the file
        if path is None or path == "-":
            self._fh: IO[str] = sys.stdout
        else:
            try:
                opened = open_output(path, append)
            except OSError as e:
                raise EdgernnError(f"{path}: cannot write ({e.strerror})") from e
            self._owned = self._fh = opened.fh
            self.appended_to = opened.existing
            if not opened.ends_with_newline:
                self._fh.write("\n")  # a killed run's partial last line stays on its own
        if self.fmt == "csv":
            self._csv = csv.writer(self._fh, lineterminator="\n")
            header = self.leading + self.channels + (
                [f"{c}_forecast" for c in self.channels] if self.values is None else self.values
            )
            try:
                if self.appended_to:
                    check_csv_header(opened, path, header + self.trailing)
                else:
                    self._csv.writerow(header + self.trailing)
            except OSError as e:
                self._raise_naming_output(e)

    def write(self, record: dict[str, Any]) -> None:
        try:  # a plain try, not a context manager: this runs once per sample
            self._write(record)
        except OSError as e:
            self._raise_naming_output(e)

    def _write(self, record: dict[str, Any]) -> None:
        if self.fmt == "csv" and self.values is not None:
            keys = self.leading + self.channels + self.values + self.trailing
            self._csv.writerow(["" if record.get(k) is None else _cell(record[k]) for k in keys])
        elif self.fmt == "csv":
            forecast = record.get("forecast") or {}
            row = [record.get(k) for k in self.leading]
            row += [record.get(c) for c in self.channels]
            row += [forecast.get(c) for c in self.channels]
            row += [record.get(k) for k in self.trailing]
            self._csv.writerow(["" if v is None else _cell(v) for v in row])
        else:
            self._fh.write(json.dumps(_jsonable(record), separators=(",", ":")) + "\n")
        self.count += 1
        if self.flush:
            self._fh.flush()

    def write_block(
        self,
        floats: np.ndarray,
        leading: Optional[Sequence[Any]] = None,
        trailing=None,
        gaps: Sequence[int] = (),
        leading_text: bool = False,
    ) -> None:
        """CSV rows in one call, every cell as write() formats it: row i is leading[i]
        (one cell, e.g. the time), floats[i] (the numeric cells: inputs, then forecasts
        or outputs, then any float trailing cells, as float32 shortest decimals; NaN and
        inf empty), then trailing[i] (int or None cells; or trailing an (n, k) integer
        array). `gaps`: positions in the
        block's output where an empty row goes (a skipped input row keeps its place).
        leading_text: leading[i] is CSV text already (cells csv writes unquoted, joined
        by ","), written as it is."""
        if self.fmt != "csv":
            raise ValueError("write_block writes CSV; JSON lines go through write()")
        plain = leading_text or not any(_needs_quotes(cell) for cell in leading or ())
        if fast_format[0] and plain:  # the floats' lines made vectorised
            suffix = _digit_cells(trailing)
            if suffix is not None:  # the trailing cells written in the same grid
                trailing = None
            text = float32_repr_lines(floats, suffix).decode("ascii")
            if leading is None and trailing is None and not len(gaps):
                self._write_text(text, len(floats))
            else:
                self._write_joined(text.split("\n")[:-1], leading, trailing, gaps)
            return
        if isinstance(trailing, np.ndarray):
            trailing = [tuple(row) for row in trailing.tolist()]
        rows = float32_decimals(floats).tolist()
        if rows and not np.isfinite(floats).all():
            rows = [[x if math.isfinite(x) else None for x in row] for row in rows]
            if leading_text:
                lines = [",".join("" if x is None else repr(x) for x in row) for row in rows]
                self._write_joined(lines, leading, trailing, gaps)
                return
        elif plain:
            self._write_joined([",".join(map(repr, row)) for row in rows], leading, trailing, gaps)
            return
        if leading is not None:
            rows = [[first, *row] for first, row in zip(leading, rows)]
        if trailing is not None:
            rows = [row + list(rest) for row, rest in zip(rows, trailing)]
        width = len(self.leading) + len(self.channels) + len(self.trailing) + (
            len(self.channels) if self.values is None else len(self.values)
        )
        if len(gaps):
            rows = _with_gaps(rows, gaps, [None] * width)
        try:
            self._csv.writerows(rows)
            if self.flush:
                self._fh.flush()
        except OSError as e:
            self._raise_naming_output(e)
        self.count += len(rows)

    def _write_joined(self, lines: list[str], leading, trailing, gaps: Sequence[int]) -> None:
        """write_block's common case, the lines joined directly from the floats' cells
        (a finite float's repr is what the csv module writes; a non-finite one is empty):
        no leading cell that csv would quote."""
        if leading is not None:
            lines = [f"{first},{line}" for first, line in zip(leading, lines)]
        if isinstance(trailing, np.ndarray):  # int cells: each distinct row's text made once
            lines = list(map(operator.add, lines, _int_texts(trailing)))
        elif trailing is not None:  # few distinct trailing cells (flags): each text made once
            texts: dict = {}
            joined = []
            for line, rest in zip(lines, trailing):
                key = rest if type(rest) is tuple else tuple(rest)
                text = texts.get(key)
                if text is None:
                    text = texts[key] = "," + ",".join("" if v is None else str(int(v)) for v in rest)
                joined.append(line + text)
            lines = joined
        if len(gaps):
            width = len(self.leading) + len(self.channels) + len(self.trailing) + (
                len(self.channels) if self.values is None else len(self.values)
            )
            lines = _with_gaps(lines, gaps, "," * (width - 1))
        self._write_text("".join(line + "\n" for line in lines), len(lines))

    def _write_text(self, text: str, rows: int) -> None:
        try:
            self._fh.write(text)
            if self.flush:
                self._fh.flush()
        except OSError as e:
            self._raise_naming_output(e)
        self.count += rows

    def write_json_block(
        self,
        floats: np.ndarray,
        heads: Optional[Sequence[str]] = None,
        tails: Optional[Sequence[str]] = None,
        inserts: Sequence[tuple[int, dict[str, Any]]] = (),
    ) -> None:
        """JSON lines in one call, each as write() writes it: row i is {heads[i] (the
        JSON text of its leading fields, each followed by ","), the channel values
        floats[i, :C], "forecast": {the channels: floats[i, C:]}, then tails[i] (JSON
        text of its trailing fields, each after a ",")}; the floats as float32 shortest
        decimals, null where not finite. `inserts`: (output position, record) of records
        placed between them (written as write() writes them). The caller makes sure no
        key repeats (write() would keep the first place and the last value)."""
        if self.fmt != "jsonl":
            raise ValueError("write_json_block writes JSON lines")
        n, w = floats.shape
        cells = float32_repr_lines(floats).decode("ascii").replace("\n", ",").split(",")[:-1]
        if not np.isfinite(floats).all():
            cells = [cell or "null" for cell in cells]
        keys = [json.dumps(c).replace("%", "%%") for c in self.channels]
        template = "{%s" + ",".join(f"{k}:%s" for k in keys) + ',"forecast":{'
        template += ",".join(f"{k}:%s" for k in keys) + "}%s}\n"
        args: list[str] = [""] * (n * (w + 2))
        if heads is not None:
            args[0 :: w + 2] = heads
        for j in range(w):
            args[j + 1 :: w + 2] = cells[j::w]
        if tails is not None:
            args[w + 1 :: w + 2] = tails
        text = (template * n) % tuple(args)
        if len(inserts):
            lines = text.split("\n")[:-1]
            for at, record in inserts:  # ascending output positions
                lines.insert(at, json.dumps(_jsonable(record), separators=(",", ":")))
            text = "".join(line + "\n" for line in lines)
        self._write_text(text, n + len(inserts))

    def close(self) -> None:
        try:
            try:
                self._fh.flush()
            finally:
                if self._owned is not None:
                    self._owned.close()
        except OSError as e:
            self._raise_naming_output(e)

    def _raise_naming_output(self, e: OSError) -> NoReturn:
        """A failed write (full disk, closed pipe) names the output it was for.
        OSError(errno, ...) builds the matching subclass, so BrokenPipeError stays one."""
        if e.filename is not None:
            raise e
        raise OSError(e.errno, e.strerror, self.name) from e

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _digit_cells(trailing) -> Optional[np.ndarray]:
    """",a,b..." as ASCII (n, 2k) for trailing int cells that are all one digit (the
    flags), for float32_repr_lines' suffix; None for any other trailing cells."""
    if not isinstance(trailing, np.ndarray) or not trailing.size:
        return None
    if trailing.min() < 0 or trailing.max() > 9:
        return None
    chars = np.full((len(trailing), 2 * trailing.shape[1]), 44, dtype=np.uint8)
    chars[:, 1::2] = 48 + trailing
    return chars


def _int_texts(cells: np.ndarray) -> list[str]:
    """The text ",a,b" of each row of an (n, k) integer array, as _write_joined writes it."""
    if not len(cells):
        return []
    unique, inverse = np.unique(cells, axis=0, return_inverse=True)
    texts = ["," + ",".join(str(int(v)) for v in row) for row in unique.tolist()]
    return np.array(texts, dtype=object)[inverse.reshape(-1)].tolist()


def _needs_quotes(cell: Any) -> bool:
    """The csv module would quote this cell (or it is not text): the joined path can't."""
    return not isinstance(cell, str) or any(c in cell for c in ',"\r\n')


def _with_gaps(rows: list, gaps: Sequence[int], empty: list) -> list:
    """rows with `empty` placed at the ascending output positions `gaps`."""
    merged: list = []
    kept = iter(rows)
    for at in gaps:
        merged.extend(itertools.islice(kept, at - len(merged)))
        merged.append(empty)
    merged.extend(kept)
    return merged


def _cell(v: Any) -> str:
    if isinstance(v, (str, bool, int)):
        return str(int(v)) if isinstance(v, bool) else str(v)
    f = _num(v)
    return "" if f is None else repr(f)
