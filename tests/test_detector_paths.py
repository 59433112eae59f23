"""The detector sees the same numbers whatever the source: a CSV file streamed by
`run_csv` and the same samples sent as binary serial frames (split at arbitrary byte
boundaries, decoded by the firmware bridge) and processed by the Monitor give
identical scores and flags."""

from __future__ import annotations

import csv

import numpy as np
from conftest import make_model, synthetic_signal

from edgernn.firmware_bridge.framing import Decoder, Samples
from edgernn.firmware_bridge.protocol import encode_data
from edgernn.runtime.csvrun import run_csv
from edgernn.runtime.detector import Detector
from edgernn.runtime.model import Model
from edgernn.runtime.monitor import Monitor


def test_csv_and_serial_paths_give_identical_scores(tmp_path):
    from edgernn.export.onnx_export import export_onnx

    torch_model = make_model("gru", hidden=8, seed=3)
    path = str(tmp_path / "m.onnx")
    export_onnx(torch_model, path)
    model = Model(path)

    x = synthetic_signal(400, seed=5).astype(np.float32)
    x[250:260, 1] += 40.0  # something to flag
    csv_path = tmp_path / "in.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(model.channels)
        writer.writerows([[repr(float(v)) for v in row] for row in x])  # exact float32 values

    def detector():
        return Detector(channels=model.channels, warmup=30, alarm_every=200)

    out_path = str(tmp_path / "out.csv")
    run_csv(model, str(csv_path), out_path, detector=detector())
    with open(out_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    csv_scores = [float(r["score"]) if r["score"] else None for r in rows]
    csv_flags = [int(r["anomaly"]) if r["anomaly"] else 0 for r in rows]

    # Serial: 4 samples a frame, bytes delivered in ragged chunks.
    wire = b"".join(encode_data(i, 1000 * i, x[i : i + 4]) for i in range(0, len(x), 4))
    decoder = Decoder(mode="binary", channels=model.channels)
    monitor = Monitor(model, detector=detector())
    serial_scores, serial_flags = [], []
    rng = np.random.default_rng(0)
    pos = 0
    while pos < len(wire):
        step = int(rng.integers(1, 40))
        for event in decoder.feed(wire[pos : pos + step]):
            if isinstance(event, Samples):
                for sample in event.values:
                    record = monitor.process(sample)
                    serial_scores.append(record.get("score"))
                    serial_flags.append(int(record.get("anomaly") or 0))
        pos += step

    assert len(serial_scores) == len(csv_scores) == len(x)
    assert serial_flags == csv_flags
    assert any(csv_flags[250:270])
    for a, b in zip(csv_scores, serial_scores):
        if a is None or b is None:
            assert a is None and b is None
        else:  # the CSV writer keeps 7 significant digits
            assert abs(a - b) <= 1e-6 * max(1.0, abs(b))
