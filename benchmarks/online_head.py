"""Does learning the forecaster's head online (runtime/adapt.py) help the detector?

    python benchmarks/online_head.py ../shared/data/skab --out /tmp/online-head --workers 2

Measured without any SKAB test label, side by side in one run, the detector with the
trained head and with the head corrected online (flagged samples not learnt), on:

* skab-long: the long part of benchmarks/skab_validation.py: windows of SKAB's
  anomaly-free file, an ESN (64 units, residual) trained on the first 400 rows as
  benchmarks/skab.py trains it, each fault kind injected into the other 750 rows, and
  the unlabelled normal drifts of temperature and voltage; pooled FAR / MAR / F1.
* drift: synthetic streams whose normal behaviour drifts (the kind of stream the online
  head is for): a daily-ish oscillation plus noise whose gain and offset move slowly
  after training, an LSTM forecaster trained on the first 15 % (as a user would with
  `edgernn train`), one injected spike, level shift or variance change per stream;
  false alarms per budgeted one on the normal part and anomalies detected.

Both with the detector's defaults (warm-up = the training rows) and, for SKAB, with
benchmarks/skab.py's CHOSEN options. Results: OUT/online_head.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import skab_validation as sv  # noqa: E402  (beside this script)
from skab import CHOSEN as SKAB_CHOSEN  # noqa: E402

from edgernn.runtime.adapt import OnlineHead, learn_weight  # noqa: E402
from edgernn.runtime.detector import Detector  # noqa: E402
from edgernn.runtime.evaluate import point_metrics  # noqa: E402
from edgernn.runtime.model import Model  # noqa: E402
from edgernn.train.config import TrainConfig  # noqa: E402

BUDGET = 1000.0  # the drift suite's false-alarm budget (samples per false alarm)
HEAD_OPTIONS: dict = {}  # OnlineHead options (--head '{"memory": 500}'); defaults: adapt.py


def replay(model_path: str, x: np.ndarray, settings: dict, calibration, adapt: bool):
    """Flags (T,) and scores of the detector over x, the forecaster's head trained or
    corrected online; exactly the live order: score x_t against the forecast made for
    it, learn x_t (weight 0 if flagged), forecast from x_t."""
    model = Model(model_path)
    Y, H = model.stream().run_features(x.astype(np.float32))
    meta = SimpleNamespace(
        channels=list(model.channels), n_channels=model.n_channels,
        error_scale=model.meta.error_scale, extra={"detector": calibration},
    )  # fmt: skip
    det = Detector.from_meta(meta, **settings)
    head = OnlineHead.for_model(model, **HEAD_OPTIONS) if adapt else None
    flags = np.zeros(len(x), dtype=np.int8)
    scores = np.zeros(len(x))
    due = None
    for t in range(len(x)):
        verdict = None
        if due is not None:
            out = det.score_one(x[t], due)
            flags[t], scores[t] = out.anomaly, out.score
            verdict = {"anomaly": out.anomaly, "score": out.score, "threshold": out.threshold}
        if head is None:
            due = Y[t].astype(np.float64)
        else:
            weight = learn_weight(verdict)
            due = head.step(x[t], Y[t], H[t], weight)
    return flags, scores


# ---------------------------------------------------------------------------- skab-long
def skab_window(args) -> list[dict]:
    data_dir, w, start, seed, settings_list = args
    values = sv._anomaly_free(data_dir)
    sigma = values.std(axis=0)
    rng = np.random.default_rng(seed * 1000 + w)
    window = values[start : start + sv.TRAIN_ROWS + sv.TEST_ROWS]
    cfg = TrainConfig(cell="esn", residual=True, seed=seed, progress=False)
    rows = []
    with tempfile.TemporaryDirectory(prefix="online-head-") as tmp:
        head_csv = os.path.join(tmp, "head.csv")
        sv.write_table_head(
            SimpleNamespace(channels=list(sv.CHANNELS), values=window), sv.TRAIN_ROWS, head_csv
        )
        model_path = sv.train_and_export([head_csv], cfg, tmp, sv.CHANNELS, log=lambda m: None)
        calibration = Model(model_path).meta.extra.get("detector")
        for fault in ("clean", *sv.FAULTS):
            x = window.copy()
            labels = sv.inject(x, fault, sigma, rng)
            x = x.astype(np.float32).astype(np.float64)
            for name, settings in settings_list:
                settings = dict(settings, warmup=sv.TRAIN_ROWS - 1)
                for adapt in (False, True):
                    flags, _ = replay(model_path, x, settings, calibration, adapt)
                    rows.append(dict(
                        settings=name, adapt=adapt, fault=fault,
                        y=labels[sv.TRAIN_ROWS:].tolist(), p=flags[sv.TRAIN_ROWS:].tolist(),
                    ))  # fmt: skip
    return rows


def skab_long(data_dir: str, seed: int, workers: int, every: int) -> dict:
    values = sv._anomaly_free(data_dir)
    length = sv.TRAIN_ROWS + sv.TEST_ROWS
    starts = list(range(0, len(values) - length + 1, sv.STRIDE))[::every]
    settings_list = [("defaults", {}), ("skab-chosen", dict(SKAB_CHOSEN))]
    jobs = [(data_dir, w, s, seed, settings_list) for w, s in enumerate(starts)]
    with ProcessPoolExecutor(workers) as pool:
        rows = [r for part in pool.map(skab_window, jobs) for r in part]
    out = {}
    for name, _ in settings_list:
        for adapt in (False, True):
            sel = [r for r in rows if r["settings"] == name and r["adapt"] == adapt]
            y = np.concatenate([r["y"] for r in sel])
            p = np.concatenate([r["p"] for r in sel])
            clean = [r for r in sel if r["fault"] == "clean"]
            m = point_metrics(y, p)
            m["clean_far"] = float(np.mean(np.concatenate([r["p"] for r in clean])))
            out[f"{name}/{'online' if adapt else 'trained'}"] = m
    return {"windows": len(starts), "results": out}


# -------------------------------------------------------------------------------- drift
def drift_stream(seed: int, n: int = 8000, kind: str = "spike"):
    """A drifting normal stream (2 channels) and one injected anomaly; labels."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    train = int(0.15 * n)
    base = np.sin(2 * np.pi * t / 288.0)[:, None] * np.array([1.0, 0.6])
    base[:, 1] += 0.4 * np.sin(2 * np.pi * t / 97.0)
    after = np.clip((t - train) / (n - train), 0, 1)[:, None]
    gain = 1.0 + rng.uniform(-0.6, 0.6, 2) * after  # slow change of amplitude ...
    offset = rng.uniform(-1.5, 1.5, 2) * after  # ... and of level: normal, unlabelled
    x = base * gain + offset + 0.1 * rng.standard_normal((n, 2))
    labels = np.zeros(n, dtype=np.int8)
    start = int(rng.integers(train + 2000, n - 400))
    span = slice(start, start + 150)
    if kind == "spike":
        span = slice(start, start + 1)
        x[span, 0] += 2.0
    elif kind == "shift":
        x[span, int(rng.integers(2))] += 1.0
    elif kind == "variance":
        x[span] += 0.3 * rng.standard_normal((150, 2))
    labels[span] = 1
    return x, labels, train


def drift_job(args) -> list[dict]:
    seed, kind = args
    x, labels, train = drift_stream(seed, kind=kind)
    cfg = TrainConfig(cell="lstm", seed=seed, progress=False)
    rows = []
    with tempfile.TemporaryDirectory(prefix="online-head-drift-") as tmp:
        head_csv = os.path.join(tmp, "head.csv")
        sv.write_table_head(SimpleNamespace(channels=["a", "b"], values=x), train, head_csv)
        model_path = sv.train_and_export([head_csv], cfg, tmp, ["a", "b"], log=lambda m: None)
        calibration = Model(model_path).meta.extra.get("detector")
        settings = dict(alarm_every=BUDGET, warmup=train - 1)
        for adapt in (False, True):
            flags, _ = replay(model_path, x, settings, calibration, adapt)
            normal = labels[train:] == 0
            p = flags[train:]
            on = np.flatnonzero(labels)
            hit = bool(flags[on[0] : on[-1] + 31].any())
            # false alarms: onsets of flag runs on the normal part
            runs = np.flatnonzero(np.diff(np.concatenate([[0], p])) == 1)
            false = int(sum(1 for r in runs if normal[r]))
            rows.append(dict(kind=kind, seed=seed, adapt=adapt, detected=hit,
                             false_alarms=false, normal_rows=int(normal.sum())))  # fmt: skip
    return rows


def drift_suite(seeds: int, workers: int) -> dict:
    jobs = [(s, k) for s in range(seeds) for k in ("spike", "shift", "variance")]
    with ProcessPoolExecutor(workers) as pool:
        rows = [r for part in pool.map(drift_job, jobs) for r in part]
    out = {}
    for adapt in (False, True):
        sel = [r for r in rows if r["adapt"] == adapt]
        normal = sum(r["normal_rows"] for r in sel)
        false = sum(r["false_alarms"] for r in sel)
        out["online" if adapt else "trained"] = {
            "alarms_per_budget": false / (normal / BUDGET),
            **{f"detected_{k}": f"{sum(r['detected'] for r in sel if r['kind'] == k)}/{seeds}"
               for k in ("spike", "shift", "variance")},
        }  # fmt: skip
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", help="the SKAB folder (../shared/data/skab)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=4, help="drift streams per anomaly kind")
    ap.add_argument("--every", type=int, default=2, help="use every k-th SKAB window")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", choices=["skab", "drift"], default=None)
    ap.add_argument("--head", default="{}", help="OnlineHead options as JSON")
    args = ap.parse_args(argv)
    HEAD_OPTIONS.update(json.loads(args.head))
    os.makedirs(args.out, exist_ok=True)
    began = time.time()
    result = {}
    if args.only in (None, "drift"):
        result["drift"] = drift_suite(args.seeds, args.workers)
        print(json.dumps(result["drift"], indent=1))
    if args.only in (None, "skab"):
        result["skab_long"] = skab_long(args.data_dir, args.seed, args.workers, args.every)
        for name, m in result["skab_long"]["results"].items():
            print(f"{name:24s} F1 {m['f1']:.3f}  FAR {100 * m['far']:5.2f} %  "
                  f"MAR {100 * m['mar']:5.2f} %  clean-FAR {100 * m['clean_far']:5.2f} %")
    result["seconds"] = round(time.time() - began, 1)
    with open(os.path.join(args.out, "online_head.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
