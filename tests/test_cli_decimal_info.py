"""`edgernn info DIR` says what the folder is; --decimal , reads European CSV exports in
train, run, evaluate and quantize."""

import csv
import json

import pytest
from conftest import run_cli, synthetic_signal


def _clean_error(proc, needle):
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("edgernn: error:")
    assert needle in proc.stderr, proc.stderr


def test_info_on_a_directory_says_what_it_is(tmp_path):
    _clean_error(run_cli("info", str(tmp_path)), f"{tmp_path} is a directory; give the model "
                 f"file (maybe {tmp_path / 'model.onnx'})")  # fmt: skip
    (tmp_path / "checkpoint.npz").write_bytes(b"")
    _clean_error(run_cli("info", str(tmp_path)), f"edgernn export {tmp_path} -o model.onnx")
    _clean_error(run_cli("info", str(tmp_path / "nope.onnx")), "no such model file")


def _european_csv(path, n, seed=0):
    values = synthetic_signal(n, seed=seed)
    lines = ["time;a;b;c"] + [
        f"2024-01-01 {i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d};"
        + ";".join(f"{v:.5f}".replace(".", ",") for v in row)
        for i, row in enumerate(values)
    ]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def european(tmp_path_factory):
    d = tmp_path_factory.mktemp("european")
    data = _european_csv(d / "data.csv", 600)
    proc = run_cli("train", data, "--out", str(d / "run"), "--cell", "esn", "--no-progress")
    _clean_error(proc, "--decimal ,")  # the plain reader fails and says how to read it
    proc = run_cli("train", data, "--out", str(d / "run"), "--cell", "esn", "--no-progress",
                   "--decimal", ",")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("export", str(d / "run"), "-o", str(d / "model.onnx"))
    assert proc.returncode == 0, proc.stderr
    return d


def test_run_reads_decimal_commas(european):
    proc = run_cli("run", str(european / "model.onnx"), "--csv", str(european / "data.csv"),
                   "--decimal", ",", "--no-detector")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(proc.stdout.splitlines()))
    assert len(rows) == 600 and float(rows[0]["b"]) == pytest.approx(55.0, abs=1.0)


def test_quantize_reads_decimal_commas(european, tmp_path):
    proc = run_cli("quantize", str(european / "model.onnx"), "-o", str(tmp_path / "q.onnx"),
                   "--eval", str(european / "data.csv"), "--decimal", ",", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "data.csv" in proc.stdout


def test_evaluate_reads_decimal_commas(tmp_path):
    text = open(_european_csv(tmp_path / "e.csv", 400)).read().splitlines()
    text = [text[0] + ";anomaly"] + [ln + (";1" if 350 <= i < 360 else ";0")
                                    for i, ln in enumerate(text[1:])]  # fmt: skip
    (tmp_path / "e.csv").write_text("\n".join(text) + "\n")
    proc = run_cli("evaluate", str(tmp_path / "e.csv"), "--train-rows", "250", "--json",
                   "--decimal", ",")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "pooled" in json.loads(proc.stdout)
