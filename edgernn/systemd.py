"""systemd's notify protocol with the standard library alone (no libsystemd binding).

Under a unit with Type=notify, systemd passes $NOTIFY_SOCKET; with WatchdogSec= it
also passes $WATCHDOG_USEC (and $WATCHDOG_PID). The processing loop itself calls
`ping()` every iteration: WATCHDOG=1 goes out at most every half watchdog interval,
so a loop that hangs (a stuck backend, a deadlock) stops the pings and systemd
restarts the service. Outside systemd every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from typing import Optional


class Notifier:
    def __init__(self, env: Mapping[str, str] = os.environ):
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.interval: Optional[float] = None  # seconds between watchdog pings
        usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.interval = int(usec) / 1e6 / 2
        self._sock: Optional[socket.socket] = None
        self._next_ping = 0.0
        self.sent = 0
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    @property
    def active(self) -> bool:
        return self._sock is not None

    def send(self, text: str) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.sendto(text.encode(), self.address)
        except OSError:
            return False  # systemd went away (shutdown): nothing to tell
        self.sent += 1
        return True

    def ready(self, status: str = "") -> None:
        self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))
        self._next_ping = 0.0

    def ping(self) -> None:
        """WATCHDOG=1 if the interval asks for one now; cheap enough for every loop turn."""
        if self.interval is None:
            return
        now = time.monotonic()
        if now >= self._next_ping:
            self.send("WATCHDOG=1")
            self._next_ping = now + self.interval

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _address(value: str):
    """A filesystem path, or '@name' for an abstract socket (Linux)."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # vsock and other forms: not for us
