"""`edgernn evaluate --skip-bad-rows`: rows with a bad cell (the label's too) are skipped,
counted per file and pooled, neither streamed nor scored; the training part keeps a gap
where they were, so training cuts its stretches there."""

from __future__ import annotations

import json

import numpy as np

from edgernn.cli import main
from edgernn.runtime.csvdata import read_csv
from edgernn.runtime.evaluate_commands import write_table_head


def write_labelled(path, n=2400):
    rng = np.random.default_rng(0)
    x = np.sin(np.arange(n) / 20.0) + 0.1 * rng.standard_normal(n)
    labels = np.zeros(n, dtype=int)
    x[2000:2010] += 3.0
    labels[2000:2010] = 1
    rows = ["timestamp,value,anomaly"]
    for i in range(n):
        value = "" if i in (500, 501) else "oops" if i == 2100 else f"{x[i]:.4f}"
        label = "" if i == 2200 else str(labels[i])
        rows.append(
            f"2024-01-{1 + i // 1440:02d} {i // 60 % 24:02d}:{i % 60:02d}:00,{value},{label}"
        )
    path.write_text("\n".join(rows) + "\n")


def test_the_training_head_keeps_the_gaps(tmp_path):
    src = tmp_path / "s.csv"
    src.write_text("value\n1\n2\n\n3\nx\n4\n5\n")  # a blank line (no gap) and a bad row
    table = read_csv(str(src), on_bad="skip")
    head = tmp_path / "head.csv"
    write_table_head(table, 4, str(head))
    assert head.read_text().split() == ["value", "1.0", "2.0", "3.0", "nan", "4.0"]


def test_evaluate_skips_counts_and_scores_the_rest(tmp_path, capsys):
    data = tmp_path / "e.csv"
    write_labelled(data)
    args = ["evaluate", str(data), "--train-rows", "1000", "--hidden", "16"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "row 502, column 'value': missing value" in err
    out = tmp_path / "out"
    assert main([*args, "--skip-bad-rows", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "e.csv: skipped 4 bad row(s), not scored" in err and "'oops'" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pooled"]["skipped_rows"] == 4
    assert summary["files"][str(data)]["skipped_rows"] == 4
    predictions = (out / "e_pred.csv").read_text().splitlines()
    assert len(predictions) - 1 == 2400 - 4 - 1000  # every row read after the training part
    assert summary["pooled"]["detected"] == 1  # the labelled event is still found
