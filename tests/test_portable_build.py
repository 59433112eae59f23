"""The portable build of the C step (cstep.py's `-O3` fallback) on x86-64, at the sizes
benchmarks/cstep_floor.py times.

That build holds two copies of the step: one compiled for SSE2 (its batch-1 GEMV reads a
pre-broadcast input and, once the weights no longer fit L1, prefetches its rows) and
one under `#pragma GCC target("avx2,fma")`, which runs where the CPU has AVX2 and FMA;
-DEDGERNN_NO_DISPATCH leaves the SSE2 copy alone. Both against onnxruntime for LSTM-64,
GRU-64, LSTM-64x2 and an RNN and an LSTM with a partial last block, at batch 1 (the GEMV)
and 4 (the GEMM tiles); and, from the assembly and the library, that each measure is
where it belongs: the SSE2 ones in the SSE2 copy only, the AVX2 copy only in a GCC
x86-64 build without AVX2 (not in an AVX2 build, nor in an AArch64 one), and the library
running the copy the CPU supports. No timing is asserted.
"""

from __future__ import annotations

import ctypes
import platform
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import make_model, random_start, stream_outputs

from edgernn.runtime import Model, csource
from edgernn.runtime import cstep as cstep_mod
from edgernn.runtime.numpy_backend import Layer, Network

pytestmark = [
    pytest.mark.skipif(cstep_mod._compiler() is None, reason="no C compiler"),
    pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 flags"),
]
TOL = 1e-5
BUILDS = {"portable": ["-O3"], "sse2": ["-O3", "-DEDGERNN_NO_DISPATCH"]}
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


@pytest.mark.parametrize("build", sorted(BUILDS))
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("key", KEYS, ids=[f"{c}-{n}x{h}" for c, n, h in KEYS])
def test_portable_build_matches_onnxruntime(
    portable_models, key, batch, build, tmp_path, monkeypatch
):
    monkeypatch.setenv("EDGERNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cstep_mod, "_FLAG_SETS", (BUILDS[build],))
    ref = Model(portable_models[key], backend="onnxruntime")
    fast = Model(portable_models[key], backend="c")
    assert fast.backend == "c"
    state, X = random_start(ref, batch, seed=key[2] + batch, steps=30)
    y_ref, s_ref = stream_outputs(ref, state, X, batch)
    y, s = stream_outputs(fast, state, X, batch)
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


def _asm(tmp_path: Path, net: Network, flags: list[str], compiler: str = "gcc") -> str:
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} not installed")
    src, asm = tmp_path / "step.c", tmp_path / "step.s"
    src.write_text(csource.generate_source(net))
    proc = subprocess.run(
        [compiler, "-O3", *flags, "-S", "-o", asm, src], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return asm.read_text()


def _gemv(asm: str, avx2_copy: bool = False) -> str:
    """The batch-1 GEMV kernels (gemv16/32/64, gemv_gru) of one copy of the step."""
    kernels = re.findall(r"^(gemv[\w.]*):\n(.*?)^\s*\.size\s+\1,", asm, re.M | re.S)
    bodies = [body for name, body in kernels if ("_avx2" in name) == avx2_copy]
    assert bodies, "no gemv kernel of that copy in the assembly"
    return "\n".join(bodies)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("build", sorted(BUILDS))
def test_sse2_gemv_over_l1_prefetches_and_loads_a_broadcast_input(tmp_path, cell, build):
    gemv = _gemv(_asm(tmp_path, _network(cell, 64), BUILDS[build][1:]))
    assert re.search(r"\bprefetcht0\b", gemv), "no weight prefetch in the SSE2 GEMV"
    assert not re.search(r"\bshufps\b", gemv), "the SSE2 GEMV still splats by shuffles"
    assert re.search(r"\bmulps\b", gemv) and re.search(r"\baddps\b", gemv)


def test_sse2_gemv_within_l1_does_not_prefetch(tmp_path):
    gemv = _gemv(_asm(tmp_path, _network("lstm", 16), []))  # 17 x 64 floats: 4 KB
    assert not re.search(r"\bprefetch", gemv)
    assert not re.search(r"\bshufps\b", gemv)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_portable_build_has_an_avx2_copy(tmp_path, cell):
    asm = _asm(tmp_path, _network(cell, 64), [])
    gemv = _gemv(asm, avx2_copy=True)
    assert re.search(r"vfmadd\w*ps\s.*%ymm", gemv) and re.search(r"vbroadcastss", gemv)
    assert not re.search(r"\bprefetch", gemv)  # the SSE2-only measures stay out of it
    assert re.search(r"^step_all_avx2:", asm, re.M)


@pytest.mark.parametrize(
    "compiler, flags",
    [
        ("gcc", ["-DEDGERNN_NO_DISPATCH"]),
        ("gcc", ["-mavx2", "-mfma"]),
        ("aarch64-linux-gnu-gcc", ["-march=armv8-a"]),
        ("arm-linux-gnueabihf-gcc", ["-march=armv7-a", "-mfpu=neon-vfpv4", "-mfloat-abi=hard"]),
    ],
    ids=["no-dispatch", "avx2", "aarch64", "armv7"],
)
def test_one_copy_where_there_is_no_dispatch(tmp_path, compiler, flags):
    asm = _asm(tmp_path, _network("lstm", 64), flags, compiler)
    assert "_avx2" not in asm
    if flags == ["-mavx2", "-mfma"]:
        gemv = _gemv(asm)
        assert not re.search(r"\bprefetch", gemv)
        assert re.search(r"vbroadcastss", gemv) and re.search(r"vfmadd\w*ps\s.*%ymm", gemv)


def _cpu_has_avx2_fma() -> bool:
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    return "avx2" in flags and "fma" in flags


@pytest.mark.skipif(platform.system() != "Linux", reason="reads /proc/cpuinfo")
@pytest.mark.parametrize("build", sorted(BUILDS))
def test_the_library_runs_the_copy_the_cpu_supports(tmp_path, build):
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    src, lib = tmp_path / "step.c", tmp_path / "step.so"
    src.write_text(csource.generate_source(_network("gru", 32)))
    subprocess.run(["gcc", *BUILDS[build], "-shared", "-fPIC", "-o", lib, src], check=True)
    target = ctypes.CDLL(str(lib)).edgernn_step_target()
    assert target == (2 if build == "portable" and _cpu_has_avx2_fma() else 0)
