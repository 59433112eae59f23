"""A microcontroller on a pty: try the live runtime without hardware, and test it.

`Emulator` opens a pseudo-terminal (os.openpty, raw mode), and once a reader opens
its slave end, streams a multi-channel sensor signal in text or binary mode at a
steady rate, as the firmware in firmware/ does. Faults can be injected:

    garbage=P     a burst of junk between frames (binary: ends in 0x00; text: a line)
    corrupt=P     one byte of a frame/line changed (the CRC or the parser rejects it)
    drop=P        a frame/line never sent (binary: shows up as a sequence gap)
    overrun=P     a sample dropped inside the device (counted in its hello frames)
    reboot=T      the device restarts T seconds of samples into the run (new session)
    disconnect=T  the link goes down T seconds in (the pty master closes, like a USB
                  unplug), comes back `down` seconds later on a new pty
    down=S        how long a disconnect lasts (default 0.5)

P is a probability per frame (per line in text mode); T is in seconds of signal
(sample count / rate), so a run is reproducible for a given seed. `truth` holds the
ground truth a receiver's counters must match.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import termios
import threading
import time
import tty
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from edgernn.errors import InputError
from edgernn.firmware_bridge.protocol import encode_data, encode_hello

DEFAULT_NAMES = (
    "temperature", "humidity", "pressure", "vibration_x",
    "vibration_y", "vibration_z", "current", "voltage",
)  # fmt: skip
HELLO_EVERY_S = 1.0
PROB_FAULTS = ("garbage", "corrupt", "drop", "overrun")
TIME_FAULTS = ("reboot", "disconnect")


@dataclass
class Faults:
    garbage: float = 0.0
    corrupt: float = 0.0
    drop: float = 0.0
    overrun: float = 0.0
    reboot: list[float] = field(default_factory=list)
    disconnect: list[float] = field(default_factory=list)
    down: float = 0.5

    @classmethod
    def parse(cls, spec: Optional[str]) -> Faults:
        """`garbage=0.01,corrupt=0.01,drop=0.005,reboot=5,disconnect=8,down=1`."""
        faults = cls()
        for item in (spec or "").split(","):
            item = item.strip()
            if not item:
                continue
            name, _, value = item.partition("=")
            name = name.strip()
            try:
                number = float(value) if value else (0.01 if name in PROB_FAULTS else 1.0)
            except ValueError as e:
                raise InputError(f"--faults: {item!r} needs a number after '='") from e
            if name in PROB_FAULTS:
                if not 0.0 <= number <= 1.0:
                    raise InputError(f"--faults: {name} is a probability in [0, 1]")
                setattr(faults, name, number)
            elif name in TIME_FAULTS + ("down",) and not 0 <= number < float("inf"):
                raise InputError(f"--faults: {name} is a time in seconds, >= 0")
            elif name in TIME_FAULTS:
                getattr(faults, name).append(number)
            elif name == "down":
                faults.down = number
            else:
                known = ", ".join(PROB_FAULTS + TIME_FAULTS + ("down",))
                raise InputError(f"--faults: unknown fault {name!r}; choose from {known}")
        return faults


@dataclass
class Truth:
    """What the emulator did, to check a receiver's accounting against."""

    samples: int = 0  # samples generated (seq numbers used), all sessions
    sent: int = 0  # samples written intact
    frames: int = 0  # data frames (or lines) written intact
    hellos: int = 0
    garbage: int = 0  # junk bursts written
    corrupted: int = 0  # frames/lines written with a damaged byte
    corrupted_samples: int = 0
    dropped: int = 0  # samples in frames/lines never written
    overrun: int = 0  # samples dropped inside the device
    lost_offline: int = 0  # samples generated while the link was down
    reboots: int = 0
    disconnects: int = 0
    sessions: list[int] = field(default_factory=list)  # sessions ended by a reboot
    # What a receiver can know: samples lost before a later intact frame of the same
    # session (a sequence gap), and the device's dropped counter as its hellos said.
    missing: int = 0
    dropped_reported: dict[int, int] = field(default_factory=dict)  # session -> count

    @property
    def device_dropped(self) -> int:
        return sum(self.dropped_reported.values())


class SensorSignal:
    """A plausible sensor mix: slow drift, a few periodic components per channel,
    cross-channel coupling and AR(1) noise, around a per-channel level and scale."""

    def __init__(self, channels: int, rate: float, seed: int = 0, mean=None, std=None):
        rng = np.random.default_rng(seed)
        self.rate = rate
        self.mean = np.asarray(mean if mean is not None else 10.0 * rng.uniform(1, 5, channels))
        self.std = np.asarray(std if std is not None else rng.uniform(0.5, 3.0, channels))
        self.periods_s = rng.uniform(0.5, 8.0, (channels, 3))  # seconds
        self.phases = rng.uniform(0, 2 * np.pi, (channels, 3))
        self.weights = rng.uniform(0.2, 1.0, (channels, 3))
        self.coupling = 0.3 * rng.standard_normal((channels, channels)) / max(channels, 1)
        self.noise = np.zeros(channels)
        self.rng = rng
        self.t = 0  # samples produced

    def next(self, n: int) -> np.ndarray:
        """The next n samples, (n, C) float32."""
        t = (self.t + np.arange(n)) / self.rate  # (n,)
        waves = np.sin(2 * np.pi * t[:, None, None] / self.periods_s + self.phases)
        base = (waves * self.weights).sum(-1)  # (n, C)
        base = base + base @ self.coupling
        out = np.empty_like(base)
        for i in range(n):  # AR(1) noise: correlated like real sensor noise
            self.noise = 0.95 * self.noise + 0.1 * self.rng.standard_normal(len(self.noise))
            out[i] = base[i] + self.noise
        self.t += n
        return (self.mean + self.std * out).astype(np.float32)


class Emulator:
    """A device on a pty. `start()` runs it in a thread, `run()` in the foreground.

    `path` is what a reader opens: `link` (a symlink kept pointing at the current
    pty across disconnects) if given, else the pty's own /dev/pts/N.
    """

    def __init__(
        self,
        rate: float = 100.0,
        channels: int = 3,
        mode: str = "binary",
        faults: Optional[Faults] = None,
        samples_per_frame: int = 1,
        seed: int = 0,
        names: Optional[Sequence[str]] = None,
        link: Optional[str] = None,
        named_text: bool = False,
        mean=None,
        std=None,
        duration: Optional[float] = None,
        on_write: Optional[Callable[[int, int, float], None]] = None,
        record: bool = False,
    ):
        if mode not in ("text", "binary"):
            raise InputError(f"mode must be text or binary, got {mode!r}")
        if not 0 < rate < float("inf") or channels < 1 or not 1 <= samples_per_frame <= 255:
            raise InputError("need a finite rate > 0, channels >= 1 and 1..255 samples per frame")
        self.rate = float(rate)
        self.mode = mode
        self.faults = faults or Faults()
        self.spf = samples_per_frame if mode == "binary" else 1
        self.names = list(names) if names else _default_names(channels)
        if len(self.names) != channels:
            raise InputError(f"{len(self.names)} names for {channels} channels")
        self.link = link
        self.named_text = named_text
        self.duration = duration
        self.on_write = on_write  # (first seq, samples, perf_counter at write) per frame
        self.record = record
        self.sent_values: list[np.ndarray] = []  # intact samples, when record=True
        self.sent_seqs: list[int] = []
        self.truth = Truth()
        self.signal = SensorSignal(channels, rate, seed, mean, std)
        self.rng = np.random.default_rng(seed + 1)
        self.session = int(self.rng.integers(1, 2**32))
        self.seq = 0  # next sample's seq (this session)
        self.dropped_in_device = 0  # this session's overrun counter
        self._lost_pending = 0  # samples lost since the last intact frame (this session)
        self.error: Optional[BaseException] = None
        self._reboots = sorted(self.faults.reboot)
        self._disconnects = sorted(self.faults.disconnect)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._master = -1
        self._fd_lock = threading.Lock()
        self._pts = ""
        if link:
            _check_link(link)
        self._open_pty()

    # -- the pty ---------------------------------------------------------------------
    @property
    def path(self) -> str:
        return self.link or self._pts

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no CR/LF translation: bytes arrive as written
        mark_unconfigured(slave)
        self._pts = os.ttyname(slave)
        os.close(slave)  # no slave open: poll(master) says HUP until a reader opens it
        os.set_blocking(master, False)  # a write must never hang the device on a full pty
        self._master = master
        if self.link:
            tmp = f"{self.link}.{os.getpid()}.tmp"
            try:
                if os.path.lexists(tmp):
                    os.unlink(tmp)
                os.symlink(self._pts, tmp)
                os.replace(tmp, self.link)
            except OSError as e:
                if os.path.islink(tmp):
                    os.unlink(tmp)
                self._close_pty()
                raise InputError(f"--link {self.link}: cannot link ({e.strerror or e})") from e

    def _close_pty(self) -> None:
        # unplug() (any thread) and stop() may race: take the descriptor under a lock so
        # it is closed exactly once (closing a reused number would hit someone else's file).
        with self._fd_lock:
            fd, self._master = self._master, -1
        if fd >= 0:
            os.close(fd)

    def wait_for_reader(self, timeout: Optional[float] = None) -> bool:
        """Block until a reader has the pty open and set up (see wait_until_configured:
        bytes written before pyserial's flush on open vanish)."""
        if self._master < 0:
            return False  # unplugged for good
        poller = select.poll()
        poller.register(self._master, select.POLLOUT)
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._reader_present():
            mark_unconfigured(self._master)
        while not self._stop.is_set():
            events = poller.poll(20)
            if events and not events[0][1] & select.POLLHUP:
                wait_until_configured(self._master, stop=self._stop)
                return True
            if deadline is not None and time.monotonic() > deadline:
                return False
        return False

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait until the reader has taken every byte written so far."""
        return wait_until_read(self._pts, timeout)

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> Emulator:
        self._thread = threading.Thread(target=self._run_safe, name="edgernn-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.close()

    def join(self, timeout: Optional[float] = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self) -> None:
        self._close_pty()
        if self.link and os.path.islink(self.link):
            os.unlink(self.link)

    def unplug(self) -> None:
        """Close the master now: the reader sees what a USB unplug looks like."""
        self._close_pty()

    def _run_safe(self) -> None:
        try:
            self.run()
        except (OSError, ValueError) as e:  # unplug() closed the pty under us
            self.error = e

    def run(self) -> None:
        """Stream until stop() or the duration. While no reader has the port open the
        emulator pauses (a real device would sample on and those samples be lost)."""
        if not self.wait_for_reader():
            return
        self._write(self._hello())
        start = time.perf_counter()
        next_hello = HELLO_EVERY_S
        produced = 0  # samples emitted (sent or faulted), the schedule's clock
        while not self._stop.is_set():
            if self.duration is not None and produced >= self.duration * self.rate:
                break
            if not self._reader_present():
                if not self.wait_for_reader():
                    break
                start = time.perf_counter() - produced / self.rate
            due = int((time.perf_counter() - start) * self.rate) - produced
            if due < self.spf:
                wait = (produced + self.spf) / self.rate - (time.perf_counter() - start)
                self._stop.wait(max(wait, 0.0))
                continue
            for _ in range(due // self.spf):
                t_signal = self.truth.samples / self.rate
                if self._reboots and t_signal >= self._reboots[0]:
                    self._reboots.pop(0)
                    self._reboot()
                if self._disconnects and t_signal >= self._disconnects[0]:
                    self._disconnects.pop(0)
                    self._disconnect()
                    start = time.perf_counter() - produced / self.rate
                    break
                if t_signal >= next_hello:
                    next_hello += HELLO_EVERY_S
                    self._write(self._hello())
                self._emit_frame()
                produced += self.spf

    def _reader_present(self) -> bool:
        if self._master < 0:
            return False
        poller = select.poll()
        poller.register(self._master, select.POLLOUT)
        events = poller.poll(0)
        return not (events and events[0][1] & select.POLLHUP)

    # -- one frame -------------------------------------------------------------------
    def _emit_frame(self) -> None:
        t = self.truth
        values = self.signal.next(self.spf)  # (S, C)
        seq0 = self.seq
        self.seq += self.spf
        t.samples += self.spf
        time_us = int(seq0 * 1e6 / self.rate) & 0xFFFFFFFF
        rng = self.rng
        if self.mode == "binary" and rng.random() < self.faults.overrun:
            # The ring buffer overflowed: the oldest sample (this one) is gone.
            t.overrun += self.spf
            self.dropped_in_device += self.spf
            self._lost_pending += self.spf
            return
        if rng.random() < self.faults.garbage:
            self._write(self._junk())
            t.garbage += 1
        wire = self._encode(seq0, time_us, values)
        if rng.random() < self.faults.drop:
            t.dropped += self.spf
            self._lost_pending += self.spf
            return
        if rng.random() < self.faults.corrupt:
            self._write(self._corrupt(wire))
            t.corrupted += 1
            t.corrupted_samples += self.spf
            self._lost_pending += self.spf
            return
        t_write = time.perf_counter()
        self._write(wire)
        t.frames += 1
        t.sent += self.spf
        t.missing += self._lost_pending
        self._lost_pending = 0
        if self.record:
            self.sent_values.append(self._as_received(values))
            self.sent_seqs.append(seq0)
        if self.on_write is not None:
            self.on_write(seq0, self.spf, t_write)

    def _encode(self, seq: int, time_us: int, values: np.ndarray) -> bytes:
        if self.mode == "binary":
            return encode_data(seq, time_us, values)
        cells = [_fmt(v) for v in values[0]]
        if self.named_text:
            cells = [f"{n}:{c}" for n, c in zip(self.names, cells)]
        return (",".join(cells) + "\r\n").encode()

    def _as_received(self, values: np.ndarray) -> np.ndarray:
        if self.mode == "binary":
            return values
        return np.array([[float(_fmt(v)) for v in values[0]]], dtype=np.float32)

    def _junk(self) -> bytes:
        n = int(self.rng.integers(1, 40))
        if self.mode == "binary":
            # Non-zero junk then a delimiter: one rejected chunk, no frame swallowed.
            return bytes(self.rng.integers(1, 256, n, dtype=np.uint8)) + b"\x00"
        junk = bytes(self.rng.integers(0, 256, n, dtype=np.uint8)).replace(b"\n", b"?")
        return junk + b"\n"

    def _corrupt(self, wire: bytes) -> bytes:
        data = bytearray(wire)
        if self.mode == "binary":
            i = int(self.rng.integers(0, len(data) - 1))  # never the delimiter
            flip = int(self.rng.integers(1, 256))
            while data[i] ^ flip == 0:  # a 0x00 would split the frame in two
                flip = int(self.rng.integers(1, 256))
            data[i] ^= flip
        else:
            digits = [i for i, b in enumerate(data) if chr(b).isdigit()]
            data[digits[int(self.rng.integers(0, len(digits)))]] = ord("x")
        return bytes(data)

    def _hello(self) -> bytes:
        if self.mode == "text":
            return b""
        self.truth.hellos += 1
        self.truth.dropped_reported[self.session] = self.dropped_in_device
        return encode_hello(
            self.session,
            self.rate,
            self.names,
            dropped=self.dropped_in_device,
            seq=self.seq,
            time_us=int(self.seq * 1e6 / self.rate),
        )

    # -- big faults ------------------------------------------------------------------
    def _reboot(self) -> None:
        self.truth.reboots += 1
        self.truth.sessions.append(self.session)
        self.session = (self.session + int(self.rng.integers(1, 2**31))) % 2**32 or 1
        self.seq = 0
        self.dropped_in_device = 0
        self._lost_pending = 0  # no receiver can see what the old session lost last
        if self.mode == "text":
            self._write(b"\r\n*** booting edgernn sensor ***\r\n")  # two rejected lines
            self.truth.garbage += 2
        else:
            self._write(self._hello())

    def _disconnect(self) -> None:
        self.truth.disconnects += 1
        self.drain()
        self._close_pty()
        lost = int(round(self.faults.down * self.rate))
        self.signal.next(lost)  # time passes for the sensors too
        self.seq += lost
        self.truth.samples += lost
        self.truth.lost_offline += lost
        self._lost_pending += lost
        self._stop.wait(self.faults.down)
        if self._stop.is_set():
            return
        self._open_pty()
        if self.wait_for_reader():
            self._write(self._hello())

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and self._master >= 0 and not self._stop.is_set():
            try:
                n = os.write(self._master, view)
            except BlockingIOError:
                self._stop.wait(0.001)  # the reader is behind: wait, as a UART would
                continue
            view = view[n:]


UNCONFIGURED_SPEED = termios.B50  # no reader asks for 50 baud: the mark of a fresh pty


def mark_unconfigured(fd: int) -> None:
    """Set the pty's speed to a mark that a reader setting the port up replaces (the
    master and the slave share one termios on Linux)."""
    attrs = termios.tcgetattr(fd)
    attrs[4] = attrs[5] = UNCONFIGURED_SPEED
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def wait_until_configured(
    master: int, timeout: float = 2.0, settle: float = 0.25, stop: Optional[threading.Event] = None
) -> bool:
    """Once a reader has opened the pty: wait until it has set its speed (pyserial does,
    then flushes the input, and bytes written before that flush are lost), then a short
    settle for the flush. A plain reader that never sets the port up costs `timeout`
    (False). A fixed sleep after the open was not enough on a loaded machine."""
    deadline = time.monotonic() + timeout
    configured = False
    while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
        try:
            if termios.tcgetattr(master)[4] != UNCONFIGURED_SPEED:
                configured = True
                break
        except termios.error:
            return False
        time.sleep(0.002)
    time.sleep(settle)
    return configured


def wait_until_read(pts: str, timeout: float = 5.0, settle: float = 0.05) -> bool:
    """Wait until a pty's reader has taken every byte written to it (False on timeout).
    Disconnect faults use it, so the bytes lost in an unplug are known exactly.

    Bytes written to the master reach the slave's queue a moment later (the kernel
    moves them in a worker), so the queue must stay empty for `settle` seconds.
    """
    try:
        fd = os.open(pts, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return False
    deadline = time.monotonic() + timeout
    empty_since = None
    try:
        buf = bytearray(4)
        while time.monotonic() < deadline:
            fcntl.ioctl(fd, termios.FIONREAD, buf)
            now = time.monotonic()
            if struct.unpack("i", buf)[0] > 0:
                empty_since = None
            elif empty_since is None:
                empty_since = now
            elif now - empty_since >= settle:
                return True
            time.sleep(0.002)
    finally:
        os.close(fd)
    return False


def _check_link(link: str) -> None:
    """The link replaces `link` and is removed at exit: never let that be a user's file."""
    if os.path.lexists(link) and not os.path.islink(link):
        kind = "a directory" if os.path.isdir(link) else "an existing file"
        raise InputError(f"--link {link} is {kind}; give a new path (or an old link)")
    folder = os.path.dirname(link) or "."
    if not os.path.isdir(folder):
        raise InputError(f"--link {link}: folder {folder} does not exist")


def _fmt(v: float) -> str:
    return f"{v:.4f}"


def _default_names(channels: int) -> list[str]:
    names = list(DEFAULT_NAMES[:channels])
    return names + [f"ch{i}" for i in range(len(names), channels)]
