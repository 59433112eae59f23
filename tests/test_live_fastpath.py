"""The live run's C steady state (firmware_bridge/live.py FastFrames, cstep live_frames)
against the Python path it stands in for, over real ptys: the same wire (hellos, plain
and multi-sample frames, gaps, NaN, corrupt frames, junk, reboots, backward jumps,
floats whose tokens need RecordWriter's own formula) read in pieces of every kind of
size gives the same JSON lines byte for byte, the same counters and the same state."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ScriptedDevice
from conftest import parse_run_args as parse

from edgernn.firmware_bridge import protocol as P
from edgernn.firmware_bridge.emulator import DEFAULT_NAMES
from edgernn.firmware_bridge.live import LiveRun
from edgernn.runtime.detector import Detector
from edgernn.runtime.model import Model

NAMES = list(DEFAULT_NAMES)


def _model(tmp_path_factory, **config) -> Model:
    torch = pytest.importorskip("torch")
    from edgernn.export.onnx_export import export_onnx
    from edgernn.train.model import Forecaster, ModelConfig

    torch.manual_seed(1)
    net = Forecaster(ModelConfig(n_channels=8, hidden=12, channels=NAMES, **config))
    net.set_normalisation(np.full(8, 30.0), np.full(8, 10.0))
    path = tmp_path_factory.mktemp("model") / "fast.onnx"
    export_onnx(net, path)
    m = Model(str(path))
    if m.stream().live_binding() is None:
        pytest.skip("no C step here")
    return m


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Model:
    return _model(tmp_path_factory, cell="gru")


@pytest.fixture(scope="module")
def model_ahead(tmp_path_factory) -> Model:
    """Forecasts 3 samples ahead: the scorer's ring and the head's queue hold 3."""
    return _model(tmp_path_factory, cell="lstm", horizon=3)


def rich_wire() -> bytes:
    """Every kind of thing a device sends, in one stream."""
    rng = np.random.default_rng(7)

    def vals(n):
        return (30 + 10 * rng.standard_normal((n, 8))).astype(np.float32)

    odd = vals(1)
    odd[0, :5] = [32.0, 0.5, 1e-7, 3e20, -0.0]  # powers of two, exponents, a signed zero
    frames = [P.encode_hello(1, 3.0, NAMES)]  # a period of 333333.3 us: rounding in play
    seq = 0

    def data(n, skip=0, values=None):
        nonlocal seq
        seq += skip
        frames.append(P.encode_data(seq, seq * 333333, vals(n) if values is None else values))
        seq += n

    for _ in range(30):
        data(1)
    data(3)
    data(1, values=odd)
    data(1, skip=2)  # a gap, filled
    data(5)
    nan = vals(1)
    nan[0, 3] = np.nan
    data(1, values=nan)  # invalid: counted, then a gap of one
    data(1)
    frames.append(b"\x00\x00")  # idle delimiters
    bad = bytearray(P.encode_data(seq, 0, vals(1)))
    bad[5] ^= 0x55
    frames.append(bytes(bad))  # a corrupt frame (crc), then the seq it carried is missing
    seq += 1
    frames.append(b"junk junk\x00")
    for _ in range(20):
        data(1)
    data(1, skip=9)  # beyond --gap-fill: a reset
    for _ in range(10):
        data(2)
    frames.append(P.encode_hello(1, 3.0, NAMES, seq=seq))  # the same session again
    for _ in range(10):
        data(1)
    seq = 5  # backward, same session: the stream starts over
    for _ in range(10):
        data(1)
    frames.append(P.encode_hello(2, 1000.0, NAMES, seq=0))  # a reboot
    seq = 0
    for _ in range(140):
        data(1)
    for k in range(12):  # a fault: the detector flags it, opens an alert and closes it
        spike = vals(1)
        spike[0, k % 3] += 400.0
        data(1, values=spike)
    for _ in range(60):
        data(1)
    data(255 // 8)
    return b"".join(frames)


class FramedDevice(ScriptedDevice):
    """Writes one frame at a time, as a device does: the reads start on frame boundaries."""

    def __init__(self, frames: list[bytes]):
        self.frames = frames
        super().__init__(b"".join(frames))

    def _write(self):
        import os
        import time

        for frame in self.frames:
            os.write(self.master, frame)
            time.sleep(0.0005)


def split_frames(wire: bytes) -> list[bytes]:
    """The wire cut after each 0x00 (junk and idle delimiters included)."""
    return [part + b"\x00" for part in wire.split(b"\x00")[:-1]]


def choose_path(monkeypatch, fast: bool, c_scorer: bool) -> None:
    """The C loop (fast) or the Python path; in the C loop, scoring in C or per-sample
    calls into Python."""
    for var, off in (("EDGERNN_NO_FAST_LIVE", not fast), ("EDGERNN_NO_C_SCORER", not c_scorer)):
        if off:
            monkeypatch.setenv(var, "1")
        else:
            monkeypatch.delenv(var, raising=False)


def run_once(model, tmp_path, piece, fast: bool, monkeypatch, scoring: str = "forecasts",
             c_scorer: bool = True):  # fmt: skip
    choose_path(monkeypatch, fast, c_scorer)
    tag = f"{'fast' if fast else 'python'}-{piece}-{c_scorer}"
    out, summary, state = (tmp_path / f"{tag}.{ext}" for ext in ("jsonl", "json", "state"))
    wire = rich_wire()
    dev = FramedDevice(split_frames(wire)) if piece == "frames" else ScriptedDevice(wire, piece)
    args = parse("--port", dev.path, "--no-reconnect", "-o", str(out), "--summary-json",
                 str(summary), "--state-file", str(state))  # fmt: skip
    detector = None
    if scoring != "forecasts":
        detector = Detector.from_meta(model.meta, alarm_every=40, warmup=20)
        args.no_online_head = scoring == "detector"
    run = LiveRun(args, model, detector)
    assert run.run() == 0
    taken = (run.fast.samples, run.fast.looped) if run.fast is not None else (0, 0)
    if run.fast is not None and run.fast.scorer is not None:
        taken += (run.fast.scorer.scored,)
    counters = json.loads(summary.read_text())
    for k in ("seconds", "latency_p50_ms", "latency_p99_ms", "port"):
        counters.pop(k)
    saved = json.loads(state.read_text())
    return out.read_bytes(), counters, {k: saved[k] for k in ("monitor", "device", "samples")}, taken


@pytest.mark.parametrize(
    "scoring, piece",
    [("forecasts", p) for p in (None, 1, 13, 48, 97, 4096, "frames")]
    + [(s, p) for s in ("detector", "detector+head") for p in (1, 48, 97, 4096, "frames")],
)
def test_fast_path_writes_what_the_python_path_writes(model, tmp_path, scoring, piece,
                                                      monkeypatch):  # fmt: skip
    lines, counters, state, taken = run_once(model, tmp_path, piece, True, monkeypatch, scoring)
    want_lines, want_counters, want_state, none = run_once(
        model, tmp_path, piece, False, monkeypatch, scoring
    )
    # the C path ran (one read: it cannot)
    assert none == (0, 0) and (taken[0] > 0 or piece is None)
    assert lines == want_lines
    assert counters == want_counters and counters["unaccounted"] == 0
    assert state == want_state
    if piece == "frames":  # the C loop took most of them
        assert taken[1] > counters["forecasts"] // 2
    if scoring != "forecasts":  # the stream was scored, flagged, and alerted on
        assert counters["anomalies"] > 0 and b'"event_opened"' in lines
        assert (b'"online_head"' in json.dumps(state).encode()) == (scoring == "detector+head")
        # the loop's scoring in C (runtime/livescore.py) scored most of what it looped
        if piece == "frames":
            assert taken[2] > taken[1] // 2
        # and the loop calling Python per sample writes the same
        again = run_once(model, tmp_path, piece, True, monkeypatch, scoring, c_scorer=False)
        assert again[:3] == (lines, counters, state) and len(again[3]) == 2


def test_unsure_tokens_come_from_recordwriters_formula(model, tmp_path, monkeypatch):
    lines, *_ = run_once(model, tmp_path, None, True, monkeypatch)
    text = lines.decode()
    assert '"temperature":32.0,' in text or ":32.0," in text
    assert ":1e-07," in text and ":3e+20," in text and ":-0.0," in text


def test_c_fields_write_what_json_fields_writes(model):
    from edgernn.firmware_bridge.jsonline import _key, json_fields, json_float
    from edgernn.runtime.cstep import fastcall_module

    module = fastcall_module()
    binding = model.stream().live_binding()
    live = module.live_bind(*binding[:4], 0, 0, 0, tuple(_key(c) for c in NAMES), json_float)
    rng = np.random.default_rng(3)
    floats = np.ldexp(rng.uniform(1, 2, 4000), rng.integers(-150, 129, 4000)) * rng.choice([-1, 1], 4000)
    floats[::7] = np.ldexp(1.0, rng.integers(-20, 20, len(floats[::7])))  # powers of two
    cases = [{"score": float(v), "anomaly": int(v > 0), "onset": 0, "threshold": 4.0} for v in floats]
    cases += [{"score": None, "anomaly": 0, "onset": 0}, {"score": 0.0, "event": 2**40},
              {"a": True}, {"a": np.float32(1.5)}, {"e": {"id": 1}}, {'q"uote': 1.0},
              {"big": 2**70}, {"x": float("nan")}, {"x": float("inf")}, {"x": 1e300}, {}]  # fmt: skip
    handled = 0
    with np.errstate(over="ignore"):  # 1e300 as a float32 (json_fields: null)
        for fields in cases:
            text = module.live_fields(live, fields)
            handled += text is not None
            assert text is None or text == json_fields(fields), fields
    assert handled >= len(floats)


@pytest.mark.parametrize("c_scorer", [True, False])
def test_a_failing_verdict_stops_both_paths_at_the_same_sample(model, tmp_path, monkeypatch,
                                                               c_scorer):  # fmt: skip
    """The event tracker's turn (kernel_verdict, Python on every path) raising at the
    fault: the fast path (scoring in C or calling Python per sample) writes the lines
    before it, counts its forecasts, and fails as the Python path fails."""
    from edgernn.errors import EdgernnError

    calls = {"n": 0}
    verdict = Detector.kernel_verdict

    def failing(self, t, threshold):
        out = verdict(self, t, threshold)
        if out[1].get("anomaly"):
            calls["n"] += 1
            if calls["n"] == 3:
                raise EdgernnError("verdict failed")
        return out

    monkeypatch.setattr(Detector, "kernel_verdict", failing)
    results = []
    for fast in (True, False):
        calls["n"] = 0
        choose_path(monkeypatch, fast, c_scorer)
        out = tmp_path / f"{fast}.jsonl"
        dev = FramedDevice(split_frames(rich_wire()))
        args = parse("--port", dev.path, "--no-reconnect", "-o", str(out))
        run = LiveRun(args, model, Detector.from_meta(model.meta, alarm_every=40, warmup=20))
        with pytest.raises(EdgernnError, match="verdict failed"):
            run.run()
        results.append((out.read_bytes(), run.stats.forecasts))  # (reads: timing's)
    assert results[0] == results[1] and results[0][1] > 100


@pytest.mark.parametrize("piece", [1, "frames"])
def test_forecasts_three_ahead_score_the_same_on_every_path(model_ahead, tmp_path, piece,
                                                            monkeypatch):  # fmt: skip
    assert model_ahead.horizon == 3
    got = run_once(model_ahead, tmp_path, piece, True, monkeypatch, "detector+head")
    want = run_once(model_ahead, tmp_path, piece, False, monkeypatch, "detector+head")
    assert got[:3] == want[:3] and got[1]["unaccounted"] == 0
    if piece == "frames":
        assert got[3][2] > got[3][1] // 2  # scored in C, most of them
