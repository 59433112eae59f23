"""The portable build of the C step (cstep.py's `-O3` fallback: SSE2 on x86-64) at the
sizes benchmarks/cstep_floor.py times, where its batch-1 GEMV reads a pre-broadcast
input and prefetches its weight rows (the weights no longer fit L1).

Against onnxruntime for LSTM-64, GRU-64, LSTM-64x2 and an RNN and an LSTM with a
partial last block, at batch 1 (the GEMV) and 4 (the GEMM tiles); and, from the
assembly, that those two SSE2-only measures are where they belong: in the SSE2 GEMV
kernels of a model over L1, not in one that fits L1, and not in an AVX2 build (which has
FMA and broadcast loads). No timing is asserted.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import make_model

from edgernn.runtime import Model, csource
from edgernn.runtime import cstep as cstep_mod
from edgernn.runtime.numpy_backend import Layer, Network

pytestmark = [
    pytest.mark.skipif(cstep_mod._compiler() is None, reason="no C compiler"),
    pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 flags"),
]
TOL = 1e-5
PORTABLE = ["-O3"]
# (cell, layers, hidden): the three benchmark models, then partial last blocks over L1
KEYS = [("lstm", 1, 64), ("gru", 1, 64), ("lstm", 2, 64), ("rnn", 1, 100), ("lstm", 1, 72)]


@pytest.fixture(scope="module")
def portable_models(tmp_path_factory):
    from edgernn.export.onnx_export import export_onnx

    base = tmp_path_factory.mktemp("portable")
    out = {}
    for cell, layers, hidden in KEYS:
        path = str(base / f"{cell}-{layers}x{hidden}.onnx")
        export_onnx(make_model(cell, layers, hidden=hidden, seed=hidden + layers), path)
        out[(cell, layers, hidden)] = path
    return out


def _outputs(model: Model, batch: int, seed: int):
    rng = np.random.default_rng(seed)
    state = {
        s.input: (0.5 * rng.standard_normal((s.layers, batch, s.hidden))).astype(np.float32)
        for s in model.meta.states
    }
    std, mean = np.asarray(model.meta.norm_std), np.asarray(model.meta.norm_mean)
    X = (rng.standard_normal((30, batch, model.n_channels)) * std + mean).astype(np.float32)
    stream = model.stream(state=state, batch=batch)
    half = len(X) // 2
    y = np.concatenate([np.stack([stream.step(x) for x in X[:half]]), stream.run(X[half:])])
    return y / np.asarray(std, np.float32), stream.state


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("key", KEYS, ids=[f"{c}-{n}x{h}" for c, n, h in KEYS])
def test_portable_build_matches_onnxruntime(portable_models, key, batch, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGERNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cstep_mod, "_FLAG_SETS", (PORTABLE,))
    ref = Model(portable_models[key], backend="onnxruntime")
    fast = Model(portable_models[key], backend="c")
    assert fast.backend == "c"
    y_ref, s_ref = _outputs(ref, batch, seed=key[2] + batch)
    y, s = _outputs(fast, batch, seed=key[2] + batch)
    assert np.ptp(y_ref) > 0
    assert np.max(np.abs(y - y_ref)) <= TOL
    for name in s_ref:
        assert np.max(np.abs(s[name] - s_ref[name])) <= TOL


def _network(cell: str, hidden: int) -> Network:
    rng = np.random.default_rng(hidden)
    k = 1 + hidden
    w = rng.standard_normal((k, {"rnn": 1}.get(cell, 4) * hidden)).astype(np.float32)
    if cell == "gru":
        w[1:, 2 * hidden : 3 * hidden] = 0
        w[:1, 3 * hidden :] = 0
    return Network(
        cell=cell, nonlinearity="tanh", hidden=hidden,
        layers=[Layer(w, np.zeros(w.shape[1], np.float32), hidden)],
        mean=np.zeros(1, np.float32), std=np.ones(1, np.float32),
        head_weight=np.ones((hidden, 1), np.float32), head_bias=np.zeros(1, np.float32),
        residual=False,
    )  # fmt: skip


def _gemv_asm(tmp_path: Path, net: Network, flags: list[str]) -> str:
    """The assembly of the batch-1 GEMV kernels (gemv16/32/64, gemv_gru) of `net`."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    src, asm = tmp_path / "step.c", tmp_path / "step.s"
    src.write_text(csource.generate_source(net))
    proc = subprocess.run(
        ["gcc", "-O3", *flags, "-S", "-o", asm, src], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = asm.read_text()
    kernels = re.findall(r"^(gemv[\w.]*):\n(.*?)^\s*\.size\s+\1,", text, re.M | re.S)
    assert kernels, "no gemv kernel in the assembly"
    return "\n".join(body for _, body in kernels)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_sse2_gemv_over_l1_prefetches_and_loads_a_broadcast_input(tmp_path, cell):
    gemv = _gemv_asm(tmp_path, _network(cell, 64), [])
    assert re.search(r"\bprefetcht0\b", gemv), "no weight prefetch in the SSE2 GEMV"
    assert not re.search(r"\bshufps\b", gemv), "the SSE2 GEMV still splats by shuffles"
    assert re.search(r"\bmulps\b", gemv) and re.search(r"\baddps\b", gemv)


def test_sse2_gemv_within_l1_does_not_prefetch(tmp_path):
    net = _network("lstm", 16)  # 17 x 64 floats: 4 KB
    gemv = _gemv_asm(tmp_path, net, [])
    assert not re.search(r"\bprefetch", gemv)
    assert not re.search(r"\bshufps\b", gemv)


def test_avx2_gemv_keeps_broadcast_loads_and_no_prefetch(tmp_path):
    gemv = _gemv_asm(tmp_path, _network("lstm", 64), ["-mavx2", "-mfma"])
    assert not re.search(r"\bprefetch", gemv)
    assert re.search(r"vbroadcastss", gemv) and re.search(r"vfmadd\w*ps\s.*%ymm", gemv)
