"""From a classifier's per-step probabilities to labels and events (numpy only).

Separate from the model wrapper, in the manner of silero-vad's VADIterator: feed one
probability vector per step, get the current label back and an event whenever one ends.

    decide = ClassEvents(["idle", "shake", "tilt"], background="idle")
    for t, p in zip(times, probabilities):        # p: the model's "probs" output, (K,)
        d = decide.step(p, t)
        if d.event is not None:
            print(d.event.to_dict())  # {"class", "start", "end", "peak", "samples"}
    last = decide.flush()                         # the event still open at the end

Rules, per step:
  * hysteresis: with no event open, the most probable class other than `background`
    opens one when its probability reaches `enter`; the event holds while that class's
    probability stays at or above `exit` (exit <= enter), so a value hovering around one
    threshold does not flicker. The open event has priority over other classes.
  * minimum duration: an event counts once it has held `min_samples` steps; shorter
    ones are dropped. The label turns to the event's class when it counts (`started`
    is then reported once), and back to `background` when it ends.
  * times: `start` and `end` are the time values given with the steps (numbers or
    timestamps, as the input has them), else sample indices from 0; `end` is the last
    step the event held. `peak` is the class's highest probability within the event.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

Time = Union[int, float, str]


@dataclass(frozen=True)
class ClassEvent:
    """One stretch of steps assigned to a class."""

    label: str
    start: Time
    end: Time
    peak: float
    samples: int

    def to_dict(self) -> dict:
        return {"class": self.label, "start": self.start, "end": self.end,
                "peak": self.peak, "samples": self.samples}  # fmt: skip


@dataclass(frozen=True)
class Decision:
    """What one step decided.

    label: the class of the event that counts now, else the background (None if none).
    event: the event that ended before this step (at most one), else None.
    started: the event that began to count at this step (its end and peak so far).
    """

    label: Optional[str]
    event: Optional[ClassEvent] = None
    started: Optional[ClassEvent] = None


@dataclass
class _Open:
    index: int  # class index
    start: Time
    end: Time
    peak: float
    samples: int

    def event(self, classes: Sequence[str]) -> ClassEvent:
        return ClassEvent(classes[self.index], self.start, self.end, self.peak, self.samples)


class ClassEvents:
    """Hysteresis and minimum duration over a stream of class probabilities."""

    def __init__(
        self,
        classes: Sequence[str],
        enter: float = 0.6,
        exit: float = 0.4,
        min_samples: int = 3,
        background: Optional[str] = None,
    ):
        self.classes = [str(c) for c in classes]
        if len(self.classes) < 1 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct names, got {self.classes}")
        if not 0.0 < exit <= enter <= 1.0:
            raise ValueError(f"need 0 < exit <= enter <= 1, got enter {enter}, exit {exit}")
        if int(min_samples) != min_samples or min_samples < 1:
            raise ValueError(f"min_samples must be an integer >= 1, got {min_samples}")
        if background is not None and background not in self.classes:
            raise ValueError(f"background {background!r} is not one of the classes {self.classes}")
        self.enter, self.exit, self.min_samples = float(enter), float(exit), int(min_samples)
        self.background = background
        self._candidates = np.array([c != background for c in self.classes])
        self.reset()

    @classmethod
    def from_meta(cls, meta, **settings) -> ClassEvents:
        """For a classifier graph: its classes (a ModelMeta's, e.g. `Model(path).meta`)."""
        if getattr(meta, "task", None) != "classify" or not getattr(meta, "classes", None):
            raise ValueError(f"events need a classifier; this model's task is "
                             f"{getattr(meta, 'task', None)!r}")  # fmt: skip
        return cls(meta.classes, **settings)

    def reset(self) -> None:
        """Forget the stream: no open event, sample indices from 0 again."""
        self._open: Optional[_Open] = None
        self._steps = 0
        self._timed: Optional[bool] = None  # whether the steps come with time values

    @property
    def label(self) -> Optional[str]:
        """The current label: the counting event's class, else the background."""
        if self._open is not None and self._open.samples >= self.min_samples:
            return self.classes[self._open.index]
        return self.background

    def step(self, probs, time: Optional[Time] = None) -> Decision:
        """One step: probs (K,) class probabilities; time: this step's time value."""
        p = self._check(probs)
        now = self._time(time)
        ended = None
        current = self._open
        if current is not None and p[current.index] >= self.exit:
            current.samples += 1
            current.end = now
            current.peak = max(current.peak, float(p[current.index]))
        elif current is not None:  # it let go: it ended at the previous step
            self._open = None
            if current.samples >= self.min_samples:
                ended = current.event(self.classes)
        if self._open is None:
            self._maybe_open(p, now)
        started = None  # an event reaches min_samples at exactly one step
        if self._open is not None and self._open.samples == self.min_samples:
            started = self._open.event(self.classes)
        return Decision(self.label, ended, started)

    def flush(self) -> Optional[ClassEvent]:
        """End of the stream: the open event if it counts (else None); the state is reset."""
        current = self._open
        self.reset()
        if current is not None and current.samples >= self.min_samples:
            return current.event(self.classes)
        return None

    def run(self, probs: Iterable, times: Optional[Iterable[Time]] = None) -> list[ClassEvent]:
        """Every event of a whole stream (steps (T, K), optional times (T,)), flushed."""
        steps = list(probs)
        stamps = list(times) if times is not None else [None] * len(steps)
        if len(stamps) != len(steps):
            raise ValueError(f"{len(stamps)} times for {len(steps)} steps")
        events = [d.event for d in (self.step(p, t) for p, t in zip(steps, stamps)) if d.event]
        last = self.flush()
        return events + ([last] if last is not None else [])

    # ---------------------------------------------------------------- helpers
    def _maybe_open(self, p: np.ndarray, now: Time) -> None:
        masked = np.where(self._candidates, p, -math.inf)
        best = int(np.argmax(masked))
        if masked[best] >= self.enter:
            self._open = _Open(best, now, now, float(p[best]), 1)

    def _check(self, probs) -> np.ndarray:
        p = np.asarray(probs, dtype=np.float64).reshape(-1)
        if p.shape != (len(self.classes),):
            raise ValueError(f"expected {len(self.classes)} probabilities, got shape "
                             f"{np.shape(probs)}")  # fmt: skip
        if not np.isfinite(p).all():
            raise ValueError("probabilities must be finite")
        return p

    def _time(self, time: Optional[Time]) -> Time:
        timed = time is not None
        if self._timed is None:
            self._timed = timed
        elif self._timed != timed:
            raise ValueError("give a time with every step or with none")
        index, self._steps = self._steps, self._steps + 1
        if isinstance(time, np.generic):  # a numpy scalar from an array of times
            time = time.item()
        return time if timed else index


SETTING_KEYS = {"enter": float, "exit": float, "min-samples": int, "background": str}


def parse_settings(text: str) -> dict:
    """`enter=0.7,exit=0.3,min-samples=5,background=idle` -> ClassEvents keyword arguments
    (what `edgernn run --events` takes); unknown keys and bad values raise ValueError."""
    settings: dict = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in SETTING_KEYS:
            raise ValueError(
                f"{part!r}: expected KEY=VALUE with KEY one of {', '.join(SETTING_KEYS)}"
            )
        try:
            settings[key.replace("-", "_")] = SETTING_KEYS[key](value.strip())
        except ValueError:
            raise ValueError(f"{key}: not a {SETTING_KEYS[key].__name__}: {value!r}") from None
    return settings
