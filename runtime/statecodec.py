"""Compact state documents: large numeric arrays as compressed bytes inside the JSON.

A stream's state (runtime/monitor.py, detector, online head) is JSON-able nested
lists: a 1,440-bin time-of-day profile per channel, tail tables, the online head's
Gram matrix. Written as JSON numbers that is ~200 KB per 8-channel stream, every few
seconds, on a Pi's SD card, and serialising it holds the GIL for tens of ms there.
`pack()` replaces each large rectangular list of floats (or of ints) by

    {"__array__": "f8" | "i8", "shape": [...], "zlib": "<base64 of zlib(little-endian)>"}

and `unpack()` turns it back into the same nested lists, bit for bit (float64 is what
the lists hold), so every load_state_dict() reads either form. Everything else, and
every list that is small, ragged, mixed or holds None / bools, passes through as is.
"""

from __future__ import annotations

import base64
import zlib
from typing import Any

import numpy as np

MIN_PACKED = 64  # numbers in a list before packing it pays
_KINDS = {float: "f8", int: "i8"}
_DTYPES = {"f8": "<f8", "i8": "<i8"}
_TAG = "__array__"


def pack(obj: Any) -> Any:
    """obj with its large numeric lists packed (a new structure; obj is unchanged)."""
    if isinstance(obj, dict):
        return {k: pack(v) for k, v in obj.items()}
    if isinstance(obj, list):
        packed = _pack_list(obj)
        return packed if packed is not None else [pack(v) for v in obj]
    return obj


def unpack(obj: Any) -> Any:
    """pack()'s inverse; raises ValueError on a packed array that does not decode."""
    if isinstance(obj, dict):
        if obj.get(_TAG) is not None:
            return _unpack_array(obj)
        return {k: unpack(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unpack(v) for v in obj]
    return obj


def _pack_list(values: list) -> dict | None:
    shape, kind = _shape_and_kind(values)
    if kind is None or int(np.prod(shape)) < MIN_PACKED:
        return None
    try:
        data = np.asarray(values, dtype=_DTYPES[kind]).tobytes()
    except OverflowError:  # an int beyond int64 stays a JSON number
        return None
    text = base64.b64encode(zlib.compress(data, 1)).decode("ascii")
    return {_TAG: kind, "shape": list(shape), "zlib": text}


def _shape_and_kind(values: list) -> tuple[tuple[int, ...], str | None]:
    """The shape of a rectangular nested list whose leaves are all of one type, float
    or int (bool excluded: type() is exact), and that type's kind; kind None otherwise."""
    if not values:
        return (0,), None
    if type(values[0]) is list:
        inner = [_shape_and_kind(v) if type(v) is list else ((), None) for v in values]
        shapes, kinds = {s for s, _ in inner}, {k for _, k in inner}
        if len(shapes) != 1 or len(kinds) != 1 or None in kinds:
            return (0,), None
        return (len(values), *shapes.pop()), kinds.pop()
    kinds = set(map(type, values))
    kind = _KINDS.get(kinds.pop()) if len(kinds) == 1 else None
    return (len(values),), kind


def _unpack_array(d: dict) -> list:
    kind, shape = d.get(_TAG), d.get("shape")
    if kind not in _DTYPES or not isinstance(shape, list) or not isinstance(d.get("zlib"), str):
        raise ValueError(f"not a packed array: {sorted(d)}")
    try:
        raw = zlib.decompress(base64.b64decode(d["zlib"], validate=True))
        arr = np.frombuffer(raw, dtype=_DTYPES[kind]).reshape([int(s) for s in shape])
    except (ValueError, TypeError, zlib.error) as e:
        raise ValueError(f"damaged packed array ({e})") from None
    return arr.tolist()
