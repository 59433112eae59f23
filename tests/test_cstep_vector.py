"""The generated C step is SIMD code on every target with SIMD, per the compiler's own report.

The matmul kernels and the gate nonlinearities are written on GCC's vector type; the
compiler lowers each vector operation to SIMD instructions where the target has them
and otherwise expands it piecewise into scalar code, saying so under
-Wvector-operation-performance. So for x86 (SSE2, AVX2), AArch64 and ARMv7 NEON: no
operation expanded piecewise, and the assembly holds the vector instructions the GEMV
and the gates are made of (FMAs on vector registers in the gemv kernels; vector
min/max (AArch64: compare and select) and divide or reciprocal in the gates). ARMv6 (VFP, no SIMD) must report the
expansion, which shows the report is read. -fopt-info-vec is asked for too: it reports
the loops the compiler vectorised by itself (the [x, h] copies), alongside.

The Raspberry Pi's own cores are checked by name as well (an LSTM, 2 x 24): AArch64 with
-mcpu=cortex-a53 (Pi 3, Zero 2), cortex-a72 (Pi 4) and cortex-a76 (Pi 5) on a 64-bit OS;
ARMv7 NEON with -mcpu=cortex-a7 -mfpu=neon-vfpv4 (Pi 2) and -mcpu=cortex-a72 -mfpu=auto;
and the flags cstep.py's `-march=native` resolves to on each Pi under Debian bookworm's
gcc 12 (armv8-a+crc, armv8.2-a+fp16+rcpc+dotprod; armhf: armv7ve+simd, armv8-a+crc+simd),
each with vectorised loops in the -fopt-info-vec report. Debian armhf's plain defaults
(armv7-a+fp: VFPv3-D16, no NEON), which is what cstep.py's portable `-O3` fallback
compiles for on a 32-bit userland, report the piecewise expansion like ARMv6: scalar code.

Compiles only (`-S`), no emulator: a second per target. Skips a cross target whose
compiler is not installed (apt-get install gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgernn.runtime import csource
from edgernn.runtime.numpy_backend import Layer, Network

PIECEWISE = "-Wvector-operation-performance"
# target: (compiler, flags, GEMV FMA on vector registers, gate min/max, gate divide)
TARGETS = {
    "x86-64 (SSE2)": ("gcc", [], r"\bmulps\b", r"\bminps\b", r"\bdivps\b"),
    "x86-64 (AVX2)": (
        "gcc", ["-mavx2", "-mfma"], r"vfmadd\w*ps\s.*%ymm", r"vminps\s.*%ymm",
        r"vdivps\s.*%ymm",
    ),
    "aarch64": (
        "aarch64-linux-gnu-gcc", ["-march=armv8-a"], r"fmla\s+v\d+\.4s", r"fcmgt\s+v\d+\.4s",
        r"fdiv\s+v\d+\.4s",
    ),
    "armv7-neon": (
        "arm-linux-gnueabihf-gcc", ["-march=armv7-a", "-mfpu=neon-vfpv4", "-mfloat-abi=hard"],
        r"vfma\.f32\s+q", r"vmin\.f32\s+q", r"vrecpe\.f32\s+q",
    ),
}  # fmt: skip
# The Pi's cores by name (64-bit OS: AArch64; 32-bit OS: ARMv7 NEON, hard float), and the
# flags cstep.py's `-O3 -march=native` becomes on each (GCC 12's driver, as `make pi-check`
# shows with each CPU's /proc/cpuinfo in Debian bookworm userlands).
_A64 = ("aarch64-linux-gnu-gcc", r"fmla\s+v\d+\.4s", r"fcmgt\s+v\d+\.4s", r"fdiv\s+v\d+\.4s")
_A32 = ("arm-linux-gnueabihf-gcc", r"vfma\.f32\s+q", r"vmin\.f32\s+q", r"vrecpe\.f32\s+q")
PI_TARGETS = {
    "aarch64 -mcpu=cortex-a53 (Pi 3, Zero 2)": (["-mcpu=cortex-a53"], _A64),
    "aarch64 -mcpu=cortex-a72 (Pi 4)": (["-mcpu=cortex-a72"], _A64),
    "aarch64 -mcpu=cortex-a76 (Pi 5)": (["-mcpu=cortex-a76"], _A64),
    "aarch64 native on Pi 3/4": (["-march=armv8-a+crc"], _A64),
    "aarch64 native on Pi 5": (["-march=armv8.2-a+fp16+rcpc+dotprod"], _A64),
    "armv7 -mcpu=cortex-a7 neon-vfpv4 (Pi 2)": (
        ["-mcpu=cortex-a7", "-mfpu=neon-vfpv4", "-mfloat-abi=hard"], _A32),
    "armv7 -mcpu=cortex-a72 -mfpu=auto (Pi 4, 32-bit)": (
        ["-mcpu=cortex-a72", "-mfpu=auto", "-mfloat-abi=hard"], _A32),
    "armhf native on Pi 2": (["-march=armv7ve+simd", "-mfloat-abi=hard"], _A32),
    "armhf native on Pi 3/4": (["-march=armv8-a+crc+simd", "-mfloat-abi=hard"], _A32),
}  # fmt: skip
SCALAR_ONLY = ("arm-linux-gnueabihf-gcc", ["-march=armv6", "-mfpu=vfp", "-mfloat-abi=hard"])
# Debian armhf's configured defaults (--with-arch=armv7-a+fp --with-float=hard): no NEON.
ARMHF_DEFAULT = ("arm-linux-gnueabihf-gcc", [])
CELLS = [("lstm", 2, 24), ("gru", 1, 20), ("rnn", 1, 16)]


def _network(cell: str, n_layers: int, hidden: int, channels: int = 3) -> Network:
    rng = np.random.default_rng(hidden)
    layers = []
    for i in range(n_layers):
        n_in = channels if i == 0 else hidden
        w = rng.standard_normal((n_in + hidden, {"rnn": 1}.get(cell, 4) * hidden))
        if cell == "gru":
            w[n_in:, 2 * hidden : 3 * hidden] = 0
            w[:n_in, 3 * hidden :] = 0
        layers.append(Layer(w.astype(np.float32), np.zeros(w.shape[1], np.float32), hidden))
    return Network(
        cell=cell, nonlinearity="tanh", hidden=hidden, layers=layers,
        mean=np.zeros(channels, np.float32), std=np.ones(channels, np.float32),
        head_weight=np.ones((hidden, channels), np.float32),
        head_bias=np.zeros(channels, np.float32), residual=False,
    )  # fmt: skip


def _compile(tmp_path: Path, compiler: str, flags: list[str], net: Network):
    """(assembly, the compiler's diagnostics) of the generated step."""
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} not installed")
    src, asm = tmp_path / "step.c", tmp_path / "step.s"
    src.write_text(csource.generate_source(net))
    proc = subprocess.run(
        [compiler, "-O3", *flags, PIECEWISE, "-fopt-info-vec", "-S", "-o", asm, src],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return asm.read_text(), proc.stderr


def _function(asm: str, prefix: str) -> str:
    """The assembly of every (cloned) function whose name starts with `prefix`."""
    out = []
    for m in re.finditer(rf"^({prefix}[\w.]*):\n(.*?)^\s*\.size\s+\1,", asm, re.M | re.S):
        out.append(m.group(2))
    assert out, f"no function {prefix}* in the assembly"
    return "\n".join(out)


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("spec", CELLS, ids=[f"{c}-{n}x{h}" for c, n, h in CELLS])
def test_step_is_simd_on(tmp_path: Path, target: str, spec):
    compiler, flags, fma, minmax, divide = TARGETS[target]
    net = _network(*spec)
    asm, report = _compile(tmp_path, compiler, flags, net)
    assert "expanded piecewise" not in report and "expanded in parallel" not in report, report
    # -fopt-info-vec: the loops left to the compiler (the [x, h] copies) are vectorised too
    assert re.search(r"optimized: loop vectorized using (16|32|64) byte vectors", report), report
    gemv = _function(asm, "gemv")
    assert re.search(fma, gemv), f"{target}: no vector multiply-add in the GEMV kernels"
    assert re.search(minmax, asm), f"{target}: the tanh clamp is not a vector min"
    if net.cell != "rnn" or net.nonlinearity == "tanh":
        assert re.search(divide, asm), f"{target}: the tanh division is not a vector one"


@pytest.mark.parametrize("target", sorted(PI_TARGETS))
def test_step_is_simd_on_the_pi(tmp_path: Path, target: str):
    flags, (compiler, fma, minmax, divide) = PI_TARGETS[target]
    asm, report = _compile(tmp_path, compiler, flags, _network("lstm", 2, 24))
    assert "expanded piecewise" not in report and "expanded in parallel" not in report, report
    assert re.search(r"optimized: loop vectorized using 16 byte vectors", report), report
    assert re.search(fma, _function(asm, "gemv")), f"{target}: no vector FMA in the GEMV"
    assert re.search(minmax, asm) and re.search(divide, asm), f"{target}: scalar gates"


def test_scalar_target_reports_the_expansion(tmp_path: Path):
    compiler, flags = SCALAR_ONLY
    _, report = _compile(tmp_path, compiler, [*flags, "-marm"], _network("lstm", 1, 16))
    assert "expanded piecewise" in report  # so the check above reads a real report


def test_armhf_defaults_are_scalar(tmp_path: Path):
    """What a 32-bit Debian userland compiles when no CPU is named (cstep.py's portable
    `-O3` fallback): VFPv3-D16 without NEON, so the vector code is expanded piecewise."""
    compiler, flags = ARMHF_DEFAULT
    asm, report = _compile(tmp_path, compiler, flags, _network("lstm", 1, 16))
    assert "expanded piecewise" in report
    assert not re.search(r"vfma\.f32\s+q", asm)
