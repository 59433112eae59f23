"""A live terminal view of a running stream: stdlib only (ANSI escapes), for the Pi.

It redraws a small block in place on a terminal and degrades to one status line
every few seconds when the output is not a terminal (a log file, the journal).

    edgernn live  1,000.0 samples/s  latency p50 0.21 ms  p99 0.48 ms
    samples 12,345  rejected 3  missing 0  device-dropped 0
    score  vibration ███████▏      1.83
           current   █▏            0.31
    alerts open: #4 since seq 12,301 (peak 6.20: vibration, pressure)
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Optional

BLOCKS = " ▏▎▍▌▋▊▉█"


def printable(text: object) -> str:
    """`text` safe for a terminal: control and format characters (ESC, BEL, CR, LF,
    backspace, bidi overrides, ...) shown as escapes, so a device- or model-supplied
    name can neither move the cursor, retitle the window, ring the bell nor fake a line."""
    text = str(text)
    if text.isprintable():
        return text  # the usual case, checked at C speed
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def bar(value: float, full: float, width: int = 14) -> str:
    """A horizontal bar of `width` cells, value/full of it filled, in eighths."""
    frac = max(0.0, min(1.0, value / full)) if full > 0 else 0.0
    eighths = int(round(frac * width * 8))
    text = "█" * (eighths // 8) + (BLOCKS[eighths % 8] if eighths % 8 else "")
    return text.ljust(width)


@dataclass
class Snapshot:
    """What the view shows; the live loop fills it."""

    rate: float = 0.0  # samples/s over the last interval
    latency_p50_ms: Optional[float] = None
    latency_p99_ms: Optional[float] = None
    counters: dict[str, int] = field(default_factory=dict)  # samples, rejected, missing...
    scores: dict[str, float] = field(default_factory=dict)  # channel -> current score
    threshold: Optional[float] = None
    open_alert: Optional[str] = None
    recent_alerts: Sequence[str] = ()


class LiveView:
    def __init__(self, out: IO[str] = sys.stderr, interval: float = 0.25, plain_every: float = 5.0):
        self.out = out
        self.tty = hasattr(out, "isatty") and out.isatty()
        self.interval = interval if self.tty else plain_every
        self._last = 0.0
        self._lines = 0
        self.alerts: deque[str] = deque(maxlen=3)

    def due(self, now: Optional[float] = None) -> bool:
        now = time.monotonic() if now is None else now
        return now - self._last >= self.interval

    def render(self, snap: Snapshot) -> list[str]:
        lat = ""
        if snap.latency_p50_ms is not None:
            lat = f"  latency p50 {snap.latency_p50_ms:.2f} ms  p99 {snap.latency_p99_ms:.2f} ms"
        lines = [f"edgernn live  {snap.rate:9,.1f} samples/s{lat}"]
        lines.append("  ".join(f"{k} {v:,}" for k, v in snap.counters.items()))
        if snap.scores:
            full = max([snap.threshold or 0.0, *snap.scores.values(), 1e-9]) * 1.25
            width = max(len(c) for c in snap.scores)
            for i, (ch, s) in enumerate(snap.scores.items()):
                label = "score " if i == 0 else "      "
                lines.append(f"{label}{ch:<{width}} {bar(s, full)} {s:8.2f}")
            if snap.threshold is not None:
                lines.append(f"      threshold {snap.threshold:.2f}")
        lines.append(f"alert open: {snap.open_alert}" if snap.open_alert else "no alert open")
        for a in list(snap.recent_alerts)[-3:]:
            lines.append(f"  {a}")
        return lines

    def show(self, snap: Snapshot, force: bool = False) -> None:
        now = time.monotonic()
        if not force and not self.due(now):
            return
        self._last = now
        lines = [printable(ln) for ln in self.render(snap)]  # names come from model/device
        if self.tty:
            up = f"\x1b[{self._lines}F" if self._lines else ""
            self.out.write(up + "".join(f"\x1b[2K{ln}\n" for ln in lines))
            self._lines = len(lines)
        else:
            self.out.write(" | ".join(lines[:2]) + "\n")
        self.out.flush()

    def clear(self) -> None:
        """Erase the panel (a terminal) so a log line can take its place; the next
        redraw comes below that line. Elsewhere nothing was drawn in place."""
        if self.tty and self._lines:
            self.out.write(f"\x1b[{self._lines}F\x1b[J")  # up over the panel, erase below
            self.out.flush()
        self._lines = 0

    def close(self) -> None:
        """Leave the panel as it is (the last one stays on screen)."""
        self._lines = 0


def channel_scores(
    contributions: Optional[Sequence[float]], channels: Sequence[str]
) -> Mapping[str, float]:
    if contributions is None:
        return {}
    return {c: float(v) for c, v in zip(channels, contributions)}
