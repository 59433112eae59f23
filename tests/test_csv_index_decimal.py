"""CSVs as other tools write them: a pandas row-index column (skipped with a note, kept
in `run`'s output) and European exports with decimal commas (--decimal ,)."""

import csv
import json

import numpy as np
import pytest
from conftest import run_cli, synthetic_signal

from edgernn.errors import DataError
from edgernn.runtime.csvdata import iter_csv, read_csv


def _write(tmp_path, text, name="d.csv"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("name", ["", "Unnamed: 0"])
def test_pandas_index_column_is_skipped_with_a_note(tmp_path, capsys, name):
    t = read_csv(_write(tmp_path, f"{name},value\n0,1.5\n1,2\n2,2.5\n"))
    assert t.channels == ["value"]
    assert t.index == ["0", "1", "2"] and t.index_column == name
    np.testing.assert_allclose(t.values[:, 0], [1.5, 2, 2.5])
    assert "row index" in capsys.readouterr().err


def test_index_beside_a_time_column_and_in_chunks(tmp_path):
    path = _write(tmp_path, "Unnamed: 0,time,x\n5,10:00:01,1\n6,10:00:02,2\n7,10:00:03,3\n")
    chunks = list(iter_csv(path, chunk_rows=2))
    assert [c.index for c in chunks] == [["5", "6"], ["7"]]
    assert chunks[0].channels == ["x"] and chunks[0].time == ["10:00:01", "10:00:02"]


def test_asked_for_unnamed_column_is_read(tmp_path):
    # a model trained before the index was recognised names it as a channel
    t = read_csv(_write(tmp_path, ",value\n0,1.5\n1,2\n"), channels=["", "value"])
    assert t.index is None and t.values.tolist() == [[0, 1.5], [1, 2]]


def test_unnamed_column_that_is_no_index_is_an_error(tmp_path):
    with pytest.raises(DataError, match="column 1 has no name"):
        read_csv(_write(tmp_path, ",value\n0.5,1.5\n1.5,2\n"))


def test_decimal_comma(tmp_path):
    path = _write(tmp_path, "time;temp;hum\n2024-01-01 10:00;21,5;40\n2024-01-01 10:01;-0,25;41,5\n")
    with pytest.raises(DataError, match="--decimal ,"):
        read_csv(path)
    t = read_csv(path, decimal=",")
    np.testing.assert_allclose(t.values, [[21.5, 40], [-0.25, 41.5]])
    assert t.time == ["2024-01-01 10:00", "2024-01-01 10:01"]
    one = read_csv(_write(tmp_path, "temp\n21,5\n22\n", "one.csv"), decimal=",")
    np.testing.assert_allclose(one.values[:, 0], [21.5, 22])
    with pytest.raises(DataError, match="comma-separated"):
        read_csv(_write(tmp_path, "a,b\n1,2\n", "c.csv"), decimal=",")


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """A pandas-written CSV (index column, no time column), an ESN trained on it, exported."""
    d = tmp_path_factory.mktemp("indexed")
    values = synthetic_signal(600)
    lines = [",a,b,c"] + [f"{i}," + ",".join(f"{v:.6f}" for v in row) for i, row in enumerate(values)]
    (d / "data.csv").write_text("\n".join(lines) + "\n")
    proc = run_cli("train", str(d / "data.csv"), "--out", str(d / "run"), "--cell", "esn",
                   "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "row index" in proc.stderr and "channels a, b, c" in proc.stderr
    proc = run_cli("export", str(d / "run"), "-o", str(d / "model.onnx"))
    assert proc.returncode == 0, proc.stderr
    return d


def test_model_trained_on_indexed_csv_has_no_unnamed_channel(indexed):
    proc = run_cli("info", str(indexed / "model.onnx"), "--json")
    assert json.loads(proc.stdout)["channels"] == ["a", "b", "c"]


@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_run_keeps_the_index_as_leading_column(indexed, tmp_path, ext):
    out = tmp_path / f"out.{ext}"
    proc = run_cli("run", str(indexed / "model.onnx"), "--csv", str(indexed / "data.csv"),
                   "-o", str(out), "--no-detector")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    if ext == "csv":
        rows = list(csv.reader(open(out)))
        assert rows[0][:4] == ["", "a", "b", "c"] and rows[0][4] == "a_forecast"
        assert [r[0] for r in rows[1:4]] == ["0", "1", "2"] and len(rows) == 601
    else:
        records = [json.loads(x) for x in open(out)]
        assert records[2][""] == "2" and len(records) == 600
