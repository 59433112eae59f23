"""Streaming anomaly detection on forecast errors (numpy, and a C kernel compiled at
load where there is a compiler; runs on the Pi).

    from edgernn.runtime.detector import Detector
    det = Detector.from_meta(model)                  # or Detector(channels=[...])
    out = det.score_one(sample, forecast, time=ts)   # one sample at a time
    out.surprisal  # -log10 P(a normal sample scores this high): 3 = a 1-in-1,000 sample
    out.score      # the surprisal, or 0 inside an open alert below its peak so far
    out.anomaly    # surprisal >= det.threshold = log10(samples per false alarm)
    out.onset      # this sample opens an alert event (det.events: the closed ones)
    block = det.score_block(X, F, times)             # N rows at once: the same verdicts

Modules, by responsibility: normalise.py (per-channel robust error scale with floors,
seasonal baseline), tails.py (online tail probabilities), alerts.py (events),
config.py (options, the false-alarm budget, JSON/TOML config files), timeparse.py
(timestamps), core.py (the Detector that ties them together), outputs.py (what it
returns: DetectorOutput, BlockResult), calibration.py (calibrate(): what export stores),
kernel.c and ckernel.py (the per-sample computation compiled, `Detector(backend="c")`,
the default where it builds; numpy is the reference and the fallback).
"""

from edgernn.runtime.detector.alerts import Event
from edgernn.runtime.detector.calibration import CALIBRATION_FORMAT, calibrate
from edgernn.runtime.detector.config import (
    CONFIG_KEYS,
    Budget,
    DetectorConfig,
    load_config,
    make_config,
    parse_budget,
)
from edgernn.runtime.detector.core import Detector
from edgernn.runtime.detector.normalise import robust_center_scale
from edgernn.runtime.detector.outputs import BlockResult, DetectorOutput
from edgernn.runtime.detector.timeparse import format_time, parse_time

__all__ = [
    "BlockResult",
    "Budget",
    "CALIBRATION_FORMAT",
    "CONFIG_KEYS",
    "Detector",
    "DetectorConfig",
    "DetectorOutput",
    "Event",
    "calibrate",
    "format_time",
    "load_config",
    "make_config",
    "parse_budget",
    "parse_time",
    "robust_center_scale",
]
