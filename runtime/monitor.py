"""Per-sample processing shared by every source (CSV file, serial port, demo).

A Monitor pairs the model's stream with an optional anomaly detector: each sample is
compared with the forecast that was made for it `horizon` samples earlier, then fed
to the model to forecast ahead. CSV and serial runs both go through `process`, so
identical samples give identical forecasts and scores whatever their source.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Optional

import numpy as np

from edgernn.runtime.adapt import OnlineHead, learn_weight
from edgernn.runtime.model import Model


class Monitor:
    """model: a forecaster; detector: a Detector or None; online_head: correct the
    forecaster's readout online (runtime/adapt.py; samples the detector flags, and gap
    fills, are not learnt); None: on whenever there is a detector. state: a
    state_dict() to resume from."""

    def __init__(
        self,
        model: Model,
        detector=None,
        state: Optional[dict] = None,
        online_head: Optional[bool] = None,
    ):
        self.model = model
        self.detector = detector
        self.stream = model.stream()
        if online_head is None:
            online_head = detector is not None
        self.head = OnlineHead.for_model(model) if online_head else None
        # Forecasts made but not yet due: the oldest is the one for the next sample.
        self._horizon = model.horizon
        self._pending: deque[np.ndarray] = deque(maxlen=model.horizon)
        self.samples = 0
        self.imputed = 0
        self.last_output = None  # the detector's full verdict on the latest scored sample
        if state is not None:
            self.load_state_dict(state)

    @property
    def last_forecast(self) -> Optional[np.ndarray]:
        """The model's forecast for the next sample, once one exists (used to fill gaps)."""
        if len(self._pending) < self.model.horizon:
            return None
        return self._pending[0].copy()

    def process(self, x, imputed: bool = False, time=None) -> dict[str, Any]:
        """Score sample x [channels] against its forecast, then forecast ahead.

        Imputed samples (gap fill) advance the model but are not scored and do not
        teach the detector anything. `time`: the sample's timestamp (a time column's
        text, or epoch seconds) when the source has one; the detector uses it for
        time-of-day baselines, budgets in days and event times.
        """
        x = np.asarray(x, dtype=np.float32)
        due = self._pending[0] if len(self._pending) == self._horizon else None
        forecast = self.stream.step(x)
        return self._scored(x, forecast, due, imputed, time, None)

    def stepped(self, x: np.ndarray, forecast: np.ndarray, h: Optional[np.ndarray]) -> dict:
        """process(x) for a sample the stream was stepped on already (the live run's C
        loop): forecast, the step's output, and h, the features after it (stream.features()
        then; None: read them from the stream), are the caller's own float32 arrays."""
        pending = self._pending
        due = pending[0] if len(pending) == self._horizon else None
        return self._scored(x, forecast, due, False, None, h)

    def _scored(self, x, forecast, due, imputed: bool, time, h) -> dict[str, Any]:
        """The rest of process() once the stream has stepped: score, correct, keep."""
        record: dict[str, Any] = {"forecast": forecast}  # the first key (set again below)
        if imputed:
            self.imputed += 1
        else:
            self.samples += 1
        verdict: Optional[dict] = None
        if self.detector is not None:
            if imputed or due is None:
                record.update(score=None, anomaly=0 if due is None else None, onset=0)
            else:
                fields = getattr(self.detector, "score_fields", None)
                if time is None and fields is not None:  # the per-sample fast path
                    self.last_output, verdict = fields(x, due)
                else:
                    if time is None:
                        self.last_output = self.detector.score_one(x, due)
                    else:
                        self.last_output = self.detector.score_one(x, due, time=time)
                    verdict = _detector_fields(self.last_output)
                record.update(verdict)
        head = self.head
        if head is not None:  # learn this sample, then correct the forecast from it
            weight = 0.0 if imputed else learn_weight(verdict)
            corrected = head.step(x, forecast, self.stream.features() if h is None else h, weight)
            forecast = corrected.astype(np.float32)
        self._pending.append(forecast)
        record["forecast"] = forecast
        return record

    def reset(self) -> None:
        """Cold start: zero model state, no pending forecasts, detector warm-up again."""
        self.stream.reset()
        self._pending.clear()
        if self.detector is not None:
            self.detector.reset()
        if self.head is not None:
            self.head.reset()

    # -- persistence (state files) ---------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "model_state": {k: v.tolist() for k, v in self.stream.state.items()},
            "pending": [f.tolist() for f in self._pending],
            "samples": self.samples,
            "imputed": self.imputed,
        }
        if self.detector is not None:
            d["detector"] = self.detector.state_dict()
        if self.head is not None:
            d["online_head"] = self.head.state_dict()
        return d

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.stream.state = {
            k: np.asarray(v, dtype=np.float32) for k, v in d["model_state"].items()
        }
        self._pending.clear()
        for f in d.get("pending", []):
            self._pending.append(np.asarray(f, dtype=np.float32))
        self.samples = int(d.get("samples", 0))
        self.imputed = int(d.get("imputed", 0))
        if self.detector is not None and "detector" in d:
            self.detector.load_state_dict(d["detector"])
        if self.head is not None:  # a state saved without one: the head starts afresh
            self.head.reset()
            if d.get("online_head") is not None:
                self.head.load_state_dict(d["online_head"])


def _detector_fields(out) -> dict[str, Any]:
    """Detector output -> record fields (score, anomaly 0/1, event info)."""
    if hasattr(out, "to_record"):
        record = out.to_record()
        if getattr(out, "threshold", None) is not None:
            record["threshold"] = out.threshold  # JSON lines show what the score was held to
        return record
    record = dict(out)
    if record.get("anomaly") is not None:
        record["anomaly"] = int(bool(record["anomaly"]))
    return record
