"""Evaluation metrics by hand, and `edgernn evaluate` end to end on small labelled files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import synthetic_signal, write_csv

from edgernn.cli import main
from edgernn.errors import InputError
from edgernn.runtime.evaluate import (
    NabScore,
    changepoint_windows,
    changepoints_from_flags,
    evaluate_flags,
    event_metrics,
    merge_windows,
    nab_score,
    nab_windows,
    onsets,
    point_metrics,
    runs,
    scaled_sigmoid,
)


def test_point_metrics_by_hand():
    labels = [0, 0, 1, 1, 1, 1, 0, 0, 0, 0]
    preds = [1, 0, 0, 1, 1, 0, 0, 0, 0, 0]
    m = point_metrics(labels, preds)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 2, 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert m["far"] == pytest.approx(1 / 6)
    assert m["mar"] == pytest.approx(0.5)


def test_point_metrics_degenerate_cases_are_zero_not_nan():
    m = point_metrics([0, 0, 0], [0, 0, 0])
    assert m["precision"] == m["recall"] == m["f1"] == m["far"] == m["mar"] == 0.0


def test_flag_everything_baseline():
    labels = np.array([0] * 40 + [1] * 60)
    m = point_metrics(labels, np.ones(100, dtype=int))
    assert m["far"] == 1.0 and m["mar"] == 0.0 and m["f1"] == pytest.approx(2 * 0.6 / 1.6)


def test_event_metrics_delays_and_false_alarm_events():
    labels = [0, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 1, 1]
    preds = [1, 0, 0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 0]
    m = event_metrics(labels, preds)
    assert m["events"] == 3 and m["detected"] == 2
    assert m["delays"] == [2, 0]
    assert m["detection_rate"] == pytest.approx(2 / 3)
    assert m["false_alarm_events"] == 2  # the flags at 0 and 9


def test_runs_and_onsets_and_changepoints():
    flags = [0, 1, 1, 0, 1, 0, 0, 1]
    assert runs(flags) == [(1, 2), (4, 4), (7, 7)]
    assert np.flatnonzero(onsets(flags)).tolist() == [1, 4, 7]
    assert np.flatnonzero(changepoints_from_flags(flags)).tolist() == [1, 3, 4, 5, 7]
    assert merge_windows([(5, 9), (0, 2), (3, 4), (20, 21)]) == [(0, 9), (20, 21)]


def test_scaled_sigmoid_matches_the_paper():
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert scaled_sigmoid(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(1.0) == pytest.approx(-0.98661, abs=1e-5)
    assert scaled_sigmoid(3.0) == -1.0


def test_nab_perfect_null_and_late_detection():
    windows = [(10, 19), (50, 59)]
    n = 100
    perfect = np.zeros(n, dtype=bool)
    perfect[[10, 50]] = True
    assert nab_score(windows, perfect).score == pytest.approx(100.0)
    assert nab_score(windows, np.zeros(n, dtype=bool)).score == pytest.approx(0.0)
    late = np.zeros(n, dtype=bool)
    late[[19, 59]] = True  # last sample of each window: y = -1/10
    s = nab_score(windows, late)
    reward = scaled_sigmoid(-0.1) / scaled_sigmoid(-1.0)
    assert s.raw == pytest.approx(2 * reward)
    assert s.score == pytest.approx(100 * (2 * reward + 2) / 4)
    assert 0 < s.score < 100


def test_nab_false_positives_by_hand():
    windows = [(10, 19)]
    d = np.zeros(60, dtype=bool)
    d[[2, 10, 12, 29, 59]] = True
    s = nab_score(windows, d, "standard")
    # 2: before any window: -0.11. 10: window start, full reward 1 (12 adds nothing).
    # 29: 10 samples past the end, width 10 -> y = 10 / 9; 59: y >= 3 -> -0.11.
    expected = -0.11 + 1.0 + 0.11 * scaled_sigmoid(10 / 9) - 0.11
    assert s.raw == pytest.approx(expected)
    assert (s.detected, s.false_positives, s.null, s.perfect) == (1, 3, -1.0, 1.0)
    low_fn = nab_score(windows, np.zeros(60, dtype=bool), "reward_low_fn")
    assert low_fn.raw == -2.0


def test_nab_scores_add_over_files_before_normalising():
    a = NabScore(raw=1.0, null=-1.0, perfect=1.0, windows=1, detected=1, false_positives=0)
    b = NabScore(raw=-1.0, null=-1.0, perfect=1.0, windows=1, detected=0, false_positives=0)
    assert (a + b).score == pytest.approx(50.0)
    assert math.isnan(NabScore(0.0, 0.0, 0.0, 0, 0, 0).score)


def test_nab_windows_and_changepoint_windows():
    labels = np.zeros(100, dtype=int)
    labels[40:45] = 1
    assert nab_windows(labels) == [(40, 44)]
    assert nab_windows(labels, centred_points=True) == [(35, 44)]  # 10% of 100, centred
    cps = np.zeros(100, dtype=int)
    cps[[10, 30, 95]] = 1
    assert changepoint_windows(cps, width=60) == [(10, 90), (95, 99)]


def test_evaluate_flags_bundles_everything():
    labels = [0] * 10 + [1] * 10 + [0] * 10
    result = evaluate_flags(labels, [0] * 12 + [1] * 8 + [0] * 10)
    assert result["recall"] == pytest.approx(0.8) and result["delays"] == [2]
    assert 0 < result["nab"]["score"] < 100


def test_metrics_reject_bad_input():
    with pytest.raises(InputError):
        point_metrics([0, 1], [0, 1, 1])
    with pytest.raises(InputError):
        point_metrics([0, 2], [0, 1])
    with pytest.raises(InputError):
        nab_score([(0, 1)], [0, 1], profile="lenient")


# ------------------------------------------------------------------- edgernn evaluate
def labelled_csv(path, seed: int, onset: int = 900, length: int = 150) -> str:
    x = synthetic_signal(1300, seed=seed)
    labels = np.zeros(len(x), dtype=int)
    x[onset : onset + length, 1] += 15.0  # a level shift in channel b (std ~3.5)
    labels[onset : onset + length] = 1
    with open(path, "w") as fh:
        fh.write("a;b;c;anomaly\n")
        for row, y in zip(x, labels):
            fh.write(";".join(f"{v:.6f}" for v in row) + f";{y}\n")
    return str(path)


def test_evaluate_cli_end_to_end(tmp_path, capsys):
    files = [labelled_csv(tmp_path / f"f{i}.csv", seed=i) for i in range(2)]
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate", *files, "--train-rows", "600", "--hidden", "32", "--no-residual",
            "--out", str(out), "--json", "--alarm-every", "500",
        ]
    )  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    pooled = summary["pooled"]
    assert pooled["events"] == 2 and pooled["detected"] == 2
    assert pooled["far"] < 0.05 and pooled["recall"] > 0.01
    assert pooled["nab"]["windows"] == 2
    rows = (out / "f0_pred.csv").read_text().splitlines()
    assert rows[0] == "row,label,a_forecast,b_forecast,c_forecast,score,anomaly,onset"
    assert len(rows) == 1 + 700 and rows[1].startswith("600,0,")
    assert (out / "summary.json").exists()
    assert summary["detector"] == {"alarm_every": "500"}


def timed_csv(path, seed: int, onset: int = 900, length: int = 150) -> tuple[str, list[str]]:
    """A file with a time column and a level shift; returns (path, its timestamps)."""
    x = synthetic_signal(1300, seed=seed)
    x[onset : onset + length, 1] += 15.0
    write_csv(path, x)
    times = [line.split(",")[0] for line in open(path).read().splitlines()[1:]]
    return str(path), times


def test_evaluate_existing_model_with_labelled_windows(tmp_path, capsys):
    """--model: no training; labels from a JSON of timestamp windows, as public
    benchmarks give them; predictions carry the time column and the forecasts."""
    path, times = timed_csv(tmp_path / "series.csv", seed=2)
    train = str(tmp_path / "train.csv")
    write_csv(train, synthetic_signal(800, seed=9))
    assert main(["train", train, "--out", str(tmp_path / "run"), "--cell", "esn",
                 "--hidden", "32", "--no-residual"]) == 0  # fmt: skip
    assert main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "m.onnx")]) == 0
    capsys.readouterr()
    labels = tmp_path / "labels.json"
    key = f"{tmp_path.name}/series.csv"  # the end of the path names the file
    labels.write_text(json.dumps({key: [[times[900], times[1049]]]}))
    out = tmp_path / "eval"
    code = main(["evaluate", path, "--model", str(tmp_path / "m.onnx"), "--labels", str(labels),
                 "--train-rows", "300", "--out", str(out), "--json"])  # fmt: skip
    assert code == 0
    pooled = json.loads(capsys.readouterr().out)["pooled"]
    assert pooled["events"] == 1 and pooled["detected"] == 1 and pooled["tp"] + pooled["fn"] == 150
    rows = (out / "series_pred.csv").read_text().splitlines()
    assert rows[0].startswith("row,timestamp,label,a_forecast,")
    assert rows[1].split(",")[:3] == ["300", times[300], "0"]


def test_evaluate_cli_detector_config_file(tmp_path, capsys):
    f = labelled_csv(tmp_path / "n.csv", seed=5)
    config = tmp_path / "det.json"
    config.write_text('{"alarm_every": 300, "warmup": 599, "span": 10}')
    args = ["evaluate", f, "--train-rows", "600", "--hidden", "16", "--detector-config",
            str(config), "--json"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["detector"] == {"alarm_every": 300, "warmup": 599, "span": 10}
    assert summary["pooled"]["detected"] == 1


def test_evaluate_cli_table_output(tmp_path, capsys):
    f = labelled_csv(tmp_path / "g.csv", seed=3)
    assert main(["evaluate", f, "--train-rows", "600", "--hidden", "16"]) == 0
    text = capsys.readouterr().out
    assert "pooled" in text and "F1" in text


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--label", "nope"], "no column 'nope'"),
        (["--train-rows", "5000"], "leaves nothing to test"),
        (["--alarm-every", "3 fortnights"], "give samples (10000) or a duration"),
        (["--detector-config", "/nonexistent/d.json"], "cannot read the detector config"),
        (["--labels", "/nonexistent/l.json"], "cannot read"),
    ],
)
def test_evaluate_cli_errors_are_one_line(tmp_path, capsys, extra, message):
    f = labelled_csv(tmp_path / "h.csv", seed=4)
    args = ["evaluate", f, "--train-rows", "600", *extra]
    if "--train-rows" in extra:
        args = ["evaluate", f, *extra]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("edgernn: error:") and message in err[-1]


def test_evaluate_cli_rejects_non_binary_labels(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("a,b,anomaly\n" + "".join(f"{i},{i * 2},{i % 3}\n" for i in range(50)))
    assert main(["evaluate", str(path), "--train-rows", "20"]) == 1
    assert "must hold only 0 and 1" in capsys.readouterr().err
