// model/cpu/attention.c: causal MLA attention on the CPU.
//
// Per sequence b and head h, with Q = q[b, :, h] (T, dqk), K = [kv[b, :, h, :nope] | a[b, :, kv_lora:]] (T, dqk)
// and V = kv[b, :, h, nope:] (T, dv): S = Q K^T / sqrt(dqk), P = causal softmax(S), O = P V.
// Nothing is gathered: each head's Q, K and V are strided views of q, kv and a, and the K product is split into
// its nope and rope halves (two sgemms), so the shared rope key is read in place by every head.
// The forward keeps only the log-sum-exp per row (like flash attention); the backward recomputes P from it.
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

// S (T,T) = Q K^T * scale for sequence b, head h (the upper triangle is computed and ignored)
static void attn_scores(float* S, const AttnShape* s, const float* q, const float* kv, const float* a, int b, int h) {
    int T = s->T;
    const float* Q = q + (size_t)b * T * s->q_stride + (size_t)h * (s->nope + s->rope);
    const float* Kn = kv + (size_t)b * T * s->kv_stride + (size_t)h * (s->nope + s->dv);
    const float* Kr = a + (size_t)b * T * s->a_stride + s->kv_lora;
    float beta = 0.0f;
    if (s->nope > 0) {
        sgemm_rm(0, 1, T, T, s->nope, s->scale, Q, s->q_stride, Kn, s->kv_stride, 0.0f, S, T);
        beta = 1.0f;
    }
    sgemm_rm(0, 1, T, T, s->rope, s->scale, Q + s->nope, s->q_stride, Kr, s->a_stride, beta, S, T);
}

void cpu_attention_forward(void* out_, float* lse, float* maxlogit, const void* q_, const void* kv_, const void* a_,
                           MlaShape shape) {
    int B = shape.B, T = shape.T, H = shape.H, nope = shape.nope, rope = shape.rope, dv = shape.dv;
    int kv_lora = shape.kv_lora;
    float* out = out_;
    const float *q = q_, *kv = kv_, *a = a_;
    AttnShape s = attn_shape(T, H, nope, rope, dv, kv_lora);
    float* head_max = xmalloc((size_t)B * H * sizeof(float));
    #pragma omp parallel
    {
        float* S = xmalloc((size_t)T * T * sizeof(float));
        #pragma omp for schedule(dynamic)
        for (int bh = 0; bh < B * H; bh++) {
            int b = bh / H, h = bh % H;
            attn_scores(S, &s, q, kv, a, b, h);
            float mx_all = -INFINITY;
            for (int i = 0; i < T; i++) {
                float* row = S + (size_t)i * T;
                float mx = row_max(row, i + 1);
                double sum = row_exp_sum(row, row, i + 1, mx);
                row_scale(row, i + 1, (float)(1.0 / sum));
                for (int j = i + 1; j < T; j++) row[j] = 0.0f;
                lse[(size_t)bh * T + i] = mx + (float)log(sum);
                mx_all = mx > mx_all ? mx : mx_all;
            }
            head_max[bh] = mx_all;
            // O (T, dv) = P V, written into this head's columns of out
            const float* V = kv + (size_t)b * T * s.kv_stride + (size_t)h * (nope + dv) + nope;
            float* O = out + (size_t)b * T * s.o_stride + (size_t)h * dv;
            sgemm_rm(0, 0, T, dv, T, 1.0f, S, T, V, s.kv_stride, 0.0f, O, s.o_stride);
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
    // every head adds into the shared rope key's gradient: give each head its own slice, then sum heads in order
    float* dkr_heads = xmalloc((size_t)B * H * T * rope * sizeof(float));
    #pragma omp parallel
    {
        float* P = xmalloc((size_t)T * T * sizeof(float));
        float* dP = xmalloc((size_t)T * T * sizeof(float));
        #pragma omp for schedule(dynamic)
        for (int bh = 0; bh < B * H; bh++) {
            int b = bh / H, h = bh % H;
            attn_scores(P, &s, q, kv, a, b, h);
            for (int i = 0; i < T; i++) {
                float* row = P + (size_t)i * T;
                row_exp(row, row, i + 1, lse[(size_t)bh * T + i]);
                for (int j = i + 1; j < T; j++) row[j] = 0.0f;
            }
            const float* dO = dout + (size_t)b * T * s.o_stride + (size_t)h * dv;
            const float* V = kv + (size_t)b * T * s.kv_stride + (size_t)h * (nope + dv) + nope;
            float* dV = dkv + (size_t)b * T * s.kv_stride + (size_t)h * (nope + dv) + nope;
            // dV (T,dv) = P^T dO ;  dP (T,T) = dO V^T
            sgemm_rm(1, 0, T, dv, T, 1.0f, P, T, dO, s.o_stride, 0.0f, dV, s.kv_stride);
            sgemm_rm(0, 1, T, T, dv, 1.0f, dO, s.o_stride, V, s.kv_stride, 0.0f, dP, T);
            // dS = P * (dP - rowsum(P * dP)), times the logit scale (folded in here once)
            for (int i = 0; i < T; i++) {
                float* p = P + (size_t)i * T;
                float* g = dP + (size_t)i * T;
                float D = (float)row_dot(p, g, i + 1);
                for (int j = 0; j <= i; j++) g[j] = p[j] * (g[j] - D) * s.scale;
                for (int j = i + 1; j < T; j++) g[j] = 0.0f;
            }
            const float* Q = q + (size_t)b * T * s.q_stride + (size_t)h * (nope + rope);
            const float* Kn = kv + (size_t)b * T * s.kv_stride + (size_t)h * (nope + dv);
            const float* Kr = a + (size_t)b * T * s.a_stride + kv_lora;
            float* dQ = dq + (size_t)b * T * s.q_stride + (size_t)h * (nope + rope);
            float* dKn = dkv + (size_t)b * T * s.kv_stride + (size_t)h * (nope + dv);
            float* dKr = dkr_heads + (size_t)bh * T * rope;
            // dQ = dS K ; dK = dS^T Q  (nope and rope halves)
            if (nope > 0) {
                sgemm_rm(0, 0, T, nope, T, 1.0f, dP, T, Kn, s.kv_stride, 0.0f, dQ, s.q_stride);
                sgemm_rm(1, 0, T, nope, T, 1.0f, dP, T, Q, s.q_stride, 0.0f, dKn, s.kv_stride);
            }
            sgemm_rm(0, 0, T, rope, T, 1.0f, dP, T, Kr, s.a_stride, 0.0f, dQ + nope, s.q_stride);
            sgemm_rm(1, 0, T, rope, T, 1.0f, dP, T, Q + nope, s.q_stride, 0.0f, dKr, rope);
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
