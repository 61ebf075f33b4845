// tests/test_muon.c: Muon's Newton-Schulz and QK-Clip on the CPU backend.
//
// Newton-Schulz: inputs U = P diag(s) Q^T with random orthogonal P, Q and s spread over [0.05, 1] (fresh each run;
// MUON_SEED reproduces one), square, wide and tall: the output must be P diag(s') Q^T with every s' in the band
// the default table gives (~0.68..1.21), i.e. P^T O Q diagonal; plain Gaussian inputs get a looser lower bound;
// the RMS-matched update of a full-rank matrix has RMS ~0.2; a batch equals the matrices one by one.
// QK-Clip: a model whose heads have large logits; after the clip the same batch peaks at exactly tau in every
// clipped head, and every other head, the v rows, the shared rope key and every other tensor are bit-identical.
#include "../model/model.h"
#include "../optim/optim.h"
#include "test_util.h"

// random orthogonal n x n (row-major, double) by Gram-Schmidt on Gaussian columns
static void random_orthogonal(double* Qm, int n) {
    for (int i = 0; i < n * n; i++) Qm[i] = rng_normal(&rng);
    for (int j = 0; j < n; j++) {
        for (int k = 0; k < j; k++) {
            double dot = 0;
            for (int i = 0; i < n; i++) dot += Qm[i * n + j] * Qm[i * n + k];
            for (int i = 0; i < n; i++) Qm[i * n + j] -= dot * Qm[i * n + k];
        }
        double nn = 0;
        for (int i = 0; i < n; i++) nn += Qm[i * n + j] * Qm[i * n + j];
        nn = sqrt(nn);
        for (int i = 0; i < n; i++) Qm[i * n + j] /= nn;
    }
}

// Eigenvalues of a symmetric n x n matrix (double, cyclic Jacobi); used for singular values via O O^T.
static void sym_eigenvalues(double* A, int n, double* ev) {
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0;
        for (int p = 0; p < n; p++)
            for (int q = p + 1; q < n; q++) off += A[p * n + q] * A[p * n + q];
        if (off < 1e-26) break;
        for (int p = 0; p < n; p++)
            for (int q = p + 1; q < n; q++) {
                double apq = A[p * n + q];
                if (fabs(apq) < 1e-300) continue;
                double theta = (A[q * n + q] - A[p * n + p]) / (2 * apq);
                double t = (theta >= 0 ? 1 : -1) / (fabs(theta) + sqrt(theta * theta + 1));
                double c = 1 / sqrt(t * t + 1), s = t * c;
                for (int k = 0; k < n; k++) {  // rotate columns p, q
                    double akp = A[k * n + p], akq = A[k * n + q];
                    A[k * n + p] = c * akp - s * akq;
                    A[k * n + q] = s * akp + c * akq;
                }
                for (int k = 0; k < n; k++) {  // and rows
                    double apk = A[p * n + k], aqk = A[q * n + k];
                    A[p * n + k] = c * apk - s * aqk;
                    A[q * n + k] = s * apk + c * aqk;
                }
            }
    }
    for (int i = 0; i < n; i++) ev[i] = A[i * n + i];
}

// singular values of x (rows, cols) float
static void singular_values(const float* x, int rows, int cols, double* sv) {
    int n = rows < cols ? rows : cols;
    double* G = xcalloc((size_t)n * n, sizeof(double));
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double acc = 0;
            if (rows <= cols) for (int k = 0; k < cols; k++) acc += (double)x[i * cols + k] * x[j * cols + k];
            else for (int k = 0; k < rows; k++) acc += (double)x[k * cols + i] * x[k * cols + j];
            G[i * n + j] = acc;
        }
    sym_eigenvalues(G, n, sv);
    for (int i = 0; i < n; i++) sv[i] = sqrt(fmax(sv[i], 0.0));
    free(G);
}

static void test_known_spectrum(int rows, int cols) {
    int n = rows < cols ? rows : cols;
    double* P = xmalloc((size_t)rows * rows * sizeof(double));
    double* Q = xmalloc((size_t)cols * cols * sizeof(double));
    random_orthogonal(P, rows);
    random_orthogonal(Q, cols);
    double* s = xmalloc(n * sizeof(double));
    for (int i = 0; i < n; i++) s[i] = 0.05 + 0.95 * (n > 1 ? (double)i / (n - 1) : 1.0);
    float* x = xmalloc((size_t)rows * cols * sizeof(float));
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            double acc = 0;
            for (int k = 0; k < n; k++) acc += P[i * rows + k] * s[k] * Q[j * cols + k];
            x[i * cols + j] = (float)acc;
        }
    float coeffs[24];
    int steps = newton_schulz_table("default", coeffs);
    ops_cpu.newton_schulz(x, 1, rows, cols, coeffs, steps, 0);
    // D = P^T O Q must be diagonal with the diagonal in the band
    double dmin = 1e9, dmax = 0, off = 0, diag_sq = 0;
    for (int a = 0; a < rows; a++)
        for (int b = 0; b < cols; b++) {
            double acc = 0;
            for (int i = 0; i < rows; i++)
                for (int j = 0; j < cols; j++) acc += P[i * rows + a] * x[i * cols + j] * Q[j * cols + b];
            if (a == b) { dmin = fmin(dmin, acc); dmax = fmax(dmax, acc); diag_sq += acc * acc; }
            else off += acc * acc;
        }
    double off_rel = sqrt(off / diag_sq);
    check(dmin >= 0.68 && dmax <= 1.21 && off_rel < 1e-4,
          "newton-schulz %dx%d, spectrum in [0.05, 1]: singular values in [%.3f, %.3f] (band 0.68..1.21), "
          "singular vectors kept: off-diagonal of P^T O Q %.1e (tol 1e-4)", rows, cols, dmin, dmax, off_rel);
    // the RMS-matched update of this full-rank matrix
    double ss = 0;
    for (size_t i = 0; i < (size_t)rows * cols; i++) ss += (double)x[i] * x[i];
    double rms = 0.2 * sqrt((double)(rows > cols ? rows : cols)) * sqrt(ss / ((double)rows * cols));
    check(rms > 0.2 * 0.68 && rms < 0.2 * 1.21, "muon update %dx%d: RMS of 0.2 sqrt(max) O = %.4f (expect ~0.2: within 0.2 x [0.68, 1.21])",
          rows, cols, rms);
    free(P); free(Q); free(s); free(x);
}

static void test_gaussian_and_batch(int batch, int rows, int cols) {
    size_t mat = (size_t)rows * cols;
    float* x = xmalloc(batch * mat * sizeof(float));
    for (size_t i = 0; i < batch * mat; i++) x[i] = rng_normal(&rng);
    float* one = xmalloc(batch * mat * sizeof(float));
    memcpy(one, x, batch * mat * sizeof(float));
    float coeffs[24];
    int steps = newton_schulz_table("default", coeffs);
    ops_cpu.newton_schulz(x, batch, rows, cols, coeffs, steps, 0);
    for (int b = 0; b < batch; b++) ops_cpu.newton_schulz(one + b * mat, 1, rows, cols, coeffs, steps, 0);
    double worst = 0, scale = 0;
    for (size_t i = 0; i < batch * mat; i++) { worst = fmax(worst, fabs(x[i] - one[i])); scale = fmax(scale, fabs(one[i])); }
    check(worst <= 1e-5 * scale, "newton-schulz batch of %d %dx%d equals one by one: worst |diff| %.2e (tol 1e-5 x max %.3f)",
          batch, rows, cols, worst, scale);
    // Gaussian input: a rectangular one's smallest singular value relative to ||U||_F is bounded away from 0 and
    // lands in the band after 5 steps; a square one can have singular values near 0, which stay small (only the
    // upper bound holds for every input)
    int n = rows < cols ? rows : cols;
    int square = rows == cols;
    double* sv = xmalloc(n * sizeof(double));
    double lo = 1e9, hi = 0;
    for (int b = 0; b < batch; b++) {
        singular_values(x + b * mat, rows, cols, sv);
        for (int i = 0; i < n; i++) { lo = fmin(lo, sv[i]); hi = fmax(hi, sv[i]); }
    }
    check((square || lo > 0.5) && hi <= 1.21, "newton-schulz Gaussian %dx%d (x%d): singular values in [%.3f, %.3f] (tol: %s<= 1.21)",
          rows, cols, batch, lo, hi, square ? "" : "> 0.5, ");
    // Polar Express ends nearer 1
    float pc[24];
    int ps = newton_schulz_table("polar", pc);
    for (size_t i = 0; i < mat; i++) x[i] = rng_normal(&rng);
    ops_cpu.newton_schulz(x, 1, rows, cols, pc, ps, 0);
    singular_values(x, rows, cols, sv);
    lo = 1e9; hi = 0;
    for (int i = 0; i < n; i++) { lo = fmin(lo, sv[i]); hi = fmax(hi, sv[i]); }
    check((square || lo > 0.8) && hi < 1.2, "polar express Gaussian %dx%d: singular values in [%.3f, %.3f] (tol: %s< 1.2)", rows,
          cols, lo, hi, square ? "" : "> 0.8, ");
    free(x); free(one); free(sv);
}

// ---- QK-Clip on a whole (small) model

static void test_qk_clip(void) {
    ModelConfig c = {0};
    snprintf(c.name, sizeof(c.name), "clip-test");
    c.vocab_size = 61; c.d_model = 24; c.n_layers = 3; c.n_dense_layers = 1; c.n_heads = 3; c.q_lora = 12;
    c.kv_lora = 10; c.qk_nope = 6; c.qk_rope = 4; c.v_head = 5; c.n_experts = 8; c.top_k = 2; c.moe_hidden = 6;
    c.dense_hidden = 14; c.seq_len = 12; c.routed_scale = 2.827f; c.rope_theta = 50000.0f; c.norm_eps = 1e-6f;
    int B = 2, T = c.seq_len, N = B * T, L = c.n_layers, H = c.n_heads;
    ParamTensor lay[NUM_PARAM_TENSORS];
    size_t n = param_layout(&c, c.n_experts, lay);
    float* p = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = 0.3f * rng_normal(&rng);
    // large, different query/key weights per head so the heads' max logits spread well apart
    for (int l = 0; l < L; l++)
        for (int h = 0; h < H; h++) {
            float g = 1.0f + 1.5f * h + 0.7f * l;
            float* q = p + lay[P_WUQ].offset + ((size_t)l * lay[P_WUQ].rows + h * (c.qk_nope + c.qk_rope)) * lay[P_WUQ].cols;
            for (int i = 0; i < (c.qk_nope + c.qk_rope) * lay[P_WUQ].cols; i++) q[i] *= g;
        }
    for (int t = 0; t < NUM_PARAM_TENSORS; t++)
        if (lay[t].kind == PARAM_NORM) for (size_t i = 0; i < lay[t].numel; i++) p[lay[t].offset + i] = 1.0f;
    Model m;
    model_init(&m, &c, &ops_cpu, NULL, p, 0);
    Acts a;
    acts_alloc(&a, &m, B, T, 0);
    int* tok = xmalloc(N * sizeof(int));
    for (int i = 0; i < N; i++) tok[i] = (int)rng_below(&rng, c.vocab_size);
    model_zero_step_stats(&m);
    model_forward(&m, &a, tok, NULL, B, T);
    float before[16], after[16];
    model_get_maxlogit(&m, before);
    // tau between the smallest and the largest head: some heads clip, some do not
    float lo = 1e30f, hi = -1e30f;
    for (int i = 0; i < L * H; i++) { lo = fminf(lo, before[i]); hi = fmaxf(hi, before[i]); }
    float tau = 0.5f * (lo + hi);
    float* p0 = xmalloc(n * sizeof(float));
    memcpy(p0, m.params, n * sizeof(float));
    int clipped[16];
    int nclip = qk_clip(&m, tau, clipped);
    int expect = 0;
    for (int i = 0; i < L * H; i++) expect += before[i] > tau;
    check(nclip == expect && nclip > 0 && nclip < L * H, "qk-clip: tau %.3f between head max logits %.3f..%.3f clips %d of %d heads (expected %d)",
          tau, lo, hi, nclip, L * H, expect);
    // A layer's logits depend on its input, which an earlier layer's clip changes; so check each layer with the
    // clip applied to that layer only: its clipped heads must peak at exactly tau, its other heads unchanged.
    float* p_clip = xmalloc(n * sizeof(float));
    memcpy(p_clip, m.params, n * sizeof(float));
    double worst_clipped = 0;
    int unclipped_same = 1;
    for (int l = 0; l < L; l++) {
        memcpy(m.params, p0, n * sizeof(float));
        for (int t = P_WUQ; t <= P_WUKV; t += P_WUKV - P_WUQ) {
            size_t per = (size_t)lay[t].rows * lay[t].cols, off = lay[t].offset + l * per;
            memcpy(m.params + off, p_clip + off, per * sizeof(float));
        }
        model_zero_step_stats(&m);
        model_forward(&m, &a, tok, NULL, B, T);
        model_get_maxlogit(&m, after);
        for (int h = 0; h < H; h++) {
            int i = l * H + h;
            if (clipped[i]) worst_clipped = fmax(worst_clipped, fabs(after[i] - tau) / tau);
            else unclipped_same &= after[i] == before[i];
        }
    }
    memcpy(m.params, p_clip, n * sizeof(float));
    check(worst_clipped <= 1e-5, "qk-clip: the same batch again peaks at tau in every clipped head (worst rel diff %.2e, tol 1e-5)",
          worst_clipped);
    check(unclipped_same, "qk-clip: heads at or under tau have bit-identical max logits");
    // which weights changed: only the q rows and k-nope rows of clipped heads
    int dqk = c.qk_nope + c.qk_rope, kvw = c.qk_nope + c.v_head;
    long wrong = 0, changed = 0;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++)
        for (size_t i = 0; i < lay[t].numel; i++) {
            size_t k = lay[t].offset + i;
            int may_change = 0;
            if (t == P_WUQ || t == P_WUKV) {
                size_t row = i / lay[t].cols, l = row / lay[t].rows, r = row % lay[t].rows;
                int h = (int)(r / (t == P_WUQ ? dqk : kvw)), within = (int)(r % (t == P_WUQ ? dqk : kvw));
                may_change = clipped[l * H + h] && (t == P_WUQ || within < c.qk_nope);
            }
            if (m.params[k] != p0[k]) { changed++; if (!may_change) wrong++; }
            else if (may_change) wrong++;  // a clipped head's q/k-nope rows must all be scaled
        }
    check(wrong == 0 && changed > 0, "qk-clip: %ld weights rescaled, all in clipped heads' q rows and k-nope rows; v rows, the "
          "shared rope key (wdkv) and every other tensor bit-identical (%ld wrong)", changed, wrong);
    acts_free(&a, &m);
    model_free(&m);
    free(p); free(p0); free(p_clip); free(tok);
}

int main(void) {
    uint64_t seed = test_seed("MUON_SEED");
    printf("test_muon: seed %llu (MUON_SEED=%llu reproduces)\n", (unsigned long long)seed, (unsigned long long)seed);
    rng_seed(&rng, seed);
    test_known_spectrum(24, 24);
    test_known_spectrum(16, 40);
    test_known_spectrum(40, 16);
    test_known_spectrum(1, 9);
    test_gaussian_and_batch(12, 32, 64);
    test_gaussian_and_batch(12, 64, 32);
    test_gaussian_and_batch(3, 48, 48);
    test_qk_clip();
    return tests_summary();
}
