// model/cpu/attention.c: causal MLA attention on the CPU.
//
// Per sequence b and head h, with Q = q[b, :, h] (T, dqk), K = [kv[b, :, h, :nope] | a[b, :, kv_lora:]] (T, dqk)
// and V = kv[b, :, h, nope:] (T, dv): S = Q K^T / sqrt(dqk), P = causal softmax(S), O = P V.
// Nothing is gathered: each head's Q, K and V are strided views of q, kv and a, and the K product is split into
// its nope and rope halves (two sgemms), so the shared rope key is read in place by every head.
// The forward keeps only the log-sum-exp per row (like flash attention); the backward recomputes P from it.
//
// Causal blocks: the T rows go in 4 blocks of queries (att_block); a block's queries see only the keys up to its
// last row, so each product runs over the columns (or, for the key gradients, the rows) that can be non-zero, and
// the upper triangle beyond each block's diagonal is never computed: 5/8 of the work of the full T x T products.
// The terms left out are exact zeros; the sums keep their terms and order, but OpenBLAS's rounding of an element
// depends on the shape of the call it is in, so results differ from full-size products in the last bits.
#include "cpu.h"

typedef struct {
    int T, H, nope, rope, dv, kv_lora;
    int q_stride, kv_stride, a_stride, o_stride;  // row strides of q, kv, a, out
    float scale;
} AttnShape;

static AttnShape attn_shape(int T, int H, int nope, int rope, int dv, int kv_lora) {
    AttnShape s = {T, H, nope, rope, dv, kv_lora};
    s.q_stride = H * (nope + rope);
    s.kv_stride = H * (nope + dv);
    s.a_stride = kv_lora + rope;
    s.o_stride = H * dv;
    s.scale = (float)(1.0 / sqrt((double)(nope + rope)));
    return s;
}

// queries per causal block: a quarter of the sequence (64 at T = 256; the tests' short sequences get several blocks
// and a ragged last one too)
static int att_block(int T) { return (T + 3) / 4; }

// S[i0:i1, 0:i1] (rows of S are T apart) = Q[i0:i1] K[0:i1]^T * scale for sequence b, head h
static void attn_scores(float* S, const AttnShape* s, const float* q, const float* kv, const float* a, int b, int h,
                        int i0, int i1) {
    int T = s->T, m = i1 - i0;
    const float* Q = q + ((size_t)b * T + i0) * s->q_stride + (size_t)h * (s->nope + s->rope);
    const float* Kn = kv + (size_t)b * T * s->kv_stride + (size_t)h * (s->nope + s->dv);
    const float* Kr = a + (size_t)b * T * s->a_stride + s->kv_lora;
    float* Sb = S + (size_t)i0 * T;
    float beta = 0.0f;
    if (s->nope > 0) {
        sgemm_rm(0, 1, m, i1, s->nope, s->scale, Q, s->q_stride, Kn, s->kv_stride, 0.0f, Sb, T);
        beta = 1.0f;
    }
    sgemm_rm(0, 1, m, i1, s->rope, s->scale, Q + s->nope, s->q_stride, Kr, s->a_stride, beta, Sb, T);
}

void cpu_attention_forward(void* out_, float* lse, float* maxlogit, const void* q_, const void* kv_, const void* a_,
                           MlaShape shape) {
    int B = shape.B, T = shape.T, H = shape.H, nope = shape.nope, rope = shape.rope, dv = shape.dv;
    int kv_lora = shape.kv_lora;
    float* out = out_;
    const float *q = q_, *kv = kv_, *a = a_;
    AttnShape s = attn_shape(T, H, nope, rope, dv, kv_lora);
    int bs = att_block(T);
    float* head_max = xmalloc((size_t)B * H * sizeof(float));
    #pragma omp parallel
    {
        float* S = xmalloc((size_t)T * T * sizeof(float));
        #pragma omp for schedule(dynamic)
        for (int bh = 0; bh < B * H; bh++) {
            int b = bh / H, h = bh % H;
            const float* V = kv + (size_t)b * T * s.kv_stride + (size_t)h * (nope + dv) + nope;
            float* O = out + (size_t)b * T * s.o_stride + (size_t)h * dv;
            float mx_all = -INFINITY;
            for (int i0 = 0; i0 < T; i0 += bs) {
                int i1 = i0 + bs < T ? i0 + bs : T;
                attn_scores(S, &s, q, kv, a, b, h, i0, i1);
                for (int i = i0; i < i1; i++) {
                    float* row = S + (size_t)i * T;
                    float mx = row_max(row, i + 1);
                    double sum = row_exp_sum(row, row, i + 1, mx);
                    row_scale(row, i + 1, (float)(1.0 / sum));
                    for (int j = i + 1; j < i1; j++) row[j] = 0.0f;
                    lse[(size_t)bh * T + i] = mx + (float)log(sum);
                    mx_all = mx > mx_all ? mx : mx_all;
                }
                // O[i0:i1] (., dv) = P[i0:i1, 0:i1] V[0:i1], written into this head's columns of out
                sgemm_rm(0, 0, i1 - i0, dv, i1, 1.0f, S + (size_t)i0 * T, T, V, s.kv_stride, 0.0f,
                         O + (size_t)i0 * s.o_stride, s.o_stride);
            }
            head_max[bh] = mx_all;
        }
        free(S);
    }
    for (int bh = 0; bh < B * H; bh++) {
        int h = bh % H;
        if (head_max[bh] > maxlogit[h]) maxlogit[h] = head_max[bh];
    }
    free(head_max);
}

void cpu_attention_backward(void* dq_, void* dkv_, void* da_, const void* dout_, const void* q_, const void* kv_,
                            const void* a_, const void* out_, const float* lse, MlaShape shape) {
    int B = shape.B, T = shape.T, H = shape.H, nope = shape.nope, rope = shape.rope, dv = shape.dv;
    int kv_lora = shape.kv_lora;
    (void)out_;  // rowsum(dO * O) is taken from P and dP instead, which is the same number computed more directly
    float *dq = dq_, *dkv = dkv_, *da = da_;
    const float *dout = dout_, *q = q_, *kv = kv_, *a = a_;
    AttnShape s = attn_shape(T, H, nope, rope, dv, kv_lora);
    int bs = att_block(T);
    // every head adds into the shared rope key's gradient: give each head its own slice, then sum heads in order
    float* dkr_heads = xmalloc((size_t)B * H * T * rope * sizeof(float));
    #pragma omp parallel
    {
        float* P = xmalloc((size_t)T * T * sizeof(float));
        float* dP = xmalloc((size_t)T * T * sizeof(float));
        #pragma omp for schedule(dynamic)
        for (int bh = 0; bh < B * H; bh++) {
            int b = bh / H, h = bh % H;
            const float* dO = dout + (size_t)b * T * s.o_stride + (size_t)h * dv;
            const float* V = kv + (size_t)b * T * s.kv_stride + (size_t)h * (nope + dv) + nope;
            float* dV = dkv + (size_t)b * T * s.kv_stride + (size_t)h * (nope + dv) + nope;
            const float* Q = q + (size_t)b * T * s.q_stride + (size_t)h * (nope + rope);
            const float* Kn = kv + (size_t)b * T * s.kv_stride + (size_t)h * (nope + dv);
            const float* Kr = a + (size_t)b * T * s.a_stride + kv_lora;
            float* dQ = dq + (size_t)b * T * s.q_stride + (size_t)h * (nope + rope);
            float* dKn = dkv + (size_t)b * T * s.kv_stride + (size_t)h * (nope + dv);
            float* dKr = dkr_heads + (size_t)bh * T * rope;
            // query blocks: P and dS on each block's rows, columns up to the block's last row (the rest of a row
            // is never read), and dQ[i0:i1] = dS[i0:i1, 0:i1] K[0:i1]
            for (int i0 = 0; i0 < T; i0 += bs) {
                int i1 = i0 + bs < T ? i0 + bs : T, m = i1 - i0;
                attn_scores(P, &s, q, kv, a, b, h, i0, i1);
                // dP[i0:i1, 0:i1] = dO[i0:i1] V[0:i1]^T
                sgemm_rm(0, 1, m, i1, dv, 1.0f, dO + (size_t)i0 * s.o_stride, s.o_stride, V, s.kv_stride, 0.0f,
                         dP + (size_t)i0 * T, T);
                for (int i = i0; i < i1; i++) {
                    float* p = P + (size_t)i * T;
                    float* g = dP + (size_t)i * T;
                    row_exp(p, p, i + 1, lse[(size_t)bh * T + i]);
                    for (int j = i + 1; j < i1; j++) p[j] = 0.0f;
                    // dS = P * (dP - rowsum(P * dP)), times the logit scale (folded in here once)
                    float D = (float)row_dot(p, g, i + 1);
                    for (int j = 0; j <= i; j++) g[j] = p[j] * (g[j] - D) * s.scale;
                    for (int j = i + 1; j < i1; j++) g[j] = 0.0f;
                }
                if (nope > 0)
                    sgemm_rm(0, 0, m, nope, i1, 1.0f, dP + (size_t)i0 * T, T, Kn, s.kv_stride, 0.0f,
                             dQ + (size_t)i0 * s.q_stride, s.q_stride);
                sgemm_rm(0, 0, m, rope, i1, 1.0f, dP + (size_t)i0 * T, T, Kr, s.a_stride, 0.0f,
                         dQ + (size_t)i0 * s.q_stride + nope, s.q_stride);
            }
            // key blocks: keys j0..j1 are seen by the queries j0..T-1. dV = P^T dO ; dK = dS^T Q (nope, rope)
            for (int j0 = 0; j0 < T; j0 += bs) {
                int j1 = j0 + bs < T ? j0 + bs : T, m = j1 - j0, rows = T - j0;
                const float* Pb = P + (size_t)j0 * T + j0;
                const float* dSb = dP + (size_t)j0 * T + j0;
                sgemm_rm(1, 0, m, dv, rows, 1.0f, Pb, T, dO + (size_t)j0 * s.o_stride, s.o_stride, 0.0f,
                         dV + (size_t)j0 * s.kv_stride, s.kv_stride);
                if (nope > 0)
                    sgemm_rm(1, 0, m, nope, rows, 1.0f, dSb, T, Q + (size_t)j0 * s.q_stride, s.q_stride, 0.0f,
                             dKn + (size_t)j0 * s.kv_stride, s.kv_stride);
                sgemm_rm(1, 0, m, rope, rows, 1.0f, dSb, T, Q + (size_t)j0 * s.q_stride + nope, s.q_stride, 0.0f,
                         dKr + (size_t)j0 * rope, rope);
            }
        }
        free(P);
        free(dP);
    }
    #pragma omp parallel for
    for (int n = 0; n < B * T; n++) {
        int b = n / T, t = n % T;
        float* dst = da + (size_t)n * s.a_stride + kv_lora;
        for (int r = 0; r < rope; r++) {
            float acc = 0.0f;
            for (int h = 0; h < H; h++) acc += dkr_heads[(((size_t)b * H + h) * T + t) * rope + r];
            dst[r] = acc;
        }
    }
    free(dkr_heads);
}
