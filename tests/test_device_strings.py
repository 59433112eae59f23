"""Device-supplied text never reaches the terminal raw, and the framing's length limits
give the same verdict however the bytes are split across reads."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from conftest import ScriptedDevice
from conftest import parse_run_args as parse

from edgernn.errors import EdgernnError
from edgernn.firmware_bridge import commands
from edgernn.firmware_bridge import protocol as P
from edgernn.firmware_bridge.framing import MAX_LINE, Decoder, Samples
from edgernn.firmware_bridge.live import run_serial
from edgernn.firmware_bridge.port import PortInfo
from edgernn.runtime.liveview import LiveView, Snapshot, printable
from edgernn.runtime.model import Model

HOSTILE = "ch0\x1b]0;pwned\x07\x1b[2J\r\nedgernn: fake\u202e"
RAW = ("\x1b", "\x07", "\r", "\u202e")


def _clean(text: str) -> bool:
    return not any(c in text for c in RAW)


def test_printable_escapes_controls_and_keeps_ordinary_text():
    assert printable("pump flow °C µs") == "pump flow °C µs"
    out = printable(HOSTILE)
    assert _clean(out) and "\n" not in out
    assert out.startswith("ch0\\x1b]0;pwned\\x07") and "\\u202e" in out


@pytest.fixture(scope="module")
def model(exported_models) -> Model:
    return Model(exported_models[("gru", 1)][1])


def test_hostile_channel_names_in_a_hello_are_escaped_on_stderr(model, tmp_path, capsys):
    names = ["ch0", "ch1", "ch2", HOSTILE[:40]]  # maps by name; the extra one is shown
    wire = P.encode_hello(9, 100.0, names)
    for s in range(20):
        wire += P.encode_data(s, s, np.ones(4, np.float32))
    dev = ScriptedDevice(wire, piece=None)
    args = parse("--port", dev.path, "--no-reconnect", "-o", str(tmp_path / "o.jsonl"))
    assert run_serial(args, model) == 0
    err = capsys.readouterr().err
    assert "device session 00000009" in err and "\\x1b]0;pwned\\x07" in err
    assert _clean(err)


def test_a_channel_mismatch_error_escapes_the_device_names(model, tmp_path, capsys):
    wire = P.encode_hello(3, 100.0, ["\x1b[31mred", "\x07"])
    dev = ScriptedDevice(wire + P.encode_data(0, 0, np.ones(2, np.float32)), piece=None)
    args = parse("--port", dev.path, "--no-reconnect")
    with pytest.raises(EdgernnError) as e:
        run_serial(args, model)
    assert "\\x1b[31mred" in str(e.value) and _clean(str(e.value))
    assert _clean(capsys.readouterr().err)


def test_live_view_escapes_names_from_the_model_or_device():
    class Tty(list):
        def write(self, s):
            self.append(s)

        def flush(self):
            pass

        def isatty(self):
            return True

    out = Tty()
    view = LiveView(out)
    view.show(Snapshot(scores={HOSTILE: 1.0}, open_alert=f"#1 ({HOSTILE})"), force=True)
    text = "".join(out)
    body = text.replace("\x1b[2K", "")  # the view's own escapes, one per line
    assert _clean(body) and "\\x1b]0;pwned" in body


def test_ports_table_escapes_usb_descriptors(monkeypatch, capsys):
    port = PortInfo("/dev/ttyACM0", description=HOSTILE, vid=0x2341, pid=0x43,
                    serial_number="\x1b[8m", hwid="USB")  # fmt: skip
    monkeypatch.setattr("edgernn.firmware_bridge.port.list_ports", lambda include_empty: [port])
    assert commands.cmd_ports(argparse.Namespace(all=False, json=False)) == 0
    out = capsys.readouterr().out
    assert "2341:0043" in out and _clean(out) and "\\x1b[8m" in out


# -- the same bytes in every chunking ---------------------------------------------------
def _text_stream() -> bytes:
    good = b"1.5,2.5,3.5\n"
    exact = b"1," + b"0" * (MAX_LINE - 4) + b",3"  # MAX_LINE bytes: a valid line
    over = exact + b"0"  # one byte too long: rejected whether whole or split
    return good * 3 + exact + b"\n" + good + over + b"\n" + good + over * 3 + b"\n" + good * 2


def _binary_stream() -> bytes:
    wire = P.encode_hello(1, 100.0, ["a", "b", "c"])
    for s in range(6):
        wire += P.encode_data(s, s, np.full(3, s, np.float32))
        if s in (2, 4):
            wire += bytes(range(1, 256)) * 17 + b"\x00"  # 4335 bytes without a 0: overlong
    return wire


def _chunkings(n: int, seed: int = 0):
    for size in (1, 2, 3, 7, 64, 1000, MAX_LINE - 1, MAX_LINE, MAX_LINE + 1, n):
        yield f"size {size}", list(range(0, n, size)) + [n]
    rng = np.random.default_rng(seed)
    for k in range(40):
        cuts = np.sort(rng.choice(np.arange(1, n), size=int(rng.integers(1, 30)), replace=False))
        yield f"random {k}", [0, *cuts.tolist(), n]


def _feed(mode: str, data: bytes, bounds: list[int]):
    dec = Decoder(mode, ["a", "b", "c"])
    samples = []
    for lo, hi in zip(bounds, bounds[1:]):
        for event in dec.feed(data[lo:hi]):
            if isinstance(event, Samples):
                samples.extend(event.values.tolist())
    c = dec.counters.snapshot()
    return samples, {k: c[k] for k in ("samples", "rejected", "rejected_by", "discarded_bytes")}


@pytest.mark.parametrize("mode", ["text", "binary", "auto"])
def test_length_limits_do_not_depend_on_how_reads_split_the_bytes(mode):
    data = _binary_stream() if mode == "binary" else _text_stream()
    whole = _feed(mode, data, [0, len(data)])
    if mode != "binary":
        assert whole[1]["rejected_by"] == {"overlong": 2} and whole[1]["samples"] == 8
    else:
        assert whole[1]["rejected_by"] == {"overlong": 2} and whole[1]["samples"] == 6
    for name, bounds in _chunkings(len(data)):
        assert _feed(mode, data, bounds) == whole, name
