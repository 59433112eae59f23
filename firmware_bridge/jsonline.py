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
import os
from operator import add
from typing import Any, Optional

import numpy as np

from edgernn.runtime.output import _jsonable, _num

_float32 = np.float32
_FLOATS = (float, np.float64, np.float32)
_keys: dict[str, str] = {}  # key -> '"key":', as json.dumps writes it


def json_float(v) -> str:
    """RecordWriter's token for a float: float(str(np.float32(v))), as JSON."""
    token = _c_token[0] if _c_token else _load_c_token()
    if token is not None:  # C, ~10x faster than a numpy scalar's str (None: not sure)
        s = token(v)
        if s is not None:
            return s
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


def json_fields(rest: dict[str, Any]) -> str:
    """',"key":value' for each item, as RecordLines.line writes a record's other fields."""
    return "".join([f",{_key(k)}{json_value(v)}" for k, v in rest.items()])


def json_line(record: dict[str, Any]) -> str:
    """The record's line, newline included."""
    if not all(type(k) is str for k in record):
        return json.dumps(_jsonable(record), separators=(",", ":")) + "\n"
    return "{" + ",".join([_key(k) + json_value(v) for k, v in record.items()]) + "}\n"


class RecordLines:
    """json_line of the live run's records, made from the sample and forecast arrays:
    {"seq", ["time_us"], <channels>: x, "forecast": {<channels>: forecast}, <rest>}.
    Each float32 array's tokens come from one pass of numpy's shortest digits, checked
    once for the rare token Python writes otherwise; `line` returns None when the record
    would not come out in that layout (a channel named like another key), so the caller
    uses json_line."""

    _RESERVED = frozenset(("seq", "time_us", "forecast", "gap", "reset"))

    def __init__(self, channels):
        names = list(channels)
        self.names = frozenset(names)
        self.ok = (
            all(type(c) is str for c in names)
            and len(self.names) == len(names)
            and not self.names & self._RESERVED
        )
        self.keys = [_key(c) for c in names] if self.ok else []
        self._tokens = _c_tokens()

    def line(self, seq: int, time_us, x: np.ndarray, forecast: np.ndarray, rest: dict,
             gap: int, reset: bool) -> Optional[str]:  # fmt: skip
        if not self.ok or x.dtype != _F32 or forecast.dtype != _F32 or self.names & rest.keys():
            return None
        if not all(type(k) is str for k in rest):
            return None
        tokens = self._tokens
        xj = fj = None
        if tokens is not None:  # C: the same tokens, ~5x faster (None: one it is unsure of)
            xj = tokens(x)
            fj = tokens(forecast) if xj is not None else None
        if fj is not None:
            xs, fs = xj.split(","), fj.split(",")
        else:
            xs, fs = list(map(str, x)), list(map(str, forecast))
            joined = "".join(xs) + "".join(fs)
            if "e" in joined or "n" in joined:  # an exponent, nan, inf: RecordWriter's formula
                xs = [json_float(v) for v in x.tolist()]
                fs = [json_float(v) for v in forecast.tolist()]
        keys = self.keys
        parts = ['{"seq":', int.__repr__(seq)]
        if time_us is not None:
            parts += (',"time_us":', int.__repr__(time_us))
        parts += (",", ",".join(map(add, keys, xs)), ',"forecast":{', ",".join(map(add, keys, fs)),
                  "}")  # fmt: skip
        for k, v in rest.items():
            parts += (",", _key(k), json_value(v))
        if gap:
            parts += (',"gap":', json_value(gap))
        if reset:
            parts.append(',"reset":1')
        parts.append("}\n")
        return "".join(parts)


_F32 = np.dtype(np.float32)


_c_token: list = []  # [the extension's f32_token or None], once loaded


def _load_c_token():
    module = _fastcall()
    _c_token.append(None if module is None else module.f32_token)
    return _c_token[0]


def _fastcall():
    """The fast-call extension (runtime/cstep.py), or None."""
    if os.environ.get("EDGERNN_NO_FASTCALL"):
        return None
    from edgernn.runtime.cstep import fastcall_module

    return fastcall_module()


def _c_tokens():
    """The fast-call extension's f32_tokens (runtime/cstep.py), or None."""
    module = _fastcall()
    return None if module is None else module.f32_tokens


__all__ = ["RecordLines", "json_fields", "json_float", "json_line", "json_value"]
