"""Malformed CSV rows are counted, reported and skipped one by one (never swallowing
the rest of the file), and iter_csv streams a file in bounded memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from conftest import run_cli

from edgernn.errors import DataError
from edgernn.runtime import csvdata
from edgernn.runtime.csvdata import iter_csv, read_csv

GOOD = [f"{i},{i}.5,{-i}\n".encode() for i in range(500)]


def _file(tmp_path, bad: dict[int, bytes], name="in.csv") -> str:
    """500 good rows (lines 2..501) with `bad` lines inserted before data row i."""
    out = [b"time,a,b\n"]
    for i, row in enumerate(GOOD):
        if i in bad:
            out.append(bad[i])
        out.append(row)
    path = tmp_path / name
    path.write_bytes(b"".join(out))
    return str(path)


BAD_LINES = {
    "unterminated quote": (b'7,"8.5,9\n', "unterminated quote"),
    "quote opened mid-row": (b'7x"y,"8,9\n', "unterminated quote"),
    "invalid utf-8": (b"7,8\xff\xfe,9\n", "not UTF-8"),
    "cell over 128 KB": (b"7," + b"1" * 140_000 + b",9\n", "cell over 128 KB"),
    "NUL byte": (b"7,8\x00,9\n", "not a finite number"),
    "too few cells": (b"7,8\n", "has 2 cells"),
    "text cell": (b"7,eight,9\n", "not a finite number"),
}


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_one_bad_line_is_one_skipped_row_and_the_rest_is_read(tmp_path, kind):
    line, why = BAD_LINES[kind]
    path = _file(tmp_path, {100: line})
    t = read_csv(path, on_bad="skip")
    assert len(t) == 500  # nothing swallowed
    assert t.skipped_rows == [102] and why in t.skip_reasons[102]
    np.testing.assert_array_equal(t.values[:, 0], np.arange(500) + 0.5)
    assert t.lines == list(range(2, 102)) + list(range(103, 503))
    with pytest.raises(DataError, match=f"row 102.*{why}"):
        read_csv(path)


def test_every_kind_at_once_each_counted_with_its_reason(tmp_path):
    bad = {10 * (k + 1): line for k, (line, _) in enumerate(BAD_LINES.values())}
    path = _file(tmp_path, bad)
    t = read_csv(path, on_bad="skip")
    assert len(t) == 500 and len(t.skipped_rows) == len(BAD_LINES)
    for line_no, (_, why) in zip(t.skipped_rows, BAD_LINES.values()):
        assert why in t.skip_reasons[line_no], (line_no, t.skip_reasons)


def test_blank_lines_are_counted_never_silently_dropped(tmp_path):
    path = _file(tmp_path, {0: b"\n", 50: b"   \r\n", 60: b",,\n", 499: b"\n"})
    t = read_csv(path)  # blank and all-empty lines are no error ...
    assert len(t) == 500 and t.blank_rows == [2, 53, 64, 504]
    t = read_csv(path, on_bad="skip")  # ... and skipped rows when skipping
    assert t.skipped_rows == [2, 53, 64, 504] and t.skip_reasons[64] == "is blank"


def test_an_overlong_line_is_skipped_in_bounded_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(csvdata, "MAX_LINE_BYTES", 1 << 16)
    path = _file(tmp_path, {3: b"1" * 3_000_000 + b"\n"})
    tracemalloc.start()
    t = read_csv(path, on_bad="skip")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(t) == 500 and "over" in t.skip_reasons[5] and peak < 1_000_000


def test_a_bad_row_before_the_first_good_one_and_files_with_no_good_row(tmp_path):
    path = _file(tmp_path, {0: b"\xff\n"})
    t = read_csv(path, on_bad="skip")
    assert t.skipped_rows == [2] and len(t) == 500
    only_bad = tmp_path / "bad.csv"
    only_bad.write_bytes(b"time,a,b\n\xff\n1,x,2\n")
    with pytest.raises(DataError, match="no valid data rows"):
        read_csv(only_bad, on_bad="skip")


def test_iter_csv_streams_the_same_rows_in_bounded_chunks(tmp_path):
    path = _file(tmp_path, {7: b'1,"2\n', 300: b"\n"})
    whole = read_csv(path, on_bad="skip")
    chunks = list(iter_csv(path, on_bad="skip", chunk_rows=64))
    assert all(len(c) <= 64 for c in chunks) and len(chunks) == 8
    assert {c.time_column for c in chunks} == {"time"} and chunks[0].channels == ["a", "b"]
    np.testing.assert_array_equal(np.concatenate([c.values for c in chunks]), whole.values)
    assert sum((c.skipped_rows for c in chunks), []) == whole.skipped_rows == [9, 303]
    assert sum((c.time for c in chunks), []) == whole.time
    with pytest.raises(DataError, match="row 9 has an unterminated quote"):
        list(iter_csv(path, chunk_rows=64))


def test_iter_csv_memory_does_not_grow_with_the_file(tmp_path):
    rows = b"".join(f"{i},{i % 7}.25,{i % 5}\n".encode() for i in range(60_000))
    path = tmp_path / "long.csv"
    path.write_bytes(b"time,a,b\n" + rows)
    tracemalloc.start()
    n = sum(len(c) for c in iter_csv(path, chunk_rows=2000))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == 60_000 and peak < 2_000_000  # the file is 1.1 MB; read whole it is ~10x


def test_run_skip_bad_rows_reports_every_malformed_row(tmp_path, exported_models):
    _, model = exported_models[("gru", 1)]
    lines = [b"time,ch0,ch1,ch2\n"] + [f"{i},{i}.5,{-i},1\n".encode() for i in range(300)]
    bad = [line for line, _ in BAD_LINES.values()] + [b"\n"]
    for k, line in enumerate(bad):
        lines.insert(20 * (k + 1), line)
    path = tmp_path / "in.csv"
    path.write_bytes(b"".join(lines))
    out = tmp_path / "out.csv"
    proc = run_cli("run", model, "--csv", str(path), "-o", str(out), "--skip-bad-rows")
    assert proc.returncode == 0, proc.stderr
    assert f"{len(bad)} skipped" in proc.stderr, proc.stderr
    assert len(out.read_text().splitlines()) == 1 + 300 + len(bad)  # one row per input row
