"""`edgernn run MODEL --port PORT`: forecast every sample as it arrives.

The reader (port.PortReader) decodes into a bounded queue; this loop takes samples
off it, runs each through the Monitor (the same per-sample processing as `edgernn run
--csv`) and writes one record per sample (JSON lines: all of one read in one flushed
write). A local tty is read on this thread whenever the queue is empty (PortReader's
inline mode: no hand-over between threads per read); the reader's own thread reopens a
lost port, and reads pyserial URLs and under --on-overflow block. stderr gets a status
line every few seconds and a summary at the end.

Every received sample ends up in exactly one place: a forecast record, `invalid`
(non-finite values), or `overflow` (dropped by the queue policy when inference fell
behind). Sequence gaps are handled by policy: "fill" imputes up to --gap-fill
missing samples with the model's own forecasts and resets the state beyond that,
"reset" always resets, "continue" feeds the next sample as if nothing was missing.
A device reboot (new session id) resets the state. Each record after a gap carries
"gap": n and, if the state was reset, "reset": 1.

--state-file saves the stream state atomically every --state-interval seconds and at
exit; a restarted run resumes from it (whatever the gap: a warm state beats a cold
one after a Pi reboot).
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from bisect import bisect_left
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np

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
from edgernn.firmware_bridge.jsonline import RecordLines, json_line
from edgernn.firmware_bridge.options import GAP_POLICIES, add_serial_arguments  # noqa: F401
from edgernn.firmware_bridge.port import (
    READ_SIZE,
    Closed,
    Connected,
    Disconnected,
    PortReader,
    SampleQueue,
)
from edgernn.firmware_bridge.protocol import U32
from edgernn.runtime.adapt import online_head_wanted
from edgernn.runtime.filelocks import SidecarLock
from edgernn.runtime.liveview import LiveView, Snapshot, printable
from edgernn.runtime.statecodec import pack, unpack

STATE_FORMAT = 1
POLL_S = 0.05  # the loop's longest sleep: how fast it notices a stop request


# -- state file ------------------------------------------------------------------------
def model_fingerprint(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: str, text: str, tmp: Optional[str] = None) -> None:
    """Write-then-rename in the same directory: a reader (or a power cut) sees the old
    file or the new one, never half of one. `tmp`: a fixed temp name, for a file whose
    lock keeps other writers away (a killed run's temp file is then reused, not left)."""
    tmp = tmp or f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp) and not os.path.isdir(tmp):
            os.unlink(tmp)  # a failed save leaves nothing behind
        raise


def check_writable(path: str, flag: str) -> None:
    """Fail before the run, not after it, on an output file that cannot be written."""
    folder = os.path.dirname(path) or "."
    if os.path.isdir(path):
        raise InputError(f"{flag} {path} is a directory; give a file path")
    if not os.path.isdir(folder):
        why = "is not a folder" if os.path.lexists(folder) else "does not exist"
        raise InputError(f"{flag} {path}: {folder} {why}")
    if not os.access(folder, os.W_OK):
        raise InputError(f"{flag} {path}: folder {folder} is not writable")


def check_output_paths(args) -> None:
    """--summary-json and --state-file, checked before a run starts."""
    for flag, path in (("--summary-json", args.summary_json), ("--state-file", args.state_file)):
        if path:
            check_writable(path, flag)


def write_summary_json(path: str, counters: dict[str, Any]) -> None:
    """--summary-json: the run's counters, written atomically."""
    try:
        write_atomic(path, json.dumps(counters, indent=2))
    except OSError as e:
        raise EdgernnError(f"cannot write --summary-json {path}: {e.strerror or e}") from e


def latency_fields(hist: LatencyHistogram) -> dict[str, Optional[float]]:
    """latency_p50_ms and latency_p99_ms of a histogram (None before any sample)."""
    fields: dict[str, Optional[float]] = {}
    for name, q in (("p50", 50), ("p99", 99)):
        v = hist.percentile(q)
        fields[f"latency_{name}_ms"] = None if v is None else round(v * 1e3, 3)
    return fields


class Ticker:
    """Due when `seconds` have passed since it was made or was last due (perf_counter
    time): the loops' status lines and state saves."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.next = time.perf_counter() + seconds

    def due(self, now: float) -> bool:
        if now < self.next:
            return False
        self.next = now + self.seconds
        return True


def status_ticker(args) -> Ticker:
    """Every --status-interval seconds; 0 or less: never."""
    every = args.status_interval
    return Ticker(every if every > 0 else float("inf"))


class StateFile:
    """The stream state on disk. Saving happens off the inference thread (fsync on an
    SD card can take tens of milliseconds); the final save at exit is synchronous.

    The run holds `PATH.lock` from start to end: a second run on the same state file
    is refused (it would resume, then overwrite, the first run's stream). Saves go
    through the fixed temp name `PATH.tmp`, which only the lock holder writes.
    Besides the monitor's state the file records where the device's stream was (mode,
    session id, next sequence number), so a restarted run can say what it missed.
    """

    def __init__(self, path: str, fingerprint: str):
        self.path = path
        self.fingerprint = fingerprint
        self.saves = 0
        self.failures = 0
        self.error: Optional[str] = None  # the last save's error, None once one succeeds
        self.last_error = ""  # kept for the summary
        self.device: Optional[dict] = None  # the saved stream position, once loaded
        self._thread: Optional[threading.Thread] = None
        self._lock: Optional[SidecarLock] = None

    def acquire(self) -> None:
        """Lock the state file for this run (FileInUse if another run has it) and remove
        temp files that killed runs left."""
        try:
            self._lock = SidecarLock(self.path, "--state-file")
        except OSError as e:
            raise InputError(f"--state-file {self.path}: cannot lock ({e.strerror})") from e
        self._remove_stale_temps()

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _remove_stale_temps(self) -> None:
        """Temp files of killed runs (PATH.tmp, or PATH.tmp<pid> of older versions)."""
        folder = os.path.dirname(self.path) or "."
        prefix = os.path.basename(self.path) + ".tmp"
        try:
            names = os.listdir(folder)
        except OSError:
            return
        for name in names:
            if name == prefix or (name.startswith(prefix) and name[len(prefix) :].isdigit()):
                try:
                    os.unlink(os.path.join(folder, name))
                except OSError:
                    pass

    def load(self) -> tuple[Optional[dict], str]:
        """(monitor state or None, a line saying what happened)."""
        if not os.path.exists(self.path):
            return None, f"no state file at {self.path} yet: starting cold"
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_STATE_BYTES + 1)
            if len(raw) > MAX_STATE_BYTES:
                return None, f"{self.path} is over {MAX_STATE_BYTES >> 20} MB: starting cold"
            data = unpack(json.loads(raw))  # large arrays are packed (statecodec)
        except (OSError, ValueError, RecursionError) as e:
            return None, f"cannot read {self.path} ({e.__class__.__name__}): starting cold"
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            return None, f"{self.path} is not an edgernn state file: starting cold"
        if not isinstance(data.get("monitor"), dict):
            return None, f"{self.path} holds no usable stream state: starting cold"
        if data.get("model_sha256") != self.fingerprint:
            return None, f"{self.path} was saved for a different model: starting cold"
        self.device = _device_position(data.get("device"))
        saved = data.get("saved_unix")
        age = time.time() - saved if isinstance(saved, (int, float)) else float("nan")
        samples = data.get("samples")
        return data["monitor"], (
            f"resumed stream state from {self.path} (saved {age:.0f} s ago after "
            f"{samples if isinstance(samples, int) else '?'} samples)"
        )

    def _document(self, monitor_state: dict, samples: int, device: Optional[dict] = None) -> str:
        doc = {
            "format": STATE_FORMAT,
            "model_sha256": self.fingerprint,
            "saved_unix": time.time(),
            "samples": samples,
            "monitor": monitor_state,
        }
        if device is not None:
            doc["device"] = device
        return json.dumps(pack(doc))

    def save_async(self, monitor_state: dict, samples: int, device: Optional[dict] = None):
        if self._thread is not None and self._thread.is_alive():
            return  # the previous save is still being written; the next tick catches up
        self._thread = threading.Thread(
            target=self._save,
            args=(monitor_state, samples, device),
            name="edgernn-state",
            daemon=True,
        )
        self._thread.start()

    def save(self, monitor_state: dict, samples: int, device: Optional[dict] = None) -> None:
        if self._thread is not None:
            self._thread.join()
        self._save(monitor_state, samples, device)

    def _save(self, monitor_state: dict, samples: int, device: Optional[dict]) -> None:
        try:
            text = self._document(monitor_state, samples, device)
            write_atomic(self.path, text, tmp=f"{self.path}.tmp")
            self.saves += 1
            self.error = None
        except OSError as e:
            self.failures += 1
            self.error = self.last_error = f"cannot save state to {self.path}: {e.strerror or e}"


MAX_STATE_BYTES = 64 << 20  # far above any real state (a detector keeps < 1 MB)


def _device_position(d: Any) -> Optional[dict]:
    """The saved {"mode", "session", "next_seq"}, or None if absent or malformed."""
    if not isinstance(d, dict) or d.get("mode") not in ("binary", "text"):
        return None
    session, seq = d.get("session"), d.get("next_seq")
    for v in (session, seq):
        if v is not None and (type(v) is not int or not 0 <= v <= U32):
            return None
    return {"mode": d["mode"], "session": session, "next_seq": seq}


def monitor_state_problem(state: Any, model) -> Optional[str]:
    """Why a loaded monitor state does not fit `model` (None when it does). Checked at
    load, so a damaged state is refused in one line instead of failing samples later."""
    if not isinstance(state, dict):
        return "the stream state is not an object"
    model_state = state.get("model_state")
    if not isinstance(model_state, dict):
        return "model_state is not an object"
    pending = state.get("pending", [])
    if not isinstance(pending, list) or len(pending) > model.horizon:
        return f"pending is not a list of at most {model.horizon} forecasts"
    for f in pending:
        try:
            arr = np.asarray(f, dtype=np.float32)
        except (TypeError, ValueError, RecursionError):
            return "a pending forecast is not numeric"
        if arr.shape != (model.n_channels,) or not np.isfinite(arr).all():
            return f"a pending forecast is not {model.n_channels} finite numbers"
    for key in ("samples", "imputed"):
        v = state.get(key, 0)
        if type(v) is not int or v < 0:
            return f"{key} is not a count"
    if "detector" in state and not isinstance(state["detector"], dict):
        return "detector is not an object"
    return None


# -- statistics ------------------------------------------------------------------------
class LatencyHistogram:
    """Read-to-emitted latency, in log-spaced bins from 1 us to 10 s: percentiles over
    a run of any length in constant memory."""

    EDGES = np.logspace(-6, 1, 281)  # seconds; 40 bins per decade

    def __init__(self):
        self.counts = np.zeros(len(self.EDGES) + 1, dtype=np.int64)

    _EDGE_LIST = EDGES.tolist()  # bisect_left on these == np.searchsorted (side "left")

    def add(self, seconds: list[float]) -> None:
        if len(seconds) <= 4:  # the live path's case (one read, a sample or a few): no numpy
            for s in seconds:
                self.counts[bisect_left(self._EDGE_LIST, s)] += 1
        else:
            idx = np.searchsorted(self.EDGES, seconds)
            self.counts += np.bincount(idx, minlength=len(self.counts))

    def add_repeated(self, seconds: float, n: int) -> None:
        """n samples of the same latency (every sample of one write)."""
        if n > 0:
            self.counts[bisect_left(self._EDGE_LIST, seconds)] += n

    def percentile(self, q: float) -> Optional[float]:
        total = int(self.counts.sum())
        if total == 0:
            return None
        k = int(np.searchsorted(np.cumsum(self.counts), q / 100 * total))
        return float(self.EDGES[min(k, len(self.EDGES) - 1)])  # bin's upper edge

    def clear(self) -> None:
        self.counts[:] = 0


@dataclass
class LiveStats:
    forecasts: int = 0
    invalid: int = 0  # samples holding NaN/inf: skipped, handled as a gap
    gaps: int = 0
    filled: int = 0  # samples imputed with forecasts
    gap_resets: int = 0
    continued: int = 0  # missing samples stepped over under --on-gap continue
    device_resets: int = 0  # reboots and backward sequence jumps
    anomalies: int = 0
    disconnects: int = 0
    reconnects: int = 0
    missed_while_down: int = 0  # samples between the saved seq and this run's first one
    restart_unknown: int = 0  # restarts after which the loss cannot be known (reboot)


# -- the live run ----------------------------------------------------------------------
class LiveRun:
    def __init__(self, args, model, detector=None, stop: Optional[threading.Event] = None):
        self.args = args
        self.model = model
        self.channels = model.channels
        self.view = LiveView(sys.stderr) if getattr(args, "live", False) else None
        self.stop = stop or threading.Event()
        self.stats = LiveStats()
        self.latency = LatencyHistogram()
        self.window = LatencyHistogram()  # since the last status line
        self.state_file: Optional[StateFile] = None
        self.mode_line = ""
        state, line = None, ""
        if args.state_file:
            self.state_file = StateFile(args.state_file, model_fingerprint(model.path))
            self.state_file.acquire()
        try:
            if self.state_file is not None:
                state, line = self.state_file.load()
            self._open(args, model, detector, state, line)
        except BaseException:
            if self.state_file is not None:
                self.state_file.release()
            raise

    def _open(self, args, model, detector, state: Optional[dict], line: str) -> None:
        from edgernn.runtime.monitor import Monitor
        from edgernn.runtime.output import RecordWriter

        head = online_head_wanted(args, detector)
        problem = None if state is None else monitor_state_problem(state, model)
        if problem is None and state is not None:
            try:
                self.monitor = Monitor(model, detector=detector, state=state, online_head=head)
            except (EdgernnError, KeyError, ValueError, TypeError, AttributeError, IndexError,
                    RecursionError) as e:  # fmt: skip
                problem = f"{e.__class__.__name__}: {str(e)[:100]}"
        if problem is not None:
            # Said instead of "resumed ...": the state turned out unusable after all.
            line = f"state file {args.state_file} unusable ({problem}): starting cold"
            assert self.state_file is not None
            self.state_file.device = None
            state = None
        if state is None:
            if detector is not None:
                detector.reset()  # a failed load may have left part of a state in it
            self.monitor = Monitor(model, detector=detector, online_head=head)
        if line:
            self.note(line)
        # Where the device's stream was when the state was saved: the first sample of
        # this run says how much was missed while the process was down.
        self._resumed_from = self.state_file.device if self.state_file is not None else None
        self._next_seq: Optional[int] = None  # seq after the last sample received
        self._position: Optional[dict] = None
        self.decoder = Decoder(args.mode, self.channels)
        self.queue = SampleQueue(args.queue_size, args.on_overflow)
        self.reader = PortReader(
            args.port,
            self.decoder,
            self.queue,
            baud=args.baud,
            reconnect=args.reconnect,
            reconnect_timeout=args.reconnect_timeout,
            inline=True,  # a local tty is read on this thread, between samples
        )
        from edgernn.firmware_bridge.mqtt_run import serial_publisher

        # --publish mqtt://... (the board-to-broker bridge), systemd notify, --metrics-port.
        self.publisher = serial_publisher(args, self.channels, detector is not None, run=self)
        out = getattr(args, "out", None)
        trailing = ["gap", "reset"] + (["score", "anomaly"] if detector is not None else [])
        self.writer = RecordWriter(
            out,
            self.channels,
            leading=["seq", "time_us"],
            trailing=trailing,
            fmt=None if out not in (None, "-") else "jsonl",
            flush=True,  # a live consumer (a pipe, `tail -f`) sees each sample at once
            append=True,  # a restart (systemd, kill -9) adds to the records, never truncates
        )
        # JSON lines (stdout, .jsonl): each record's line made as it is processed
        self._lines = RecordLines(self.channels) if self.writer.fmt == "jsonl" else None
        self._line = ""
        # no publisher, no live view: a record is only ever its line (_process skips it)
        self._lines_only = self._lines is not None and self.publisher is None and self.view is None
        if self.writer.appended_to:
            header = ", no second CSV header" if self.writer.fmt == "csv" else ""
            self.note(f"appending to {out} ({self.writer.appended_to} bytes already there{header})")
        self._alerts: list[str] = []
        self._open_alert: Optional[str] = None
        self._view_mark = (time.perf_counter(), 0)  # (time, forecasts) at the last redraw
        self._pending_gap = 0  # invalid samples waiting to be handled as a gap
        self._pending_reset = False
        self._error: Optional[str] = None
        self._started = time.perf_counter()
        self.fast: Optional[FastFrames] = None  # the C steady state, once run() starts

    # -- messages ------------------------------------------------------------------
    def note(self, text: str) -> None:
        if self.view is not None:
            self.view.clear()  # the line takes the panel's place; the next redraw is below
        # Line by line: our own multi-line summary stays, anything else is escaped.
        text = "\n".join(printable(line) for line in text.split("\n"))
        print(f"edgernn: {text}", file=sys.stderr, flush=True)

    # -- main loop -----------------------------------------------------------------
    def run(self) -> int:
        try:
            self.reader.start()  # raises PortError (one line) if the port cannot be opened
        except BaseException:
            self.writer.close()
            raise
        status, save = status_ticker(self.args), Ticker(self.args.state_interval)
        # Everything loaded so far (modules, the model, numpy) lives as long as the run: out
        # of the collector's reach, a full collection no longer walks it (a pause of
        # several ms, every few thousand samples, in the latency tail).
        gc.freeze()
        try:
            if self.publisher is not None:
                self.publisher.start()
            reader, queue = self.reader, self.queue
            fast = self.fast = FastFrames.make(self)
            while not self.stop.is_set():
                if reader.inline:  # this thread reads the port when nothing is queued
                    event = queue.get(0)
                    if event is None and fast is not None and fast.loop(self._until(status, save, 0)):
                        event = queue.get(0)  # the C loop gave back what needs Python
                    elif event is None:  # (or the port reports trouble: read_inline's)
                        got = reader.read_inline(POLL_S)
                        if got is not None:
                            data, t_read = got
                            taken = fast.take(data, t_read) if fast is not None else 0
                            if taken < len(data):  # the rest (or all): the decoder's
                                reader.feed(data[taken:] if taken else data, t_read)
                        event = queue.get(0)
                else:
                    event = queue.get(POLL_S)
                if event is not None and not self._handle(event):
                    break
                if self.publisher is not None:
                    self.publisher.tick()
                now = time.perf_counter()
                if self.view is not None:
                    if self.view.due():
                        self.view.show(self.snapshot())
                elif status.due(now):
                    self.print_status()
                if self.state_file is not None and save.due(now):
                    self.state_file.save_async(
                        self.monitor.state_dict(), self.stats.forecasts, self.device_position()
                    )
        finally:
            self.reader.stop()
            self._drain()
            if self.publisher is not None:
                self.publisher.close()
            try:
                if self.state_file is not None:
                    self.state_file.save(
                        self.monitor.state_dict(), self.stats.forecasts, self.device_position()
                    )
            finally:
                if self.state_file is not None:
                    self.state_file.release()
                self.writer.close()
        if self.view is not None:
            self.view.show(self.snapshot(final=True), force=True)
            self.view.close()
        self.print_summary()
        if self._error:
            raise EdgernnError(self._error)
        sf = self.state_file
        if sf is not None and sf.saves == 0 and sf.failures:
            raise EdgernnError(f"{sf.last_error}; the stream state was never saved")
        return 0

    def _until(self, status: Ticker, save: Ticker, poll: float = POLL_S) -> float:
        """When the loop must look up again (perf_counter time): the stop flag every
        `poll` seconds, the status line and the state save when due."""
        until = time.perf_counter() + poll if poll else math.inf
        if status.next < until:
            until = status.next
        if self.state_file is not None and save.next < until:
            until = save.next
        return until

    def _drain(self) -> None:
        """Samples already read when the run stops still get their forecasts."""
        while True:
            event = self.queue.get(0)
            if event is None:
                return
            if isinstance(event, (Samples, Reboot, SeqReset)):
                self._handle(event)

    def _handle(self, event) -> bool:
        """Act on one event; False ends the run."""
        if isinstance(event, Samples):
            self._samples(event)
        elif isinstance(event, (Reboot, SeqReset)):
            self._device_reset(event)
        elif isinstance(event, DeviceInfo):
            h = event.hello
            names = ", ".join(printable(n) for n in h.names)  # device-supplied text
            self.note(
                f"device session {h.session:08x}: {h.rate_hz:g} Hz, {len(h.names)} channels "
                f"({names}), mapped {printable(event.mapping)}"
            )
        elif isinstance(event, ChannelMismatch):
            self._error = printable(event.message)  # printed by the CLI: names escaped
            return False
        elif isinstance(event, TextMismatch):  # once per kind: the lines are counted
            self.note(f"WARNING: {event.message}: such lines are rejected "
                      "(counted as rejected 'channels')")  # fmt: skip
        elif isinstance(event, ModeDetected):
            self.mode_line = event.mode
            self.note(f"{event.mode} mode detected on {self.reader.device}")
        elif isinstance(event, Connected):
            if event.reconnect:
                self.stats.reconnects += 1
                self.note(f"reconnected on {event.device}")
        elif isinstance(event, Disconnected):
            self.stats.disconnects += 1
            then = "reconnecting" if self.args.reconnect else "ending the run (--no-reconnect)"
            self.note(f"{event.device} disconnected ({event.reason}): {then}")
        elif isinstance(event, Closed):
            self._error = event.error
            return False
        return True

    def _device_reset(self, event) -> None:
        self.stats.device_resets += 1
        self.monitor.reset()
        self._pending_reset = True
        self._pending_gap = 0
        if isinstance(event, Reboot):
            self.note(
                f"device rebooted (session {event.old_session:08x} -> {event.new_session:08x}): "
                "stream state reset"
            )
        else:
            self.note(f"sequence went back ({event.expected} -> {event.got}): stream state reset")

    # -- samples -------------------------------------------------------------------
    def device_position(self) -> Optional[dict]:
        """Where the device's stream was at the last sample: saved with the state, read
        by the next run. Nothing read yet: what the last run knew."""
        return self._position or self._resumed_from

    def _check_resume(self, event: Samples) -> None:
        """The first samples after a resumed start: say what was missed while down."""
        saved, self._resumed_from = self._resumed_from, None
        if saved is None or self._next_seq is not None:
            return
        mode, session = self.decoder.mode, self.decoder.session
        if mode != "binary" or saved["mode"] != "binary" or saved["next_seq"] is None:
            self.stats.restart_unknown += 1
            why = "the saved state has no sequence number"
            if "text" in (mode, saved["mode"]):
                why = "text lines carry no sequence number"
            self.note(f"restarted: samples missed while down unknown ({why})")
            return
        if session is not None and saved["session"] is not None and session != saved["session"]:
            self.stats.restart_unknown += 1
            self.note(
                f"restarted: device rebooted while down (session {saved['session']:08x} -> "
                f"{session:08x}): gap unknown"
            )
            return
        lost = (event.seq - saved["next_seq"]) & U32
        if lost >= 1 << 31:
            self.stats.restart_unknown += 1
            self.note(
                f"restarted: sequence went back ({saved['next_seq']} -> {event.seq}), "
                "device rebooted? gap unknown"
            )
            return
        self.stats.missed_while_down += lost
        self.note(
            f"restarted: {lost} samples missed while down (seq {saved['next_seq']} to "
            f"{event.seq - 1 if lost else event.seq})" if lost else
            f"restarted: no samples missed while down (seq {event.seq} follows on)"
        )  # fmt: skip

    def _samples(self, event: Samples) -> None:
        if self._resumed_from is not None:
            self._check_resume(event)
        self._next_seq = (event.seq + len(event.values)) & U32
        # Recorded now: a disconnect forgets the mode before the state's final save.
        self._position = {
            "mode": self.decoder.mode, "session": self.decoder.session, "next_seq": self._next_seq
        }  # fmt: skip
        gap = event.gap
        values = event.values
        finite = np.isfinite(values).all(axis=1).tolist()
        # JSON lines to stdout or a .jsonl: formatted here (the same bytes as
        # RecordWriter.write) and written, flushed, once per event: one write per read.
        lines: Optional[list[str]] = [] if self._lines is not None else None
        times = []
        try:
            for i, x in enumerate(values):
                if not finite[i]:
                    self.stats.invalid += 1
                    self._pending_gap += 1
                    continue
                gap += self._pending_gap
                self._pending_gap = 0
                record = self._process(x, (event.seq + i) & 0xFFFFFFFF, event, i, gap)
                gap = 0
                if lines is not None:
                    lines.append(self._line)
                else:
                    self.writer.write(record)
                    times.append(time.perf_counter() - event.t_read)
                if self.publisher is not None:
                    self.publisher.record(record)
        finally:  # what was processed is written, even if a later sample failed
            if lines:
                self._write_lines(lines)
                emitted = time.perf_counter() - event.t_read  # every line of the event, at once
                self.latency.add_repeated(emitted, len(lines))
                self.window.add_repeated(emitted, len(lines))
            elif times:
                self.latency.add(times)
                self.window.add(times)

    def _write_lines(self, lines: list[str]) -> None:
        """JSON lines through the RecordWriter's stream (its lock, append and error
        handling stay RecordWriter's), flushed: a live consumer sees them at once."""
        self._write_text(lines[0] if len(lines) == 1 else "".join(lines), len(lines))

    def _write_text(self, text: str, n: int) -> None:
        """n JSON lines, joined, written and flushed at once."""
        w = self.writer
        try:
            w._fh.write(text)
            w._fh.flush()
        except OSError as e:
            w._raise_naming_output(e)
        w.count += n

    def _process(self, x: np.ndarray, seq: int, event: Samples, i: int, gap: int) -> Optional[dict]:
        """The sample's record (None when only its JSON line, self._line, is needed)."""
        reset = self._pending_reset
        self._pending_reset = False
        if gap:
            reset = self._on_gap(gap) or reset
        result = self.monitor.process(x)
        self.stats.forecasts += 1
        time_us = None
        if event.time_us is not None:
            step = event.period_us or 0.0
            time_us = int(event.time_us + round(i * step)) & 0xFFFFFFFF
        forecast = np.asarray(result.pop("forecast"))
        if self._lines_only:  # nothing but the JSON line needs the record: no dict made
            line = self._lines.line(seq, time_us, x, forecast, result, gap, reset)
            if line is not None:
                self._line = line
                self.stats.anomalies += int(result.get("anomaly") or 0)
                return None
        record: dict[str, Any] = {"seq": seq}
        if time_us is not None:
            record["time_us"] = time_us
        record.update(zip(self.channels, x.tolist()))
        record["forecast"] = dict(zip(self.channels, forecast.tolist()))
        record.update(result)
        if gap:
            record["gap"] = gap
        if reset:
            record["reset"] = 1
        if self._lines is not None:  # JSON lines: made from the arrays (RecordWriter's bytes)
            line = self._lines.line(seq, time_us, x, forecast, result, gap, reset)
            self._line = line if line is not None else json_line(record)
        self.stats.anomalies += int(record.get("anomaly") or 0)
        if self.view is not None:
            self._track_alerts(record)
        return record

    def _track_alerts(self, record: dict) -> None:
        opened, closed = record.get("event_opened"), record.get("event_closed")
        if opened:
            top = ", ".join(opened.get("top_channels", []))
            self._open_alert = f"#{opened['id']} since seq {record['seq']} ({top})"
        if closed:
            self._open_alert = None
            self._alerts.append(
                f"#{closed['id']} closed at seq {record['seq']}: {closed['flagged']} flagged, "
                f"peak {closed['peak_score']:.2f} ({', '.join(closed.get('top_channels', []))})"
            )
            del self._alerts[:-3]

    def snapshot(self, final: bool = False) -> Snapshot:
        """What the live view shows now (final: rates over the whole run)."""
        now, done = time.perf_counter(), self.stats.forecasts
        then, before = (self._started, 0) if final else self._view_mark
        self._view_mark = (now, done)
        c = self.counters()
        out = self.monitor.last_output
        scores = {}
        if out is not None:
            share = np.asarray(out.contributions, dtype=float)
            scores = {ch: float(out.surprisal * w) for ch, w in zip(self.channels, share)}
        return Snapshot(
            rate=(done - before) / max(now - then, 1e-9),
            latency_p50_ms=c["latency_p50_ms"],
            latency_p99_ms=c["latency_p99_ms"],
            counters={
                k: c[k]
                for k in (
                    "samples",
                    "forecasts",
                    "rejected",
                    "missing",
                    "device_dropped",
                    "anomalies",
                )
            },  # fmt: skip
            scores=scores,
            threshold=None if out is None else out.threshold,
            open_alert=self._open_alert,
            recent_alerts=list(self._alerts),
        )

    def _on_gap(self, gap: int) -> bool:
        """Apply the gap policy; True if the state was reset."""
        s, policy = self.stats, self.args.on_gap
        s.gaps += 1
        if policy == "continue":
            s.continued += gap
            return False
        last = self.monitor.last_forecast
        if policy == "fill" and gap <= self.args.gap_fill and last is not None:
            for _ in range(gap):
                self.monitor.process(self.monitor.last_forecast, imputed=True)
            s.filled += gap
            return False
        self.monitor.reset()
        s.gap_resets += 1
        return True

    # -- reporting -----------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        d = self.decoder.counters.snapshot()
        d.update(asdict(self.stats))
        d["overflow"] = self.queue.overflow
        d["queued"] = len(self.queue)
        d["unaccounted"] = (
            d["samples"] - d["forecasts"] - d["invalid"] - d["overflow"] - d["queued"]
        )
        d["mode"] = self.mode_line or self.decoder.mode
        d["port"] = self.reader.device or self.args.port
        d["seconds"] = round(time.perf_counter() - self._started, 3)
        d["state_saves"] = self.state_file.saves if self.state_file is not None else 0
        d.update(latency_fields(self.latency))
        return d

    def print_status(self) -> None:
        c = self.counters()
        p50, p99 = self.window.percentile(50), self.window.percentile(99)
        n = int(self.window.counts.sum())
        self.window.clear()
        lat = "latency -" if p50 is None else f"latency p50 {p50 * 1e3:.2f} p99 {p99 * 1e3:.2f} ms"
        rate = n / self.args.status_interval
        self.note(
            f"{rate:.0f} samples/s, {lat}, queue {c['queued']} | received {c['samples']}, "
            f"rejected {c['rejected']}, missing {c['missing']}, device-dropped "
            f"{c['device_dropped']}, filled {c['filled']}, resets "
            f"{c['gap_resets'] + c['device_resets']}, overflow {c['overflow']}"
        )
        if self.state_file is not None and self.state_file.error:
            self.note(self.state_file.error)

    def print_summary(self) -> None:
        c = self.counters()
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(c["rejected_by"].items()))
        lines = [
            f"serial run on {c['port']} ({c['mode'] or 'no data'}), {c['seconds']:.1f} s",
            f"  samples: {c['samples']} received, {c['forecasts']} forecast, {c['invalid']} "
            f"invalid, {c['overflow']} dropped by queue overflow ({self.args.on_overflow}), "
            f"{c['unaccounted']} unaccounted",
            f"  link: {c['rejected']} rejected"
            + (f" ({reasons})" if reasons else "")
            + f", {c['missing']} missing (sequence gaps), {c['device_dropped']} dropped by the "
            f"device, {c['unmapped']} unmapped, {c['reboots']} reboots, {c['disconnects']} "
            f"disconnects, {c['reconnects']} reconnects",
            f"  gaps: {c['gaps']} (policy {self.args.on_gap}, fill up to {self.args.gap_fill}): "
            f"{c['filled']} samples filled, {c['gap_resets']} resets, {c['continued']} stepped "
            f"over; {c['device_resets']} resets on device restart",
        ]
        if self.state_file is not None:
            lines.append(
                f"  restart: {c['missed_while_down']} samples missed while the process was down"
                + (" (device rebooted or no sequence: gap unknown)" if c["restart_unknown"] else "")
            )
        if c["latency_p50_ms"] is not None:
            lines.append(
                f"  latency (read to emitted): p50 {c['latency_p50_ms']:.2f} ms, "
                f"p99 {c['latency_p99_ms']:.2f} ms"
            )
        sf = self.state_file
        if sf is not None:
            state = f"  state: saved to {sf.path} ({sf.saves} saves"
            if sf.failures:
                state += f", {sf.failures} failed; last: {sf.last_error}"
            lines.append(state + ")")
        self.note("\n".join(lines))
        if self.args.summary_json:
            write_summary_json(self.args.summary_json, c)


class FastFrames:
    """The steady state of a binary stream in C (cstep's live_loop and live_frames).

    At 1 kHz (a read per sample) with a cold cache, the Python path's per-sample code
    (decoder, events, queue, checks, formatting, the loop itself) was most of the run's
    CPU. live_loop polls and reads the port, decodes, checks and steps every complete
    data frame that continues the stream and writes the JSON lines itself, until
    something needs Python (a tick, a signal, anything unusual); with the detector or
    the online head it calls back per sample (_score_row: Monitor.stepped, what
    Monitor.process does after its step, and the rest of the line). live_frames does the
    same for one read already made (take: a read that began inside a frame). Whatever C
    does not take (a hello, a gap, a bad frame, a NaN, a partial frame) goes to the
    Decoder and the Python path as before, so the records, counters and state are the
    Python path's. EDGERNN_NO_FASTCALL=1 (no extension) or EDGERNN_NO_FAST_LIVE=1 leaves
    it all to Python."""

    ROWS = 4096  # samples one call takes at most (a 64 KB read holds ~1400 of 8 channels)

    def __init__(self, run: LiveRun, module, binding: tuple[int, ...]):
        from edgernn.firmware_bridge.jsonline import json_fields, json_float

        self.run = run
        self.decoder, self.queue = run.decoder, run.queue
        self.monitor, self.stream = run.monitor, run.monitor.stream
        self.counters = run.decoder.counters
        self.width = c = len(run.channels)
        m = run.monitor
        self.whole = m.detector is None and m.head is None  # C writes the whole line
        hidden = binding[-1] if m.head is not None else 0  # the head reads the features
        step, h = binding[:4], binding[4:6] if hidden else (0, 0)
        self.live = module.live_bind(*step, *h, hidden, tuple(run._lines.keys), json_float)
        self.frames, self.pairs = module.live_frames, module.live_pairs
        c_fields, py_fields, live = module.live_fields, json_fields, self.live

        def fields(result: dict) -> str:  # C for the detector's usual fields, else Python
            text = c_fields(live, result)
            return py_fields(result) if text is None else text

        self.fields = fields
        self.out = np.empty((self.ROWS, 2 * c + hidden), dtype=np.float32)
        self.hidden = hidden
        self.names = run._lines.names
        self.scorer = None  # the C loop's own scoring, where it covers this monitor
        if not self.whole:
            from edgernn.runtime.livescore import LiveScorer

            self.scorer = LiveScorer.make(m, module, live, fields, run.stats, self._score_row,
                                          self.names)  # fmt: skip
        self.samples = 0  # forecast here (tests: proof that the C path ran)
        self.looped = 0  # of which in the C loop
        # a sample takes at least 4 bytes a channel on the wire: a read of at most this
        # many bytes holds no more samples than the queue keeps (4096: a 128 KB read)
        self.most_bytes = run.queue.max_samples * 4 * c
        self._loop = module.live_loop
        self._loop_setup(run)

    @classmethod
    def make(cls, run: LiveRun) -> Optional[FastFrames]:
        """For a run whose records are only JSON lines (no publisher, no live view) on
        the C step; else None."""
        from edgernn.firmware_bridge.jsonline import _c_tokens

        if os.environ.get("EDGERNN_NO_FAST_LIVE") or not run._lines_only or not run._lines.ok:
            return None
        binding = run.monitor.stream.live_binding()
        if binding is None or _c_tokens() is None or run.decoder.requested == "text":
            return None
        from edgernn.runtime.cstep import fastcall_module

        fast = cls(run, fastcall_module(), binding)
        return fast if fast.live is not None else None

    def take(self, data: bytes, t_read: float) -> int:
        """Bytes of `data` (just read, nothing queued) handled here; the rest is the
        decoder's."""
        d, run = self.decoder, self.run
        if not self._steady():
            return 0
        held = len(d._buf)  # the start of a frame from earlier reads (no 0x00 in it)
        if held + len(data) > self.most_bytes:  # it may hold more than the queue's bound:
            return 0  # the Python path drops the oldest of them (counted), as always
        stream, seq0 = self.stream, d._next_seq
        taken, frames, n, cur, text = self.frames(
            self.live, bytes(d._buf) + data if held else data, stream._cur, seq0,
            d._period_us or 0.0, self.out, self.whole,
        )  # fmt: skip
        if taken <= held:  # nothing taken (it cannot stop inside the held bytes)
            return 0
        if held:
            d._buf.clear()
        taken -= held  # of `data`; the held bytes were counted when they came
        self.counters.bytes += taken
        if not n:
            return taken
        self._account(stream, cur, seq0, frames, n)
        if self.whole:
            self._forecasts_only(text, n)
        else:
            self._scored(text, n)
        emitted = time.perf_counter() - t_read
        run.latency.add_repeated(emitted, n)
        run.window.add_repeated(emitted, n)
        return taken

    # -- the C loop: poll, read, take, write, until Python is needed --------------------
    def _loop_setup(self, run: LiveRun) -> None:
        """The C loop writes the lines to the writer's file descriptor itself."""
        try:
            self._out_fd = run.writer._fh.fileno() if self._loop is not None else None
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: no fd
            self._out_fd = None
        if self._out_fd is None:
            self._loop = None
            return
        run.writer._fh.flush()  # nothing of the stream's own may come after the loop's
        m = self.monitor
        self._pending = np.empty((m.model.horizon, self.width), dtype=np.float32)
        self._taken = np.zeros(1, dtype=np.int64)  # samples the loop has taken, all calls
        self._edges = LatencyHistogram.EDGES

    def loop(self, until: float) -> bool:
        """The C loop (cstep live_loop) until `until` (perf_counter time: the next
        status line or state save) or until something needs Python, looking at the stop
        flag every POLL_S; False where it cannot run now, or the port reports trouble
        (then read_inline, with the Python path's error handling)."""
        d, run, reader = self.decoder, self.run, self.run.reader
        if self._loop is None or d._buf or not self._steady() or reader._fd is None:
            return False
        scorer = self.scorer
        if scorer is not None:
            scorer.push()
        try:
            while True:  # the stop flag looked at between calls (the scorer stays pushed)
                status = self._loop_once(min(until, time.perf_counter() + POLL_S))
                if status or run.stop.is_set() or time.perf_counter() >= until:
                    return status != 4
        finally:
            if scorer is not None:
                scorer.pull()

    def _loop_once(self, until: float) -> int:
        """One live_loop call; its status (0: `until`, or a signal)."""
        d, run, reader, scorer = self.decoder, self.run, self.run.reader, self.scorer
        stream, seq0 = self.stream, d._next_seq
        score = None if self.whole else self._score_row if scorer is None else scorer.capsule
        status, taken, frames, n, cur, err, rest, t_read = self._loop(
            self.live, stream._cur, seq0, d._period_us or 0.0, reader._fd, self._out_fd,
            until, READ_SIZE, self.most_bytes, self.out, self._pending, self._taken,
            self._edges, run.latency.counts, run.window.counts, score,
        )  # fmt: skip
        self.counters.bytes += taken
        if n:
            self._account(stream, cur, seq0, frames, n)
            self.looped += n
            lines = n - (status == 5)  # the sample that failed has no line
            if self.whole:
                self._keep_pending(n)
                run.stats.forecasts += lines
            run.writer.count += lines
        if status in (5, 6):  # the detector or the head raised (the scorer's fallback, its
            raise rest  # replay, its idle-time solve, or _score_row)
        if status == 1:  # the rest of a read: the decoder's
            reader.feed(rest, t_read)
        elif status == 2:
            reader.read_failed(err)
        elif status == 3:
            run.writer._raise_naming_output(OSError(err, os.strerror(err)))
        return status  # (4: a hang-up or error on the port: read_inline reads it)

    def _keep_pending(self, n: int) -> None:
        """The loop's last forecasts, from its ring, into Monitor's pending."""
        m, ring = self.monitor, self._pending
        end = int(self._taken[0])
        m.samples += n
        for g in range(end - min(n, len(ring)), end):
            m._pending.append(ring[g % len(ring)].copy())

    def _steady(self) -> bool:
        """Whether the stream is where the C path can carry on: binary frames mapped one
        to one, the next seq known, no gap or reset pending, nothing queued."""
        d, run = self.decoder, self.run
        return not (d.mode != "binary" or d._overlong or not d._identity
                    or d._index_width != self.width or d._next_seq is None or run._pending_gap
                    or run._pending_reset or run._resumed_from is not None or self.queue._items)  # fmt: skip

    def _account(self, stream, cur: int, seq0: int, frames: int, n: int) -> None:
        """The decoder's and the run's counters and stream position after n samples."""
        d, run, c = self.decoder, self.run, self.counters
        stream._cur = cur
        c.frames += frames
        c.samples += n
        d._consecutive_rejects = 0
        d._next_seq = run._next_seq = next_seq = (seq0 + n) & U32
        run._position = {"mode": "binary", "session": d.session, "next_seq": next_seq}
        self.samples += n

    def _forecasts_only(self, text: str, n: int) -> None:
        """What Monitor.process and LiveRun._process keep of n samples, then the lines."""
        m = self.monitor
        m.samples += n
        if n == 1:
            m._pending.append(self.out[0, self.width : 2 * self.width].copy())
        else:  # only the last `horizon` stay pending
            m._pending.extend(self.out[max(0, n - m.model.horizon) : n, self.width :].copy())
        self.run.stats.forecasts += n
        self.run._write_text(text, n)

    def _scored(self, starts: list[str], n: int) -> None:
        """Each sample through the detector and the head (Monitor.stepped), its line
        finished from the line's start; the lines made are written even if one fails
        (as in LiveRun._samples; the stream has stepped on all n)."""
        lines: list[str] = []
        try:
            for i in range(n):
                rest, x, forecast, result = self._finish(i)
                if rest is not None:
                    lines.append(f"{starts[i]}{rest}}}\n")
                else:  # its seq and time_us read back from '{"seq":S,"time_us":T,...'
                    at = starts[i].index(',"time_us":')
                    t = int(starts[i][at + 11 : starts[i].index(",", at + 11)])
                    lines.append(self._record_line(int(starts[i][7:at]), t, x, forecast, result))
        finally:
            if lines:
                self.run._write_text("".join(lines), len(lines))

    def _score_row(self, k: int, seq: int, time_us: int):
        """live_loop's score: sample k of the read through the detector and the head; the
        rest of its line after '"forecast":{' (or its whole line, in a 1-tuple)."""
        rest, x, forecast, result = self._finish(k)
        if rest is not None:
            return rest
        return (self._record_line(seq, time_us, x, forecast, result),)

    def _finish(self, k: int) -> tuple[Optional[str], np.ndarray, np.ndarray, dict]:
        """Sample k of the read through Monitor.stepped, counted: (the rest of its line
        after '"forecast":{', or None where RecordLines declines: a field named like a
        channel), its values, its forecast and its other fields."""
        c, stats = self.width, self.run.stats
        row = self.out[k].copy()  # the sample's own arrays (the head may keep them)
        x = row[:c]
        result = self.monitor.stepped(x, row[c : 2 * c], row[2 * c :] if self.hidden else None)
        stats.forecasts += 1
        forecast = result.pop("forecast")
        stats.anomalies += int(result.get("anomaly") or 0)
        if self.names.isdisjoint(result) and forecast.dtype == np.float32:
            return f"{self.pairs(self.live, forecast)}}}{self.fields(result)}", x, forecast, result
        return None, x, forecast, result

    def _record_line(self, seq: int, time_us: int, x: np.ndarray, forecast, result: dict) -> str:
        """LiveRun._process's line where RecordLines declines (a field named like a
        channel): json_line of the record."""
        from edgernn.firmware_bridge.jsonline import json_line

        record: dict[str, Any] = {"seq": seq, "time_us": time_us}
        channels = self.run.channels
        record.update(zip(channels, x.tolist()))
        record["forecast"] = dict(zip(channels, np.asarray(forecast).tolist()))
        record.update(result)
        line = self.run._lines.line(record["seq"], record["time_us"], x,
                                    np.asarray(forecast), result, 0, False)  # fmt: skip
        return line if line is not None else json_line(record)


def run_serial(args, model, detector=None, stop: Optional[threading.Event] = None) -> int:
    """The live loop of `edgernn run --port`. Exit 0 on Ctrl-C, SIGTERM or a clean
    disconnect (--no-reconnect); raises EdgernnError for user errors."""
    if args.queue_size < 1:
        raise InputError("--queue-size must be at least 1")
    check_output_paths(args)
    if getattr(args, "realtime", False):
        print(f"edgernn: {request_realtime()}", file=sys.stderr)
    run = LiveRun(args, model, detector, stop)
    with _graceful_signals(run.stop):
        return run.run()


def request_realtime(priority: int = 10) -> str:
    """SCHED_FIFO for this thread and the threads it starts later (the reader); a line
    saying what happened. Our threads block on I/O, so they cannot starve the system."""
    setter = getattr(os, "sched_setscheduler", None)
    if setter is None:
        return "real-time scheduling is not available on this system; running as usual"
    try:
        setter(0, os.SCHED_FIFO, os.sched_param(priority))
    except OSError as e:
        return f"real-time scheduling refused ({e.strerror}); running as usual"
    return f"real-time scheduling on (SCHED_FIFO priority {priority})"


class _graceful_signals:
    """First Ctrl-C / SIGTERM: finish the sample in hand, save state, summarise, exit 0.
    A second Ctrl-C interrupts at once. Only possible from the main thread."""

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.saved: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        if self.stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop.set()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self.saved.items():
            signal.signal(sig, old)
