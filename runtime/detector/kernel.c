/* The detector's per-sample computation (core.py Detector.score_one once its
 * normalisers are ready), for N samples in one call, in place on the numpy state.
 *
 * Every formula is the numpy one, in the same order, in double precision: no
 * contraction into FMAs (the pragmas below), no -ffast-math. The only differences
 * left are libm's exp/log10/pow against numpy's own SIMD versions (an ulp or so).
 * Built and loaded by ckernel.py through runtime/cstep.py's compile machinery.
 */
#pragma GCC optimize("fp-contract=off")
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif
#include <math.h>
#include <stdint.h>
#include <string.h>

#define CLIP 3.0
#define MAX_USUAL 1e9
#define MIN_ENERGY 0.01
#define PRIOR_WEIGHT 10.0
#define MAX_SCORE 50.0
#define MIN_SECOND_STAGE 30.0
#define TAIL_COUNT 25.0
#define FIT_RATIO 4.0
#define MIN_DECAY 0.05
#define SEEN_COUNT 8.0 /* tails.py's: episodes that count at their own rate */
#define EPISODE_GAP 20.0
#define EPISODE_LEVEL 3.0
#define ENERGY_PRIOR_SCALE 0.5 /* core.py's _prior */
#define MAX_DECIMALS 6
#define FLOAT32_TOL (4.0 * 5.9604644775390625e-08) /* 4 * 2^-24 */
#define MAX_CHANNELS 256
#define REGIME_SHARE 0.5 /* regime.py's: a new regime of larger errors */
#define LOG_REGIME_CLIP 6.907755278982137 /* log(1e3) */
#define LOG_ABS_GAUSS 0.6351814227307392
#define REGIME_ALPHA (2.0 / (20.0 + 1.0)) /* REGIME_SPAN 20 */
#define QUIET_HOLD 100.0 /* regime.py's: a lasting regime of smaller errors */
#define SCALE_CLIP 4.0 /* normalise.py's: a season scale factor's bound */

/* row flags written per sample */
#define F_FLAGGED 1
#define F_LEARNING 2
#define F_ONSET 4
#define F_REPLAY 8 /* the event tracker must see this row (flagged, or an event open) */

typedef struct {
    double *padded; /* (k, bins + 1), the last column 0 */
    double lo, hi, width, decay;
    long k, bins, log;
} table_t;

typedef struct {
    long n;                    /* channels */
    table_t first, second;
    double *peaks;             /* PeakTable of first's rows 0..n-1: (n, bins + 1) */
    double *peak, *quiet;      /* (n,) its open episodes' peaks, samples since */
    double *center, *scale;    /* (2, n): NormaliserPair rows: error, level deviation */
    double *means, *prev;      /* SampleFloors: (2, n) mean_level, mean_change; (n,) */
    int64_t *decimals;         /* (n,) */
    double *neg_powers;        /* 10 ** -d, d = 0..MAX_DECIMALS (numpy's values) */
    double *moments;           /* (2, n): EWMA of clip(z), of its square */
    double *level;             /* (n,) slow average of the samples */
    double *regime; /* (6, n): EWMAs of the recent errors' log-size, of the shares beyond
                     * / within the clip and of samples repeating the one before; the
                     * scale before a jump (0: none); flagged quiet samples so far */
    double *prof_mean, *prof_count; /* SeasonalProfile (bins, 2n), (bins,); NULL: none */
    long prof_bins;
    double period, periods;
    double *ss_mean, *ss_count; /* SeasonalScale (bins, n), (bins,); NULL: none */
    long ss_bins;
    double ss_memory, ss_min;
    double *dbl; /* first.total, second.total, profile.first, season scale's first (NaN: None) */
    int64_t *cnt; /* t, floors.n, model.n, level_norm.n, event open, quiet, decimals changed */
    /* constants */
    double alpha, energy_alpha, drift_unit, level_span, flagged_weight, level_floor, memory;
    double scale_span, threshold, anchor_fraction, log_fit_ratio, mean_abs_to_std;
    long warmup, holdoff;
    /* the call's rows: x, f (N, n); when (N,) seconds or NaN; out: score (N,), flags
     * (N,), contrib (N, n) */
    const double *X, *F, *when;
    double *score_out;
    int *flags_out;
    double *contrib_out;
} det_t;

/* 10 ** d, d = 0..MAX_DECIMALS: exact, as numpy's _POWERS */
static const double POWERS[MAX_DECIMALS + 1] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6};

static double dmax(double a, double b) { return a >= b ? a : b; }
static double dmin(double a, double b) { return a <= b ? a : b; }

/* Python's float %: the result has the sign of the divisor */
static double pymod(double a, double b)
{
    double m = fmod(a, b);
    if (m != 0.0) {
        if ((b < 0) != (m < 0)) m += b;
    } else {
        m = copysign(0.0, b);
    }
    return m;
}

/* numpy's pairwise sum (np.add.reduce of a contiguous float64 array) */
static double pairwise_sum(const double *a, long n)
{
    if (n < 8) {
        double r = 0.0;
        for (long i = 0; i < n; i++) r += a[i];
        return r;
    }
    if (n <= 128) {
        double r[8];
        long i;
        for (i = 0; i < 8; i++) r[i] = a[i];
        for (i = 8; i < n - (n % 8); i += 8)
            for (long j = 0; j < 8; j++) r[j] += a[i + j];
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += a[i];
        return res;
    }
    long n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

/* TailTable._quantiles for one row and one weight */
static double quantile(const table_t *tb, const double *row, double w)
{
    long j = 0;
    for (long b = 0; b <= tb->bins; b++) j += row[b] >= w;
    j -= 1;
    if (j < 0) j = 0;
    double at = row[j], nxt = row[j + 1];
    double span = at - nxt, frac = 0.0;
    if (span > 0) frac = (at - w) / span;
    frac = dmin(dmax(frac, 0.0), 1.0);
    return ((double)j + frac) * tb->width + tb->lo;
}

/* PeakTable.at_least_seen for row r at cell (index, frac), value v */
static double at_least_seen(const det_t *d, const table_t *tb, long r, long index, double frac,
                            double v, double tail, double v_tail, double decay, double anchor)
{
    const double *row = d->peaks + r * (tb->bins + 1);
    if (!(row[0] >= SEEN_COUNT)) return tail;
    double g_seen = quantile(tb, row, SEEN_COUNT), g_half = quantile(tb, row, 0.5 * SEEN_COUNT);
    double v_seen = tb->log ? pow(10.0, g_seen) : g_seen;
    double v_half = tb->log ? pow(10.0, g_half) : g_half;
    double at = row[index], above = row[index + 1];
    double counted = at - frac * (at - above);
    double spread = dmax((v_seen - v_tail) / log(anchor / SEEN_COUNT),
                         (v_half - v_seen) / 0.6931471805599453); /* log 2 */
    spread = dmax(spread, decay);
    double beyond = SEEN_COUNT * exp(-dmax(v - v_seen, 0.0) / spread);
    double seen = counted >= SEEN_COUNT ? counted : beyond;
    return dmax(tail, seen);
}

/* TailTable._extrapolate for one row (index < 0: no episodes, the scalar table) */
static double extrapolate(const det_t *d, const table_t *tb, long r, double g, double counted,
                          double anchor, long index, double frac)
{
    const double *row = tb->padded + r * (tb->bins + 1);
    double fit = FIT_RATIO * anchor;
    double g_tail = quantile(tb, row, anchor), g_fit = quantile(tb, row, fit);
    double v = g, v_tail = g_tail, v_fit = g_fit;
    if (tb->log) {
        v = pow(10.0, g);
        v_tail = pow(10.0, g_tail);
        v_fit = pow(10.0, g_fit);
    }
    double decay = (v_tail - v_fit) / d->log_fit_ratio;
    double floor = dmax(fabs(v_tail), tb->width) * MIN_DECAY;
    decay = dmax(decay, floor);
    double excess = -dmax(v - v_tail, 0.0);
    excess /= decay;
    double tail = exp(excess) * anchor;
    if (index >= 0 && tb == &d->first && r < d->n)
        tail = at_least_seen(d, tb, r, index, frac, v, tail, v_tail, decay, anchor);
    return (row[0] >= fit && g > g_tail) ? tail : counted;
}

/* counted weight at or above grid position (index, frac) of row r */
static double counted_at(const det_t *d, const table_t *tb, double total, long r, double g,
                         long index, double frac)
{
    if (total <= 0.0) return 0.0;
    const double *cell = tb->padded + r * (tb->bins + 1) + index;
    double at = cell[0], above = cell[1];
    double counted = at - frac * (at - above);
    double anchor = dmax(TAIL_COUNT, d->anchor_fraction * total);
    if (counted < anchor) counted = extrapolate(d, tb, r, g, counted, anchor, index, frac);
    return counted;
}

static void locate(const table_t *tb, double value, double *g, long *index, double *frac)
{
    double v = tb->log ? log10(dmax(value, 1e-300)) : value;
    v = dmin(dmax(v, tb->lo), tb->hi);
    double pos = (v - tb->lo) / tb->width;
    long i = (long)pos;
    if (i > tb->bins - 1) i = tb->bins - 1;
    *g = v;
    *index = i;
    *frac = pos - (double)i;
}

/* PeakTable.observe: one learnt sample's |z| (st[0..n-1]) */
static void observe_episodes(det_t *d, const table_t *tb, const double *st)
{
    long w = tb->bins + 1;
    for (long b = 0; b < d->n * w; b++) d->peaks[b] *= tb->decay;
    for (long c = 0; c < d->n; c++) {
        int above = st[c] > EPISODE_LEVEL;
        if (above) d->peak[c] = dmax(d->peak[c], st[c]);
        if (!(d->peak[c] > 0.0)) continue;
        if (above) d->quiet[c] = 0.0;
        else d->quiet[c] += 1.0;
        if (d->quiet[c] >= EPISODE_GAP) {
            double g, frac;
            long index;
            locate(tb, d->peak[c], &g, &index, &frac);
            for (long b = 0; b <= index; b++) d->peaks[c * w + b] += 1.0;
            d->peak[c] = 0.0;
            d->quiet[c] = 0.0;
        }
    }
}

/* SampleFloors.observe and floor() */
static void observe(det_t *d, const double *x, double *floor)
{
    long n = d->n;
    int still = 1;
    for (long c = 0; c < n && still; c++) {
        long dec = d->decimals[c];
        if (dec > MAX_DECIMALS) continue;
        double y = x[c] * POWERS[dec];
        still = fabs(y - nearbyint(y)) <= FLOAT32_TOL * fabs(y) + 1e-9;
    }
    if (!still) {
        for (long c = 0; c < n; c++) {
            long needed = MAX_DECIMALS + 1;
            for (long p = 0; p < MAX_DECIMALS; p++) {
                double y = x[c] * POWERS[p];
                if (fabs(y - nearbyint(y)) <= FLOAT32_TOL * fabs(y) + 1e-9) {
                    needed = p;
                    break;
                }
            }
            if (needed > d->decimals[c]) d->decimals[c] = needed;
        }
        d->cnt[6] = 1;
    }
    int64_t count = ++d->cnt[1];
    double rate = dmax(1.0 / (double)count, 1.0 / d->memory);
    double rate2 = dmax(1.0 / (double)(count - 1), 1.0 / d->memory);
    double *ml = d->means, *mc = d->means + n;
    for (long c = 0; c < n; c++) {
        ml[c] += (fabs(x[c]) - ml[c]) * rate;
        mc[c] += (fabs(x[c] - d->prev[c]) - mc[c]) * rate2;
        d->prev[c] = x[c];
        long dec = d->decimals[c];
        double res = dec <= MAX_DECIMALS ? 0.25 * d->neg_powers[dec] : 0.0;
        double f = dmax(res, d->level_floor * mc[c]);
        double lv = 1e-6 * ml[c];
        lv += 1e-12;
        floor[c] = dmax(f, lv);
    }
}

/* ErrorNormaliser.advance: the (scale, center) rates, 0 when the trackers stay */
static int advance(const det_t *d, int64_t *count, int learning, double weight, double *rate,
                   double *slow)
{
    *count += 1;
    double n = (double)*count;
    if (d->scale_span > 0) {
        *rate = weight * dmax(1.0 / n, 2.0 / (d->scale_span + 1.0));
        *slow = dmax(1.0 / n, *rate / 10.0);
        return 1;
    }
    if (learning) {
        *rate = *slow = 1.0 / n;
        return 1;
    }
    return 0;
}

/* TailTable.add_at / add_scalar on one row: decay it all, `weight` at or below index */
static void add_row_mask(double *row, long cells, long index, double decay, double weight)
{
    long b = 0;
    for (; b <= index; b++) {
        double v = row[b] * decay; /* rounded, then the weight added: numpy's two steps */
        row[b] = v + weight;
    }
    for (; b < cells; b++) row[b] *= decay;
}

/* One call: the N rows the struct points at. Returns 0. */
int edgernn_detect(det_t *d, long N)
{
    const double *X = d->X, *F = d->F, *when = d->when;
    double *score_out = d->score_out, *contrib_out = d->contrib_out;
    int *flags_out = d->flags_out;
    long n = d->n, k = 5 * n, n2 = 2 * n;
    if (n <= 0 || n > MAX_CHANNELS) return -1;
    double floor[MAX_CHANNELS], z[2 * MAX_CHANNELS], usual[2 * MAX_CHANNELS];
    double d0[2 * MAX_CHANNELS], bound[2 * MAX_CHANNELS], st[5 * MAX_CHANNELS];
    double p[5 * MAX_CHANNELS], surprise[MAX_CHANNELS], repeat[MAX_CHANNELS];
    double size[MAX_CHANNELS]; /* |clip(z)| before the season scale, which learns it */
    long idx[5 * MAX_CHANNELS];
    table_t *t1 = &d->first, *t2 = &d->second;
    for (long i = 0; i < N; i++) {
        const double *x = X + i * n, *f = F + i * n;
        long t = d->cnt[0]++;
        int learning = t < d->warmup;
        /* the forecast error and the level deviation; their normalised form */
        for (long c = 0; c < n; c++) repeat[c] = x[c] == d->prev[c] ? 1.0 : 0.0;
        observe(d, x, floor);
        for (long c = 0; c < n; c++) {
            double e0 = f[c] - x[c];
            double e1 = d->level_span <= 0 ? 0.0 : x[c] - d->level[c];
            d0[c] = e0 - d->center[c];
            d0[n + c] = e1 - d->center[n + c];
            bound[c] = dmax(d->scale[c], floor[c]);
            bound[n + c] = dmax(d->scale[n + c], floor[c]);
        }
        for (long j = 0; j < n2; j++) z[j] = d0[j] / bound[j];
        /* the seasonal baseline */
        if (d->prof_mean != NULL && !isnan(when[i])) {
            double w = when[i];
            if (isnan(d->dbl[2])) d->dbl[2] = w;
            long b = (long)(pymod(w, d->period) / d->period * (double)d->prof_bins);
            b %= d->prof_bins;
            int known = !(w - d->dbl[2] < d->period || d->prof_count[b] < 1);
            double *m = d->prof_mean + b * n2;
            if (known) memcpy(usual, m, sizeof(double) * n2);
            d->prof_count[b] += 1;
            double r = dmax(1.0 / d->prof_count[b], 1.0 / d->periods);
            for (long j = 0; j < n2; j++) { /* in the error's units, as core.py */
                double cd = dmin(dmax(d0[j], -MAX_USUAL * bound[j]), MAX_USUAL * bound[j]);
                m[j] += r * (cd - m[j]);
            }
            if (known)
                for (long j = 0; j < n2; j++) {
                    double zu = (d0[j] - usual[j]) / bound[j];
                    if (fabs(zu) < fabs(z[j])) z[j] = zu;
                }
        }
        /* z in this hour's units (normalise.py SeasonalScale) */
        long sb = -1;
        if (d->ss_mean != NULL && !isnan(when[i])) {
            double w = when[i];
            if (isnan(d->dbl[3])) d->dbl[3] = w;
            sb = (long)(pymod(w, d->period) / d->period * (double)d->ss_bins);
            sb %= d->ss_bins;
            for (long c = 0; c < n; c++) size[c] = dmin(fabs(z[c]), CLIP);
            if (!(w - d->dbl[3] < d->period || d->ss_count[sb] < d->ss_min)) {
                double known = 0.0;
                for (long b = 0; b < d->ss_bins; b++) known += d->ss_count[b] >= d->ss_min;
                for (long c = 0; c < n; c++) {
                    double sum = 0.0;
                    for (long b = 0; b < d->ss_bins; b++)
                        if (d->ss_count[b] >= d->ss_min) sum += d->ss_mean[b * n + c];
                    double overall = sum / known;
                    double factor = overall > 0 ? d->ss_mean[sb * n + c] / overall : 1.0;
                    factor = dmin(dmax(factor, 1.0 / SCALE_CLIP), SCALE_CLIP);
                    z[c] /= factor;
                }
            }
        }
        /* the statistics */
        double *mean = d->moments, *energy = d->moments + n;
        for (long c = 0; c < n; c++) {
            double s0 = dmin(dmax(z[c], -CLIP), CLIP), s1 = s0 * s0;
            mean[c] += (s0 - mean[c]) * d->alpha;
            energy[c] += (s1 - energy[c]) * d->energy_alpha;
            st[c] = fabs(z[c]);
            st[n + c] = fabs(mean[c]) / d->drift_unit;
            st[2 * n + c] = energy[c];
            st[3 * n + c] = 1.0 / dmax(energy[c], MIN_ENERGY);
            st[4 * n + c] = fabs(z[n + c]);
        }
        /* first stage: each statistic's tail probability */
        double total1 = d->dbl[0], smallest = INFINITY;
        for (long j = 0; j < k; j++) {
            double g, frac;
            locate(t1, st[j], &g, &idx[j], &frac);
            double counted = counted_at(d, t1, total1, j, g, idx[j], frac);
            double prior = j >= 2 * n && j < 3 * n
                               ? exp(dmin(1.0 - st[j], 0.0) / ENERGY_PRIOR_SCALE) : exp(-st[j]);
            p[j] = (counted + PRIOR_WEIGHT * prior) / (total1 + PRIOR_WEIGHT);
            smallest = dmin(smallest, p[j]);
        }
        /* second stage: the score */
        smallest = dmax(smallest, 1e-300);
        double top = -log10(smallest);
        double prior = dmin(1.0, (double)k * smallest);
        double g2, frac2;
        long bin2;
        locate(t2, top, &g2, &bin2, &frac2);
        double counted2 = counted_at(d, t2, d->dbl[1], 0, g2, bin2, frac2);
        double tail = (counted2 + PRIOR_WEIGHT * prior) / (d->dbl[1] + PRIOR_WEIGHT);
        double score = dmin(-log10(dmax(tail, 1e-300)), MAX_SCORE);
        /* the verdict and what is learnt from it */
        int flagged = !learning && score >= d->threshold;
        int onset = flagged && !d->cnt[4];
        int fl = (flagged ? F_FLAGGED : 0) | (learning ? F_LEARNING : 0) | (onset ? F_ONSET : 0);
        if (onset || !flagged) {
            if (total1 >= MIN_SECOND_STAGE) {
                add_row_mask(t2->padded, t2->bins + 1, bin2, t2->decay, 1.0);
                d->dbl[1] = d->dbl[1] * t2->decay + 1.0;
            }
            for (long j = 0; j < k; j++)
                add_row_mask(t1->padded + j * (t1->bins + 1), t1->bins + 1, idx[j], t1->decay,
                             1.0);
            d->dbl[0] = total1 * t1->decay + 1.0;
            observe_episodes(d, t1, st);
        }
        if (sb >= 0 && !flagged) {
            double count = d->ss_count[sb] += 1.0;
            double rate = dmax(1.0 / count, 1.0 / d->ss_memory);
            double *m = d->ss_mean + sb * n;
            for (long c = 0; c < n; c++) m[c] += rate * (size[c] - m[c]);
        }
        double weight = flagged ? d->flagged_weight : 1.0;
        if (weight > 0) {
            double r0, s0, r1, s1;
            int m0 = advance(d, &d->cnt[2], learning, weight, &r0, &s0);
            int m1 = advance(d, &d->cnt[3], learning, weight, &r1, &s1);
            if (m0 && m1) {
                for (long c = 0; c < n; c++) {
                    double size0 = dmin(fabs(d0[c]), CLIP * bound[c]);
                    double size1 = dmin(fabs(d0[n + c]), CLIP * bound[n + c]);
                    d->center[c] += copysign(size0, d0[c]) * s0; /* row 1 is centered */
                    d->scale[c] += (d->mean_abs_to_std * size0 - d->scale[c]) * r0;
                    d->scale[n + c] += (d->mean_abs_to_std * size1 - d->scale[n + c]) * r1;
                }
            }
            if (d->level_span > 0) {
                double rate = weight * (2.0 / (d->level_span + 1.0));
                for (long c = 0; c < n; c++) d->level[c] += rate * (x[c] - d->level[c]);
            }
        }
        /* a new regime of larger errors: the scale jumps up, and back when it ends;
         * down after a lasting regime of smaller ones (regime.py follow) */
        if (d->scale_span > 0) {
            double *logsize = d->regime, *beyond = d->regime + n;
            double *below = d->regime + 2 * n, *repeats = d->regime + 3 * n;
            double *before = d->regime + 4 * n, *quiet_for = d->regime + 5 * n;
            for (long c = 0; c < n; c++) {
                double ref = log(bound[c]), a = fabs(d0[c]);
                double size = log(dmax(a, 1e-300));
                size = dmin(dmax(size, ref - LOG_REGIME_CLIP), ref + LOG_REGIME_CLIP);
                logsize[c] += REGIME_ALPHA * (size - logsize[c]);
                beyond[c] += REGIME_ALPHA * ((a > CLIP * bound[c] ? 1.0 : 0.0) - beyond[c]);
                below[c] += REGIME_ALPHA * ((a * CLIP < bound[c] ? 1.0 : 0.0) - below[c]);
                repeats[c] += REGIME_ALPHA * (repeat[c] - repeats[c]);
                double recent = exp(logsize[c] + LOG_ABS_GAUSS);
                if (beyond[c] > REGIME_SHARE && recent > bound[c]) {
                    if (before[c] <= 0) before[c] = d->scale[c];
                    d->scale[c] = recent;
                }
                if (before[c] > 0 && below[c] > REGIME_SHARE) d->scale[c] = dmax(recent, before[c]);
                if (before[c] > 0 && d->scale[c] <= before[c]) before[c] = 0.0;
                int over = below[c] < 0.5 * REGIME_SHARE || repeats[c] > REGIME_SHARE || before[c] > 0;
                int quiet = below[c] > REGIME_SHARE && !over;
                if (over) {
                    quiet_for[c] = 0.0;
                } else if (quiet && flagged && (quiet_for[c] += 1.0) >= QUIET_HOLD) {
                    d->scale[c] = dmin(d->scale[c], recent);
                    quiet_for[c] = 0.0;
                }
            }
        }
        /* each channel's share of the surprisal: -min over its statistics of log10 p,
         * taken as -log10 of the smallest p (log10 is monotonic) */
        for (long c = 0; c < n; c++) {
            double lowest = p[c];
            for (long s = 1; s < 5; s++) lowest = dmin(lowest, p[s * n + c]);
            surprise[c] = -log10(dmax(lowest, 1e-300));
        }
        double total = pairwise_sum(surprise, n);
        double *contrib = contrib_out + i * n;
        for (long c = 0; c < n; c++) contrib[c] = total > 0 ? surprise[c] / total : 0.0;
        /* the event tracker's open / quiet state (alerts.py EventTracker.update) */
        if (!learning) {
            if (flagged || d->cnt[4]) fl |= F_REPLAY;
            if (flagged) {
                d->cnt[4] = 1;
                d->cnt[5] = 0;
            } else if (d->cnt[4] && ++d->cnt[5] >= d->holdoff) {
                d->cnt[4] = 0;
                d->cnt[5] = 0;
            }
        }
        score_out[i] = score;
        flags_out[i] = fl;
    }
    return 0;
}

/* ---- the online head's products (runtime/adapt.py head_rows, OnlineHead.step) ------
 * out (n, c) = phi (n, d) @ A (d, c), each sum taken in the order j = 0 .. d-1, each
 * product rounded and then added (no FMA: the pragmas above). numpy's
 * `out = phi[:, :1] * A[0]; out += phi[:, j:j+1] * A[j]` does the same operations, so
 * both give the same bits, and a row gives the same bits alone or in a block. */
void edgernn_head_rows(const double *restrict phi, const double *restrict A, long n, long d,
                       long c, double *restrict out)
{
    for (long i = 0; i < n; i++) {
        const double *p = phi + i * d;
        double *o = out + i * c;
        long k0 = 0;
        for (; k0 + 8 <= c; k0 += 8) { /* 8 columns in registers: one vector or two */
            double acc[8];
            for (int k = 0; k < 8; k++)
                acc[k] = p[0] * A[k0 + k];
            for (long j = 1; j < d; j++) {
                const double pj = p[j], *a = A + j * c + k0;
                for (int k = 0; k < 8; k++)
                    acc[k] += pj * a[k];
            }
            memcpy(o + k0, acc, sizeof acc);
        }
        for (long k = k0; k < c; k++) { /* the last columns, one at a time */
            double acc = p[0] * A[k];
            for (long j = 1; j < d; j++)
                acc += p[j] * A[j * c + k];
            o[k] = acc;
        }
    }
}

/* One corrected forecast (OnlineHead.step's last lines, then Monitor's float32):
 * out = float32(base + std * (A^T phi)), phi (d,), base and std (c,). */
void edgernn_head_forecast(const double *phi, const double *A, const double *std,
                           const double *base, long d, long c, float *out)
{
    double corr[MAX_CHANNELS];
    if (c > MAX_CHANNELS)
        return;
    edgernn_head_rows(phi, A, 1, d, c, corr);
    for (long k = 0; k < c; k++) {
        corr[k] *= std[k];
        corr[k] += base[k];
        out[k] = (float)corr[k];
    }
}

/* ---- CSV text of float32 values: runtime/output.py float32_repr_lines in C ----------
 * The same float64 operations as output.py's _shortest_bisected (pass 1) and the same
 * layout rules as its grid (pass 2); the values pass 1 is not sure of are left to
 * Python's scalar formula between the passes. The tables come from output.py. */

/* _shortest_bisected: m, q (0, 0 where not sure) and whether sure, for n float32s;
 * returns how many finite nonzero values are not sure, their indices in `unsure`. */
long edgernn_shortest(const float *v, long n, const double *mul, const double *dv,
                      const double *half_t, const unsigned char *usable, const int64_t *k0,
                      const double *pow10, double sure, double *m_out, int64_t *q_out,
                      int64_t *unsure)
{
    long count = 0;
    for (long i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, v + i, 4);
        long e = (bits >> 23) & 0xFF;
        double s = fabs((double)v[i]) * mul[e] / dv[e], half = half_t[e];
        long lo = 0, hi = 10;
        for (int h = 0; h < 4; h++) {
            long mid = (lo + hi) >> 1;
            double p = pow10[mid];
            int ok = fabs(rint(s / p) * p - s) < half;
            long a = mid * ok, b = mid + 10 * ok;
            lo = lo >= a ? lo : a;
            hi = hi <= b ? hi : b;
        }
        double p = pow10[lo], scaled = s / p, m = rint(scaled);
        double dist = fabs(m * p - s);
        p = pow10[lo + 1];
        double dist_up = fabs(rint(s / p) * p - s), margin = sure * half;
        /* m % 10 as an integer: m is whole, >= 0 and below 10**11 wherever usable[e]
         * (the && stops there otherwise): fmod(m, 10.0) != 0 exactly, and far cheaper */
        int ok = usable[e] && (bits & 0x7FFFFF) != 0 && dist < half - margin &&
                 dist_up > half + margin && fabs(scaled - floor(scaled) - 0.5) >= sure &&
                 (uint64_t)m % 10 != 0;
        m_out[i] = ok ? m : 0.0;
        q_out[i] = ok ? k0[e] + lo : 0;
        if (!ok && isfinite(v[i]) && v[i] != 0) unsure[count++] = i;
    }
    return count;
}

/* the decimal digits of whole w (< 2^63) into out, most significant first */
static long put_digits(char *out, uint64_t w)
{
    char tmp[24];
    long k = 0;
    do {
        tmp[k++] = (char)('0' + w % 10);
        w /= 10;
    } while (w);
    for (long j = 0; j < k; j++) out[j] = tmp[k - 1 - j];
    return k;
}

/* one value as Python's repr of m * 10**q (sign from v), as output.py's grid lays it */
static long put_value(char *out, float v, double m, int64_t q, const double *pow10)
{
    long at = 0, nd = 1;
    for (long j = 1; j < 10; j++) nd += pow10[j] <= m;
    long decpt = nd + (long)q;
    int expo_form = decpt <= -4 || decpt > 16;
    long fw = expo_form ? nd - 1 : (-q > 1 ? -q : 1);
    long cut_at = expo_form ? nd - 1 : (-q < 0 ? 0 : (-q > 22 ? 22 : -q));
    double cut = pow10[cut_at];
    double whole = floor(m / cut);
    double frac = m - whole * cut;
    if (!expo_form && q > 0) whole = m * pow10[q > 22 ? 22 : q];
    if (signbit(v)) out[at++] = '-';
    at += put_digits(out + at, (uint64_t)whole);
    if (fw > 0) {
        out[at++] = '.';
        uint64_t f = (uint64_t)frac;
        for (long j = fw - 1; j >= 0; j--) {
            out[at + j] = (char)('0' + f % 10);
            f /= 10;
        }
        at += fw;
    }
    if (expo_form) {
        long e = decpt - 1;
        out[at++] = 'e';
        out[at++] = e < 0 ? '-' : '+';
        e = e < 0 ? -e : e;
        out[at++] = (char)('0' + (e / 10) % 10);
        out[at++] = (char)('0' + e % 10);
    }
    return at;
}

/* float32_repr_lines' text of rows x cols values from pass 1's m, q (finished by
 * Python), the suffix (rows, suffix_w) after each row's last value if suffix_w > 0;
 * returns the bytes written (at most rows * (cols * 40 + suffix_w + 1)). */
long edgernn_repr_lines(const float *v, const double *m, const int64_t *q, long rows,
                        long cols, const unsigned char *suffix, long suffix_w,
                        const double *pow10, char *out)
{
    long at = 0;
    for (long r = 0; r < rows; r++) {
        for (long c = 0; c < cols; c++) {
            long i = r * cols + c;
            if (isfinite(v[i])) at += put_value(out + at, v[i], m[i], q[i], pow10);
            if (c + 1 < cols) out[at++] = ',';
        }
        if (suffix_w > 0) {
            memcpy(out + at, suffix + r * suffix_w, suffix_w);
            at += suffix_w;
        }
        out[at++] = '\n';
    }
    return at;
}
