"""One live record as a JSON line, fast, byte for byte what RecordWriter writes.

RecordWriter (runtime/output.py) writes a JSON-lines record as
`json.dumps(_jsonable(record), separators=(",", ":"))`: every float as the shortest
decimal that reads back as the same float32, NaN and inf as null. That costs ~35 µs
for a record of 8 channels (a float32 scalar made and parsed back per value, the
generic walk, the encoder); `json_line` gives the same bytes in a fraction of it:
numpy's shortest float32 digits are used as they are when they are positional (the
float64 nearest them prints as the same digits in Python), the few others (an
exponent, NaN, inf) and anything not a plain float, int or dict of floats go through
RecordWriter's own formula. tests/test_bridge_live.py checks the two agree on
records and on floats drawn over every float32 exponent.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from edgernn.runtime.output import _jsonable, _num

_float32 = np.float32
_FLOATS = (float, np.float64, np.float32)
_keys: dict[str, str] = {}  # key -> '"key":', as json.dumps writes it


def json_float(v) -> str:
    """RecordWriter's token for a float: float(str(np.float32(v))), as JSON."""
    s = str(_float32(v))
    if "e" in s or "n" in s:  # an exponent (Python may print it positionally), nan, inf
        return json.dumps(_num(v))
    return s


def _key(k: Any) -> str:
    token = _keys.get(k) if type(k) is str else None
    if token is None:
        token = json.dumps(k if type(k) is str else str(k)) + ":"
        if type(k) is str and len(_keys) < 4096:
            _keys[k] = token
    return token


def json_value(v: Any) -> str:
    t = type(v)
    if t in _FLOATS:
        return json_float(v)
    if t is int:
        return int.__repr__(v)
    if v is None:
        return "null"
    if t is dict and all(type(k) is str for k in v):
        return "{" + ",".join([_key(k) + json_value(x) for k, x in v.items()]) + "}"
    return json.dumps(_jsonable(v), separators=(",", ":"))


def json_line(record: dict[str, Any]) -> str:
    """The record's line, newline included."""
    if not all(type(k) is str for k in record):
        return json.dumps(_jsonable(record), separators=(",", ":")) + "\n"
    return "{" + ",".join([_key(k) + json_value(v) for k, v in record.items()]) + "}\n"


__all__ = ["json_float", "json_line", "json_value"]
