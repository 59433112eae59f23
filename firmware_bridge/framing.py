"""The incremental decoder: bytes in, sample events out, every sample accounted for.

`Decoder.feed(data)` accepts bytes split anywhere (mid-line, mid-frame, mid-COBS
block) and returns the events completed by them. It never raises on wire content:
whatever does not parse is counted in `Decoder.counters` and skipped.

Modes: "text" (one sample per line), "binary" (COBS frames, see protocol.py) or
"auto": bytes are buffered until one mode proves itself (a binary frame with a good
CRC, or two consecutive parseable lines with no 0x00 byte), then the buffer is
replayed through that mode, so detection loses nothing. After 64 consecutive
rejects in auto mode the decoder goes back to detecting (the device was reflashed).

Accounting (binary): samples received, frames rejected (by reason), samples missing
(sequence gaps), samples the device says it dropped, reboots (new session id in a
hello frame) and backward sequence jumps. Text lines carry no sequence number: a
rejected line is a rejected sample, a line never sent is invisible.

Channel mapping to the model's order happens here, so events carry samples in
model channel order: text `name:value` pairs and binary hello names map by name,
plain values and unnamed frames by position (their count must match).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np

from edgernn.firmware_bridge.options import MODES
from edgernn.firmware_bridge.protocol import (
    MAX_ENCODED,
    U32,
    DataFrame,
    FrameError,
    HelloFrame,
    UnknownFrame,
    decode_frame,
)

MAX_LINE = 4096  # longer "lines" are binary junk, not samples
DETECT_LIMIT = 64 * 1024  # bytes buffered while auto-detecting before the oldest go
REDETECT_AFTER = 64  # consecutive rejects that send auto mode back to detecting
FIELD_SPLIT = re.compile(r"[,;\s]+")


# -- events --------------------------------------------------------------------------
@dataclass
class Samples:
    """Consecutive samples in model channel order."""

    seq: int  # seq of values[0]: the device's u32 seq (binary) or a host line count (text)
    values: np.ndarray  # (n, C) float32
    gap: int = 0  # samples missing right before values[0] (sequence gap, queue overflow)
    time_us: Optional[int] = None  # device time of values[0] (binary)
    period_us: Optional[float] = None  # device sample period, once a hello told it
    t_read: float = 0.0  # host perf_counter() when the bytes were read


@dataclass
class DeviceInfo:
    """A hello frame whose content changed (first one, new session, new names)."""

    hello: HelloFrame
    mapping: str  # "by name", "by position", or why samples cannot be mapped


@dataclass
class Reboot:
    """The device restarted (new session id): the stream starts over."""

    old_session: int
    new_session: int


@dataclass
class SeqReset:
    """The sequence number jumped backwards without a new session: the stream starts over."""

    expected: int
    got: int


@dataclass
class ModeDetected:
    mode: str


@dataclass
class ChannelMismatch:
    """The device's channels cannot be mapped onto the model's: fatal for a live run."""

    message: str


@dataclass
class TextMismatch:
    """Well-formed text lines that do not fit the model's channels (other names, another
    count): each such line is rejected (reason "channels"); this event comes once per
    kind of mismatch, saying what was expected and what arrived."""

    message: str


Event = Union[
    Samples, DeviceInfo, Reboot, SeqReset, ModeDetected, ChannelMismatch, TextMismatch
]


# -- counters ------------------------------------------------------------------------
@dataclass
class Counters:
    bytes: int = 0
    frames: int = 0  # good binary data frames
    hellos: int = 0
    lines: int = 0  # good text lines
    samples: int = 0  # samples received and passed on
    rejected: int = 0  # frames or lines that failed to decode
    rejected_by: dict[str, int] = field(default_factory=dict)
    discarded_bytes: int = 0  # bytes in rejected chunks, overlong runs, detection overflow
    missing: int = 0  # samples lost between device and host (sequence gaps)
    unmapped: int = 0  # samples received before a hello told how to map their channels
    ignored: int = 0  # well-formed frames of an unknown type (newer firmware)
    reboots: int = 0
    seq_resets: int = 0
    device_dropped_past: int = 0  # device-dropped counts of finished sessions
    device_dropped_now: int = 0  # the current session's counter, from its last hello

    @property
    def device_dropped(self) -> int:
        return self.device_dropped_past + self.device_dropped_now

    def reject(self, reason: str, nbytes: int) -> None:
        self.rejected += 1
        self.rejected_by[reason] = self.rejected_by.get(reason, 0) + 1
        self.discarded_bytes += nbytes

    def snapshot(self) -> dict[str, int | dict[str, int]]:
        d = {k: v for k, v in vars(self).items() if not k.startswith("device_dropped_")}
        d["rejected_by"] = dict(self.rejected_by)
        d["device_dropped"] = self.device_dropped
        return d


# -- channel mapping -----------------------------------------------------------------
def channel_index(
    model: Optional[Sequence[str]], names: Sequence[str], count: int
) -> tuple[Optional[np.ndarray], str]:
    """Columns of the device's samples to take, in model order, and how they map.

    By name when every model channel is among the device's names (extra device
    channels are ignored), else by position when the counts match, else None.
    """
    if model is None:
        return np.arange(count), "by position"
    if names and set(model) <= set(names):
        pos = {n: i for i, n in enumerate(names)}
        idx = np.array([pos[c] for c in model])
        return idx, "by name" if len(names) == len(model) else f"by name ({len(names)} sent)"
    if count == len(model):
        return np.arange(count), "by position"
    sent = f" ({', '.join(names)})" if names else ""
    return None, (
        f"the device sends {count} channels{sent} but the model expects {len(model)} "
        f"({', '.join(model)})"
    )


# -- text mode -----------------------------------------------------------------------
class TextParser:
    """One line -> one sample in model order, or None (the caller counts the reject)."""

    def __init__(self, channels: Optional[Sequence[str]]):
        self.channels = list(channels) if channels is not None else None
        self.width: Optional[int] = len(channels) if channels is not None else None
        # why the last line parsed was rejected though well-formed (None: it fit, or it
        # was no sample line at all)
        self.mismatch: Optional[str] = None

    def parse(self, line: bytes) -> Optional[np.ndarray]:
        self.mismatch = None
        try:
            text = line.decode("ascii").strip()
        except UnicodeDecodeError:
            return None
        if not text:
            return None
        fields = FIELD_SPLIT.split(text)
        if ":" in text:
            return self._named(fields)
        return self._plain(fields)

    def _plain(self, fields: list[str]) -> Optional[np.ndarray]:
        values = _floats(fields)
        if values is None:
            return None
        if self.width is None:
            self.width = len(values)  # no model: the first good line fixes the width
        if len(values) != self.width:
            self.mismatch = f"the device sends {len(values)} values per line but " + (
                f"the model expects {self.width} ({', '.join(self.channels)})"
                if self.channels is not None else f"its first lines had {self.width}"
            )  # fmt: skip
            return None
        return values

    def _named(self, fields: list[str]) -> Optional[np.ndarray]:
        pairs = [f.split(":", 1) for f in fields]
        if any(len(p) != 2 or not p[0] for p in pairs):
            return None
        values = _floats([v for _, v in pairs])
        if values is None:
            return None
        by_name = dict(zip([k for k, _ in pairs], values))
        want = self.channels if self.channels is not None else [k for k, _ in pairs]
        if len(by_name) != len(pairs):
            return None
        if not set(want) <= set(by_name):
            missing = [c for c in want if c not in by_name]
            self.mismatch = (
                f"the device's lines name {', '.join(by_name)} but the model expects "
                f"{', '.join(want)} (missing {', '.join(missing)})"
            )
            return None
        if self.width is None:
            self.width = len(want)
        if len(want) != self.width:
            self.mismatch = f"the device sends {len(want)} named values per line, its first lines {self.width}"
            return None
        return np.array([by_name[c] for c in want], dtype=np.float32)


def _floats(fields: list[str]) -> Optional[np.ndarray]:
    try:
        values = np.array([float(f) for f in fields], dtype=np.float32)
    except ValueError:
        return None
    return values if np.isfinite(values).all() else None


# -- the decoder ---------------------------------------------------------------------
class Decoder:
    def __init__(self, mode: str = "auto", channels: Optional[Sequence[str]] = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.requested = mode
        self.mode: Optional[str] = mode  # None while detecting
        self.channels = list(channels) if channels is not None else None
        self.counters = Counters()
        self._buf = bytearray()
        self._overlong = False  # discarding a run longer than any frame/line
        self._consecutive_rejects = 0
        self._text = TextParser(self.channels)
        self._mismatches_told: set[str] = set()
        self._line_seq = 0
        if mode == "auto":
            self._start_detecting()
        # binary stream state
        self.session: Optional[int] = None
        self.hello: Optional[HelloFrame] = None
        self._next_seq: Optional[int] = None  # u32 seq expected next
        self._index: Optional[np.ndarray] = None  # device columns in model order
        self._index_width: Optional[int] = None
        self._identity = False  # _index takes every column in order: no copy needed
        self._period_us: Optional[float] = None
        self._reset_pending = False  # a SeqReset waits for the new session's hello

    # -- public ------------------------------------------------------------------
    def feed(self, data: bytes, t_read: float = 0.0) -> list[Event]:
        self.counters.bytes += len(data)
        self._buf += data
        events: list[Event] = []
        if self.mode is None:
            self._detect(events)
        if self.mode == "binary":
            self._binary(events, t_read)
        elif self.mode == "text":
            self._lines(events, t_read)
        return events

    def new_link(self) -> None:
        """The port was closed and reopened: drop any partial frame, re-detect the mode.

        The sequence state is kept: the same device may carry on where it was.
        """
        self.counters.discarded_bytes += len(self._buf)
        self._buf.clear()
        self._overlong = False
        self._consecutive_rejects = 0
        if self.requested == "auto":
            self._start_detecting()

    # -- auto-detection ----------------------------------------------------------
    def _start_detecting(self) -> None:
        self.mode = None
        self._probe = TextParser(self.channels)
        self._bin_scan = 0  # start of the first chunk not yet examined
        self._txt_scan = 0  # start of the first line not yet examined
        self._prev_line_ok = False

    def _detect(self, events: list[Event]) -> None:
        """Examine only what completed since the last call: detection stays linear."""
        buf = self._buf
        while self.mode is None:
            end = buf.find(0, self._bin_scan)
            if end < 0:
                break
            chunk = bytes(buf[self._bin_scan : end])
            self._bin_scan = end + 1
            if chunk and len(chunk) <= MAX_ENCODED and _is_frame(chunk):
                self.mode = "binary"
        while self.mode is None:
            end = buf.find(b"\n", self._txt_scan)
            if end < 0:
                break
            line = bytes(buf[self._txt_scan : end])
            self._txt_scan = end + 1
            # A well-formed line that does not fit the model still proves text mode:
            # the text decoder then says what does not fit.
            ok = (
                len(line) <= MAX_LINE
                and b"\x00" not in line
                and (self._probe.parse(line) is not None or self._probe.mismatch is not None)
            )
            if ok and self._prev_line_ok:
                self.mode = "text"
            self._prev_line_ok = ok
        if self.mode is not None:
            self._consecutive_rejects = 0
            events.append(ModeDetected(self.mode))
        elif len(buf) > DETECT_LIMIT:
            cut = len(buf) - DETECT_LIMIT // 2
            self.counters.discarded_bytes += cut
            del buf[:cut]
            self._bin_scan = max(0, self._bin_scan - cut)
            self._txt_scan = max(0, self._txt_scan - cut)

    def _rejected(self, reason: str, nbytes: int) -> None:
        self.counters.reject(reason, nbytes)
        self._consecutive_rejects += 1
        if self.requested == "auto" and self._consecutive_rejects >= REDETECT_AFTER:
            self._start_detecting()  # the remaining buffer is re-examined on the next feed

    def _accepted(self) -> None:
        self._consecutive_rejects = 0

    # -- text mode ---------------------------------------------------------------
    def _lines(self, events: list[Event], t_read: float) -> None:
        rows: list[np.ndarray] = []
        first_seq = self._line_seq
        while self.mode == "text":
            end = self._buf.find(b"\n")
            if end < 0:
                break
            line = bytes(self._buf[:end])
            del self._buf[: end + 1]
            # Too long whether it arrived whole or in pieces: the same verdict (and the
            # same counters) however the bytes were split across reads.
            if self._overlong or len(line) > MAX_LINE:
                self._overlong = False
                self._rejected("overlong", len(line) + 1)
                continue
            values = self._text.parse(line)
            if values is None and self._text.mismatch is not None:
                self._rejected("channels", len(line) + 1)
                if len(self._mismatches_told) < 3 and self._text.mismatch not in self._mismatches_told:
                    self._mismatches_told.add(self._text.mismatch)
                    events.append(TextMismatch(self._text.mismatch))
                continue
            if values is None:
                self._rejected("parse", len(line) + 1)
                continue
            self._accepted()
            self.counters.lines += 1
            rows.append(values)
        if len(self._buf) > MAX_LINE:
            self.counters.discarded_bytes += len(self._buf)
            self._buf.clear()
            self._overlong = True
        if rows:
            self._line_seq += len(rows)
            self.counters.samples += len(rows)
            events.append(Samples(first_seq, np.stack(rows), t_read=t_read))

    # -- binary mode -------------------------------------------------------------
    def _binary(self, events: list[Event], t_read: float) -> None:
        while self.mode == "binary":
            end = self._buf.find(0)
            if end < 0:
                break
            chunk = bytes(self._buf[:end])
            del self._buf[: end + 1]
            if self._overlong or len(chunk) > MAX_ENCODED:  # as for lines: split-independent
                self._overlong = False
                self._rejected("overlong", len(chunk) + 1)
                continue
            if not chunk:
                continue  # back-to-back delimiters: an idle line, not an error
            try:
                frame = decode_frame(chunk)
            except FrameError as e:
                self._rejected(e.reason, len(chunk) + 1)
                continue
            self._accepted()
            if isinstance(frame, DataFrame):
                self._on_data(frame, events, t_read)
            elif isinstance(frame, HelloFrame):
                self._on_hello(frame, events)
            elif isinstance(frame, UnknownFrame):
                self.counters.ignored += 1
        if len(self._buf) > MAX_ENCODED:
            self.counters.discarded_bytes += len(self._buf)
            self._buf.clear()
            self._overlong = True

    def _on_hello(self, hello: HelloFrame, events: list[Event]) -> None:
        c = self.counters
        c.hellos += 1
        changed = self.hello is None or hello.names != self.hello.names
        if self.session is not None and hello.session != self.session:
            c.reboots += 1
            c.device_dropped_past += c.device_dropped_now
            if self._reset_pending:
                self._reset_pending = False  # already restarted on the backward jump
            else:
                events.append(Reboot(self.session, hello.session))
                self._next_seq = hello.seq
            changed = True
        else:
            self._reset_pending = False  # same session: that backward jump was no reboot
            if self._next_seq is None:
                self._next_seq = hello.seq  # frames lost after this hello count as missing
        self.session = hello.session
        c.device_dropped_now = hello.dropped
        self._period_us = 1e6 / hello.rate_hz if hello.rate_hz > 0 else None
        self.hello = hello
        if changed:
            self._index, how = channel_index(self.channels, hello.names, len(hello.names))
            self._index_width = len(hello.names)
            self._identity = _is_identity(self._index, self._index_width)
            events.append(DeviceInfo(hello, how))
            if self._index is None:
                events.append(ChannelMismatch(how))

    def _on_data(self, frame: DataFrame, events: list[Event], t_read: float) -> None:
        c = self.counters
        n, width = frame.samples.shape
        c.frames += 1
        gap = 0
        if self._next_seq is not None:
            delta = (frame.seq - self._next_seq) & U32
            if delta < 1 << 31:
                gap = delta
                c.missing += gap
            else:
                c.seq_resets += 1
                self._reset_pending = True
                events.append(SeqReset(self._next_seq, frame.seq))
        self._next_seq = (frame.seq + n) & U32
        if self._index_width != width and self.hello is None:
            self._index, _ = channel_index(self.channels, [], width)
            self._index_width = width
            self._identity = _is_identity(self._index, width)
        if self._index is None or self._index_width != width:
            # Before a hello, a channel count unlike the model's cannot be mapped (the
            # hello may map it by name); after one, the frame contradicts it.
            c.unmapped += n
            return
        c.samples += n
        if self.channels is None or self._identity:
            values = frame.samples  # decode_frame's own copy, C-contiguous
        else:
            values = np.ascontiguousarray(frame.samples[:, self._index])
        events.append(
            Samples(
                frame.seq,
                values,
                gap,
                frame.time_us,
                self._period_us,
                t_read,
            )
        )


def _is_identity(index: Optional[np.ndarray], width: int) -> bool:
    return index is not None and len(index) == width and bool((index == np.arange(width)).all())


def _is_frame(chunk: bytes) -> bool:
    try:
        decode_frame(chunk)
    except FrameError:
        return False
    return True
