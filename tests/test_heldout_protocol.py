"""The held-out protocol's accounting (benchmarks/heldout_protocol.py): the rows each
injected anomaly lasts, and the bound that unflags only a fault's rows past its window."""

from __future__ import annotations

import numpy as np
from conftest import load_benchmark

from edgernn.runtime.evaluate import nab_windows


def _protocol():
    return load_benchmark("heldout_protocol")


def _stream(hp, kind, seed, score):
    x, labels, anomalies = hp.make_stream(kind, seed)
    return {"kind": kind, "seed": seed, "rows": len(x), "labels": labels.tolist(),
            "anomalies": anomalies, "edgernn": score(len(x)).tolist()}  # fmt: skip


def test_a_stuck_value_lasts_its_duration_and_its_rows_are_the_anomalys():
    hp = _protocol()
    for seed in range(8):
        x, _, anomalies = hp.make_stream("cpu", seed)
        s = _stream(hp, "cpu", seed, np.zeros)
        rows = hp.anomaly_rows(s)
        for kind, start in anomalies:
            assert rows[start : start + hp.DURATION[kind]].all()
            if kind == "stuck":
                end = min(len(x), start + hp.DURATION[kind])
                assert np.all(x[start:end] == x[start - 1])
        assert rows.sum() < len(x)


def test_the_bound_unflags_only_a_faults_rows_past_its_window():
    hp = _protocol()
    s = _stream(hp, "traffic", 1, np.ones)  # every row flagged
    flags = hp.unflag_past_windows(s, 0.5)
    inside = np.zeros(s["rows"], dtype=bool)
    for a, b in nab_windows(np.asarray(s["labels"]), centred_points=True):
        inside[a : b + 1] = True
    assert flags[inside].all()  # windows keep every flag
    assert flags[~hp.anomaly_rows(s)].all()  # so do normal rows
    assert not flags.all()  # a fault outlasting its window loses the rows past it
    with_bound = hp.nab_total([s], lambda d: hp.unflag_past_windows(d, 0.5))
    assert with_bound > hp.nab_total([s], lambda d: np.asarray(d["edgernn"]) >= 0.5)
