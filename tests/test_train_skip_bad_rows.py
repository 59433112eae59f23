"""`edgernn train --skip-bad-rows`: rows with a missing or non-numeric cell are counted and
skipped, and each ends a stretch of the file that trains on its own, so no training
window steps across a gap. Without the flag such a row is a one-line error."""

from __future__ import annotations

import numpy as np
import pytest

from edgernn.cli import main
from edgernn.train.logs import load_logs, stretches

BAD = {1000: "", 1001: "", 1480: "oops"}  # data row index -> the bad cell


@pytest.fixture
def gappy(tmp_path):
    rng = np.random.default_rng(0)
    n = 1500
    x = np.sin(np.arange(n) / 20.0) + 0.1 * rng.standard_normal(n)
    path = tmp_path / "gappy.csv"
    rows = ["timestamp,value"]
    for i, v in enumerate(x):
        cell = BAD.get(i, f"{v:.4f}")
        rows.append(f"2024-01-01 {i // 60 % 24:02d}:{i % 60:02d}:00,{cell}")
    path.write_text("\n".join(rows) + "\n")
    return path, x


def test_stretches_cut_at_bad_rows_only():
    lines = [2, 3, 4, 6, 7, 9]  # kept rows' line numbers (5 and 8 bad, 10 blank)
    assert stretches(lines, [5, 8]) == [[0, 3], [3, 5], [5, 6]]
    assert stretches(lines, [1, 12]) == [[0, 6]]  # before the first, after the last
    assert stretches(lines, []) == [[0, 6]]
    assert stretches([], [3]) == []


def test_the_stretches_are_the_file_between_its_bad_rows(gappy, tmp_path):
    path, x = gappy
    logs = load_logs([str(path)], str(tmp_path / "cache"), skip_bad=True)
    want = [x[:1000], x[1002:1480], x[1481:]]
    assert [len(lg) for lg in logs] == [len(w) for w in want]
    for lg, w in zip(logs, want):
        np.testing.assert_allclose(lg.values[:, 0], w, atol=1e-4)
    assert logs[0].path.endswith("rows 2-1001") and logs[1].lines == (1004, 1481)
    assert sorted(logs[0].skipped) == [1002, 1003, 1482]
    with pytest.raises(Exception, match="row 1002, column 'value': missing value"):
        load_logs([str(path)], str(tmp_path / "cache"))  # the same cache, no flag: an error


def test_train_skips_counts_and_trains_on_the_stretches(gappy, tmp_path, capsys):
    path, _ = gappy
    run = str(tmp_path / "run")
    args = ["train", str(path), "--out", run, "--cell", "esn", "--hidden", "16", "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "row 1002, column 'value': missing value" in err
    assert main([*args, "--skip-bad-rows"]) == 0
    err = capsys.readouterr().err
    assert "skipped 3 bad row(s)" in err and "'oops' is not a finite number" in err
    assert "2 stretch(es) train (1000, 478 rows), 1 too short to train on dropped (19 rows)" in err
    assert "data: 2 stretch(es)" in err


def test_skip_bad_rows_is_for_forecasters_only(gappy, tmp_path, capsys):
    path, _ = gappy
    run = str(tmp_path / "run")
    code = main(["train", str(path), "--out", run, "--target", "value", "--skip-bad-rows"])
    assert code == 1
    err = capsys.readouterr().err
    assert "--skip-bad-rows: forecasting only" in err and err.count("\n") == 1
