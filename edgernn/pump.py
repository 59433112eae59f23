"""The demo's embedded dataset: a centrifugal pump with four sensors and labelled faults.

vibration [g RMS], current [A], temperature [°C], pressure [bar], one sample per
step. The pump runs duty cycles (ramped start/stop), the motor heats slowly under load,
the temperature drifts with the seasons, every sensor is noisy. Faults are injected
into chosen spans and labelled row by row, each of a different kind:

    bearing    vibration amplitude grows and spikes      (vibration)
    cavitation pressure drops and turns ragged            (pressure, vibration)
    stuck      the vibration sensor freezes at a value    (vibration)
    overload   current surges and turns noisy, heats up   (current, temperature)
    spikes     isolated electrical spikes on the current  (current)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHANNELS = ("vibration", "current", "temperature", "pressure")
UNITS = ("g RMS", "A", "°C", "bar")
FAULT_KINDS = ("bearing", "cavitation", "stuck", "overload", "spikes")


@dataclass
class PumpLog:
    values: np.ndarray  # (T, 4)
    label: np.ndarray  # (T,) 0/1
    kind: list[str]  # (T,) "" or the fault kind
    faults: list[tuple[str, int, int]]  # (kind, start, end) spans


def healthy(n: int, seed: int = 0, start: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(start, start + n, dtype=np.float64)
    duty = (np.sin(2 * np.pi * t / 600.0) > -0.4).astype(np.float64)  # on/off cycles
    load = np.convolve(duty, np.ones(25) / 25.0, mode="same")  # the motor ramps
    vib = 0.15 + 0.85 * load * (1 + 0.25 * np.sin(2 * np.pi * t / 9.0))
    vib += 0.03 * rng.standard_normal(n)
    current = 0.4 + 4.6 * load + 0.06 * rng.standard_normal(n)
    heat = np.zeros(n)
    for i in range(1, n):  # first-order thermal lag behind the load
        heat[i] = heat[i - 1] + (load[i] - heat[i - 1]) / 120.0
    drift = 1.5 * np.sin(2 * np.pi * t / 20000.0)  # slow ambient drift
    temperature = 24.0 + 28.0 * heat + drift + 0.08 * rng.standard_normal(n)
    pressure = 0.9 + 2.1 * load + 0.08 * np.sin(2 * np.pi * t / 45.0)
    pressure += 0.02 * rng.standard_normal(n)
    return np.stack([vib, current, temperature, pressure], axis=1)


def inject(values: np.ndarray, kind: str, start: int, end: int, rng) -> None:
    """Apply one fault in place to rows [start, end)."""
    n = end - start
    ramp = np.linspace(0.0, 1.0, n)
    seg = values[start:end]
    if kind == "bearing":
        seg[:, 0] *= 1.0 + 1.5 * ramp
        hits = rng.random(n) < 0.08
        seg[hits, 0] += rng.uniform(0.8, 1.6, hits.sum())
    elif kind == "cavitation":
        seg[:, 3] -= 0.9 * np.minimum(1.0, 4 * ramp) + 0.25 * rng.standard_normal(n)
        seg[:, 0] += 0.35 * np.abs(rng.standard_normal(n))
    elif kind == "stuck":
        seg[:, 0] = seg[0, 0]
    elif kind == "overload":
        seg[:, 1] += 2.2 + 0.5 * rng.standard_normal(n)
        seg[:, 2] += 10.0 * ramp
    elif kind == "spikes":
        hits = np.zeros(n, dtype=bool)
        hits[:: max(n // 6, 1)] = True
        seg[hits, 1] += rng.choice([-1, 1], hits.sum()) * rng.uniform(3.0, 5.0, hits.sum())
    else:
        raise ValueError(f"unknown fault kind {kind!r}")


def pump_log(n: int, seed: int = 0, faults: bool = True, start: int = 0) -> PumpLog:
    """A pump log of n rows; with faults, one span of each kind spread over the log."""
    rng = np.random.default_rng(seed + 1000)
    values = healthy(n, seed, start)
    label = np.zeros(n, dtype=np.int64)
    kind = [""] * n
    spans: list[tuple[str, int, int]] = []
    if faults:
        slot = n // (len(FAULT_KINDS) + 1)
        for i, k in enumerate(FAULT_KINDS):
            length = int(min(slot // 2, max(60, slot // 4)))
            s = slot * (i + 1) - length // 2
            inject(values, k, s, s + length, rng)
            label[s : s + length] = 1
            kind[s : s + length] = [k] * length
            spans.append((k, s, s + length))
    return PumpLog(values.astype(np.float32), label, kind, spans)


def write_csv(path: str, log: PumpLog, with_labels: bool = True) -> str:
    with open(path, "w") as fh:
        fh.write("t," + ",".join(CHANNELS) + (",anomaly,fault" if with_labels else "") + "\n")
        for i, row in enumerate(log.values):
            cells = [str(i)] + [f"{v:.5f}" for v in row]
            if with_labels:
                cells += [str(int(log.label[i])), log.kind[i]]
            fh.write(",".join(cells) + "\n")
    return path
