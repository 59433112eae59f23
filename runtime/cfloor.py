"""The C step timed in C against its physical floor: the weights streamed from L2.

A batch-1 recurrent step has to read every weight once, and for the small models this
project serves the weights live in L2 (LSTM-64 is 66 KB: over L1, well under L2). The
step can therefore be no faster than one pass over a buffer of the same size, and the
ratio of the two says how much of the step is anything else (latency chains, the
nonlinearities, bookkeeping). Both are timed inside one shared library built from the
generated step source plus two timing loops, compiled with the same compiler and
flags, and measured interleaved round by round (the machine may be shared and noisy);
each figure is the median over rounds of the mean time per step in a round. The
Python->C call is not in either figure: `Stream.step` costs that on top.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from edgernn.runtime.csource import _aligned_zeros, generate_source, pack_params, scratch_size
from edgernn.runtime.numpy_backend import Network

GATES = {"lstm": 4, "gru": 3, "rnn": 1}

_TIMING = r"""
#include <time.h>

/* its own vector type, the widest the target has (the step's source may name its own
   differently) */
#if defined(__AVX512F__)
#define FLOOR_VW 16
#elif defined(__AVX__)
#define FLOOR_VW 8
#else
#define FLOOR_VW 4
#endif
typedef float floor_v __attribute__((vector_size(FLOOR_VW * 4), aligned(4)));

static long long edgernn_now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* Mean ns per batch-1 step over `reps` steps (the state ping-pongs as in a stream). */
double edgernn_time_steps(const ctx_t *ctx, long reps) {
    int cur = 0;
    long long t0 = edgernn_now_ns();
    for (long r = 0; r < reps; r++) {
        edgernn_step(ctx, cur);
        cur = 1 - cur;
    }
    return (double)(edgernn_now_ns() - t0) / (double)reps;
}

volatile float edgernn_floor_sink;

/* Mean ns per pass summing w[0, n): eight independent vector sums, so the loads, not
   the adds, set the pace. The empty asm with a memory clobber makes every pass read
   the buffer again (the compiler may not reuse the previous pass's sum). */
double edgernn_time_floor(const float *w, long n, long reps) {
    floor_v acc[8];
    for (int v = 0; v < 8; v++) acc[v] = (floor_v){0};
    float tail = 0.0f;
    long long t0 = edgernn_now_ns();
    for (long r = 0; r < reps; r++) {
        __asm__ volatile("" : : "r"(w) : "memory");
        long i = 0;
        for (; i + 8 * FLOOR_VW <= n; i += 8 * FLOOR_VW) {
            _Pragma("GCC unroll 8")
            for (int v = 0; v < 8; v++) acc[v] += *(const floor_v *)(w + i + v * FLOOR_VW);
        }
        for (; i < n; i++) tail += w[i];
    }
    long long t1 = edgernn_now_ns();
    for (int v = 1; v < 8; v++) acc[0] += acc[v];
    for (int l = 0; l < FLOOR_VW; l++) tail += acc[0][l];
    edgernn_floor_sink = tail;
    return (double)(t1 - t0) / (double)reps;
}
"""


def weight_count(net: Network) -> int:
    """Floats the step must read every sample: every layer's gate weights (GRU: 3H gates,
    the candidate's input and recurrent halves over their own rows) and the head."""
    total = 0
    for layer in net.layers:
        total += layer.weight.shape[0] * GATES[net.cell] * net.hidden
    return total + net.hidden * net.n_channels


@dataclass
class FloorResult:
    step_us: float  # median over rounds of the mean batch-1 C step
    floor_us: float  # median over rounds of one pass over the weights
    weight_bytes: int
    flags: list[str]
    step_rounds_us: list[float]
    floor_rounds_us: list[float]

    @property
    def ratio(self) -> float:
        return self.step_us / self.floor_us

    @property
    def floor_gb_s(self) -> float:
        return self.weight_bytes / (self.floor_us * 1e3)

    def as_dict(self) -> dict:
        return {
            "step_us": self.step_us,
            "floor_us": self.floor_us,
            "ratio": self.ratio,
            "weight_bytes": self.weight_bytes,
            "floor_gb_s": self.floor_gb_s,
            "flags": self.flags,
        }


def _compile(source: str, directory: str, flag_sets: Sequence[Sequence[str]]):
    """(loaded library, the flags that compiled) for the first flag set that works."""
    from edgernn.runtime.cstep import CStepUnavailable, _compiler

    cc = _compiler()
    if cc is None:
        raise CStepUnavailable("no C compiler found (install gcc or set CC)")
    src = os.path.join(directory, "floor.c")
    with open(src, "w") as f:
        f.write(source)
    last = "no flag set tried"
    for i, flags in enumerate(flag_sets):
        lib = os.path.join(directory, f"floor{i}.so")
        cmd = [*cc, *flags, "-shared", "-fPIC", "-o", lib, src]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            last = str(e)
            continue
        if proc.returncode == 0:
            return ctypes.CDLL(lib), list(flags)
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
    raise CStepUnavailable(f"compiling the floor benchmark failed: {last[:160]}")


def default_flag_sets() -> list[list[str]]:
    """The flag sets the C step itself is built with, in the order it tries them."""
    from edgernn.runtime.cstep import _FLAG_SETS

    return [list(f) for f in _FLAG_SETS]


def measure_floor(
    net: Network,
    rounds: int = 200,
    target_us: float = 100.0,
    flag_sets: Optional[Sequence[Sequence[str]]] = None,
    seed: int = 0,
) -> FloorResult:
    """Time the batch-1 C step and one pass over its weights, interleaved `rounds` times,
    each round about `target_us` long per side."""
    from edgernn.runtime.cstep import _Ctx  # the step's own context struct, as it calls it

    flag_sets = flag_sets or default_flag_sets()
    with tempfile.TemporaryDirectory(prefix="edgernn-floor-") as tmp:
        lib, flags = _compile(generate_source(net) + _TIMING, tmp, flag_sets)
        lib.edgernn_time_steps.argtypes = [ctypes.c_void_p, ctypes.c_long]
        lib.edgernn_time_steps.restype = ctypes.c_double
        lib.edgernn_time_floor.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_long]
        lib.edgernn_time_floor.restype = ctypes.c_double

        rng = np.random.default_rng(seed)
        params = pack_params(net)
        shape = (net.n_state, len(net.layers), 1, net.hidden)
        states = [_aligned_zeros(int(np.prod(shape))) for _ in range(2)]
        states[0][:] = 0.5 * rng.standard_normal(states[0].size)
        x = _aligned_zeros(net.n_channels)
        x[:] = net.mean + net.std * rng.standard_normal(net.n_channels)
        y = _aligned_zeros(net.n_channels)
        scratch = _aligned_zeros(scratch_size(net))
        ctx = _Ctx(1, params.ctypes.data, x.ctypes.data, y.ctypes.data,
                   (ctypes.c_void_p * 2)(states[0].ctypes.data, states[1].ctypes.data),
                   scratch.ctypes.data)  # fmt: skip
        n = weight_count(net)
        weights = _aligned_zeros(n)
        weights[:] = rng.standard_normal(n)
        address = ctypes.addressof(ctx)

        # size each round to about target_us from a first estimate (and warm caches)
        step_ns = lib.edgernn_time_steps(address, 2000)
        floor_ns = lib.edgernn_time_floor(weights.ctypes.data, n, 2000)
        step_reps = max(1, int(target_us * 1e3 / step_ns))
        floor_reps = max(1, int(target_us * 1e3 / floor_ns))
        step_rounds, floor_rounds = [], []
        for r in range(rounds):  # which side goes first alternates
            for side in ("step", "floor") if r % 2 == 0 else ("floor", "step"):
                if side == "step":
                    step_rounds.append(lib.edgernn_time_steps(address, step_reps) / 1e3)
                else:
                    ns = lib.edgernn_time_floor(weights.ctypes.data, n, floor_reps)
                    floor_rounds.append(ns / 1e3)
    return FloorResult(
        step_us=float(np.median(step_rounds)),
        floor_us=float(np.median(floor_rounds)),
        weight_bytes=4 * n,
        flags=flags,
        step_rounds_us=step_rounds,
        floor_rounds_us=floor_rounds,
    )


# ----------------------------------------------------------------------------------
# the `edgernn bench` section


def bench_entry(model, stream_step_p50_us: Optional[float], rounds: int) -> Optional[dict]:
    """The floor figures for one loaded c-backend Model, plus how much Stream.step (its
    measured p50) adds over the bare C step; None when the timing library does not build
    (the report then has no floor section rather than no report)."""
    from edgernn.runtime.cstep import CStepUnavailable

    try:
        result = measure_floor(model._engine.net, rounds=rounds)
    except CStepUnavailable:
        return None
    entry = result.as_dict()
    if stream_step_p50_us is not None:
        entry["stream_overhead_us"] = stream_step_p50_us - result.step_us
    return entry


def format_section(single: list[dict]) -> list[str]:
    """Report lines for the entries of `edgernn bench` that carry a "c_floor"."""
    rows = [e for e in single if e.get("c_floor")]
    if not rows:
        return []
    flags = " ".join(rows[0]["c_floor"]["flags"])
    lines = [
        "",
        f"C step against the L2 floor: batch 1, timed in C ({flags}), the floor being one "
        "pass over the weights",
        f"{'model':<14} {'C step µs':>9} {'floor µs':>9} {'ratio':>6} {'weights KB':>10} "
        f"{'floor GB/s':>10} {'Stream.step +µs':>15}",
    ]
    for e in rows:
        f = e["c_floor"]
        extra = f.get("stream_overhead_us")
        lines.append(
            f"{e['model']:<14} {f['step_us']:9.3f} {f['floor_us']:9.3f} {f['ratio']:6.2f} "
            f"{f['weight_bytes'] / 1024:10.1f} {f['floor_gb_s']:10.1f} "
            f"{'-' if extra is None else f'{extra:.2f}':>15}"
        )
    return lines
