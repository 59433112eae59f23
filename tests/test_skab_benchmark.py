"""benchmarks/skab.py end to end on a small folder in SKAB's layout (synthetic, so the
test never needs the GPL data): one `<folder>_<file>.csv` per file with one row per
test row and a 0/1 `anomaly_pred`, a summary, and a sustained fault flagged."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")

ROOT = os.path.join(os.path.dirname(__file__), "..")
CHANNELS = (
    "Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature",
    "Thermocouple", "Voltage", "Volume Flow RateRMS",
)  # fmt: skip
ROWS, ONSET, END = 700, 500, 620


def write_experiment(path: str, seed: int) -> None:
    """A pump-like file: noisy channels around fixed levels, a valve closing on
    rows ONSET..END (flow down, pressure up), the thermocouple drifting throughout."""
    rng = np.random.default_rng(seed)
    t = np.arange(ROWS)
    levels = np.array([0.03, 0.04, 1.0, 0.1, 75.0, 25.0, 230.0, 32.0])
    noise = np.array([3e-4, 8e-4, 0.28, 0.25, 0.3, 0.02, 10.0, 0.4])
    x = levels + noise * rng.standard_normal((ROWS, 8))
    x[:, 5] += 0.002 * t  # normal drift, outside the novelty channels
    x[ONSET:END, 7] -= 4.0
    x[ONSET:END, 3] += 0.8
    label = ((t >= ONSET) & (t < END)).astype(int)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, delimiter=";")
        w.writerow(["datetime", *CHANNELS, "anomaly", "changepoint"])
        for i in range(ROWS):
            stamp = f"2020-03-09 10:{i // 60:02d}:{i % 60:02d}"
            w.writerow([stamp, *(f"{v:.6g}" for v in x[i]), label[i], int(i == ONSET)])


def test_skab_benchmark_writes_one_prediction_file_per_experiment(tmp_path):
    data = tmp_path / "skab"
    for folder, seed in (("valve1", 0), ("other", 1)):
        os.makedirs(data / folder)
        write_experiment(str(data / folder / "0.csv"), seed)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "skab.py"), str(data), "--out",
         str(out), "--epochs", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "edgernn (this run)" in proc.stdout and "Conv-AE" in proc.stdout
    for name in ("valve1_0.csv", "other_0.csv"):
        with open(out / name) as fh:
            rows = list(csv.DictReader(fh, delimiter=";"))
        assert len(rows) == ROWS - 400  # one per test row
        pred = np.array([int(r["anomaly_pred"]) for r in rows])
        assert set(pred) <= {0, 1}
        fault = pred[ONSET - 400 : END - 400]
        assert fault.mean() > 0.8  # a sustained fault stays flagged
        assert pred[: ONSET - 400].mean() < 0.1  # the thermocouple's drift does not alarm
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"] == 2 and summary["test_rows"] == 2 * (ROWS - 400)
    assert summary["detector"]["warmup"] == 399  # the training part warms the detector up


def test_skab_benchmark_says_so_when_the_folder_is_not_skab(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "skab.py"), str(tmp_path), "--out",
         str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "no labelled CSVs" in proc.stderr and "Traceback" not in proc.stderr
