"""Many devices, one model: a stream state per device, stepped together.

`Fleet` keeps a registry of devices (created on their first sample), each with its
own row of one batched `Stream`, its own Monitor (forecast bookkeeping and detector),
its own accounting and its own queue of samples waiting to be processed. `tick()`
takes the oldest waiting sample of every device that has one and runs them through
the model in one batched call; `drain()` ticks until nothing waits.

Every device's outputs are those of a single-device stream fed the same samples: the
rows of a batched step are independent, devices without a sample this tick keep
their state (it is restored after the step), and out-of-band steps (gap filling)
run that device's row alone.

Accounting per device, as the serial path does for one board:
    samples   = processed + invalid + duplicates + queued
    messages  = accepted + rejected + overflow      (payloads, counted by the caller)
Sequence numbers (when the device sends them) give `missing` (gaps, handled by the
gap policy: fill / reset / continue), `duplicates` (a redelivered sample, dropped)
and `restarts` (the sequence went back: the device restarted; the state is reset).
For a device that numbers its samples, samples + missing = what it sent: whatever was
lost on the way (broker away, payloads dropped by overflow or rejected) is a gap.
"""

from __future__ import annotations

import inspect
import math
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Optional

import numpy as np

from edgernn.errors import InputError
from edgernn.firmware_bridge.options import GAP_POLICIES
from edgernn.runtime.model import STATE_BATCH_AXIS, Model

DUPLICATE_WINDOW = 8  # a sequence number this close behind the expected one is a redelivery
EPOCH_S_MAX = 4102444800.0  # 2100-01-01: a larger number is not epoch seconds


@dataclass
class DeviceCounters:
    messages: int = 0  # payloads that arrived for this device
    rejected: int = 0  # payloads that were not samples
    rejected_by: dict[str, int] = field(default_factory=dict)
    overflow: int = 0  # payloads dropped unread because processing fell behind
    samples: int = 0  # samples parsed from accepted payloads
    processed: int = 0  # samples forecast
    invalid: int = 0  # samples holding null/NaN: skipped, handled as a gap
    duplicates: int = 0  # redelivered sequence numbers, dropped
    missing: int = 0  # samples never received (sequence gaps)
    gaps: int = 0
    filled: int = 0  # samples imputed with forecasts
    gap_resets: int = 0
    continued: int = 0
    restarts: int = 0  # the sequence went back: device restart, state reset
    anomalies: int = 0
    alerts: int = 0  # alert events opened

    def reject(self, reason: str) -> None:
        self.messages += 1
        self.rejected += 1
        self.rejected_by[reason] = self.rejected_by.get(reason, 0) + 1


@dataclass
class Sample:
    """A sample waiting for its tick."""

    values: np.ndarray  # (C,) float32, finite
    seq: int  # the device's sequence number, or a per-device count when it sends none
    time: Any
    t_recv: float  # perf_counter() when it arrived
    gap: int = 0  # samples missing right before it
    restart: bool = False  # the device restarted right before it


@dataclass
class Result:
    device: Device
    record: dict[str, Any]
    latency: float  # seconds from arrival to forecast
    forecast: Optional[np.ndarray] = None  # (C,) float32: the record's forecast as an array


# -- the batched stream ------------------------------------------------------------------
def _state_axes(model: Model) -> Optional[dict[str, int]]:
    """Each state's batch axis, or None if some state has none (then no batching)."""
    axes = {}
    for spec in model.state_specs:
        ax = getattr(spec, "batch_axis", STATE_BATCH_AXIS)
        if ax is None:
            return None
        axes[spec.input] = ax
    return axes


class BatchedRows:
    """One batched Stream holding every device's state as one row; grows by a row per
    new device. step() advances the given rows only."""

    def __init__(self, model: Model, axes: dict[str, int]):
        self.model = model
        self.axes = axes
        self.n = 0
        self.stream = None
        self._solo = model.stream(batch=1)

    def add(self) -> int:
        old = self.stream.state if self.stream is not None else None
        self.n += 1
        self.stream = self.model.stream(batch=self.n)
        if old is not None:
            self.stream.state = {
                k: np.concatenate([v, np.zeros_like(np.take(v, [0], axis=self.axes[k]))],
                                  axis=self.axes[k])
                for k, v in old.items()
            }  # fmt: skip
        return self.n - 1

    def step(self, rows: Sequence[int], X: np.ndarray) -> np.ndarray:
        """X (len(rows), C) -> forecasts (len(rows), C); other rows keep their state."""
        x = np.zeros((self.n, X.shape[1]), dtype=np.float32)
        x[list(rows)] = X
        if len(rows) == self.n:
            return self.stream.step(x)[list(rows)]
        before = self.stream.state
        y = self.stream.step(x)
        after = self.stream.state
        idle = np.setdiff1d(np.arange(self.n), rows)
        for k, ax in self.axes.items():
            _put(after[k], idle, np.take(before[k], idle, axis=ax), ax)
        self.stream.state = after
        return y[list(rows)]

    def step_one(self, row: int, x: np.ndarray) -> np.ndarray:
        self._solo.state = {k: np.expand_dims(v, self.axes[k]) for k, v in self.get(row).items()}
        y = self._solo.step(x[None, :])
        self.set(row, {k: np.take(v, 0, axis=self.axes[k]) for k, v in self._solo.state.items()})
        return y[0]

    def get(self, row: int) -> dict[str, np.ndarray]:
        return {k: np.take(v, row, axis=self.axes[k]) for k, v in self.stream.state.items()}

    def set(self, row: int, state: dict[str, np.ndarray]) -> None:
        full = self.stream.state
        if set(state) != set(full):
            raise InputError(f"state must have keys {sorted(full)}, got {sorted(state)}")
        for k, ax in self.axes.items():
            _put(full[k], [row], np.expand_dims(np.asarray(state[k], np.float32), ax), ax)
        self.stream.state = full

    def zero(self, row: int) -> None:
        full = self.stream.state
        for k, ax in self.axes.items():
            _put(full[k], [row], 0.0, ax)
        self.stream.state = full


def _exact_time(t: Any) -> Any:
    """A device's timestamp as it sent it. Output values are written at float32
    precision (7 digits), which would wreck a unix time: a number with a fraction
    becomes its exact decimal text instead."""
    if isinstance(t, float):
        return int(t) if t.is_integer() else repr(t)
    return t


def _put(arr: np.ndarray, idx, values, axis: int) -> None:
    index: list[Any] = [slice(None)] * arr.ndim
    index[axis] = idx
    arr[tuple(index)] = values


class SoloRows:
    """A stream per device: models whose state has no batch axis (or a fixed batch of 1)."""

    def __init__(self, model: Model):
        self.model = model
        self.streams: list = []

    def add(self) -> int:
        self.streams.append(self.model.stream())
        return len(self.streams) - 1

    def step(self, rows: Sequence[int], X: np.ndarray) -> np.ndarray:
        return np.stack([self.streams[r].step(x) for r, x in zip(rows, X)])

    def step_one(self, row: int, x: np.ndarray) -> np.ndarray:
        return self.streams[row].step(x)

    def get(self, row: int) -> dict[str, np.ndarray]:
        return self.streams[row].state

    def set(self, row: int, state: dict[str, np.ndarray]) -> None:
        self.streams[row].state = state

    def zero(self, row: int) -> None:
        self.streams[row].reset()


class DeviceStream:
    """A device's row, with the interface its Monitor expects of a Stream. Inside a
    tick the fleet hands it the row's batched forecast (`prime`); any other step (gap
    filling) runs the row alone."""

    def __init__(self, rows, row: int):
        self._rows = rows
        self._row = row
        self._primed: Optional[np.ndarray] = None

    def prime(self, forecast: np.ndarray) -> None:
        self._primed = forecast

    def step(self, x) -> np.ndarray:
        if self._primed is not None:
            y, self._primed = self._primed, None
            return y
        return self._rows.step_one(self._row, np.asarray(x, dtype=np.float32))

    def reset(self) -> None:
        self._rows.zero(self._row)

    def features(self) -> np.ndarray:
        """The row's head features now (Stream.features): state 0 (h), last layer."""
        first = self._rows.model.meta.states[0].input
        return np.asarray(self._rows.get(self._row)[first][-1], dtype=np.float32)

    @property
    def state(self) -> dict[str, np.ndarray]:
        return self._rows.get(self._row)

    @state.setter
    def state(self, state: dict[str, np.ndarray]) -> None:
        self._rows.set(self._row, state)


class _DeviceModel:
    """The model as a device's Monitor sees it: stream() is the device's row."""

    def __init__(self, model: Model, stream: DeviceStream):
        self._model = model
        self._stream = stream

    def stream(self, *args, **kwargs) -> DeviceStream:
        return self._stream

    def __getattr__(self, name: str):
        return getattr(self._model, name)


# -- devices -----------------------------------------------------------------------------
class Device:
    def __init__(self, name: str, row: int, monitor, first_seen: float):
        self.name = name
        self.row = row
        self.monitor = monitor
        self.stream: DeviceStream = monitor.stream
        self.counters = DeviceCounters()
        self.queue: deque[Sample] = deque()
        self.next_seq: Optional[int] = None  # the sequence number expected next
        self.host_seq = 0  # for devices that send no sequence numbers
        self.pending_gap = 0  # invalid samples waiting to be handled as a gap
        self.pending_restart = False  # a restart met on an invalid sample, for the next one
        self.open_alert: Optional[int] = None  # id of the alert event open now
        self.first_seen = first_seen
        self.notes: set[str] = set()  # one-time messages already given

    def once(self, key: str) -> bool:
        """True the first time `key` is asked about: for messages said once per device."""
        if key in self.notes:
            return False
        self.notes.add(key)
        return True

    def summary(self) -> dict[str, Any]:
        d = asdict(self.counters)
        d["queued"] = len(self.queue)
        d["unaccounted"] = (
            d["samples"] - d["processed"] - d["invalid"] - d["duplicates"] - d["queued"]
        )
        d["alert_open"] = self.open_alert is not None
        d["next_seq"] = self.next_seq  # None for a device that does not number its samples
        return d


class Fleet:
    def __init__(
        self,
        model: Model,
        detector_factory: Optional[Callable[[], Any]] = None,
        on_gap: str = "fill",
        gap_fill: int = 4,
        max_devices: int = 1024,
        monitor_class=None,
        time_key: str = "time",
        wall_clock: bool = True,
        note: Optional[Callable[[str], None]] = None,
        online_head: Optional[bool] = None,
    ):
        if on_gap not in GAP_POLICIES:
            raise InputError(f"on_gap must be one of {', '.join(GAP_POLICIES)}, got {on_gap!r}")
        if monitor_class is None:
            from edgernn.runtime.monitor import Monitor as monitor_class
        self.model = model
        self.channels = model.channels
        self.detector_factory = detector_factory
        self.on_gap = on_gap
        self.gap_fill = gap_fill
        self.max_devices = max_devices
        self.time_key = time_key  # the record field of a sample's timestamp
        self.wall_clock = wall_clock  # timestamps are wall-clock time (not a device counter)
        self.note = note
        # Monitor's online_head, when said (a monitor_class of tests may not take it)
        self._head_option = {} if online_head is None else {"online_head": online_head}
        self.devices: dict[str, Device] = {}
        self.refused: dict[str, int] = {}  # devices beyond max_devices: payloads ignored
        self.ticks = 0
        self.batched_samples = 0  # samples stepped in ticks (vs. imputed out of band)
        self._monitor_class = monitor_class
        # A Monitor that takes each sample's timestamp (time-of-day baselines, event times)
        # gets the device's "ts"/"time".
        self._monitor_takes_time = "time" in inspect.signature(monitor_class.process).parameters
        self._saved: dict[str, dict] = {}  # states of devices not seen yet this run
        axes = _state_axes(model)
        if model.fixed_batch is not None and model.fixed_batch > 1:
            raise InputError(
                f"{model.path} was exported with a fixed batch of {model.fixed_batch}: a fleet "
                "adds devices one by one; export without --static-batch"
            )
        if axes is None or model.fixed_batch == 1:
            self.rows = SoloRows(model)
        else:
            self.rows = BatchedRows(model, axes)

    # -- registry --------------------------------------------------------------------
    def device(self, name: str) -> Optional[Device]:
        """The device called `name`, created on first use; None beyond max_devices."""
        dev = self.devices.get(name)
        if dev is not None:
            return dev
        if len(self.devices) >= self.max_devices:
            self.refused[name] = self.refused.get(name, 0) + 1
            return None
        row = self.rows.add()
        stream = DeviceStream(self.rows, row)
        detector = self.detector_factory() if self.detector_factory is not None else None
        monitor = self._monitor_class(_DeviceModel(self.model, stream), detector=detector,
                                      **self._head_option)  # fmt: skip
        dev = Device(name, row, monitor, time.time())
        saved = self._saved.pop(name, None)
        if saved is not None:
            self._resume(dev, saved)
        self.devices[name] = dev
        return dev

    # -- input -----------------------------------------------------------------------
    def receive(self, dev: Device, values: np.ndarray, seq: Optional[int], when: Any,
                t_recv: float, gap: Optional[int] = None,
                restart: bool = False) -> None:  # fmt: skip
        """One sample of `dev` arrived (values in model channel order).

        A source that does its own sequence accounting (a serial decoder, with its u32
        wrap-around and reboot detection) passes `gap` and `restart`; `seq` is then only
        recorded."""
        c = dev.counters
        c.samples += 1
        if gap is not None:
            c.missing += gap
            c.restarts += int(restart)
            if seq is None:
                seq = dev.host_seq
            dev.host_seq = seq + 1
            self._queue(dev, values, seq, when, t_recv, gap, restart)
            return
        gap = 0
        if seq is not None:
            if dev.next_seq is not None:
                delta = seq - dev.next_seq
                if 0 < -delta <= DUPLICATE_WINDOW and seq != 0:
                    c.duplicates += 1
                    return
                if delta < 0:
                    c.restarts += 1
                    restart = True
                else:
                    gap = delta
                    c.missing += gap
            dev.next_seq = seq + 1
        else:
            seq = dev.host_seq
        dev.host_seq = seq + 1
        self._queue(dev, values, seq, when, t_recv, gap, restart)

    def _queue(self, dev: Device, values: np.ndarray, seq: int, when: Any, t_recv: float,
               gap: int, restart: bool) -> None:  # fmt: skip
        if restart:
            dev.pending_gap = 0  # the samples before the restart no longer matter
        if not np.isfinite(values).all():
            dev.counters.invalid += 1
            dev.pending_gap += 1
            dev.pending_restart = dev.pending_restart or restart
            return
        gap += dev.pending_gap
        restart = restart or dev.pending_restart
        dev.pending_gap, dev.pending_restart = 0, False
        dev.queue.append(Sample(values, seq, when, t_recv, gap, restart))

    def pending(self) -> bool:
        return any(d.queue for d in self.devices.values())

    # -- stepping --------------------------------------------------------------------
    def tick(self) -> list[Result]:
        """The oldest waiting sample of every device with one, in one batched call."""
        ready = [d for d in self.devices.values() if d.queue]
        if not ready:
            return []
        samples = [d.queue.popleft() for d in ready]
        resets = [self._before_step(d, s) for d, s in zip(ready, samples)]
        X = np.stack([s.values for s in samples])
        Y = self.rows.step([d.row for d in ready], X)
        self.ticks += 1
        self.batched_samples += len(ready)
        now = time.perf_counter()
        results = []
        for d, s, y, reset in zip(ready, samples, Y, resets):
            record, forecast = self._process(d, s, y, reset)
            results.append(Result(d, record, now - s.t_recv, forecast))
        return results

    def drain(self) -> Iterator[Result]:
        while True:
            results = self.tick()
            if not results:
                return
            yield from results

    def _before_step(self, dev: Device, s: Sample) -> bool:
        """Restart and gap handling; True if the state was reset."""
        if s.restart:  # the stream starts over: what was missed before does not matter
            dev.monitor.reset()
            return True
        return self._on_gap(dev, s.gap) if s.gap else False

    def _on_gap(self, dev: Device, gap: int) -> bool:
        c, m = dev.counters, dev.monitor
        c.gaps += 1
        if self.on_gap == "continue":
            c.continued += gap
            return False
        if self.on_gap == "fill" and gap <= self.gap_fill and m.last_forecast is not None:
            for _ in range(gap):
                m.process(m.last_forecast, imputed=True)
            c.filled += gap
            return False
        m.reset()
        c.gap_resets += 1
        return True

    def _process(
        self, dev: Device, s: Sample, forecast: np.ndarray, reset: bool
    ) -> tuple[dict, np.ndarray]:
        """The device's record for sample s, and its forecast (the Monitor's: the online
        head may have corrected the model's)."""
        dev.stream.prime(forecast)
        clock = self._clock(dev, s.time) if self._monitor_takes_time else None
        if clock is not None:
            result = dev.monitor.process(s.values, time=clock)  # the detector's clock
        else:
            result = dev.monitor.process(s.values)
        dev.counters.processed += 1
        record: dict[str, Any] = {"device": dev.name, "seq": s.seq}
        if s.time is not None:
            record[self.time_key] = _exact_time(s.time)
        record.update(zip(self.channels, s.values.tolist()))
        out = np.asarray(result.pop("forecast"))
        record["forecast"] = dict(zip(self.channels, out.tolist()))
        record.update(result)
        if s.gap:
            record["gap"] = s.gap
        if reset:
            record["reset"] = 1
        self._track_alert(dev, record)
        return record, out

    def _clock(self, dev: Device, t: Any) -> Any:
        """A sample's timestamp as the detector takes it (text, or epoch seconds), or None.
        Devices often send epoch milliseconds: taken as such, said once; a number that is
        neither is not used (said once), so one device's odd clock cannot stop the run."""
        if t is None or not self.wall_clock or isinstance(t, str):
            return t if self.wall_clock else None
        try:
            v = float(t)
        except OverflowError:
            v = math.inf
        if 0 <= v <= EPOCH_S_MAX:
            return t
        if 1e11 <= v <= EPOCH_S_MAX * 1000:
            if dev.once("clock ms") and self.note is not None:
                self.note(f"device {dev.name!r}: timestamps like {t} taken as epoch milliseconds")
            return v / 1000
        if dev.once("clock bad") and self.note is not None:
            self.note(f"device {dev.name!r}: timestamp {t!r} is neither epoch seconds nor "
                      "milliseconds: passed through, not used by the detector")  # fmt: skip
        return None

    def _track_alert(self, dev: Device, record: dict) -> None:
        dev.counters.anomalies += int(record.get("anomaly") or 0)
        opened, closed = record.get("event_opened"), record.get("event_closed")
        if closed:
            dev.open_alert = None
        if opened:
            dev.counters.alerts += 1
            dev.open_alert = opened.get("id", dev.counters.alerts)

    # -- reporting and persistence ---------------------------------------------------
    def totals(self) -> dict[str, int]:
        keys = [f.name for f in fields(DeviceCounters) if f.name != "rejected_by"]
        out: dict[str, int] = dict.fromkeys(keys + ["queued", "unaccounted", "alert_open"], 0)
        for dev in self.devices.values():
            for k, v in dev.summary().items():
                if k in out:
                    out[k] += int(v)
        out["devices"] = len(self.devices)
        out["refused_devices"] = len(self.refused)
        return out

    def state_dict(self) -> dict[str, Any]:
        devices = dict(self._saved)  # devices of an earlier run not back yet stay saved
        for name, dev in self.devices.items():
            devices[name] = {"monitor": dev.monitor.state_dict(), "next_seq": dev.next_seq}
        return {"devices": devices}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """States for devices by name: applied when each device first appears."""
        devices = state.get("devices")
        if not isinstance(devices, dict):
            raise ValueError("no devices in the fleet state")
        self._saved = dict(devices)
        for name in list(self._saved):
            if name in self.devices:
                self._resume(self.devices[name], self._saved.pop(name))

    def _resume(self, dev: Device, saved: dict) -> None:
        try:
            dev.monitor.load_state_dict(saved["monitor"])
            nxt = saved.get("next_seq")
            dev.next_seq = int(nxt) if nxt is not None else None
        except (KeyError, ValueError, TypeError, InputError):
            dev.monitor.reset()  # a damaged entry: this device starts cold
            dev.once("state unusable")
