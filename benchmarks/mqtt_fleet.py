"""A fleet through a real broker: 64 devices x 100 Hz x 8 channels, a broker restart in
the middle, every sample accounted for.

Processes, all on this machine: mosquitto (started here on a free port), the fleet
run (`edgernn run MODEL --mqtt mqtt://127.0.0.1:PORT/fleet/+/data`, as on a gateway),
a publisher process playing the devices (JSON samples with seq and a wall-clock ts,
paced per 10 ms tick), and a subscriber here that timestamps every forecast coming
back (end-to-end latency: device publish -> forecast received, one clock).

Halfway through, the broker is stopped for --down seconds and started again. The
run reconnects and resubscribes by itself; what the devices published while it was
away never reached it and must show up as sequence gaps. Checked per device at the
end: forecasts + missing == samples the device numbered (seq 0..N-1), nothing
unaccounted; forecasts made while the broker was away wait in the run's buffer.

Reports: samples/s, the run's CPU (from /proc over the publishing window: % of one
core; and its CPU time per sample from start of publishing to exit, which says how
many samples/s one core would serve), the run's own latency (arrival -> forecast)
and the end-to-end latency, batching (devices per model call), the restart (how long
until reconnected, samples missing), buffer drops, and the machine's load average:
on a machine busy with other jobs the run gets less than a core, falls behind and
the latencies grow while the accounting stays exact.

    .venv/bin/python benchmarks/mqtt_fleet.py                     # 64 x 100 Hz x 8, 30 s
    .venv/bin/python benchmarks/mqtt_fleet.py --batch 10          # 10 samples per message
    .venv/bin/python benchmarks/mqtt_fleet.py --devices 16 --seconds 10 --json out.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

NAMES = [f"ch{i}" for i in range(8)]
DROPPED = "$SYS/broker/publish/messages/dropped"  # messages the broker itself gave up on


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_model(folder: str, channels: int) -> str:
    """An echo state network on a synthetic 8-channel signal (trains in a second)."""
    from edgernn.export import export_run
    from edgernn.train.config import TrainConfig
    from edgernn.train.fit import train_files

    names = NAMES[:channels]
    t = np.arange(3000)
    x = np.stack([np.sin(2 * np.pi * t / (20 + 7 * k)) + 0.05 * np.random.default_rng(k)
                  .standard_normal(t.size) for k in range(channels)], axis=1)  # fmt: skip
    csv = os.path.join(folder, "train.csv")
    np.savetxt(csv, x, delimiter=",", header=",".join(names), comments="", fmt="%.5f")
    run = os.path.join(folder, "run")
    train_files([csv], TrainConfig(cell="esn", hidden=32, progress=False), run)
    path = os.path.join(folder, "fleet.onnx")
    export_run(run, path)
    return path


class Broker:
    def __init__(self, folder: str):
        self.port = free_port()
        self.conf = os.path.join(folder, "mosquitto.conf")
        with open(self.conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\nsys_interval 1\n"
                    + ("user root\n" if os.geteuid() == 0 else ""))  # fmt: skip
        self.log = os.path.join(folder, "mosquitto.log")
        self.proc = None

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", self.conf], stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT)  # fmt: skip
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


# -- the devices ---------------------------------------------------------------------------
def publish_devices(port: int, devices: int, rate: float, seconds: float, channels: int,
                    result, batch: int = 1) -> None:  # fmt: skip
    """The publisher process: every device takes one sample per 1/rate s and publishes
    every `batch` samples (a JSON array of sample objects when batch > 1)."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
    c.reconnect_delay_set(0.1, 0.5)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    rng = np.random.default_rng(0)
    n = int(round(seconds * rate))
    lost = 0
    pending: list[list[dict]] = [[] for _ in range(devices)]
    t0 = time.perf_counter()
    for seq in range(n):
        base = np.sin(2 * np.pi * seq / np.array([20 + 7 * k for k in range(channels)]))
        now = time.time()
        for d in range(devices):
            values = base + 0.05 * rng.standard_normal(channels)
            doc = {NAMES[k]: round(float(values[k]), 5) for k in range(channels)}
            doc["seq"], doc["ts"] = seq, now
            pending[d].append(doc)
            if len(pending[d]) < batch and seq < n - 1:
                continue
            body = pending[d][0] if batch == 1 else pending[d]
            info = c.publish(f"fleet/dev{d:03d}/data", json.dumps(body), 0)
            if info.rc != 0:  # not even handed to the socket: the broker is away
                lost += len(pending[d])
            pending[d] = []
        wait = t0 + (seq + 1) / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
    time.sleep(0.5)
    c.disconnect()
    c.loop_stop()
    result.update(samples_per_device=n, not_sent=lost, seconds=time.perf_counter() - t0)


def wait_caught_up(watcher: Watcher, limit: float) -> None:
    """Until no forecast has come back for 3 s: the run has worked off any backlog."""
    deadline = time.monotonic() + limit
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        if watcher.count != last:
            last, since = watcher.count, time.monotonic()
        elif time.monotonic() - since > 3.0:
            return
        time.sleep(0.2)


class Watcher:
    """Subscribes to the forecasts; end-to-end latency from each sample's ts."""

    def __init__(self, port: int):
        import paho.mqtt.client as mqtt

        self.latencies: list[float] = []
        self.count = 0
        self.broker_dropped = [0]  # $SYS counter, one entry per broker lifetime
        self.c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
        self.c.reconnect_delay_set(0.1, 0.5)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [("edgernn/+/forecast", 0), (DROPPED, 0)])  # fmt: skip
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.measure = False

    def _on_message(self, c, u, msg) -> None:
        if msg.topic == DROPPED:
            value = int(msg.payload)
            if value < self.broker_dropped[-1]:
                self.broker_dropped.append(value)  # a new broker process counts from 0
            self.broker_dropped[-1] = value
            return
        self.count += 1
        if self.measure:
            doc = json.loads(msg.payload)
            if "time" in doc:
                self.latencies.append(time.time() - float(doc["time"]))

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def percentiles(values, qs=(50, 99, 99.9)) -> dict:
    if not values:
        return {}
    a = np.asarray(values) * 1e3
    out = {f"p{q:g}_ms": round(float(np.percentile(a, q)), 2) for q in qs}
    out["max_ms"] = round(float(a.max()), 2)
    return out


# -- the benchmark -------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=64)
    ap.add_argument("--rate", type=float, default=100.0, help="samples/s per device")
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--down", type=float, default=2.0, help="broker down time, seconds")
    ap.add_argument("--no-restart", action="store_true")
    ap.add_argument("--model", help="an exported 8-channel model (default: train an ESN)")
    ap.add_argument("--publish-every", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1, help="samples per device message")
    ap.add_argument("--run-args", default="", metavar="ARGS",
                    help="more arguments for the run, e.g. '--no-detector'")
    ap.add_argument("--json", metavar="PATH", help="also write the results here")
    a = ap.parse_args(argv)

    load0 = os.getloadavg()  # other jobs on this machine: the figures depend on them
    folder = tempfile.mkdtemp(prefix="edgernn-mqtt-bench-")
    model = a.model or build_model(folder, a.channels)
    broker = Broker(folder)
    broker.start()
    summary = os.path.join(folder, "summary.json")
    err = open(os.path.join(folder, "run.err"), "w")
    run = subprocess.Popen(
        [sys.executable, "-m", "edgernn", "run", model, "--mqtt",
         f"mqtt://127.0.0.1:{broker.port}/fleet/+/data", "--summary-json", summary,
         "--status-interval", "5", "--publish-every", str(a.publish_every),
         "--queue-size", "100000", "--mqtt-buffer", "200000", *a.run_args.split()],
        stderr=err,
    )  # fmt: skip
    watcher = None
    try:
        time.sleep(2.0)  # model load, connect, subscribe
        watcher = Watcher(broker.port)
        manager = mp.Manager()
        result = manager.dict()
        pub = mp.Process(target=publish_devices, args=(broker.port, a.devices, a.rate,
                                                       a.seconds, a.channels, result,
                                                       a.batch))  # fmt: skip
        pub.start()
        cpu0, wall0 = cpu_seconds(run.pid), time.perf_counter()
        others0 = (cpu_seconds(pub.pid), cpu_seconds(broker.proc.pid), time.process_time())
        watcher.measure = True
        restart = {}
        if not a.no_restart:
            time.sleep(a.seconds / 2)
            restart["stopped_at_s"] = round(time.perf_counter() - wall0, 2)
            broker.stop()
            time.sleep(a.down)
            broker.start()
            restart["started_at_s"] = round(time.perf_counter() - wall0, 2)
        while pub.is_alive() and time.perf_counter() - wall0 < a.seconds - 0.5:
            time.sleep(0.1)  # CPU is read over the publishing window, before it ends
        cpu1, wall1 = cpu_seconds(run.pid), time.perf_counter()
        others1 = (cpu_seconds(pub.pid), cpu_seconds(broker.proc.pid), time.process_time())
        pub.join(a.seconds * 3 + 30)
        wait_caught_up(watcher, a.seconds * 10)
        load = os.getloadavg()
        run.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(run.pid, 0)
        run.returncode = os.waitstatus_to_exitcode(status)
        cpu_total = usage.ru_utime + usage.ru_stime  # all of the run's CPU, to its exit
        err.close()
        with open(summary) as f:
            s = json.load(f)
        published = dict(result)
    finally:
        if run.poll() is None:
            run.kill()
        if watcher is not None:
            watcher.close()
        broker.stop()

    n = published["samples_per_device"]
    devices = s["devices"]
    # What the run can know: every seq up to the last one it received is a forecast or a
    # gap. Samples after a device's last received one (dropped by the broker while the
    # run was behind at the very end) leave no trace in the run; counted here.
    per_device_ok = all(d["processed"] + d["missing"] + d["invalid"] + d["duplicates"]
                        == d["next_seq"] and d["unaccounted"] == 0
                        for d in devices.values())  # fmt: skip
    trailing = sum(n - d["next_seq"] for d in devices.values())
    t = s["totals"]
    out = {
        "devices": a.devices, "rate_hz": a.rate, "channels": a.channels,
        "samples_per_message": a.batch, "publish_every": a.publish_every,
        "run_args": a.run_args,
        "seconds": round(published["seconds"], 2),
        "samples_published": n * a.devices,
        "not_sent_by_publisher_broker_away": published["not_sent"],
        "forecasts": t["processed"],
        "missing_seq_gaps": t["missing"],
        "after_last_received": trailing,
        "broker_dropped_slow_consumer": sum(watcher.broker_dropped),
        "accounted_per_device": per_device_ok and len(devices) == a.devices,
        "unaccounted": t["unaccounted"],
        "overflow": t["overflow"], "rejected": t["rejected"],
        "samples_per_s": round(t["processed"] / (wall1 - wall0), 1),
        "run_cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / (wall1 - wall0), 1),
        "run_cpu_us_per_sample": round((cpu_total - cpu0) / max(1, t["processed"]) * 1e6, 1),
        "one_core_would_serve_samples_per_s": round(t["processed"] / max(1e-9, cpu_total - cpu0)),
        "load_average_1min": {"start": round(load0[0], 2), "end": round(load[0], 2)},
        "other_cpu_percent": {
            k: round(100 * (b - a_) / (wall1 - wall0), 1)
            for k, a_, b in zip(("publisher", "broker", "subscriber"), others0, others1)
        },
        "cores": os.cpu_count(),
        "mean_devices_per_model_call": s["mean_batch"],
        "run_latency_ms": {"p50": s["latency_p50_ms"], "p99": s["latency_p99_ms"]},
        "end_to_end_latency": percentiles(watcher.latencies),
        "forecasts_published": s.get("published_forecasts"),
        "forecasts_seen_by_subscriber": watcher.count,
        "output_dropped": s.get("output_link", {}).get("dropped"),
        "reconnects": s["input_link"]["connects"] - 1,
        "restart": restart,
        "backend": None,
    }
    with open(os.path.join(folder, "run.err")) as f:
        log = f.read()
    for line in log.splitlines():
        if "backend" in line and "subscribed" in line:
            out["backend"] = line.split("(")[-1].split(" backend")[0]
        if "after" in line and "without it" in line:
            out["restart"]["reconnect_line"] = line.split("edgernn: ", 1)[-1]
    print(log, file=sys.stderr)  # the run's own status lines and summary
    print(json.dumps(out, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    shutil.rmtree(folder, ignore_errors=True)
    return 0 if out["accounted_per_device"] and out["unaccounted"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
