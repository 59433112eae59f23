"""The compiled C step against the numpy step over the shapes its blocking has edges at.

The generated code splits the hidden units into blocks of 16 (a partial last block goes
through padded copies), runs batch 1 through the GEMV kernels and larger batches through
GEMM tiles of 6 rows in chunks of 16 rows, and pads the head to 16. Each network here
is checked at batch sizes on both sides of those edges, from a random non-zero state,
over a few steps (the state ping-pongs between the two buffers).
"""

from __future__ import annotations

import platform

import numpy as np
import pytest

from edgernn.runtime import cstep
from edgernn.runtime.numpy_backend import N_STATE, Layer, Network, fused_step

pytestmark = pytest.mark.skipif(cstep._compiler() is None, reason="no C compiler")
TOL = 1e-5
BATCHES = (1, 5, 6, 7, 17)
# (cell, nonlinearity, layers, hidden, channels)
SHAPES = [
    ("lstm", "tanh", 2, 16, 3),  # one full block; head of exactly 16
    ("lstm", "tanh", 1, 40, 1),  # a partial last block
    ("gru", "tanh", 2, 20, 4),
    ("gru", "tanh", 1, 48, 2),
    ("rnn", "tanh", 1, 100, 2),  # 64-unit RNN blocks, partial last
    ("rnn", "relu", 2, 24, 17),  # more channels than a head row holds
]


def _network(cell, nonlinearity, n_layers, hidden, channels) -> Network:
    rng = np.random.default_rng(hidden * 7 + channels)
    layers = []
    for i in range(n_layers):
        n_in = channels if i == 0 else hidden
        k = n_in + hidden
        w = rng.standard_normal((k, {"rnn": 1}.get(cell, 4) * hidden)) / np.sqrt(k)
        if cell == "gru":
            w[n_in:, 2 * hidden : 3 * hidden] = 0
            w[:n_in, 3 * hidden :] = 0
        bias = 0.1 * rng.standard_normal(w.shape[1])
        layers.append(Layer(w.astype(np.float32), bias.astype(np.float32), hidden))
    return Network(
        cell=cell, nonlinearity=nonlinearity, hidden=hidden, layers=layers,
        mean=rng.uniform(-3, 3, channels).astype(np.float32),
        std=rng.uniform(0.5, 2, channels).astype(np.float32),
        head_weight=(0.3 * rng.standard_normal((hidden, channels))).astype(np.float32),
        head_bias=(0.1 * rng.standard_normal(channels)).astype(np.float32), residual=True,
    )  # fmt: skip


@pytest.mark.parametrize(
    "shape", SHAPES, ids=[f"{c}-{a}-{n}x{h}-c{ch}" for c, a, n, h, ch in SHAPES]
)
def test_c_step_matches_numpy_at_every_edge(shape, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGERNN_CACHE_DIR", str(tmp_path))
    _check(cstep.CStep(_network(*shape)))


# the other vector widths: 4 floats (the portable SSE2 build), 8 (AVX2 without AVX-512)
OTHER_BUILDS = {"portable": ["-O3"], "avx2": ["-O3", "-mavx2", "-mfma"]}


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 flags")
@pytest.mark.parametrize("build", sorted(OTHER_BUILDS))
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[3], SHAPES[5]], ids=["lstm", "gru", "rnn"])
def test_other_vector_widths_match_numpy(shape, build, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGERNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cstep, "_FLAG_SETS", (OTHER_BUILDS[build],))
    _check(cstep.CStep(_network(*shape)))


def _check(step: cstep.CStep) -> None:
    net = step.net
    rng = np.random.default_rng(3)
    for batch in BATCHES:
        dims = (N_STATE[net.cell], len(net.layers), batch, net.hidden)
        states = (
            (0.5 * rng.standard_normal(dims)).astype(np.float32),
            np.zeros(dims, np.float32),
        )
        x = np.empty((batch, net.n_channels), np.float32)
        y = np.empty_like(x)
        _, address = step.bind(x, y, states)
        want_s, want_y, s_next = states[0].copy(), np.empty_like(x), np.empty(dims, np.float32)
        for t in range(3):
            x[:] = net.mean + net.std * rng.standard_normal(x.shape)
            fused_step(net, x, want_s, s_next, want_y)
            want_s, s_next = s_next, want_s
            assert step.lib.edgernn_step(address, t % 2) == 0
            got_s = states[(t + 1) % 2]
            assert np.max(np.abs((y - want_y) / net.std)) <= TOL, (batch, t)
            assert np.max(np.abs(got_s - want_s)) <= TOL, (batch, t)
