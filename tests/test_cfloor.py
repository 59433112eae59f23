"""runtime/cfloor.py: the C step and the L2 floor timed in one library, and the report
section `edgernn bench` prints from them. Times are measured, never asserted."""

from __future__ import annotations

import numpy as np
import pytest

from edgernn.runtime import cfloor, cstep
from edgernn.runtime.model import Model
from edgernn.runtime.numpy_backend import Layer, Network

pytestmark = pytest.mark.skipif(cstep._compiler() is None, reason="no C compiler")


def _gru(hidden: int = 16, channels: int = 2) -> Network:
    rng = np.random.default_rng(0)
    k = channels + hidden
    w = rng.standard_normal((k, 4 * hidden)).astype(np.float32) / 4
    w[channels:, 2 * hidden : 3 * hidden] = 0
    w[:channels, 3 * hidden :] = 0
    return Network(
        cell="gru", nonlinearity="tanh", hidden=hidden,
        layers=[Layer(w, np.zeros(4 * hidden, np.float32), hidden)],
        mean=np.zeros(channels, np.float32), std=np.ones(channels, np.float32),
        head_weight=np.ones((hidden, channels), np.float32),
        head_bias=np.zeros(channels, np.float32), residual=False,
    )  # fmt: skip


def test_weight_count_is_what_one_step_reads():
    net = _gru(hidden=16, channels=2)
    # 3H gates over [x, h] (the zero blocks of the 4H stacking are not read) + the head
    assert cfloor.weight_count(net) == 18 * 3 * 16 + 16 * 2


def test_measure_floor_times_both_sides(tmp_path):
    result = cfloor.measure_floor(_gru(), rounds=6, target_us=20.0)
    assert len(result.step_rounds_us) == len(result.floor_rounds_us) == 6
    assert result.step_us > 0 and result.floor_us > 0 and result.ratio > 0
    assert result.weight_bytes == 4 * cfloor.weight_count(_gru())
    assert result.flags == cfloor.default_flag_sets()[0]
    entry = result.as_dict()
    assert entry["floor_gb_s"] == pytest.approx(entry["weight_bytes"] / entry["floor_us"] / 1e3)


def test_bench_section_from_a_c_model(exported_models):
    _, path = exported_models[("lstm", 2)]
    model = Model(path, backend="c")
    entry = cfloor.bench_entry(model, stream_step_p50_us=5.0, rounds=4)
    assert entry["stream_overhead_us"] == pytest.approx(5.0 - entry["step_us"])
    lines = cfloor.format_section([{"model": "m-lstm", "c_floor": entry}, {"model": "x"}])
    assert "L2 floor" in lines[1] and " ".join(entry["flags"]) in lines[1]
    assert len(lines) == 4 and lines[3].startswith("m-lstm")
    assert f"{entry['ratio']:.2f}" in lines[3]
    assert cfloor.format_section([{"model": "x", "c_floor": None}]) == []


def test_bench_entry_without_a_working_compiler_is_none(exported_models, monkeypatch):
    model = Model(exported_models[("gru", 1)][1], backend="c")
    monkeypatch.setattr(cstep, "_compiler", lambda: None)
    assert cfloor.bench_entry(model, 3.0, rounds=2) is None
