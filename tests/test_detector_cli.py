"""`edgernn run` with the detector's two flags: the budget knob and a config file; alerts
on stderr carry the time column's timestamps; bad options are one-line errors."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import make_model, synthetic_signal, write_csv

from edgernn.cli import main


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from edgernn.export.onnx_export import export_onnx

    path = str(tmp_path_factory.mktemp("m") / "m.onnx")
    export_onnx(make_model("gru", hidden=8, seed=1), path, error_scale=[0.5, 2.0, 0.5])
    return path


def _input(tmp_path) -> str:
    x = synthetic_signal(600, seed=2)
    x[450:455, 1] += 60.0  # an obvious fault on channel ch1
    return write_csv(tmp_path / "in.csv", x, names=("ch0", "ch1", "ch2"))


def test_run_budget_and_config_file(model_path, tmp_path, capsys):
    inp, out = _input(tmp_path), tmp_path / "out.csv"
    config = tmp_path / "det.json"
    config.write_text(json.dumps({"warmup": 150, "holdoff": 3}))
    args = ["run", model_path, "--csv", inp, "-o", str(out), "--alarm-every", "500",
            "--detector-config", str(config)]  # fmt: skip
    assert main(args) == 0
    rows = list(csv.DictReader(open(out)))
    assert list(rows[0])[-3:] == ["score", "anomaly", "onset"]
    assert all(r["score"] == "" or float(r["score"]) == 0.0 for r in rows[:150])  # warm-up
    assert rows[450]["anomaly"] == "1" and rows[450]["onset"] == "1"
    err = capsys.readouterr().err
    opened = [line for line in err.splitlines() if "opened at" in line]
    assert any(rows[450]["timestamp"] in line and "ch1" in line for line in opened)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--alarm-every", "often"], "give samples (10000) or a duration"),
        (["--detector-config", "{missing}"], "cannot read the detector config"),
    ],
)
def test_run_bad_detector_options_are_one_line_errors(model_path, tmp_path, capsys, extra, message):
    inp = _input(tmp_path)
    extra = [e.replace("{missing}", str(tmp_path / "nope.json")) for e in extra]
    assert main(["run", model_path, "--csv", inp, "-o", str(tmp_path / "o.csv"), *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("edgernn: error:") and message in err[-1]
