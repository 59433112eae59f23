"""MQTT payloads -> samples in model channel order.

A payload is one of
  - a JSON object of channel values, optionally with a sequence number and a timestamp:
    {"temp": 21.5, "hum": 40.1, "seq": 1234, "ts": 1733040000.25}
    ("seq" is an integer; "ts" or "time", a number or a string, is passed through to
    the output as "time", a number with a fraction as its exact decimal text);
  - a JSON array of values in model channel order: [21.5, 40.1];
  - a batch, oldest first: an array of such objects, or an array of such arrays (a
    device sending 10 samples per message costs the broker and us a tenth);
  - the text lines a serial device sends (`21.5,40.1` or `temp:21.5 hum:40.1`), one
    sample per line, parsed by the serial path's TextParser.

A value of null (or NaN) is a sample the sensor could not read: the sample is kept as
non-finite so the fleet counts it invalid and handles it as a gap, exactly as the
serial path does. Anything else that does not parse raises PayloadError with a short
reason, which the fleet counts per device (rejected_by).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from edgernn.firmware_bridge.framing import TextParser

SEQ_FIELDS = ("seq",)
TIME_FIELDS = ("ts", "time")
META_FIELDS = frozenset(SEQ_FIELDS + TIME_FIELDS)
MAX_PAYLOAD = 64 * 1024  # a sample is tens of bytes; anything this big is not one


class PayloadError(ValueError):
    """A payload that is not a sample; `reason` is the counter it goes under."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Reading:
    """One sample of one device, in model channel order (NaN where the device sent null)."""

    values: np.ndarray  # (C,) float32
    seq: Optional[int] = None
    time: Any = None
    ignored: tuple[str, ...] = field(default_factory=tuple)  # extra JSON fields, not channels


class ChannelNames(PayloadError):
    """The object's field names do not cover the model's channels."""

    def __init__(self, missing: Sequence[str], unknown: Sequence[str]):
        self.missing = list(missing)
        self.unknown = list(unknown)
        super().__init__("channels", f"missing {', '.join(missing)}")


class PayloadParser:
    def __init__(self, channels: Sequence[str]):
        self.channels = list(channels)
        self._names = frozenset(self.channels)
        self._text = TextParser(self.channels)

    def parse(self, payload: bytes) -> list[Reading]:
        """The samples in one payload (one for JSON, one per line for text)."""
        if len(payload) > MAX_PAYLOAD:
            raise PayloadError("size", f"{len(payload)} bytes")
        head = payload.lstrip()[:1]
        if head in (b"{", b"["):
            return self._json(payload)
        return self._lines(payload)

    # -- JSON ----------------------------------------------------------------------
    def _json(self, payload: bytes) -> list[Reading]:
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as e:
            raise PayloadError("json", str(e)[:80]) from None
        except RecursionError:
            raise PayloadError("json", "nested too deep") from None
        if isinstance(doc, dict):
            return [self._object(doc)]
        if not isinstance(doc, list) or not doc:
            raise PayloadError("json", "neither an object nor a non-empty array")
        if all(isinstance(d, dict) for d in doc):  # a batch of samples, oldest first
            return [self._object(d) for d in doc]
        if all(isinstance(d, list) for d in doc):
            return [Reading(self._values(d, "position")) for d in doc]
        return [Reading(self._values(doc, "position"))]

    def _object(self, doc: dict) -> Reading:
        try:
            items = [doc[c] for c in self.channels]
        except KeyError:
            names = [k for k in doc if k not in META_FIELDS]
            missing = [c for c in self.channels if c not in doc]
            raise ChannelNames(missing, [n for n in names if n not in self.channels]) from None
        ignored: tuple[str, ...] = ()
        if len(doc) > len(self.channels):  # more than the channels: meta fields, or extras
            ignored = tuple(k for k in doc if k not in META_FIELDS and k not in self._names)
        return Reading(self._values(items, "name"), _seq(doc), _time(doc), ignored)

    def _values(self, items: list, how: str) -> np.ndarray:
        if how == "position" and len(items) != len(self.channels):
            raise PayloadError(
                "width", f"{len(items)} values, the model has {len(self.channels)} channels"
            )
        if all(type(v) is float or type(v) is int for v in items):  # the common case, fast
            try:
                wide = np.array(items, dtype=np.float64)
            except OverflowError:  # an integer beyond any float: the slow path says NaN
                pass
            else:
                wide[~(np.abs(wide) < 3.4e38)] = np.nan  # inf, NaN, beyond float32: invalid
                return wide.astype(np.float32)
        out = np.empty(len(items), dtype=np.float32)
        for i, v in enumerate(items):
            if v is None:
                out[i] = np.nan  # the sensor sent "no reading": an invalid sample, a gap
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                out[i] = _finite32(v)
            else:
                raise PayloadError("value", f"{type(v).__name__} is not a number")
        return out

    # -- text lines ----------------------------------------------------------------
    def _lines(self, payload: bytes) -> list[Reading]:
        lines = [ln for ln in payload.splitlines() if ln.strip()]
        if not lines:
            raise PayloadError("empty")
        readings = []
        for line in lines:
            values = self._text.parse(line)
            if values is None:
                raise PayloadError("text", line[:40].decode("ascii", "replace"))
            readings.append(Reading(values))
        return readings


def _finite32(v) -> float:
    """v as a float32 value, or NaN (an invalid sample) if it is not one."""
    try:
        f = float(v)
    except OverflowError:
        return math.nan
    return f if math.isfinite(f) and abs(f) < 3.4e38 else math.nan


def _finite64(v) -> float:
    try:
        return float(v)
    except OverflowError:
        return math.inf


def _seq(doc: dict) -> Optional[int]:
    seq = doc.get("seq")
    if seq is None:
        return None
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise PayloadError("seq", f"{seq!r} is not a non-negative integer")
    return seq


def _time(doc: dict) -> Any:
    for name in TIME_FIELDS:
        value = doc.get(name)
        if value is not None:
            if isinstance(value, str) or (
                isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(_finite64(value))
            ):
                return value
            raise PayloadError("time", f"{name} must be a finite number or a string")
    return None
