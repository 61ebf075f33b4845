// model/cpu/optim.c: the optimizer kernels on the CPU: gradient norm, AdamW, Muon's momentum, Newton-Schulz and
// update, and the row scaling QK-Clip uses.
#include "cpu.h"

// ----------------------------------------------------------------------------
// AdamW and the gradient norm

double cpu_sum_squares(const float* g, size_t n) {
    // fixed chunks summed in order: the result does not depend on the thread count
    const size_t chunk = 1 << 16;
    size_t nchunks = (n + chunk - 1) / chunk;
    double* part = xcalloc(nchunks ? nchunks : 1, sizeof(double));
    #pragma omp parallel for
    for (size_t c = 0; c < nchunks; c++) {
        size_t e = (c + 1) * chunk < n ? (c + 1) * chunk : n;
        double s = 0.0;
        #pragma omp simd reduction(+ : s)
        for (size_t i = c * chunk; i < e; i++) s += (double)g[i] * g[i];
        part[c] = s;
    }
    double total = 0.0;
    for (size_t c = 0; c < nchunks; c++) total += part[c];
    free(part);
    return total;
}

void cpu_adamw_update(float* restrict p, const float* restrict g, float* restrict m, float* restrict v, size_t n,
                      float lr, float b1, float b2, float eps, float wd, float grad_scale, float inv_bc1,
                      float inv_bc2) {
    // bias corrections folded into two multipliers, so the loop is multiplies, one sqrt and one divide (vectorised)
    float decay = 1.0f - lr * wd;  // p - lr wd p
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] * grad_scale;
        float mi = b1 * m[i] + (1.0f - b1) * gi;
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = decay * p[i] - lr * (mi * inv_bc1) / (sqrtf(vi * inv_bc2) + eps);
    }
}

// ----------------------------------------------------------------------------
// Muon

void cpu_muon_momentum(float* restrict m, float* restrict u, const float* restrict g, size_t n, float mu,
                       float grad_scale) {
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] * grad_scale;
        float mi = mu * m[i] + gi;
        m[i] = mi;
        u[i] = gi + mu * mi;
    }
}

// One matrix: x (rows, cols) <- NS(x). work holds 2 n m + 2 n n floats (n = short side, m = long side).
static void newton_schulz_one(float* x, int rows, int cols, const float* coeffs, int steps, float* work) {
    int tr = rows > cols;
    int n = tr ? cols : rows, m = tr ? rows : cols;
    size_t nm = (size_t)n * m;
    double ss = row_dot(x, x, nm);  // in 8 double lanes: a serial sum of every expert's matrix was a long chain
    float inv = (float)(1.0 / (sqrt(ss) + 1e-7));
    float* X = work;
    float* Y = X + nm;
    float* A = Y + nm;
    float* Bm = A + (size_t)n * n;
    if (tr) {  // X = x^T (cols, rows): work on the short side
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++) X[(size_t)j * m + i] = x[(size_t)i * cols + j] * inv;
    } else {
        for (size_t i = 0; i < nm; i++) X[i] = x[i] * inv;
    }
    for (int s = 0; s < steps; s++) {
        float a = coeffs[3 * s], b = coeffs[3 * s + 1], c = coeffs[3 * s + 2];
        sgemm_par(0, 1, n, n, m, 1.0f, X, m, X, m, 0.0f, A, n);      // A = X X^T
        memcpy(Bm, A, (size_t)n * n * sizeof(float));
        sgemm_par(0, 0, n, n, n, c, A, n, A, n, b, Bm, n);           // B = b A + c A A
        for (size_t i = 0; i < nm; i++) Y[i] = a * X[i];
        sgemm_par(0, 0, n, m, n, 1.0f, Bm, n, X, m, 1.0f, Y, m);     // Y = a X + B X
        float* t = X; X = Y; Y = t;
    }
    if (tr) {
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++) x[(size_t)i * cols + j] = X[(size_t)j * m + i];
    } else {
        memcpy(x, X, nm * sizeof(float));
    }
}

void cpu_newton_schulz(float* x, int batch, int rows, int cols, const float* coeffs, int steps, int bf16_gemms) {
    (void)bf16_gemms;  // the CPU iterates in fp32 always (ops_list.h)
    int n = rows < cols ? rows : cols, m = rows < cols ? cols : rows;
    size_t work_n = 2 * (size_t)n * m + 2 * (size_t)n * n;
    size_t mat = (size_t)rows * cols;
#ifdef _OPENMP
    int threads = omp_get_max_threads();
#else
    int threads = 1;
#endif
    if (batch >= 2 * threads) {
        // many small matrices (the experts): one per thread at a time, each with single-threaded BLAS
        #pragma omp parallel
        {
            float* work = xmalloc(work_n * sizeof(float));
            #pragma omp for schedule(dynamic)
            for (int b = 0; b < batch; b++) newton_schulz_one(x + b * mat, rows, cols, coeffs, steps, work);
            free(work);
        }
    } else {
        // a few large matrices: one at a time, each product split over the threads (sgemm_par)
        float* work = xmalloc(work_n * sizeof(float));
        for (int b = 0; b < batch; b++) newton_schulz_one(x + b * mat, rows, cols, coeffs, steps, work);
        free(work);
    }
}

double cpu_muon_update(float* restrict p, const float* restrict o, size_t n, float lr, float scale, float wd) {
    double sq = 0.0;
    float decay = 1.0f - lr * wd;
    #pragma omp parallel for simd reduction(+ : sq) schedule(static)
    for (size_t i = 0; i < n; i++) {
        float u = scale * o[i];
        sq += (double)u * u;
        p[i] = decay * p[i] - lr * u;
    }
    return sq;
}

// ----------------------------------------------------------------------------
// QK-Clip

void cpu_scale_rows(float* w, int row0, int nrows, int cols, float factor) {
    float* r = w + (size_t)row0 * cols;
    for (size_t i = 0; i < (size_t)nrows * cols; i++) r[i] *= factor;
}
