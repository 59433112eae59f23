"""The live run's JSON lines (firmware_bridge/jsonline.py) are RecordWriter's bytes, and
the inline port reader hands a lost port to its thread and back."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest

from edgernn.firmware_bridge.jsonline import json_float, json_line
from edgernn.runtime.output import RecordWriter, _jsonable


def reference(record) -> str:
    return json.dumps(_jsonable(record), separators=(",", ":")) + "\n"


def test_float_tokens_equal_recordwriter_over_every_float32_exponent():
    rng = np.random.default_rng(16)
    bits = rng.integers(0, 2**32, 60_000, dtype=np.uint64).astype(np.uint32)
    # every exponent field, each with a few mantissas (powers of two included)
    grid = (np.arange(256, dtype=np.uint32)[:, None] << 23) | np.array(
        [0, 1, 0x400000, 0x7FFFFF], dtype=np.uint32
    )
    values = np.concatenate([bits, grid.ravel(), grid.ravel() | 0x80000000]).view(np.float32)
    extra = [1e8, 1e-4, 9.999999e-5, 1e16, 1e39, -1e39, float("nan"), float("inf"), 0.0, -0.0]
    f64 = (rng.standard_normal(5000) * 10.0 ** rng.integers(-12, 12, 5000)).tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # float32 overflow, as RecordWriter's
        for v in values.tolist() + extra + f64 + list(values[:50]) + [np.float64(2.5)]:
            assert json_float(v) == json.dumps(_jsonable(v)), v


def test_records_equal_recordwriter_lines():
    records = [
        {"seq": 0, "time_us": 0, "a": 31.257301, "ü": -0.0, "forecast": {"a": 1.5, "ü": 2.0},
         "score": None, "anomaly": 0, "onset": 0},
        {"seq": 4294967295, "a": float("nan"), "forecast": {"a": float("inf"), "ü": 1e-7},
         "score": np.float64(3.14159), "anomaly": 1, "onset": 1, "threshold": 4.0,
         "event_opened": {"id": 3, "top_channels": ["a", "ü"], "peak_score": np.float32(7.5)},
         "gap": 2, "reset": 1, "flag": True, "note": 'say "hi"\n'},
        {"seq": 1, "values": [1.0, 2.5, None], "forecast": {}, 3: "int key"},
    ]  # fmt: skip
    for record in records:
        assert json_line(record) == reference(record)
    out = io.StringIO()
    writer = RecordWriter(None, ["a"], fmt="jsonl")
    writer._fh = out
    for record in records:
        writer.write(record)
    assert out.getvalue() == "".join(json_line(r) for r in records)


def test_live_run_lines_are_recordwriter_lines_and_every_sample_is_accounted(tmp_path):
    """A serial run with the detector on and faults, read inline on the run's thread: each
    line is RecordWriter's rendering of its own content, and every sample is accounted."""
    pytest.importorskip("serial")
    pytest.importorskip("torch")
    from conftest import parse_run_args as parse
    from test_bridge_live import NAMES, unplug_when_done

    from edgernn.export.onnx_export import export_onnx
    from edgernn.firmware_bridge.emulator import Emulator, Faults
    from edgernn.firmware_bridge.live import run_serial
    from edgernn.runtime.detector import Detector
    from edgernn.runtime.model import Model
    from edgernn.train.model import Forecaster, ModelConfig

    net = Forecaster(ModelConfig(n_channels=8, cell="gru", hidden=8, channels=NAMES))
    net.set_normalisation(np.full(8, 30.0), np.full(8, 10.0))
    export_onnx(net, tmp_path / "m.onnx")
    model = Model(tmp_path / "m.onnx")
    faults = Faults.parse("garbage=0.01,corrupt=0.01,drop=0.01")
    emu = Emulator(rate=1000, channels=8, mode="binary", faults=faults, seed=7, duration=1.5,
                   record=True).start()  # fmt: skip
    unplug_when_done(emu)
    out, summary = tmp_path / "out.jsonl", tmp_path / "s.json"
    args = parse("--port", emu.path, "--no-reconnect", "-o", str(out), "--summary-json",
                 str(summary))  # fmt: skip
    detector = Detector.from_meta(model.meta, alarm_every=100)
    assert run_serial(args, model, detector=detector) == 0
    lines = out.read_text().splitlines(keepends=True)
    s = json.loads(summary.read_text())
    assert len(lines) == s["forecasts"] == s["samples"] == emu.truth.sent > 1000
    assert s["unaccounted"] == 0 and s["rejected"] > 0 and s["missing"] > 0
    assert [json.loads(line)["seq"] for line in lines] == emu.sent_seqs
    assert any(json.loads(line)["score"] is not None for line in lines)
    for line in lines:
        assert line == reference(json.loads(line))


def _record(channels, seq, time_us, x, f, rest, gap, reset):
    """What LiveRun._process builds."""
    record = {"seq": seq}
    if time_us is not None:
        record["time_us"] = time_us
    record.update(zip(channels, x.tolist()))
    record["forecast"] = dict(zip(channels, f.tolist()))
    record.update(rest)
    if gap:
        record["gap"] = gap
    if reset:
        record["reset"] = 1
    return record


def test_record_lines_from_arrays_equal_json_line():
    from edgernn.firmware_bridge.jsonline import RecordLines

    rng = np.random.default_rng(5)
    rests = [{}, {"score": None, "anomaly": 0, "onset": 0},
             {"score": 2.5, "anomaly": 1, "onset": 1, "threshold": np.float64(4.1),
              "event_opened": {"id": 1, "top_channels": ["a"]}}]  # fmt: skip
    cases = [(c, fast) for c in (["a", "b", "ü"], ["seq", "b", "c"], ["a", "score", "c"], ["x"])
             for fast in (True, False)]  # fmt: skip
    for channels, fast in cases:
        lines = RecordLines(channels)
        if not fast:
            lines._tokens = None  # numpy's digits (no fast-call extension here)
        for k in range(300):
            n = len(channels)
            x = (rng.standard_normal(n) * 10.0 ** rng.integers(-9, 12, n)).astype(np.float32)
            f = (rng.standard_normal(n) * 10.0 ** rng.integers(-9, 12, n)).astype(np.float32)
            if k % 7 == 0:
                f[0] = np.nan
            rest = rests[k % 3]
            args = (k, None if k % 5 == 0 else 1000 * k, x, f, rest, k % 4, k % 6 == 0)
            line = lines.line(*args)
            record = _record(channels, *args)
            if line is None:
                assert not lines.ok or set(channels) & rest.keys()
            else:
                assert line == json_line(record) == reference(record)
    assert RecordLines(["a", "b"]).line(0, None, np.zeros(2), np.zeros(2, np.float32), {}, 0,
                                        False) is None  # fmt: skip
