"""The binary wire format: COBS framing, CRC-16/CCITT-FALSE, frame layouts, encoder.

One frame on the wire is COBS(raw) followed by a 0x00 delimiter. `raw` is

    offset size  field
    0      1     version (1)
    1      1     type: 1 = data, 2 = hello
    2      1     channels C (1..255)
    3      1     samples in this frame S (data: 1..255; hello: 0)
    4      4     seq, u32 LE: data: seq of the first sample; hello: seq of the next sample
    8      4     device time in microseconds, u32 LE (wraps every ~71.6 minutes)
    12     ...   payload
                   data:  S * C float32 LE, sample-major (s0c0 s0c1 ... s1c0 ...)
                   hello: session u32, sample rate float32 (Hz), dropped u32,
                          then C names, each a u8 length + UTF-8 bytes
    end-2  2     CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) of bytes [0, end-2), u16 LE

PROTOCOL.md is the normative description; firmware/edgernn_frame.c is the C encoder
and must produce byte-identical frames (the test suite checks it).
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

VERSION = 1
TYPE_DATA = 1
TYPE_HELLO = 2
HEADER = struct.Struct("<BBBBII")  # version, type, channels, samples, seq, time_us
HELLO = struct.Struct("<IfI")  # session, sample rate (Hz), device-dropped samples
HEADER_SIZE = HEADER.size  # 12
CRC_SIZE = 2
MAX_NAME = 32  # bytes of UTF-8 per channel name
MAX_RAW = 4096  # largest raw (un-stuffed) frame a receiver must accept
MAX_ENCODED = MAX_RAW + MAX_RAW // 254 + 2  # COBS overhead is at most 1 byte in 254
U32 = 0xFFFFFFFF
_F4LE = np.dtype("<f4")


class FrameError(ValueError):
    """A chunk between two delimiters is not a valid frame; `reason` names why."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class DataFrame:
    seq: int  # u32 seq of samples[0]
    time_us: int  # u32 device time of samples[0]
    samples: np.ndarray  # (S, C) float32


@dataclass
class HelloFrame:
    session: int  # u32, new on every device boot
    rate_hz: float
    dropped: int  # samples the device itself dropped this session (ring buffer overrun)
    seq: int  # seq the next data sample will carry
    time_us: int
    names: list[str] = field(default_factory=list)


@dataclass
class UnknownFrame:
    """A well-formed frame of a type this host does not know (sent by newer firmware)."""

    type: int


# -- CRC and COBS --------------------------------------------------------------------
def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: crc16(b"123456789") == 0x29B1."""
    return binascii.crc_hqx(data, 0xFFFF)


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: the result holds no 0x00 byte."""
    out = bytearray()
    blocks = bytes(data).split(b"\x00")
    for k, block in enumerate(blocks):
        # Zero-free runs of 254+ bytes are cut into 254-byte pieces coded 0xFF ("254
        # data bytes, no zero follows"). Canonical COBS (as in the C encoder): a
        # final run that ends exactly on such a piece gets no empty trailing block.
        while len(block) >= 254:
            out.append(0xFF)
            out += block[:254]
            block = block[254:]
            if not block and k == len(blocks) - 1:
                return bytes(out)
        out.append(len(block) + 1)
        out += block
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Inverse of cobs_encode; raises FrameError("cobs") on a malformed block."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise FrameError("cobs", "zero byte inside a frame")
        end = i + code
        if end > n:
            raise FrameError("cobs", "block runs past the end of the frame")
        out += data[i + 1 : end]
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


# -- encoding ------------------------------------------------------------------------
def _seal(raw: bytes) -> bytes:
    """raw + CRC, COBS-stuffed, 0x00-terminated: ready for the wire."""
    return cobs_encode(raw + struct.pack("<H", crc16(raw))) + b"\x00"


def encode_data(seq: int, time_us: int, samples) -> bytes:
    """A data frame for samples (S, C) (or one sample (C,)) starting at `seq`."""
    arr = np.asarray(samples, dtype="<f4")
    if arr.ndim == 1:
        arr = arr[None, :]
    s, c = arr.shape
    if not (1 <= s <= 255 and 1 <= c <= 255):
        raise ValueError(f"a frame holds 1..255 samples of 1..255 channels, got {arr.shape}")
    if HEADER_SIZE + 4 * s * c + CRC_SIZE > MAX_RAW:
        raise ValueError(f"{s} samples x {c} channels exceed the {MAX_RAW}-byte frame limit")
    head = HEADER.pack(VERSION, TYPE_DATA, c, s, seq & U32, time_us & U32)
    return _seal(head + arr.tobytes())


def encode_hello(
    session: int,
    rate_hz: float,
    names: Sequence[str],
    dropped: int = 0,
    seq: int = 0,
    time_us: int = 0,
) -> bytes:
    """A hello frame: who the device is and how it samples. Sent at boot and ~1/s."""
    c = len(names)
    if not 1 <= c <= 255:
        raise ValueError(f"a device has 1..255 channels, got {c}")
    head = HEADER.pack(VERSION, TYPE_HELLO, c, 0, seq & U32, time_us & U32)
    body = HELLO.pack(session & U32, float(rate_hz), dropped & U32)
    for name in names:
        b = name.encode("utf-8")[:MAX_NAME]
        body += bytes([len(b)]) + b
    raw = head + body
    if len(raw) + CRC_SIZE > MAX_RAW:
        raise ValueError("hello frame too long: shorten the channel names")
    return _seal(raw)


# -- decoding ------------------------------------------------------------------------
def decode_frame(chunk: bytes) -> DataFrame | HelloFrame | UnknownFrame:
    """Decode the bytes between two 0x00 delimiters; raises FrameError with a reason
    (cobs, short, crc, version, length, names)."""
    raw = cobs_decode(chunk)
    if len(raw) < HEADER_SIZE + CRC_SIZE:
        raise FrameError("short", f"{len(raw)} bytes")
    body, (crc,) = raw[:-CRC_SIZE], struct.unpack("<H", raw[-CRC_SIZE:])
    if crc16(body) != crc:
        raise FrameError("crc")
    version, ftype, c, s, seq, time_us = HEADER.unpack_from(body)
    if version != VERSION:
        raise FrameError("version", f"protocol version {version}, this host reads {VERSION}")
    if ftype == TYPE_DATA:
        if c == 0 or s == 0 or len(body) != HEADER_SIZE + 4 * c * s:
            raise FrameError("length", f"{len(body)} bytes for {s} x {c} samples")
        samples = np.frombuffer(body, dtype=_F4LE, offset=HEADER_SIZE).reshape(s, c)
        return DataFrame(seq, time_us, samples.astype(np.float32))  # a copy, C-contiguous
    if ftype == TYPE_HELLO:
        return _decode_hello(body, c, seq, time_us)
    return UnknownFrame(ftype)


def _decode_hello(body: bytes, c: int, seq: int, time_us: int) -> HelloFrame:
    if c == 0 or len(body) < HEADER_SIZE + HELLO.size:
        raise FrameError("length", "hello frame too short")
    session, rate, dropped = HELLO.unpack_from(body, HEADER_SIZE)
    names, i = [], HEADER_SIZE + HELLO.size
    for _ in range(c):
        if i >= len(body) or i + 1 + body[i] > len(body):
            raise FrameError("names", "channel names run past the end of the frame")
        n = body[i]
        try:
            names.append(body[i + 1 : i + 1 + n].decode("utf-8"))
        except UnicodeDecodeError as e:
            raise FrameError("names", "channel name is not UTF-8") from e
        i += 1 + n
    if i != len(body):
        raise FrameError("length", "trailing bytes after the channel names")
    return HelloFrame(session, float(rate), dropped, seq, time_us, names)
