"""The SKAB validation benchmark's fault injection: seeded, labels exactly the fault's
span inside the test part, the training part untouched, clean episodes unlabelled."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

PATH = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "skab_validation.py")


@pytest.fixture(scope="module")
def sv():
    spec = importlib.util.spec_from_file_location("skab_validation", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
