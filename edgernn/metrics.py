"""A Prometheus endpoint for a fleet or serial run (`--metrics-port`, extra `metrics`).

The numbers are read from the run's own counters when Prometheus scrapes: nothing is
counted twice and the processing loop does no extra work per sample. Per device:
edgernn_samples_total, edgernn_forecasts_total, edgernn_rejected_total{reason},
edgernn_missing_total (sequence gaps), edgernn_invalid_total, edgernn_overflow_total,
edgernn_alerts_total, edgernn_anomalies_total, edgernn_alert_open. For the process:
edgernn_devices, edgernn_broker_connected, edgernn_published_total,
edgernn_publish_dropped_total and the arrival-to-forecast latency histogram
edgernn_latency_seconds. Samples/s is `rate(edgernn_forecasts_total[1m])`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgernn.errors import EdgernnError, require

LATENCY_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)  # fmt: skip

PER_DEVICE = (  # (metric, counter, help)
    ("samples", "samples", "samples received"),
    ("forecasts", "processed", "samples forecast"),
    ("invalid", "invalid", "samples holding null/NaN (handled as gaps)"),
    ("missing", "missing", "samples never received (sequence gaps)"),
    ("duplicates", "duplicates", "redelivered samples dropped"),
    ("overflow", "overflow", "payloads dropped because processing fell behind"),
    ("restarts", "restarts", "device restarts (sequence went back)"),
    ("anomalies", "anomalies", "samples flagged anomalous"),
    ("alerts", "alerts", "alert events opened"),
)


class FleetCollector:
    def __init__(self, run: Any):
        self.run = run

    def collect(self):
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        devices = _snapshot(self.run.fleet.devices)
        for metric, key, doc in PER_DEVICE:
            fam = CounterMetricFamily(f"edgernn_{metric}", doc, labels=["device"])
            for name, dev in devices:
                fam.add_metric([name], getattr(dev.counters, key))
            yield fam
        rejected = CounterMetricFamily("edgernn_rejected", "payloads rejected",
                                       labels=["device", "reason"])  # fmt: skip
        open_alert = GaugeMetricFamily("edgernn_alert_open", "1 while an alert is open",
                                       labels=["device"])  # fmt: skip
        for name, dev in devices:
            for reason, n in dict(dev.counters.rejected_by).items():
                rejected.add_metric([name, reason], n)
            open_alert.add_metric([name], float(dev.open_alert is not None))
        yield rejected
        yield open_alert
        yield GaugeMetricFamily("edgernn_devices", "devices seen", value=len(devices))
        yield GaugeMetricFamily("edgernn_broker_connected", "1 while the broker is connected",
                                value=float(self.run.link.connected.is_set()))  # fmt: skip
        out = self.run.out_link
        if out is not None:
            yield CounterMetricFamily("edgernn_published", "messages handed to the broker",
                                      value=out.counters.published)  # fmt: skip
            yield CounterMetricFamily("edgernn_publish_dropped",
                                      "outgoing messages dropped (buffer full, broker away)",
                                      value=out.counters.dropped)  # fmt: skip
        yield HistogramMetricFamily("edgernn_latency_seconds", "arrival to forecast",
                                    **_histogram(self.run.latency))  # fmt: skip


SERIAL = (  # (metric, counter of LiveRun.counters(), help)
    ("samples", "samples", "samples received"),
    ("forecasts", "forecasts", "samples forecast"),
    ("invalid", "invalid", "samples holding NaN/inf (handled as gaps)"),
    ("missing", "missing", "samples never received (sequence gaps)"),
    ("overflow", "overflow", "samples dropped because inference fell behind"),
    ("device_dropped", "device_dropped", "samples the device itself dropped"),
    ("anomalies", "anomalies", "samples flagged anomalous"),
    ("disconnects", "disconnects", "times the port went away"),
)


class SerialCollector:
    """The same names for a serial run (`--port --metrics-port`): one device, the board."""

    def __init__(self, run: Any, name: str, link: Any = None):
        self.run = run
        self.name = name
        self.link = link

    def collect(self):
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        c = _retry(self.run.counters, {})
        for metric, key, doc in SERIAL:
            fam = CounterMetricFamily(f"edgernn_{metric}", doc, labels=["device"])
            fam.add_metric([self.name], c.get(key, 0))
            yield fam
        rejected = CounterMetricFamily("edgernn_rejected", "frames or lines rejected",
                                       labels=["device", "reason"])  # fmt: skip
        for reason, n in c.get("rejected_by", {}).items():
            rejected.add_metric([self.name, reason], n)
        yield rejected
        if self.link is not None:
            yield GaugeMetricFamily("edgernn_broker_connected", "1 while the broker is connected",
                                    value=float(self.link.connected.is_set()))  # fmt: skip
            yield CounterMetricFamily("edgernn_published", "messages handed to the broker",
                                      value=self.link.counters.published)  # fmt: skip
            yield CounterMetricFamily("edgernn_publish_dropped",
                                      "outgoing messages dropped (buffer full, broker away)",
                                      value=self.link.counters.dropped)  # fmt: skip
        yield HistogramMetricFamily("edgernn_latency_seconds", "read to forecast",
                                    **_histogram(self.run.latency))  # fmt: skip


def _retry(read, default):
    """read() while another thread may be changing what it copies."""
    for _ in range(10):
        try:
            return read()
        except RuntimeError:  # dictionary changed size during iteration
            continue
    return default


def _snapshot(devices: dict) -> list:
    """The registry as a list; the loop may add a device while we read it."""
    for _ in range(10):
        try:
            return sorted(devices.items())
        except RuntimeError:  # dictionary changed size during iteration
            continue
    return []


def _histogram(hist) -> dict:
    """Our log-binned LatencyHistogram as Prometheus buckets (upper edges, cumulative)."""
    counts = hist.counts.copy()
    cumulative = np.cumsum(counts)
    # counts[k] holds values <= EDGES[k] (and > EDGES[k-1]); the last bin is > 10 s.
    buckets = []
    for le in LATENCY_BUCKETS:
        k = int(np.searchsorted(hist.EDGES, le, side="right")) - 1
        buckets.append((repr(le), float(cumulative[k]) if k >= 0 else 0.0))
    buckets.append(("+Inf", float(cumulative[-1])))
    upper = np.append(hist.EDGES, hist.EDGES[-1])
    return {"buckets": buckets, "sum_value": float((counts * upper).sum())}


@dataclass
class MetricsServer:
    port: int
    _server: Any

    def shutdown(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()


def serve_fleet_metrics(run: Any, port: int, addr: str = "127.0.0.1") -> MetricsServer:
    return serve_metrics(FleetCollector(run), port, addr)


def serve_metrics(collector: Any, port: int, addr: str = "127.0.0.1") -> MetricsServer:
    """An HTTP server on its own thread answering /metrics from `collector`."""
    require("prometheus_client", extra="metrics")
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(collector)
    try:
        started = start_http_server(port, addr=addr, registry=registry)
    except OSError as e:
        raise EdgernnError(f"--metrics-port {port}: cannot listen on {addr} ({e.strerror})") from None
    if started is None:  # prometheus-client < 0.20 returns nothing: the server lives on
        return MetricsServer(port, None)
    server = started[0]
    return MetricsServer(server.server_address[1], server)
