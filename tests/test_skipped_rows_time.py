"""`edgernn run --skip-bad-rows` on a file with a time column: a skipped row keeps its
time cell (it can be placed) and the summary names skipped rows by time."""

import csv
import json

import pytest

from edgernn.runtime.csvdata import read_csv
from edgernn.runtime.csvrun import run_csv
from edgernn.runtime.model import Model

TEXT = (
    "time,ch0,ch1,ch2\n"
    "2024-01-01 00:00:00,1,2,3\n"
    "2024-01-01 00:00:01,1,oops,3\n"
    "2024-01-01 00:00:02,1,2,3\n"
    '2024-01-01 00:00:03,1,"2\n'
    "2024-01-01 00:00:04,1,2,3\n"
)


@pytest.fixture
def model(exported_models):
    model = Model(exported_models[("gru", 1)][1])
    assert model.channels == ["ch0", "ch1", "ch2"]
    return model


def test_reader_keeps_the_time_of_a_skipped_row(tmp_path):
    (tmp_path / "in.csv").write_text(TEXT)
    t = read_csv(tmp_path / "in.csv", on_bad="skip")
    assert t.skipped_rows == [3, 5]
    assert t.skipped_leading[3] == {"time": "2024-01-01 00:00:01"}
    assert 5 not in t.skipped_leading  # an unterminated quote: no CSV row, no time


@pytest.mark.parametrize("chunk_rows", [1, 4096])
def test_skipped_row_keeps_its_time_in_the_output(model, tmp_path, capsys, chunk_rows):
    (tmp_path / "in.csv").write_text(TEXT)
    out = tmp_path / "out.csv"
    summary = run_csv(model, str(tmp_path / "in.csv"), str(out), skip_bad=True,
                      chunk_rows=chunk_rows)  # fmt: skip
    rows = list(csv.reader(open(out)))[1:]
    assert [r[0] for r in rows] == ["2024-01-01 00:00:00", "2024-01-01 00:00:01",
                                    "2024-01-01 00:00:02", "", "2024-01-01 00:00:04"]  # fmt: skip
    assert rows[1][1:] == [""] * 6 and rows[2][4] != ""
    assert "skipped rows at 2024-01-01 00:00:01, line 5" in summary.line()


def test_skipped_record_in_json_lines_has_its_time(model, tmp_path):
    (tmp_path / "in.csv").write_text(TEXT)
    out = tmp_path / "out.jsonl"
    run_csv(model, str(tmp_path / "in.csv"), str(out), skip_bad=True)
    records = [json.loads(x) for x in open(out)]
    assert records[1] == {"skipped": True, "line": 3, "time": "2024-01-01 00:00:01"}
