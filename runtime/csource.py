"""C source for a recognised cell stack: the parameter layout and the generated step.

runtime/cstep.py compiles, caches and loads what this module writes. What the step is
built around (each point measured: benchmarks/cstep_floor.py, runtime/cfloor.py):

- A batch-1 step has to stream every weight once, from L2 for these model sizes, so it
  is as fast as that stream when the multiply-adds keep up with it. The GEMV therefore
  keeps independent vector accumulators over 64 columns in registers (8 with AVX2 and
  SSE2, 4 of 16 floats with AVX-512, 16 on AArch64; one chain of dependent FMAs on 16
  columns was latency-bound), and the weights are packed as one contiguous panel per
  block of hidden units, read front to back.
- Each panel holds every gate of its units (LSTM i, o, f, c of 16 units = 64 columns),
  so a block's gates are computed from L1 right after its GEMV; the next block's GEMV
  is issued before them, so its loads overlap their arithmetic.
- GRU runs 3H gate columns: z and r over [x, h], the candidate's input part over the x
  rows only and its recurrent part over the h rows only (no zero blocks).
- The nonlinearities are written on the vector type, branch-free (the clamp is one
  min and one max instruction, the division runs on every lane), so they are SIMD on
  every target without relying on the auto-vectoriser (which will not if-convert a
  trapping division, and does not vectorise float code for ARMv7 NEON at all without
  -funsafe-math-optimizations; there the arithmetic goes through NEON intrinsics).
- The vector width comes from the target's predefined macros: 16 floats with AVX-512, 8
  with AVX, else 4 (SSE2, NEON; plain scalar code where there is no SIMD). A 32-byte
  type on SSE2 is two registers per value and spilled every accumulator.
- SSE2 (x86-64's portable build) has no FMA and no broadcast load, which makes its GEMV
  bound by the FP pipes and the L2 stream rather than by L2 alone: there the layer
  stores the GEMV's input pre-broadcast (a load instead of a shuffle per row and pass),
  and, when the weights exceed L1, each GEMV pass prefetches its own rows a few ahead
  (its two 32-column passes over a 64-column panel stride 256 bytes, which the hardware
  prefetcher alone does not keep fed at 16-byte loads).
- The portable x86-64 build (GCC, Linux, flags without AVX2) holds the step twice: the
  SSE2 code and, under `#pragma GCC target("avx2,fma")`, the AVX2 code, and runs the
  AVX2 copy where the CPU has AVX2 and FMA (_DISPATCH; -DEDGERNN_NO_DISPATCH keeps the
  SSE2 copy alone). Measured: SSE2 alone 1.7x the native AVX-512 step, the AVX2 copy
  1.05 to 1.09x (benchmarks/cstep_floor.py).
- The cell's gates run in two passes over a block (LSTM: c, then o and tanh(c); GRU: r,
  then z and the candidate), so each pass's nonlinearities are independent and their
  latency chains overlap; one pass per vector chained two tanh and was latency-bound.
- Larger batches run GEMM tiles of 6 rows x 4 vectors (32-register targets) or x 2, in
  chunks of ROWS rows whose gates stay in L1.
- Sigmoid gates are packed pre-halved, as in the numpy step: sigmoid(g) = tanh(g/2)/2 + 1/2.
- Vector loads and stores are unaligned-safe (the vector type is declared 4-byte
  aligned), so no buffer has to be aligned; the packed parameters and scratch are
  64-byte aligned anyway, which the panel layout keeps for every panel row.
"""

from __future__ import annotations

import re

import numpy as np

from edgernn.runtime.numpy_backend import Network

ROWS = 16  # batch rows processed per chunk: gates for 16 rows stay in L1
NR = 16  # padding unit (floats) of every panel width, hidden block and head row
MR = 6  # rows per batched GEMM tile (GMR in the C)
UNITS = 16  # hidden units per block for LSTM and GRU (4 x 16 = 64 GEMV columns)
GATES = {"lstm": 4, "gru": 4, "rnn": 1}  # gate blocks in G (GRU: z, r, n_x, n_h)
PANEL_GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # weight columns per unit (GRU: 3H)
SIGMOID_GATES = {"lstm": 3, "gru": 2, "rnn": 0}  # leading gate blocks that are sigmoids
L1_BYTES = 32 * 1024  # weights over this stream from L2 (SPILL_L1 in the C)


def _pad(n: int) -> int:
    return -(-n // NR) * NR


def units_per_block(net: Network) -> int:
    """16 for LSTM/GRU (every gate of 16 units is one 64-column panel); for the one-gate
    RNN up to 64 units, so one panel is still 64 columns wide."""
    return UNITS if net.cell != "rnn" else min(64, _pad(net.hidden))


# ----------------------------------------------------------------------------------
# parameter layout: one float32 buffer; offsets are compile-time constants in C
#
# per layer, for each block b of U hidden units: a panel of K rows x (PANEL_GATES * U)
# columns, row-major (GRU rows < n_in hold z, r, n_x; rows >= n_in hold z, r, n_h);
# then every block's bias, GATES * U each. Then the head transposed (C rows of
# _pad(H)), its bias, mean, std. Everything starts on a 64-byte boundary.


def _layouts(net: Network) -> tuple[list[tuple[int, int, int, int]], dict[str, int], int]:
    """Per layer (K, n_in, weight offset, bias offset), head/normalisation offsets, total."""
    u = units_per_block(net)
    blocks = -(-net.hidden // u)
    panel_w, gate_w = PANEL_GATES[net.cell] * u, GATES[net.cell] * u
    offset = 0
    layers = []
    for layer in net.layers:
        k = layer.weight.shape[0]
        w_size, b_size = blocks * k * panel_w, blocks * gate_w
        layers.append((k, k - net.hidden, offset, offset + w_size))
        offset += w_size + b_size
    c, hp = net.n_channels, _pad(net.hidden)
    extra = {"head_w": offset, "head_b": offset + c * hp}
    offset += _pad(c * hp + c)
    extra["mean"], extra["std"] = offset, offset + c
    offset += 2 * c
    return layers, extra, offset


def _gate_columns(net: Network, n_in: int) -> list[tuple[slice, int, int]]:
    """(rows, source columns of Layer.weight starting a gate, panel gate slot) per panel
    gate; GRU's third slot takes n_x over the x rows and n_h over the h rows."""
    h, k = net.hidden, n_in + net.hidden
    if net.cell == "gru":
        every = slice(0, k)
        return [
            (every, 0, 0),
            (every, h, 1),
            (slice(0, n_in), 2 * h, 2),
            (slice(n_in, k), 3 * h, 2),
        ]
    return [(slice(0, k), gate * h, gate) for gate in range(PANEL_GATES[net.cell])]


def _check_gru_blocks(weight: np.ndarray, n_in: int, h: int) -> None:
    """The 3H packing drops the candidate's input columns on the h rows and its recurrent
    columns on the x rows: they must be the zeros the exporter's stacking puts there."""
    if np.any(weight[n_in:, 2 * h : 3 * h]) or np.any(weight[:n_in, 3 * h :]):
        raise ValueError("GRU layer weight is not laid out as z, r, n_x (x rows), n_h (h rows)")


def pack_params(net: Network) -> np.ndarray:
    layers, extra, total = _layouts(net)
    buf = _aligned_zeros(total)
    h, u = net.hidden, units_per_block(net)
    blocks = -(-h // u)
    panel_w, gate_w = PANEL_GATES[net.cell] * u, GATES[net.cell] * u
    n_sig = SIGMOID_GATES[net.cell]
    for layer, (k, n_in, w_off, b_off) in zip(net.layers, layers):
        if net.cell == "gru":
            _check_gru_blocks(layer.weight, n_in, h)
        scale = np.ones(layer.weight.shape[1], np.float32)
        scale[: n_sig * h] = 0.5  # exact: a power of two
        weight, bias = layer.weight * scale, layer.bias * scale
        panels = buf[w_off:b_off].reshape(blocks, k, panel_w)
        biases = buf[b_off : b_off + blocks * gate_w].reshape(blocks, GATES[net.cell], u)
        for b in range(blocks):
            j0, j1 = b * u, min(h, (b + 1) * u)
            for rows, col, slot in _gate_columns(net, n_in):
                panels[b, rows, slot * u : slot * u + j1 - j0] = weight[rows, col + j0 : col + j1]
            for gate in range(GATES[net.cell]):
                biases[b, gate, : j1 - j0] = bias[gate * h + j0 : gate * h + j1]
    c, hp = net.n_channels, _pad(h)
    buf[extra["head_w"] : extra["head_w"] + c * hp].reshape(c, hp)[:, :h] = net.head_weight.T
    buf[extra["head_b"] : extra["head_b"] + c] = net.head_bias
    buf[extra["mean"] : extra["mean"] + c] = net.mean
    buf[extra["std"] : extra["std"] + c] = net.std
    return buf


def _aligned_zeros(n: int, align: int = 64) -> np.ndarray:
    """float32 zeros whose data starts on an `align`-byte boundary (vector loads)."""
    raw = np.zeros(n + align // 4, dtype=np.float32)
    start = (-raw.ctypes.data % align) // 4
    return raw[start : start + n]


def _scratch_parts(net: Network) -> tuple[int, int]:
    """(floats per A row, floats per G row)."""
    layers, _, _ = _layouts(net)
    k_row = _pad(max(max(k for k, *_ in layers), net.hidden))
    return k_row, GATES[net.cell] * units_per_block(net)


def scratch_size(net: Network) -> int:
    k_row, g_row = _scratch_parts(net)
    return ROWS * (k_row + g_row + net.n_channels) + 64


# ----------------------------------------------------------------------------------
# code generation: the target-independent prelude

_PRELUDE = r"""
/* Vector width from the target: 16 floats with AVX-512, 8 with AVX, else 4 (SSE2, NEON;
   scalar code the compiler splits up where there is no SIMD). 32 registers on AVX-512
   and AArch64. */
#if defined(__AVX512F__)
#define VW 16
#elif defined(__AVX__)
#define VW 8
#else
#define VW 4
#endif
#if defined(__AVX512F__) || defined(__aarch64__)
#define NREG 32
#else
#define NREG 16
#endif
#define PW (NREG * VW / 2)   /* GEMV columns per pass: accumulators fill half the registers */
#define TV (16 / VW)         /* vectors per 16 columns */
#define GMR 6                /* rows per GEMM tile (x 4 or 2 vectors: 24 or 12 accumulators) */

typedef float vf __attribute__((vector_size(VW * 4), aligned(4)));
typedef int vi __attribute__((vector_size(VW * 4), aligned(4)));
#define LD(p) (*(const vf *)(p))
#define ST(p, v) (*(vf *)(p) = (v))
#if defined(__clang__)
#define UNROLL _Pragma("unroll")  /* fully, the trip counts are constants */
#else
#define UNROLL _Pragma("GCC unroll 16")
#endif

static inline vf vselect(vi mask, vf a, vf b) {  /* mask ? a : b, lane by lane */
    return (vf)(((vi)a & mask) | ((vi)b & ~mask));
}

/* lane-wise min and max as one instruction where there is one (the clamp in vtanh).
   GCC's builtins rather than <immintrin.h>, which takes GCC 0.3 s to parse with
   -march=native (arm_neon.h as long, so AArch64 gets the two-instruction select). */
#if defined(__AVX512F__) && !defined(__clang__)
typedef float vnative __attribute__((vector_size(64)));
static inline vf vmin(vf a, vf b) {
    return (vf)__builtin_ia32_minps512_mask((vnative)a, (vnative)b, (vnative)a, 0xffff, 4);
}
static inline vf vmax(vf a, vf b) {
    return (vf)__builtin_ia32_maxps512_mask((vnative)a, (vnative)b, (vnative)a, 0xffff, 4);
}
#elif defined(__AVX__) && !defined(__clang__)
typedef float vnative __attribute__((vector_size(32)));
static inline vf vmin(vf a, vf b) { return (vf)__builtin_ia32_minps256((vnative)a, (vnative)b); }
static inline vf vmax(vf a, vf b) { return (vf)__builtin_ia32_maxps256((vnative)a, (vnative)b); }
#elif defined(__AVX512F__)
#include <immintrin.h>
static inline vf vmin(vf a, vf b) { return (vf)_mm512_min_ps((__m512)a, (__m512)b); }
static inline vf vmax(vf a, vf b) { return (vf)_mm512_max_ps((__m512)a, (__m512)b); }
#elif defined(__AVX__)
#include <immintrin.h>
static inline vf vmin(vf a, vf b) { return (vf)_mm256_min_ps((__m256)a, (__m256)b); }
static inline vf vmax(vf a, vf b) { return (vf)_mm256_max_ps((__m256)a, (__m256)b); }
#elif defined(__SSE__)
#include <xmmintrin.h>
static inline vf vmin(vf a, vf b) { return (vf)_mm_min_ps((__m128)a, (__m128)b); }
static inline vf vmax(vf a, vf b) { return (vf)_mm_max_ps((__m128)a, (__m128)b); }
#elif defined(__ARM_NEON) && !defined(__aarch64__)
#include <arm_neon.h>  /* needed for the arithmetic below anyway */
static inline vf vmin(vf a, vf b) { return (vf)vminq_f32((float32x4_t)a, (float32x4_t)b); }
static inline vf vmax(vf a, vf b) { return (vf)vmaxq_f32((float32x4_t)a, (float32x4_t)b); }
#else
static inline vf vmin(vf a, vf b) { return vselect(a < b, a, b); }
static inline vf vmax(vf a, vf b) { return vselect(a > b, a, b); }
#endif

/* Float arithmetic through these: GCC lowers float vector operators to NEON on ARMv7
   only under -funsafe-math-optimizations (NEON flushes denormals to zero), and splits
   them into scalar VFP code otherwise, so there they are NEON intrinsics. */
#if defined(__ARM_NEON) && !defined(__aarch64__)
#define NF(v) ((float32x4_t)(v))
static inline vf vsplat(float x) { return (vf)vdupq_n_f32(x); }
static inline vf vadd(vf a, vf b) { return (vf)vaddq_f32(NF(a), NF(b)); }
static inline vf vsub(vf a, vf b) { return (vf)vsubq_f32(NF(a), NF(b)); }
static inline vf vmul(vf a, vf b) { return (vf)vmulq_f32(NF(a), NF(b)); }
#if defined(__ARM_FEATURE_FMA)
static inline vf vfma(vf acc, vf a, vf b) { return (vf)vfmaq_f32(NF(acc), NF(a), NF(b)); }
#else
static inline vf vfma(vf acc, vf a, vf b) { return (vf)vmlaq_f32(NF(acc), NF(a), NF(b)); }
#endif
/* no vector divide either: a reciprocal estimate and two Newton steps */
static inline vf vdiv(vf p, vf q) {
    float32x4_t r = vrecpeq_f32(NF(q));
    r = vmulq_f32(r, vrecpsq_f32(NF(q), r));
    r = vmulq_f32(r, vrecpsq_f32(NF(q), r));
    return (vf)vmulq_f32(NF(p), r);
}
#else
static inline vf vsplat(float x) { return x - (vf){0}; }  /* x - 0 is x: no add */
static inline vf vadd(vf a, vf b) { return a + b; }
static inline vf vsub(vf a, vf b) { return a - b; }
static inline vf vmul(vf a, vf b) { return a * b; }
static inline vf vfma(vf acc, vf a, vf b) { return acc + a * b; }  /* contracted to an FMA */
static inline vf vdiv(vf p, vf q) { return p / q; }
#endif

/* The batch-1 GEMV's input a[k], splat across a vector. SSE2 has no broadcast load, so a
   splat there is a shuffle on an FP pipe, once per row of every pass, and the SSE2 GEMV is
   FP-bound (no FMA: a multiply and an add per column vector). There the layer stores its
   input pre-broadcast, each a[k] VW times, once per layer (ABCAST), and the splat is a
   plain load. Elsewhere a broadcast load or a multiply by lane does it for free. */
#if defined(__SSE2__) && !defined(__AVX__)
#define ABCAST 1
#define AK(a, k) LD((a) + (long)(k) * VW)
#else
#define ABCAST 0
#define AK(a, k) vsplat((a)[k])
#endif
/* Also there: the GEMV prefetches its own weight rows PFD rows ahead, when the weights
   stream from L2 (SPILL_L1, from the generator). Zen 4 at SSE2's 16-byte loads does not
   keep the two 32-column passes over a 64-column panel (256-byte row stride) fed from
   L2 by itself. */
#if ABCAST && SPILL_L1
#define PFD 4
#define PREFETCH_ROW(p, n) UNROLL for (int l_ = 0; l_ < (n) / 16; l_++) __builtin_prefetch((p) + l_ * 16)
#else
#define PREFETCH_ROW(p, n) ((void)0)
#define PFD 0
#endif

/* tanh as a 13/6 rational function on [-7.9, 7.9] (the MLAS/Eigen constants, abs error
   < 4e-7); branch-free: the clamp is a min and a max, the division runs on every lane
   (q > 0). The polynomials in Estrin's form: shorter dependency chains than Horner's,
   which is what the gates are short of once the GEMV no longer hides them (SSE2). */
static inline vf vtanh_s(vf x, float s) {  /* s * tanh(x), s a power of two */
    x = vmax(vmin(x, vsplat(7.90531110763549805f)), vsplat(-7.90531110763549805f));
    vf x2 = vmul(x, x), x4 = vmul(x2, x2), x8 = vmul(x4, x4);
    vf p01 = vfma(vsplat(s * 4.89352455891786e-03f), vsplat(s * 6.37261928875436e-04f), x2);
    vf p23 = vfma(vsplat(s * 1.48572235717979e-05f), vsplat(s * 5.12229709037114e-08f), x2);
    vf p45 = vfma(vsplat(s * -8.60467152213735e-11f), vsplat(s * 2.00018790482477e-13f), x2);
    vf p6 = vsplat(s * -2.76076847742355e-16f);
    vf p03 = vfma(p01, p23, x4), p46 = vfma(p45, p6, x4);
    vf p = vmul(vfma(p03, p46, x8), x);
    vf q01 = vfma(vsplat(4.89352518554385e-03f), vsplat(2.26843463243900e-03f), x2);
    vf q23 = vfma(vsplat(1.18534705686654e-04f), vsplat(1.19825839466702e-06f), x2);
    vf q = vfma(q01, q23, x4);
    return vdiv(p, q);
}
static inline vf vtanh(vf x) { return vtanh_s(x, 1.0f); }

/* sigmoid of a pre-halved gate: sigmoid(2 g) = tanh(g) / 2 + 1/2, the halving folded
   into p's coefficients (exact, and so is (p / 2) / q = (p / q) / 2) */
static inline vf vsigmoid_h(vf g) { return vadd(vtanh_s(g, 0.5f), vsplat(0.5f)); }

%GEMM%
/* sum of a[i] * w[i] over n floats, n a multiple of 16 */
static inline float dot16(const float *a, const float *w, int n) {
    vf s0 = vsplat(0.0f), s1 = vsplat(0.0f);
    int i = 0;
    for (; i + 2 * VW <= n; i += 2 * VW) {
        s0 = vfma(s0, LD(a + i), LD(w + i));
        s1 = vfma(s1, LD(a + i + VW), LD(w + i + VW));
    }
    for (; i < n; i += VW) s0 = vfma(s0, LD(a + i), LD(w + i));  /* VW = 16, n odd x 16 */
    s0 = vadd(s0, s1);
    float t = 0.0f;
    for (int l = 0; l < VW; l++) t += s0[l];
    return t;
}
"""


# what every target's copy of the step shares (scalar code)
_COMMON = r"""
typedef struct {
    long batch;
    const float *params;
    float *x;      /* (B, C) */
    float *y;      /* (B, C) */
    float *s[2];   /* two (S, L, B, H) state buffers, read one, write the other */
    float *scratch;
} ctx_t;

static int all_finite(const float *v, long n) {
    int ok = 1;
    for (long i = 0; i < n; i++) ok &= (v[i] - v[i]) == 0.0f;  /* NaN for NaN and inf */
    return ok;
}
"""

# Runtime dispatch in the portable x86-64 build (cstep.py's `-O3` fallback, SSE2 only):
# the step is compiled a second time under `#pragma GCC target("avx2,fma")` (which also
# defines __AVX__, __AVX2__ and __FMA__ for the preprocessor, so the copy is the AVX2
# code, 8-float vectors and all), its names suffixed, and the library runs that copy
# where the CPU (and OS) has AVX2 and FMA. GCC on x86-64 Linux only, and only where the
# build does not have AVX2 already; clang, other targets and -DEDGERNN_NO_DISPATCH
# (the pure SSE2 build, for measurement) compile the one copy alone.
_DISPATCH_GUARD = r"""
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) \
    && __GNUC__ >= 8 && !defined(__AVX2__) && !defined(EDGERNN_NO_DISPATCH)
#define EDGERNN_AVX2 1
#else
#define EDGERNN_AVX2 0
#endif
"""
_DISPATCH_NAMES = (
    "vf vi vnative vselect vmin vmax vsplat vadd vsub vmul vfma vdiv vtanh_s vtanh "
    "vsigmoid_h dot16 gemv16 gemv32 gemv64 gemv_gru gemv gemm_t1 gemm_t2 gemm_t4 gemm "
    "cell cell_part step_rows step_all"
).split()
_DISPATCH = r"""
#if EDGERNN_AVX2
static int edgernn_use_avx2;
__attribute__((constructor)) static void edgernn_pick_target(void) {
    __builtin_cpu_init();
    edgernn_use_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

/* 2: the AVX2 copy runs, 0: the copy compiled for the build's own flags */
int edgernn_step_target(void) {
#if EDGERNN_AVX2
    return edgernn_use_avx2 ? 2 : 0;
#else
    return 0;
#endif
}

static void step_any(const ctx_t *ctx, const float *x, float *y, const float *s_in,
                     float *s_out) {
#if EDGERNN_AVX2
    if (edgernn_use_avx2) {
        step_all_avx2(ctx, x, y, s_in, s_out);
        return;
    }
#endif
    step_all(ctx, x, y, s_in, s_out);
}
"""


def _avx2_copy(body: str, n_layers: int) -> str:
    """`body` again for the AVX2 copy, under the target pragma, its names suffixed by
    macros (so the text is the same in both copies: one edit to the source edits both),
    those names and the body's own macros undefined after it (the plain copy defines
    them again for its own target)."""
    names = _DISPATCH_NAMES + [f"{f}{i}" for f in ("gates", "layer") for i in range(n_layers)]
    rename = "".join(f"#define {n} {n}_avx2\n" for n in names)
    macros = sorted(set(re.findall(r"^#define (\w+)", body, re.M)))
    undef = "".join(f"#undef {m}\n" for m in names + macros)
    return (
        '#if EDGERNN_AVX2\n#pragma GCC push_options\n#pragma GCC target("avx2,fma")\n'
        f"{rename}{body}\n#pragma GCC pop_options\n{undef}#endif\n"
    )


def _gemv_kernel(width: int) -> str:
    """g[0, width) = bias + a[0, K) @ w (K rows of stride ldw): width / VW independent
    accumulators held in registers for the whole K loop."""
    return f"""
static __attribute__((noinline)) void gemv{width}(
        int K, const float *restrict a, const float *restrict w, int ldw,
        const float *restrict bias, float *restrict g) {{
    vf acc[{width} / VW];
    UNROLL for (int v = 0; v < {width} / VW; v++) acc[v] = LD(bias + v * VW);
    for (int k = 0; k < K; k++) {{
        const vf x = AK(a, k);
        const float *wk = w + (long)k * ldw;
        PREFETCH_ROW(wk + PFD * ldw, {width});
        UNROLL for (int v = 0; v < {width} / VW; v++) acc[v] = vfma(acc[v], x, LD(wk + v * VW));
    }}
    UNROLL for (int v = 0; v < {width} / VW; v++) ST(g + v * VW, acc[v]);
}}
"""


_GEMM = r"""
/* g[0, nc) = bias + a @ w for one row, nc a multiple of 16: passes of PW columns */
static inline __attribute__((always_inline)) void gemv(int K, const float *a, const float *w,
                                                       int ldw, int nc, const float *bias,
                                                       float *g) {
    int c = 0;
#if PW >= 64
    for (; c + 64 <= nc; c += 64) gemv64(K, a, w + c, ldw, bias + c, g + c);
#endif
    for (; c + 32 <= nc; c += 32) gemv32(K, a, w + c, ldw, bias + c, g + c);
    for (; c + 16 <= nc; c += 16) gemv16(K, a, w + c, ldw, bias + c, g + c);
}

/* GRU, one 16-unit panel (48 columns: z, r, then n_x over rows < ks, n_h over rows >= ks)
   into g = [z, r, n_x, n_h]: z and r accumulate over all K, the candidate's accumulator
   is stored at ks and restarts from n_h's bias. */
static __attribute__((noinline)) void gemv_gru(
        int K, int ks, const float *restrict a, const float *restrict w,
        const float *restrict bias, float *restrict g) {
    vf z[TV], r[TV], n[TV];
    UNROLL for (int v = 0; v < TV; v++) {
        z[v] = LD(bias + v * VW); r[v] = LD(bias + 16 + v * VW); n[v] = LD(bias + 32 + v * VW);
    }
    for (int k = 0; k < ks; k++) {
        const vf x = AK(a, k);
        const float *wk = w + k * 48;
        PREFETCH_ROW(wk + PFD * 48, 48);
        UNROLL for (int v = 0; v < TV; v++) {
            z[v] = vfma(z[v], x, LD(wk + v * VW));
            r[v] = vfma(r[v], x, LD(wk + 16 + v * VW));
            n[v] = vfma(n[v], x, LD(wk + 32 + v * VW));
        }
    }
    UNROLL for (int v = 0; v < TV; v++) { ST(g + 32 + v * VW, n[v]); n[v] = LD(bias + 48 + v * VW); }
    for (int k = ks; k < K; k++) {
        const vf x = AK(a, k);
        const float *wk = w + k * 48;
        PREFETCH_ROW(wk + PFD * 48, 48);
        UNROLL for (int v = 0; v < TV; v++) {
            z[v] = vfma(z[v], x, LD(wk + v * VW));
            r[v] = vfma(r[v], x, LD(wk + 16 + v * VW));
            n[v] = vfma(n[v], x, LD(wk + 32 + v * VW));
        }
    }
    UNROLL for (int v = 0; v < TV; v++) {
        ST(g + v * VW, z[v]); ST(g + 16 + v * VW, r[v]); ST(g + 48 + v * VW, n[v]);
    }
}

/* G[m, nc] (row stride ldg) = bias + A[m, K] (row stride lda) @ W[K, nc] (row stride
   ldw), nc a multiple of 16, in column tiles of 4, 2 or 1 vectors (gemm_t*). */
static void gemm(int m, int K, const float *A, int lda, const float *W, int ldw, int nc,
                 const float *bias, float *G, int ldg) {
    int j = 0;
#if NREG == 32
    for (; j + 4 * VW <= nc; j += 4 * VW) gemm_t4(m, K, A, lda, W + j, ldw, bias + j, G + j, ldg);
#endif
    for (; j + 2 * VW <= nc; j += 2 * VW) gemm_t2(m, K, A, lda, W + j, ldw, bias + j, G + j, ldg);
    for (; j + VW <= nc; j += VW) gemm_t1(m, K, A, lda, W + j, ldw, bias + j, G + j, ldg);
}
"""


def _gemm_tile(nv: int) -> str:
    """Columns [0, nv * VW) of G for every row: a tile of GMR rows keeps GMR * nv
    accumulators in registers for the whole K loop, each weight vector loaded once per
    GMR rows (the compiler does not find this blocking by itself). 4 vectors on
    32-register targets, else 2: the most multiply-adds per load that fit."""
    return f"""
static __attribute__((noinline)) void gemm_t{nv}(
        int m, int K, const float *restrict A, int lda, const float *restrict W, int ldw,
        const float *restrict bias, float *restrict G, int ldg) {{
    int r = 0;
    for (; r + GMR <= m; r += GMR) {{
        vf acc[GMR][{nv}];
        UNROLL for (int i = 0; i < GMR; i++)
            UNROLL for (int v = 0; v < {nv}; v++) acc[i][v] = LD(bias + v * VW);
        const float *a = A + (long)r * lda;
        for (int k = 0; k < K; k++) {{
            vf w[{nv}];
            UNROLL for (int v = 0; v < {nv}; v++) w[v] = LD(W + (long)k * ldw + v * VW);
            UNROLL for (int i = 0; i < GMR; i++) {{
                const vf x = vsplat(a[(long)i * lda + k]);
                UNROLL for (int v = 0; v < {nv}; v++) acc[i][v] = vfma(acc[i][v], x, w[v]);
            }}
        }}
        UNROLL for (int i = 0; i < GMR; i++)
            UNROLL for (int v = 0; v < {nv}; v++)
                ST(G + (long)(r + i) * ldg + v * VW, acc[i][v]);
    }}
    for (; r < m; r++) {{
        vf acc[{nv}];
        UNROLL for (int v = 0; v < {nv}; v++) acc[v] = LD(bias + v * VW);
        const float *a = A + (long)r * lda;
        for (int k = 0; k < K; k++) {{
            const vf x = vsplat(a[k]);
            UNROLL for (int v = 0; v < {nv}; v++)
                acc[v] = vfma(acc[v], x, LD(W + (long)k * ldw + v * VW));
        }}
        UNROLL for (int v = 0; v < {nv}; v++) ST(G + (long)r * ldg + v * VW, acc[v]);
    }}
}}
"""


def _gemm_source() -> str:
    kernels = [_gemv_kernel(w) for w in (16, 32, 64)] + [_gemm_tile(nv) for nv in (1, 2, 4)]
    return "".join(kernels) + _GEMM


# One block of U units, every lane a vector: g holds the block's gates (each U wide),
# the state pointers are offset to the block's first unit. Two passes over the block
# where a cell chains two nonlinearities (LSTM: c, then tanh(c); GRU: r, then the
# candidate's tanh): each pass is a few independent nonlinearities per vector, so the
# vectors' latency chains overlap instead of running one after another (which is what
# the gates cost on SSE2, where they were a quarter of the step). The first pass leaves
# what the second reads in the output state (LSTM: c in c_out; GRU: the candidate's
# argument in h_out, overwritten by h).
_CELL_BODIES = {
    "lstm": (
        """
        vf i = vsigmoid_h(LD(g + u)), f = vsigmoid_h(LD(g + 2 * U + u));
        vf cc = vtanh(LD(g + 3 * U + u));
        ST(c_out + u, vfma(vmul(f, LD(c_in + u)), i, cc));""",
        """
        vf o = vsigmoid_h(LD(g + U + u));
        ST(h_out + u, vmul(o, vtanh(LD(c_out + u))));""",
    ),
    "gru": (
        """
        vf r = vsigmoid_h(LD(g + U + u));
        ST(h_out + u, vfma(LD(g + 2 * U + u), r, LD(g + 3 * U + u)));""",
        """
        vf z = vsigmoid_h(LD(g + u)), n = vtanh(LD(h_out + u));
        ST(h_out + u, vfma(n, z, vsub(LD(h_in + u), n)));""",
    ),
    "rnn_tanh": (
        """
        ST(h_out + u, vtanh(LD(g + u)));""",
    ),
    "rnn_relu": (
        """
        ST(h_out + u, vmax(LD(g + u), vsplat(0.0f)));""",
    ),
}


def _cell_function(cell: str, lstm: bool) -> str:
    """cell(g, h_in, h_out[, c_in, c_out]) over U units; cell_part for the last block's
    `nu` < U units, through padded copies (never a load or store past the state)."""
    c_params = ", const float *restrict c_in, float *restrict c_out" if lstm else ""
    c_copy_in = "\n    for (int u = 0; u < nu; u++) ci[u] = c_in[u];" if lstm else ""
    c_copy_out = "\n    for (int u = 0; u < nu; u++) c_out[u] = co[u];" if lstm else ""
    c_local = ", ci[U] = {0}, co[U]" if lstm else ""
    c_local_args = ", ci, co" if lstm else ""
    passes = "".join(
        f"\n    for (int u = 0; u < U; u += VW) {{{body}\n    }}" for body in _CELL_BODIES[cell]
    )
    return f"""
static inline __attribute__((always_inline)) void cell(
        const float *restrict g, const float *restrict h_in, float *restrict h_out{c_params}) {{
    (void)h_in;{passes}
}}

static void cell_part(int nu, const float *g, const float *h_in, float *h_out{c_params.replace("restrict ", "")}) {{
    float hi[U] = {{0}}, ho[U]{c_local};
    for (int u = 0; u < nu; u++) hi[u] = h_in[u];{c_copy_in}
    cell(g, hi, ho{c_local_args});
    for (int u = 0; u < nu; u++) h_out[u] = ho[u];{c_copy_out}
}}
"""


def _layer_source(net: Network, index: int, layer: tuple[int, int, int, int]) -> str:
    """layer<index>(...): A = [input, h] per row, then every block: its G, its gates."""
    k, n_in, w_off, b_off = layer
    lstm, gru = net.cell == "lstm", net.cell == "gru"
    u = units_per_block(net)
    blocks, rem = -(-net.hidden // u), net.hidden % u
    panel_w, gate_w = PANEL_GATES[net.cell] * u, GATES[net.cell] * u
    n_layers = len(net.layers)
    src = "xn[r * C + k]" if index == 0 else f"s_out[({index - 1} * B + r0 + r) * H + k]"

    def w(b: str) -> str:
        return f"P + {w_off} + (long)({b}) * {k * panel_w}"

    def bias(b: str) -> str:
        return f"P + {b_off} + ({b}) * {gate_w}"

    def one(b: str, g: str) -> str:
        if gru:
            return f"gemv_gru({k}, {n_in}, AB, {w(b)}, {bias(b)}, {g});"
        return f"gemv({k}, AB, {w(b)}, {panel_w}, {panel_w}, {bias(b)}, {g});"

    if gru:
        many = (
            f"gemm(m, {k}, A, {k}, W, 48, 32, bias, G, 64);\n"
            f"            gemm(m, {n_in}, A, {k}, W + 32, 48, 16, bias + 32, G + 32, 64);\n"
            f"            gemm(m, H, A + {n_in}, {k}, W + {n_in} * 48 + 32, 48, 16, bias + 48,"
            " G + 48, 64);"
        )
    else:
        many = f"gemm(m, {k}, A, {k}, W, {panel_w}, {panel_w}, bias, G, {gate_w});"
    c_ptrs = (
        f",\n                 s_in + (({n_layers} + {index}) * B + r0 + r) * H + j0,"
        f"\n                 s_out + (({n_layers} + {index}) * B + r0 + r) * H + j0"
        if lstm
        else ""
    )
    full = blocks - 1 if rem else blocks
    return f"""
/* layer {index}, block b: the gates of rows [0, m) from G (row stride {gate_w}) */
static inline __attribute__((always_inline)) void gates{index}(
        int b, int m, const float *G, const float *s_in, float *s_out, long B, long r0) {{
    int j0 = b * U;
    for (int r = 0; r < m; r++) {{
        const float *g = G + r * {gate_w};
        const float *h_in = s_in + ({index} * B + r0 + r) * H + j0;
        float *h_out = s_out + ({index} * B + r0 + r) * H + j0;
        if (b < {full})
            cell(g, h_in, h_out{c_ptrs});
        else
            cell_part({rem}, g, h_in, h_out{c_ptrs});
    }}
}}

static void layer{index}(const float *P, long B, long r0, int m, const float *xn, float *A,
                   float *G, const float *s_in, float *s_out) {{
    (void)xn;
    for (int r = 0; r < m; r++) {{
        for (int k = 0; k < {n_in}; k++) A[r * {k} + k] = {src};
        for (int k = 0; k < H; k++) A[r * {k} + {n_in} + k] = s_in[({index} * B + r0 + r) * H + k];
    }}
    if (m == 1) {{
        /* software-pipelined: block b + 1's GEMV is issued before block b's gates, so
           the gates' arithmetic fills the gaps while the next panel streams in
           (unrolled for up to 8 blocks: straight-line code schedules better) */
        float *G2 = G + {gate_w};
#if ABCAST
        float *AB = A + KROW;  /* rows 1 to VW of A (of ROWS = 16) are free when m == 1 */
        for (int k = 0; k < {k}; k++) ST(AB + k * VW, vsplat(A[k]));
#else
        float *AB = A;
#endif
        {one("0", "G")}
        {"UNROLL " if blocks <= 8 else ""}for (int b = 0; b < {blocks}; b++) {{
            float *g_now = (b & 1) ? G2 : G, *g_next = (b & 1) ? G : G2;
            if (b + 1 < {blocks}) {{
                {one("b + 1", "g_next")}
            }}
            gates{index}(b, 1, g_now, s_in, s_out, B, r0);
        }}
    }} else {{
        for (int b = 0; b < {blocks}; b++) {{
            const float *W = {w("b")}, *bias = {bias("b")};
            {many}
            gates{index}(b, m, G, s_in, s_out, B, r0);
        }}
    }}
}}
"""


def generate_source(net: Network) -> str:
    layers, extra, _ = _layouts(net)
    h, c, n_layers = net.hidden, net.n_channels, len(net.layers)
    cell = net.cell if net.cell != "rnn" else f"rnn_{net.nonlinearity}"
    k_row, g_row = _scratch_parts(net)
    hp = _pad(h)
    spill = 4 * sum(k * PANEL_GATES[net.cell] * net.hidden for k, *_ in layers) > L1_BYTES
    common = [f"#define SPILL_L1 {int(spill)}\n"]
    common.append(f"#define H {h}\n#define C {c}\n#define L {n_layers}\n#define S {net.n_state}\n")
    common.append(f"#define ROWS {ROWS}\n#define KROW {k_row}\n#define GROW {g_row}\n")
    common.append(f"#define U {units_per_block(net)}\n")
    common += [_COMMON, _DISPATCH_GUARD]
    out = [_PRELUDE.replace("%GEMM%", _gemm_source())]
    out.append(_cell_function(cell, net.cell == "lstm"))
    for index, layer in enumerate(layers):
        out.append(_layer_source(net, index, layer))
    residual = " + xn[r * C + k]" if net.residual else ""
    out.append(
        f"""
/* rows [r0, r0 + m) of one step: normalise, every layer, head, de-normalise. */
static void step_rows(const ctx_t *ctx, long r0, int m, const float *x, float *y,
                      const float *s_in, float *s_out) {{
    const float *P = ctx->params;
    long B = ctx->batch;
    float *A = ctx->scratch, *G = A + ROWS * KROW, *xn = G + ROWS * GROW;
    const float *mean = P + {extra["mean"]}, *std = P + {extra["std"]};
    for (int r = 0; r < m; r++)
        for (int k = 0; k < C; k++) xn[r * C + k] = (x[(r0 + r) * C + k] - mean[k]) / std[k];
{"".join(f"    layer{i}(P, B, r0, m, xn, A, G, s_in, s_out);{chr(10)}" for i in range(n_layers))}
    /* head on the top layer's new h, zero-padded to {hp}: one dot product per channel */
    const float *head_w = P + {extra["head_w"]}, *head_b = P + {extra["head_b"]};
    for (int r = 0; r < m; r++) {{
        float *a = A + r * {hp};
        for (int k = 0; k < H; k++) a[k] = s_out[({n_layers - 1} * B + r0 + r) * H + k];
        for (int k = H; k < {hp}; k++) a[k] = 0.0f;
        for (int k = 0; k < C; k++)
            y[(r0 + r) * C + k] =
                (dot16(a, head_w + k * {hp}, {hp}) + head_b[k]{residual}) * std[k] + mean[k];
    }}
}}

static void step_all(const ctx_t *ctx, const float *x, float *y, const float *s_in,
                     float *s_out) {{
    for (long r0 = 0; r0 < ctx->batch; r0 += ROWS) {{
        long left = ctx->batch - r0;
        step_rows(ctx, r0, left < ROWS ? (int)left : ROWS, x, y, s_in, s_out);
    }}
}}
"""
    )
    body = "".join(out)
    tail = (
        _DISPATCH
        + f"""
/* One sample per stream: ctx->x -> ctx->y, state s[cur] -> s[1 - cur].
   Returns 1 (and touches nothing) if x holds NaN or inf. */
int edgernn_step(const ctx_t *ctx, int cur) {{
    if (!all_finite(ctx->x, ctx->batch * C)) return 1;
    step_any(ctx, ctx->x, ctx->y, ctx->s[cur], ctx->s[1 - cur]);
    return 0;
}}

/* T samples: X, Y (T, B, C); the state ends in s[cur ^ (T & 1)]. Hs, unless NULL:
   (T, B, H), the last layer's h after each sample (an online head's features). */
int edgernn_run_features(const ctx_t *ctx, int cur, long T, const float *X, float *Y,
                         float *Hs) {{
    long n = ctx->batch * C, bh = ctx->batch * H;
    if (!all_finite(X, T * n)) return 1;
    for (long t = 0; t < T; t++) {{
        step_any(ctx, X + t * n, Y + t * n, ctx->s[cur], ctx->s[1 - cur]);
        cur = 1 - cur;
        if (Hs) {{
            const float *h = ctx->s[cur] + {n_layers - 1} * bh;  /* state 0 is h */
            for (long k = 0; k < bh; k++) Hs[t * bh + k] = h[k];
        }}
    }}
    return 0;
}}

int edgernn_run(const ctx_t *ctx, int cur, long T, const float *X, float *Y) {{
    return edgernn_run_features(ctx, cur, T, X, Y, 0);
}}
"""
    )
    return "".join(common) + _avx2_copy(body, n_layers) + body + tail
