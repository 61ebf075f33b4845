// model/cpu/moe.c: the MoE layer on the CPU: sigmoid router with bias-adjusted top-K, the sequence-wise balance
// loss, dropless dispatch grouped by expert, the grouped expert SwiGLU, and the gate-weighted combine.
#include "cpu.h"

// ----------------------------------------------------------------------------
// router

// Top-K of v[e] = s[e] + bias[e] over e = 0..E-1 into chosen (K, sorted by value, descending), best (their values):
// one pass keeping the best K so far; a later expert must beat a value strictly, so ties go to the lower expert id.
// After the first K, an expert enters only if it beats the current K-th value, which only grows: eight experts
// at a time are compared with it in vector lanes, and only those that beat it are walked one by one (the same
// insertions, in the same order, as walking every expert).
static void router_topk(int* chosen, float* best, const float* s, const float* bias, int E, int K) {
    int cnt = 0, e = 0;
    for (; e < E && cnt < K; e++) {
        float v = s[e] + bias[e];
        int j = cnt++;
        while (j > 0 && v > best[j - 1]) { best[j] = best[j - 1]; chosen[j] = chosen[j - 1]; j--; }
        best[j] = v;
        chosen[j] = e;
    }
    for (; e < E; ) {
        // the experts of this block that beat the K-th value as it stands at the block's start (all 8 without AVX2)
        int end = e + 8 <= E ? e + 8 : E;
        unsigned mask = (1u << (end - e)) - 1;
#if VEC_AVX2
        if (end == e + 8) {
            __m256 v8 = _mm256_add_ps(_mm256_loadu_ps(s + e), _mm256_loadu_ps(bias + e));
            mask = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v8, _mm256_set1_ps(best[K - 1]), _CMP_GT_OQ));
        }
#endif
        for (; mask; mask &= mask - 1) {  // in expert order; each still has to beat the K-th value of its turn
            int x = e + __builtin_ctz(mask);
            float v = s[x] + bias[x];
            if (!(v > best[K - 1])) continue;
            int j = K - 1;
            while (j > 0 && v > best[j - 1]) { best[j] = best[j - 1]; chosen[j] = chosen[j - 1]; j--; }
            best[j] = v;
            chosen[j] = x;
        }
        e = end;
    }
}

void cpu_moe_router_forward(float* scores, int* sel, float* gates, const void* x, const void* w_router,
                            const float* bias, MoeShape shape, float routed_scale) {
    int N = shape.B * shape.T, d = shape.d, E = shape.E, K = shape.K;
    // logits (N,E) in fp32, then the sigmoid in place
    sgemm_par(0, 1, N, E, d, 1.0f, x, d, w_router, d, 0.0f, scores, E);
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        float* s = scores + (size_t)n * E;
        for (int e = 0; e < E; e++) s[e] = sigmoid_fast(s[e]);
        int* chosen = sel + (size_t)n * K;
        float best[64];
        router_topk(chosen, best, s, bias, E, K);
        // ascending expert order: the combine then sums in a fixed order whatever the scores were
        for (int i = 1; i < K; i++)
            for (int j = i; j > 0 && chosen[j - 1] > chosen[j]; j--) {
                int t = chosen[j]; chosen[j] = chosen[j - 1]; chosen[j - 1] = t;
            }
        double sum = 0.0;
        for (int k = 0; k < K; k++) sum += s[chosen[k]];
        for (int k = 0; k < K; k++) gates[(size_t)n * K + k] = (float)(routed_scale * s[chosen[k]] / sum);
    }
}

// f_i = E/(K T) * (choices of expert i in the sequence), P_i = mean over the sequence of s_i / sum_j s_j
void cpu_moe_balance_loss(float* aux, const float* scores, const int* sel, MoeShape shape, float alpha) {
    int B = shape.B, T = shape.T, E = shape.E, K = shape.K;
    double* seq_loss = xmalloc((size_t)B * sizeof(double));
    // one sequence per thread at a time; the sequences' losses are added in order afterwards
    #pragma omp parallel
    {
        double* P = xmalloc((size_t)E * sizeof(double));
        int* count = xmalloc((size_t)E * sizeof(int));
        float* ones = xmalloc((size_t)E * sizeof(float));
        for (int e = 0; e < E; e++) ones[e] = 1.0f;
        #pragma omp for
        for (int b = 0; b < B; b++) {
            memset(count, 0, E * sizeof(int));
            for (int e = 0; e < E; e++) P[e] = 0.0;
            for (int t = 0; t < T; t++) {
                size_t n = (size_t)b * T + t;
                const float* s = scores + n * E;
                double ssum = row_dot(s, ones, E);
                for (int e = 0; e < E; e++) P[e] += s[e] / ssum;
                for (int k = 0; k < K; k++) count[sel[n * K + k]]++;
            }
            double l = 0.0;
            for (int e = 0; e < E; e++) l += ((double)E / ((double)K * T) * count[e]) * (P[e] / T);
            seq_loss[b] = alpha * l;
        }
        free(P);
        free(count);
        free(ones);
    }
    double total = 0.0;
    for (int b = 0; b < B; b++) total += seq_loss[b];
    free(seq_loss);
    *aux += (float)(total / B);
}

// *S = sum_e s[e] and *fs = sum_e f_scale count[e] s[e], in double, 8 lanes (element e in lane e % 8, as vec.h's
// row kernels): a token's sums over its E scores without one long chain of dependent adds
static void lane_sums(double* S, double* fs, const float* s, const int* count, double f_scale, int E) {
    double a[8] = {0}, b[8] = {0};
    int e = 0;
#if VEC_AVX2
    __m256d a0 = _mm256_setzero_pd(), a1 = a0, b0 = a0, b1 = a0, fv = _mm256_set1_pd(f_scale);
    for (; e + 8 <= E; e += 8) {
        __m256d s0 = _mm256_cvtps_pd(_mm_loadu_ps(s + e)), s1 = _mm256_cvtps_pd(_mm_loadu_ps(s + e + 4));
        __m256d c0 = _mm256_cvtepi32_pd(_mm_loadu_si128((const __m128i*)(count + e)));
        __m256d c1 = _mm256_cvtepi32_pd(_mm_loadu_si128((const __m128i*)(count + e + 4)));
        a0 = _mm256_add_pd(a0, s0);
        a1 = _mm256_add_pd(a1, s1);
        b0 = _mm256_fmadd_pd(_mm256_mul_pd(fv, c0), s0, b0);
        b1 = _mm256_fmadd_pd(_mm256_mul_pd(fv, c1), s1, b1);
    }
    _mm256_storeu_pd(a, a0);
    _mm256_storeu_pd(a + 4, a1);
    _mm256_storeu_pd(b, b0);
    _mm256_storeu_pd(b + 4, b1);
#endif
    for (; e < E; e++) {
        a[e % 8] += s[e];
        b[e % 8] += f_scale * count[e] * s[e];
    }
    *S = lanes8_sum(a);
    *fs = lanes8_sum(b);
}

void cpu_moe_router_backward(void* dx, float* dw_router, float* dscores, const float* dgates, const float* scores,
                             const int* sel, const void* x, const void* w_router, MoeShape shape, float routed_scale,
                             BalanceGrad bg) {
    int B = shape.B, T = shape.T, d = shape.d, E = shape.E, K = shape.K;
    int N = B * T;
    #pragma omp parallel
    {
        int* count = xmalloc((size_t)E * sizeof(int));
        #pragma omp for
        for (int b = 0; b < B; b++) {
            // this sequence's f_i (no gradient flows through the counts)
            memset(count, 0, E * sizeof(int));
            for (int t = 0; t < T; t++)
                for (int k = 0; k < K; k++) count[sel[((size_t)b * T + t) * K + k]]++;
            double fscale = bg.f_scale, bal = bg.grad;
            for (int t = 0; t < T; t++) {
                size_t n = (size_t)b * T + t;
                const float* s = scores + n * E;
                float* ds = dscores + n * E;
                // balance loss: d/ds_j of sum_i f_i s_i / S  =  f_j / S - (sum_i f_i s_i) / S^2
                double S = 0.0, fs = 0.0;
                lane_sums(&S, &fs, s, count, fscale, E);
                for (int e = 0; e < E; e++) ds[e] = (float)(bal * (fscale * count[e] / S - fs / (S * S)));
                // gates g_k = c s_k / S_sel:  ds_j += (c / S_sel) (dg_j - sum_k dg_k s_k / S_sel)
                const int* ch = sel + n * K;
                const float* dg = dgates + n * K;
                double Ssel = 0.0, dgs = 0.0;
                for (int k = 0; k < K; k++) { Ssel += s[ch[k]]; dgs += (double)dg[k] * s[ch[k]]; }
                for (int k = 0; k < K; k++) ds[ch[k]] += (float)(routed_scale / Ssel * (dg[k] - dgs / Ssel));
                // through the sigmoid: d logit = ds * s (1 - s)
                for (int e = 0; e < E; e++) ds[e] *= s[e] * (1.0f - s[e]);
            }
        }
        free(count);
    }
    // dx += dlogits W ; dW += dlogits^T x
    sgemm_par(0, 0, N, d, E, 1.0f, dscores, E, w_router, d, 1.0f, dx, d);
    sgemm_par(1, 0, E, d, N, 1.0f, dscores, E, x, d, 1.0f, dw_router, d);
}

// ----------------------------------------------------------------------------
// dispatch: a counting sort of the N*K choices by expert, stable in (row, k) order

void cpu_moe_dispatch(int* offsets, int* row_of, int* token_of, float* load, const int* sel, MoeShape shape) {
    int N = shape.B * shape.T, K = shape.K, E = shape.E;
    memset(offsets, 0, (size_t)(E + 1) * sizeof(int));
    for (size_t i = 0; i < (size_t)N * K; i++) offsets[sel[i] + 1]++;
    for (int e = 0; e < E; e++) load[e] += (float)offsets[e + 1];
    for (int e = 0; e < E; e++) offsets[e + 1] += offsets[e];
    int* cursor = xmalloc((size_t)E * sizeof(int));
    memcpy(cursor, offsets, (size_t)E * sizeof(int));
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            int pos = cursor[sel[(size_t)n * K + k]]++;
            row_of[(size_t)n * K + k] = pos;
            token_of[pos] = n;
        }
    free(cursor);
}

void cpu_moe_gather(void* xe_, const void* x_, const int* token_of, int NK, int d) {
    float* xe = xe_;
    const float* x = x_;
    #pragma omp parallel for
    for (int i = 0; i < NK; i++) memcpy(xe + (size_t)i * d, x + (size_t)token_of[i] * d, d * sizeof(float));
}

void cpu_moe_gather_backward(void* dx_, const void* dxe_, const int* row_of, MoeShape shape) {
    int N = shape.B * shape.T, K = shape.K, d = shape.d;
    float* dx = dx_;
    const float* dxe = dxe_;
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        float* dst = dx + (size_t)n * d;
        for (int k = 0; k < K; k++) {
            const float* src = dxe + (size_t)row_of[(size_t)n * K + k] * d;
            for (int c = 0; c < d; c++) dst[c] += src[c];
        }
    }
}

// ----------------------------------------------------------------------------
// grouped expert SwiGLU: one sgemm per expert on its contiguous block of rows, experts spread over threads
// (OpenBLAS's OpenMP build runs a call made inside a parallel region on the calling thread)

void cpu_moe_experts_forward(void* ye_, void* h13_, void* hact_, const void* xe_, const void* w13_, const void* w2_,
                             const int* offsets, int E, int d, int f) {
    float *ye = ye_, *h13 = h13_, *hact = hact_;
    const float *xe = xe_, *w13 = w13_, *w2 = w2_;
    #pragma omp parallel for schedule(dynamic)
    for (int e = 0; e < E; e++) {
        int r0 = offsets[e], n = offsets[e + 1] - r0;
        if (n == 0) continue;
        const float* W13 = w13 + (size_t)e * 2 * f * d;
        const float* W2 = w2 + (size_t)e * d * f;
        sgemm_rm(0, 1, n, 2 * f, d, 1.0f, xe + (size_t)r0 * d, d, W13, d, 0.0f, h13 + (size_t)r0 * 2 * f, 2 * f);
        swiglu_forward_rows(hact + (size_t)r0 * f, h13 + (size_t)r0 * 2 * f, n, f);
        sgemm_rm(0, 1, n, d, f, 1.0f, hact + (size_t)r0 * f, f, W2, f, 0.0f, ye + (size_t)r0 * d, d);
    }
}

void cpu_moe_experts_backward(void* dxe_, float* dw13, float* dw2, void* dh13_, void* dhact_, const void* dye_,
                              const void* xe_, const void* h13_, const void* hact_, const void* w13_, const void* w2_,
                              const int* offsets, int E, int d, int f) {
    float *dxe = dxe_, *dh13 = dh13_, *dhact = dhact_;
    const float *dye = dye_, *xe = xe_, *h13 = h13_, *hact = hact_, *w13 = w13_, *w2 = w2_;
    #pragma omp parallel for schedule(dynamic)
    for (int e = 0; e < E; e++) {
        int r0 = offsets[e], n = offsets[e + 1] - r0;
        if (n == 0) continue;
        const float* W13 = w13 + (size_t)e * 2 * f * d;
        const float* W2 = w2 + (size_t)e * d * f;
        const float* dY = dye + (size_t)r0 * d;
        float* dH = dhact + (size_t)r0 * f;
        float* dH13 = dh13 + (size_t)r0 * 2 * f;
        // through W2: dhact = dY W2 ; dW2 += dY^T hact
        sgemm_rm(0, 0, n, f, d, 1.0f, dY, d, W2, f, 0.0f, dH, f);
        sgemm_rm(1, 0, d, f, n, 1.0f, dY, d, hact + (size_t)r0 * f, f, 1.0f, dw2 + (size_t)e * d * f, f);
        swiglu_backward_rows(dH13, dH, h13 + (size_t)r0 * 2 * f, n, f);
        // through W13: dxe = dH13 W13 ; dW13 += dH13^T xe
        sgemm_rm(0, 0, n, d, 2 * f, 1.0f, dH13, 2 * f, W13, d, 0.0f, dxe + (size_t)r0 * d, d);
        sgemm_rm(1, 0, 2 * f, d, n, 1.0f, dH13, 2 * f, xe + (size_t)r0 * d, d, 1.0f, dw13 + (size_t)e * 2 * f * d, d);
    }
}

// ----------------------------------------------------------------------------
// combine

void cpu_moe_combine_forward(void* y_, const void* ye_, const float* gates, const int* row_of, MoeShape shape) {
    int N = shape.B * shape.T, K = shape.K, d = shape.d;
    float* y = y_;
    const float* ye = ye_;
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        float* dst = y + (size_t)n * d;
        for (int k = 0; k < K; k++) {
            float g = gates[(size_t)n * K + k];
            const float* src = ye + (size_t)row_of[(size_t)n * K + k] * d;
            for (int c = 0; c < d; c++) dst[c] += g * src[c];
        }
    }
}

void cpu_moe_combine_backward(void* dye_, float* dgates, const void* dy_, const void* ye_, const float* gates,
                              const int* row_of, MoeShape shape) {
    int N = shape.B * shape.T, K = shape.K, d = shape.d;
    float* dye = dye_;
    const float *dy = dy_, *ye = ye_;
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float* g_up = dy + (size_t)n * d;
        for (int k = 0; k < K; k++) {
            size_t r = (size_t)row_of[(size_t)n * K + k];
            float g = gates[(size_t)n * K + k];
            float* dst = dye + r * d;
            const float* src = ye + r * d;
            for (int c = 0; c < d; c++) dst[c] = g * g_up[c];
            dgates[(size_t)n * K + k] = (float)row_dot(g_up, src, d);
        }
    }
}
