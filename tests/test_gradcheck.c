// tests/test_gradcheck.c: finite-difference checks of every CPU op's backward (model/ops.h, ops_cpu), and of the
// whole model's gradient.
//
// Method, per op: a small, odd-shaped problem with fresh random inputs (never zeros); a fixed random R; the scalar
// loss L = sum(R * output). A double-precision reference forward, written here from model/MODEL.md and ops.h (not
// from the op), is run on the op's own fp32 inputs (converted to double), and dL/d(every input element) is taken
// by central differences in double (step 1e-5 * (1 + |x|): truncation ~1e-10, round-off ~1e-10, both far below
// the tolerances). The op's fp32 gradient is compared with it on EVERY element:
//     |op - ref| <= rtol * |ref| + afrac * max|ref|   (the "ratio" printed is the worst left/right side; <= 1 passes)
// Gradients: rtol 1e-4, afrac 2e-5. fp32 rounding is ~6e-8 per operation; the sums here have at most a few dozen
// terms, so fp32 results sit within ~1e-6 of the largest term (after cancellation, of the largest gradient
// element): 2e-5 leaves ~10x margin, while any wrong factor, sign, index or missing term is off by O(1).
// Forward outputs are compared with the same reference (rtol 1e-5, afrac 1e-5), so the reference is known to be
// the function the op computes. Output buffers that an op writes are poisoned with NaN first (a missed element
// fails); buffers that it accumulates into start from random non-zero values and (after - before) is checked;
// memory that it must not touch holds a sentinel that is checked bit for bit.
//
// Whole model: model_forward/model_backward (loss_scale 0.75) on a tiny config (MoE layer included, balance-loss
// weight 0.05) vs Richardson-extrapolated fp32 central differences of ce + aux on a random sample of ~110 parameter
// entries (every tensor, 20 router entries), skipping entries whose perturbation changes a top-K choice. Its
// tolerance is explained where it is applied.
//
// The seed is printed; GRADCHECK_SEED=<n> reruns the same draw.
#include "../model/model.h"
#include "test_util.h"
#include <math.h>

static const Ops* ops = &ops_cpu;

#define G_RTOL 1e-4
#define G_AFRAC 2e-5
#define F_RTOL 1e-5
#define F_AFRAC 1e-5

// ----------------------------------------------------------------------------
// helpers

static float* fnew(size_t n) { return xmalloc(n * sizeof(float) + 4); }
static double* dnew(size_t n) { return xcalloc(n + 1, sizeof(double)); }
static int* inew(size_t n) { return xmalloc(n * sizeof(int) + 4); }
static void fill(float* a, size_t n, float s) { for (size_t i = 0; i < n; i++) a[i] = s * rn(); }
static void fill_nan(float* a, size_t n) { for (size_t i = 0; i < n; i++) a[i] = NAN; }
// an accumulator's starting values: random, non-zero, of the size of the gradient that will be added (so that
// fp32 rounding of start + increment does not swamp a small increment)
static void fill_like(float* a, size_t n, const double* ref, size_t nref) {
    double m = 0;
    for (size_t i = 0; i < nref; i++) m = fmax(m, fabs(ref[i]));
    fill(a, n, (float)(m > 0 ? m : 1.0));
}
static double* todbl(const float* a, size_t n) {
    double* d = dnew(n);
    for (size_t i = 0; i < n; i++) d[i] = a[i];
    return d;
}
static double maxabs(const double* b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(b[i]));
    return m;
}

// Compares a (double view of the op's fp32 result) with the reference b on every element.
static int cmp(const char* what, const double* a, const double* b, size_t n, double rtol, double afrac) {
    double mx = maxabs(b, n), atol = afrac * mx + 1e-30, worst = 0;
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        double r = fabs(a[i] - b[i]) / (atol + rtol * fabs(b[i]));
        if (!(r <= worst)) { worst = r; w = i; }  // NaN counts as worst
    }
    return check(worst <= 1.0, "%s: %zu elems, worst |op-ref|/(%.0e|ref| + %.0e max|ref|) = %.3g (tol 1), at [%zu] %.8g vs %.8g",
                 what, n, rtol, afrac, worst, w, n ? a[w] : 0.0, n ? b[w] : 0.0);
}
// op result in fp32
static int cmpf(const char* what, const float* a, const double* b, size_t n, double rtol, double afrac) {
    double* ad = todbl(a, n);
    int ok = cmp(what, ad, b, n, rtol, afrac);
    free(ad);
    return ok;
}
// accumulated result: (after - before) vs the reference increment
static int cmp_acc(const char* what, const float* after, const float* before, const double* b, size_t n) {
    double* ad = dnew(n);
    for (size_t i = 0; i < n; i++) ad[i] = (double)after[i] - (double)before[i];
    int ok = cmp(what, ad, b, n, G_RTOL, G_AFRAC);
    free(ad);
    return ok;
}
// bit-exact equality
static int cmp_exact(const char* what, const float* a, const float* b, size_t n) {
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof(float)) != 0) { if (!bad) first = i; bad++; }
    if (!bad) return check(1, "%s: %zu elems, all bit-exact", what, n);
    return check(0, "%s: %zu of %zu elems differ, first [%zu] %.8g vs %.8g", what, bad, n, first, (double)a[first],
                 (double)b[first]);
}

// Central differences in double of loss() w.r.t. every element of x (which loss() reads). loss() returns NaN
// when a discrete choice (top-K) changed; the step is then divided by 8, up to 3 times.
typedef double (*LossFn)(void);
static long fd_retries = 0;
static void fd(LossFn loss, double* x, size_t n, double* g) {
    for (size_t i = 0; i < n; i++) {
        double x0 = x[i], h = 1e-5 * (1.0 + fabs(x0)), gi = NAN;
        for (int t = 0; t < 4; t++, h /= 8) {
            x[i] = x0 + h;
            double lp = loss();
            x[i] = x0 - h;
            double lm = loss();
            x[i] = x0;
            if (isnan(lp) || isnan(lm)) { fd_retries++; continue; }
            gi = (lp - lm) / (2 * h);
            break;
        }
        g[i] = gi;
    }
}

// ----------------------------------------------------------------------------
// embedding

static struct { int N, d; const int* tok; double *wte, *R; } EM;
static double emb_loss(void) {
    double L = 0;
    for (int n = 0; n < EM.N; n++)
        for (int c = 0; c < EM.d; c++) L += EM.R[n * EM.d + c] * EM.wte[(size_t)EM.tok[n] * EM.d + c];
    return L;
}

static void test_embedding(void) {
    int N = 11, d = 7, V = 6;  // token V-1 never used; N > V forces repeats
    int* tok = inew(N);
    for (int n = 0; n < N; n++) tok[n] = (int)rng_below(&rng, V - 1);
    tok[3] = tok[8];
    float *wte = fnew(V * d), *out = fnew(N * d), *R = fnew(N * d), *dw = fnew(V * d);
    fill(wte, V * d, 1);
    fill(R, N * d, 1);
    fill_nan(out, N * d);
    ops->embedding_forward(out, tok, wte, N, d);
    float* ref = fnew(N * d);
    for (int n = 0; n < N; n++) memcpy(ref + n * d, wte + tok[n] * d, d * sizeof(float));
    cmp_exact("embedding_forward out = wte[tokens]", out, ref, N * d);
    EM.N = N; EM.d = d; EM.tok = tok; EM.wte = todbl(wte, V * d); EM.R = todbl(R, N * d);
    double* g = dnew(V * d);
    fd(emb_loss, EM.wte, V * d, g);
    fill_like(dw, V * d, g, V * d);
    float* dw0 = fdup(dw, V * d);
    ops->embedding_backward(dw, R, tok, N, d);
    cmp_acc("embedding_backward dwte (+=, repeated tokens, one unused row)", dw, dw0, g, V * d);
    cmp_exact("embedding_backward unused token row untouched", dw + (V - 1) * d, dw0 + (V - 1) * d, d);
    free(tok); free(wte); free(out); free(R); free(dw); free(dw0); free(ref); free(EM.wte); free(EM.R); free(g);
}

// ----------------------------------------------------------------------------
// RMSNorm

static struct { int N, C, st; double eps; double *x, *g, *R; } RM;
static double rms_ref(double* out, double* rstd) {
    double L = 0;
    for (int n = 0; n < RM.N; n++) {
        const double* x = RM.x + (size_t)n * RM.st;
        double ss = 0;
        for (int c = 0; c < RM.C; c++) ss += x[c] * x[c];
        double r = 1.0 / sqrt(ss / RM.C + RM.eps);
        if (rstd) rstd[n] = r;
        for (int c = 0; c < RM.C; c++) {
            double y = x[c] * r * RM.g[c];
            if (out) out[n * RM.C + c] = y;
            L += RM.R[n * RM.C + c] * y;
        }
    }
    return L;
}
static double rms_loss(void) { return rms_ref(NULL, NULL); }

static void test_rmsnorm(int st) {
    int N = 5, C = 7;
    float eps = 1e-3f;  // large enough that a missing eps shows in the forward check
    float *x = fnew(N * st), *g = fnew(C), *R = fnew(N * C), *out = fnew(N * C), *rstd = fnew(N);
    fill(x, N * st, 1);
    for (int c = 0; c < C; c++) g[c] = 1.0f + 0.3f * rn();
    fill(R, N * C, 1);
    fill_nan(out, N * C);
    fill_nan(rstd, N);
    ops->rmsnorm_forward(out, rstd, x, st, g, N, C, eps);
    RM.N = N; RM.C = C; RM.st = st; RM.eps = eps; RM.x = todbl(x, N * st); RM.g = todbl(g, C); RM.R = todbl(R, N * C);
    double *rout = dnew(N * C), *rr = dnew(N);
    rms_ref(rout, rr);
    char what[160];
    snprintf(what, sizeof what, "rmsnorm_forward out (in_stride %d, C %d)", st, C);
    cmpf(what, out, rout, N * C, F_RTOL, F_AFRAC);
    snprintf(what, sizeof what, "rmsnorm_forward rstd (in_stride %d)", st);
    cmpf(what, rstd, rr, N, F_RTOL, F_AFRAC);
    // reference gradients: input (strided; only the C used columns) and gain
    double* gx_full = dnew(N * st);
    fd(rms_loss, RM.x, N * st, gx_full);
    double* gg = dnew(C);
    fd(rms_loss, RM.g, C, gg);
    double* gx = dnew(N * C);
    for (int n = 0; n < N; n++) memcpy(gx + n * C, gx_full + n * st, C * sizeof(double));
    for (int acc = 0; acc <= 1; acc++) {
        float *dx = fnew(N * st), *dg = fnew(C);
        fill_like(dx, N * st, gx, N * C);
        for (int n = 0; n < N; n++)
            for (int c = C; c < st; c++) dx[n * st + c] = 3.25f;  // gap columns: sentinel
        if (!acc)
            for (int n = 0; n < N; n++) fill_nan(dx + n * st, C);
        fill_like(dg, C, gg, C);
        float *dx0 = fdup(dx, N * st), *dg0 = fdup(dg, C);
        ops->rmsnorm_backward(dx, st, acc, dg, R, x, g, rstd, N, C);
        float *a = fnew(N * C), *a0 = fnew(N * C);
        for (int n = 0; n < N; n++) {
            memcpy(a + n * C, dx + n * st, C * sizeof(float));
            for (int c = 0; c < C; c++) a0[n * C + c] = acc ? dx0[n * st + c] : 0.0f;
        }
        snprintf(what, sizeof what, "rmsnorm_backward dinp (%s, in_stride %d)", acc ? "accumulate +=" : "write =", st);
        cmp_acc(what, a, a0, gx, N * C);
        snprintf(what, sizeof what, "rmsnorm_backward dgain (+=, in_stride %d, dinp %s)", st, acc ? "+=" : "=");
        cmp_acc(what, dg, dg0, gg, C);
        if (st > C) {
            snprintf(what, sizeof what, "rmsnorm_backward gap columns [C, in_stride) of dinp untouched (%s)", acc ? "+=" : "=");
            size_t bad = 0;
            for (int n = 0; n < N; n++)
                for (int c = C; c < st; c++) bad += memcmp(&dx[n * st + c], &dx0[n * st + c], 4) != 0;
            check(bad == 0, "%s: %zu of %d sentinel values changed", what, bad, N * (st - C));
        }
        free(dx); free(dg); free(dx0); free(dg0); free(a); free(a0);
    }
    free(x); free(g); free(R); free(out); free(rstd); free(RM.x); free(RM.g); free(RM.R);
    free(rout); free(rr); free(gx_full); free(gg); free(gx);
}

// ----------------------------------------------------------------------------
// matmul

static struct { int N, C, OC; double *x, *w, *R; } MM;
static double mm_ref(double* out) {
    double L = 0;
    for (int n = 0; n < MM.N; n++)
        for (int o = 0; o < MM.OC; o++) {
            double s = 0;
            for (int c = 0; c < MM.C; c++) s += MM.x[n * MM.C + c] * MM.w[o * MM.C + c];
            if (out) out[n * MM.OC + o] = s;
            L += MM.R[n * MM.OC + o] * s;
        }
    return L;
}
static double mm_loss(void) { return mm_ref(NULL); }

static void test_matmul(void) {
    int N = 5, C = 7, OC = 3;
    float *x = fnew(N * C), *w = fnew(OC * C), *R = fnew(N * OC), *out = fnew(N * OC);
    fill(x, N * C, 1);
    fill(w, OC * C, 1);
    fill(R, N * OC, 1);
    fill_nan(out, N * OC);
    ops->matmul_forward(out, x, w, N, C, OC);
    MM.N = N; MM.C = C; MM.OC = OC; MM.x = todbl(x, N * C); MM.w = todbl(w, OC * C); MM.R = todbl(R, N * OC);
    double* rout = dnew(N * OC);
    mm_ref(rout);
    cmpf("matmul_forward out (5x7 @ 7x3)", out, rout, N * OC, F_RTOL, F_AFRAC);
    double *gx = dnew(N * C), *gw = dnew(OC * C);
    fd(mm_loss, MM.x, N * C, gx);
    fd(mm_loss, MM.w, OC * C, gw);
    for (int mode = 0; mode < 3; mode++) {  // 0: dinp written, 1: dinp accumulated, 2: dinp NULL
        float *dx = fnew(N * C), *dw = fnew(OC * C);
        fill_like(dx, N * C, gx, N * C);
        if (mode == 0) fill_nan(dx, N * C);
        fill_like(dw, OC * C, gw, OC * C);
        float *dx0 = fdup(dx, N * C), *dw0 = fdup(dw, OC * C);
        ops->matmul_backward(mode == 2 ? NULL : dx, mode == 1, dw, R, x, w, N, C, OC);
        const char* mname = mode == 0 ? "dinp written" : mode == 1 ? "dinp accumulated" : "dinp NULL";
        char what[128];
        if (mode < 2) {
            float* base = fnew(N * C);
            for (int i = 0; i < N * C; i++) base[i] = mode ? dx0[i] : 0.0f;
            snprintf(what, sizeof what, "matmul_backward dinp (%s)", mname);
            cmp_acc(what, dx, base, gx, N * C);
            free(base);
        }
        snprintf(what, sizeof what, "matmul_backward dw (+= onto random values, %s)", mname);
        cmp_acc(what, dw, dw0, gw, OC * C);
        free(dx); free(dw); free(dx0); free(dw0);
    }
    free(x); free(w); free(R); free(out); free(MM.x); free(MM.w); free(MM.R); free(rout); free(gx); free(gw);
}

// ----------------------------------------------------------------------------
// SwiGLU

static struct { int N, f; double *h, *R; } SW;
static double sw_ref(double* out) {
    double L = 0;
    for (int n = 0; n < SW.N; n++)
        for (int j = 0; j < SW.f; j++) {
            double a = SW.h[n * 2 * SW.f + j], b = SW.h[n * 2 * SW.f + SW.f + j];
            double y = a / (1 + exp(-a)) * b;
            if (out) out[n * SW.f + j] = y;
            L += SW.R[n * SW.f + j] * y;
        }
    return L;
}
static double sw_loss(void) { return sw_ref(NULL); }

static void test_swiglu(void) {
    int N = 5, f = 3;
    float *h = fnew(N * 2 * f), *R = fnew(N * f), *out = fnew(N * f), *dh = fnew(N * 2 * f);
    fill(h, N * 2 * f, 2);
    fill(R, N * f, 1);
    fill_nan(out, N * f);
    ops->swiglu_forward(out, h, N, f);
    SW.N = N; SW.f = f; SW.h = todbl(h, N * 2 * f); SW.R = todbl(R, N * f);
    double* rout = dnew(N * f);
    sw_ref(rout);
    cmpf("swiglu_forward out", out, rout, N * f, F_RTOL, F_AFRAC);
    double* g = dnew(N * 2 * f);
    fd(sw_loss, SW.h, N * 2 * f, g);
    fill_nan(dh, N * 2 * f);
    ops->swiglu_backward(dh, R, h, N, f);
    cmpf("swiglu_backward dh13 (gate and up halves)", dh, g, N * 2 * f, G_RTOL, G_AFRAC);
    free(h); free(R); free(out); free(dh); free(SW.h); free(SW.R); free(rout); free(g);
}

// ----------------------------------------------------------------------------
// RoPE

static struct { int N, T, H, rs, hs, off, rd; double theta; double *x, *R; } RP;
static double rope_ref(double* out) {  // out: the whole buffer after RoPE
    size_t tot = (size_t)RP.N * RP.rs;
    if (out) memcpy(out, RP.x, tot * sizeof(double));
    double L = 0;
    for (size_t i = 0; i < tot; i++) L += RP.R[i] * RP.x[i];  // identity part, corrected below
    for (int n = 0; n < RP.N; n++)
        for (int h = 0; h < RP.H; h++)
            for (int i = 0; i < RP.rd / 2; i++) {
                size_t p = (size_t)n * RP.rs + (size_t)h * RP.hs + RP.off + 2 * i;
                double ang = (n % RP.T) * pow(RP.theta, -2.0 * i / RP.rd), c = cos(ang), s = sin(ang);
                double x0 = RP.x[p], x1 = RP.x[p + 1], y0 = x0 * c - x1 * s, y1 = x0 * s + x1 * c;
                if (out) { out[p] = y0; out[p + 1] = y1; }
                L += RP.R[p] * (y0 - x0) + RP.R[p + 1] * (y1 - x1);
            }
    return L;
}
static double rope_loss(void) { return rope_ref(NULL); }

static void test_rope(int N, int T, int H, int rs, int hs, int off, int rd, float theta) {
    size_t tot = (size_t)N * rs;
    float *x = fnew(tot), *y = fnew(tot), *R = fnew(tot);
    fill(x, tot, 1);
    fill(R, tot, 1);
    float* x0 = fdup(x, tot);
    ops->rope(x, N, T, H, rs, hs, off, rd, theta, 0);  // x := rope(x0)
    RP.N = N; RP.T = T; RP.H = H; RP.rs = rs; RP.hs = hs; RP.off = off; RP.rd = rd; RP.theta = theta;
    RP.x = todbl(x0, tot); RP.R = todbl(R, tot);
    double* rout = dnew(tot);
    rope_ref(rout);
    char what[200];
    snprintf(what, sizeof what, "rope forward (N %d T %d heads %d row_stride %d head_stride %d offset %d dim %d)", N, T, H, rs, hs, off, rd);
    cmpf(what, x, rout, tot, F_RTOL, F_AFRAC);
    // elements outside the rotated ranges are untouched, bit for bit
    size_t bad = 0, nout = 0;
    for (int n = 0; n < N; n++)
        for (int j = 0; j < rs; j++) {
            int in = 0;
            for (int h = 0; h < H; h++) in |= j >= h * hs + off && j < h * hs + off + rd;
            if (in) continue;
            nout++;
            bad += memcmp(&x[n * rs + j], &x0[n * rs + j], 4) != 0;
        }
    check(bad == 0, "rope forward: %zu of %zu elements outside the rope ranges changed", bad, nout);
    // backward = inverse: gradient of sum(R * rope(x)) w.r.t. x is rope_inverse(R)
    double* g = dnew(tot);
    fd(rope_loss, RP.x, tot, g);
    memcpy(y, R, tot * sizeof(float));
    ops->rope(y, N, T, H, rs, hs, off, rd, theta, 1);
    cmpf("rope inverse=1 (the backward) vs finite differences of sum(R * rope(x))", y, g, tot, G_RTOL, G_AFRAC);
    // adjoint: <rope(x), R> == <x, rope_inverse(R)>
    double lhs = 0, rhs = 0, nx = 0, nr = 0;
    for (size_t i = 0; i < tot; i++) {
        lhs += (double)x[i] * R[i];
        rhs += (double)x0[i] * y[i];
        nx += (double)x0[i] * x0[i];
        nr += (double)R[i] * R[i];
    }
    double adj = fabs(lhs - rhs) / sqrt(nx * nr);
    check(adj <= 1e-6, "rope adjoint: <rope(x),y> = %.9g, <x,rope_inv(y)> = %.9g, |diff|/(|x||y|) = %.2e (tol 1e-6, fp32 rounding)",
          lhs, rhs, adj);
    // round trip: rope_inverse(rope(x)) == x
    ops->rope(x, N, T, H, rs, hs, off, rd, theta, 1);
    double worst = 0, mx = 0;
    for (size_t i = 0; i < tot; i++) { worst = fmax(worst, fabs((double)x[i] - x0[i])); mx = fmax(mx, fabs(x0[i])); }
    check(worst <= 2e-6 * mx, "rope then inverse returns x: max |diff| %.2e (tol 2e-6 * max|x| = %.2e)", worst, 2e-6 * mx);
    free(x); free(y); free(R); free(x0); free(RP.x); free(RP.R); free(rout); free(g);
}

// ----------------------------------------------------------------------------
// MLA attention

static struct { int B, T, H, nope, rope, dv, kvl; double *q, *kv, *a, *R; } AT;
static double att_ref(double* out, double* lse, double* mxl) {
    int T = AT.T, H = AT.H, nope = AT.nope, rope = AT.rope, dv = AT.dv, kvl = AT.kvl, dqk = nope + rope;
    int qs = H * dqk, kvs = H * (nope + dv), as = kvl + rope, os = H * dv;
    double scale = 1.0 / sqrt((double)dqk), L = 0;
    double* S = dnew(T);
    for (int b = 0; b < AT.B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                const double* qi = AT.q + (size_t)(b * T + i) * qs + h * dqk;
                double m = -INFINITY;
                for (int j = 0; j <= i; j++) {
                    const double* kn = AT.kv + (size_t)(b * T + j) * kvs + h * (nope + dv);
                    const double* kr = AT.a + (size_t)(b * T + j) * as + kvl;
                    double s = 0;
                    for (int c = 0; c < nope; c++) s += qi[c] * kn[c];
                    for (int c = 0; c < rope; c++) s += qi[nope + c] * kr[c];
                    S[j] = s * scale;
                    m = fmax(m, S[j]);
                    if (mxl) mxl[h] = fmax(mxl[h], S[j]);
                }
                double z = 0;
                for (int j = 0; j <= i; j++) z += exp(S[j] - m);
                if (lse) lse[(size_t)(b * H + h) * T + i] = m + log(z);
                for (int o = 0; o < dv; o++) {
                    double v = 0;
                    for (int j = 0; j <= i; j++) v += exp(S[j] - m) / z * AT.kv[(size_t)(b * T + j) * kvs + h * (nope + dv) + nope + o];
                    size_t p = (size_t)(b * T + i) * os + h * dv + o;
                    if (out) out[p] = v;
                    L += AT.R[p] * v;
                }
            }
    free(S);
    return L;
}
static double att_loss(void) { return att_ref(NULL, NULL, NULL); }

static void test_attention(int B, int T, int H, int nope, int rope, int dv, int kvl) {
    int N = B * T, dqk = nope + rope, as = kvl + rope;
    size_t nq = (size_t)N * H * dqk, nkv = (size_t)N * H * (nope + dv), na = (size_t)N * as, no = (size_t)N * H * dv;
    float *q = fnew(nq), *kv = fnew(nkv), *a = fnew(na), *R = fnew(no), *out = fnew(no), *lse = fnew((size_t)B * H * T);
    float* mxl = fnew(H);
    fill(q, nq, 1.5f);
    fill(kv, nkv, 1.5f);
    fill(a, na, 1.5f);
    fill(R, no, 1);
    fill_nan(out, no);
    fill_nan(lse, (size_t)B * H * T);
    AT.B = B; AT.T = T; AT.H = H; AT.nope = nope; AT.rope = rope; AT.dv = dv; AT.kvl = kvl;
    AT.q = todbl(q, nq); AT.kv = todbl(kv, nkv); AT.a = todbl(a, na); AT.R = todbl(R, no);
    double *rout = dnew(no), *rlse = dnew((size_t)B * H * T), *rmx = dnew(H);
    for (int h = 0; h < H; h++) rmx[h] = -INFINITY;
    att_ref(rout, rlse, rmx);
    // maxlogit is a running max: head 0 starts above the true max (must stay), head 1 at -inf, others below
    for (int h = 0; h < H; h++) mxl[h] = h == 0 ? 1000.0f : h == 1 ? -INFINITY : (float)(rmx[h] - 0.5);
    MlaShape shape = {.B = B, .T = T, .H = H, .nope = nope, .rope = rope, .dv = dv, .kv_lora = kvl};
    ops->attention_forward(out, lse, mxl, q, kv, a, shape);
    char what[200];
    snprintf(what, sizeof what, "attention_forward out (B %d T %d H %d nope %d rope %d dv %d kv_lora %d)", B, T, H, nope, rope, dv, kvl);
    cmpf(what, out, rout, no, F_RTOL, F_AFRAC);
    cmpf("attention_forward lse (B,H,T) vs double log-sum-exp", lse, rlse, (size_t)B * H * T, F_RTOL, F_AFRAC);
    double* emx = dnew(H);
    for (int h = 0; h < H; h++) emx[h] = h == 0 ? 1000.0 : rmx[h];
    cmpf("attention_forward maxlogit: running max with brute-force max over b, i, j<=i of scaled logits", mxl, emx, H, F_RTOL, F_AFRAC);
    // backward
    double *gq = dnew(nq), *gkv = dnew(nkv), *ga = dnew(na);
    fd(att_loss, AT.q, nq, gq);
    fd(att_loss, AT.kv, nkv, gkv);
    fd(att_loss, AT.a, na, ga);  // the non-rope columns of a do not enter: their FD is 0
    float *dq = fnew(nq), *dkv = fnew(nkv), *da = fnew(na);
    fill_nan(dq, nq);
    fill_nan(dkv, nkv);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < as; c++) da[n * as + c] = c < kvl ? 5.5f + c : NAN;
    float* da0 = fdup(da, na);
    ops->attention_backward(dq, dkv, da, R, q, kv, a, out, lse, shape);
    cmpf("attention_backward dq", dq, gq, nq, G_RTOL, G_AFRAC);
    cmpf("attention_backward dkv (k-nope and v)", dkv, gkv, nkv, G_RTOL, G_AFRAC);
    float* dar = fnew((size_t)N * rope);
    double* gar = dnew((size_t)N * rope);
    size_t bad = 0;
    for (int n = 0; n < N; n++) {
        for (int c = 0; c < rope; c++) { dar[n * rope + c] = da[n * as + kvl + c]; gar[n * rope + c] = ga[n * as + kvl + c]; }
        for (int c = 0; c < kvl; c++) bad += memcmp(&da[n * as + c], &da0[n * as + c], 4) != 0;
    }
    cmpf("attention_backward da rope-key columns (shared key, summed over heads)", dar, gar, (size_t)N * rope, G_RTOL, G_AFRAC);
    check(bad == 0, "attention_backward da non-rope columns [0, kv_lora) untouched: %zu of %d changed", bad, N * kvl);
    free(q); free(kv); free(a); free(R); free(out); free(lse); free(mxl); free(AT.q); free(AT.kv); free(AT.a); free(AT.R);
    free(rout); free(rlse); free(rmx); free(emx); free(gq); free(gkv); free(ga); free(dq); free(dkv); free(da); free(da0);
    free(dar); free(gar);
}

// ----------------------------------------------------------------------------
// cross-entropy

static struct { int N, V; const int* tgt; double dloss; double* z; } CE;
static double ce_ref(double* losses) {
    double L = 0;
    for (int n = 0; n < CE.N; n++) {
        const double* z = CE.z + (size_t)n * CE.V;
        double m = -INFINITY, s = 0;
        for (int v = 0; v < CE.V; v++) m = fmax(m, z[v]);
        for (int v = 0; v < CE.V; v++) s += exp(z[v] - m);
        double l = log(s) + m - z[CE.tgt[n]];
        if (losses) losses[n] = l;
        L += CE.dloss * l;
    }
    return L;
}
static double ce_loss(void) { return ce_ref(NULL); }

static void test_crossentropy(void) {
    int N = 5, V = 11;
    float *z = fnew(N * V), *losses = fnew(N), *dz = fnew(N * V);
    int* tgt = inew(N);
    fill(z, N * V, 2);
    for (int v = 0; v < V; v++) z[2 * V + v] += 40.0f;  // a row far from 0: needs the max subtracted
    for (int n = 0; n < N; n++) tgt[n] = (int)rng_below(&rng, V);
    fill_nan(losses, N);
    ops->crossentropy_forward(losses, z, tgt, N, V);
    CE.N = N; CE.V = V; CE.tgt = tgt; CE.dloss = 0.37; CE.z = todbl(z, N * V);
    double* rl = dnew(N);
    ce_ref(rl);
    cmpf("crossentropy_forward losses (one row offset by +40)", losses, rl, N, F_RTOL, F_AFRAC);
    CE.dloss = (double)0.37f;
    double* g = dnew(N * V);
    fd(ce_loss, CE.z, N * V, g);
    fill_nan(dz, N * V);
    ops->crossentropy_backward(dz, z, tgt, 0.37f, N, V);
    cmpf("crossentropy_backward dlogits (dloss 0.37)", dz, g, N * V, G_RTOL, G_AFRAC);
    float* zz = fdup(z, N * V);
    ops->crossentropy_backward(zz, zz, tgt, 0.37f, N, V);
    cmpf("crossentropy_backward dlogits aliasing logits", zz, g, N * V, G_RTOL, G_AFRAC);
    free(z); free(losses); free(dz); free(tgt); free(CE.z); free(rl); free(g); free(zz);
}

// ----------------------------------------------------------------------------
// MoE router + balance loss

static struct {
    int B, T, d, E, K;
    double rs, alpha, ls;
    double *x, *w, *bias, *Rg;
    const int* sel;  // the fixed selection (op's); NULL: free
} RT;

// top-K of s + bias for one row, ascending ids; also the gap between the K-th and (K+1)-th biased score
static double topk(const double* s, const double* bias, int E, int K, int* out) {
    int taken[64] = {0};
    double kth = 0, next = INFINITY;
    for (int k = 0; k < K; k++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (!taken[e] && (best < 0 || s[e] + bias[e] > s[best] + bias[best])) best = e;
        taken[best] = 1;
        out[k] = best;
        kth = s[best] + bias[best];
    }
    double nb = -INFINITY;
    for (int e = 0; e < E; e++) if (!taken[e]) nb = fmax(nb, s[e] + bias[e]);
    next = kth - nb;
    for (int i = 1; i < K; i++)
        for (int j = i; j > 0 && out[j - 1] > out[j]; j--) { int t = out[j]; out[j] = out[j - 1]; out[j - 1] = t; }
    return next;
}

// returns sum(Rg * gates) + ls * aux, or NaN if the top-K differs from RT.sel; min_gap: smallest top-K margin
static double router_ref(double* scores, int* sel, double* gates, double* aux, double* min_gap) {
    int N = RT.B * RT.T, d = RT.d, E = RT.E, K = RT.K;
    double* s = dnew((size_t)N * E);
    int* ch = inew((size_t)N * K);
    double L = 0, gap = INFINITY;
    for (int n = 0; n < N; n++) {
        for (int e = 0; e < E; e++) {
            double z = 0;
            for (int c = 0; c < d; c++) z += RT.x[n * d + c] * RT.w[e * d + c];
            s[n * E + e] = 1.0 / (1.0 + exp(-z));
        }
        gap = fmin(gap, topk(s + n * E, RT.bias, E, K, ch + n * K));
        if (RT.sel)
            for (int k = 0; k < K; k++)
                if (ch[n * K + k] != RT.sel[n * K + k]) { free(s); free(ch); return NAN; }
        double ssel = 0;
        for (int k = 0; k < K; k++) ssel += s[n * E + ch[n * K + k]];
        for (int k = 0; k < K; k++) {
            double gk = RT.rs * s[n * E + ch[n * K + k]] / ssel;
            if (gates) gates[n * K + k] = gk;
            if (RT.Rg) L += RT.Rg[n * K + k] * gk;
        }
    }
    // balance loss: per sequence f_i = E/(K T) count_i, P_i = mean_t s_i / sum_j s_j; alpha * mean_b sum_i f_i P_i
    double bal = 0;
    for (int b = 0; b < RT.B; b++) {
        double l = 0;
        for (int e = 0; e < E; e++) {
            int cnt = 0;
            double P = 0;
            for (int t = 0; t < RT.T; t++) {
                int n = b * RT.T + t;
                for (int k = 0; k < K; k++) cnt += ch[n * K + k] == e;
                double S = 0;
                for (int j = 0; j < E; j++) S += s[n * E + j];
                P += s[n * E + e] / S / RT.T;
            }
            l += (double)E / ((double)K * RT.T) * cnt * P;
        }
        bal += RT.alpha * l / RT.B;
    }
    L += RT.ls * bal;
    if (scores) memcpy(scores, s, (size_t)N * E * sizeof(double));
    if (sel) memcpy(sel, ch, (size_t)N * K * sizeof(int));
    if (aux) *aux = bal;
    if (min_gap) *min_gap = gap;
    free(s);
    free(ch);
    return L;
}
static double router_loss(void) { return router_ref(NULL, NULL, NULL, NULL, NULL); }

static void test_router(void) {
    int B = 2, T = 5, N = B * T, d = 6, E = 7, K = 3;
    float rs = 2.5f, alpha = 0.3f, ls = 0.6f;
    float *x = fnew(N * d), *w = fnew(E * d), *bias = fnew(E), *Rg = fnew(N * K);
    RT.B = B; RT.T = T; RT.d = d; RT.E = E; RT.K = K; RT.rs = rs; RT.alpha = alpha; RT.ls = ls; RT.Rg = NULL; RT.sel = NULL;
    RT.x = RT.w = RT.bias = NULL;
    // draw until every row's K-th and (K+1)-th biased scores are >= 2e-3 apart (fp32 and double then agree)
    int tries = 0;
    double gap = 0;
    do {
        fill(x, N * d, 1);
        fill(w, E * d, 0.7f);
        fill(bias, E, 0.1f);
        free(RT.x); free(RT.w); free(RT.bias);
        RT.x = todbl(x, N * d); RT.w = todbl(w, E * d); RT.bias = todbl(bias, E);
        router_ref(NULL, NULL, NULL, NULL, &gap);
        tries++;
    } while (gap < 2e-3 && tries < 1000);
    fill(Rg, N * K, 1);
    float *scores = fnew(N * E), *gates = fnew(N * K);
    int* sel = inew(N * K);
    fill_nan(scores, N * E);
    fill_nan(gates, N * K);
    for (int i = 0; i < N * K; i++) sel[i] = -1;
    MoeShape shape = {.B = B, .T = T, .d = d, .E = E, .K = K};
    ops->moe_router_forward(scores, sel, gates, x, w, bias, shape, rs);
    double *rsc = dnew(N * E), *rg = dnew(N * K), raux = 0;
    int* rsel = inew(N * K);
    router_ref(rsc, rsel, rg, &raux, NULL);
    cmpf("moe_router_forward scores = sigmoid(x w^T) (fp32)", scores, rsc, N * E, F_RTOL, F_AFRAC);
    int same = memcmp(sel, rsel, (size_t)N * K * sizeof(int)) == 0;
    int bias_matters = 0;
    {
        double zero[64] = {0};
        int tmp[64];
        for (int n = 0; n < N; n++) {
            topk(rsc + n * E, zero, E, K, tmp);
            bias_matters |= memcmp(tmp, rsel + n * K, K * sizeof(int)) != 0;
        }
    }
    check(same, "moe_router_forward sel = top-%d of scores + bias, ascending (min margin %.2e after %d draws; the bias %s the choice)",
          K, gap, tries, bias_matters ? "changes" : "does not change");
    cmpf("moe_router_forward gates = routed_scale * s[sel] / sum s[sel]", gates, rg, N * K, F_RTOL, F_AFRAC);
    // balance loss value (aux accumulates)
    float aux = 0.125f;
    ops->moe_balance_loss(&aux, scores, sel, shape, alpha);
    double ra = raux;  // alpha * mean_b sum_i f_i P_i, computed directly in router_ref
    check(fabs(((double)aux - 0.125) - ra) <= 1e-5 * fabs(ra),
          "moe_balance_loss: aux += %.8g, direct double %.8g, rel err %.2e (tol 1e-5)", (double)aux - 0.125, ra,
          fabs(((double)aux - 0.125) - ra) / fabs(ra));
    RT.sel = sel;
    // backward: gates path only (alpha 0), balance only (dgates 0), both (with loss_scale)
    for (int mode = 0; mode < 3; mode++) {
        float a_ = mode == 0 ? 0.0f : alpha, ls_ = mode == 2 ? ls : 1.0f;
        RT.alpha = a_; RT.ls = ls_;
        float* dg = fnew(N * K);
        for (int i = 0; i < N * K; i++) dg[i] = mode == 1 ? 0.0f : Rg[i];
        RT.Rg = mode == 1 ? NULL : todbl(Rg, N * K);
        double *gx = dnew(N * d), *gw = dnew(E * d);
        long r0 = fd_retries;
        fd(router_loss, RT.x, N * d, gx);
        fd(router_loss, RT.w, E * d, gw);
        float *dx = fnew(N * d), *dw = fnew(E * d), *dsc = fnew(N * E);
        fill_like(dx, N * d, gx, N * d);
        fill_like(dw, E * d, gw, E * d);
        fill_nan(dsc, N * E);
        float *dx0 = fdup(dx, N * d), *dw0 = fdup(dw, E * d);
        ops->moe_router_backward(dx, dw, dsc, dg, scores, sel, x, w, shape, rs, balance_grad(B, T, E, K, a_, ls_));
        const char* mname = mode == 0 ? "gates only, alpha 0" : mode == 1 ? "balance loss only, alpha 0.3" :
                                                                   "gates + balance, alpha 0.3, loss_scale 0.6";
        char what[200];
        snprintf(what, sizeof what, "moe_router_backward dx (+=; %s; %ld FD steps shrunk for a top-K change)", mname, fd_retries - r0);
        cmp_acc(what, dx, dx0, gx, N * d);
        snprintf(what, sizeof what, "moe_router_backward dw_router (+=; %s)", mname);
        cmp_acc(what, dw, dw0, gw, E * d);
        free(dg); free(RT.Rg); RT.Rg = NULL; free(gx); free(gw); free(dx); free(dw); free(dsc); free(dx0); free(dw0);
    }
    free(x); free(w); free(bias); free(Rg); free(RT.x); free(RT.w); free(RT.bias); free(scores); free(gates); free(sel);
    free(rsc); free(rg); free(rsel);
}

// ----------------------------------------------------------------------------
// dispatch, gather, experts, combine

// N rows of K distinct experts from [0, E) except `empty`, in random order within a row
static void random_sel(int* sel, int N, int K, int E, int empty) {
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            int e, dup;
            do {
                e = (int)rng_below(&rng, E);
                dup = e == empty;
                for (int j = 0; j < k; j++) dup |= sel[n * K + j] == e;
            } while (dup);
            sel[n * K + k] = e;
        }
}

static int test_dispatch(int N, int K, int E, int empty, int* offsets, int* row_of, int* token_of, int* sel) {
    random_sel(sel, N, K, E, empty);
    float* load = fnew(E);
    for (int e = 0; e < E; e++) load[e] = (float)rng_below(&rng, 50);
    float* load0 = fdup(load, E);
    for (int i = 0; i <= E; i++) offsets[i] = -7;
    for (int i = 0; i < N * K; i++) row_of[i] = token_of[i] = -7;
    ops->moe_dispatch(offsets, row_of, token_of, load, sel, (MoeShape){.B = 1, .T = N, .E = E, .K = K});
    // brute force: walk the experts in order, and for each the (n, k) choices in order
    int *off = inew(E + 1), *ro = inew(N * K), *to = inew(N * K);
    int pos = 0;
    for (int e = 0; e < E; e++) {
        off[e] = pos;
        for (int n = 0; n < N; n++)
            for (int k = 0; k < K; k++)
                if (sel[n * K + k] == e) { ro[n * K + k] = pos; to[pos] = n; pos++; }
    }
    off[E] = pos;
    int ok_l = 1;
    for (int e = 0; e < E; e++) ok_l &= load[e] == load0[e] + (float)(off[e + 1] - off[e]);
    int ok = check(memcmp(offsets, off, (E + 1) * sizeof(int)) == 0, "moe_dispatch offsets (N %d K %d E %d, expert %d empty) vs brute-force stable grouping", N, K, E, empty);
    ok &= check(memcmp(row_of, ro, N * K * sizeof(int)) == 0, "moe_dispatch row_of vs brute force");
    ok &= check(memcmp(token_of, to, N * K * sizeof(int)) == 0, "moe_dispatch token_of vs brute force");
    ok &= check(ok_l, "moe_dispatch load += tokens per expert (onto random counts)");
    free(load); free(load0); free(off); free(ro); free(to);
    return ok;
}

static struct { int N, K, d; const int* token_of; double *x, *R; } GA;
static double gather_loss(void) {
    double L = 0;
    for (int i = 0; i < GA.N * GA.K; i++)
        for (int c = 0; c < GA.d; c++) L += GA.R[i * GA.d + c] * GA.x[GA.token_of[i] * GA.d + c];
    return L;
}

static void test_gather(int N, int K, int d, const int* row_of, const int* token_of) {
    int NK = N * K;
    float *x = fnew(N * d), *xe = fnew(NK * d), *R = fnew(NK * d), *dx = fnew(N * d), *ref = fnew(NK * d);
    fill(x, N * d, 1);
    fill(R, NK * d, 1);
    fill_nan(xe, NK * d);
    ops->moe_gather(xe, x, token_of, NK, d);
    for (int i = 0; i < NK; i++) memcpy(ref + i * d, x + token_of[i] * d, d * sizeof(float));
    cmp_exact("moe_gather xe = x[token_of]", xe, ref, NK * d);
    GA.N = N; GA.K = K; GA.d = d; GA.token_of = token_of; GA.x = todbl(x, N * d); GA.R = todbl(R, NK * d);
    double* g = dnew(N * d);
    fd(gather_loss, GA.x, N * d, g);
    fill_like(dx, N * d, g, N * d);
    float* dx0 = fdup(dx, N * d);
    ops->moe_gather_backward(dx, R, row_of, (MoeShape){.B = 1, .T = N, .d = d, .K = K});
    cmp_acc("moe_gather_backward dx (+=, via row_of) vs FD of sum(R * x[token_of])", dx, dx0, g, N * d);
    free(x); free(xe); free(R); free(dx); free(ref); free(dx0); free(GA.x); free(GA.R); free(g);
}

static struct { int E, d, f; const int* off; double *xe, *w13, *w2, *R; } EX;
static double experts_ref(double* ye, double* h13, double* hact) {
    int d = EX.d, f = EX.f;
    double L = 0;
    double* h = dnew(2 * f);
    double* act = dnew(f);
    for (int e = 0; e < EX.E; e++)
        for (int r = EX.off[e]; r < EX.off[e + 1]; r++) {
            for (int j = 0; j < 2 * f; j++) {
                double s = 0;
                for (int c = 0; c < d; c++) s += EX.xe[r * d + c] * EX.w13[((size_t)e * 2 * f + j) * d + c];
                h[j] = s;
                if (h13) h13[(size_t)r * 2 * f + j] = s;
            }
            for (int j = 0; j < f; j++) {
                act[j] = h[j] / (1 + exp(-h[j])) * h[f + j];
                if (hact) hact[(size_t)r * f + j] = act[j];
            }
            for (int c = 0; c < d; c++) {
                double s = 0;
                for (int j = 0; j < f; j++) s += act[j] * EX.w2[((size_t)e * d + c) * f + j];
                if (ye) ye[(size_t)r * d + c] = s;
                L += EX.R[(size_t)r * d + c] * s;
            }
        }
    free(h);
    free(act);
    return L;
}
static double experts_loss(void) { return experts_ref(NULL, NULL, NULL); }

static void test_experts(int NK, int E, int d, int f, const int* off, int empty) {
    size_t n13 = (size_t)E * 2 * f * d, n2 = (size_t)E * d * f;
    float *xe = fnew(NK * d), *w13 = fnew(n13), *w2 = fnew(n2), *R = fnew(NK * d);
    float *ye = fnew(NK * d), *h13 = fnew(NK * 2 * f), *hact = fnew(NK * f);
    fill(xe, NK * d, 1);
    fill(w13, n13, 0.6f);
    fill(w2, n2, 0.6f);
    fill(R, NK * d, 1);
    fill_nan(ye, NK * d);
    fill_nan(h13, NK * 2 * f);
    fill_nan(hact, NK * f);
    ops->moe_experts_forward(ye, h13, hact, xe, w13, w2, off, E, d, f);
    EX.E = E; EX.d = d; EX.f = f; EX.off = off;
    EX.xe = todbl(xe, NK * d); EX.w13 = todbl(w13, n13); EX.w2 = todbl(w2, n2); EX.R = todbl(R, NK * d);
    double *rye = dnew(NK * d), *rh = dnew(NK * 2 * f), *ra = dnew(NK * f);
    experts_ref(rye, rh, ra);
    char what[200];
    snprintf(what, sizeof what, "moe_experts_forward ye (%d rows, E %d with expert %d empty, d %d, f %d)", NK, E, empty, d, f);
    cmpf(what, ye, rye, NK * d, F_RTOL, F_AFRAC);
    cmpf("moe_experts_forward h13", h13, rh, NK * 2 * f, F_RTOL, F_AFRAC);
    cmpf("moe_experts_forward hact", hact, ra, NK * f, F_RTOL, F_AFRAC);
    double *gx = dnew(NK * d), *g13 = dnew(n13), *g2 = dnew(n2);
    fd(experts_loss, EX.xe, NK * d, gx);
    fd(experts_loss, EX.w13, n13, g13);
    fd(experts_loss, EX.w2, n2, g2);
    float *dxe = fnew(NK * d), *dw13 = fnew(n13), *dw2 = fnew(n2), *dh13 = fnew(NK * 2 * f), *dhact = fnew(NK * f);
    fill_nan(dxe, NK * d);
    fill_like(dw13, n13, g13, n13);
    fill_like(dw2, n2, g2, n2);
    fill_nan(dh13, NK * 2 * f);
    fill_nan(dhact, NK * f);
    float *dw130 = fdup(dw13, n13), *dw20 = fdup(dw2, n2);
    ops->moe_experts_backward(dxe, dw13, dw2, dh13, dhact, R, xe, h13, hact, w13, w2, off, E, d, f);
    cmpf("moe_experts_backward dxe (written)", dxe, gx, NK * d, G_RTOL, G_AFRAC);
    cmp_acc("moe_experts_backward dw13 (+=)", dw13, dw130, g13, n13);
    cmp_acc("moe_experts_backward dw2 (+=)", dw2, dw20, g2, n2);
    snprintf(what, sizeof what, "moe_experts_backward empty expert %d: dw13 untouched", empty);
    cmp_exact(what, dw13 + (size_t)empty * 2 * f * d, dw130 + (size_t)empty * 2 * f * d, 2 * f * d);
    snprintf(what, sizeof what, "moe_experts_backward empty expert %d: dw2 untouched", empty);
    cmp_exact(what, dw2 + (size_t)empty * d * f, dw20 + (size_t)empty * d * f, d * f);
    free(xe); free(w13); free(w2); free(R); free(ye); free(h13); free(hact); free(EX.xe); free(EX.w13); free(EX.w2);
    free(EX.R); free(rye); free(rh); free(ra); free(gx); free(g13); free(g2); free(dxe); free(dw13); free(dw2);
    free(dh13); free(dhact); free(dw130); free(dw20);
}

static struct { int N, K, d; const int* row_of; double *ye, *g, *R; } CB;
static double combine_ref(double* y) {
    double L = 0;
    for (int n = 0; n < CB.N; n++)
        for (int c = 0; c < CB.d; c++) {
            double s = 0;
            for (int k = 0; k < CB.K; k++) s += CB.g[n * CB.K + k] * CB.ye[CB.row_of[n * CB.K + k] * CB.d + c];
            if (y) y[n * CB.d + c] = s;
            L += CB.R[n * CB.d + c] * s;
        }
    return L;
}
static double combine_loss(void) { return combine_ref(NULL); }

static void test_combine(int N, int K, int d, const int* row_of) {
    int NK = N * K;
    float *ye = fnew(NK * d), *g = fnew(NK), *R = fnew(N * d), *y = fnew(N * d), *dye = fnew(NK * d), *dg = fnew(NK);
    fill(ye, NK * d, 1);
    for (int i = 0; i < NK; i++) g[i] = 0.2f + fabsf(rn());
    fill(R, N * d, 1);
    fill(y, N * d, 1);
    float* y0 = fdup(y, N * d);
    MoeShape shape = {.B = 1, .T = N, .d = d, .K = K};  // the combine needs no E
    ops->moe_combine_forward(y, ye, g, row_of, shape);
    CB.N = N; CB.K = K; CB.d = d; CB.row_of = row_of; CB.ye = todbl(ye, NK * d); CB.g = todbl(g, NK); CB.R = todbl(R, N * d);
    double* ry = dnew(N * d);
    combine_ref(ry);
    double* yd = dnew(N * d);
    for (int i = 0; i < N * d; i++) yd[i] = (double)y[i] - y0[i];
    cmp("moe_combine_forward y += sum_k gates ye[row_of] (onto random values)", yd, ry, N * d, F_RTOL, F_AFRAC);
    double *gye = dnew(NK * d), *gg = dnew(NK);
    fd(combine_loss, CB.ye, NK * d, gye);
    fd(combine_loss, CB.g, NK, gg);
    fill_nan(dye, NK * d);
    fill_nan(dg, NK);
    ops->moe_combine_backward(dye, dg, R, ye, g, row_of, shape);
    cmpf("moe_combine_backward dye (written)", dye, gye, NK * d, G_RTOL, G_AFRAC);
    cmpf("moe_combine_backward dgates (written)", dg, gg, NK, G_RTOL, G_AFRAC);
    free(ye); free(g); free(R); free(y); free(dye); free(dg); free(y0); free(CB.ye); free(CB.g); free(CB.R);
    free(ry); free(yd); free(gye); free(gg);
}

static void test_moe_plumbing(void) {
    // plan 1: N 8, K 2, E 5 with expert 2 empty (dispatch, gather, experts, combine)
    int N = 8, K = 2, E = 5, empty = 2, d = 6, f = 4;
    int *off = inew(E + 1), *row_of = inew(N * K), *token_of = inew(N * K), *sel = inew(N * K);
    test_dispatch(N, K, E, empty, off, row_of, token_of, sel);
    test_gather(N, K, d, row_of, token_of);
    test_experts(N * K, E, d, f, off, empty);
    test_combine(N, K, d, row_of);
    free(off); free(row_of); free(token_of); free(sel);
    // plan 2: dispatch only, more experts than choices (several empty), K 3
    N = 3; K = 3; E = 11;
    off = inew(E + 1); row_of = inew(N * K); token_of = inew(N * K); sel = inew(N * K);
    test_dispatch(N, K, E, 10, off, row_of, token_of, sel);
    free(off); free(row_of); free(token_of); free(sel);
}

// ----------------------------------------------------------------------------
// optimizer kernels, element-wise adds

static void test_adamw(void) {
    size_t n = 1001;
    struct { float lr, b1, b2, eps, wd, scale; int step; } cs[3] = {
        {1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.7f, 1}, {3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, 7}, {1e-2f, 0.8f, 0.99f, 1e-6f, 0.0f, 0.25f, 3}};
    for (int t = 0; t < 3; t++) {
        float *p = fnew(n), *g = fnew(n), *m = fnew(n), *v = fnew(n);
        fill(p, n, 1);
        fill(g, n, 0.1f);
        fill(m, n, 0.01f);
        for (size_t i = 0; i < n; i++) v[i] = 1e-4f * fabsf(rn());
        float *p0 = fdup(p, n), *m0 = fdup(m, n), *v0 = fdup(v, n);
        ops->adamw_update(p, g, m, v, n, cs[t].lr, cs[t].b1, cs[t].b2, cs[t].eps, cs[t].wd, cs[t].scale,
                          adamw_inv_bias_correction(cs[t].b1, cs[t].step), adamw_inv_bias_correction(cs[t].b2, cs[t].step));
        double wp = 0, wm = 0, wv = 0;
        for (size_t i = 0; i < n; i++) {
            double b1 = cs[t].b1, b2 = cs[t].b2, gi = (double)g[i] * cs[t].scale;
            double mi = b1 * m0[i] + (1 - b1) * gi, vi = b2 * v0[i] + (1 - b2) * gi * gi;
            double bc1 = 1 - pow(b1, cs[t].step), bc2 = 1 - pow(b2, cs[t].step);
            double mh = mi / bc1, vh = vi / bc2;
            double dp = cs[t].lr * (mh / (sqrt(vh) + cs[t].eps) + cs[t].wd * p0[i]);
            double pr = p0[i] - dp;
            // fp32: m and v within 1e-6 of the size of their two terms (m's may cancel); p within 2e-7 |p| plus
            // 1e-5 of the size of the update's terms
            double mterms = b1 * fabs(m0[i]) + (1 - b1) * fabs(gi), vterms = b2 * v0[i] + (1 - b2) * gi * gi;
            double dpterms = cs[t].lr * (mterms / bc1 / (sqrt(vh) + cs[t].eps) + cs[t].wd * fabs(p0[i]));
            wp = fmax(wp, fabs(p[i] - pr) / (2e-7 * fabs(pr) + 1e-5 * dpterms));
            wm = fmax(wm, fabs(m[i] - mi) / (1e-6 * mterms));
            wv = fmax(wv, fabs(v[i] - vi) / (1e-6 * vterms));
            if (isnan(p[i]) || isnan(m[i]) || isnan(v[i])) wp = INFINITY;
        }
        check(wp <= 1 && wm <= 1 && wv <= 1,
              "adamw_update vs double formula (lr %g b1 %g b2 %g eps %g wd %g grad_scale %g step %d, %zu elems): worst ratio p %.3g "
              "(tol 2e-7|p| + 1e-5 * size of the update's terms), m %.3g, v %.3g (tol 1e-6 * size of their terms)",
              cs[t].lr, cs[t].b1, cs[t].b2, cs[t].eps, cs[t].wd, cs[t].scale, cs[t].step, n, wp, wm, wv);
        free(p); free(g); free(m); free(v); free(p0); free(m0); free(v0);
    }
}

static void test_sum_squares(void) {
    size_t ns[3] = {0, 1, 3 * 65536 + 123};
    for (int t = 0; t < 3; t++) {
        size_t n = ns[t];
        float* g = fnew(n);
        fill(g, n, 0.5f);
        long double ref = 0;
        for (size_t i = 0; i < n; i++) ref += (long double)g[i] * g[i];
        double s = ops->sum_squares(g, n);
        double err = fabs(s - (double)ref);
        check(err <= 1e-12 * (double)ref, "sum_squares n %zu: %.17g vs long double %.17g (tol 1e-12 rel)", n, s, (double)ref);
        free(g);
    }
}

static void test_adds(void) {
    size_t n = 37;
    float *a = fnew(n), *b = fnew(n), *o = fnew(n), *r = fnew(n);
    fill(a, n, 1);
    fill(b, n, 1);
    fill_nan(o, n);
    for (size_t i = 0; i < n; i++) r[i] = a[i] + b[i];
    ops->add(o, a, b, n);
    cmp_exact("add out = a + b", o, r, n);
    ops->add_inplace(a, b, n);
    cmp_exact("add_inplace x += y", a, r, n);
    free(a); free(b); free(o); free(r);
}

// ----------------------------------------------------------------------------
// the whole model

static int sel_equal(const Model* m, const Acts* a, const int* base) {
    const ModelConfig* c = &m->cfg;
    int N = a->cur_B * a->cur_T, K = c->top_k;
    int* tmp = inew((size_t)N * K);
    int same = 1;
    for (int l = c->n_dense_layers; l < c->n_layers; l++) {
        ops->to_host(tmp, a->layers[l].sel, (size_t)N * K * sizeof(int));
        same &= memcmp(tmp, base + (size_t)(l - c->n_dense_layers) * N * K, (size_t)N * K * sizeof(int)) == 0;
    }
    free(tmp);
    return same;
}

static double model_loss(Model* m, Acts* a, const int* tok, const int* tgt, int B, int T) {
    model_forward(m, a, tok, tgt, B, T);
    int N = B * T;
    float* l = fnew(N);
    ops->to_host(l, a->losses, (size_t)N * sizeof(float));
    double ce = 0;
    for (int n = 0; n < N; n++) ce += l[n];
    free(l);
    return ce / N + (double)m->aux_loss;
}

static void set_param(Model* m, size_t i, float v) {
    ops->to_device(m->params + i, &v, sizeof(float));
    model_sync_weights(m);
}

// The whole-model check: a tiny config (every kind of layer), weights and a batch drawn until every top-K choice
// has a margin, the analytic gradient at a sample of entries, and finite differences there.
#define GC_MAX_SAMPLES 128

typedef struct {
    ModelConfig c;
    int B, T;
    ParamTensor lay[NUM_PARAM_TENSORS];
    size_t np;
    float* p;          // (np) the weights, host
    float* bias;       // (Lm, E) the router bias
    int* tok;          // (B*T)
    int* tgt;          // (B*T)
    int* base_sel;     // (Lm, B*T, K) the experts chosen at the drawn weights
    Model m;
    Acts a;
    double gap;        // smallest top-K margin over all MoE rows
    int tries;         // draws it took
} GcModel;

// finite differences at the sampled entries
typedef struct {
    double fd[GC_MAX_SAMPLES];   // the Richardson-extrapolated estimate (NaN: skipped)
    double tol[GC_MAX_SAMPLES];  // its tolerance
    int valid[GC_MAX_SAMPLES];
    int skipped, shrunk, refined;
} GcFd;

// The config, then weights and batch, redrawn until the smallest top-K margin is >= 5e-3 (at most 200 draws).
// Parameters of O(1/sqrt(fan_in)) (not the 0.02 init) so that every tensor's gradient is well above the fp32 FD
// noise; gains 1 + 0.2 N(0,1); a random router bias so that it takes part in the choice. 0 if the config is invalid.
static int gc_model_draw(GcModel* g) {
    ModelConfig* c = &g->c;
    memset(c, 0, sizeof(*c));
    snprintf(c->name, sizeof c->name, "gradcheck");
    c->vocab_size = 23; c->d_model = 12; c->n_layers = 2; c->n_dense_layers = 1; c->n_heads = 2; c->q_lora = 8;
    c->kv_lora = 6; c->qk_nope = 4; c->qk_rope = 4; c->v_head = 3; c->n_experts = 6; c->top_k = 2; c->moe_hidden = 5;
    c->dense_hidden = 7; c->seq_len = 5; c->routed_scale = 2.827f; c->rope_theta = 50000.0f; c->norm_eps = 1e-6f;
    g->B = 2; g->T = 5;
    int N = g->B * g->T, E = c->n_experts, K = c->top_k, Lm = cfg_n_moe(c);
    char why[200];
    if (!check(config_validate(c, why, sizeof why), "model: tiny config valid (%s)", config_validate(c, why, sizeof why) ? "ok" : why)) return 0;
    g->np = param_layout(c, c->n_experts, g->lay);
    g->p = fnew(g->np);
    g->bias = fnew((size_t)Lm * E);
    g->tok = inew(N); g->tgt = inew(N); g->base_sel = inew((size_t)Lm * N * K);
    const ParamTensor* lay = g->lay;
    g->gap = 0;
    g->tries = 0;
    for (;;) {
        for (int t = 0; t < NUM_PARAM_TENSORS; t++)
            for (size_t i = 0; i < lay[t].numel; i++)
                g->p[lay[t].offset + i] = lay[t].kind == PARAM_NORM ? 1.0f + 0.2f * rn() : rn() / sqrtf((float)lay[t].cols);
        fill(g->bias, (size_t)Lm * E, 0.05f);
        for (int n = 0; n < N; n++) { g->tok[n] = (int)rng_below(&rng, c->vocab_size); g->tgt[n] = (int)rng_below(&rng, c->vocab_size); }
        model_init(&g->m, c, ops, NULL, g->p, 0);
        g->m.balance_alpha = 0.05f;  // large enough that the balance loss's router gradient is visible in the sum
        ops->to_device(g->m.router_bias, g->bias, (size_t)Lm * E * sizeof(float));
        acts_alloc(&g->a, &g->m, g->B, g->T, 1);
        model_loss(&g->m, &g->a, g->tok, g->tgt, g->B, g->T);
        // smallest top-K margin over all MoE rows: redraw below 5e-3
        g->gap = INFINITY;
        float* sc = fnew((size_t)N * E);
        for (int l = c->n_dense_layers; l < c->n_layers; l++) {
            int mi = l - c->n_dense_layers;
            ops->to_host(sc, g->a.layers[l].scores, (size_t)N * E * sizeof(float));
            ops->to_host(g->base_sel + (size_t)mi * N * K, g->a.layers[l].sel, (size_t)N * K * sizeof(int));
            for (int n = 0; n < N; n++) {
                double sv[64], bz[64];
                int ch[64];
                for (int e = 0; e < E; e++) { sv[e] = sc[n * E + e]; bz[e] = g->bias[mi * E + e]; }
                g->gap = fmin(g->gap, topk(sv, bz, E, K, ch));
            }
        }
        free(sc);
        g->tries++;
        if (g->gap >= 5e-3 || g->tries >= 200) break;
        acts_free(&g->a, &g->m);
        model_free(&g->m);
    }
    return 1;
}

// The sample: 5 entries of every tensor, 20 of the router; expert entries from experts that got tokens, embedding
// rows of tokens that occur. Returns the count; idx = entries of the parameter array, tens = their tensors.
static int gc_model_sample(const GcModel* g, size_t* idx, int* tens) {
    const ParamTensor* lay = g->lay;
    int N = g->B * g->T, K = g->c.top_k, ns = 0;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        if (!lay[t].numel) continue;
        int cnt = t == P_ROUTER ? 20 : 5;
        for (int j = 0; j < cnt; j++) {
            size_t i;
            size_t item = (size_t)lay[t].rows * lay[t].cols;
            if (t == P_WTE) {
                i = (size_t)g->tok[rng_below(&rng, N)] * g->c.d_model + rng_below(&rng, g->c.d_model);
            } else if (t == P_EXPERT_W13 || t == P_EXPERT_W2) {
                int e = g->base_sel[rng_below(&rng, (uint64_t)N * K)];  // Lm == 1 here
                i = (size_t)e * item + rng_below(&rng, item);
            } else {
                i = rng_below(&rng, lay[t].numel);
            }
            idx[ns] = lay[t].offset + i;
            tens[ns++] = t;
        }
    }
    return ns;
}

// fp32 finite differences. The loss (~3.5) is computed in fp32: it carries round-off noise dL of ~2e-8 |L|
// (measured), so a central difference with step h is noisy by ~dL/h; h = 1e-2 |w| + 1e-3 keeps that ~1e-5. With
// O(1) activations the truncation error c h^2 is NOT negligible at that h (the attention softmax and the
// normalisations curve hard: up to 20% seen on single entries), so each entry takes central differences D(h) and
// D(h/2) and uses the Richardson extrapolation (4 D(h/2) - D(h)) / 3, whose truncation error is O(h^4); D(h) - D(h/2)
// measures what is left (trunc = |D(h) - D(h/2)| / 3 is D(h/2)'s own error). Where trunc > 1e-2 |est| + noise the
// step shrinks by 4 (up to 3 times). Noise of the extrapolation ~3 dL / h. Per entry:
//     |est - an| <= 1e-2 |an| + 1e-6 |L| / h + trunc
// (the noise term has ~15x margin). Steps whose perturbed forward changes any top-K choice (in any MoE layer) are
// shrunk by 4 (up to 3 times); the entry is skipped if that does not help.
static void gc_model_fd(GcModel* g, double L0, const float* grad, const size_t* idx, int ns, GcFd* r) {
    r->skipped = r->shrunk = r->refined = 0;
    for (int s = 0; s < ns; s++) {
        size_t i = idx[s];
        float w0 = g->p[i];
        double h = 1e-2 * fabs(w0) + 1e-3, est = NAN, tol = NAN;
        for (int t = 0; t < 4; t++, h /= 4) {
            double D[2];
            int ok = 1;
            for (int k = 0; k < 2 && ok; k++) {
                double hk = k ? h / 2 : h;
                float wp = (float)(w0 + hk), wm = (float)(w0 - hk);
                set_param(&g->m, i, wp);
                double lp = model_loss(&g->m, &g->a, g->tok, g->tgt, g->B, g->T);
                ok &= sel_equal(&g->m, &g->a, g->base_sel);
                set_param(&g->m, i, wm);
                double lm = model_loss(&g->m, &g->a, g->tok, g->tgt, g->B, g->T);
                ok &= sel_equal(&g->m, &g->a, g->base_sel);
                set_param(&g->m, i, w0);
                D[k] = (lp - lm) / ((double)wp - (double)wm);
            }
            if (!ok) { r->shrunk++; continue; }
            double e = (4 * D[1] - D[0]) / 3, trunc = fabs(D[0] - D[1]) / 3, noise = 1e-6 * fabs(L0) / h;
            est = e;
            tol = 1e-2 * fabs((double)grad[i]) + noise + trunc;
            if (trunc <= 1e-2 * fabs(e) + noise) break;
            if (t < 3) r->refined++;
        }
        r->valid[s] = !isnan(est);
        if (!r->valid[s]) r->skipped++;
        r->fd[s] = est;
        r->tol[s] = tol;
    }
}

// the analytic gradient against the finite differences: the worst entry, the L2 error, the skipped share
static void gc_model_report(const GcModel* g, double L0, const float* grad, const size_t* idx, const int* tens, int ns,
                            const GcFd* r) {
    const ParamTensor* lay = g->lay;
    const ModelConfig* c = &g->c;
    int nv = 0;
    double worst = 0, num = 0, den = 0;
    int ws = 0;
    int per_tensor_bad[NUM_PARAM_TENSORS] = {0};
    for (int s = 0; s < ns; s++) {
        if (!r->valid[s]) continue;
        nv++;
        double an = grad[idx[s]], q = fabs(r->fd[s] - an) / r->tol[s];
        if (!(q <= 1)) per_tensor_bad[tens[s]]++;
        if (!(q <= worst)) { worst = q; ws = s; }
        num += (r->fd[s] - an) * (r->fd[s] - an);
        den += an * an;
    }
    printf("model: V %d d %d L %d (dense %d) H %d E %d K %d B %d T %d, %zu params, loss %.6f, min top-K margin %.2e (%d draws)\n",
           c->vocab_size, c->d_model, c->n_layers, c->n_dense_layers, c->n_heads, c->n_experts, c->top_k, g->B, g->T,
           g->np, L0, g->gap, g->tries);
    for (int t = 0; t < NUM_PARAM_TENSORS; t++)
        if (per_tensor_bad[t]) printf("  tensor %s: %d sampled entries out of tolerance\n", lay[t].name, per_tensor_bad[t]);
    check(worst <= 1 && nv > 0,
          "model grad vs Richardson-extrapolated fp32 central FD: %d entries over all %d tensors (%d router), %d skipped "
          "for a top-K change (%d steps shrunk for one, %d for curvature); worst |fd-an|/(1e-2|an| + 1e-6|L|/h + trunc) "
          "= %.3g (tol 1) at %s[%zu]: an %.6e fd %.6e",
          nv, NUM_PARAM_TENSORS, 20, r->skipped, r->shrunk, r->refined, worst, lay[tens[ws]].name,
          idx[ws] - lay[tens[ws]].offset, (double)grad[idx[ws]], r->fd[ws]);
    check(sqrt(num / den) <= 5e-3, "model grad vs FD: relative L2 error over the sample %.2e (tol 5e-3)", sqrt(num / den));
    check(r->skipped <= ns / 4, "model: skipped entries %d <= a quarter of the sample (%d)", r->skipped, ns);
}

static void test_model(void) {
    GcModel g;
    if (!gc_model_draw(&g)) return;
    double L0 = model_loss(&g.m, &g.a, g.tok, g.tgt, g.B, g.T);
    model_zero_grad(&g.m);
    const float loss_scale = 0.75f;  // not 1: the backward must scale every path, the balance loss's included
    model_backward(&g.m, &g.a, loss_scale);
    float* grad = fnew(g.np);
    ops->to_host(grad, g.m.grads, g.np * sizeof(float));
    for (size_t i = 0; i < g.np; i++) grad[i] /= loss_scale;
    size_t idx[GC_MAX_SAMPLES];
    int tens[GC_MAX_SAMPLES];
    int ns = gc_model_sample(&g, idx, tens);
    GcFd* fd = xcalloc(1, sizeof(GcFd));
    gc_model_fd(&g, L0, grad, idx, ns, fd);
    gc_model_report(&g, L0, grad, idx, tens, ns, fd);
    acts_free(&g.a, &g.m);
    model_free(&g.m);
    free(g.p); free(g.bias); free(g.tok); free(g.tgt); free(g.base_sel); free(grad); free(fd);
}

// ----------------------------------------------------------------------------

int main(void) {
    double t0 = wall_seconds();
    uint64_t seed = test_seed("GRADCHECK_SEED");
    rng_seed(&rng, seed);
    printf("gradcheck: seed %llu (rerun with GRADCHECK_SEED=%llu)\n", (unsigned long long)seed, (unsigned long long)seed);

    test_embedding();
    test_rmsnorm(7);   // in_stride == C
    test_rmsnorm(10);  // in_stride > C
    test_matmul();
    test_swiglu();
    test_rope(14, 7, 3, 31, 9, 2, 6, 10000.0f);  // 3 heads with a nope prefix and a gap, positions 0..6 twice
    test_rope(10, 5, 1, 9, 0, 5, 4, 50000.0f);   // the shared rope key: columns [kv_lora, kv_lora+rope) of a
    test_attention(2, 5, 3, 4, 4, 3, 5);
    test_attention(1, 7, 2, 0, 6, 5, 3);         // no nope part
    test_crossentropy();
    test_router();
    test_moe_plumbing();
    test_adamw();
    test_sum_squares();
    test_adds();
    test_model();
    (void)skip; (void)worst_ratio; (void)rel_l2;  // test_util.h helpers this file does not need

    printf("gradcheck: seed %llu, %.2f s\n", (unsigned long long)seed, wall_seconds() - t0);
    return tests_summary();
}
