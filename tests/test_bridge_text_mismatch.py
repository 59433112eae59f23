"""A text-mode device whose lines do not fit the model's channels (other names, another
count), over a real pty: said once, loudly, on stderr (what was expected, what arrived)
and counted as rejected 'channels', in auto and text mode."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from conftest import parse_run_args as parse

from edgernn.firmware_bridge.emulator import Emulator
from edgernn.firmware_bridge.framing import Decoder, TextMismatch
from edgernn.firmware_bridge.live import run_serial
from edgernn.runtime.model import Model

NAMES = ["temp", "hum", "pres"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Model:
    torch = pytest.importorskip("torch")
    from edgernn.export.onnx_export import export_onnx
    from edgernn.train.model import Forecaster, ModelConfig

    torch.manual_seed(0)
    net = Forecaster(ModelConfig(n_channels=3, cell="gru", hidden=8, layers=1, channels=NAMES))
    path = tmp_path_factory.mktemp("model") / "m3.onnx"
    export_onnx(net, path)
    return Model(path)


def _run(model, tmp_path, emu: Emulator, *flags: str) -> dict:
    emu.start()

    def unplug():
        while emu.truth.sent < 60 and emu.error is None:
            time.sleep(0.02)
        time.sleep(0.2)
        emu.unplug()

    threading.Thread(target=unplug, daemon=True).start()
    summary = tmp_path / "summary.json"
    args = parse("--port", emu.path, "--no-reconnect", "-o", str(tmp_path / "out.jsonl"),
                 "--summary-json", str(summary), *flags)  # fmt: skip
    assert run_serial(args, model) == 0
    emu.stop()
    return json.loads(summary.read_text())


@pytest.mark.parametrize("mode", ["auto", "text"])
def test_other_names_are_said_once_and_counted(model, tmp_path, capsys, mode):
    emu = Emulator(rate=200, channels=2, mode="text", names=["temperature", "humidity"],
                   named_text=True, seed=1)  # fmt: skip
    s = _run(model, tmp_path, emu, "--mode", mode)
    err = capsys.readouterr().err
    said = [ln for ln in err.splitlines() if "WARNING" in ln]
    assert len(said) == 1, err
    assert "name temperature, humidity but the model expects temp, hum, pres" in said[0]
    assert s["rejected_by"].get("channels", 0) >= 50 and s["samples"] == 0


def test_too_few_values_are_said_once_and_counted(model, tmp_path, capsys):
    emu = Emulator(rate=200, channels=2, mode="text", seed=2)
    s = _run(model, tmp_path, emu)
    err = capsys.readouterr().err
    said = [ln for ln in err.splitlines() if "WARNING" in ln]
    assert len(said) == 1, err
    assert "sends 2 values per line but the model expects 3 (temp, hum, pres)" in said[0]
    assert s["rejected_by"].get("channels", 0) >= 50


def test_decoder_tells_each_mismatch_once():
    dec = Decoder("text", NAMES)
    events = dec.feed(b"1,2\n1,2\ntemp:1 hum:2\n1,2,3\n1,2\n")
    told = [e.message for e in events if isinstance(e, TextMismatch)]
    assert len(told) == 2 and dec.counters.rejected_by == {"channels": 4}
    assert dec.counters.samples == 1
    np.testing.assert_array_equal(events[-1].values, [[1, 2, 3]])
