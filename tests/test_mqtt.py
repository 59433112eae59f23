"""MQTT in and out against a real Mosquitto broker started here on a free localhost port
(no mock broker): a fleet of devices on a wildcard topic, batched stepping equal to one
stream per device, bad payloads and channel mismatches per device, forecast / alert /
availability / Home Assistant topics, the last will of a killed run, systemd notify,
the Prometheus endpoint, a broker restart in the middle of a run, and a broker with
passwords. CI (CI=true) must have mosquitto: there these tests fail instead of skipping.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_signal, write_csv

from edgernn.errors import InputError

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists(
    "/usr/sbin/mosquitto") else None)  # fmt: skip
CHANNELS = ["a", "b", "c"]


def _need(what: str, why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing in CI: {why}", pytrace=False)
    pytest.skip(f"{what} not installed: {why}", allow_module_level=True)


if MOSQUITTO is None:
    _need("mosquitto", "the MQTT tests run against a real broker (apt install mosquitto)")
try:
    import paho.mqtt.client as mqtt
except ImportError:
    _need("paho-mqtt", "the MQTT client library (pip install 'edgernn[mqtt]')")


# -- a real broker -----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """mosquitto on 127.0.0.1:PORT with a config file in a temp folder; restartable."""

    def __init__(self, folder: Path, passwords: dict[str, str] | None = None,
                 tls: tuple[Path, Path, Path] | None = None):  # fmt: skip
        self.port = free_port()
        self.folder = folder
        lines = [f"listener {self.port} 127.0.0.1"]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to 'mosquitto', who cannot read tmp_path
        if tls:
            lines += [f"cafile {tls[0]}", f"certfile {tls[1]}", f"keyfile {tls[2]}"]
        if passwords:
            pw = folder / "passwd"
            pw.write_text("")
            for user, password in passwords.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pw), user, password], check=True,
                               capture_output=True)  # fmt: skip
            os.chmod(pw, 0o600)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        self.conf = folder / f"mosquitto-{self.port}.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.folder / "mosquitto.log", "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError((self.folder / "mosquitto.log").read_text()) from None
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def url(self, topic: str = "") -> str:
        return f"mqtt://127.0.0.1:{self.port}/{topic}"


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


class Client:
    """A paho client for the test: publishes, and records what it receives."""

    def __init__(self, broker: Broker, *topics: str, **auth):
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
        if auth:
            self.c.username_pw_set(auth["user"], auth["password"])
        self.c.reconnect_delay_set(0.1, 0.5)
        self.topics = topics
        self.subscribed = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: [c.subscribe(t, 1) for t in topics] or (
            None if topics else self.subscribed.set())  # fmt: skip
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", broker.port)
        self.c.loop_start()
        assert self.subscribed.wait(5)

    def _on_message(self, c, u, msg) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t == topic]

    def publish(self, topic: str, payload, qos: int = 0, retain: bool = False):
        return self.c.publish(topic, payload, qos, retain)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def wait_until(pred, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# -- a model -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    """A small echo state network (trained in a second, with a detector calibration)."""
    pytest.importorskip("torch")
    from edgernn.export import export_run
    from edgernn.train.config import TrainConfig
    from edgernn.train.fit import train_files

    folder = tmp_path_factory.mktemp("mqtt-model")
    csv = write_csv(folder / "train.csv", synthetic_signal(1200))
    train_files([csv], TrainConfig(cell="esn", hidden=16, progress=False), str(folder / "run"))
    path = str(folder / "m.onnx")
    export_run(str(folder / "run"), path)
    return path


def run_args(model_path: str, *argv: str):
    from edgernn.cli import build_parser

    return build_parser().parse_args(["run", model_path, "--status-interval", "0", *argv])


class InProcessRun:
    """`edgernn run --mqtt ...` on a thread of this process (its fleet is inspectable)."""

    def __init__(self, args):
        from edgernn.cli import make_detector
        from edgernn.firmware_bridge.mqtt_run import MqttRun
        from edgernn.runtime import Model

        self.model = Model(args.model)
        detector = make_detector(self.model, args)
        factory = (lambda: make_detector(self.model, args)) if detector is not None else None
        self.run = MqttRun(args, self.model, factory)
        self.result: dict = {}
        self.thread = threading.Thread(target=self._go, daemon=True)
        self.thread.start()
        assert self.run.link.connected.wait(10), "the run did not connect"
        wait_until(lambda: self.run.link.counters.connects >= 1, what="subscription")
        time.sleep(0.1)  # the SUBSCRIBE is on its way once connected

    def _go(self) -> None:
        try:
            self.result["code"] = self.run.run()
        except BaseException as e:  # reported by stop()
            self.result["error"] = e

    def processed(self) -> int:
        return self.run.fleet.totals().get("processed", 0)

    def stop(self) -> dict:
        self.run.stop.set()
        self.thread.join(20)
        assert not self.thread.is_alive()
        if "error" in self.result:
            raise self.result["error"]
        return self.run.counters()


def sample_payload(x: np.ndarray, seq: int | None = None) -> bytes:
    doc = dict(zip(CHANNELS, (float(v) for v in x)))
    if seq is not None:
        doc["seq"] = seq
        doc["ts"] = 1733040000 + seq / 100
    return json.dumps(doc).encode()


def read_jsonl(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


# -- parsing, no broker needed -----------------------------------------------------------
def test_broker_urls_topics_and_device_names():
    from edgernn.firmware_bridge.mqtt import DeviceNamer, parse_broker_url

    u = parse_broker_url("mqtt://gw@broker.lan/sensors/+/data")
    assert (u.host, u.port, u.topic, u.username, u.tls) == ("broker.lan", 1883, "sensors/+/data",
                                                            "gw", False)  # fmt: skip
    assert parse_broker_url("mqtts://h/t").port == 8883
    assert parse_broker_url("mqtt://h:1999/s/%23").topic == "s/#"
    for bad, says in (("mqtt://u:secret@h/t", "no password in the URL"),
                      ("mqtt://h/s/#", "%23"), ("http://h/t", "mqtt://"),
                      ("mqtt://h/a+/b", "whole topic level"), ("mqtt://h:99999/t", "port")):  # fmt: skip
        with pytest.raises(InputError, match=says):
            parse_broker_url(bad)
    name = DeviceNamer("sensors/+/data")
    assert name("sensors/pump1/data") == "pump1"
    assert name("sensors/pump1/other") is None and name("sensors/pump1/data/x") is None
    assert DeviceNamer("site/+/+/raw")("site/a/b/raw") == "a/b"
    assert DeviceNamer("plant/#")("plant/line2/pump") == "line2/pump"
    assert DeviceNamer("one/board")("one/board") == "one/board"


def test_payload_forms_and_rejects():
    from edgernn.firmware_bridge.payload import ChannelNames, PayloadError, PayloadParser

    p = PayloadParser(CHANNELS)
    (r,) = p.parse(b'{"a": 1, "b": 2.5, "c": -3, "seq": 7, "time": "2024-01-01T00:00:00", "x": 1}')
    assert r.values.tolist() == [1.0, 2.5, -3.0] and r.seq == 7 and r.ignored == ("x",)
    assert r.time == "2024-01-01T00:00:00"
    assert p.parse(b"[1, 2, 3]")[0].values.tolist() == [1, 2, 3]
    batch = p.parse(b'[{"a": 1, "b": 2, "c": 3, "seq": 8}, {"a": 4, "b": 5, "c": 6, "seq": 9}]')
    assert [(r.seq, r.values.tolist()) for r in batch] == [(8, [1, 2, 3]), (9, [4, 5, 6])]
    assert [r.values.tolist() for r in p.parse(b"[[1, 2, 3], [4, 5, 6]]")] == [[1, 2, 3], [4, 5, 6]]
    assert [x.values.tolist() for x in p.parse(b"1,2,3\nc:3 a:1 b:2\n")] == [[1, 2, 3]] * 2
    assert np.isnan(p.parse(b'{"a": null, "b": 1, "c": 2}')[0].values[0])  # a gap, not a reject
    big = b"1" + b"0" * 400  # beyond any float: an invalid reading, not a crash
    assert np.isnan(p.parse(b'{"a": ' + big + b', "b": 1, "c": 2}')[0].values[0])
    assert np.isnan(p.parse(b"[" + big + b", 1, 2]")[0].values[0])
    assert np.isnan(p.parse(b'{"a": NaN, "b": 1e39, "c": 2}')[0].values[:2]).all()
    with pytest.raises(ChannelNames) as e:
        p.parse(b'{"temp": 1, "a": 2}')
    assert e.value.missing == ["b", "c"] and e.value.unknown == ["temp"]
    for bad, reason in ((b"{nope", "json"), (b"[1, 2]", "width"), (b"[]", "json"),
                        (b'[[1, 2, 3], {"a": 1}]', "width"), (b'"text"', "text"), (b'{"a": "x", "b": 1, "c": 1}',
                        "value"), (b'{"a": 1, "b": 1, "c": 1, "seq": -1}', "seq"),
                        (b"hello", "text"), (b"  ", "empty"), (b"7", "text"),
                        (b"[" * 20000 + b"]" * 20000, "json"), (b"\xff\xfe{", "text"),
                        (b'{"a": 1, "b": 1, "c": 1, "ts": 1e400}', "time")):  # fmt: skip
        with pytest.raises(PayloadError) as e:
            p.parse(bad)
        assert e.value.reason == reason, bad


def test_fleet_sequence_accounting_and_device_time(model_path):
    """Duplicates dropped, small gaps filled, a long gap resets, seq 0 again is a device
    restart; a Monitor that takes timestamps gets each sample's."""
    from edgernn.runtime import Model
    from edgernn.runtime.fleet import Fleet
    from edgernn.runtime.monitor import Monitor

    seen = []

    class TimedMonitor(Monitor):
        def process(self, x, imputed=False, time=None):
            seen.append(time)
            return super().process(x, imputed)

    fleet = Fleet(Model(model_path), on_gap="fill", gap_fill=2, monitor_class=TimedMonitor)
    dev = fleet.device("d")
    x = synthetic_signal(20).astype(np.float32)
    for i, seq in enumerate((0, 1, 2, 2, 5, 6, 12, 0, 1)):
        fleet.receive(dev, x[i], seq, 1733040000 + i, time.perf_counter())
    records = [r.record for r in fleet.drain()]
    c = dev.summary()
    assert [r["seq"] for r in records] == [0, 1, 2, 5, 6, 12, 0, 1]
    assert (c["samples"], c["processed"], c["duplicates"], c["missing"]) == (9, 8, 1, 7)
    assert (c["filled"], c["gap_resets"], c["restarts"], c["unaccounted"]) == (2, 1, 1, 0)
    assert records[3]["gap"] == 2 and "reset" not in records[3]
    assert records[5]["gap"] == 5 and records[5]["reset"] == 1 and records[6]["reset"] == 1
    assert [t for t in seen if t is not None] == [1733040000 + i for i in (0, 1, 2, 4, 5, 6, 7, 8)]
    assert seen.count(None) == 2  # the two filled samples: imputed, no time of their own


def test_systemd_notify_ready_and_watchdog(tmp_path):
    from edgernn.systemd import Notifier

    folder = tempfile.mkdtemp(prefix="nfy")  # AF_UNIX paths are short
    path = os.path.join(folder, "s")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(2)
    try:
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
        n.ready("up")
        n.ping()
        n.ping()  # within the interval: no second ping
        assert server.recv(100) == b"READY=1\nSTATUS=up"
        assert server.recv(100) == b"WATCHDOG=1"
        time.sleep(0.06)
        n.ping()
        assert server.recv(100) == b"WATCHDOG=1"
        assert not Notifier({}).active
        other = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1"})
        assert other.interval is None  # the watchdog is another process's
    finally:
        server.close()
        shutil.rmtree(folder)


# -- the fleet through the broker --------------------------------------------------------
def test_wildcard_fleet_equals_one_stream_per_device(broker, model_path, tmp_path):
    """4 devices interleaved on sensors/+/data: each device's forecasts and scores are
    exactly those of its own single stream; one batched model call serves several
    devices; forecasts are published per device; the metrics endpoint counts them."""
    from edgernn.cli import make_detector
    from edgernn.runtime import Model
    from edgernn.runtime.monitor import Monitor

    out = tmp_path / "out.jsonl"
    args = run_args(model_path, "--mqtt", broker.url("sensors/+/data"), "-o", str(out),
                    "--metrics-port", "0", "--mqtt-qos", "1")  # fmt: skip
    run = InProcessRun(args)
    sub = Client(broker, "edgernn/+/forecast")
    pub = Client(broker)
    n, names = 120, ["pump1", "pump2", "fan", "boiler"]
    data = {d: synthetic_signal(n, seed=i).astype(np.float32) for i, d in enumerate(names)}
    for t in range(n):
        for d in names:
            pub.publish(f"sensors/{d}/data", sample_payload(data[d][t], t), qos=1)
    wait_until(lambda: run.processed() == n * len(names), what="every sample forecast")
    wait_until(lambda: sum(len(sub.on(f"edgernn/{d}/forecast")) for d in names) == n * 4,
               what="every forecast published")  # fmt: skip
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{run.run.metrics.port}/metrics").read()
    c = run.stop()
    pub.close()
    sub.close()

    assert c["totals"]["processed"] == n * len(names) and c["totals"]["unaccounted"] == 0
    assert c["mean_batch"] > 1.0, "devices were stepped one call each"
    records = read_jsonl(out)
    model = Model(model_path)
    for d in names:
        mine = [r for r in records if r["device"] == d]
        assert [r["seq"] for r in mine] == list(range(n))
        mon = Monitor(model, detector=make_detector(model, args))
        want = [mon.process(x) for x in data[d]]
        got_f = np.array([[r["forecast"][ch] for ch in CHANNELS] for r in mine], np.float32)
        np.testing.assert_array_equal(got_f, np.array([w["forecast"] for w in want]))
        f32 = [None if w.get("score") is None else float(str(np.float32(w["score"]))) for w in want]
        assert [r.get("score") for r in mine] == f32  # written as the shortest float32 text
        assert mine[5]["time"] == repr(1733040000 + 5 / 100)  # all its digits
        published = [json.loads(p) for p in sub.on(f"edgernn/{d}/forecast")]
        assert [p["seq"] for p in published] == list(range(n))
        assert published[-1]["forecast"] == mine[-1]["forecast"]
        assert f'edgernn_forecasts_total{{device="{d}"}}'.encode() in metrics
    assert b"edgernn_latency_seconds_bucket" in metrics and b"edgernn_devices 4.0" in metrics


def test_bad_payloads_counted_per_device_and_channel_mismatch_said_once(broker, model_path,
                                                                        tmp_path):  # fmt: skip
    summary = tmp_path / "summary.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgernn", "run", model_path, "--mqtt",
         broker.url("plant/%23"), "--no-publish", "-o", str(tmp_path / "o.jsonl"),
         "--summary-json", str(summary), "--status-interval", "0"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    sub = Client(broker)
    time.sleep(1.5)  # the run connects and subscribes
    good = synthetic_signal(10)
    for t in range(10):
        sub.publish("plant/line1/pump", sample_payload(good[t], t), 1)
    for bad in (b"{broken", b"1,2", b'{"a": "hot", "b": 1, "c": 2}', b"[1, 2, 3, 4]"):
        sub.publish("plant/line1/pump", bad, 1)
    for _ in range(5):
        sub.publish("plant/line2/fan", b'{"temp": 21.5, "hum": 40}', 1)
    sub.publish("plant/line2/fan", b"a:1 b:2 c:3", 1)  # the serial text form is fine
    sub.publish("plant/line3/x", b'{"a": null, "b": 1, "c": 2, "seq": 0}', 1)
    sub.publish("plant/line3/x", b'{"a": 1, "b": 1, "c": 2, "seq": 1}', 1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    sub.close()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    s = json.loads(summary.read_text())["devices"]
    pump, fan, x = s["line1/pump"], s["line2/fan"], s["line3/x"]
    assert pump["processed"] == 10 and pump["rejected"] == 4
    assert pump["rejected_by"] == {"json": 1, "text": 1, "value": 1, "width": 1}
    assert fan["rejected_by"] == {"channels": 5} and fan["processed"] == 1
    assert x["invalid"] == 1 and x["processed"] == 1 and x["gaps"] == 1
    assert all(d["unaccounted"] == 0 for d in s.values())
    mismatch = [ln for ln in err.splitlines() if "sends channels" in ln]
    assert len(mismatch) == 1, err  # said once, loudly, with what was expected
    assert "temp, hum" in mismatch[0] and "expects a, b, c" in mismatch[0]
    assert "line1/pump: 10 received, 10 forecast, 4 rejected" in err


def test_output_topics_ha_discovery_alerts_availability_and_last_will(broker, model_path):
    """A separate process: forecasts, an alert (QoS 1 event + retained state), HA
    discovery, retained "online"; systemd gets READY and WATCHDOG from the loop; then
    SIGKILL: the broker publishes the last will "offline"."""
    folder = tempfile.mkdtemp(prefix="nfy")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(os.path.join(folder, "s"))
    notify.settimeout(5)
    avail = "edgernn/gw1/availability"
    sub = Client(broker, "edgernn/#", "homeassistant/#")
    env = dict(os.environ, NOTIFY_SOCKET=os.path.join(folder, "s"), WATCHDOG_USEC="200000")
    config = os.path.join(folder, "detector.json")  # a short warm-up: 80 samples in all
    with open(config, "w") as fh:
        json.dump({"warmup": 20, "holdoff": 3, "alarm_every": 100}, fh)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgernn", "run", model_path, "--mqtt",
         broker.url("sensors/+/data"), "--availability-topic", avail, "--ha-discovery",
         "--detector-config", config, "--status-interval", "0"],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert notify.recv(200).startswith(b"READY=1")
        assert notify.recv(200) == b"WATCHDOG=1"
        wait_until(lambda: sub.on(avail) == [b"online"], what="online")
        x = synthetic_signal(80)
        x[60:64, 0] += 30.0  # a fault the detector cannot miss
        for t in range(80):
            sub.publish("sensors/pump7/data", sample_payload(x[t], t), 1)
        wait_until(lambda: len(sub.on("edgernn/pump7/forecast")) == 80, what="forecasts")
        wait_until(lambda: len(sub.on("edgernn/pump7/alert")) >= 2, what="alert events")
        events = [json.loads(p) for p in sub.on("edgernn/pump7/alert")]
        assert events[0]["event"] == "opened" and events[0]["open"] and events[0]["seq"] >= 60
        assert events[1]["event"] == "closed" and not events[1]["open"]
        assert sub.on("edgernn/pump7/alert/state") == [b"OFF", b"ON", b"OFF"]
        forecast = json.loads(sub.on("edgernn/pump7/forecast")[60])
        assert forecast["seq"] == 60 and forecast["anomaly"] == 1 and set(forecast["forecast"]) == set(
            CHANNELS)  # fmt: skip
        configs = {t: json.loads(p) for t, p, _ in sub.messages if t.startswith("homeassistant/")}
        (score_topic,) = [t for t in configs if t.startswith("homeassistant/sensor/")]
        (alert_topic,) = [t for t in configs if t.startswith("homeassistant/binary_sensor/")]
        assert configs[score_topic]["state_topic"] == "edgernn/pump7/forecast"
        assert configs[alert_topic]["state_topic"] == "edgernn/pump7/alert/state"
        assert configs[alert_topic]["availability_topic"] == avail
        # Retained: a client arriving now is told the run is online and what HA needs.
        late = Client(broker, avail, "homeassistant/#", "edgernn/pump7/alert/state")
        wait_until(lambda: len(late.messages) >= 4, what="retained messages")
        assert all(retained for _, _, retained in late.messages)
        assert late.on(avail) == [b"online"] and late.on("edgernn/pump7/alert/state") == [b"OFF"]
        late.close()
        proc.kill()  # no clean disconnect: the broker sends the will
        proc.wait(10)
        wait_until(lambda: sub.on(avail)[-1:] == [b"offline"], what="the last will")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
        notify.close()
        shutil.rmtree(folder)
        sub.close()


def test_broker_restart_reconnects_and_reports_what_was_lost(broker, model_path, tmp_path):
    """The broker goes away in the middle of a run and comes back: the run reconnects
    and resubscribes, forecasts made meanwhile wait in the buffer and go out after, and
    every sample each device numbered is a forecast or counted missing."""
    args = run_args(model_path, "--mqtt", broker.url("s/+"), "--on-gap", "reset")
    run = InProcessRun(args)
    pub = Client(broker)
    x = synthetic_signal(400)
    sent = {"pub_lost": 0, "last": -1}

    def publish_all() -> None:
        for t in range(400):
            for d in ("a", "b"):
                info = pub.publish(f"s/{d}", sample_payload(x[t], t))
                sent["pub_lost"] += info.rc != 0
            sent["last"] = t
            time.sleep(0.01)

    feeder = threading.Thread(target=publish_all)
    feeder.start()
    wait_until(lambda: run.processed() > 100, what="samples before the restart")
    broker.stop()
    wait_until(lambda: not run.run.link.connected.is_set(), what="the run to notice")
    time.sleep(0.3)
    broker.start()
    feeder.join(30)
    wait_until(lambda: run.run.link.connected.is_set(), timeout=15, what="reconnect")
    wait_until(lambda: all(d.next_seq == 400 for d in run.run.fleet.devices.values()),
               timeout=15, what="the last samples")  # fmt: skip
    c = run.stop()
    pub.close()
    assert c["input_link"]["connects"] == 2 and c["input_link"]["disconnects"] == 1
    for d in ("a", "b"):
        dev = c["devices"][d]
        assert dev["processed"] + dev["missing"] == 400, dev  # nothing silently lost
        assert dev["missing"] > 0 and dev["gap_resets"] >= 1
    out = c["output_link"]
    assert out["dropped"] == 0 and out["buffered"] == 0
    assert c["published_forecasts"] == c["totals"]["processed"]


def test_serial_run_publishes_to_the_broker(broker, model_path, tmp_path, capsys):
    """`--port ... --publish mqtt://`: the board-to-broker bridge. Every forecast of the
    serial run is on the broker; availability goes online, then offline at a clean end;
    --metrics-port serves the run's counters while it runs."""
    from edgernn.firmware_bridge.emulator import Emulator
    from edgernn.firmware_bridge.live import run_serial
    from edgernn.runtime import Model

    avail = "edgernn/bench1/availability"
    sub = Client(broker, "edgernn/#")
    emu = Emulator(rate=200, channels=3, mode="binary", duration=1.0, seed=1).start()

    scraped: list[bytes] = []

    def unplug() -> None:
        emu.join()
        emu.drain()
        line = [ln for ln in capsys.readouterr().err.splitlines() if "metrics on" in ln]
        scraped.append(urllib.request.urlopen(line[0].split(" on ")[1]).read())
        emu.unplug()

    threading.Thread(target=unplug, daemon=True).start()
    out = tmp_path / "o.jsonl"
    args = run_args(model_path, "--port", emu.path, "--no-reconnect", "-o", str(out),
                    "--publish", broker.url(), "--device-name", "bench1",
                    "--availability-topic", avail, "--metrics-port", "0")  # fmt: skip
    assert run_serial(args, Model(model_path)) == 0
    records = read_jsonl(out)
    assert len(records) > 150
    wait_until(lambda: len(sub.on("edgernn/bench1/forecast")) == len(records), what="forecasts")
    published = [json.loads(p) for p in sub.on("edgernn/bench1/forecast")]
    assert [p["seq"] for p in published] == [r["seq"] for r in records]
    assert [p["forecast"] for p in published] == [r["forecast"] for r in records]
    assert published[1]["time_us"] == records[1]["time_us"]
    wait_until(lambda: sub.on(avail) == [b"online", b"offline"], what="online, then offline")
    sub.close()
    assert b'edgernn_forecasts_total{device="bench1"}' in scraped[0]
    assert b"edgernn_broker_connected 1.0" in scraped[0]


def test_password_file_env_and_refusal(tmp_path, model_path):
    b = Broker(tmp_path, passwords={"gw": "s3cret"})
    b.start()
    try:
        pw = tmp_path / "pw"
        pw.write_text("s3cret\n")
        os.chmod(pw, 0o600)
        args = run_args(model_path, "--mqtt", b.url("s/+"), "--mqtt-username", "gw",
                        "--mqtt-password-file", str(pw))  # fmt: skip
        run = InProcessRun(args)
        pub = Client(b, user="gw", password="s3cret")
        pub.publish("s/one", sample_payload(synthetic_signal(1)[0], 0), 1)
        wait_until(lambda: run.processed() == 1, what="a sample through the password broker")
        run.stop()
        pub.close()
        cmd = [sys.executable, "-m", "edgernn", "run", model_path, "--mqtt",
               b.url("s/+").replace("mqtt://", "mqtt://gw@"), "--status-interval", "0"]  # fmt: skip
        bad = subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                             env=dict(os.environ, EDGERNN_MQTT_PASSWORD="wrong"))  # fmt: skip
        assert bad.returncode == 1 and "Traceback" not in bad.stderr
        assert "refused the connection" in bad.stderr.splitlines()[-1], bad.stderr
        secret = subprocess.run(cmd[:-2] + ["--mqtt-password", "x"], capture_output=True,
                                text=True, timeout=30)  # fmt: skip
        assert secret.returncode == 2 and "not on the command line" in secret.stderr
    finally:
        b.stop()


def test_bad_command_lines_are_one_line_errors(model_path, tmp_path):
    from edgernn.cli import main

    url = f"mqtt://127.0.0.1:{free_port()}/s/+"
    for argv, says in (
        (["--mqtt", "mqtt://u:pw@h/t"], "no password in the URL"),
        (["--mqtt", "mqtt://127.0.0.1/"], "needs a topic"),
        (["--mqtt", url, "--no-publish"], "nothing would be written"),
        (["--mqtt", url, "--publish-topic", "x/{name}"], "only placeholder is {device}"),
        (["--mqtt", url, "--mqtt-password-file", str(tmp_path / "none")], "cannot read it"),
        (["--mqtt", url, "--mqtt-ca", str(tmp_path / "ca.pem")], "--mqtt-ca"),
        (["--csv", "x.csv", "--publish", url], "--publish goes with --port or --mqtt"),
        (["--mqtt", url, "--on-overflow", "block"], "cannot hold a broker back"),
        (["--mqtt", url, "--live"], "--live shows one board"),
    ):
        err = run_main_err(main, ["run", model_path, *argv])
        assert says in err, (argv, err)


def run_main_err(main, argv) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        assert main(argv) == 1
    lines = buf.getvalue().strip().splitlines()
    assert lines and lines[-1].startswith("edgernn: error: ")
    return lines[-1]


def test_state_file_resumes_every_device(broker, model_path, tmp_path):
    """Stopped after 40 samples and started again: each device resumes its own state
    and sequence, and its forecasts are those of one unbroken stream."""
    from edgernn.cli import make_detector
    from edgernn.runtime import Model
    from edgernn.runtime.monitor import Monitor

    state = tmp_path / "fleet.json"
    x = {d: synthetic_signal(80, seed=i).astype(np.float32) for i, d in enumerate(("p", "q"))}
    records: list[dict] = []
    for part in (range(0, 40), range(40, 80)):
        out = tmp_path / f"o{part.start}.jsonl"
        run = InProcessRun(run_args(model_path, "--mqtt", broker.url("s/+"), "--no-publish",
                                    "-o", str(out), "--state-file", str(state)))  # fmt: skip
        pub = Client(broker)
        for t in part:
            for d in x:
                pub.publish(f"s/{d}", sample_payload(x[d][t], t), 1)
        wait_until(lambda: run.processed() == 2 * len(part), what="the samples")  # noqa: B023
        run.stop()
        pub.close()
        records += read_jsonl(out)
    assert json.loads(state.read_text())["fleet"]["devices"]["p"]["next_seq"] == 80
    model = Model(model_path)
    for d in x:
        mine = [r for r in records if r["device"] == d]
        assert [r["seq"] for r in mine] == list(range(80)) and not any("gap" in r for r in mine)
        # the run's detector, so its online head too: saved and resumed with the state
        args = run_args(model_path, "--mqtt", broker.url("s/+"))
        mon = Monitor(model, detector=make_detector(model, args))
        want = np.array([mon.process(v)["forecast"] for v in x[d]])
        got = np.array([[r["forecast"][c] for c in CHANNELS] for r in mine], np.float32)
        np.testing.assert_array_equal(got, want)


def test_broker_not_there_yet_at_start(tmp_path, model_path):
    """A gateway often boots before its broker: the run keeps trying, with backoff."""
    b = Broker(tmp_path)
    timer = threading.Timer(0.8, b.start)
    timer.start()
    try:
        run = InProcessRun(run_args(model_path, "--mqtt", b.url("s/+"), "--no-publish", "-o",
                                    str(tmp_path / "o.jsonl")))  # fmt: skip
        pub = Client(b)
        pub.publish("s/late", sample_payload(synthetic_signal(1)[0], 0), 1)
        wait_until(lambda: run.processed() == 1, what="a sample")
        c = run.stop()
        pub.close()
        assert c["input_link"]["failed_connects"] >= 1 and c["input_link"]["connects"] == 1
    finally:
        timer.join()
        b.stop()


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (EC keys: fast)."""
    ca, ca_key, crt, key = (folder / n for n in ("ca.pem", "ca.key", "server.pem", "server.key"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "1",
        "-subj", "/CN=edgernn test CA")  # fmt: skip
    csr = folder / "server.csr"
    run("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    ext = folder / "san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(crt), "-days", "1", "-extfile", str(ext))  # fmt: skip
    return ca, crt, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificates")
def test_tls_with_a_ca_file_and_an_unknown_certificate_refused(tmp_path, model_path):
    from edgernn.cli import main

    ca, crt, key = make_certificates(tmp_path)
    b = Broker(tmp_path, tls=(ca, crt, key))
    b.start()
    try:
        url = f"mqtts://127.0.0.1:{b.port}/s/+"
        run = InProcessRun(run_args(model_path, "--mqtt", url, "--mqtt-ca", str(ca),
                                    "--no-publish", "-o", str(tmp_path / "o.jsonl")))  # fmt: skip
        pub = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
        pub.tls_set(ca_certs=str(ca))
        pub.connect("127.0.0.1", b.port)
        pub.loop_start()
        pub.publish("s/secure", sample_payload(synthetic_signal(1)[0], 0), 1).wait_for_publish(5)
        wait_until(lambda: run.processed() == 1, what="a sample over TLS")
        run.stop()
        pub.disconnect()
        pub.loop_stop()
        err = run_main_err(main, ["run", model_path, "--mqtt", url, "--no-publish", "-o",
                                  str(tmp_path / "o2.jsonl")])  # fmt: skip
        assert "TLS certificate not accepted" in err and "--mqtt-ca" in err
    finally:
        b.stop()
