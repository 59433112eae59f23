"""`edgernn run MODEL --mqtt mqtt://HOST/sensors/+/data`: a fleet of devices over MQTT.

Every message on the subscribed topic filter belongs to the device its wildcard
levels name (sensors/pump1/data -> pump1). Each device gets its own stream state,
detector, accounting and alert events; the devices with a sample waiting are
stepped together in one batched model call per tick (runtime/fleet.py).

Out (to the same broker, or to --publish URL):
    {publish-topic}        forecast, score, anomaly of every (--publish-every N-th) sample
    {alert-topic}          alert events, opened and closed, QoS 1
    {alert-topic}/state    "ON"/"OFF", retained: whether an alert is open
    {availability-topic}   "online" (retained) while running, "offline" as last will
    homeassistant/...      with --ha-discovery: a score sensor and an alert binary
                           sensor per device (retained discovery configs)
Records (inputs, forecast, score) go to -o FILE (JSON lines or CSV; `-o -` for stdout).

A serial run publishes the same way with `--port ... --publish mqtt://HOST`
(SerialPublisher, called from firmware_bridge/live.py).

While the broker is away the link reconnects with backoff; outgoing messages wait in a
bounded buffer (what overflows is counted), incoming samples that never arrived show
as sequence gaps of the devices that number their samples. Nothing goes uncounted:
the summary (and --summary-json) has every device's accounting.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import threading
import time
from typing import Any, Callable, Optional

import numpy as np

from edgernn import __version__
from edgernn.errors import EdgernnError, InputError
from edgernn.firmware_bridge.mqtt import (
    BrokerURL,
    DeviceNamer,
    MqttLink,
    MqttOptions,
    default_client_id,
    parse_broker_url,
    read_password,
)
from edgernn.firmware_bridge.options import add_mqtt_arguments  # noqa: F401
from edgernn.firmware_bridge.payload import ChannelNames, PayloadError, PayloadParser
from edgernn.runtime.adapt import online_head_wanted
from edgernn.runtime.output import _jsonable
from edgernn.runtime.statecodec import pack, unpack

POLL_S = 0.05  # longest wait for a message: how fast the loop notices a stop request
STOP_DRAIN_S = 10.0  # at a stop, longest wait for the messages sent before it
STATE_FORMAT = 1
SUMMARY_DEVICES = 50  # devices listed one per line in the summary (all in --summary-json)


def mqtt_options(args, url: BrokerURL, role: str, note: Callable[[str], None]) -> MqttOptions:
    password, warning = read_password(getattr(args, "mqtt_password_file", None))
    if warning:
        note(warning)
    return MqttOptions(
        username=getattr(args, "mqtt_username", None) or url.username,
        password=password,
        ca_file=getattr(args, "mqtt_ca", None),
        cert_file=getattr(args, "mqtt_cert", None),
        key_file=getattr(args, "mqtt_key", None),
        client_id=getattr(args, "mqtt_client_id", None) or default_client_id(role),
        buffer=getattr(args, "mqtt_buffer", 10000),
        inbox=max(1, getattr(args, "queue_size", 4096)),
    )


def _check_template(template: str, flag: str) -> None:
    try:
        topic = template.format(device="x")
    except (KeyError, IndexError, ValueError):
        raise InputError(f"{flag} {template!r}: the only placeholder is {{device}}") from None
    if not topic or "+" in topic or "#" in topic:
        raise InputError(f"{flag} {template!r}: not a topic one can publish to")


def _check_templates(args) -> None:
    for flag, template in (("--publish-topic", args.publish_topic),
                           ("--alert-topic", args.alert_topic)):  # fmt: skip
        _check_template(template, flag)


def note(text: str) -> None:
    print(f"edgernn: {text}", file=sys.stderr, flush=True)


# -- publishing --------------------------------------------------------------------------
def object_id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


class Publisher:
    """Forecasts, alert events, alert state and HA discovery for each device."""

    def __init__(self, link: MqttLink, args, channels: list[str], node: str, model_name: str,
                 has_detector: bool):  # fmt: skip
        self.link = link
        self.forecast_topic = args.publish_topic
        self.alert_topic = args.alert_topic
        self.every = getattr(args, "publish_every", 1)
        self.qos = getattr(args, "mqtt_qos", 0)
        self.ha_prefix = getattr(args, "ha_discovery", None)
        self.channels = channels
        self.node = node
        self.model_name = model_name
        self.has_detector = has_detector
        self.forecasts = 0
        self.alerts = 0
        self._counts: dict[str, int] = {}
        self._topics: dict[str, str] = {}

    def device_seen(self, name: str) -> None:
        self._counts[name] = 0
        self.link.publish(self.alert_topic.format(device=name) + "/state", b"OFF", 1, True)
        if self.ha_prefix and self.has_detector:
            for topic, config in self.discovery(name):
                self.link.publish(topic, json.dumps(config).encode(), 1, True)

    def record(self, name: str, record: dict[str, Any],
               forecast: Optional[np.ndarray] = None) -> None:  # fmt: skip
        """Publish a record's forecast (every `every`-th) and its alert events;
        `forecast`, the same values as a float32 array, makes that cheaper."""
        n = self._counts.get(name, 0)
        self._counts[name] = n + 1
        if n % self.every == 0:
            topic = self._topics.get(name)
            if topic is None:
                topic = self._topics[name] = self.forecast_topic.format(device=name)
            self.link.publish(topic, _forecast_payload(record, forecast), self.qos)
            self.forecasts += 1
        for kind in ("opened", "closed"):
            event = record.get(f"event_{kind}")
            if event:
                self.alert(name, kind, record, event)

    def alert(self, name: str, kind: str, record: dict, event: dict) -> None:
        body = {"device": name, "event": kind, "open": kind == "opened", "seq": record.get("seq")}
        if record.get("time") is not None:
            body["time"] = record["time"]
        elif record.get("time_us") is not None:
            body["time_us"] = record["time_us"]
        body.update(event)
        topic = self.alert_topic.format(device=name)
        self.link.publish(topic, _dumps(body), 1)
        self.link.publish(topic + "/state", b"ON" if kind == "opened" else b"OFF", 1, True)
        self.alerts += 1

    def discovery(self, name: str) -> list[tuple[str, dict]]:
        """Home Assistant MQTT discovery: (config topic, config) for a device's entities."""
        oid = f"{object_id(self.node)}_{object_id(name)}"
        device = {
            "identifiers": [oid],
            "name": f"edgernn {name}",
            "manufacturer": "edgernn",
            "model": self.model_name,
            "sw_version": __version__,
        }
        common = {
            "availability_topic": self.link.availability,
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": device,
        }
        score = dict(
            common,
            name="anomaly score",
            unique_id=f"{oid}_score",
            object_id=f"edgernn_{object_id(name)}_score",
            state_topic=self.forecast_topic.format(device=name),
            value_template="{{ value_json.score if value_json.score is not none else '' }}",
            state_class="measurement",
            icon="mdi:chart-bell-curve",
        )
        alert = dict(
            common,
            name="alert",
            unique_id=f"{oid}_alert",
            object_id=f"edgernn_{object_id(name)}_alert",
            state_topic=self.alert_topic.format(device=name) + "/state",
            payload_on="ON",
            payload_off="OFF",
            device_class="problem",
        )
        base = f"{self.ha_prefix}/{{}}/{oid}/{{}}/config"
        return [(base.format("sensor", "score"), score),
                (base.format("binary_sensor", "alert"), alert)]  # fmt: skip


def _dumps(doc: dict) -> bytes:
    return json.dumps(_jsonable(doc), separators=(",", ":")).encode()


def _f32(v: Any) -> str:
    """A JSON number: the shortest text that reads back as the same float32 (as the
    -o records write it), or null."""
    if v is None:
        return "null"
    if isinstance(v, int):
        return str(v)
    return str(np.float32(v)) if math.isfinite(v) and abs(v) < 3.4e38 else "null"


_KEYS: dict[str, str] = {}  # channel name -> its JSON key text, '"name":'


def _key(name: str) -> str:
    text = _KEYS.get(name)
    if text is None:
        text = _KEYS[name] = json.dumps(name) + ":"
    return text


def _forecast_payload(record: dict[str, Any], forecast: Optional[np.ndarray] = None) -> bytes:
    """The forecast message, assembled directly: at 100 Hz x 64 devices the generic
    JSON path (record -> _jsonable -> json.dumps) was the most expensive step."""
    parts = [f'"{k}":{json.dumps(record[k])}' for k in ("seq", "time", "time_us")
             if record.get(k) is not None]  # fmt: skip
    names = record["forecast"]
    if forecast is not None and np.isfinite(forecast).all():
        text = ",".join([_key(c) + str(v) for c, v in zip(names, forecast)])  # float32 str
    else:
        text = ",".join([_key(c) + _f32(v) for c, v in names.items()])
    parts.append(f'"forecast":{{{text}}}')
    for k in ("score", "anomaly", "threshold", "gap", "reset"):
        if k in record:
            parts.append(f'"{k}":{_f32(record[k])}')
    return ("{" + ",".join(parts) + "}").encode()


def make_output_link(args, role: str, url: BrokerURL) -> MqttLink:
    opts = mqtt_options(args, url, role, note)
    availability = getattr(args, "availability_topic", None) or f"edgernn/{opts.client_id}/availability"
    return MqttLink(url, opts, availability=availability, note=note)


# -- the fleet state file ----------------------------------------------------------------
class FleetStateFile:
    """Every device's stream state in one JSON file: written atomically off the loop,
    locked for the run (a second run on the same file is refused)."""

    def __init__(self, path: str, fingerprint: str):
        self.path = path
        self.fingerprint = fingerprint
        self.saves = 0
        self.failures = 0
        self.last_error = ""
        self._thread: Optional[threading.Thread] = None
        self._lock_fh = None

    def acquire(self) -> None:
        import fcntl

        try:
            self._lock_fh = open(self.path + ".lock", "a")
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if self._lock_fh is not None:
                self._lock_fh.close()
                self._lock_fh = None
            raise InputError(f"--state-file {self.path} is in use by another run ({e.strerror})") from None

    def release(self) -> None:
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None

    def load(self) -> tuple[Optional[dict], str]:
        if not os.path.exists(self.path):
            return None, f"no state file at {self.path} yet: every device starts cold"
        try:
            with open(self.path) as f:
                data = unpack(json.load(f))
            if data.get("format") != STATE_FORMAT or not isinstance(data.get("fleet"), dict):
                return None, f"{self.path} is not an edgernn fleet state file: starting cold"
        except (OSError, ValueError, AttributeError) as e:
            return None, f"cannot read {self.path} ({e.__class__.__name__}): starting cold"
        if data.get("model_sha256") != self.fingerprint:
            return None, f"{self.path} was saved for a different model: starting cold"
        n = len(data["fleet"].get("devices", {}))
        return data["fleet"], f"resumed the stream states of {n} devices from {self.path}"

    def resume(self, fleet) -> str:
        """Lock the file and load its states into `fleet`; a line saying what happened
        (an unusable or foreign file: every device starts cold)."""
        self.acquire()
        state, line = self.load()
        if state is not None:
            try:
                fleet.load_state_dict(state)
            except ValueError as e:
                line = f"state file {self.path} unusable ({e}): starting cold"
        return line

    def save_async(self, fleet_state: dict) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._save, args=(fleet_state,), daemon=True,
                                        name="edgernn-state")  # fmt: skip
        self._thread.start()

    def save(self, fleet_state: dict) -> None:
        if self._thread is not None:
            self._thread.join()
        self._save(fleet_state)

    def _save(self, fleet_state: dict) -> None:
        from edgernn.firmware_bridge.live import write_atomic

        doc = {"format": STATE_FORMAT, "model_sha256": self.fingerprint,
               "saved_unix": time.time(), "fleet": fleet_state}  # fmt: skip
        try:
            write_atomic(self.path, json.dumps(pack(doc)))  # arrays compressed (statecodec)
            self.saves += 1
        except OSError as e:
            self.failures += 1
            self.last_error = f"cannot save state to {self.path}: {e.strerror or e}"


# -- the fleet run -----------------------------------------------------------------------
class MqttRun:
    def __init__(self, args, model, detector_factory=None, stop: Optional[threading.Event] = None):
        from edgernn.firmware_bridge.live import LatencyHistogram, model_fingerprint
        from edgernn.runtime.fleet import Fleet
        from edgernn.systemd import Notifier

        self.args = args
        self.model = model
        self.channels = model.channels
        self.stop = stop or threading.Event()
        self.url = parse_broker_url(args.mqtt, "--mqtt")
        if not self.url.topic:
            raise InputError("--mqtt needs a topic: mqtt://HOST/sensors/+/data")
        self.namer = DeviceNamer(self.url.topic)
        self.parser = PayloadParser(self.channels)
        has_detector = detector_factory is not None
        self.fleet = Fleet(model, detector_factory, on_gap=args.on_gap, gap_fill=args.gap_fill,
                           max_devices=args.max_devices, note=note,
                           online_head=online_head_wanted(args, detector_factory))  # fmt: skip
        self.latency = LatencyHistogram()
        self.window = LatencyHistogram()
        self.notifier = Notifier()
        self.unmatched = 0  # messages on topics the filter's wildcards do not name
        self._error: Optional[str] = None
        self._started = time.perf_counter()
        self._window_n = 0
        self.state_file: Optional[FleetStateFile] = None
        if args.state_file:
            self.state_file = FleetStateFile(args.state_file, model_fingerprint(model.path))
        self.link = MqttLink(
            self.url,
            mqtt_options(args, self.url, f"mqtt {self.url.address}/{self.url.topic}", note),
            subscribe=(self.url.topic, args.mqtt_qos),
            availability=None,
            note=note,
        )
        self.out_link: Optional[MqttLink] = None
        self.publisher: Optional[Publisher] = None
        if args.ha_discovery and not has_detector:
            note("--ha-discovery: this run has no anomaly detector (no calibration in the "
                 "model, or --no-detector), so there is no score or alert to announce")  # fmt: skip
        if not args.no_publish:
            self.out_link = self._output_link()
            node = self.out_link.opts.client_id
            self.publisher = Publisher(self.out_link, args, self.channels, node,
                                       os.path.basename(model.path), has_detector)  # fmt: skip
        self.writer = None
        if args.out is not None:
            from edgernn.runtime.output import RecordWriter

            trailing = ["gap", "reset"] + (["score", "anomaly"] if has_detector else [])
            # Appends, as a serial run does: a restarted service never truncates its records.
            self.writer = RecordWriter(args.out, self.channels, leading=["device", "seq", "time"],
                                       trailing=trailing, append=True,
                                       fmt="jsonl" if args.out == "-" else None)  # fmt: skip
        self.metrics = None

    def _output_link(self) -> MqttLink:
        """The input connection publishes too, unless --publish names another broker."""
        args = self.args
        avail = args.availability_topic or f"edgernn/{self.link.opts.client_id}/availability"
        url = self.url if args.publish is None else parse_broker_url(args.publish, "--publish")
        if (url.host, url.port) == (self.url.host, self.url.port):
            self.link.set_availability(avail)
            return self.link
        return make_output_link(args, f"publish {url.address}", url)

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> int:
        if self.state_file is not None:
            note(self.state_file.resume(self.fleet))
        try:
            self._start()
            self._loop()
        finally:
            self._finish()
        self.print_summary()
        if self._error:
            raise EdgernnError(self._error)
        return 0

    def _start(self) -> None:
        if self.args.metrics_port is not None:
            from edgernn.metrics import serve_fleet_metrics

            self.metrics = serve_fleet_metrics(self, self.args.metrics_port, self.args.metrics_addr)
            note(f"Prometheus metrics on http://{self.args.metrics_addr}:{self.metrics.port}/metrics")
        self.link.start()
        if self.out_link is not None and self.out_link is not self.link:
            self.out_link.start()
        note(f"subscribed to {self.url.topic!r} on {self.url.address}: one stream per device "
             f"({self.model.backend} backend, batched)")  # fmt: skip
        self.notifier.ready(f"subscribed to {self.url.topic} on {self.url.address}")

    def _loop(self) -> None:
        from edgernn.firmware_bridge.live import Ticker, status_ticker

        status, save = status_ticker(self.args), Ticker(self.args.state_interval)
        while not self.stop.is_set():
            for link in self._links():
                if link.fatal:
                    self._error = link.fatal
                    return
            self._take(POLL_S)
            self.notifier.ping()
            now = time.perf_counter()
            if status.due(now):
                self.print_status()
            if self.state_file is not None and save.due(now):
                self.state_file.save_async(self.fleet.state_dict())

    def _links(self) -> list[MqttLink]:
        links = [self.link]
        if self.out_link is not None and self.out_link is not self.link:
            links.append(self.out_link)
        return links

    def _take(self, timeout: float) -> None:
        items, dropped = self.link.inbox.take(timeout)
        for topic, n in dropped.items():
            dev = self._device(topic)
            if dev is not None:
                dev.counters.messages += n
                dev.counters.overflow += n
        for topic, payload, t_recv in items:
            self._message(topic, payload, t_recv)
        times = []
        for result in self.fleet.drain():
            self._emit(result)
            times.append(result.latency)
        self.latency.add(times)
        self.window.add(times)
        self._window_n += len(times)
        if self.out_link is not None:
            self.out_link.flush()

    def _finish(self) -> None:
        self.notifier.stopping()
        try:
            self._last_messages()
        finally:
            self.link.close()
            if self.out_link is not None and self.out_link is not self.link:
                self.out_link.close()
            if self.state_file is not None:
                self.state_file.save(self.fleet.state_dict())
                self.state_file.release()
            if self.writer is not None:
                self.writer.close()
            if self.metrics is not None:
                self.metrics.shutdown()
            self.notifier.close()

    def _last_messages(self) -> None:
        """Unsubscribe and work off what the broker sent before its acknowledgement
        (a run that fell behind may have seconds of it in flight): every sample that
        reached us gets its forecast. Bounded, so a stop request is honoured."""
        self.link.stop_input()
        deadline = time.monotonic() + STOP_DRAIN_S
        while not (self.link.input_stopped and len(self.link.inbox) == 0):
            if time.monotonic() > deadline:
                note(f"stopping before the broker confirmed the unsubscription ({STOP_DRAIN_S:g} "
                     "s): messages still on their way are not counted")  # fmt: skip
                break
            self._take(POLL_S)
        self._take(0)

    # -- per message -----------------------------------------------------------------
    def _device(self, topic: str):
        name = self.namer(topic)
        if name is None:
            self.unmatched += 1
            return None
        known = name in self.fleet.devices
        dev = self.fleet.device(name)
        if dev is None:
            if self.fleet.refused[name] == 1:
                note(f"device {name!r} ignored: already serving --max-devices "
                     f"{self.args.max_devices} devices")  # fmt: skip
            return None
        if not known:
            note(f"new device {name!r} on {topic} ({len(self.fleet.devices)} devices)")
            if self.publisher is not None:
                self.publisher.device_seen(name)
        return dev

    def _message(self, topic: str, payload: bytes, t_recv: float) -> None:
        dev = self._device(topic)
        if dev is None:
            return
        try:
            readings = self.parser.parse(payload)
        except ChannelNames as e:
            dev.counters.reject("channels")
            if dev.once("channels"):
                sent = ", ".join(e.unknown) or "none of them"
                note(f"device {dev.name!r} sends channels {sent} but the model expects "
                     f"{', '.join(self.channels)} (missing {', '.join(e.missing)}): its samples "
                     "are rejected until it sends them")  # fmt: skip
            return
        except PayloadError as e:
            dev.counters.reject(e.reason)
            if dev.once(f"reject {e.reason}"):
                note(f"device {dev.name!r}: payload rejected ({e}); such payloads are counted "
                     "in the summary")  # fmt: skip
            return
        dev.counters.messages += 1
        for r in readings:
            if r.ignored and dev.once("ignored"):
                note(f"device {dev.name!r}: ignoring fields {', '.join(r.ignored)} (not channels "
                     "of the model)")  # fmt: skip
            self.fleet.receive(dev, r.values, r.seq, r.time, t_recv)

    def _emit(self, result) -> None:
        record = result.record
        if self.writer is not None:
            self.writer.write(record)
        if self.publisher is not None:
            self.publisher.record(result.device.name, record, result.forecast)
        opened = record.get("event_opened")
        if opened:
            top = ", ".join(opened.get("top_channels", []))
            note(f"alert #{opened.get('id')} on {result.device.name!r} at seq {record['seq']}"
                 + (f" ({top})" if top else ""))  # fmt: skip

    # -- reporting -------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        from edgernn.firmware_bridge.live import latency_fields

        totals = self.fleet.totals()
        d: dict[str, Any] = {"broker": self.url.address, "topic": self.url.topic}
        d["seconds"] = round(time.perf_counter() - self._started, 3)
        d["totals"] = totals
        d["unmatched_topics"] = self.unmatched
        d["refused_devices"] = dict(self.fleet.refused)
        d["ticks"] = self.fleet.ticks
        d["mean_batch"] = round(self.fleet.batched_samples / max(1, self.fleet.ticks), 2)
        d["input_link"] = vars(self.link.counters).copy()
        if self.out_link is not None:
            d["output_link"] = vars(self.out_link.counters).copy()
        if self.publisher is not None:
            d["published_forecasts"] = self.publisher.forecasts
            d["published_alerts"] = self.publisher.alerts
        d.update(latency_fields(self.latency))
        d["devices"] = {name: dev.summary() for name, dev in sorted(self.fleet.devices.items())}
        return d

    def print_status(self) -> None:
        t = self.fleet.totals()
        p50, p99 = self.window.percentile(50), self.window.percentile(99)
        self.window.clear()
        rate = self._window_n / self.args.status_interval
        self._window_n = 0
        lat = "latency -" if p50 is None else f"latency p50 {p50 * 1e3:.2f} p99 {p99 * 1e3:.2f} ms"
        line = (f"{t['devices']} devices, {rate:.0f} samples/s, {lat} | forecast {t['processed']}, "
                f"rejected {t['rejected']}, missing {t['missing']}, overflow {t['overflow']}, "
                f"alerts {t['alerts']}")  # fmt: skip
        if self.out_link is not None:
            c = self.out_link.counters
            line += f" | out: {c.published} sent, {c.buffered} buffered, {c.dropped} dropped"
        if not self.link.connected.is_set():
            line += " | broker DOWN"
        note(line)
        self.notifier.status(line)

    def print_summary(self) -> None:
        c = self.counters()
        t = c["totals"]
        lines = [
            f"MQTT run on {c['broker']} topic {c['topic']!r}, {c['seconds']:.1f} s, "
            f"{t['devices']} devices",
            f"  samples: {t['samples']} received, {t['processed']} forecast, {t['invalid']} invalid, "
            f"{t['duplicates']} duplicates, {t['unaccounted']} unaccounted; payloads: "
            f"{t['messages']} received, {t['rejected']} rejected, {t['overflow']} dropped by "
            f"overflow (--queue-size)",
            f"  gaps: {t['missing']} samples missing (sequence gaps) in {t['gaps']} gaps: "
            f"{t['filled']} filled, {t['gap_resets']} resets, {t['continued']} stepped over; "
            f"{t['restarts']} device restarts",
            f"  batching: {c['ticks']} ticks, {c['mean_batch']} devices per model call",
        ]
        il = c["input_link"]
        lines.append(f"  broker: {il['connects']} connects, {il['disconnects']} disconnects, "
                     f"{il['failed_connects']} failed attempts")  # fmt: skip
        if self.out_link is not None:
            ol = c["output_link"]
            lines.append(f"  published: {c['published_forecasts']} forecasts, "
                         f"{c['published_alerts']} alert events; {ol['dropped']} messages "
                         f"dropped (broker away, buffer {self.args.mqtt_buffer} full), "
                         f"{ol['buffered']} never sent")  # fmt: skip
        if c["latency_p50_ms"] is not None:
            lines.append(f"  latency (arrival to forecast): p50 {c['latency_p50_ms']:.2f} ms, "
                         f"p99 {c['latency_p99_ms']:.2f} ms")  # fmt: skip
        if self.unmatched:
            lines.append(f"  {self.unmatched} messages on topics that name no device")
        if c["refused_devices"]:
            lines.append(f"  ignored devices (over --max-devices): "
                         f"{', '.join(sorted(c['refused_devices']))}")  # fmt: skip
        for i, (name, d) in enumerate(c["devices"].items()):
            if i == SUMMARY_DEVICES:
                lines.append(f"  ... and {len(c['devices']) - i} more devices (--summary-json)")
                break
            lines.append("  " + _device_line(name, d))
        sf = self.state_file
        if sf is not None:
            lines.append(f"  state: saved to {sf.path} ({sf.saves} saves"
                         + (f", {sf.failures} failed; last: {sf.last_error})" if sf.failures else ")"))
        note("\n".join(lines))
        if self.args.summary_json:
            from edgernn.firmware_bridge.live import write_summary_json

            write_summary_json(self.args.summary_json, c)


def _device_line(name: str, d: dict) -> str:
    text = f"{name}: {d['samples']} received, {d['processed']} forecast"
    for key in ("rejected", "invalid", "missing", "duplicates", "overflow", "restarts", "alerts"):
        if d[key]:
            text += f", {d[key]} {key}"
    if d["rejected_by"]:
        text += " (" + ", ".join(f"{k} {v}" for k, v in sorted(d["rejected_by"].items())) + ")"
    return text


def run_mqtt(args, model, detector_factory=None, stop: Optional[threading.Event] = None) -> int:
    """`edgernn run --mqtt`. Exit 0 on Ctrl-C / SIGTERM; EdgernnError for user errors."""
    from edgernn.firmware_bridge.live import _graceful_signals, check_output_paths, request_realtime

    if getattr(args, "live", False):
        raise InputError("--live shows one board; with --mqtt read the status lines or "
                         "--metrics-port")  # fmt: skip
    if args.on_overflow == "block":
        raise InputError("--on-overflow block cannot hold a broker back: with --mqtt the "
                         "oldest waiting payloads are dropped beyond --queue-size (counted)")  # fmt: skip
    if args.no_publish and args.out is None:
        raise InputError("--no-publish and no -o: nothing would be written (give -o FILE or -o -)")
    if args.no_publish and args.ha_discovery:
        raise InputError("--ha-discovery publishes: it does not go with --no-publish")
    _check_templates(args)
    check_output_paths(args)
    if getattr(args, "realtime", False):
        note(request_realtime())  # this thread and paho's, started later, inherit it
    run = MqttRun(args, model, detector_factory, stop)
    with _graceful_signals(run.stop):
        return run.run()


# -- the serial bridge -------------------------------------------------------------------
class SerialPublisher:
    """`--port ... --publish mqtt://HOST`: the live serial run's forecasts, alerts and
    availability on a broker, and the systemd notifications of its loop. LiveRun
    calls record() per forecast, tick() per loop turn and close() at the end."""

    def __init__(self, args, channels: list[str], has_detector: bool, notifier=None, run=None):
        from edgernn.systemd import Notifier

        self.notifier = notifier or Notifier()
        self.args = args
        self.run = run  # the LiveRun, for --metrics-port
        self.metrics = None
        self.link: Optional[MqttLink] = None
        self.publisher: Optional[Publisher] = None
        url_text = getattr(args, "publish", None)
        self.name = getattr(args, "device_name", None) or _port_name(args.port)
        if url_text:
            _check_templates(args)
            url = parse_broker_url(url_text, "--publish")
            self.link = make_output_link(args, f"serial {args.port}", url)
            self.publisher = Publisher(self.link, args, list(channels), self.link.opts.client_id,
                                       os.path.basename(args.model), has_detector)  # fmt: skip

    def start(self) -> None:
        port = getattr(self.args, "metrics_port", None)
        if port is not None and self.run is not None:
            from edgernn.metrics import SerialCollector, serve_metrics

            addr = self.args.metrics_addr
            self.metrics = serve_metrics(SerialCollector(self.run, self.name, self.link), port, addr)
            note(f"Prometheus metrics on http://{addr}:{self.metrics.port}/metrics")
        if self.link is not None:
            self.link.start()
            self.publisher.device_seen(self.name)
        self.notifier.ready(f"reading {self.name}")

    def record(self, record: dict[str, Any]) -> None:
        if self.publisher is not None:
            self.publisher.record(self.name, record)

    def tick(self) -> None:
        if self.link is not None:
            if self.link.fatal:
                raise EdgernnError(self.link.fatal)
            self.link.flush()
        self.notifier.ping()

    def close(self) -> None:
        self.notifier.stopping()
        if self.metrics is not None:
            self.metrics.shutdown()
        if self.link is not None:
            self.link.close()
            c = self.link.counters
            note(f"published to {self.link.url.address}: {self.publisher.forecasts} forecasts, "
                 f"{self.publisher.alerts} alert events, {c.dropped} messages dropped while the "
                 f"broker was away, {c.buffered} never sent")  # fmt: skip
        self.notifier.close()


def _port_name(port: str) -> str:
    base = os.path.basename(port.rstrip("/")) or port
    return object_id(base)


def serial_publisher(args, channels: list[str], has_detector: bool,
                     run=None) -> Optional[SerialPublisher]:  # fmt: skip
    """The serial run's publisher, systemd notifier and metrics endpoint, or None when
    none of them is wanted."""
    from edgernn.systemd import Notifier

    notifier = Notifier()
    wanted = getattr(args, "publish", None) is not None or notifier.active or (
        getattr(args, "metrics_port", None) is not None)  # fmt: skip
    if not wanted:
        return None
    return SerialPublisher(args, channels, has_detector, notifier, run)
