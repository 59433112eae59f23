"""A validation benchmark for the SKAB detector, built without SKAB's test labels.

    python benchmarks/skab_validation.py ../shared/data/skab --out /tmp/skab-v2 --residual --grid fifth
    python benchmarks/skab_validation.py --frontier /tmp/skab-v2/grid-fifth.json
    python benchmarks/skab_validation.py ../shared/data/skab --out /tmp/skab-v2 --residual --short \
        --chosen --settings '{"alarm_every": 100}'

Why: every detector setting used on SKAB must be chosen here, never on the test part of
the labelled files. The SKAB data read: `anomaly-free/anomaly-free.csv` (normal
operation, 9,405 rows at 1 Hz) and, for the short part (--short, grid "fourth"), the
first 400 rows of each labelled file, the part SKAB's protocol gives for fitting; no
row of a test part is ever read.

The long part. Episodes mimic SKAB's protocol: a window of 1,150 consecutive anomaly-free rows (first
400 train the forecaster and warm the detector up, the other 750 are the test part);
windows start every 400 rows, so 21 windows, each with its own model (ESN, 64 units;
residual with --residual, as benchmarks/skab.py trains it). Every window gives 8 episodes:
one clean, and one per fault kind below, injected into its test part with labels we
generate. Magnitudes are in units of each channel's std over the anomaly-free file
(sigma) and the ranges were fixed before any run, from what the faults do physically
(SKAB's README names the experiments; nothing was read off a test part):

    valve_inlet    closing the inlet valve starves the pump: flow -2..8 sigma,
                   pressure -1..4, current -0.5..2, accelerometers +0..2 (turbulence)
    valve_outlet   closing the outlet valve: flow -2..8, pressure +1..4, current -0.5..2
    valve_small    a small valve movement seen on the flow alone, -1..3 sigma (added in
                   the fourth grid: in the labelled files' training parts pressure takes
                   5-7 distinct values and current is noise of 0.3-0.5 A, so a small
                   closure need not show there; faults that move one sensor favour
                   combining the worst channels over the mean of all)
    leak           fluid leak or addition: pressure and flow +-1..4 (one random sign)
    imbalance      rotor imbalance on both accelerometers, +2..8 sigma, one of the
                   shapes SKAB lists (sharp burst, linear, step, exponential), and noise
                   x1.5..3; current +0..1
    cavitation     flow -1..4, flow/pressure/current/accelerometer noise x2..4
    hot_water      water of increased temperature: Temperature and Thermocouple
                   +2..6 sigma, reached over 60..180 s, then held

Each fault lasts 120..420 s (an operator's manipulation of minutes), starts anywhere in
the test part leaving 30 s before and after, ramps in over 2..10 s (valves turn), and
its labelled span is its whole duration. Normal behaviour that must NOT be flagged:
in every episode, Temperature and Thermocouple drift linearly by -3..3 sigma over the
test part and Voltage by -1..1 sigma (room and mains drift), unlabelled.

The short part (added for the third attempt, because the long part was optimistic about
misses twice: 36 % vs 74 % and 21 % vs 37 % on the blind test runs): the anomaly-free
file runs at one operating point, while 20 of the 34 labelled experiments (valve1,
valve2) run at a quarter of its flow with quantised, nearly constant accelerometers.
Each labelled file's training part (rows 0..399) is split 250 / 150: a model is trained
on the first 250 rows, the detector warms up on them, and each fault kind is injected
into the last 150 rows, lasting 40..140 s to the end (a 150-row part cannot hold both a
fault and a recovery; the long part measures the recovery). Real drift, no added one.

Everything is seeded (`--seed`, default 0). Scoring: point-wise F1 / FAR / MAR pooled
over all test rows, as SKAB. The selection rule, fixed before the grid ran: among the
grid's settings, the lowest validation MAR with validation FAR <= 10 % (headroom for
the test files' own drift, since Conv-AE's FAR is 13.55 %); ties to the lower FAR.
Grids "fourth" and "fifth" (both parts), fixed before they ran: FAR <= 10 % on each
part, the lowest mean of the two parts' MAR, ties to the lower mean FAR.

Forecasts come from the exported ONNX model (Model + Monitor, sample by sample) and are
cached in OUT/episodes.npz; the detector is then replayed on (sample, forecast) pairs,
which is exactly what Monitor does with horizon 1 (checked by `--check`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from types import SimpleNamespace
from typing import Optional

import numpy as np
from skab import CHOSEN as SKAB_CHOSEN
from skab import TRAIN_ROWS as SKAB_TRAIN_ROWS  # benchmarks/skab.py, beside this script
from skab import labelled_files

from edgernn.runtime.csvdata import read_csv
from edgernn.runtime.detector import Detector
from edgernn.runtime.evaluate import point_metrics
from edgernn.runtime.evaluate_commands import stream_file, train_and_export, write_table_head
from edgernn.train.config import TrainConfig

TRAIN_ROWS, TEST_ROWS, STRIDE = 400, 750, 400
# The short part: training parts of the labelled files (see build_short).
SHORT_TRAIN_ROWS = 250
SHORT_DURATIONS, SHORT_GAP = (40, 140), 10
PARTS = {
    "long": {"file": "episodes.npz", "calibrations": "calibrations.json"},
    "short": {"file": "episodes-short.npz", "calibrations": "calibrations-short.json"},
}
FAULTS = (
    "valve_inlet", "valve_outlet", "valve_small", "leak", "imbalance", "cavitation", "hot_water",
)  # fmt: skip
CHANNELS = (
    "Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature",
    "Thermocouple", "Voltage", "Volume Flow RateRMS",
)  # fmt: skip
A1, A2, CUR, PRES, TEMP, THERMO, VOLT, FLOW = range(8)
MAX_FAR = 0.10  # the selection rule's FAR bound (see the docstring)


# ------------------------------------------------------------------------- injection
def _ramp(n: int, rise: int) -> np.ndarray:
    """(n,) 0 -> 1 over `rise` samples, then 1."""
    return np.minimum(np.arange(1, n + 1) / max(rise, 1), 1.0)


def _shape(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Imbalance profiles after SKAB's list (other/5..9): 0 -> 1 in various ways."""
    t = np.arange(n) / n
    if kind == "sharp":  # short bursts on a modest level
        bursts = (rng.random(n) < 0.08).astype(float)
        return 0.4 + 0.6 * bursts
    if kind == "linear":
        return t
    if kind == "exponential":
        return np.expm1(4 * t) / np.expm1(4)
    return np.ones(n)  # step


def inject(
    x: np.ndarray,
    fault: str,
    sigma: np.ndarray,
    rng: np.random.Generator,
    train_rows: int = TRAIN_ROWS,
    durations: tuple[int, int] = (120, 420),
    gap: int = 30,
    drift: bool = True,
    to_end: bool = False,
):
    """Inject `fault` into the test part of x (T, C) (rows from train_rows on) in place;
    returns labels (T,). The fault lasts durations[0]..durations[1] samples and leaves
    `gap` clean samples before and after (before only, and lasts to the end, with
    `to_end`); `drift` adds the unlabelled normal drifts."""
    labels = np.zeros(len(x), dtype=np.int8)
    test = np.arange(train_rows, len(x))
    n_test = len(test)
    if drift:  # normal drifts first (every episode, clean ones too): not labelled
        ramp = np.linspace(0.0, 1.0, n_test)
        for ch, span in ((TEMP, 3.0), (THERMO, 3.0), (VOLT, 1.0)):
            x[test, ch] += rng.uniform(-span, span) * sigma[ch] * ramp
    if fault == "clean":
        return labels
    duration = int(rng.integers(durations[0], durations[1] + 1))
    if to_end:
        start = len(x) - duration
    else:
        start = train_rows + int(rng.integers(gap, n_test - duration - gap + 1))
    span = slice(start, start + duration)
    on = _ramp(duration, int(rng.integers(2, 11)))  # (D,) the fault's onset profile
    u = rng.uniform

    def shift(ch: int, lo: float, hi: float, sign: float = 1.0, profile=on) -> None:
        x[span, ch] += sign * u(lo, hi) * sigma[ch] * profile

    def noisier(ch: int, lo: float, hi: float) -> None:
        extra = np.sqrt(u(lo, hi) ** 2 - 1.0) * sigma[ch]
        x[span, ch] += extra * on * rng.standard_normal(duration)

    if fault in ("valve_inlet", "valve_outlet"):
        shift(FLOW, 2, 8, -1)
        shift(PRES, 1, 4, -1 if fault == "valve_inlet" else 1)
        shift(CUR, 0.5, 2, -1)
        if fault == "valve_inlet":
            shift(A1, 0, 2)
            shift(A2, 0, 2)
    elif fault == "valve_small":  # seen on the flow alone (see the docstring)
        shift(FLOW, 1, 3, -1)
    elif fault == "leak":
        sign = rng.choice([-1.0, 1.0])
        shift(PRES, 1, 4, sign)
        shift(FLOW, 1, 4, sign)
    elif fault == "imbalance":
        profile = _shape(str(rng.choice(["sharp", "linear", "step", "exponential"])), duration, rng)
        shift(A1, 2, 8, profile=on * profile)
        shift(A2, 2, 8, profile=on * profile)
        noisier(A1, 1.5, 3)
        noisier(A2, 1.5, 3)
        shift(CUR, 0, 1)
    elif fault == "cavitation":
        shift(FLOW, 1, 4, -1)
        for ch in (FLOW, PRES, CUR, A1, A2):
            noisier(ch, 2, 4)
    elif fault == "hot_water":
        heat = _ramp(duration, int(rng.integers(60, 181)))
        shift(TEMP, 2, 6, profile=heat)
        shift(THERMO, 2, 6, profile=heat)
    else:
        raise ValueError(f"unknown fault {fault!r}")
    labels[span] = 1
    return labels


# -------------------------------------------------------------------- building episodes
def forecasts(model_path: str, x: np.ndarray) -> np.ndarray:
    """(T, C) forecast made for each sample (row 0: NaN, none is due), via Monitor."""
    from edgernn.runtime.model import Model
    from edgernn.runtime.monitor import Monitor

    monitor = Monitor(Model(model_path))
    out = np.full(x.shape, np.nan)
    for t in range(len(x) - 1):
        out[t + 1] = monitor.process(x[t])["forecast"]
    return out


def _anomaly_free(data_dir: str) -> np.ndarray:
    table = read_csv(os.path.join(data_dir, "anomaly-free", "anomaly-free.csv"))
    if tuple(table.channels) != CHANNELS:
        sys.exit(f"skab_validation.py: unexpected channels {table.channels}")
    return table.values.astype(np.float64)


def _episodes(window: np.ndarray, train_rows: int, train_cfg: TrainConfig, sigma, rng,
              **inject_kwargs) -> tuple[list, dict]:  # fmt: skip
    """A model trained on the window's first train_rows rows, then one episode per
    fault kind (clean first): [(x, forecasts, labels, kind)], calibration."""
    from edgernn.runtime.model import Model

    episodes = []
    with tempfile.TemporaryDirectory(prefix="skab-val-") as tmp:
        head = os.path.join(tmp, "head.csv")
        write_table_head(SimpleNamespace(channels=list(CHANNELS), values=window), train_rows, head)
        model_path = train_and_export([head], train_cfg, tmp, CHANNELS, log=lambda m: None)
        calibration = Model(model_path).meta.extra.get("detector")
        for fault in ("clean", *FAULTS):
            x = window.copy()
            labels = inject(x, fault, sigma, rng, train_rows=train_rows, **inject_kwargs)
            x = x.astype(np.float32).astype(np.float64)  # what the sensor sends
            episodes.append((x, forecasts(model_path, x), labels, fault))
    return episodes, calibration


def _save(out_dir: str, part: str, episodes: list, windows: list, calibrations: list,
          sigma: np.ndarray, train_rows: int) -> dict:  # fmt: skip
    x, f, y, kind = zip(*episodes)
    data = dict(x=np.stack(x), f=np.stack(f), y=np.stack(y), kind=np.array(kind),
                window=np.array(windows), sigma=sigma, train_rows=train_rows)  # fmt: skip
    np.savez_compressed(os.path.join(out_dir, PARTS[part]["file"]), **data)
    with open(os.path.join(out_dir, PARTS[part]["calibrations"]), "w") as fh:
        json.dump(calibrations, fh)
    data["calibrations"] = calibrations
    return data


def build(data_dir: str, out_dir: str, seed: int, train_cfg: TrainConfig) -> dict:
    """The "long" part: one model per anomaly-free window, every fault injected."""
    values = _anomaly_free(data_dir)
    sigma = values.std(axis=0)  # (C,) the magnitude unit
    rng = np.random.default_rng(seed)
    length = TRAIN_ROWS + TEST_ROWS
    starts = range(0, len(values) - length + 1, STRIDE)
    episodes, windows, calibrations = [], [], []
    for w, s in enumerate(starts):
        made, calibration = _episodes(values[s : s + length], TRAIN_ROWS, train_cfg, sigma, rng)
        episodes += made
        windows += [w] * len(made)
        calibrations.append(calibration)
        print(f"window {w + 1}/{len(starts)} built", file=sys.stderr)
    return _save(out_dir, "long", episodes, windows, calibrations, sigma, TRAIN_ROWS)


def build_short(data_dir: str, out_dir: str, seed: int, train_cfg: TrainConfig) -> dict:
    """The short part (see the module docstring): each labelled file's training part
    split 250 / 150, faults injected into the last 150 to the end. A file whose
    training part holds a labelled anomaly (other/2) is left out: its warm-up would not
    be normal."""
    sigma = _anomaly_free(data_dir).std(axis=0)  # the same physical unit as "long"
    rng = np.random.default_rng(seed + 1)
    episodes, windows, calibrations = [], [], []
    for path in labelled_files(data_dir):
        table = read_csv(path, ignore=["changepoint"], keep=["anomaly"])
        if tuple(table.channels) != CHANNELS:
            sys.exit(f"skab_validation.py: unexpected channels in {path}")
        if table.extra["anomaly"][:SKAB_TRAIN_ROWS].any():
            print(f"{path}: training part holds a labelled anomaly; left out", file=sys.stderr)
            continue
        part = table.values[:SKAB_TRAIN_ROWS].astype(np.float64)  # never the test part
        made, calibration = _episodes(
            part, SHORT_TRAIN_ROWS, train_cfg, sigma, rng, durations=SHORT_DURATIONS,
            gap=SHORT_GAP, drift=False, to_end=True,
        )  # fmt: skip
        episodes += made
        windows += [len(calibrations)] * len(made)
        calibrations.append(calibration)
        print(f"{path} built", file=sys.stderr)
    return _save(out_dir, "short", episodes, windows, calibrations, sigma, SHORT_TRAIN_ROWS)


def load(out_dir: str, part: str = "long") -> Optional[dict]:
    path = os.path.join(out_dir, PARTS[part]["file"])
    if not os.path.exists(path):
        return None
    with np.load(path) as npz:
        data = {k: npz[k] for k in npz.files}
    if "train_rows" not in data:  # a cache from before the short part: rebuild it
        return None
    with open(os.path.join(out_dir, PARTS[part]["calibrations"])) as fh:
        data["calibrations"] = json.load(fh)
    return data


# ------------------------------------------------------------------------------ scoring
def detector_for(calibration: dict, settings: dict) -> Detector:
    meta = SimpleNamespace(
        channels=list(CHANNELS), n_channels=len(CHANNELS), error_scale=None,
        extra={"detector": calibration},
    )  # fmt: skip
    return Detector.from_meta(meta, **settings)


def replay(x: np.ndarray, f: np.ndarray, det: Detector) -> np.ndarray:
    """Flags (T,) as Monitor gives them: row 0 has no forecast due."""
    flags = np.zeros(len(x), dtype=np.int8)
    for t in range(1, len(x)):
        flags[t] = det.score_one(x[t], f[t]).anomaly
    return flags


def evaluate(data: dict, settings: dict) -> dict:
    """Pooled point metrics over the test parts, overall and per fault kind. The
    detector warms up on each episode's training rows (as benchmarks/skab.py does)."""
    train_rows = int(data["train_rows"])
    settings = dict(settings, warmup=train_rows - 1)
    flags = []
    for i in range(len(data["x"])):
        det = detector_for(data["calibrations"][data["window"][i]], settings)
        flags.append(replay(data["x"][i], data["f"][i], det)[train_rows:])
    flags = np.stack(flags)
    labels = data["y"][:, train_rows:]
    result = {"all": point_metrics(labels.ravel(), flags.ravel())}
    for kind in ("clean", *FAULTS):
        rows = data["kind"] == kind
        result[kind] = point_metrics(labels[rows].ravel(), flags[rows].ravel())
    return result


def evaluate_parts(parts: dict, settings: dict) -> dict:
    """evaluate() on each part; with both, "all" averages their FAR and MAR (the rule
    judges each part on its own, so the long part's many rows do not drown the short)."""
    results = {name: evaluate(data, settings) for name, data in parts.items()}
    if len(results) == 1:
        return next(iter(results.values()))
    mean = {
        k: float(np.mean([r["all"][k] for r in results.values()])) for k in ("far", "mar", "f1")
    }
    kinds = {kind: {"recall": float(np.mean([r[kind]["recall"] for r in results.values()])),
                    "far": float(np.mean([r[kind]["far"] for r in results.values()]))}
             for kind in ("clean", *FAULTS)}  # fmt: skip
    return {"all": mean, **kinds, "parts": results}


_CACHE: dict = {}  # the episodes, for the grid's forked workers


def _evaluate_cached(settings: dict) -> dict:
    return evaluate_parts(_CACHE["parts"], settings)


def summary_line(name: str, r: dict) -> str:
    a = r["all"]
    per_kind = " ".join(
        f"{k.split('_')[-1][:5]} {100 * r[k]['recall']:3.0f}" for k in FAULTS
    )  # recall % per fault kind
    parts = "".join(
        f" | {p} FAR {100 * q['all']['far']:5.2f} MAR {100 * q['all']['mar']:5.2f}"
        for p, q in r.get("parts", {}).items()
    )
    return (
        f"{name:44s} F1 {a['f1']:.3f} FAR {100 * a['far']:5.2f} MAR {100 * a['mar']:5.2f} "
        f"clean-FAR {100 * r['clean']['far']:5.2f} | {per_kind}{parts}"
    )


# The grids of the earlier detector ("first" .. "fourth", its settings in the README)
# are gone with it. "fifth" is the grid of the calibrated-surprisal detector, fixed
# before it ran: the false-alarm budget (samples per false alarm: on SKAB's point-wise
# FAR, flags inside and after faults count too, so budgets far below the test rows'
# count), the reference term on or off (a 10-sample EWMA against the training part,
# without the thermocouple, which drifts in normal operation: the earlier grids'
# finding), and the error scale frozen after the warm-up or tracking (12 settings: the
# detector runs about 0.5 ms a sample for 8 channels, 300,000 samples a setting).
NO_THERMOCOUPLE = [c for c in CHANNELS if c != "Thermocouple"]
BASE: dict = dict(warmup=TRAIN_ROWS - 1)


def grid(name: str) -> list[dict]:
    if name == "ninth":
        # "eighth" again, beside the level-shift statistic's span 10 (the held-out
        # protocol favours it over 20): SKAB's setting revalidated before the default
        # changed. Chose span 20, budget 1,000 again (CHOSEN pins it).
        product = itertools.product([200.0, 1000.0, 5000.0], [20.0, 10.0])
        return [dict(BASE, alarm_every=b, span=span, scale_span=0.0, reference=10.0,
                     reference_channels=NO_THERMOCOUPLE) for b, span in product]  # fmt: skip
    if name == "eighth":
        # "seventh" met no FAR bound (long part 31-43 %: the frozen reference and scale
        # alarm on the injected temperature / voltage drift); the same with larger budgets.
        return [dict(BASE, alarm_every=b, scale_span=0.0, reference=10.0,
                     reference_channels=NO_THERMOCOUPLE) for b in (200.0, 1000.0, 5000.0)]  # fmt: skip
    if name == "seventh":
        # The detector as committed after the calibration suite and the demo (tails
        # extrapolated as exponential in the value): the two budgets around the best
        # of "fifth" (partial, on the previous tails), reference on, error scale frozen.
        return [dict(BASE, alarm_every=b, scale_span=0.0, reference=10.0,
                     reference_channels=NO_THERMOCOUPLE) for b in (20.0, 50.0)]  # fmt: skip
    if name == "sixth":
        # Added while "fifth" ran, before its result: the drift statistic (distance from a
        # 200-sample slow average), off by default since the calibration suite showed it
        # holding flat streams in alarm after normal steps; the first validation run of
        # the new detector had it on (long part MAR 20 %).
        product = itertools.product([20.0, 50.0], [0.0, 10.0])
        configs = []
        for budget, reference in product:
            c = dict(BASE, alarm_every=budget, level_span=200.0)
            if reference:
                c.update(reference=reference, reference_channels=NO_THERMOCOUPLE)
            configs.append(c)
        return configs
    if name != "fifth":
        raise SystemExit(f"skab_validation.py: grid {name!r} belonged to the earlier detector")
    product = itertools.product([20.0, 50.0, 200.0], [0.0, 10.0], [0.0, 200.0])
    configs = []
    for budget, reference, scale_span in product:
        c = dict(BASE, alarm_every=budget, scale_span=scale_span)
        if reference:
            c.update(reference=reference, reference_channels=NO_THERMOCOUPLE)
        configs.append(c)
    return configs


RULES = {
    False: f"FAR <= {100 * MAX_FAR:.0f} %, lowest MAR",
    True: f"FAR <= {100 * MAX_FAR:.0f} % on each part, lowest mean MAR",
}


def pick(results: list[tuple[dict, dict]], max_far: float) -> Optional[tuple[dict, dict]]:
    """The rule with a FAR bound: lowest MAR among FAR <= max_far; ties to the lower FAR.
    With both parts, the bound must hold on each and MAR is the mean of the two. None
    when no setting meets the bound."""

    def far_ok(r: dict) -> bool:
        return all(q["all"]["far"] <= max_far for q in r.get("parts", {"all": r}).values())

    ok = [(s, r) for s, r in results if far_ok(r)]
    if not ok:
        return None
    return min(ok, key=lambda sr: (round(sr[1]["all"]["mar"], 6), sr[1]["all"]["far"]))


def select(results: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """The selection rule (see the module docstring): pick() with MAX_FAR."""
    chosen = pick(results, MAX_FAR)
    if chosen is None:
        sys.exit("skab_validation.py: no setting meets the FAR bound")
    return chosen


FRONTIER_BOUNDS = (0.08, 0.10, 0.12, 0.135, 0.15, 0.20)


def frontier(results: list[tuple[dict, dict]], bounds=FRONTIER_BOUNDS) -> list[tuple]:
    """What a looser FAR bound would buy: the rule's pick under each bound
    [(bound, settings, result)]; a bound no setting meets is left out. Shows how far the
    whole grid is from a MAR target, not just the chosen setting."""
    picks = [(bound, pick(results, bound)) for bound in bounds]
    return [(bound, *chosen) for bound, chosen in picks if chosen is not None]


def print_frontier(results: list[tuple[dict, dict]]) -> None:
    print("\nfrontier (the rule's pick under each FAR bound):")
    for bound, s, r in frontier(results):
        print(f"FAR <= {100 * bound:4.1f} %: {short(s)}")
        print(summary_line("", r))


def short(settings: dict) -> str:
    def show(k, v):
        if k == "reference_channels":
            return "no-thermocouple" if v == NO_THERMOCOUPLE else f"channels={v}"
        return f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"

    skip = ("warmup",)
    return " ".join(show(k, v) for k, v in settings.items() if k not in skip)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "data_dir",
        nargs="?",
        help="SKAB data folder (anomaly-free/; --short: the labelled files' first 400 rows)",
    )
    ap.add_argument("--out", help="cache / output folder (required unless --frontier)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--residual", action="store_true",
        help="forecasters predict the change from the last sample (use a separate --out)",
    )  # fmt: skip
    ap.add_argument("--rebuild", action="store_true", help="ignore the cached episodes")
    ap.add_argument(
        "--grid", choices=["fifth", "sixth", "seventh", "eighth", "ninth"],
        help="run the tuning grid and select (on both parts)",
    )  # fmt: skip
    ap.add_argument(
        "--short", action="store_true",
        help="also score the short part (the labelled files' training parts)",
    )  # fmt: skip
    ap.add_argument(
        "--frontier", metavar="GRID_JSON",
        help="print a saved grid's frontier (OUT/grid-NAME.json) and exit; nothing is built",
    )  # fmt: skip
    ap.add_argument("--settings", default="{}", help="JSON detector settings over the base")
    ap.add_argument(
        "--chosen", action="store_true",
        help="the base is benchmarks/skab.py's CHOSEN (default: the detector's defaults)",
    )  # fmt: skip
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="grid processes")
    ap.add_argument(
        "--check", action="store_true",
        help="also stream one episode per fault through Model + Monitor + Detector and "
        "compare with the replay",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if args.frontier:
        try:
            with open(args.frontier) as fh:
                results = [tuple(sr) for sr in json.load(fh)["results"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            sys.exit(f"skab_validation.py: {args.frontier}: not a saved grid ({e})")
        print_frontier(results)
        return 0
    if not args.out or not args.data_dir:
        ap.error("DATA_DIR and --out are required (unless --frontier)")
    os.makedirs(args.out, exist_ok=True)
    train_cfg = TrainConfig(cell="esn", residual=args.residual, seed=args.seed, progress=False)
    started = time.perf_counter()
    wanted = ["long", "short"] if args.short or args.grid else ["long"]
    builders = {"long": build, "short": build_short}
    parts = {}
    for part in wanted:
        data = None if args.rebuild else load(args.out, part)
        parts[part] = data or builders[part](args.data_dir, args.out, args.seed, train_cfg)
        data, rows = parts[part], int(parts[part]["train_rows"])
        print(f"{part}: {len(data['x'])} episodes, {data['y'][:, rows:].size} test rows, "
              f"{100 * data['y'][:, rows:].mean():.1f} % labelled", file=sys.stderr)  # fmt: skip
    _CACHE["parts"] = parts
    if args.grid:
        results = []
        settings_list = grid(args.grid)
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:  # forked: data is shared
            for settings, r in zip(settings_list, pool.map(_evaluate_cached, settings_list)):
                results.append((settings, r))
                print(summary_line(short(settings), r), flush=True)
        chosen, r = select(results)
        print(f"\nchosen ({RULES[True]}):")
        print(summary_line(short(chosen), r))
        print_frontier(results)
        with open(os.path.join(args.out, f"grid-{args.grid}.json"), "w") as fh:
            json.dump({"results": results, "chosen": chosen}, fh, indent=1)
    else:
        base = dict(BASE, **SKAB_CHOSEN) if args.chosen else BASE
        settings = {**base, **json.loads(args.settings)}
        print(summary_line(short(settings), evaluate_parts(parts, settings)))
        if args.check:
            check_replay(args, parts["long"], settings, train_cfg)
    print(f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


def check_replay(args, data: dict, settings: dict, train_cfg: TrainConfig) -> None:
    """The replay equals a full Model + Monitor + Detector stream (window 0)."""
    with tempfile.TemporaryDirectory(prefix="skab-val-") as tmp:
        x0 = data["x"][0]
        head = os.path.join(tmp, "head.csv")
        write_table_head(SimpleNamespace(channels=list(CHANNELS), values=x0), TRAIN_ROWS, head)
        model_path = train_and_export([head], train_cfg, tmp, CHANNELS, log=lambda m: None)
        for i in np.flatnonzero(data["window"] == 0):
            x = data["x"][i]
            flags = stream_file(model_path, _Rows(x), settings).flags
            det = detector_for(data["calibrations"][0], settings)
            same = np.array_equal(flags, replay(x, data["f"][i], det))
            print(f"check {data['kind'][i]:12s} replay == stream: {same}")


class _Rows:
    """The slice of a Table that stream_file reads."""

    def __init__(self, values: np.ndarray):
        self.values = values.astype(np.float32)
        self.channels, self.time = list(CHANNELS), None

    def __len__(self) -> int:
        return len(self.values)


if __name__ == "__main__":
    sys.exit(main())
