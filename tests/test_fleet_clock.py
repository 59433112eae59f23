"""The fleet hands the detector a device's timestamps only when they are a clock it
can read: epoch seconds, text, or epoch milliseconds (converted); one device's odd clock
never stops the run."""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import synthetic_signal, write_csv


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    pytest.importorskip("torch")
    from edgernn.export import export_run
    from edgernn.train.config import TrainConfig
    from edgernn.train.fit import train_files

    folder = tmp_path_factory.mktemp("clock-model")
    csv = write_csv(folder / "train.csv", synthetic_signal(1200))
    train_files([csv], TrainConfig(cell="esn", hidden=16, progress=False), str(folder / "run"))
    export_run(str(folder / "run"), str(folder / "m.onnx"))
    return str(folder / "m.onnx")


def test_device_clocks_milliseconds_and_nonsense(model_path):
    from edgernn.cli import build_parser, make_detector
    from edgernn.runtime import Model
    from edgernn.runtime.fleet import Fleet

    model = Model(model_path)
    args = build_parser().parse_args(["run", model_path, "--mqtt", "mqtt://h/s/+"])
    assert make_detector(model, args) is not None, "the test needs a calibrated model"
    notes: list[str] = []
    fleet = Fleet(model, lambda: make_detector(model, args), note=notes.append)
    x = synthetic_signal(300).astype(np.float32)
    clocks = {"ms": lambda i: 1733040000250 + 10 * i, "s": lambda i: 1733040000.25 + i / 100,
              "text": lambda i: f"2024-06-01T12:00:{i % 60:02d}", "huge": lambda i: 1e300}
    for i in range(300):
        for name, clock in clocks.items():
            fleet.receive(fleet.device(name), x[i], i, clock(i), time.perf_counter())
        list(fleet.drain())  # the detector crashed on epoch ms after warm-up before
    assert all(d.counters.processed == 300 for d in fleet.devices.values())
    assert len(notes) == 2, notes  # once per odd device, not per sample
    assert "'ms'" in notes[0] and "milliseconds" in notes[0]
    assert "'huge'" in notes[1] and "not used by the detector" in notes[1]
