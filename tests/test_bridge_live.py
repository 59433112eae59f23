"""The live serial run over real pseudo-terminals (no mocks of the serial layer):
1 kHz x 8 channels in both modes with injected faults, gap policies, disconnects
with and without reconnect, the state file across a killed and restarted run, and
the `edgernn ports` / `edgernn emulate` commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ScriptedDevice
from conftest import parse_run_args as parse

from edgernn.errors import EdgernnError
from edgernn.firmware_bridge import protocol as P
from edgernn.firmware_bridge.emulator import DEFAULT_NAMES, Emulator, Faults
from edgernn.firmware_bridge.framing import Samples
from edgernn.firmware_bridge.live import run_serial
from edgernn.firmware_bridge.port import PortError, SampleQueue
from edgernn.runtime.model import Model
from edgernn.runtime.monitor import Monitor

NAMES = list(DEFAULT_NAMES)  # the emulator's 8 channel names
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    torch = pytest.importorskip("torch")
    from edgernn.export.onnx_export import export_onnx
    from edgernn.train.model import Forecaster, ModelConfig

    torch.manual_seed(0)
    net = Forecaster(ModelConfig(n_channels=8, cell="lstm", hidden=16, layers=1, channels=NAMES))
    net.set_normalisation(np.full(8, 30.0), np.full(8, 10.0))
    path = tmp_path_factory.mktemp("model") / "m8.onnx"
    export_onnx(net, path)
    return str(path)


@pytest.fixture(scope="module")
def model(model_path) -> Model:
    return Model(model_path)


def read_jsonl(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def unplug_when_done(emu: Emulator) -> threading.Thread:
    """After the emulator's last frame has been read, pull the plug (ends the run)."""

    def go():
        emu.join()
        emu.drain()  # the reader took every byte; what it decodes is queued before the EOF
        emu.unplug()

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def replay(model: Model, records: list[dict], gap_fill: int = 4) -> np.ndarray:
    """Forecasts of a Monitor fed the recorded inputs, resetting and filling where the
    records say the live run did: what the live run must have computed."""
    mon = Monitor(model)
    out = []
    for r in records:
        if r.get("reset"):
            mon.reset()
        elif r.get("gap"):
            assert r["gap"] <= gap_fill
            for _ in range(r["gap"]):
                mon.process(mon.last_forecast, imputed=True)
        x = np.array([r[c] for c in NAMES], dtype=np.float32)
        out.append(mon.process(x)["forecast"])
    return np.array(out)


def forecasts(records: list[dict]) -> np.ndarray:
    return np.array([[r["forecast"][c] for c in NAMES] for r in records])


def inputs(records: list[dict]) -> np.ndarray:
    return np.array([[r[c] for c in NAMES] for r in records], dtype=np.float32)


# -- 1 kHz x 8 channels, faults, exact accounting ----------------------------------------
def test_binary_1khz_8ch_every_sample_one_forecast_faults_counted(model, tmp_path, capsys):
    faults = Faults.parse("garbage=0.01,corrupt=0.01,drop=0.01,overrun=0.005,reboot=1.2")
    emu = Emulator(rate=1000, channels=8, mode="binary", faults=faults, seed=3, duration=2.5,
                   record=True).start()  # fmt: skip
    unplug_when_done(emu)
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    args = parse("--port", emu.path, "--no-reconnect", "-o", str(out), "--summary-json",
                 str(summary))  # fmt: skip
    assert run_serial(args, model) == 0
    records, s, t = read_jsonl(out), json.loads(summary.read_text()), emu.truth

    # Every intact frame's sample got exactly one forecast, in order, values intact.
    assert [r["seq"] for r in records] == emu.sent_seqs
    np.testing.assert_allclose(inputs(records), np.concatenate(emu.sent_values), rtol=1e-6)
    assert t.garbage > 5 and t.corrupted > 5 and t.dropped > 5 and t.overrun > 3
    assert s["samples"] == s["forecasts"] == t.sent == len(records)
    assert s["rejected"] == t.garbage + t.corrupted
    assert s["missing"] == t.missing
    assert s["device_dropped"] == t.device_dropped
    assert s["reboots"] == t.reboots == 1 and s["device_resets"] == 1
    assert s["unaccounted"] == 0 and s["overflow"] == 0 and s["invalid"] == 0
    assert s["filled"] == t.missing - sum(r.get("gap", 0) for r in records if r.get("reset"))
    # What the live run computed is what a Monitor computes for the same decisions.
    np.testing.assert_allclose(forecasts(records), replay(model, records), rtol=2e-6, atol=1e-4)
    assert [r["time_us"] for r in records[:3]] == [0, 1000, 2000]
    err = capsys.readouterr().err
    assert "binary mode detected" in err and "device rebooted" in err and "0 unaccounted" in err


def test_text_1khz_8ch_every_line_one_forecast_faults_counted(model, tmp_path, capsys):
    faults = Faults.parse("garbage=0.01,corrupt=0.01,drop=0.01")
    emu = Emulator(rate=1000, channels=8, mode="text", faults=faults, seed=4, duration=2.5,
                   record=True, named_text=False).start()  # fmt: skip
    unplug_when_done(emu)
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    args = parse("--port", emu.path, "--no-reconnect", "-o", str(out), "--summary-json",
                 str(summary))  # fmt: skip
    assert run_serial(args, model) == 0
    records, s, t = read_jsonl(out), json.loads(summary.read_text()), emu.truth
    np.testing.assert_allclose(inputs(records), np.concatenate(emu.sent_values), rtol=1e-6)
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert t.garbage > 5 and t.corrupted > 5 and t.dropped > 5
    assert s["samples"] == s["forecasts"] == t.sent == len(records)
    assert s["rejected"] == t.garbage + t.corrupted
    assert s["unaccounted"] == 0 and s["mode"] == "text"
    np.testing.assert_allclose(forecasts(records), replay(model, records), rtol=2e-6, atol=1e-4)


# -- a scripted device for exact scenarios -----------------------------------------------
def gappy_wire(gaps: dict[int, int], n: int = 40, nan_at: int = -1) -> tuple[bytes, np.ndarray]:
    """Frames seq 0.., skipping gaps[at] sequence numbers before frame `at`."""
    rng = np.random.default_rng(0)
    values = (30 + 10 * rng.standard_normal((n, 8))).astype(np.float32)
    if nan_at >= 0:
        values[nan_at, 2] = np.nan
    wire, seq = P.encode_hello(1, 100.0, NAMES), 0
    for i in range(n):
        seq += gaps.get(i, 0)
        wire += P.encode_data(seq, seq * 10000, values[i])
        seq += 1
    return wire, values


@pytest.mark.parametrize(
    "policy, gap, expect",
    [
        ("fill", 3, {"gap": 3}),
        ("fill", 5, {"gap": 5, "reset": 1}),  # beyond --gap-fill 4
        ("reset", 1, {"gap": 1, "reset": 1}),
        ("continue", 3, {"gap": 3}),
    ],
)
def test_gap_policies(model, tmp_path, policy, gap, expect):
    wire, values = gappy_wire({20: gap})
    dev = ScriptedDevice(wire)
    out, summary = tmp_path / "out.jsonl", tmp_path / "s.json"
    args = parse("--port", dev.path, "--no-reconnect", "--on-gap", policy, "-o", str(out),
                 "--summary-json", str(summary))  # fmt: skip
    assert run_serial(args, model) == 0
    records, s = read_jsonl(out), json.loads(summary.read_text())
    assert len(records) == 40 and s["missing"] == gap
    assert {k: records[20][k] for k in ("gap", "reset") if k in records[20]} == expect
    assert all("gap" not in r for i, r in enumerate(records) if i != 20)
    mon = Monitor(model)
    for i, x in enumerate(values):
        if i == 20 and "reset" in expect:
            mon.reset()
        elif i == 20 and policy == "fill":
            for _ in range(gap):
                mon.process(mon.last_forecast, imputed=True)
        np.testing.assert_allclose(
            forecasts([records[i]])[0], mon.process(x)["forecast"], rtol=2e-6, atol=1e-4
        )
    assert s["filled"] == (gap if expect == {"gap": gap} and policy == "fill" else 0)


def test_non_finite_samples_are_counted_and_handled_as_a_gap(model, tmp_path):
    wire, _ = gappy_wire({}, nan_at=10)
    dev = ScriptedDevice(wire)
    out, summary = tmp_path / "out.csv", tmp_path / "s.json"
    args = parse("--port", dev.path, "--no-reconnect", "-o", str(out), "--summary-json",
                 str(summary))  # fmt: skip
    assert run_serial(args, model) == 0
    s = json.loads(summary.read_text())
    assert (s["samples"], s["forecasts"], s["invalid"], s["filled"]) == (40, 39, 1, 1)
    lines = out.read_text().splitlines()
    header = lines[0].split(",")
    assert header[:2] == ["seq", "time_us"] and "temperature_forecast" in header
    assert len(lines) == 40 and lines[11].split(",")[header.index("gap")] == "1"


def test_channel_mismatch_is_a_one_line_error(model):
    dev = ScriptedDevice(P.encode_hello(1, 10.0, ["a", "b"]) + P.encode_data(0, 0, [[1, 2]]))
    with pytest.raises(EdgernnError, match=r"sends 2 channels \(a, b\) but the model expects 8"):
        run_serial(parse("--port", dev.path, "--no-reconnect"), model)


def test_missing_port_is_a_one_line_error(model, tmp_path):
    with pytest.raises(PortError, match="cannot open"):
        run_serial(parse("--port", str(tmp_path / "nope")), model)
    with pytest.raises(PortError, match="no serial port matches usb:1234:5678"):
        run_serial(parse("--port", "usb:1234:5678"), model)


# -- disconnects ---------------------------------------------------------------------------
def test_unplug_without_reconnect_ends_cleanly(model, tmp_path, capsys):
    emu = Emulator(rate=500, channels=8, seed=5).start()

    def pull():
        time.sleep(0.6)
        emu.unplug()

    threading.Thread(target=pull, daemon=True).start()
    out = tmp_path / "out.jsonl"
    t0 = time.monotonic()
    assert run_serial(parse("--port", emu.path, "--no-reconnect", "-o", str(out)), model) == 0
    assert time.monotonic() - t0 < 5
    emu.stop()
    err = capsys.readouterr().err
    assert "disconnected (device went away): ending the run (--no-reconnect)" in err
    assert "serial run on" in err and "0 unaccounted" in err
    assert len(read_jsonl(out)) > 50


def test_unplug_and_replug_reconnects_and_counts_the_outage(model, tmp_path, capsys):
    link = str(tmp_path / "ttyEMU")
    faults = Faults.parse("disconnect=0.6,down=0.3")
    emu = Emulator(rate=500, channels=8, faults=faults, seed=6, duration=1.5, link=link,
                   record=True).start()  # fmt: skip
    stop = threading.Event()

    def finish():
        emu.join()
        emu.drain()
        time.sleep(0.2)  # decoded and queued: a stop now still forecasts all of it
        stop.set()

    threading.Thread(target=finish, daemon=True).start()
    out, summary = tmp_path / "out.jsonl", tmp_path / "s.json"
    args = parse("--port", link, "-o", str(out), "--summary-json", str(summary))
    assert run_serial(args, model, stop=stop) == 0
    emu.stop()
    records, s, t = read_jsonl(out), json.loads(summary.read_text()), emu.truth
    assert (s["disconnects"], s["reconnects"], t.disconnects) == (1, 1, 1)
    assert [r["seq"] for r in records] == emu.sent_seqs
    assert s["missing"] == t.missing == t.lost_offline == 150
    after = [r for r in records if r.get("gap")]
    assert len(after) == 1 and after[0]["gap"] == 150 and after[0]["reset"] == 1
    assert "reconnected on" in capsys.readouterr().err


# -- the state file ------------------------------------------------------------------------
def _start_run(model_path: str, port: str, state: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "edgernn", "run", model_path, "--port", port,
           "--state-file", str(state), "--state-interval", "0.2", "--status-interval", "0",
           "-o", str(out)]  # fmt: skip
    return subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=REPO)


def _wait_lines(path: Path, n: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {n} lines")


def test_state_file_resume_continues_forecasts_identically(model, model_path, tmp_path):
    emulate = subprocess.Popen(
        [sys.executable, "-m", "edgernn", "emulate", "--rate", "400", "--like", model_path],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        port = emulate.stdout.readline().strip()
        state, out1, out2 = tmp_path / "state.json", tmp_path / "a.jsonl", tmp_path / "b.jsonl"
        run1 = _start_run(model_path, port, state, out1)
        _wait_lines(out1, 300)
        assert state.exists()  # saved periodically, not only at exit
        run1.send_signal(signal.SIGTERM)  # systemd stop / Pi shutdown
        err1 = run1.communicate(timeout=20)[1]
        assert run1.returncode == 0, err1
        assert "no state file" in err1 and "serial run on" in err1
        first = read_jsonl(out1)

        run2 = _start_run(model_path, port, state, out2)
        _wait_lines(out2, 200)
        run2.send_signal(signal.SIGINT)  # Ctrl-C
        err2 = run2.communicate(timeout=20)[1]
        assert run2.returncode == 0, err2
        assert f"resumed stream state from {state}" in err2
        second = read_jsonl(out2)
    finally:
        emulate.send_signal(signal.SIGINT)
        emulate.communicate(timeout=20)

    # An unbroken Monitor over the same received samples gives the same forecasts: the
    # second run picked up exactly where the first stopped.
    both = first + second
    np.testing.assert_allclose(forecasts(both), replay(model, both), rtol=2e-6, atol=1e-4)
    saved = json.loads(state.read_text())
    assert saved["samples"] == len(second) and saved["monitor"]["samples"] == len(both)
    # And a cold start would not have: the state carried real information.
    cold = replay(model, second)
    assert np.abs(cold[0] - forecasts(second)[0]).max() > 1e-3


def test_state_file_for_another_model_or_damaged_starts_cold(model, tmp_path, capsys):
    state = tmp_path / "state.json"
    for content, message in (
        ('{"format": 1, "model_sha256": "0", "monitor": {}}', "different model"),
        ("{not json", "cannot read"),
    ):
        state.write_text(content)
        dev = ScriptedDevice(gappy_wire({})[0])
        args = parse("--port", dev.path, "--no-reconnect", "--state-file", str(state), "-o",
                     str(tmp_path / "o.jsonl"))  # fmt: skip
        assert run_serial(args, model) == 0
        assert message in capsys.readouterr().err
        assert json.loads(state.read_text())["samples"] == 40  # replaced by a good one


# -- the queue between reader and inference ------------------------------------------------
def _samples(seq: int, n: int = 1) -> Samples:
    return Samples(seq, np.zeros((n, 8), np.float32))


def test_queue_drop_oldest_counts_and_turns_drops_into_a_gap():
    q = SampleQueue(max_samples=4, policy="drop-oldest")
    for seq in range(7):
        q.put(_samples(seq))
    got = [q.get(0) for _ in range(4)]
    assert q.get(0) is None and q.overflow == 3
    assert [(e.seq, e.gap) for e in got] == [(3, 3), (4, 0), (5, 0), (6, 0)]


def test_queue_block_policy_waits_for_the_consumer():
    q = SampleQueue(max_samples=2, policy="block")
    q.put(_samples(0))
    q.put(_samples(1))
    done = threading.Event()
    threading.Thread(target=lambda: (q.put(_samples(2)), done.set()), daemon=True).start()
    assert not done.wait(0.2)  # blocked: the queue is full
    assert q.get(0).seq == 0
    assert done.wait(2.0) and q.overflow == 0
    assert [q.get(0).seq, q.get(0).seq] == [1, 2]


# -- commands ------------------------------------------------------------------------------
def _edgernn(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgernn", *argv], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)  # fmt: skip


def test_ports_command_lists_ports():
    r = _edgernn("ports", "--json")
    assert r.returncode == 0, r.stderr
    assert isinstance(json.loads(r.stdout), list)


def test_emulate_refuses_bad_faults_in_one_line():
    r = _edgernn("emulate", "--faults", "meteor=1")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "edgernn: error: --faults: unknown fault 'meteor'; choose from garbage, corrupt, drop, "
        "overrun, reboot, disconnect, down"
    ]


# -- inference falling behind: the overflow policy is explicit and counted ------------------
class SlowDetector:
    """A real Detector that takes 2 ms a sample: inference falls behind the wire."""

    def __new__(cls, model: Model):
        from edgernn.runtime.detector import Detector

        class _Slow(Detector):
            def score_one(self, x, forecast):
                time.sleep(0.002)
                return super().score_one(x, forecast)

        return _Slow.from_meta(model.meta)


@pytest.mark.parametrize("policy", ["drop-oldest", "block"])
def test_overflow_policy_when_inference_falls_behind(model, tmp_path, policy):
    dev = ScriptedDevice(gappy_wire({}, n=400)[0], piece=4096)  # a burst: 400 frames at once
    out, summary = tmp_path / "out.jsonl", tmp_path / "s.json"
    args = parse("--port", dev.path, "--no-reconnect", "--queue-size", "20", "--on-overflow",
                 policy, "-o", str(out), "--summary-json", str(summary))  # fmt: skip
    assert run_serial(args, model, detector=SlowDetector(model)) == 0
    records, s = read_jsonl(out), json.loads(summary.read_text())
    assert s["samples"] == 400 and s["missing"] == 0 and s["unaccounted"] == 0
    assert "score" in records[-1] and "anomaly" in records[-1]
    if policy == "block":
        assert s["overflow"] == 0 and [r["seq"] for r in records] == list(range(400))
        return
    # Dropped samples are counted, and the next forecast says how many it follows.
    assert s["overflow"] > 100 and s["forecasts"] + s["overflow"] == 400
    assert sum(r.get("gap", 0) for r in records) == s["overflow"]
    for a, b in zip(records, records[1:]):
        assert b["seq"] - a["seq"] - 1 == b.get("gap", 0)


# -- other transports ------------------------------------------------------------------------
def test_socket_url_and_status_lines(model, tmp_path, capsys):
    import socket

    wire, values = gappy_wire({}, n=60)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve():
        conn, _ = server.accept()
        for i in range(0, len(wire), 50):
            conn.sendall(wire[i : i + 50])
            time.sleep(0.01)
        conn.close()
        server.close()

    threading.Thread(target=serve, daemon=True).start()
    out = tmp_path / "out.jsonl"
    args = parse("--port", f"socket://127.0.0.1:{port}", "--no-reconnect", "--status-interval",
                 "0.1", "-o", str(out))  # fmt: skip
    assert run_serial(args, model) == 0
    np.testing.assert_allclose(inputs(read_jsonl(out)), values, rtol=1e-6)
    err = capsys.readouterr().err
    assert "samples/s, latency p50" in err and "received" in err


def test_usb_identity_matching_and_low_latency_on_a_pty():
    from edgernn.firmware_bridge.port import (
        PortInfo,
        UsbMatch,
        open_port,
        parse_usb_match,
        set_low_latency,
    )

    ports = [
        PortInfo("/dev/ttyACM0", vid=0x2341, pid=0x0043, serial_number="A1"),
        PortInfo("/dev/ttyACM1", vid=0x2341, pid=0x0043, serial_number="B2"),
        PortInfo("/dev/ttyUSB0", vid=0x0403, pid=0x6001),
    ]
    assert parse_usb_match("usb:2341:0043:B2").find(ports) == "/dev/ttyACM1"
    assert parse_usb_match("USB:2341:0043").find(ports) == "/dev/ttyACM0"
    assert UsbMatch(0x0403, 0x6001).find(ports) == "/dev/ttyUSB0"
    assert parse_usb_match("usb:1:2:C3").find(ports) is None
    assert parse_usb_match("/dev/ttyACM0") is None
    with pytest.raises(PortError, match="usb:VID:PID"):
        parse_usb_match("usb:zz")
    master, slave = os.openpty()
    try:
        ser = open_port(os.ttyname(slave))  # low latency asked for, refused quietly
        assert set_low_latency(ser) is False
        ser.close()
    finally:
        os.close(master)
        os.close(slave)


# -- `edgernn run MODEL --port` ---------------------------------------------------------
def test_edgernn_run_port_end_to_end(model_path):
    emu = Emulator(rate=500, channels=8, seed=9, duration=0.5, record=True).start()
    unplug_when_done(emu)
    r = _edgernn("run", model_path, "--port", emu.path, "--no-reconnect", "--status-interval", "0")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert [rec["seq"] for rec in records] == emu.sent_seqs
    assert "0 unaccounted" in r.stderr
