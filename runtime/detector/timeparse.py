"""Timestamps from a time column, as seconds of wall-clock time.

The detector needs two things from a time column: durations (a false-alarm budget in
days, event lengths) and the time of day / week (seasonal baselines). Wall-clock time
as written is what matters for both (a shop opens at 9 local time), so a UTC offset, if
any, is dropped rather than applied.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from typing import Optional, Union

import numpy as np

EPOCH = datetime(1970, 1, 1)
# Numbers this large are epoch seconds (from 1973 on); larger still, milliseconds.
EPOCH_SECONDS_MIN, EPOCH_MS_MIN = 1e8, 1e11
_FORMATS = (
    "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d", "%Y/%m/%d %H:%M:%S", "%Y/%m/%d",
    "%d/%m/%Y %H:%M:%S", "%d/%m/%Y", "%d.%m.%Y %H:%M:%S", "%d.%m.%Y",
)  # fmt: skip


def parse_time(value: Union[str, float, int, None]) -> Optional[float]:
    """Seconds since 1970-01-01 (wall clock as written), or None if it is not a date.
    Plain numbers count as epoch seconds (or milliseconds) only when they are that big:
    a row counter is not a calendar."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return _epoch_number(float(value))
    text = str(value).strip()
    if not text:
        return None
    try:
        return _epoch_number(float(text))
    except ValueError:
        pass
    if text.endswith(("Z", "z")):
        text = text[:-1]
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        stamp = _strptime(text)
        if stamp is None:
            return None
    return (stamp.replace(tzinfo=None) - EPOCH).total_seconds()


MAX_SECONDS = 253402300799.0  # 9999-12-31T23:59:59, the last second datetime can show


def as_seconds(value: Union[str, float, int, None]) -> Optional[float]:
    """A timestamp handed to the detector as seconds, or None if it cannot be one.
    Text is parsed as a time column's cell; a number is taken as seconds (epoch
    seconds, or seconds since any start), epoch milliseconds are converted, and NaN,
    inf, out-of-calendar and non-numeric values are no clock at all (never an error:
    one odd timestamp from a device must not end a run)."""
    if value is None or isinstance(value, str):
        return parse_time(value)
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(v):
        return None
    if v >= EPOCH_MS_MIN:
        v /= 1000.0
    return v if abs(v) <= MAX_SECONDS else None


def as_seconds_array(values) -> np.ndarray:
    """as_seconds() of each value as a float64 array, NaN where it gives None. Text in
    one plain layout (YYYY-MM-DD HH:MM:SS, or with a T) is parsed by numpy in one call
    (the same seconds as datetime.fromisoformat); anything else value by value."""
    values = list(values)
    if values and all(isinstance(v, str) and _PLAIN.match(v) for v in values):
        try:
            stamps = np.array([v.replace("T", " ") for v in values], dtype="datetime64[s]")
            return stamps.astype(np.int64).astype(np.float64)
        except ValueError:
            pass
    out = [as_seconds(v) for v in values]
    return np.array([math.nan if v is None else v for v in out], dtype=np.float64)


_PLAIN = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}\Z")


def _epoch_number(v: float) -> Optional[float]:
    if not math.isfinite(v) or v < EPOCH_SECONDS_MIN:
        return None
    return v / 1000.0 if v >= EPOCH_MS_MIN else v


def _strptime(text: str) -> Optional[datetime]:
    for fmt in _FORMATS:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


def format_time(seconds: Optional[float]) -> Optional[str]:
    """ISO text of a parse_time() value (None stays None)."""
    if seconds is None:
        return None
    return (EPOCH + timedelta(seconds=seconds)).isoformat(timespec="seconds")
