"""What the detector says of a sample (DetectorOutput, from score_one) and of a block of
samples (BlockResult, from score_block: the kernel's arrays, with views)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from edgernn.runtime.detector import ckernel


@dataclass
class DetectorOutput:
    """The verdict on one sample (JSON-friendly fields)."""

    # -log10 of the tail probability (`surprisal`), except 0.0 while warming up and on a
    # row that repeats an open alert (`repeat`): what is news on this row
    score: float
    anomaly: bool  # this sample is flagged (surprisal >= threshold)
    threshold: Optional[float]  # None while warming up
    warming_up: bool
    contributions: np.ndarray  # (C,) each channel's share of the surprisal, sums to 1 or 0
    onset: bool = False  # this sample opens an alert (the first flag of an event)
    event: Optional[int] = None  # id of the open event
    event_opened: Optional[dict] = None
    event_closed: Optional[dict] = None
    surprisal: Optional[float] = None  # -log10 of the tail probability (None: = score)
    repeat: bool = False  # inside an open alert, not above its peak so far: score 0.0

    def __post_init__(self) -> None:
        if self.surprisal is None:
            self.surprisal = self.score

    def mark_repeat(self) -> None:
        """This row tells nothing new of the open alert: its score reads 0.0 (the
        surprisal stays; the flag says the alert goes on)."""
        self.repeat, self.score = True, 0.0

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "score": self.score,
            "anomaly": int(self.anomaly),
            "onset": int(self.onset),
        }
        for key in ("event", "event_opened", "event_closed"):
            if getattr(self, key) is not None:
                record[key] = getattr(self, key)
        return record


@dataclass
class BlockResult:
    """score_block()'s verdicts, one entry per row (the fields of DetectorOutput): the
    kernel's raw arrays, with score / anomaly / onset / warming_up / threshold views."""

    raw_score: np.ndarray  # (N,) the score as computed (warm-up rows too)
    flags: np.ndarray  # (N,) int32, ckernel.F_* bits
    raw_threshold: np.ndarray  # (N,) the threshold in force (warm-up rows too)
    event: np.ndarray  # (N,) id of the open event, 0 for none
    contributions: np.ndarray  # (N, C)
    opened: dict = field(default_factory=dict)  # row -> the event opened on it
    closed: dict = field(default_factory=dict)  # row -> the event closed on it

    @classmethod
    def empty(cls, n: int, c: int) -> BlockResult:
        return cls(np.zeros(n), np.zeros(n, dtype=np.int32), np.zeros(n),
                   np.zeros(n, dtype=np.int64), np.zeros((n, c)))  # fmt: skip

    def __len__(self) -> int:
        return len(self.flags)

    @property
    def warming_up(self) -> np.ndarray:
        return (self.flags & ckernel.F_LEARNING) != 0

    @property
    def anomaly(self) -> np.ndarray:
        return (self.flags & ckernel.F_FLAGGED) != 0

    @property
    def onset(self) -> np.ndarray:
        return (self.flags & ckernel.F_ONSET) != 0

    @property
    def score(self) -> np.ndarray:
        """The surprisal, except 0.0 while warming up and on rows that repeat an open
        alert (F_REPEAT: not above its peak so far)."""
        return np.where((self.flags & (ckernel.F_LEARNING | ckernel.F_REPEAT)) != 0,
                        0.0, self.raw_score)  # fmt: skip

    @property
    def surprisal(self) -> np.ndarray:
        """-log10 of each row's tail probability, 0.0 while warming up."""
        return np.where(self.warming_up, 0.0, self.raw_score)

    @property
    def threshold(self) -> np.ndarray:
        """NaN while warming up."""
        return np.where(self.warming_up, math.nan, self.raw_threshold)

    def set(self, i: int, out: DetectorOutput) -> None:
        """Row i from a DetectorOutput (the numpy rows)."""
        self.raw_score[i] = out.surprisal
        self.flags[i] = (
            (ckernel.F_FLAGGED if out.anomaly else 0) | (ckernel.F_ONSET if out.onset else 0)
            | (ckernel.F_LEARNING if out.warming_up else 0)
            | (ckernel.F_REPEAT if out.repeat else 0)
        )  # fmt: skip
        self.raw_threshold[i] = math.nan if out.threshold is None else out.threshold
        self.event[i] = out.event or 0
        self.contributions[i] = out.contributions
        if out.event_opened is not None:
            self.opened[i] = out.event_opened
        if out.event_closed is not None:
            self.closed[i] = out.event_closed

    def put(self, at: int, part: BlockResult) -> None:
        """part's rows as rows at.. of this block (its events' rows moved along)."""
        rows = slice(at, at + len(part))
        self.raw_score[rows], self.flags[rows] = part.raw_score, part.flags
        self.raw_threshold[rows], self.event[rows] = part.raw_threshold, part.event
        self.contributions[rows] = part.contributions
        self.opened.update({at + i: e for i, e in part.opened.items()})
        self.closed.update({at + i: e for i, e in part.closed.items()})

    def output(self, i: int) -> DetectorOutput:
        """Row i as score_one() returns it."""
        fl = int(self.flags[i])
        warming, repeat = bool(fl & ckernel.F_LEARNING), bool(fl & ckernel.F_REPEAT)
        surprisal = 0.0 if warming else float(self.raw_score[i])
        return DetectorOutput(
            0.0 if repeat else surprisal, bool(fl & ckernel.F_FLAGGED),
            None if warming else float(self.raw_threshold[i]), warming,
            self.contributions[i].copy(), onset=bool(fl & ckernel.F_ONSET),
            event=int(self.event[i]) or None, event_opened=self.opened.get(i),
            event_closed=self.closed.get(i), surprisal=surprisal, repeat=repeat,
        )  # fmt: skip

    def records(self) -> list[dict]:
        """Each row's record fields, as runtime/monitor.py's _detector_fields makes them
        from score_one()'s output (the same keys, in the same order)."""
        warm = ckernel.F_LEARNING
        records = [
            {"score": 0.0, "anomaly": 0, "onset": 0} if fl & warm
            else {"score": s, "anomaly": fl & 1, "onset": (fl >> 2) & 1, "threshold": th}
            for s, fl, th in zip(
                self.raw_score.tolist(), self.flags.tolist(), self.raw_threshold.tolist()
            )
        ]  # fmt: skip
        if self.opened or self.closed or self.event.any():
            for i in np.flatnonzero(self.event).tolist() + list(self.opened) + list(self.closed):
                records[i] = _detector_fields_of(self.output(i))
        return records


def _detector_fields_of(out: DetectorOutput) -> dict[str, Any]:
    record = out.to_record()
    if out.threshold is not None:
        record["threshold"] = out.threshold
    return record
