"""argparse value types shared by every subcommand: a bad value is a usage error
(exit 2) with a one-line message, never a traceback."""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def int_at_least(minimum: int):
    """An int type with a floor, e.g. the fewest rows a step can work with."""

    def parse(text: str) -> int:
        value = _number(text, int)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def positive_float(text: str) -> float:
    value = _number(text, float)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def auto_or_non_negative_float(text: str) -> float | str:
    """'auto', or a number >= 0."""
    if text == "auto":
        return text
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 'auto' or >= 0, got {text}")
    return value


def csv_list(text: str) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c']."""
    return [t.strip() for t in text.split(",") if t.strip()]


def nonempty_csv_list(text: str) -> list[str]:
    """csv_list with at least one name."""
    names = csv_list(text)
    if not names:
        raise argparse.ArgumentTypeError("give at least one name")
    return names
