// model/cpu/dense.c: the CPU ops that are not attention or MoE: embedding, RMSNorm, matmul, residual adds, SwiGLU,
// RoPE and cross-entropy. fp32 throughout; sums that decide a result
// (norms, softmax denominators) are carried in double so that the CPU stays the most exact backend.
#include "cpu.h"

// ----------------------------------------------------------------------------
// embedding

void cpu_embedding_forward(void* out_, const int* tokens, const void* wte_, int N, int d) {
    float* out = out_;
    const float* wte = wte_;
    #pragma omp parallel for
    for (int n = 0; n < N; n++) memcpy(out + (size_t)n * d, wte + (size_t)tokens[n] * d, d * sizeof(float));
}

void cpu_embedding_backward(float* dwte, const void* dout_, const int* tokens, int N, int d) {
    const float* dout = dout_;
    // Parallel over columns: each thread walks all rows in order, so repeated tokens add up in the same order
    // every run (deterministic) and no two threads touch the same element.
    #pragma omp parallel
    {
#ifdef _OPENMP
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
#else
        int nt = 1, id = 0;
#endif
        int c0 = (int)((long)d * id / nt), c1 = (int)((long)d * (id + 1) / nt);
        for (int n = 0; n < N; n++) {
            float* dst = dwte + (size_t)tokens[n] * d;
            const float* src = dout + (size_t)n * d;
            for (int c = c0; c < c1; c++) dst[c] += src[c];
        }
    }
}

// ----------------------------------------------------------------------------
// RMSNorm: y = x * rstd * g, rstd = 1/sqrt(mean(x^2) + eps)

void cpu_rmsnorm_forward(void* out_, float* rstd, const void* inp_, int in_stride, const void* gain_, int N, int C,
                         float eps) {
    float* out = out_;
    const float* inp = inp_;
    const float* g = gain_;
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float* x = inp + (size_t)n * in_stride;
        double ss = 0.0;
        for (int c = 0; c < C; c++) ss += (double)x[c] * x[c];
        float r = (float)(1.0 / sqrt(ss / C + eps));
        rstd[n] = r;
        float* y = out + (size_t)n * C;
        for (int c = 0; c < C; c++) y[c] = x[c] * r * g[c];
    }
}

void cpu_rmsnorm_backward(void* dinp_, int in_stride, int accumulate, float* dgain, const void* dout_,
                          const void* inp_, const void* gain_, const float* rstd, int N, int C) {
    float* dinp = dinp_;
    const float* dout = dout_;
    const float* inp = inp_;
    const float* g = gain_;
    enum { CB = 16 };
    int blocks = (C + CB - 1) / CB;
    // one parallel region for both loops (they read the same inputs and write different outputs): one wake-up of
    // the threads instead of two
    #pragma omp parallel
    {
    // dx_i = r (g_i dy_i) - r^3 x_i mean_j(g_j dy_j x_j)
    #pragma omp for nowait
    for (int n = 0; n < N; n++) {
        const float* x = inp + (size_t)n * in_stride;
        const float* dy = dout + (size_t)n * C;
        float* dx = dinp + (size_t)n * in_stride;
        float r = rstd[n];
        double dot = 0.0;
        for (int c = 0; c < C; c++) dot += (double)g[c] * dy[c] * x[c];
        float k = (float)(dot / C) * r * r * r;
        if (accumulate) for (int c = 0; c < C; c++) dx[c] += r * g[c] * dy[c] - k * x[c];
        else            for (int c = 0; c < C; c++) dx[c]  = r * g[c] * dy[c] - k * x[c];
    }
    // (were dinp one of the inputs, the gain's sums would have to wait for every row of it)
    if (dinp_ == dout_ || dinp_ == inp_) {
        #pragma omp barrier
    }
    // dgain_c += sum_n dy x r: each column's sum runs over the rows in order (whatever the threads); blocks of 16
    // columns go to the threads, and a block's sums advance together row by row (contiguous loads, vector lanes)
    #pragma omp for
    for (int blk = 0; blk < blocks; blk++) {
        int c0 = blk * CB, nc = C - c0 < CB ? C - c0 : CB;
        double s[CB] = {0};
        for (int n = 0; n < N; n++) {
            const float* dy = dout + (size_t)n * C + c0;
            const float* x = inp + (size_t)n * in_stride + c0;
            double r = rstd[n];
            for (int j = 0; j < nc; j++) s[j] += (double)dy[j] * x[j] * r;
        }
        for (int j = 0; j < nc; j++) dgain[c0 + j] += (float)s[j];
    }
    }
}

// ----------------------------------------------------------------------------
// matmul: out = inp w^T

void cpu_matmul_forward(void* out, const void* inp, const void* w, int N, int C, int OC) {
    sgemm_par(0, 1, N, OC, C, 1.0f, inp, C, w, C, 0.0f, out, OC);
}

void cpu_matmul_backward(void* dinp, int accumulate, float* dw, const void* dout, const void* inp, const void* w,
                         int N, int C, int OC) {
    if (dinp) sgemm_par(0, 0, N, C, OC, 1.0f, dout, OC, w, C, accumulate ? 1.0f : 0.0f, dinp, C);
    sgemm_par(1, 0, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dw, C);
}

// ----------------------------------------------------------------------------
// element-wise

void cpu_add(void* out_, const void* a_, const void* b_, size_t n) {
    float* out = out_;
    const float *a = a_, *b = b_;
    #pragma omp parallel for
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void cpu_add_inplace(void* x_, const void* y_, size_t n) {
    float* x = x_;
    const float* y = y_;
    #pragma omp parallel for
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}

// rows [0, N) of the SwiGLU, on the calling thread (the experts call these inside their own parallel loop)
void swiglu_forward_rows(float* out, const float* h13, int N, int f) {
    for (int n = 0; n < N; n++) {
        const float* a = h13 + (size_t)n * 2 * f;  // gate (W1)
        const float* b = a + f;                    // up (W3)
        float* y = out + (size_t)n * f;
        for (int j = 0; j < f; j++) y[j] = a[j] * sigmoid_fast(a[j]) * b[j];
    }
}

void swiglu_backward_rows(float* dh13, const float* dout, const float* h13, int N, int f) {
    for (int n = 0; n < N; n++) {
        const float* a = h13 + (size_t)n * 2 * f;
        const float* b = a + f;
        const float* dy = dout + (size_t)n * f;
        float* da = dh13 + (size_t)n * 2 * f;
        float* db = da + f;
        for (int j = 0; j < f; j++) {
            float s = sigmoid_fast(a[j]);
            float silu = a[j] * s;
            da[j] = dy[j] * b[j] * s * (1.0f + a[j] * (1.0f - s));
            db[j] = dy[j] * silu;
        }
    }
}

// blocks of 16 rows over the threads
void cpu_swiglu_forward(void* out_, const void* h13_, int N, int f) {
    float* out = out_;
    const float* h13 = h13_;
    #pragma omp parallel for
    for (int n0 = 0; n0 < N; n0 += 16)
        swiglu_forward_rows(out + (size_t)n0 * f, h13 + (size_t)n0 * 2 * f, N - n0 < 16 ? N - n0 : 16, f);
}

void cpu_swiglu_backward(void* dh13_, const void* dout_, const void* h13_, int N, int f) {
    float* dh13 = dh13_;
    const float* dout = dout_;
    const float* h13 = h13_;
    #pragma omp parallel for
    for (int n0 = 0; n0 < N; n0 += 16)
        swiglu_backward_rows(dh13 + (size_t)n0 * 2 * f, dout + (size_t)n0 * f, h13 + (size_t)n0 * 2 * f,
                             N - n0 < 16 ? N - n0 : 16, f);
}

// ----------------------------------------------------------------------------
// RoPE on adjacent pairs (2i, 2i+1), frequency theta^(-2i/rope_dim), angle = position * frequency

// (cos, +-sin) per position t < T and pair i < rope_dim/2: T*rope_dim/2 trig calls, far fewer than one per element,
// and made once: every later RoPE call (4 per layer and step, forward and inverse) reuses the table of its
// direction. Ops run on the calling thread only, so the cache needs no lock.
static const float* rope_table(int T, int rope_dim, float theta, int inverse) {
    static struct { float* cs; int T, rope_dim; float theta; } cache[2];  // [inverse]
    int half = rope_dim / 2;
    typeof(cache[0])* c = &cache[inverse ? 1 : 0];
    // a position's entries do not depend on T: a table for more positions serves a shorter sequence too
    if (c->cs && c->T >= T && c->rope_dim == rope_dim && c->theta == theta) return c->cs;
    free(c->cs);
    c->cs = xmalloc((size_t)T * half * 2 * sizeof(float));
    c->T = T;
    c->rope_dim = rope_dim;
    c->theta = theta;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            double freq = pow((double)theta, -2.0 * i / rope_dim);
            double ang = t * freq;
            c->cs[(t * half + i) * 2] = (float)cos(ang);
            c->cs[(t * half + i) * 2 + 1] = (float)(inverse ? -sin(ang) : sin(ang));
        }
    return c->cs;
}

void cpu_rope(void* x_, int N, int T, int n_heads, int row_stride, int head_stride, int offset, int rope_dim,
              float theta, int inverse) {
    float* x = x_;
    int half = rope_dim / 2;
    const float* cs = rope_table(T, rope_dim, theta, inverse);
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float* tab = cs + (size_t)(n % T) * half * 2;
        for (int h = 0; h < n_heads; h++) {
            float* v = x + (size_t)n * row_stride + (size_t)h * head_stride + offset;
            for (int i = 0; i < half; i++) {
                float c = tab[2 * i], s = tab[2 * i + 1];
                float x0 = v[2 * i], x1 = v[2 * i + 1];
                v[2 * i] = x0 * c - x1 * s;
                v[2 * i + 1] = x0 * s + x1 * c;
            }
        }
    }
}

// ----------------------------------------------------------------------------
// softmax cross-entropy

// Each row is 16 KB at V = 4096, so after the first pass (the max) it is read again from L1.
void cpu_crossentropy_forward(float* losses, const void* logits_, const int* targets, int N, int V) {
    const float* logits = logits_;
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float* z = logits + (size_t)n * V;
        float mx = row_max(z, V);
        double s = row_exp_sum(NULL, z, V, mx);  // float terms (each in (0, 1]), summed in double
        losses[n] = (float)(log(s) + mx - z[targets[n]]);
    }
}

void cpu_crossentropy_backward(void* dlogits_, const void* logits_, const int* targets, float dloss, int N, int V) {
    float* dz = dlogits_;
    const float* logits = logits_;
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float* z = logits + (size_t)n * V;
        float* g = dz + (size_t)n * V;
        float mx = row_max(z, V);
        // z and g may alias: write exp(z - mx) first, then scale by 1/sum
        double s = row_exp_sum(g, z, V, mx);
        row_scale(g, V, (float)(dloss / s));
        g[targets[n]] -= dloss;
    }
}
