"""The SKAB validation benchmark's fault injection: seeded, labels exactly the fault's
span inside the test part, the training part untouched, clean episodes unlabelled."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def sv():
    return load_benchmark("skab_validation")  # it imports benchmarks/skab.py


def window(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1150, 8)) + 10.0


@pytest.mark.parametrize(
    "fault",
    ["clean", *"valve_inlet valve_outlet valve_small leak imbalance cavitation hot_water".split()],
)
def test_injection_is_seeded_and_labels_one_span_in_the_test_part(sv, fault):
    sigma = np.ones(8)
    x1, x2, clean = window(), window(), window()
    y1 = sv.inject(x1, fault, sigma, np.random.default_rng(5))
    y2 = sv.inject(x2, fault, sigma, np.random.default_rng(5))
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert np.array_equal(x1[: sv.TRAIN_ROWS], clean[: sv.TRAIN_ROWS])
    onsets = np.flatnonzero(np.diff(y1, prepend=0) == 1)
    if fault == "clean":
        assert not y1.any()
        return
    assert len(onsets) == 1 and onsets[0] >= sv.TRAIN_ROWS + 30
    span = np.flatnonzero(y1)
    assert 120 <= len(span) <= 420 and span[-1] <= len(y1) - 31
    changed = np.abs(x1 - clean).max(axis=1) > 0
    # Outside the fault only the unlabelled drift of temperatures and voltage moves.
    outside = ~y1.astype(bool) & (np.arange(len(y1)) >= sv.TRAIN_ROWS)
    moved = np.abs(x1 - clean)[outside][:, [sv.A1, sv.A2, sv.CUR, sv.PRES, sv.FLOW]]
    assert changed[span].any() and moved.max() == 0.0


def test_selection_rule_takes_lowest_mar_under_the_far_bound(sv):
    def r(far, mar):
        return {"all": {"far": far, "mar": mar}}

    results = [({"a": 1}, r(0.05, 0.5)), ({"a": 2}, r(0.09, 0.3)), ({"a": 3}, r(0.2, 0.1))]
    assert sv.select(results)[0] == {"a": 2}


def test_short_part_faults_last_to_the_end(sv):
    x, clean = window()[:400], window()[:400]
    y = sv.inject(x, "valve_small", np.ones(8), np.random.default_rng(3), train_rows=250,
                  durations=sv.SHORT_DURATIONS, gap=sv.SHORT_GAP, drift=False, to_end=True)  # fmt: skip
    span = np.flatnonzero(y)
    assert y[-1] == 1 and np.all(np.diff(span) == 1)
    assert sv.SHORT_DURATIONS[0] <= len(span) <= sv.SHORT_DURATIONS[1]
    moved = np.flatnonzero(np.abs(x - clean).max(axis=1) > 0)
    assert set(moved) <= set(span) and (x - clean)[span][:, sv.FLOW].max() < 0  # flow only
    assert np.array_equal((x - clean)[:, [c for c in range(8) if c != sv.FLOW]], np.zeros((400, 7)))


def test_selection_with_parts_needs_the_far_bound_on_each_part(sv):
    def r(parts):
        q = {p: {"all": {"far": far, "mar": mar}} for p, (far, mar) in parts.items()}
        mean = {k: np.mean([v["all"][k] for v in q.values()]) for k in ("far", "mar")}
        return {"all": mean, "parts": q}

    results = [
        ({"a": 1}, r({"long": (0.02, 0.2), "short": (0.15, 0.1)})),  # short FAR too high
        ({"a": 2}, r({"long": (0.09, 0.3), "short": (0.01, 0.3)})),
        ({"a": 3}, r({"long": (0.05, 0.4), "short": (0.01, 0.3)})),
    ]
    assert sv.select(results)[0] == {"a": 2}


def test_short_part_reads_only_training_parts(sv, tmp_path):
    """Built from a folder in SKAB's layout: every episode is the file's first 400 rows
    (the test part, here wildly different, is never read) and a file whose training
    part holds a labelled anomaly is left out."""
    pytest.importorskip("torch")
    from edgernn.train.config import TrainConfig

    channels = sv.CHANNELS
    rng = np.random.default_rng(0)
    os.makedirs(tmp_path / "anomaly-free")
    af = 10.0 + rng.standard_normal((600, 8))
    np.savetxt(tmp_path / "anomaly-free" / "anomaly-free.csv", af, delimiter=";",
               header=";".join(channels), comments="", fmt="%.6f")  # fmt: skip
    heads = {}
    for folder, n, label_at in (("valve1", 0, None), ("other", 2, 100)):
        os.makedirs(tmp_path / folder)
        x = 10.0 + rng.standard_normal((700, 8))
        x[400:] += 1000.0  # the test part: would show in any episode that read it
        labels = np.zeros(700, dtype=int)
        if label_at is not None:
            labels[label_at:] = 1
        table = np.column_stack([x, labels, np.zeros(700, dtype=int)])
        np.savetxt(tmp_path / folder / f"{n}.csv", table, delimiter=";", comments="",
                   header=";".join([*channels, "anomaly", "changepoint"]), fmt="%.6f")  # fmt: skip
        heads[folder] = x[:400]
    out = tmp_path / "out"
    os.makedirs(out)
    data = sv.build_short(
        str(tmp_path), str(out), 0, TrainConfig(cell="esn", hidden=8, progress=False)
    )
    assert len(data["x"]) == 1 + len(sv.FAULTS)  # other/2 left out
    assert set(data["window"]) == {0} and data["x"].shape[1] == 400
    assert np.abs(data["x"]).max() < 100.0
    assert np.allclose(data["x"][0], heads["valve1"], atol=1e-4)  # the clean episode
    assert int(data["train_rows"]) == sv.SHORT_TRAIN_ROWS
    loaded = sv.load(str(out), "short")
    assert np.array_equal(loaded["x"], data["x"]) and len(loaded["calibrations"]) == 1


def test_frontier_is_the_rule_under_each_bound(sv):
    def r(far_long, far_short, mar):
        parts = {"long": {"all": {"far": far_long}}, "short": {"all": {"far": far_short}}}
        return {"all": {"far": (far_long + far_short) / 2, "mar": mar}, "parts": parts}

    results = [
        ({"a": 1}, r(0.07, 0.01, 0.30)),
        ({"a": 2}, r(0.09, 0.02, 0.25)),
        ({"a": 3}, r(0.14, 0.01, 0.20)),  # only a looser bound admits it
        ({"a": 4}, r(0.05, 0.16, 0.10)),  # the short part's FAR keeps it out up to 15 %
    ]
    picks = {
        bound: s["a"] for bound, s, _ in sv.frontier(results, bounds=(0.06, 0.08, 0.10, 0.15, 0.2))
    }
    assert picks == {0.08: 1, 0.10: 2, 0.15: 3, 0.2: 4}  # 6 %: nothing qualifies, left out
    assert sv.frontier(results, bounds=(0.10,))[0][1] == sv.select(results)[0]
