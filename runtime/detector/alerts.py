"""Alerts as events: flagged samples grouped into one alert from onset to end.

An event opens on a flagged sample (its onset), tracks its peak score and the channels
that drove it, and closes after `holdoff` unflagged samples; its end is the last
flagged sample. Indices count samples since the detector's start (or reset); times
are the input's timestamps (ISO text) when it has a time column.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

MAX_EVENTS_KEPT = 100  # closed events remembered (a live run can go on forever)


@dataclass
class Event:
    id: int
    start: int  # index of the onset (the first flagged sample)
    end: int  # index of the last flagged sample so far
    peak_score: float
    peak_index: int
    flagged: int  # flagged samples in the event
    top_channels: list[str] = field(default_factory=list)
    closed: bool = False
    start_time: Optional[str] = None
    end_time: Optional[str] = None
    peak_time: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EventTracker:
    def __init__(self, channels: Optional[list[str]], holdoff: int, top_k: int = 3):
        self.channels, self.holdoff, self.top_k = channels, holdoff, top_k
        self.reset()

    def reset(self) -> None:
        self.open: Optional[Event] = None
        self.contrib: Optional[np.ndarray] = None  # (C,) summed over the open event
        self.quiet = 0
        self.next_id = 1
        self.closed: list[Event] = []

    def update(
        self, t: int, flagged: bool, score: float, contributions: np.ndarray, stamp: Optional[str]
    ) -> tuple[Optional[dict], Optional[dict]]:
        """(event opened on this sample, event closed on it), as dicts or None; `stamp`:
        the sample's timestamp as the input wrote it."""
        ev = self.open
        if not flagged:
            if ev is None:
                return None, None
            self.quiet += 1
            if self.quiet >= self.holdoff:
                return None, self.close().to_dict()
            return None, None
        self.quiet = 0
        opened = ev is None
        if opened:
            ev = self.open = Event(self.next_id, t, t, score, t, 0, start_time=stamp)
            ev.peak_time = stamp
            self.contrib = np.zeros_like(contributions)
            self.next_id += 1
        ev.end, ev.end_time = t, stamp
        ev.flagged += 1
        if score > ev.peak_score:
            ev.peak_score, ev.peak_index, ev.peak_time = score, t, stamp
        self.contrib += contributions
        ev.top_channels = self._top(self.contrib)
        return (ev.to_dict() if opened else None), None

    def repeats(self, score: float) -> bool:
        """Whether a sample scoring `score` tells nothing new: an alert is open and the
        sample does not top its peak so far (called before update())."""
        return self.open is not None and not score > self.open.peak_score

    def close(self) -> Optional[Event]:
        ev = self.open
        if ev is None:
            return None
        ev.closed = True
        self.closed.append(ev)
        del self.closed[:-MAX_EVENTS_KEPT]
        self.open, self.contrib, self.quiet = None, None, 0
        return ev

    def _top(self, contrib: np.ndarray) -> list[str]:
        order = np.argsort(-contrib, kind="stable")[: self.top_k]
        return [self._name(int(i)) for i in order if contrib[i] > 0]

    def _name(self, i: int) -> str:
        return self.channels[i] if self.channels else f"ch{i}"

    def state_dict(self) -> dict:
        open_event = None
        if self.open is not None:
            open_event = dict(self.open.to_dict(), contrib=self.contrib.tolist())
        return {
            "open": open_event,
            "quiet": self.quiet,
            "next_id": self.next_id,
            "closed": [e.to_dict() for e in self.closed],
        }

    def load_state_dict(self, d: dict) -> None:
        self.reset()
        if d["open"] is not None:
            event = dict(d["open"])
            self.contrib = np.asarray(event.pop("contrib"), dtype=np.float64)
            self.open = Event(**event)
        self.quiet = int(d["quiet"])
        self.next_id = int(d["next_id"])
        self.closed = [Event(**e) for e in d["closed"]]
