"""Writing per-sample records as CSV or JSON lines (to a file or stdout).

A record is a dict: optional leading fields (time, seq, row), the input values by
channel name, "forecast" (channel -> value) and optional trailing fields (score,
anomaly, ...). JSON lines keep "forecast" nested; CSV flattens it into
`<channel>_forecast` columns. Floats are written as the shortest decimal that reads
back as the same float32 (the runtime computes in float32): exact, and no longer.
"""

from __future__ import annotations

import csv
import json
import math
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


def _cell(v: Any) -> str:
    if isinstance(v, (str, bool, int)):
        return str(int(v)) if isinstance(v, bool) else str(v)
    f = _num(v)
    return "" if f is None else repr(f)
