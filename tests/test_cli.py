"""The command line as a user meets it: train -> export -> run -> info, and clear
one-line errors (no tracebacks) for everything a user can get wrong."""

import csv
import json

import numpy as np
import pytest
from conftest import run_cli, synthetic_signal, write_csv

QUICK = ["--hidden", "12", "--epochs", "2", "--window", "24", "--no-progress"]


def _assert_clean_error(proc, *needles):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("edgernn: error:"), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One CLI-trained and exported model shared by the tests below."""
    d = tmp_path_factory.mktemp("cli")
    data = write_csv(d / "train.csv", synthetic_signal(1200))
    proc = run_cli("train", data, "--out", str(d / "run"), "--cell", "gru", *QUICK)
    assert proc.returncode == 0, proc.stderr
    assert "persistence" in proc.stderr
    proc = run_cli("export", str(d / "run"), "-o", str(d / "model.onnx"))
    assert proc.returncode == 0, proc.stderr
    assert "parity" in proc.stdout
    return d


def test_run_csv_one_row_per_input_row(trained, tmp_path):
    inp = write_csv(tmp_path / "in.csv", synthetic_signal(200, seed=3))
    out = tmp_path / "out.csv"
    proc = run_cli("run", str(trained / "model.onnx"), "--csv", inp, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 200
    forecast_cols = ["timestamp", "a", "b", "c", "a_forecast", "b_forecast", "c_forecast"]
    assert list(rows[0]) == forecast_cols + ["score", "anomaly", "onset"]  # calibrated at export
    assert {r["anomaly"] for r in rows} <= {"0", "1"}
    # the same numbers as the Python API streaming the same file
    from edgernn.runtime import Model, read_csv
    from edgernn.runtime.detector import Detector
    from edgernn.runtime.monitor import Monitor

    model = Model(trained / "model.onnx")
    values = read_csv(inp, channels=model.channels).values
    # with the detector, the forecasts are the online head's (runtime/adapt.py)
    monitor = Monitor(model, Detector.from_meta(model))
    expected = np.array([monitor.process(x)["forecast"] for x in values])
    got = np.array([[float(r[f"{c}_forecast"]) for c in "abc"] for r in rows])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)
    trained_head = model.stream().run(values)
    assert np.abs(got - trained_head).max() > 1e-4  # the head did learn
    for flag in ("--no-detector", "--no-online-head"):  # the trained model's own forecasts
        proc = run_cli("run", str(trained / "model.onnx"), "--csv", inp, flag)
        lines = proc.stdout.splitlines()
        assert lines[0].split(",")[:7] == forecast_cols
        plain = np.array([[float(v) for v in line.split(",")[4:7]] for line in lines[1:]])
        np.testing.assert_allclose(plain, trained_head, rtol=1e-6, atol=1e-5)


def test_run_matches_columns_by_name_and_writes_jsonl(trained, tmp_path):
    values = synthetic_signal(50)
    inp = write_csv(tmp_path / "in.csv", values[:, [2, 0, 1]], names=("c", "a", "b"), delimiter=";")
    out = tmp_path / "out.jsonl"
    proc = run_cli("run", str(trained / "model.onnx"), "--csv", inp, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in open(out)]
    assert len(lines) == 50 and set(lines[0]["forecast"]) == {"a", "b", "c"}
    assert lines[0]["a"] == pytest.approx(values[0, 0], abs=1e-5)


def test_python_m_and_info(trained):
    proc = run_cli("info", str(trained / "model.onnx"))
    assert proc.returncode == 0, proc.stderr
    assert "gru" in proc.stdout and "parameters" in proc.stdout and "GRU" in proc.stdout
    proc = run_cli("info", str(trained / "model.onnx"), "--json")
    desc = json.loads(proc.stdout)
    assert desc["channels"] == ["a", "b", "c"] and desc["state"][0]["input"] == "h"


def test_skip_bad_rows(trained, tmp_path):
    inp = tmp_path / "bad.csv"
    inp.write_text("a,b,c\n1,50,0\n1,oops,0\n1,51,0\n,52,0\n1,53,0\n")
    proc = run_cli("run", str(trained / "model.onnx"), "--csv", str(inp))
    _assert_clean_error(proc, "row 3", "'b'")
    proc = run_cli("run", str(trained / "model.onnx"), "--csv", str(inp), "--skip-bad-rows")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.reader(proc.stdout.splitlines()))[1:]
    assert len(rows) == 5 and rows[1][-1] == "" and rows[0][-1] != ""
    assert "5 rows in, 3 forecasts, 2 skipped" in proc.stderr


def test_bad_inputs_give_one_line_errors(trained, tmp_path):
    model = str(trained / "model.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(np.random.default_rng(1).bytes(2000))
    _assert_clean_error(run_cli("info", str(junk)), "not a loadable ONNX model")
    _assert_clean_error(run_cli("run", str(junk), "--csv", "x.csv"), "not a loadable")
    two = write_csv(tmp_path / "two.csv", synthetic_signal(20)[:, :2], names=("a", "b"))
    _assert_clean_error(run_cli("run", model, "--csv", two), "no column(s) 'c'")
    nan = tmp_path / "nan.csv"
    nan.write_text("a,b,c\n1,2,3\nNaN,2,3\n")
    _assert_clean_error(run_cli("train", str(nan), "--out", str(tmp_path / "r")), "row 3", "'a'")
    _assert_clean_error(
        run_cli("run", model, "--csv", str(tmp_path / "missing.csv")), "cannot open"
    )
    _assert_clean_error(
        run_cli("export", str(tmp_path / "nothing"), "-o", "m.onnx"), "no checkpoint"
    )
    _assert_clean_error(run_cli("run", model, "--csv", two, "-o", str(tmp_path / "o.txt")))


def test_bidirectional_refused():
    _assert_clean_error(run_cli("train", "x.csv", "--out", "r", "--bidirectional"), "not causal")


def test_usage_errors_exit_2():
    proc = run_cli("train", "x.csv", "--out", "r", "--no-such-flag")
    assert proc.returncode == 2 and "unrecognized arguments" in proc.stderr
    assert run_cli().returncode == 2


def test_train_without_torch_names_the_extra(tmp_path, synthetic_csv):
    # Simulate the Pi's core install: torch cannot be imported.
    proc = run_cli(
        "train",
        synthetic_csv,
        "--out",
        str(tmp_path / "r"),
        pre="import sys; sys.modules['torch'] = None",
    )
    _assert_clean_error(proc, "[train]", "pip install")
    assert len(proc.stderr.strip().splitlines()) == 1
    # ...but an echo state network trains with numpy alone
    proc = run_cli(
        "train", synthetic_csv, "--out", str(tmp_path / "esn"), "--cell", "esn",
        pre="import sys; sys.modules['torch'] = None",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--lr", "-1"], "lr must be > 0"),
        (["--dropout", "1.5"], "dropout"),
        (["--val-frac", "0"], "val_frac"),
        (["--cell", "esn", "--washout", "-5"], "washout must be >= 0"),
        (["--clip-value", "0"], "clip_value must be > 0"),
    ],
)
def test_impossible_training_settings_are_one_line_errors(tmp_path, synthetic_csv, flags, needle):
    proc = run_cli("train", synthetic_csv, "--out", str(tmp_path / "r"), "--no-progress", *flags)
    _assert_clean_error(proc, needle)
