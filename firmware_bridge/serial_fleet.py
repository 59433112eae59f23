"""`edgernn run MODEL --port A --port B ...`: several boards, one process, one model call
per tick.

Each port has its own reader thread, decoder (mode detection, sequence accounting,
channel mapping) and bounded queue, exactly as a single-board run; the boards are the
devices of one Fleet (runtime/fleet.py), so each keeps its own stream state, detector,
gap handling, alert events and state-file entry, and the boards with a sample waiting
are stepped together in one batched call. Records carry "device" (the port's name),
"seq" and "time_us"; --publish puts each board's forecasts and alerts on a broker.

A board whose channels cannot be mapped onto the model's is reported and left out;
the others carry on. The run ends on Ctrl-C / SIGTERM, or when every port has closed
(--no-reconnect) or given up (--reconnect-timeout: exit 1).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

from edgernn.errors import EdgernnError, InputError
from edgernn.firmware_bridge.framing import (
    ChannelMismatch,
    Decoder,
    DeviceInfo,
    ModeDetected,
    Reboot,
    Samples,
    SeqReset,
    TextMismatch,
)
from edgernn.firmware_bridge.options import PortsAction  # noqa: F401
from edgernn.firmware_bridge.port import (
    Closed,
    Connected,
    Disconnected,
    PortReader,
    SampleQueue,
)
from edgernn.firmware_bridge.protocol import U32
from edgernn.runtime.adapt import online_head_wanted

POLL_S = 0.05


class _WakingQueue(SampleQueue):
    """A board's queue that also wakes the one loop serving every board."""

    def __init__(self, wake: threading.Event, max_samples: int, policy: str):
        super().__init__(max_samples, policy)
        self._wake = wake

    def put(self, event) -> None:
        super().put(event)
        self._wake.set()


@dataclass
class Board:
    name: str
    port: str
    decoder: Decoder
    queue: _WakingQueue
    reader: PortReader
    closed: bool = False
    error: Optional[str] = None  # the reader gave up, or the channels cannot be mapped
    restart_pending: bool = False  # a reboot / backward jump: the next sample starts over
    mode: str = ""


def board_names(ports: list[str]) -> list[str]:
    """The ports' base names (ttyACM0), made unique."""
    from edgernn.firmware_bridge.mqtt_run import _port_name

    names: list[str] = []
    for port in ports:
        base = _port_name(port)
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


class SerialFleetRun:
    def __init__(self, args, model, detector_factory=None, stop: Optional[threading.Event] = None):
        from edgernn.firmware_bridge.live import LatencyHistogram, model_fingerprint
        from edgernn.firmware_bridge.mqtt_run import FleetStateFile, Publisher, make_output_link
        from edgernn.runtime.fleet import Fleet
        from edgernn.systemd import Notifier

        self.args = args
        self.model = model
        self.channels = model.channels
        self.stop = stop or threading.Event()
        ports = [args.port] + list(args.more_ports)
        if len(set(ports)) != len(ports):
            raise InputError("the same --port is given twice")
        # time_us is the board's microsecond counter: recorded, but no clock for the detector.
        self.fleet = Fleet(model, detector_factory, on_gap=args.on_gap, gap_fill=args.gap_fill,
                           max_devices=len(ports), time_key="time_us", wall_clock=False,
                           online_head=online_head_wanted(args, detector_factory))  # fmt: skip
        self.wake = threading.Event()
        self.boards: list[Board] = []
        for port, name in zip(ports, board_names(ports)):
            decoder = Decoder(args.mode, self.channels)
            queue = _WakingQueue(self.wake, args.queue_size, args.on_overflow)
            reader = PortReader(port, decoder, queue, baud=args.baud, reconnect=args.reconnect,
                                reconnect_timeout=args.reconnect_timeout)  # fmt: skip
            self.boards.append(Board(name, port, decoder, queue, reader))
            self.fleet.device(name)
        self.latency = LatencyHistogram()
        self.notifier = Notifier()
        self.state_file = None
        if args.state_file:
            self.state_file = FleetStateFile(args.state_file, model_fingerprint(model.path))
        self.link = self.publisher = None
        if getattr(args, "publish", None):
            from edgernn.firmware_bridge.mqtt import parse_broker_url

            url = parse_broker_url(args.publish, "--publish")
            self.link = make_output_link(args, "serial " + ",".join(ports), url)
            self.publisher = Publisher(self.link, args, self.channels, self.link.opts.client_id,
                                       os.path.basename(model.path), detector_factory is not None)  # fmt: skip
        from edgernn.runtime.output import RecordWriter

        out = getattr(args, "out", None)
        trailing = ["gap", "reset"] + (["score", "anomaly"] if detector_factory else [])
        self.writer = RecordWriter(out, self.channels, leading=["device", "seq", "time_us"],
                                   trailing=trailing, append=True, flush=True,
                                   fmt=None if out not in (None, "-") else "jsonl")  # fmt: skip
        self._started = time.perf_counter()

    def note(self, text: str) -> None:
        from edgernn.firmware_bridge.mqtt_run import note

        note(text)

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> int:
        try:
            self._start()
            self._loop()
        finally:
            self._finish()
        self.print_summary()
        errors = [f"{b.name}: {b.error}" for b in self.boards if b.error]
        if errors:
            raise EdgernnError("; ".join(errors))
        return 0

    def _start(self) -> None:
        if self.state_file is not None:
            self.note(self.state_file.resume(self.fleet))
        for board in self.boards:
            board.reader.start()  # PortError (one line) if a port cannot be opened
        if self.link is not None:
            self.link.start()
            for board in self.boards:
                self.publisher.device_seen(board.name)
        self.note(f"reading {len(self.boards)} boards ({', '.join(b.name for b in self.boards)}): "
                  f"one stream each, batched ({self.model.backend} backend)")  # fmt: skip
        self.notifier.ready(f"reading {len(self.boards)} boards")

    def _loop(self) -> None:
        from edgernn.firmware_bridge.live import Ticker, status_ticker

        status, save = status_ticker(self.args), Ticker(self.args.state_interval)
        while not self.stop.is_set() and not all(b.closed for b in self.boards):
            self.wake.wait(POLL_S)
            self.wake.clear()
            self._take()
            if self.link is not None:
                if self.link.fatal:
                    raise EdgernnError(self.link.fatal)
                self.link.flush()
            self.notifier.ping()
            now = time.perf_counter()
            if status.due(now):
                self.print_status()
            if self.state_file is not None and save.due(now):
                self.state_file.save_async(self.fleet.state_dict())

    def _take(self) -> None:
        for board in self.boards:
            while True:
                event = board.queue.get(0)
                if event is None:
                    break
                self._event(board, event)
        times = []
        for result in self.fleet.drain():
            self.writer.write(result.record)
            if self.publisher is not None:
                self.publisher.record(result.device.name, result.record, result.forecast)
            times.append(result.latency)
        self.latency.add(times)

    def _finish(self) -> None:
        self.notifier.stopping()
        try:
            for board in self.boards:
                board.reader.stop()
            self._take()  # samples already read still get their forecasts
        finally:
            if self.link is not None:
                self.link.close()
            if self.state_file is not None:
                self.state_file.save(self.fleet.state_dict())
                self.state_file.release()
            self.writer.close()
            self.notifier.close()

    # -- events of one board ---------------------------------------------------------
    def _event(self, board: Board, event) -> None:
        if isinstance(event, Samples):
            self._samples(board, event)
        elif isinstance(event, (Reboot, SeqReset)):
            board.restart_pending = True
            self.note(f"{board.name}: device restarted: its stream state starts over")
        elif isinstance(event, DeviceInfo):
            h = event.hello
            self.note(f"{board.name}: session {h.session:08x}, {h.rate_hz:g} Hz, channels "
                      f"{', '.join(h.names)}, mapped {event.mapping}")  # fmt: skip
        elif isinstance(event, ChannelMismatch):
            board.error = event.message
            board.closed = True
            board.reader.stop()
            self.note(f"{board.name}: {event.message}: this board is left out")
        elif isinstance(event, TextMismatch):
            self.note(f"{board.name}: WARNING: {event.message}: such lines are rejected "
                      "(counted as rejected 'channels')")  # fmt: skip
        elif isinstance(event, ModeDetected):
            board.mode = event.mode
            self.note(f"{board.name}: {event.mode} mode detected")
        elif isinstance(event, Connected) and event.reconnect:
            self.note(f"{board.name}: reconnected on {event.device}")
        elif isinstance(event, Disconnected):
            self.note(f"{board.name}: {event.device} disconnected ({event.reason})")
        elif isinstance(event, Closed):
            board.closed = True
            board.error = board.error or event.error

    def _samples(self, board: Board, event: Samples) -> None:
        dev = self.fleet.devices[board.name]
        step = event.period_us or 0.0
        for i, row in enumerate(event.values):
            when = None
            if event.time_us is not None:
                when = int(event.time_us + round(i * step)) & U32
            restart, board.restart_pending = board.restart_pending and i == 0, False
            self.fleet.receive(dev, row, (event.seq + i) & U32, when, event.t_read,
                               gap=event.gap if i == 0 else 0, restart=restart)  # fmt: skip

    # -- reporting -------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        from edgernn.firmware_bridge.live import latency_fields

        boards = {}
        for b in self.boards:
            d = b.decoder.counters.snapshot()
            f = self.fleet.devices[b.name].summary()
            d.update(port=b.port, mode=b.mode or b.decoder.mode, forecasts=f["processed"],
                     invalid=f["invalid"], filled=f["filled"], gap_resets=f["gap_resets"],
                     alerts=f["alerts"], anomalies=f["anomalies"], overflow=b.queue.overflow,
                     queued=len(b.queue) + f["queued"], error=b.error)  # fmt: skip
            d["unaccounted"] = (d["samples"] - d["forecasts"] - d["invalid"] - d["overflow"]
                                - d["queued"])  # fmt: skip
            boards[b.name] = d
        c: dict[str, Any] = {"boards": boards, "ticks": self.fleet.ticks}
        c["mean_batch"] = round(self.fleet.batched_samples / max(1, self.fleet.ticks), 2)
        c["seconds"] = round(time.perf_counter() - self._started, 3)
        c.update(latency_fields(self.latency))
        return c

    def print_status(self) -> None:
        c = self.counters()
        parts = [f"{n} {d['forecasts']} forecast, {d['rejected']} rejected, {d['missing']} "
                 f"missing" for n, d in c["boards"].items()]  # fmt: skip
        self.note(" | ".join(parts))

    def print_summary(self) -> None:
        c = self.counters()
        lines = [f"serial run on {len(self.boards)} boards, {c['seconds']:.1f} s, "
                 f"{c['mean_batch']} boards per model call"]  # fmt: skip
        for name, d in c["boards"].items():
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(d["rejected_by"].items()))
            lines.append(
                f"  {name} ({d['port']}, {d['mode'] or 'no data'}): {d['samples']} received, "
                f"{d['forecasts']} forecast, {d['invalid']} invalid, {d['overflow']} overflow, "
                f"{d['unaccounted']} unaccounted; {d['rejected']} rejected"
                + (f" ({reasons})" if reasons else "")
                + f", {d['missing']} missing, {d['device_dropped']} dropped by the device, "
                f"{d['reboots']} reboots; {d['filled']} filled, {d['gap_resets']} resets"
            )
        if c["latency_p50_ms"] is not None:
            lines.append(f"  latency (read to forecast): p50 {c['latency_p50_ms']:.2f} ms, "
                         f"p99 {c['latency_p99_ms']:.2f} ms")  # fmt: skip
        self.note("\n".join(lines))
        if self.args.summary_json:
            from edgernn.firmware_bridge.live import write_summary_json

            write_summary_json(self.args.summary_json, c)


def run_serial_fleet(args, model, detector_factory=None,
                     stop: Optional[threading.Event] = None) -> int:  # fmt: skip
    """`edgernn run --port A --port B ...`."""
    from edgernn.firmware_bridge.live import _graceful_signals, check_output_paths

    if getattr(args, "live", False):
        raise InputError("--live shows one board; with several --port read the status lines")
    if args.queue_size < 1:
        raise InputError("--queue-size must be at least 1")
    for flag, value in (("--metrics-port", args.metrics_port), ("--device-name", args.device_name)):
        if value is not None:  # not silently ignored
            raise InputError(f"{flag} serves one board (or --mqtt); several --port runs "
                             "name their boards by port and have no metrics endpoint yet")  # fmt: skip
    check_output_paths(args)
    run = SerialFleetRun(args, model, detector_factory, stop)
    with _graceful_signals(run.stop):
        return run.run()
