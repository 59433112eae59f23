"""The MQTT transport: broker URLs, credentials, TLS, reconnect, bounded buffers.

`MqttLink` is one connection to a broker (paho-mqtt, optional extra `mqtt`):
  - it connects in the background and reconnects with exponential backoff (0.5 s
    doubling to 30 s) for as long as the run lasts; a broker that refuses us (bad
    credentials, not authorised) or a TLS certificate that does not verify is an
    error, not something to retry forever;
  - subscriptions are made again on every (re)connect;
  - incoming messages go to a bounded `Inbox`; when processing falls behind, the
    oldest are dropped and counted per topic;
  - outgoing messages are handed to paho while connected and buffered (up to a
    bound, oldest dropped and counted) while not, then sent in order on reconnect;
  - an optional retained availability topic: "online" on every connect, "offline"
    as the last will (the broker publishes it when we vanish) and on a clean close.

URLs: mqtt://[USER@]HOST[:PORT][/TOPIC] (port 1883) or mqtts://... (TLS, port 8883).
A password is never taken from the URL or the command line: --mqtt-password-file or
$EDGERNN_MQTT_PASSWORD.
"""

from __future__ import annotations

import os
import socket
import ssl
import stat
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional
from urllib.parse import unquote, urlsplit

from edgernn.errors import EdgernnError, InputError, require
from edgernn.firmware_bridge.options import PASSWORD_ENV

SCHEMES = {"mqtt": 1883, "mqtts": 8883}
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 30.0


# -- URLs and topics ---------------------------------------------------------------------
@dataclass(frozen=True)
class BrokerURL:
    scheme: str
    host: str
    port: int
    topic: str  # may be empty (a --publish URL needs none)
    username: Optional[str] = None

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    @property
    def address(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_broker_url(text: str, flag: str = "--mqtt") -> BrokerURL:
    parts = urlsplit(text)
    if parts.scheme not in SCHEMES:
        raise InputError(f"{flag} {text!r}: give mqtt://HOST[:PORT]/TOPIC or mqtts://...")
    if parts.password is not None:
        raise InputError(
            f"{flag}: no password in the URL (it would show in `ps` and shell history); "
            f"use --mqtt-password-file FILE or ${PASSWORD_ENV}"
        )
    try:
        port = parts.port or SCHEMES[parts.scheme]
    except ValueError:
        raise InputError(f"{flag} {text!r}: the port is not a number in 1..65535") from None
    if not parts.hostname:
        raise InputError(f"{flag} {text!r}: no broker host")
    topic = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
    if "#" in text or "?" in text:  # '#' would start a URL fragment: say how to write it
        raise InputError(
            f"{flag} {text!r}: write the '#' wildcard as %23 (and no '?'), e.g. "
            "mqtt://host/sensors/%23"
        )
    check_topic_filter(topic, flag)
    user = unquote(parts.username) if parts.username else None
    return BrokerURL(parts.scheme, parts.hostname, port, topic, user)


def check_topic_filter(topic: str, flag: str) -> None:
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if ("+" in level and level != "+") or ("#" in level and level != "#"):
            raise InputError(f"{flag}: a wildcard must be a whole topic level, got {topic!r}")
        if level == "#" and i != len(levels) - 1:
            raise InputError(f"{flag}: '#' must be the last topic level, got {topic!r}")


class DeviceNamer:
    """Topic -> device name: the levels the filter's wildcards matched, joined by '/'.
    A filter without wildcards names one device: the topic itself."""

    def __init__(self, topic_filter: str):
        self.levels = topic_filter.split("/")
        self.wild = any(lv in ("+", "#") for lv in self.levels)

    def __call__(self, topic: str) -> Optional[str]:
        got = topic.split("/")
        if not self.wild:
            return topic if got == self.levels else None
        names = []
        for i, lv in enumerate(self.levels):
            if lv == "#":
                rest = got[i:]
                return "/".join(names + rest) if rest else None
            if i >= len(got):
                return None
            if lv == "+":
                names.append(got[i])
            elif lv != got[i]:
                return None
        if len(got) != len(self.levels):
            return None
        name = "/".join(names)
        return name or None


# -- credentials and options -------------------------------------------------------------
@dataclass
class MqttOptions:
    username: Optional[str] = None
    password: Optional[str] = None
    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    client_id: str = ""
    keepalive: int = 30
    buffer: int = 10000  # outgoing messages kept while the broker is away
    inbox: int = 4096  # incoming messages waiting for processing


def read_password(path: Optional[str], env=os.environ) -> tuple[Optional[str], Optional[str]]:
    """(password, a warning or None) from a file (first line) or $EDGERNN_MQTT_PASSWORD."""
    if path is None:
        return env.get(PASSWORD_ENV) or None, None
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline().rstrip("\r\n")
        mode = os.stat(path).st_mode
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or e.__class__.__name__
        raise InputError(f"--mqtt-password-file {path}: cannot read it ({why})") from None
    if not first:
        raise InputError(f"--mqtt-password-file {path}: the first line is empty")
    warning = None
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        warning = f"{path} is readable by other users; chmod 600 it"
    return first, warning


def check_tls_files(opts: MqttOptions) -> None:
    for flag, path in (("--mqtt-ca", opts.ca_file), ("--mqtt-cert", opts.cert_file),
                       ("--mqtt-key", opts.key_file)):  # fmt: skip
        if path is not None and not os.path.isfile(path):
            raise InputError(f"{flag} {path}: no such file")
    if (opts.cert_file is None) != (opts.key_file is None):
        raise InputError("--mqtt-cert and --mqtt-key go together (a client certificate)")


def default_client_id(role: str) -> str:
    """Stable across restarts (a retained availability topic keeps its meaning) and
    distinct per host and source (two processes with one id would kick each other off)."""
    import hashlib

    digest = hashlib.sha1(role.encode()).hexdigest()[:6]
    host = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in socket.gethostname())
    return f"edgernn-{host[:32]}-{digest}"


# -- the inbox ---------------------------------------------------------------------------
class Inbox:
    """Incoming messages between paho's network thread and the processing loop.
    Bounded: when full the oldest message goes, counted under its topic."""

    def __init__(self, bound: int):
        self.bound = max(1, bound)
        self._items: deque[tuple[str, bytes, float]] = deque()
        self._dropped: dict[str, int] = {}
        self._cond = threading.Condition()

    def put(self, topic: str, payload: bytes, t_recv: float) -> None:
        with self._cond:
            if len(self._items) >= self.bound:
                old = self._items.popleft()[0]
                self._dropped[old] = self._dropped.get(old, 0) + 1
            self._items.append((topic, payload, t_recv))
            self._cond.notify()

    def take(self, timeout: float) -> tuple[list[tuple[str, bytes, float]], dict[str, int]]:
        """Everything waiting (after up to `timeout` s for the first), and the drops by
        topic since the last call."""
        with self._cond:
            if not self._items and timeout > 0:
                self._cond.wait(timeout)
            items = list(self._items)
            self._items.clear()
            dropped, self._dropped = self._dropped, {}
        return items, dropped

    def __len__(self) -> int:
        return len(self._items)


# -- the link ----------------------------------------------------------------------------
@dataclass
class LinkCounters:
    connects: int = 0
    disconnects: int = 0
    failed_connects: int = 0  # attempts that did not reach the broker
    published: int = 0  # handed to the broker connection
    buffered: int = 0  # waiting for a connection now
    dropped: int = 0  # lost: buffer full while the broker was away
    received: int = 0
    bad_topics: int = 0  # topic names that are not UTF-8


class MqttLink:
    def __init__(
        self,
        url: BrokerURL,
        opts: MqttOptions,
        subscribe: Optional[tuple[str, int]] = None,
        availability: Optional[str] = None,
        note: Callable[[str], None] = print,
    ):
        mqtt = require("paho.mqtt.client", extra="mqtt")
        self._mqtt = mqtt
        self.url = url
        self.opts = opts
        self.subscription = subscribe
        self.availability = availability
        self.note = note
        self.counters = LinkCounters()
        self.inbox = Inbox(opts.inbox)
        self.connected = threading.Event()
        self.fatal: Optional[str] = None  # set when retrying cannot help
        self._buffer: deque[tuple[str, bytes, int, bool]] = deque()
        self._lock = threading.Lock()
        self._down_since: Optional[float] = None
        self._closing = False
        self._unsubscribed = threading.Event()
        self._client = self._make_client()

    # -- setup -------------------------------------------------------------------------
    def _make_client(self):
        mqtt, o = self._mqtt, self.opts
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=o.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        user = o.username or self.url.username
        if user is not None:
            client.username_pw_set(user, o.password)
        elif o.password is not None:
            raise InputError("a password without a user name: give --mqtt-username")
        if self.url.tls or o.ca_file is not None:
            check_tls_files(o)
            try:
                client.tls_set(ca_certs=o.ca_file, certfile=o.cert_file, keyfile=o.key_file)
            except (ssl.SSLError, OSError) as e:
                raise InputError(f"TLS setup failed: {e}") from None
        if self.availability is not None:
            client.will_set(self.availability, b"offline", qos=1, retain=True)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.max_queued_messages_set(self.opts.buffer)  # paho's own QoS 1 queue
        client.suppress_exceptions = True  # a callback error is logged, never kills the loop
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_unsubscribe = self._on_unsubscribe
        return client

    def start(self) -> None:
        """Connect (in the background if the broker is not there yet) and keep connected."""
        try:
            self._client.connect(self.url.host, self.url.port, self.opts.keepalive)
        except ssl.SSLCertVerificationError as e:
            raise EdgernnError(
                f"{self.url.address}: TLS certificate not accepted ({e.verify_message}); "
                "give the broker's CA with --mqtt-ca"
            ) from None
        except ssl.SSLError as e:
            raise EdgernnError(f"{self.url.address}: TLS handshake failed ({e.reason})") from None
        except (OSError, UnicodeError) as e:
            if isinstance(e, socket.gaierror):
                raise EdgernnError(f"{self.url.address}: unknown host {self.url.host!r}") from None
            self.counters.failed_connects += 1
            self._down_since = time.monotonic()
            self.note(f"broker {self.url.address} not reachable ({_why(e)}): retrying")
            self._client.connect_async(self.url.host, self.url.port, self.opts.keepalive)
        self._client.loop_start()

    def set_availability(self, topic: str) -> None:
        """Publish "online" here on every connect, with "offline" as the last will
        (before start(): the will travels in the CONNECT packet)."""
        self.availability = topic
        self._client.will_set(topic, b"offline", qos=1, retain=True)

    def stop_input(self) -> bool:
        """Unsubscribe. The broker acknowledges after every message it sent before, so
        once `input_stopped` is set the inbox holds all there will be. False if there
        is nothing to wait for (not connected: nothing more can arrive)."""
        topic, self.subscription = self.subscription, None
        self._unsubscribed.clear()
        if topic is not None and self.connected.is_set():
            rc, _mid = self._client.unsubscribe(topic[0])
            if rc == self._mqtt.MQTT_ERR_SUCCESS:
                return True
        self._unsubscribed.set()
        return False

    @property
    def input_stopped(self) -> bool:
        """The broker confirmed the unsubscription, or the connection is gone."""
        return self._unsubscribed.is_set() or not self.connected.is_set()

    # -- callbacks (paho's network thread) ---------------------------------------------
    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._unsubscribed.set()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.fatal = f"{self.url.address} refused the connection: {reason_code}"
            client.disconnect()
            return
        self.counters.connects += 1
        if self.subscription is not None:
            client.subscribe(*self.subscription)
        if self.availability is not None:
            client.publish(self.availability, b"online", qos=1, retain=True)
        self.connected.set()
        if self._down_since is None:
            self.note(f"connected to {self.url.address}")
        else:
            away = time.monotonic() - self._down_since
            self.note(f"connected to {self.url.address} (after {away:.1f} s without it)")
        self._down_since = None

    def _on_connect_fail(self, client, userdata) -> None:
        self.counters.failed_connects += 1

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if not self.connected.is_set():
            return
        self.connected.clear()
        if self._closing:
            return
        self.counters.disconnects += 1
        self._down_since = time.monotonic()
        self.note(f"lost the broker {self.url.address} ({reason_code}): reconnecting")

    def _on_message(self, client, userdata, msg) -> None:
        self.counters.received += 1
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # brokers check this; one that does not is not our crash
            self.counters.bad_topics += 1
            return
        self.inbox.put(topic, msg.payload, time.perf_counter())

    # -- publishing (the processing thread) --------------------------------------------
    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """Send now if connected and nothing is waiting, else buffer (bounded)."""
        if self._buffer or not self.connected.is_set():
            self._hold((topic, payload, qos, retain))
            return
        self._send((topic, payload, qos, retain))

    def flush(self) -> None:
        """Send what was buffered while the broker was away (call from the loop)."""
        while self._buffer and self.connected.is_set():
            msg = self._buffer.popleft()
            if not self._send(msg, requeue=True):
                break
        self.counters.buffered = len(self._buffer)

    def _send(self, msg: tuple[str, bytes, int, bool], requeue: bool = False) -> bool:
        info = self._client.publish(*msg)
        rc = info.rc
        if rc == self._mqtt.MQTT_ERR_SUCCESS:
            self.counters.published += 1
            return True
        if rc == self._mqtt.MQTT_ERR_QUEUE_SIZE:
            self.counters.dropped += 1  # paho's own QoS 1 queue is full as well
            return True
        if requeue:
            self._buffer.appendleft(msg)
        else:
            self._hold(msg)  # the connection went away just now
        return False

    def _hold(self, msg: tuple[str, bytes, int, bool]) -> None:
        if len(self._buffer) >= self.opts.buffer:
            self._buffer.popleft()
            self.counters.dropped += 1
        self._buffer.append(msg)
        self.counters.buffered = len(self._buffer)

    # -- closing -----------------------------------------------------------------------
    def close(self, timeout: float = 2.0) -> None:
        """Send what is buffered (if the broker is there), mark us offline, disconnect."""
        self._closing = True
        deadline = time.monotonic() + timeout
        self.flush()
        if self.availability is not None and self.connected.is_set():
            info = self._client.publish(self.availability, b"offline", qos=1, retain=True)
            try:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                pass  # not sent: the will says "offline" for us
        while self._client.want_write() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.counters.buffered = len(self._buffer)
        self._client.disconnect()
        self._client.loop_stop()


def _why(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or e.__class__.__name__
