"""The generated C step on the Raspberry Pi's instruction sets, under qemu-user.

cstep.py compiles its C on the device with `-O3 -march=native`; here the same source is
cross-compiled for 64-bit ARM (Pi 3/4/5 on a 64-bit OS), 32-bit ARMv7 with NEON (Pi 2/3/4
on a 32-bit OS; onnxruntime has no wheel there, so this C step or numpy is what runs)
and ARMv6 with VFP only (Pi Zero/1), run on a random network from a random non-zero
state, and compared with the numpy step on this machine. This checks that the vector
extensions lower correctly without AVX (and without NEON), that `long` being 32-bit on
armv7 does not break the layout, and that a NaN sample is refused with the state
untouched. It says nothing about speed (qemu is an emulator).

Needs `apt-get install qemu-user gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf`; skips
without them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgernn.runtime import cstep
from edgernn.runtime.numpy_backend import N_STATE, Layer, Network, fused_step

TOL = 1e-5  # as the other backends: C's tanh approximation is within 4e-7 per call
T, BATCH, CHANNELS = 30, 3, 5
# target: (compiler, flags as the Pi's gcc would pick with -march=native, emulator)
TARGETS = {
    "aarch64": ("aarch64-linux-gnu-gcc", ["-march=armv8-a"], "qemu-aarch64"),
    "armv7-neon": (
        "arm-linux-gnueabihf-gcc",
        ["-march=armv7-a", "-mfpu=neon-vfpv4", "-mfloat-abi=hard"],
        "qemu-arm",
    ),
    "armv6-vfp": (
        "arm-linux-gnueabihf-gcc",
        ["-march=armv6", "-mfpu=vfp", "-mfloat-abi=hard", "-marm"],
        "qemu-arm",
    ),
}
NETS = [("lstm", "tanh", 2, 24), ("gru", "tanh", 1, 20), ("rnn", "relu", 2, 16)]

HARNESS = r"""
#include <stdio.h>
#include <math.h>

#define NB %(batch)d
#define T %(steps)d
#define NPARAMS %(n_params)d
#define NSTATE (S * L * NB * H)
static float P[NPARAMS] __attribute__((aligned(64)));
static float X[T * NB * C], Y[T * NB * C], S0[NSTATE], S1[NSTATE];
static float scratch[%(scratch)d] __attribute__((aligned(64)));

/* argv[1]: params, X, state (float32); argv[2]: Y, final state, then the state after
   a NaN sample was refused (must equal the final state). Exit 0 on success. */
int main(int argc, char **argv) {
    if (argc != 3) return 2;
    FILE *in = fopen(argv[1], "rb");
    if (!in || fread(P, 4, NPARAMS, in) != NPARAMS || fread(X, 4, T * NB * C, in) != T * NB * C
        || fread(S0, 4, NSTATE, in) != NSTATE) return 3;
    fclose(in);
    ctx_t ctx = {NB, P, X, Y, {S0, S1}, scratch};
    if (edgernn_run(&ctx, 0, T, X, Y) != 0) return 4;
    int cur = T & 1;
    float *end = cur ? S1 : S0;
    float x_nan[NB * C], y_nan[NB * C];
    for (int i = 0; i < NB * C; i++) { x_nan[i] = 1.0f; y_nan[i] = 0.0f; }
    x_nan[NB * C - 1] = NAN;
    ctx.x = x_nan;
    ctx.y = y_nan;
    if (edgernn_step(&ctx, cur) != 1) return 5;
    FILE *out = fopen(argv[2], "wb");
    if (!out) return 6;
    fwrite(Y, 4, T * NB * C, out);
    fwrite(end, 4, NSTATE, out);
    fwrite(end, 4, NSTATE, out);
    fclose(out);
    return 0;
}
"""


def _tools(target: str) -> tuple[str, list[str], str]:
    compiler, flags, emulator = TARGETS[target]
    for tool in (compiler, emulator):
        if shutil.which(tool) is None:
            pytest.skip(
                f"{tool} not installed "
                "(apt-get install qemu-user gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf)"
            )
    return compiler, flags, emulator


def _random_network(cell: str, nonlinearity: str, n_layers: int, hidden: int) -> Network:
    rng = np.random.default_rng(hidden * 10 + n_layers)
    gates = {"lstm": 4, "gru": 4, "rnn": 1}[cell] * hidden
    layers = []
    for i in range(n_layers):
        n_in = CHANNELS if i == 0 else hidden
        w = 0.4 * rng.standard_normal((n_in + hidden, gates)) / np.sqrt(n_in + hidden)
        if cell == "gru":  # as exported: the candidate's input part on the x rows only,
            w[n_in:, 2 * hidden : 3 * hidden] = 0  # its recurrent part on the h rows only
            w[:n_in, 3 * hidden :] = 0
        b = 0.1 * rng.standard_normal(gates)
        layers.append(Layer(w.astype(np.float32), b.astype(np.float32), hidden))
    return Network(
        cell=cell,
        nonlinearity=nonlinearity,
        hidden=hidden,
        layers=layers,
        mean=rng.uniform(-5, 5, CHANNELS).astype(np.float32),
        std=rng.uniform(0.5, 3, CHANNELS).astype(np.float32),
        head_weight=(0.3 * rng.standard_normal((hidden, CHANNELS))).astype(np.float32),
        head_bias=(0.1 * rng.standard_normal(CHANNELS)).astype(np.float32),
        residual=True,
    )


def _numpy_reference(net: Network, X: np.ndarray, state: np.ndarray):
    """(T, B, C) outputs and the final (S, L, B, H) state from the numpy step."""
    s_in, s_out = state.copy(), np.empty_like(state)
    ys = []
    for x in X:
        y = np.empty_like(x)
        fused_step(net, x, s_in, s_out, y)
        ys.append(y)
        s_in, s_out = s_out, s_in
    return np.stack(ys), s_in


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("spec", NETS, ids=[f"{c}-{n}x{h}" for c, _, n, h in NETS])
def test_c_step_on_arm_matches_numpy(tmp_path: Path, target: str, spec):
    compiler, flags, emulator = _tools(target)
    net = _random_network(*spec)
    params = cstep.pack_params(net)
    rng = np.random.default_rng(7)
    X = (rng.standard_normal((T, BATCH, CHANNELS)) * net.std + net.mean).astype(np.float32)
    shape = (N_STATE[net.cell], len(net.layers), BATCH, net.hidden)
    state = (0.5 * rng.standard_normal(shape)).astype(np.float32)  # random, non-zero

    source = cstep.generate_source(net) + HARNESS % dict(
        batch=BATCH, steps=T, n_params=params.size, scratch=cstep.scratch_size(net)
    )
    (tmp_path / "step.c").write_text(source)
    binary = tmp_path / "step"
    build = subprocess.run(
        [compiler, "-O3", *flags, "-static", "-o", binary, tmp_path / "step.c", "-lm"],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    np.concatenate([params, X.ravel(), state.ravel()]).astype("<f4").tofile(tmp_path / "in.bin")
    run = subprocess.run(
        [emulator, binary, tmp_path / "in.bin", tmp_path / "out.bin"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, f"harness exit {run.returncode}: {run.stderr[-500:]}"

    out = np.fromfile(tmp_path / "out.bin", dtype="<f4")
    n_y, n_s = X.size, state.size
    assert out.size == n_y + 2 * n_s
    y_arm = out[:n_y].reshape(X.shape)
    s_arm = out[n_y : n_y + n_s].reshape(shape)
    s_after_nan = out[n_y + n_s :].reshape(shape)
    y_ref, s_ref = _numpy_reference(net, X, state)
    assert np.max(np.abs((y_arm - y_ref) / net.std)) <= TOL  # normalised units, as elsewhere
    assert np.max(np.abs(s_arm - s_ref)) <= TOL
    assert np.array_equal(s_after_nan, s_arm)  # the refused sample touched nothing
