"""The detector's settings: one sensitivity knob (the false-alarm budget) and a few
expert options, readable from a JSON or TOML file (`--detector-config FILE`).

    {"alarm_every": "7d", "warmup": 100, "memory": 10000}

Every key is optional; unknown keys are refused (a typo must not pass silently).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional, Union

from edgernn.errors import InputError

# The default budget, chosen once for every stream: about one false alarm per week of
# normal operation when the input has a time column, per 10,000 samples otherwise.
DEFAULT_ALARM_EVERY_DAYS = 7.0
DEFAULT_ALARM_EVERY_SAMPLES = 10_000.0
UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
SEASONS = ("auto", "day", "week", "none")
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-z]*)\s*$")


@dataclass(frozen=True)
class Budget:
    """About one false alarm per `samples` samples, or per `seconds` of stream time."""

    samples: Optional[float] = None
    seconds: Optional[float] = None

    def describe(self) -> str:
        if self.seconds is not None:
            return f"one false alarm per {self.seconds / 86400:g} days"
        return f"one false alarm per {self.samples:g} samples"


def parse_budget(value: Union[str, float, int, None]) -> Budget:
    """'auto' / None: the default; a number: samples; '7d', '12h', '30min', '2w': time."""
    if value is None or value == "auto":
        return Budget()
    if isinstance(value, bool):
        raise InputError(f"alarm_every must be a number of samples or a duration, got {value!r}")
    if isinstance(value, (int, float)):
        samples = float(value)
        if not (math.isfinite(samples) and samples >= 2):
            raise InputError(f"alarm_every must be at least 2 samples, got {value!r}")
        return Budget(samples=samples)
    match = _DURATION.match(str(value).lower())
    if match is None or match.group(2) not in ("", *UNITS):
        raise InputError(
            f"alarm_every {value!r}: give samples (10000) or a duration (7d, 12h, 30min, 2w)"
        )
    number = float(match.group(1))
    if match.group(2) == "":
        return parse_budget(number)
    seconds = number * UNITS[match.group(2)]
    if not seconds > 0:
        raise InputError(f"alarm_every must be a positive duration, got {value!r}")
    return Budget(seconds=seconds)


@dataclass
class DetectorConfig:
    """Expert options; the defaults are meant for every stream.

    alarm_every: the sensitivity knob, a false-alarm budget: samples per false alarm
        (a number) or a duration of normal operation ("7d"; needs timestamps).
        "auto": 7 days with timestamps, else 10,000 samples.
    warmup: samples with no verdict at the start (the detector still learns on them),
        and again after the tails are relearnt in the hours' units (core.py).
    memory: samples the learnt distributions remember (exponential forgetting).
    scale_span: EWMA span of the error's center and scale (0: frozen after warm-up).
    span: window (EWMA span) of the level-shift statistic, the average error (20
        before: 10 scored better on every seed of the held-out protocol; README).
    level_span: 0 (off), or the EWMA span of each channel's slow average, the baseline
        of a drift statistic (the sample's distance from it; the average follows normal
        samples, flagged ones at flagged_weight). Off by default: after a normal change
        of level it keeps a stream in alarm for about this many samples.
    season: "auto" (daily when the input has a time column), "day", "week" or "none".
    holdoff: quiet samples that close an alert event (nearby flags join one event).
    level_floor: the error scale never falls below this fraction of the signal's mean
        absolute sample-to-sample change.
    flagged_weight: how fast the error scale and the slow average follow flagged
        samples, as a fraction of a normal one (0: not at all; then a lasting change of
        regime alarms until the forecaster alone explains it). The learnt score
        distributions take only each alert's onset from flagged samples.
    reference: 0, or a span S: each sample's S-EWMA is also compared with a reference
        fixed at the end of warm-up (for streams whose warm-up is their normal state,
        e.g. a test rig; drifting streams must leave it at 0).
    reference_channels: channels (names) the reference term watches; None = all.
    """

    alarm_every: Union[str, float] = "auto"
    warmup: int = 100
    memory: float = 10_000.0
    scale_span: float = 200.0
    span: float = 10.0
    level_span: float = 0.0
    season: str = "auto"
    holdoff: int = 5
    level_floor: float = 0.1
    flagged_weight: float = 0.25
    reference: float = 0.0
    reference_channels: Optional[list] = None

    def __post_init__(self) -> None:
        self.budget = parse_budget(self.alarm_every)
        _integer(self, "warmup", 2)
        _integer(self, "holdoff", 1)
        _number(self, "memory", 100.0)
        _number(self, "span", 1.0)
        if self.level_span != 0:
            _number(self, "level_span", 1.0)
        _number(self, "level_floor", 0.0)
        _number(self, "flagged_weight", 0.0)
        if self.flagged_weight > 1:
            raise InputError(f"flagged_weight must be in [0, 1], got {self.flagged_weight!r}")
        if self.scale_span != 0:
            _number(self, "scale_span", 2.0)
        if self.reference != 0:
            _number(self, "reference", 1.0)
        if self.season not in SEASONS:
            raise InputError(f"season must be one of {', '.join(SEASONS)}, got {self.season!r}")
        chosen = self.reference_channels
        if chosen is not None and (
            isinstance(chosen, str) or not all(isinstance(c, str) for c in chosen)
        ):
            raise InputError(f"reference_channels must be a list of names, got {chosen!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("budget", None)
        return d


def _integer(cfg, name: str, minimum: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _number(cfg, name: str, minimum: float) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value >= minimum):
        raise InputError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")


CONFIG_KEYS = tuple(f.name for f in fields(DetectorConfig))


def make_config(options: Optional[dict[str, Any]] = None) -> DetectorConfig:
    """A DetectorConfig from a dict, refusing unknown keys with a one-line error."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(CONFIG_KEYS))
    if unknown:
        raise InputError(
            f"unknown detector option(s) {', '.join(unknown)}; known: {', '.join(CONFIG_KEYS)}"
        )
    return DetectorConfig(**options)


def load_config(path: str) -> dict[str, Any]:
    """The options in a JSON or TOML file (checked by make_config)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as e:
        raise InputError(f"{path}: cannot read the detector config ({e.strerror})") from None
    if os.path.splitext(path)[1].lower() == ".toml":
        try:
            import tomllib
        except ImportError:  # Python < 3.11
            raise InputError(f"{path}: TOML needs Python 3.11+; write it as JSON") from None
        try:
            options = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: not valid TOML ({e})") from None
    else:
        try:
            options = json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(options, dict):
        raise InputError(f"{path}: the detector config must be an object of options")
    options = options.get("detector", options)  # a [detector] table is fine too
    make_config(options)
    return options
