"""C source for a recognised cell stack: the parameter layout and the generated step.

runtime/cstep.py compiles, caches and loads what this module writes; see its docstring
for why the step is shaped the way it is.
"""

from __future__ import annotations

import numpy as np

from edgernn.runtime.numpy_backend import Network

ROWS = 16  # batch rows processed per chunk: gates for 16 rows stay in L1
NR = 16  # output columns per microkernel tile (two 8-float vectors)


def _pad(n: int) -> int:
    return -(-n // NR) * NR


# ----------------------------------------------------------------------------------
# parameter layout: one float32 buffer; offsets are compile-time constants in C


def _layouts(net: Network) -> tuple[list[tuple[int, int, int, int]], dict[str, int], int]:
    """Per layer (K, NP, weight offset, bias offset), head/normalisation offsets, total."""
    offset = 0
    layers = []
    for layer in net.layers:
        k, g = layer.weight.shape
        np_ = _pad(g)
        layers.append((k, np_, offset, offset + k * np_))
        offset += k * np_ + np_
    c = net.n_channels
    cp = _pad(c)
    extra = {"head_w": offset, "head_b": offset + net.hidden * cp}
    offset += net.hidden * cp + cp
    extra["mean"], extra["std"] = offset, offset + c
    offset += 2 * c
    return layers, extra, offset


def pack_params(net: Network) -> np.ndarray:
    layers, extra, total = _layouts(net)
    buf = _aligned_zeros(total)
    for layer, (k, np_, w_off, b_off) in zip(net.layers, layers):
        g = layer.weight.shape[1]
        buf[w_off : w_off + k * np_].reshape(k, np_)[:, :g] = layer.weight
        buf[b_off : b_off + g] = layer.bias
    c, cp = net.n_channels, _pad(net.n_channels)
    buf[extra["head_w"] : extra["head_w"] + net.hidden * cp].reshape(net.hidden, cp)[:, :c] = (
        net.head_weight
    )
    buf[extra["head_b"] : extra["head_b"] + c] = net.head_bias
    buf[extra["mean"] : extra["mean"] + c] = net.mean
    buf[extra["std"] : extra["std"] + c] = net.std
    return buf


def _aligned_zeros(n: int, align: int = 64) -> np.ndarray:
    """float32 zeros whose data starts on an `align`-byte boundary (vector loads)."""
    raw = np.zeros(n + align // 4, dtype=np.float32)
    start = (-raw.ctypes.data % align) // 4
    return raw[start : start + n]


def scratch_size(net: Network) -> int:
    layers, _, _ = _layouts(net)
    k_max = max(max(k for k, *_ in layers), net.hidden)
    n_max = max(max(np_ for _, np_, *_ in layers), _pad(net.n_channels))
    c = net.n_channels
    return ROWS * (k_max + n_max + c) + 64


# ----------------------------------------------------------------------------------
# code generation

_PRELUDE = r"""
typedef float v8 __attribute__((vector_size(32), aligned(4)));

/* tanh as a 13/6 rational function on [-7.9, 7.9] (the MLAS/Eigen constants);
   written as a plain loop body so the compiler vectorises it. */
static inline float fast_tanh(float x) {
    const float lim = 7.90531110763549805f;
    float xc = x > lim ? lim : (x < -lim ? -lim : x);
    float x2 = xc * xc;
    float p = -2.76076847742355e-16f;
    p = p * x2 + 2.00018790482477e-13f;
    p = p * x2 + -8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    p = p * xc;
    float q = 1.19825839466702e-06f;
    q = q * x2 + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    float ax = x < 0.0f ? -x : x;
    return ax < 0.0004f ? x : p / q;
}

static inline float fast_sigmoid(float x) { return 0.5f * fast_tanh(0.5f * x) + 0.5f; }

%GEMM%
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

_CELL_BODIES = {
    "lstm": """
            float i = fast_sigmoid(g[j]), o = fast_sigmoid(g[H + j]);
            float f = fast_sigmoid(g[2 * H + j]), cc = fast_tanh(g[3 * H + j]);
            float c = f * c_in[j] + i * cc;
            c_out[j] = c;
            h_out[j] = o * fast_tanh(c);""",
    "gru": """
            float z = fast_sigmoid(g[j]), r = fast_sigmoid(g[H + j]);
            float n = fast_tanh(g[2 * H + j] + r * g[3 * H + j]);
            h_out[j] = n + z * (h_in[j] - n);""",
    "rnn_tanh": """
            h_out[j] = fast_tanh(g[j]);""",
    "rnn_relu": """
            h_out[j] = g[j] > 0.0f ? g[j] : 0.0f;""",
}


MR = 8  # rows per microkernel tile: 8 x 16 = 16 vector accumulators


def _gemm_source(mr: int = MR) -> str:
    """G[m, NP] = bias + A[m, K] @ W[K, NP], NP a multiple of 16. A tile of `mr` rows x
    16 columns keeps 2 * mr accumulators in vector registers for the whole K loop
    (the compiler does not find this blocking by itself)."""
    rows = range(mr)
    acc = ", ".join(f"a{r}0 = b0, a{r}1 = b1" for r in rows)
    loads = " ".join(f"float x{r} = a[{r} * K + k];" for r in rows)
    fmas = " ".join(f"a{r}0 += x{r} * w0; a{r}1 += x{r} * w1;" for r in rows)
    stores = " ".join(
        f"*(v8 *)(g + {r} * NP) = a{r}0; *(v8 *)(g + {r} * NP + 8) = a{r}1;" for r in rows
    )
    return f"""
static void gemm(int m, int K, int NP, const float *A, const float *W, const float *bias,
                 float *G) {{
    for (int j = 0; j < NP; j += 16) {{
        v8 b0 = *(const v8 *)(bias + j), b1 = *(const v8 *)(bias + j + 8);
        int r = 0;
        for (; r + {mr} <= m; r += {mr}) {{
            v8 {acc};
            const float *a = A + r * K;
            for (int k = 0; k < K; k++) {{
                v8 w0 = *(const v8 *)(W + k * NP + j), w1 = *(const v8 *)(W + k * NP + j + 8);
                {loads}
                {fmas}
            }}
            float *g = G + r * NP + j;
            {stores}
        }}
        for (; r < m; r++) {{
            v8 a0 = b0, a1 = b1;
            const float *a = A + r * K;
            for (int k = 0; k < K; k++) {{
                a0 += a[k] * *(const v8 *)(W + k * NP + j);
                a1 += a[k] * *(const v8 *)(W + k * NP + j + 8);
            }}
            *(v8 *)(G + r * NP + j) = a0;
            *(v8 *)(G + r * NP + j + 8) = a1;
        }}
    }}
}}
"""


def generate_source(net: Network) -> str:
    layers, extra, _ = _layouts(net)
    h, c, n_layers = net.hidden, net.n_channels, len(net.layers)
    k_max = max(max(k for k, *_ in layers), h)
    n_max = max(max(np_ for _, np_, *_ in layers), _pad(c))
    cell = net.cell if net.cell != "rnn" else f"rnn_{net.nonlinearity}"
    lstm = net.cell == "lstm"
    out = [_PRELUDE.replace("%GEMM%", _gemm_source())]
    out.append(f"#define H {h}\n#define C {c}\n#define L {n_layers}\n#define S {net.n_state}\n")
    out.append(f"#define ROWS {ROWS}\n#define KMAX {k_max}\n#define NMAX {n_max}\n")
    out.append(
        """
/* rows [r0, r0 + m) of one step: normalise, every layer, head, de-normalise. */
static void step_rows(const ctx_t *ctx, long r0, int m, const float *x, float *y,
                      const float *s_in, float *s_out) {
    const float *P = ctx->params;
    long B = ctx->batch;
    float *A = ctx->scratch, *G = A + ROWS * KMAX, *xn = G + ROWS * NMAX;
"""
    )
    out.append(
        f"""    const float *mean = P + {extra["mean"]}, *std = P + {extra["std"]};
    for (int r = 0; r < m; r++)
        for (int k = 0; k < C; k++) xn[r * C + k] = (x[(r0 + r) * C + k] - mean[k]) / std[k];
"""
    )
    for index, (k, np_, w_off, b_off) in enumerate(layers):
        n_in = k - h
        src = "xn[r * C + k]" if index == 0 else f"s_out[({index - 1} * B + r0 + r) * H + k]"
        out.append(
            f"""    /* layer {index}: A = [input, h], G = A @ W + b */
    for (int r = 0; r < m; r++) {{
        for (int k = 0; k < {n_in}; k++) A[r * {k} + k] = {src};
        for (int k = 0; k < H; k++) A[r * {k} + {n_in} + k] = s_in[({index} * B + r0 + r) * H + k];
    }}
    gemm(m, {k}, {np_}, A, P + {w_off}, P + {b_off}, G);
    for (int r = 0; r < m; r++) {{
        const float *g = G + r * {np_};
        const float *h_in = s_in + ({index} * B + r0 + r) * H;
        float *h_out = s_out + ({index} * B + r0 + r) * H;
"""
        )
        if lstm:
            out.append(
                f"""        const float *c_in = s_in + (({n_layers} + {index}) * B + r0 + r) * H;
        float *c_out = s_out + (({n_layers} + {index}) * B + r0 + r) * H;
"""
            )
        out.append("        (void)h_in;\n        for (int j = 0; j < H; j++) {")
        out.append(_CELL_BODIES[cell])
        out.append("\n        }\n    }\n")
    cp = _pad(c)
    residual = " + xn[r * C + k]" if net.residual else ""
    out.append(
        f"""    /* head on the top layer's new h */
    for (int r = 0; r < m; r++)
        for (int k = 0; k < H; k++) A[r * H + k] = s_out[({n_layers - 1} * B + r0 + r) * H + k];
    gemm(m, H, {cp}, A, P + {extra["head_w"]}, P + {extra["head_b"]}, G);
    for (int r = 0; r < m; r++)
        for (int k = 0; k < C; k++)
            y[(r0 + r) * C + k] = (G[r * {cp} + k]{residual}) * std[k] + mean[k];
}}

static void step_all(const ctx_t *ctx, const float *x, float *y, const float *s_in,
                     float *s_out) {{
    for (long r0 = 0; r0 < ctx->batch; r0 += ROWS) {{
        long left = ctx->batch - r0;
        step_rows(ctx, r0, left < ROWS ? (int)left : ROWS, x, y, s_in, s_out);
    }}
}}

/* One sample per stream: ctx->x -> ctx->y, state s[cur] -> s[1 - cur].
   Returns 1 (and touches nothing) if x holds NaN or inf. */
int edgernn_step(const ctx_t *ctx, int cur) {{
    if (!all_finite(ctx->x, ctx->batch * C)) return 1;
    step_all(ctx, ctx->x, ctx->y, ctx->s[cur], ctx->s[1 - cur]);
    return 0;
}}

/* T samples: X, Y (T, B, C); the state ends in s[cur ^ (T & 1)]. */
int edgernn_run(const ctx_t *ctx, int cur, long T, const float *X, float *Y) {{
    long n = ctx->batch * C;
    if (!all_finite(X, T * n)) return 1;
    for (long t = 0; t < T; t++) {{
        step_all(ctx, X + t * n, Y + t * n, ctx->s[cur], ctx->s[1 - cur]);
        cur = 1 - cur;
    }}
    return 0;
}}
"""
    )
    return "".join(out)
