"""The live terminal view: what it draws, in place on a terminal and as plain lines
elsewhere, and `edgernn run --port --live` end to end over a pty."""

import io
import json
import threading

from test_bridge_live import model, model_path, parse  # noqa: F401 (fixtures)

from edgernn.firmware_bridge.emulator import Emulator
from edgernn.firmware_bridge.live import run_serial
from edgernn.runtime.liveview import LiveView, Snapshot, bar


class _Tty(io.StringIO):
    def isatty(self):
        return True


SNAP = Snapshot(
    rate=1000.0, latency_p50_ms=0.2, latency_p99_ms=0.5,
    counters={"samples": 12345, "rejected": 3},
    scores={"vibration": 6.0, "current": 0.5}, threshold=3.0,
    open_alert="#4 since seq 12,301 (vibration)", recent_alerts=["#3 closed at seq 100"],
)  # fmt: skip


def test_bar_fills_in_eighths():
    assert bar(0, 1, 4) == "    "
    assert bar(1, 1, 4) == "████"
    assert bar(0.5, 1, 4) == "██  "
    assert bar(1 / 32, 1, 4) == "▏   "
    assert bar(5, 1, 4) == "████"  # clipped


def test_render_shows_rate_latency_scores_and_alerts():
    text = "\n".join(LiveView(io.StringIO()).render(SNAP))
    for needle in ("1,000.0 samples/s", "p99 0.50 ms", "samples 12,345", "rejected 3",
                   "vibration", "6.00", "threshold 3.00", "alert open: #4", "#3 closed"):  # fmt: skip
        assert needle in text, needle


def test_redraws_in_place_on_a_terminal_and_prints_lines_elsewhere():
    tty = _Tty()
    view = LiveView(tty, interval=0.0)
    view.show(SNAP, force=True)
    view.show(SNAP, force=True)
    n = len(view.render(SNAP))
    assert tty.getvalue().count(f"\x1b[{n}F") == 1  # the second frame moved up over the first
    plain = io.StringIO()
    view = LiveView(plain)
    view.show(SNAP, force=True)
    view.show(SNAP)  # not due yet: plain output is every few seconds
    assert "\x1b" not in plain.getvalue() and len(plain.getvalue().splitlines()) == 1


def test_run_port_live_view(model, tmp_path, capsys):  # noqa: F811
    emu = Emulator(rate=500, channels=8, seed=3, duration=0.6).start()

    def unplug():
        emu.join()
        emu.drain()
        emu.unplug()

    threading.Thread(target=unplug, daemon=True).start()
    out = tmp_path / "out.jsonl"
    assert (
        run_serial(parse("--port", emu.path, "--no-reconnect", "--live", "-o", str(out)), model)
        == 0
    )
    emu.stop()
    err = capsys.readouterr().err
    assert "edgernn live" in err and "samples/s" in err  # the final view, then the summary
    assert "0 unaccounted" in err
    assert len([json.loads(x) for x in out.read_text().splitlines()]) >= 290
