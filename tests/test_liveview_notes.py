"""`--live` on a terminal: a log line printed while the panel is up ("text mode
detected", "disconnected ...") takes the panel's place; no stale copy of the panel
stays above it (the screen is replayed through a small terminal model)."""

import io
import re
import sys
import threading

from test_bridge_live import model, model_path, parse  # noqa: F401 (fixtures)
from test_liveview import SNAP

from edgernn.firmware_bridge.emulator import Emulator
from edgernn.firmware_bridge.live import run_serial
from edgernn.runtime.liveview import LiveView

CSI = re.compile(r"\x1b\[(\d*)([A-Za-z])")


class _Tty(io.StringIO):
    def isatty(self):
        return True


def screen(text: str) -> list[str]:
    """The rows a terminal shows after `text` (newlines, CSI n F, 2K and J only)."""
    rows, row, at = [""], 0, 0
    for m in list(CSI.finditer(text)) + [None]:
        chunk = text[at : m.start() if m else len(text)]
        for part in re.split(r"(\n)", chunk):
            if part == "\n":
                row += 1
                rows += [""] * (row + 1 - len(rows))
            elif part:
                rows[row] += part
        if m is None:
            break
        at = m.end()
        n, op = int(m.group(1) or 1), m.group(2)
        if op == "F":
            row = max(row - n, 0)
        elif op == "K":
            rows[row] = ""
        elif op == "J":
            del rows[row:]
            rows.append("")
    return [r for r in rows if r]


def test_a_log_line_replaces_the_panel():
    tty = _Tty()
    view = LiveView(tty, interval=0.0)
    view.show(SNAP, force=True)
    view.clear()
    tty.write("edgernn: text mode detected\n")
    view.show(SNAP, force=True)
    view.show(SNAP, force=True)
    rows = screen(tty.getvalue())
    assert sum("edgernn live" in r for r in rows) == 1
    assert rows[0] == "edgernn: text mode detected" and rows[1].startswith("edgernn live")


def test_run_port_live_notes_leave_no_stale_panel(model, tmp_path, monkeypatch):  # noqa: F811
    emu = Emulator(rate=500, channels=8, seed=3, duration=0.8).start()

    def unplug():
        emu.join()
        emu.drain()
        emu.unplug()

    threading.Thread(target=unplug, daemon=True).start()
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    args = parse("--port", emu.path, "--no-reconnect", "--live", "-o", str(tmp_path / "o.jsonl"))
    assert run_serial(args, model) == 0
    emu.stop()
    rows = screen(tty.getvalue())
    assert any("disconnected" in r for r in rows)
    assert sum(r.startswith("edgernn live") for r in rows) == 1, rows
