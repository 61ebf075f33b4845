// tests/test_cuda_sdpa.c: the cuDNN attention path (model/cuda/sdpa_cudnn.h) against our kernels and the CPU twin.
//   maxlogit   our exact max logit (cuda_attn_maxlogit, attention.cu, through cuda_attention_maxlogit) vs the CPU twin's maxlogit and our attention kernel's;
//              the running max kept; the bound maxlogit <= max lse <= maxlogit + log T; deterministic
//   k / dk     K = [k_nope | k_rope] materialised, and dK split back into dkv and da: exact (bit copies, and the
//              rope-key sum over heads in order)
//   cudnn      on a GPU whose binary has cuDNN: (1) the plumbing, non-causal (cuDNN 9.19's SDPA has no causal mask):
//              out, Stats (= our lse convention, natural-log log-sum-exp of the scaled logits), dq, dkv, da vs a
//              float64 host reference; (2) when --attention cudnn can be chosen (a causal cuDNN path): the table's
//              cuDNN attention vs our kernels vs the CPU twin (out, lse, maxlogit, dq, dkv, da); (3) timing, ours
//              vs cuDNN's, at TEST_CUDA_SDPA_TIME_SHAPE (default B=4 T=2048 H=16 nope=128 rope=64 dv=128)
// The first two groups also run under the CPU emulation (dev/cuda/emu/run.sh); the third SKIPs there (cuDNN
// cannot be emulated) and without a GPU. dev/cuda/check.sh runs this on a GPU.
#include "cuda_test_util.h"
#include "../model/cuda/sdpa_cudnn.h"

static MlaShape mla_shape(int B, int T, int H, int nope, int rope, int dv, int kv_lora) {
    MlaShape s = {.B = B, .T = T, .H = H, .nope = nope, .rope = rope, .dv = dv, .kv_lora = kv_lora};
    return s;
}

typedef struct {
    size_t nq, nkv, na, no, nl;
} Sizes;
static Sizes sizes(MlaShape s) {
    const size_t N = (size_t)s.B * s.T;
    Sizes z = {N * s.H * (s.nope + s.rope), N * s.H * (s.nope + s.dv), N * (s.kv_lora + s.rope), N * s.H * s.dv,
               (size_t)s.B * s.H * s.T};
    return z;
}

// ----------------------------------------------------------------------------
// max logit

static void test_maxlogit_shape(MlaShape s) {
    char what[200], sh[120];
    snprintf(sh, sizeof(sh), "B=%d T=%d H=%d nope=%d rope=%d", s.B, s.T, s.H, s.nope, s.rope);
    Sizes z = sizes(s);
    float* q = randv(z.nq, 1.5f);
    float* kv = randv(z.nkv, 1.0f);
    float* a = randv(z.na, 1.0f);
    float* ml0 = xmalloc(s.H * sizeof(float));
    for (int h = 0; h < s.H; h++) ml0[h] = h == 0 ? 1e9f : (h % 2 ? -INFINITY : -50.0f);  // head 0 keeps its max
    float* out_c = xmalloc(z.no * sizeof(float));
    float* lse_c = xmalloc(z.nl * sizeof(float));
    float* ml_c = fdup(ml0, s.H);
    cpu->attention_forward(out_c, lse_c, ml_c, q, kv, a, s);

    void *dq = up_bf16(q, z.nq), *dkv = up_bf16(kv, z.nkv), *da = up_bf16(a, z.na);
    float* dml = up_f32(ml0, s.H);
    cuda_attention_maxlogit(dml, dq, dkv, da, s);
    float* ml_g = down_f32(dml, s.H);
    snprintf(what, sizeof(what), "cuda_attention_maxlogit %s vs the CPU twin (running max)", sh);
    cmpv(what, ml_g, ml_c, s.H, 1e-5, 0);
    check(ml_g[0] == 1e9f, "cuda_attention_maxlogit: a head whose running max is larger keeps it (%.9g)", (double)ml_g[0]);

    // our attention kernel's maxlogit and lse on the same inputs: the same maximum, and lse bounds it
    float* dml2 = up_f32(ml0, s.H);
    void* dout = gpu->malloc(z.no * 2);
    float* dlse = gpu->malloc(z.nl * sizeof(float));
    gpu->attention_forward(dout, dlse, dml2, dq, dkv, da, s);
    float* ml_own = down_f32(dml2, s.H);
    float* lse_g = down_f32(dlse, z.nl);
    snprintf(what, sizeof(what), "cuda_attention_maxlogit %s vs our attention kernel's maxlogit", sh);
    cmpv(what, ml_g, ml_own, s.H, 1e-5, 0);
    int bad = 0;
    for (int h = 1; h < s.H; h++) {  // head 0 holds the planted 1e9
        float top = -INFINITY;
        for (int b = 0; b < s.B; b++)
            for (int t = 0; t < s.T; t++) top = fmaxf(top, lse_g[((size_t)b * s.H + h) * s.T + t]);
        double slack = 1e-4 * (1.0 + fabs(ml_g[h]));
        if (!(ml_g[h] <= top + slack && top <= ml_g[h] + log((double)s.T) + slack)) {
            printf("    head %d: maxlogit %.6g, max lse %.6g, log T %.4g\n", h, ml_g[h], top, log((double)s.T));
            bad++;
        }
    }
    check(bad == 0, "maxlogit <= max lse <= maxlogit + log T for heads 1..%d (%s)", s.H - 1, sh);
    // deterministic
    gpu->to_device(dml, ml0, s.H * sizeof(float));
    cuda_attention_maxlogit(dml, dq, dkv, da, s);
    float* ml_2 = down_f32(dml, s.H);
    check(!memcmp(ml_2, ml_g, s.H * sizeof(float)), "cuda_attention_maxlogit deterministic (two runs, %s)", sh);
    gpu->free(dq); gpu->free(dkv); gpu->free(da); gpu->free(dml); gpu->free(dml2); gpu->free(dout); gpu->free(dlse);
    free(q); free(kv); free(a); free(ml0); free(out_c); free(lse_c); free(ml_c); free(ml_g); free(ml_own);
    free(lse_g); free(ml_2);
}

static void test_maxlogit(void) {
    test_maxlogit_shape(mla_shape(2, 70, 3, 16, 8, 16, 24));  // partial query and key tiles (70 = 2*32 + 6)
    test_maxlogit_shape(mla_shape(1, 33, 2, 8, 8, 8, 8));
    test_maxlogit_shape(mla_shape(1, 150, 2, 128, 64, 128, 64));  // K2's dqk 192: 3 key tiles, 55 KB of shared memory
}

// ----------------------------------------------------------------------------
// K materialised, dK split

static void test_k_dk(void) {
    MlaShape s = mla_shape(2, 19, 3, 16, 8, 24, 12);
    Sizes z = sizes(s);
    const int dqk = s.nope + s.rope, kvw = s.nope + s.dv, aw = s.kv_lora + s.rope;
    const size_t N = (size_t)s.B * s.T, nk = N * s.H * dqk;
    float* kv = randv(z.nkv, 1.0f);
    float* a = randv(z.na, 1.0f);
    void *dkv = up_bf16(kv, z.nkv), *da = up_bf16(a, z.na), *dk = gpu->malloc(nk * 2);
    poison_bf16(dk, nk);
    cuda_sdpa_build_k(dk, dkv, da, s);
    float* k_g = down_bf16(dk, nk);
    size_t bad = 0;
    for (size_t n = 0; n < N; n++)
        for (int h = 0; h < s.H; h++)
            for (int c = 0; c < dqk; c++) {
                float want = c < s.nope ? kv[n * s.H * kvw + (size_t)h * kvw + c] : a[n * aw + s.kv_lora + c - s.nope];
                bad += memcmp(&k_g[(n * s.H + h) * dqk + c], &want, 4) != 0;
            }
    check(bad == 0, "cuda_sdpa_build_k: K = [k_nope | shared k_rope] per head, %zu elements exact (%zu differ)", nk, bad);

    // dK -> dkv (k-nope columns; v columns untouched) and da (rope-key columns: fp32 sum over heads in order)
    float* dkm = randv(nk, 1.0f);
    float* da0 = randv(z.na, 0.5f);
    void* ddkm = up_bf16(dkm, nk);
    void* ddkv = gpu->malloc(z.nkv * 2);
    void* dda = up_bf16(da0, z.na);
    poison_bf16(ddkv, z.nkv);
    cuda_sdpa_split_dk(ddkv, dda, ddkm, s);
    float* dkv_g = down_bf16(ddkv, z.nkv);
    float* da_g = down_bf16(dda, z.na);
    size_t bad_k = 0, touched_v = 0, bad_r = 0, touched_a = 0;
    for (size_t n = 0; n < N; n++) {
        for (int h = 0; h < s.H; h++)
            for (int c = 0; c < kvw; c++) {
                float g = dkv_g[n * s.H * kvw + (size_t)h * kvw + c];
                if (c < s.nope) bad_k += memcmp(&g, &dkm[(n * s.H + h) * dqk + c], 4) != 0;
                else touched_v += !isnan(g);  // still the poison
            }
        for (int c = 0; c < aw; c++) {
            float g = da_g[n * aw + c];
            if (c < s.kv_lora) { touched_a += memcmp(&g, &da0[n * aw + c], 4) != 0; continue; }
            float acc = 0.0f;
            for (int h = 0; h < s.H; h++) acc += dkm[(n * s.H + h) * dqk + s.nope + (c - s.kv_lora)];
            float want = round_bf(acc);
            bad_r += memcmp(&g, &want, 4) != 0;
        }
    }
    check(bad_k == 0 && touched_v == 0, "cuda_sdpa_split_dk: dkv k-nope columns exact (%zu differ), v columns untouched "
          "(%zu written)", bad_k, touched_v);
    check(bad_r == 0 && touched_a == 0, "cuda_sdpa_split_dk: da rope key = bf16(sum over heads in order) exact (%zu "
          "differ), columns [0, kv_lora) untouched (%zu changed)", bad_r, touched_a);
    gpu->free(dkv); gpu->free(da); gpu->free(dk); gpu->free(ddkm); gpu->free(ddkv); gpu->free(dda);
    free(kv); free(a); free(k_g); free(dkm); free(da0); free(dkv_g); free(da_g);
}

// ----------------------------------------------------------------------------
// the cuDNN path (GPU only)

// float64 host reference of MLA attention, causal or not, on the given (bf16-exact) inputs: out, lse, and the
// gradients dq, dkv (k-nope and v), the rope-key columns of da (summed over heads)
static void host_attention(MlaShape s, int causal, const float* q, const float* kv, const float* a, const float* dout,
                           double* out, double* lse, double* dq, double* dkv, double* da_rope) {
    const int T = s.T, H = s.H, nope = s.nope, rope = s.rope, dv = s.dv, dqk = nope + rope, kvw = nope + dv;
    const int aw = s.kv_lora + rope;
    const double scale = (double)(float)(1.0 / sqrt((double)dqk));
    const size_t N = (size_t)s.B * T;
    memset(dq, 0, N * H * dqk * sizeof(double));
    memset(dkv, 0, N * H * kvw * sizeof(double));
    memset(da_rope, 0, N * rope * sizeof(double));
    double* P = xmalloc((size_t)T * T * sizeof(double));
    double* dS = xmalloc((size_t)T * T * sizeof(double));
    for (int b = 0; b < s.B; b++)
        for (int h = 0; h < H; h++) {
#define QI(i, c) ((double)q[((size_t)(b * T + (i)) * H + h) * dqk + (c)])
#define KJ(j, c) ((c) < nope ? (double)kv[((size_t)(b * T + (j)) * H + h) * kvw + (c)] \
                             : (double)a[(size_t)(b * T + (j)) * aw + s.kv_lora + (c) - nope])
#define VJ(j, c) ((double)kv[((size_t)(b * T + (j)) * H + h) * kvw + nope + (c)])
#define DO(i, c) ((double)dout[((size_t)(b * T + (i)) * H + h) * dv + (c)])
            for (int i = 0; i < T; i++) {
                int J = causal ? i + 1 : T;
                double mx = -INFINITY;
                for (int j = 0; j < J; j++) {
                    double d = 0;
                    for (int c = 0; c < dqk; c++) d += QI(i, c) * KJ(j, c);
                    P[(size_t)i * T + j] = d * scale;
                    mx = fmax(mx, d * scale);
                }
                double sum = 0;
                for (int j = 0; j < J; j++) sum += exp(P[(size_t)i * T + j] - mx);
                lse[((size_t)b * H + h) * T + i] = mx + log(sum);
                for (int j = 0; j < T; j++) P[(size_t)i * T + j] = j < J ? exp(P[(size_t)i * T + j] - mx) / sum : 0.0;
                for (int c = 0; c < dv; c++) {
                    double o = 0;
                    for (int j = 0; j < J; j++) o += P[(size_t)i * T + j] * VJ(j, c);
                    out[((size_t)(b * T + i) * H + h) * dv + c] = o;
                }
            }
            for (int i = 0; i < T; i++) {
                double D = 0;
                for (int c = 0; c < dv; c++) D += DO(i, c) * out[((size_t)(b * T + i) * H + h) * dv + c];
                for (int j = 0; j < T; j++) {
                    double dp = 0;
                    for (int c = 0; c < dv; c++) dp += DO(i, c) * VJ(j, c);
                    dS[(size_t)i * T + j] = P[(size_t)i * T + j] * (dp - D) * scale;
                }
            }
            for (int i = 0; i < T; i++)
                for (int j = 0; j < T; j++) {
                    double p = P[(size_t)i * T + j], ds = dS[(size_t)i * T + j];
                    if (p == 0.0) continue;
                    for (int c = 0; c < dqk; c++) {
                        dq[((size_t)(b * T + i) * H + h) * dqk + c] += ds * KJ(j, c);
                        double g = ds * QI(i, c);
                        if (c < nope) dkv[((size_t)(b * T + j) * H + h) * kvw + c] += g;
                        else da_rope[(size_t)(b * T + j) * rope + c - nope] += g;
                    }
                    for (int c = 0; c < dv; c++) dkv[((size_t)(b * T + j) * H + h) * kvw + nope + c] += p * DO(i, c);
                }
#undef QI
#undef KJ
#undef VJ
#undef DO
        }
    free(P);
    free(dS);
}

static float* to_f(const double* d, size_t n) {
    float* f = xmalloc(n * sizeof(float) + 4);
    for (size_t i = 0; i < n; i++) f[i] = (float)d[i];
    return f;
}

// the rope-key columns of a (N, kv_lora+rope) buffer
static float* rope_cols(const float* x, MlaShape s) {
    const size_t N = (size_t)s.B * s.T;
    const int aw = s.kv_lora + s.rope;
    float* r = xmalloc(N * s.rope * sizeof(float) + 4);
    for (size_t n = 0; n < N; n++)
        for (int c = 0; c < s.rope; c++) r[n * s.rope + c] = x[n * aw + s.kv_lora + c];
    return r;
}

// the cuDNN plumbing, non-causal, vs the float64 reference
static void test_cudnn_plumbing(MlaShape s) {
    char what[200], sh[120];
    snprintf(sh, sizeof(sh), "B=%d T=%d H=%d nope=%d rope=%d dv=%d, non-causal", s.B, s.T, s.H, s.nope, s.rope, s.dv);
    SdpaPlan p;
    if (!sdpa_plan_make(&p, s, 0, sdpa_cudnn_version())) { skip("cuDNN plumbing %s: %s", sh, p.unsupported); return; }
    Sizes z = sizes(s);
    float *q = randv(z.nq, 1.0f), *kv = randv(z.nkv, 1.0f), *a = randv(z.na, 1.0f), *go = randv(z.no, 1.0f);
    float* da0 = randv(z.na, 0.5f);
    double *out_r = xmalloc(z.no * 8), *lse_r = xmalloc(z.nl * 8), *dq_r = xmalloc(z.nq * 8), *dkv_r = xmalloc(z.nkv * 8);
    double* dar_r = xmalloc((size_t)s.B * s.T * s.rope * 8);
    host_attention(s, 0, q, kv, a, go, out_r, lse_r, dq_r, dkv_r, dar_r);
    void *dq = up_bf16(q, z.nq), *dkv = up_bf16(kv, z.nkv), *da = up_bf16(a, z.na), *dgo = up_bf16(go, z.no);
    void* dout = gpu->malloc(z.no * 2);
    float* dlse = gpu->malloc(z.nl * 4);
    poison_bf16(dout, z.no);
    poison_f32(dlse, z.nl);
    const char* err = sdpa_cudnn_forward(&p, dout, dlse, dq, dkv, da);
    if (err) {
        check(0, "cuDNN SDPA forward (%s) runs: %s", sh, err);
    } else {
        float *o = down_bf16(dout, z.no), *l = down_f32(dlse, z.nl), *o_r = to_f(out_r, z.no), *l_r = to_f(lse_r, z.nl);
        snprintf(what, sizeof(what), "cuDNN forward %s: out vs float64", sh);
        cmpv(what, o, o_r, z.no, BF_RTOL, BF_AFRAC);
        snprintf(what, sizeof(what), "cuDNN forward %s: Stats = our lse (natural-log log-sum-exp of scaled logits)", sh);
        cmpv(what, l, l_r, z.nl, 1e-3, 1e-4);
        free(o); free(l); free(o_r); free(l_r);
        void *ddq = gpu->malloc(z.nq * 2), *ddkv = gpu->malloc(z.nkv * 2), *dda = up_bf16(da0, z.na);
        poison_bf16(ddq, z.nq);
        poison_bf16(ddkv, z.nkv);
        err = sdpa_cudnn_backward(&p, ddq, ddkv, dda, dgo, dq, dkv, da, dout, dlse);
        if (err) {
            check(0, "cuDNN SDPA backward (%s) runs: %s", sh, err);
        } else {
            float *g1 = down_bf16(ddq, z.nq), *g2 = down_bf16(ddkv, z.nkv), *g3 = down_bf16(dda, z.na);
            float *r1 = to_f(dq_r, z.nq), *r2 = to_f(dkv_r, z.nkv), *r3 = to_f(dar_r, (size_t)s.B * s.T * s.rope);
            float* g3r = rope_cols(g3, s);
            snprintf(what, sizeof(what), "cuDNN backward %s: dq vs float64", sh);
            cmp_l2(what, g1, r1, z.nq, 1e-2);
            snprintf(what, sizeof(what), "cuDNN backward %s: dkv (k-nope from dK, v from dV) vs float64", sh);
            cmp_l2(what, g2, r2, z.nkv, 1e-2);
            snprintf(what, sizeof(what), "cuDNN backward %s: da rope key (dK summed over heads) vs float64", sh);
            cmp_l2(what, g3r, r3, (size_t)s.B * s.T * s.rope, 1e-2);
            free(g1); free(g2); free(g3); free(r1); free(r2); free(r3); free(g3r);
        }
        gpu->free(ddq); gpu->free(ddkv); gpu->free(dda);
    }
    gpu->free(dq); gpu->free(dkv); gpu->free(da); gpu->free(dgo); gpu->free(dout); gpu->free(dlse);
    free(q); free(kv); free(a); free(go); free(da0); free(out_r); free(lse_r); free(dq_r); free(dkv_r); free(dar_r);
}

typedef struct {
    float *out, *lse, *ml, *dq, *dkv, *da;
} AttnResult;

// the op table's attention pair (whichever is chosen) on uploaded inputs: forward then backward from its own out
static AttnResult run_table(MlaShape s, void* dq, void* dkv, void* da, void* dgo, const float* da0) {
    Sizes z = sizes(s);
    AttnResult r;
    void* dout = gpu->malloc(z.no * 2);
    float* dlse = gpu->malloc(z.nl * 4);
    float* ml0 = xmalloc(s.H * sizeof(float));
    for (int h = 0; h < s.H; h++) ml0[h] = -INFINITY;
    float* dml = up_f32(ml0, s.H);
    gpu->attention_forward(dout, dlse, dml, dq, dkv, da, s);
    void *ddq = gpu->malloc(z.nq * 2), *ddkv = gpu->malloc(z.nkv * 2), *dda = up_bf16(da0, z.na);
    gpu->attention_backward(ddq, ddkv, dda, dgo, dq, dkv, da, dout, dlse, s);
    r.out = down_bf16(dout, z.no); r.lse = down_f32(dlse, z.nl); r.ml = down_f32(dml, s.H);
    r.dq = down_bf16(ddq, z.nq); r.dkv = down_bf16(ddkv, z.nkv); r.da = down_bf16(dda, z.na);
    gpu->free(dout); gpu->free(dlse); gpu->free(dml); gpu->free(ddq); gpu->free(ddkv); gpu->free(dda);
    free(ml0);
    return r;
}

static void free_result(AttnResult* r) { free(r->out); free(r->lse); free(r->ml); free(r->dq); free(r->dkv); free(r->da); }

// ms per forward+backward of the table's attention (after one warm-up)
static double time_table(MlaShape s, int iters) {
    Sizes z = sizes(s);
    float *q = randv(z.nq, 1.0f), *kv = randv(z.nkv, 1.0f), *a = randv(z.na, 1.0f), *go = randv(z.no, 1.0f);
    void *dq = up_bf16(q, z.nq), *dkv = up_bf16(kv, z.nkv), *da = up_bf16(a, z.na), *dgo = up_bf16(go, z.no);
    void *dout = gpu->malloc(z.no * 2), *ddq = gpu->malloc(z.nq * 2), *ddkv = gpu->malloc(z.nkv * 2), *dda = gpu->malloc(z.na * 2);
    float *dlse = gpu->malloc(z.nl * 4), *dml = gpu->malloc(s.H * 4);
    double t0 = 0;
    for (int it = 0; it <= iters; it++) {
        if (it == 1) { gpu->sync(); t0 = wall_seconds(); }
        gpu->attention_forward(dout, dlse, dml, dq, dkv, da, s);
        gpu->attention_backward(ddq, ddkv, dda, dgo, dq, dkv, da, dout, dlse, s);
    }
    gpu->sync();
    double ms = (wall_seconds() - t0) * 1e3 / iters;
    gpu->free(dq); gpu->free(dkv); gpu->free(da); gpu->free(dgo); gpu->free(dout); gpu->free(ddq); gpu->free(ddkv);
    gpu->free(dda); gpu->free(dlse); gpu->free(dml);
    free(q); free(kv); free(a); free(go);
    return ms;
}

static void test_cudnn(void) {
    if (sdpa_cudnn_version() == 0) {
        skip("cuDNN attention: this binary has no cuDNN (a CPU emulation, or a build without libcudnn)");
        return;
    }
    printf("cuDNN %ld (headers and library; run time %ld)\n", sdpa_cudnn_version(), sdpa_cudnn_runtime_version());
    test_cudnn_plumbing(mla_shape(2, 128, 4, 64, 64, 64, 96));    // dqk 128, dv 64
    test_cudnn_plumbing(mla_shape(2, 200, 3, 128, 64, 128, 64));  // K2's heads: dqk 192, dv 128; T not a tile multiple

    // the causal path through the op table, when it can be chosen
    MlaShape s = mla_shape(2, 256, 4, 128, 64, 128, 128);
    char why[256];
    int chosen = ops_cuda_choose_attention("cudnn", s, why, sizeof(why));
    if (chosen != 1) {
        skip("causal cuDNN attention vs ours vs the CPU twin: %s", why);
    } else {
        Sizes z = sizes(s);
        float *q = randv(z.nq, 1.0f), *kv = randv(z.nkv, 1.0f), *a = randv(z.na, 1.0f), *go = randv(z.no, 1.0f);
        float* da0 = randv(z.na, 0.5f);
        void *dq = up_bf16(q, z.nq), *dkv = up_bf16(kv, z.nkv), *da = up_bf16(a, z.na), *dgo = up_bf16(go, z.no);
        AttnResult cu = run_table(s, dq, dkv, da, dgo, da0);
        ops_cuda_choose_attention("own", s, why, sizeof(why));
        AttnResult own = run_table(s, dq, dkv, da, dgo, da0);
        float *out_c = xmalloc(z.no * 4), *lse_c = xmalloc(z.nl * 4), *ml_c = xmalloc(s.H * 4);
        for (int h = 0; h < s.H; h++) ml_c[h] = -INFINITY;
        cpu->attention_forward(out_c, lse_c, ml_c, q, kv, a, s);
        float *dq_c = xmalloc(z.nq * 4), *dkv_c = xmalloc(z.nkv * 4), *da_c = fdup(da0, z.na);
        cpu->attention_backward(dq_c, dkv_c, da_c, go, q, kv, a, out_c, lse_c, s);
        const AttnResult* rs[2] = {&cu, &own};
        const char* names[2] = {"cuDNN", "ours"};
        for (int i = 0; i < 2; i++) {
            char what[160];
            snprintf(what, sizeof(what), "causal %s vs CPU twin: out", names[i]); cmpv(what, rs[i]->out, out_c, z.no, BF_RTOL, BF_AFRAC);
            snprintf(what, sizeof(what), "causal %s vs CPU twin: lse", names[i]); cmpv(what, rs[i]->lse, lse_c, z.nl, 1e-3, 1e-4);
            snprintf(what, sizeof(what), "causal %s vs CPU twin: maxlogit", names[i]); cmpv(what, rs[i]->ml, ml_c, s.H, 1e-5, 0);
            snprintf(what, sizeof(what), "causal %s vs CPU twin: dq", names[i]); cmp_l2(what, rs[i]->dq, dq_c, z.nq, 1e-2);
            snprintf(what, sizeof(what), "causal %s vs CPU twin: dkv", names[i]); cmp_l2(what, rs[i]->dkv, dkv_c, z.nkv, 1e-2);
            float *rg = rope_cols(rs[i]->da, s), *rc = rope_cols(da_c, s);
            snprintf(what, sizeof(what), "causal %s vs CPU twin: da rope key", names[i]);
            cmp_l2(what, rg, rc, (size_t)s.B * s.T * s.rope, 1e-2);
            free(rg); free(rc);
        }
        cmp_l2("causal cuDNN vs ours: out", cu.out, own.out, z.no, 1e-2);
        cmpv("causal cuDNN vs ours: maxlogit (the same kernel's exact max)", cu.ml, own.ml, s.H, 1e-5, 0);
        free_result(&cu); free_result(&own);
        gpu->free(dq); gpu->free(dkv); gpu->free(da); gpu->free(dgo);
        free(q); free(kv); free(a); free(go); free(da0); free(out_c); free(lse_c); free(ml_c); free(dq_c); free(dkv_c); free(da_c);
    }

    // timing at a training shape (TEST_CUDA_SDPA_TIME_SHAPE="B T H nope rope dv", default K2's heads)
    int tb = 4, tt = 2048, th = 16, tn = 128, tr = 64, tv = 128;
    const char* env = getenv("TEST_CUDA_SDPA_TIME_SHAPE");
    if (env) sscanf(env, "%d %d %d %d %d %d", &tb, &tt, &th, &tn, &tr, &tv);
    MlaShape ts = mla_shape(tb, tt, th, tn, tr, tv, 512);
    ops_cuda_choose_attention("own", ts, why, sizeof(why));
    double own_ms = time_table(ts, 5);
    printf("TIME attention fwd+bwd B=%d T=%d H=%d dqk=%d dv=%d: ours %.2f ms\n", tb, tt, th, tn + tr, tv, own_ms);
    if (ops_cuda_choose_attention("cudnn", ts, why, sizeof(why)) == 1) {
        double cu_ms = time_table(ts, 5);
        printf("TIME attention fwd+bwd B=%d T=%d H=%d dqk=%d dv=%d: cuDNN %.2f ms (%.2fx ours)\n", tb, tt, th, tn + tr,
               tv, cu_ms, own_ms / cu_ms);
    } else {
        printf("TIME cuDNN causal: not available (%s)\n", why);
    }
    ops_cuda_choose_attention("own", ts, why, sizeof(why));  // the table as built
}

int main(void) {
    const CudaTestGroup groups[] = {{"max logit kernel", test_maxlogit}, {"K materialised / dK split", test_k_dk},
                                    {"cuDNN attention", test_cudnn}};
    return cuda_test_main("test_cuda_sdpa", groups, 3);
}
