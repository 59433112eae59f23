"""CSV reading: delimiters, time columns, channel selection, and errors that name
the file, the row and the column."""

import numpy as np
import pytest

from edgernn.errors import DataError
from edgernn.runtime.csvdata import read_csv, read_many


def _write(tmp_path, text, name="d.csv"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("sep", [",", ";", "\t"])
def test_delimiters_and_time_column(tmp_path, sep):
    text = sep.join(["datetime", "x", "y"]) + "\n"
    text += sep.join(["2020-03-09 10:14:33", "1.5", "2"]) + "\n"
    text += sep.join(["2020-03-09 10:14:34", "-3e-2", "4"]) + "\n"
    t = read_csv(_write(tmp_path, text))
    assert t.channels == ["x", "y"]
    np.testing.assert_allclose(t.values, [[1.5, 2.0], [-0.03, 4.0]])
    assert t.time == ["2020-03-09 10:14:33", "2020-03-09 10:14:34"]


def test_unnamed_time_like_column_is_skipped(tmp_path):
    t = read_csv(_write(tmp_path, "when,x\n10:00:01,1\n10:00:02,2\n"))
    assert t.channels == ["x"]


def test_channels_and_ignore(tmp_path):
    path = _write(tmp_path, "time,a,b,c,label\n0,1,2,3,0\n1,4,5,6,1\n")
    assert read_csv(path, channels=["c", "a"]).values.tolist() == [[3, 1], [6, 4]]
    t = read_csv(path, ignore=["b"], keep=["label"])
    assert t.channels == ["a", "c"]
    assert t.extra["label"].tolist() == [0, 1]
    with pytest.raises(DataError, match="no column"):
        read_csv(path, channels=["zz"])


@pytest.mark.parametrize(
    "row, message",
    [
        ("0,1,", r"row 3, column 'b': missing value"),
        ("0,1,nan", r"row 3, column 'b': 'nan' is not a finite number"),
        ("0,abc,2", r"row 3, column 'a': 'abc' is not a finite number"),
        ("0,1", r"row 3 has 2 cells, the header has 3"),
    ],
)
def test_bad_cells_name_file_row_and_column(tmp_path, row, message):
    path = _write(tmp_path, f"time,a,b\n0,1,2\n{row}\n")
    with pytest.raises(DataError, match=message) as err:
        read_csv(path)
    assert path in str(err.value)


def test_skip_bad_rows_counts_them(tmp_path):
    path = _write(tmp_path, "time,a\n0,1\n1,x\n2,3\n3,\n4,5\n")
    t = read_csv(path, on_bad="skip")
    assert t.values[:, 0].tolist() == [1, 3, 5]
    assert t.skipped_rows == [3, 5]
    assert t.lines == [2, 4, 6]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty file"),
        ("1,2,3\n4,5,6\n", "header row"),
        ("a,b\n", "no data rows"),
        ("a,a\n1,2\n", "duplicate column"),
    ],
)
def test_malformed_files(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        read_csv(_write(tmp_path, text))


def test_binary_file(tmp_path):
    p = tmp_path / "bin.csv"
    p.write_bytes(b"\xff\xfe\x00\x01garbage\x80\x81\n\x90")
    with pytest.raises(DataError):
        read_csv(p)


def test_read_many_requires_same_channels(tmp_path):
    a = _write(tmp_path, "x,y\n1,2\n", "a.csv")
    b = _write(tmp_path, "x,z\n1,2\n", "b.csv")
    with pytest.raises(DataError, match="no column.*'y'"):
        read_many([a, b])
