"""The transport: open a serial port, read it, decode into a queue.

Ports open through pyserial's `serial_for_url`, so a device path, `loop://`,
`socket://host:port` and `rfc2217://host:port` all work; `usb:VID:PID[:SERIAL]`
picks a USB device by identity wherever it enumerates. On a read error the port is
closed at once and, unless reconnect is off, reopened with backoff: the same path
first, then any port with the same USB VID/PID/serial number (a replugged board can
come back as /dev/ttyACM1).

The reader thread never blocks on inference: decoded samples go into a bounded
`SampleQueue`, whose overflow policy ("drop-oldest" or "block") is explicit and
counted. Inline mode (a local tty, drop-oldest): the consumer reads the port itself
with `pump()` whenever it has nothing queued, one poll and one read per wake-up; a read
brings at most what the OS buffered meanwhile, and what exceeds the queue's bound is
dropped oldest-first and counted as before. The thread then only reopens a lost port.
"""

from __future__ import annotations

import errno
import os
import select
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional, Union

from edgernn.errors import EdgernnError
from edgernn.firmware_bridge.framing import Decoder, Event, Samples
from edgernn.firmware_bridge.options import OVERFLOW_POLICIES

BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)  # reopen delays; the last one repeats
READ_TIMEOUT_S = 0.05  # how often a blocked read looks at the stop flag
READ_SIZE = 1 << 16  # the most one read takes (a pty holds 4 KB, a USB tty ~64 KB)


class PortError(EdgernnError):
    """A serial port cannot be opened or found."""


# -- finding ports -------------------------------------------------------------------
@dataclass(frozen=True)
class PortInfo:
    device: str
    description: str = ""
    vid: Optional[int] = None
    pid: Optional[int] = None
    serial_number: Optional[str] = None
    manufacturer: Optional[str] = None
    location: Optional[str] = None
    hwid: str = ""

    @property
    def has_device(self) -> bool:
        """False for a port node with nothing known behind it (no hardware id): a
        legacy /dev/ttyS* that the kernel creates whether or not a UART exists."""
        return self.hwid not in ("", "n/a")

    @property
    def usb_id(self) -> str:
        if self.vid is None or self.pid is None:
            return ""
        return f"{self.vid:04x}:{self.pid:04x}"

    def matches(self, vid: int, pid: int, serial_number: Optional[str]) -> bool:
        return (
            self.vid == vid
            and self.pid == pid
            and (serial_number is None or self.serial_number == serial_number)
        )


def list_ports(include_empty: bool = False) -> list[PortInfo]:
    """Serial ports on this machine, USB identity included where there is one. Port
    nodes with no device behind them are left out unless `include_empty`."""
    from serial.tools import list_ports as lp

    ports = [
        PortInfo(
            p.device,
            p.description if p.description not in (None, "n/a") else "",
            p.vid,
            p.pid,
            p.serial_number,
            p.manufacturer,
            p.location,
            p.hwid or "",
        )
        for p in sorted(lp.comports(), key=lambda p: p.device)
    ]
    return [p for p in ports if include_empty or p.has_device]


@dataclass(frozen=True)
class UsbMatch:
    vid: int
    pid: int
    serial_number: Optional[str] = None

    def find(self, ports: Iterable[PortInfo]) -> Optional[str]:
        for p in ports:
            if p.matches(self.vid, self.pid, self.serial_number):
                return p.device
        return None

    def __str__(self) -> str:
        sn = f":{self.serial_number}" if self.serial_number else ""
        return f"usb:{self.vid:04x}:{self.pid:04x}{sn}"


def parse_usb_match(text: str) -> Optional[UsbMatch]:
    """`usb:2341:0043` or `usb:2341:0043:SERIAL` (hex ids) -> UsbMatch; else None."""
    if not text.lower().startswith("usb:"):
        return None
    parts = text[4:].split(":", 2)
    try:
        vid, pid = int(parts[0], 16), int(parts[1], 16)
    except (IndexError, ValueError) as e:
        raise PortError(f"{text}: expected usb:VID:PID[:SERIAL] with hex ids") from e
    return UsbMatch(vid, pid, parts[2] if len(parts) == 3 and parts[2] else None)


def usb_identity(device: str) -> Optional[UsbMatch]:
    """The USB identity of a local port, to find it again after a replug."""
    for p in list_ports():
        if p.device == device and p.vid is not None and p.pid is not None:
            return UsbMatch(p.vid, p.pid, p.serial_number)
    return None


# -- opening ---------------------------------------------------------------------------
def open_port(url: str, baud: int = 115200, low_latency: bool = True):
    """Open a port by path or URL; raises PortError with a one-line reason."""
    import serial

    try:
        ser = serial.serial_for_url(url, baudrate=baud, timeout=READ_TIMEOUT_S)
    except (serial.SerialException, OSError, ValueError) as e:
        raise PortError(f"cannot open {url}: {_reason(e)}") from e
    if low_latency:
        set_low_latency(ser)
    return ser


def set_low_latency(ser) -> bool:
    """Ask the driver for low latency (FTDI/USB-serial: no 16 ms batching). Drivers that
    refuse (a pty, CDC-ACM, sockets) are left as they are: returns False."""
    setter = getattr(ser, "set_low_latency_mode", None)
    if setter is None:
        return False
    try:
        setter(True)
    except (OSError, ValueError, NotImplementedError):
        return False
    return True


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "returned no data" in text:
        return "device went away"  # pyserial's wording for a hung-up tty
    # pyserial wraps OSError text as "[Errno 2] could not open port X: [Errno 2] ...".
    return text.split(": ", 1)[1] if text.startswith("[Errno") and ": " in text else text


# -- link events -----------------------------------------------------------------------
@dataclass
class Connected:
    device: str
    reconnect: bool  # False for the first connection


@dataclass
class Disconnected:
    device: str
    reason: str


@dataclass
class Closed:
    """The reader has stopped; nothing more will come. `error` set if it gave up."""

    error: Optional[str] = None


LinkEvent = Union[Connected, Disconnected, Closed]


# -- the bounded queue -----------------------------------------------------------------
class SampleQueue:
    """Events from the reader to the inference loop, bounded by queued samples.

    Only Samples count toward the bound; link and device events always get through.
    Policy "drop-oldest" discards the oldest queued samples (counted in `overflow`
    and carried as a gap on the next queued samples, so the consumer treats them
    like a sequence gap); "block" makes the reader wait (the OS and the device
    buffer meanwhile, and the device counts what it drops).
    """

    def __init__(self, max_samples: int = 4096, policy: str = "drop-oldest"):
        if policy not in OVERFLOW_POLICIES:
            raise ValueError(f"policy must be one of {', '.join(OVERFLOW_POLICIES)}")
        self.max_samples = max(1, max_samples)
        self.policy = policy
        self.overflow = 0  # samples dropped by drop-oldest
        self.blocked_s = 0.0  # time the reader spent waiting under "block"
        self._items: deque = deque()
        self._samples = 0
        self._carry_gap = 0  # dropped samples not yet attached to a queued Samples
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return self._samples

    def put(self, event) -> None:
        with self._cond:
            if isinstance(event, Samples):
                self._make_room(len(event.values))
                self._samples += len(event.values)
            self._items.append(event)
            self._cond.notify()

    def put_many(self, events: list) -> None:
        """put() each event in order, under one lock and with one wake-up."""
        with self._cond:
            for event in events:
                if isinstance(event, Samples):
                    self._make_room(len(event.values))
                    self._samples += len(event.values)
                self._items.append(event)
            self._cond.notify()

    def _make_room(self, n: int) -> None:
        if self.policy == "block":
            start = time.perf_counter()
            while self._samples + n > self.max_samples and self._samples and not self._closed:
                self._cond.wait(0.1)
            self.blocked_s += time.perf_counter() - start
            return
        while self._samples + n > self.max_samples and self._samples:
            for i, item in enumerate(self._items):
                if isinstance(item, Samples):
                    del self._items[i]
                    dropped = len(item.values) + item.gap
                    self._samples -= len(item.values)
                    self.overflow += len(item.values)
                    self._attach_gap(dropped)
                    break

    def _attach_gap(self, gap: int) -> None:
        for item in self._items:
            if isinstance(item, Samples):
                item.gap += gap
                return
        self._carry_gap += gap

    def get(self, timeout: Optional[float] = None):
        """The next event, or None after `timeout` seconds without one."""
        if timeout == 0 and not self._items:
            return None  # nothing queued: no lock taken, no wait set up
        with self._cond:
            if not self._items and not self._cond.wait_for(lambda: self._items, timeout):
                return None
            event = self._items.popleft()
            if isinstance(event, Samples):
                self._samples -= len(event.values)
                if self._carry_gap:
                    event.gap += self._carry_gap
                    self._carry_gap = 0
                self._cond.notify()  # a blocked put may proceed
            return event

    def empty(self) -> bool:
        return not self._items

    def close(self) -> None:
        """Release a reader blocked in put (the consumer is gone)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


# -- the reader thread -----------------------------------------------------------------
class PortReader:
    """Reads a port in its own thread (or, inline, on the consumer's: see `pump`),
    decodes, and feeds a SampleQueue.

    >>> reader = PortReader("/dev/ttyACM0", decoder, queue)
    >>> reader.start()              # opens the port; raises PortError if it cannot
    >>> event = queue.get(0.5)      # Connected, Samples, DeviceInfo, ..., Closed
    >>> reader.stop()
    """

    def __init__(
        self,
        port: str,
        decoder: Decoder,
        queue: SampleQueue,
        baud: int = 115200,
        reconnect: bool = True,
        reconnect_timeout: Optional[float] = None,
        inline: bool = False,
    ):
        self.port = port
        self.decoder = decoder
        self.queue = queue
        self.baud = baud
        self.reconnect = reconnect
        self.reconnect_timeout = reconnect_timeout
        self.match = parse_usb_match(port)
        self.device: Optional[str] = None  # what is open now (a path or URL)
        self.disconnects = 0
        self.reconnects = 0
        self._stop = threading.Event()
        self._ser = None
        self._thread: Optional[threading.Thread] = None
        # inline: the consumer reads the port itself with pump() (a local tty under the
        # drop-oldest policy); the thread then only reopens a lost port.
        self.inline_requested = inline and queue.policy == "drop-oldest"
        self._fd: Optional[int] = None
        self._poller = None

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self._ser = self._open_first()
        self.queue.put(Connected(self.device, reconnect=False))
        if not self._go_inline():
            self._start_thread()

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edgernn-serial", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self.queue.close()
        if self._thread is not None:
            self._thread.join(timeout)
        self._fd = None
        self._close()

    @property
    def alive(self) -> bool:
        return self.inline or (self._thread is not None and self._thread.is_alive())

    # -- opening ---------------------------------------------------------------------
    def _open_first(self):
        if self.match is not None:
            device = self.match.find(list_ports())
            if device is None:
                raise PortError(
                    f"no serial port matches {self.match}; `edgernn ports` lists what is there"
                )
        else:
            device = self.port
        ser = open_port(device, self.baud)
        self.device = device
        if self.match is None and "://" not in device:
            self.match = usb_identity(device)  # to find the board again if it re-enumerates
        return ser

    def _candidates(self) -> list[str]:
        found = self.match.find(list_ports()) if self.match is not None else None
        same = self.port if not self.port.lower().startswith("usb:") else None
        return [d for d in (same, found) if d is not None]

    def _reopen(self):
        """Reopen with backoff until it works, stop() is called or the timeout passes."""
        start = time.monotonic()
        attempt = 0
        while not self._stop.is_set():
            for device in self._candidates():
                try:
                    ser = open_port(device, self.baud)
                except PortError:
                    continue
                self.device = device
                return ser
            if (
                self.reconnect_timeout is not None
                and time.monotonic() - start > self.reconnect_timeout
            ):
                return None
            self._stop.wait(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
            attempt += 1
        return None

    def _close(self) -> None:
        ser, self._ser = self._ser, None
        if ser is not None:
            try:
                ser.close()
            except (OSError, ValueError):
                pass  # closing a port that already vanished

    # -- the loop --------------------------------------------------------------------
    def _run(self) -> None:
        import serial

        error: Optional[str] = None
        while not self._stop.is_set():
            if self._ser is not None:  # else: the inline reader lost the port, reopen it
                try:
                    self._read_until_error()
                    break  # stop() was called
                except (serial.SerialException, OSError, ValueError, TypeError) as e:
                    # ValueError/TypeError: pyserial on a port closed under it.
                    self._lost(e)
            if not self.reconnect or self._stop.is_set():
                break
            self._ser = self._reopen()
            if self._ser is None:
                if not self._stop.is_set():
                    error = f"{self.port} did not come back within {self.reconnect_timeout:g} s"
                break
            self.reconnects += 1
            self.queue.put(Connected(self.device, reconnect=True))
            if self._go_inline():
                return  # the consumer reads the port again (pump)
        self._close()
        self.queue.put(Closed(error))

    def _lost(self, e: BaseException) -> None:
        self._close()  # at once: a dead fd must not linger
        self.disconnects += 1
        self.queue.put(Disconnected(self.device or self.port, _reason(e)))
        self.decoder.new_link()

    # -- inline reading ----------------------------------------------------------------
    @property
    def inline(self) -> bool:
        """Whether the consumer reads the port itself now (pump); False while the
        thread does (a URL, the "block" policy, a reconnect in progress)."""
        return self._fd is not None

    def _go_inline(self) -> bool:
        fd = posix_fd(self._ser) if self.inline_requested else None
        if fd is None:
            return False
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN | select.POLLPRI)
        self._fd = fd
        return True

    def pump(self, timeout: float) -> None:
        """Inline mode: wait up to `timeout` s for the port, read what is there and queue
        its events (on the consumer's thread: no hand-over between threads per read).
        A read error hands the port to the thread, which reopens it as usual."""
        got = self.read_inline(timeout)
        if got is not None:
            self.feed(*got)

    def read_inline(self, timeout: float) -> Optional[tuple[bytes, float]]:
        """pump()'s wait and read without the decoding: (bytes, perf_counter at the read),
        or None (nothing came, or the port was lost: then handled as in pump). The caller
        hands what it does not take itself to feed()."""
        fd = self._fd
        if fd is None or self._stop.is_set():
            return None
        try:
            if self._poller.poll(timeout * 1000):
                return self._read_once(fd)
        except (OSError, ValueError, TypeError) as e:  # SerialException is an OSError
            self._lost_inline(e)
        return None

    def read_failed(self, err: int) -> None:
        """A read of the inline port done elsewhere (the live run's C loop) failed with
        errno `err` (0: it read nothing): handled as read_inline handles its own."""
        try:
            if not err:
                raise _serial_exception(_NO_DATA)
            if err not in _RETRY:
                e = OSError(err, os.strerror(err))
                raise _serial_exception(f"read failed: {e}") from e
        except OSError as e:
            self._lost_inline(e)

    def _lost_inline(self, e: BaseException) -> None:
        """The inline port failed: the thread reopens it (or the run ends)."""
        self._fd = None
        self._lost(e)
        if not self.reconnect or self._stop.is_set():
            self.queue.put(Closed(None))
            return
        self._start_thread()

    def _read_once(self, fd: int) -> Optional[tuple[bytes, float]]:
        try:
            data = os.read(fd, READ_SIZE)
        except OSError as e:
            if e.errno in _RETRY:
                return None
            raise _serial_exception(f"read failed: {e}") from e
        if not data:  # how a vanished device reads on Linux (as pyserial says it)
            raise _serial_exception(_NO_DATA)
        return data, time.perf_counter()

    def feed(self, data: bytes, t_read: float) -> None:
        """Decode bytes read from the port and queue their events."""
        events = self.decoder.feed(data, t_read)
        if len(events) > 1:
            self.queue.put_many(events)
        elif events:
            self.queue.put(events[0])

    def _read_until_error(self) -> None:
        ser = self._ser
        fd = posix_fd(ser)
        if fd is not None:
            self._read_fd(fd)
            return
        decoder, queue = self.decoder, self.queue
        while not self._stop.is_set():
            # Wait for one byte (or the timeout), then take everything already there:
            # one wake-up per burst, never a wait for a full buffer.
            data = ser.read(1)
            if not data:
                continue
            waiting = ser.in_waiting
            if waiting:
                data += ser.read(waiting)
            t_read = time.perf_counter()
            for event in decoder.feed(data, t_read):
                queue.put(event)

    def _read_fd(self, fd: int) -> None:
        """The POSIX port's own file descriptor, read directly: one poll and one read of
        everything already there per wake-up (pyserial's read(1) + in_waiting + read(n)
        take five system calls), the same errors as pyserial's read raises."""
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        timeout_ms = READ_TIMEOUT_S * 1000
        decoder, queue, stop = self.decoder, self.queue, self._stop
        feed, put, clock, read = decoder.feed, queue.put, time.perf_counter, os.read
        # put_many where put is SampleQueue's own (a subclass's put may do more per event)
        put_many = queue.put_many if type(queue).put is SampleQueue.put else None
        while not stop.is_set():
            if not poller.poll(timeout_ms):
                continue
            try:
                data = read(fd, READ_SIZE)
            except OSError as e:
                if e.errno in _RETRY:
                    continue
                raise _serial_exception(f"read failed: {e}") from e
            if not data:  # how a vanished device reads on Linux (as pyserial says it)
                raise _serial_exception(_NO_DATA)
            events = feed(data, clock())
            if put_many is not None and len(events) > 1:
                put_many(events)
            else:
                for event in events:
                    put(event)


_RETRY = (errno.EAGAIN, errno.EALREADY, errno.EWOULDBLOCK, errno.EINPROGRESS, errno.EINTR)
_NO_DATA = (
    "device reports readiness to read but returned no data "
    "(device disconnected or multiple access on port?)"
)  # pyserial's words


def _serial_exception(text: str) -> Exception:
    import serial

    return serial.SerialException(text)


def posix_fd(ser) -> Optional[int]:
    """The file descriptor of a local POSIX serial port (a tty, a pty), read directly
    by PortReader; None for anything else (sockets, rfc2217, loop://, Windows)."""
    try:
        from serial.serialposix import Serial as PosixSerial
    except ImportError:  # Windows
        return None
    if type(ser) is not PosixSerial or not ser.is_open:
        return None
    fd = getattr(ser, "fd", None)
    return fd if isinstance(fd, int) and fd >= 0 else None


__all__ = [
    "Closed",
    "Connected",
    "Disconnected",
    "Event",
    "LinkEvent",
    "PortError",
    "PortInfo",
    "PortReader",
    "SampleQueue",
    "UsbMatch",
    "list_ports",
    "open_port",
    "parse_usb_match",
]
