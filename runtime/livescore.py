"""Monitor.stepped in C for the live run's steady state (cstep's live loop).

With the detector or the online head on, the C loop (firmware_bridge/live.py FastFrames)
used to call back into Python once per sample: at 1 kHz with caches cold after each idle
millisecond that call, not the arithmetic, was most of the run's CPU. A LiveScorer lets
the loop score a sample itself: the detector's compiled kernel (kernel.c edgernn_detect)
on its own buffers, the head's step (kernel.c edgernn_head_forecast, the same sums as
OnlineHead.step, see adapt.py), the monitor's pending forecasts in a ring, the line's
fields as json_fields writes them. Python still does what is rare or not arithmetic:

- the head's solve, due every `block` forecasts, in the idle time after the line before
  it is written (`idle`: OnlineHead.solve_ahead), so that no sample waits for it;
- a sample the scorer does not cover (a solve not made ahead, a forecast that is not
  finite, the detector still forming its normalisers) goes through Monitor.stepped as
  before (`fallback`: the state pulled into Python first, pushed after);
- a sample the event tracker must see (flagged, or an event open) comes back after the
  kernel scored it (`replay`: Detector.kernel_verdict, events and fields).

So the lines, counters and state are the Python path's to the bit (tests/test_live_fastpath.py
runs both). Between push() and pull() the state lives in C-visible buffers: the
detector's scalar state in its kernel's dbl / cnt, the head's counters and the ring
start in `clock`.
"""

from __future__ import annotations

import ctypes
import os
from collections import deque
from typing import Callable, Optional

import numpy as np

# the record fields a detector may write: a channel named like one of them makes its
# lines Python's (RecordLines declines), so the scorer is not used
DETECTOR_FIELDS = frozenset(
    {"score", "anomaly", "onset", "threshold", "event", "event_opened", "event_closed"}
)
SEEN, MADE, QLO, QHI, RING, SCORED, SOLVED = range(7)


class LiveScorer:
    """module: cstep's fastcall module; live: its live_bind capsule; fields(dict) ->
    text: json_fields' text of a record's fields; stats: the run's LiveStats (forecasts,
    anomalies); score_row(k, seq, time_us): live_loop's Python score of sample k;
    channels: the stream's channel count."""

    def __init__(self, monitor, module, live, fields: Callable, stats, score_row: Callable,
                 channels: int):  # fmt: skip
        self.monitor, self.module, self.live = monitor, module, live
        self.fields, self.stats, self._score_row = fields, stats, score_row
        self.channels = c = channels
        self.capsule = module.scorer_new(self._fallback, self._replay, self._idle)
        self.clock = np.zeros(7, dtype=np.int64)
        self.ring = np.zeros((monitor._horizon, c), dtype=np.float32)
        self._clock_address, self._ring_address = self.clock.ctypes.data, self.ring.ctypes.data
        self._head_keep: tuple = ()  # the head's buffers scorer_set points into
        self._head_tuple: tuple = ()
        self._threshold_text: Optional[str] = None
        self._learning = module.live_fields(live, {"score": 0.0, "anomaly": 0, "onset": 0})
        self._pushed = False
        self.scored = 0  # samples scored here, all loops (tests: proof that it ran)
        self._threshold = 0.0
        self._forecast = None
        if monitor.head is not None:
            from edgernn.runtime.adapt import _head_library

            lib = _head_library()
            self._forecast = ctypes.cast(lib.edgernn_head_forecast, ctypes.c_void_p).value

    @classmethod
    def make(cls, monitor, module, live, fields, stats, score_row, names) -> Optional[LiveScorer]:
        """A scorer for this monitor (names: the channels' names), or None where the
        Python path must score every sample: no scorer in the module, a detector other
        than the compiled one, a head whose products are numpy's, a channel named like
        a detector field; EDGERNN_NO_C_SCORER=1 (tests: the Python score to compare)."""
        from edgernn.runtime.adapt import _head_library
        from edgernn.runtime.detector.core import Detector

        det, head = monitor.detector, monitor.head
        if os.environ.get("EDGERNN_NO_C_SCORER") or not hasattr(module, "scorer_new"):
            return None
        if not names.isdisjoint(DETECTOR_FIELDS):
            return None
        if det is None and head is None:
            return None
        if det is not None and (not isinstance(det, Detector) or det._kernel is None):
            return None
        if head is not None and _head_library() is None:
            return None
        if not 1 <= len(names) <= 255:
            return None
        scorer = cls(monitor, module, live, fields, stats, score_row, len(names))
        return scorer if scorer._learning is not None else None

    # -- the state, into C-visible buffers and back --------------------------------------
    def push(self) -> None:
        """Before the loop (and after a sample done in Python): the state where C
        scores the samples; `on` 0 where it cannot (each sample then Python's)."""
        m, det, head, clock = self.monitor, self.monitor.detector, self.monitor.head, self.clock
        on = len(m._pending) == m._horizon and (det is None or det._n == self.channels)
        det_args = head_args = None
        threshold_text = ""
        if on and det is not None and det.live_ready():
            threshold, anchor = det.live_threshold()
            if threshold != self._threshold or self._threshold_text is None:
                self._threshold, self._threshold_text = threshold, self.module.live_fields(
                    self.live, {"threshold": threshold}
                )
            threshold_text = self._threshold_text
            on = threshold_text is not None
            if on:  # (fn, struct, x and f, score, flags; contrib is replay's to read)
                det_args = det._kernel.enter_live(threshold, anchor)[:5]
        elif det is not None:
            on = False
        if on and head is not None:
            head_args = self._head_args()
        if on:
            for i, f in enumerate(m._pending):
                self.ring[i] = f
        clock[RING] = clock[SCORED] = 0
        self.module.scorer_set(self.capsule, int(on), self._learning, threshold_text, det_args,
                               head_args, self._ring_address, len(self.ring),
                               self._clock_address, self._head_keep)  # fmt: skip
        self._pushed = on

    def _head_args(self) -> tuple:
        """scorer_set's head part (OnlineHead.step's buffers and sizes; their addresses
        looked up again only when the buffers change: a solve's A, a larger queue), its
        counters into the clock."""
        head, clock = self.monitor.head, self.clock
        buffers = (*head.live_buffers(), head.std)
        kept = self._head_keep
        if len(kept) != len(buffers) or any(a is not b for a, b in zip(buffers, kept)):
            if not all(b.flags.c_contiguous for b in buffers):
                raise ValueError("online head: a buffer is not contiguous")
            self._head_keep = buffers
            self._head_tuple = (self._forecast, *(b.ctypes.data for b in buffers),
                                head.hidden + 1, head.block, len(buffers[3]), head.horizon)  # fmt: skip
        clock[SEEN], clock[MADE] = head.seen, head.made
        clock[QLO], clock[QHI], clock[SOLVED] = head._qlo, head._qhi, head._solved_at
        return self._head_tuple

    def pull(self) -> None:
        """After the loop (and before a sample done in Python): the state back where
        Python keeps it, the samples scored here counted."""
        if not self._pushed:
            return
        self._pushed = False
        m, clock = self.monitor, self.clock
        if m.detector is not None:
            m.detector._kernel.leave_live()
        head = m.head
        if head is not None:
            self._pull_head()
        scored = int(clock[SCORED])
        if scored:
            start, h = int(clock[RING]), len(self.ring)
            m._pending = deque((self.ring[(start + i) % h].copy() for i in range(h)), maxlen=h)
            m.samples += scored
            self.stats.forecasts += scored
            self.scored += scored
        clock[SCORED] = 0

    # -- C's calls back --------------------------------------------------------------
    def _fallback(self, k: int, seq: int, time_us: int):
        """A sample C does not cover: Monitor.stepped's Python, on the state pulled."""
        self.pull()
        try:
            return self._score_row(k, seq, time_us)
        finally:
            self.push()

    def _pull_head(self) -> None:
        head, clock = self.monitor.head, self.clock
        head.seen, head.made = int(clock[SEEN]), int(clock[MADE])
        head._qlo, head._qhi = int(clock[QLO]), int(clock[QHI])

    def _idle(self) -> None:
        """The loop waits for the next sample and the head's next forecast needs a
        solve: solve now (OnlineHead.solve_ahead), so that no sample waits for it."""
        self._pull_head()
        self.monitor.head.solve_ahead()
        self.module.scorer_head(self.capsule, self._head_args(), self._head_keep)

    def _replay(self) -> str:
        """A sample the kernel scored that the event tracker must see: its fields."""
        det = self.monitor.detector
        out, fields = det.kernel_verdict(det._kernel.cnt[0] - 1, self._threshold)
        self.monitor.last_output = out
        self.stats.anomalies += fields["anomaly"]
        return self.fields(fields)
