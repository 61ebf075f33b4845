// tests/test_cuda_attn_moe.c: the CUDA attention and MoE ops (model/cuda/attention.cu, model/cuda/moe.cu) against
// their CPU twins (ops_cpu), on fresh random inputs (never zeros).
//
// Method (as tests/test_cuda.c): odd shapes (T not a multiple of the 64-row tiles, partial warps, odd head widths,
// nope = 0) plus model-like ones (dqk = 192 != dv = 128; E = 384, K = 8). Inputs are drawn in fp32 and rounded to
// bf16 on the host; the CPU op gets those values as fp32, the GPU op the same bf16 bits. Every output buffer is
// poisoned first (bf16 0xFFFF / fp32 NaN / int -7), so an element left unwritten fails; accumulators start from
// random values on both sides; columns an op must not touch are checked bit for bit.
//
// Tolerances, |gpu - cpu| <= rtol |cpu| + afrac max|cpu| on every element (printed ratio <= 1 passes):
//   bf16 outputs of one stage (gather_backward, combine, each expert GEMM / SwiGLU fed the GPU's own previous
//     stage): rtol 1e-2, afrac 1e-3 -- one bf16 rounding is <= 2^-9 = 2e-3 relative, the fp32 math before it
//     differs from the CPU by ~1e-6.
//   attention out: rtol 1e-2, afrac 3e-3, and relative L2 <= 5e-3. Besides out's own rounding, P is rounded to bf16
//     for the tensor-core product P V (as FlashAttention does): each weight moves by <= 2^-9 relative, so an
//     element by up to 2^-9 sum_j P_ij |v_j| ~ 2e-3 of the values' scale, which afrac 1e-3 failed on 1 seed in 15
//     (ratio 1.18, an element near 0 in a row of few keys); the L2 bound keeps the aggregate tight (seen: 1.9e-3 on
//     15 seeds; the gradients: 3.0-3.8e-3, was ~2.2e-3 with fp32 P and dS).
//   attention gradients (dq, dkv, rope-key da): rtol 1e-2, afrac 1e-2, and relative L2 <= 5e-3. The backward takes
//     D = rowsum(dO * O) from the bf16 output O (as FlashAttention does), the CPU from P and dP in fp32; that moves
//     every dS of a row by ~2^-9 of the row's scale, so small elements are judged against the tensor's scale.
//   composite expert chains vs the CPU twin (which keeps h13, hact, dh13, dhact in fp32 where the GPU rounds them to
//     bf16): relative L2 <= 1e-2 (each rounding adds ~2e-3; a wrong index or transpose is O(1)).
//   fp32 router scores and gates: rtol 1e-5, afrac 1e-6 (fp32 GEMM in another order, expf vs the CPU's exp).
//   lse: rtol 1e-5, afrac 1e-6; maxlogit: rtol 1e-5 (the same fp32 logit, summed in another order: "exact up to
//     rounding"); a head whose running max is already larger must keep it bit for bit.
//   balance loss: rtol 1e-6 (double math on both sides, one fp32 rounding).
//   router backward: dx bf16 (rtol 1e-2, afrac 1e-3); dw_router fp32 rtol 1e-4, afrac 1e-4 (the GPU splits the fp32
//     dscores into bf16 hi + lo, ~2^-17 relative per term; hi alone would be off by ~2e-3); dscores (scratch, but
//     written with the CPU's expressions) rtol 1e-5, afrac 1e-6.
//   expert weight gradients fed the GPU's bf16 intermediates: fp32 sums, rtol 1e-5, afrac 2e-5.
//   dgates: fp32 dot products over d, rtol 1e-5, afrac 1e-5.
//   exact: the dispatch plan (offsets, row_of, token_of) and load; the top-K choice (except rows whose K-th and
//     (K+1)-th biased scores are within 1e-5 but not equal, where fp32 rounding may legitimately flip it; exact ties
//     must go to the lower expert id on both); gather (a copy).
// Determinism: attention forward/backward, router backward, dispatch and the expert backward run twice on the same
// inputs and must agree bit for bit.
//
// Without a GPU (or in a build without the CUDA backend) every group prints one SKIP line and the binary exits 0.
// The seed is printed; TEST_CUDA_SEED=<n> reruns the same draw.
#include "cuda_test_util.h"

// ----------------------------------------------------------------------------
// inputs for the MoE ops

// A starting value for an fp32 gradient accumulator, of the gradient's own size (max |grad| = gmax): large enough
// that a skipped accumulation fails, small enough that the sum keeps the gradient's digits.
static float* grad_sized_init(size_t n, double gmax) { return randf(n, (float)(gmax > 0 ? gmax : 1.0)); }

// N rows of K distinct experts in [0, E), ascending, drawn with a skew (low ids popular, some experts never chosen
// when E is large enough) so the dispatch sees empty, small and large groups
static int* random_sel(int N, int K, int E) {
    if (K > E) fatal("random_sel: K = %d distinct experts out of E = %d", K, E);
    int* sel = xmalloc((size_t)N * K * sizeof(int) + 4);
    int banned = E >= K + 4 ? E / 3 : -1;  // one expert nobody picks
    for (int n = 0; n < N; n++) {
        int* s = sel + (size_t)n * K;
        for (int k = 0; k < K; k++) {
            int e, dup;
            do {
                float u = rng_uniform(&rng);
                e = (int)(E * u * u);
                if (e >= E) e = E - 1;
                dup = e == banned;
                for (int j = 0; j < k; j++) dup |= s[j] == e;
            } while (dup);
            s[k] = e;
        }
        for (int i = 1; i < K; i++)
            for (int j = i; j > 0 && s[j - 1] > s[j]; j--) { int t = s[j]; s[j] = s[j - 1]; s[j - 1] = t; }
    }
    return sel;
}

// ----------------------------------------------------------------------------
// attention

// cuda_attn_maxlogit (model/cuda/cuda_ops.h, not an op of the table: weak, so this file still links where the
// backend is not built; gpu != NULL means it is). From the forward's starting maxima it must give the forward's
// maxlogit bit for bit (the same tensor-core Q K^T tiles, masking and scaling); from -inf every head's own maximum,
// which matches the CPU twin's to rtol 1e-5 (the same logits, summed in another order).
void cuda_attn_maxlogit(float* maxlogit, const void* q, const void* kv, const void* a, int B, int T, int H, int nope,
                        int rope, int dv, int kv_lora) __attribute__((weak));

static void test_attn_maxlogit(const float* ml_fwd, const float* ml0, const float* q, const float* kv, const float* a,
                               void* dq_in, void* dkv_in, void* da_in, MlaShape m, const char* shape) {
    if (!cuda_attn_maxlogit) { skip("cuda_attn_maxlogit %s: not linked", shape); return; }
    const int H = m.H;
    float* dml = up_f32(ml0, H);
    cuda_attn_maxlogit(dml, dq_in, dkv_in, da_in, m.B, m.T, H, m.nope, m.rope, m.dv, m.kv_lora);
    float* ml_g = down_f32(dml, H);
    check(!memcmp(ml_g, ml_fwd, H * sizeof(float)), "cuda_attn_maxlogit %s: equals the forward's maxlogit bit for bit "
          "(head 1: %.9g vs %.9g)", shape, (double)ml_g[H > 1], (double)ml_fwd[H > 1]);
    // from -inf: every head's own maximum, against the CPU forward's
    float* ninf = xmalloc(H * sizeof(float));
    for (int h = 0; h < H; h++) ninf[h] = -INFINITY;
    gpu->to_device(dml, ninf, H * sizeof(float));
    cuda_attn_maxlogit(dml, dq_in, dkv_in, da_in, m.B, m.T, H, m.nope, m.rope, m.dv, m.kv_lora);
    float* ml_h = down_f32(dml, H);
    float* ml_c = fdup(ninf, H);
    float* out_c = xmalloc((size_t)m.B * m.T * H * m.dv * sizeof(float));
    float* lse_c = xmalloc((size_t)m.B * H * m.T * sizeof(float));
    cpu->attention_forward(out_c, lse_c, ml_c, q, kv, a, m);
    char what[200];
    snprintf(what, sizeof(what), "cuda_attn_maxlogit %s: per-head maximum from -inf vs the CPU", shape);
    cmpv(what, ml_h, ml_c, H, 1e-5, 0);
    gpu->free(dml);
    free(ml_g); free(ninf); free(ml_h); free(ml_c); free(out_c); free(lse_c);
}

#define ATT_OUT_AFRAC 3e-3  // attention out: P rounded to bf16 for P V (header)

static void test_attention(int B, int T, int H, int nope, int rope, int dv, int kv_lora) {
    char what[200], shape[120];
    snprintf(shape, sizeof(shape), "B=%d T=%d H=%d nope=%d rope=%d dv=%d kv_lora=%d", B, T, H, nope, rope, dv, kv_lora);
    const int dqk = nope + rope, N = B * T, akv = kv_lora + rope;
    MlaShape mla = {.B = B, .T = T, .H = H, .nope = nope, .rope = rope, .dv = dv, .kv_lora = kv_lora};
    const size_t nq = (size_t)N * H * dqk, nkv = (size_t)N * H * (nope + dv), na = (size_t)N * akv,
                 no = (size_t)N * H * dv, nl = (size_t)B * H * T;
    float* q = randv(nq, 1.5f);
    float* kv = randv(nkv, 1.0f);
    float* a = randv(na, 1.0f);
    float* ml0 = xmalloc(H * sizeof(float));
    for (int h = 0; h < H; h++) ml0[h] = h == 0 ? 1e9f : (h % 2 ? -INFINITY : -50.0f);  // head 0 keeps its max

    // CPU
    float* out_c = xmalloc(no * sizeof(float));
    float* lse_c = xmalloc(nl * sizeof(float));
    float* ml_c = fdup(ml0, H);
    cpu->attention_forward(out_c, lse_c, ml_c, q, kv, a, mla);

    // GPU
    void* dq_in = up_bf16(q, nq);
    void* dkv_in = up_bf16(kv, nkv);
    void* da_in = up_bf16(a, na);
    void* dout_o = gpu->malloc(no * 2);
    float* dlse = gpu->malloc(nl * sizeof(float));
    float* dml = up_f32(ml0, H);
    poison_bf16(dout_o, no);
    poison_f32(dlse, nl);
    gpu->attention_forward(dout_o, dlse, dml, dq_in, dkv_in, da_in, mla);
    float* out_g = down_bf16(dout_o, no);
    float* lse_g = down_f32(dlse, nl);
    float* ml_g = down_f32(dml, H);
    snprintf(what, sizeof(what), "attention_forward %s: out", shape);
    cmpv(what, out_g, out_c, no, BF_RTOL, ATT_OUT_AFRAC);
    cmp_l2(what, out_g, out_c, no, 5e-3);
    snprintf(what, sizeof(what), "attention_forward %s: lse", shape);
    cmpv(what, lse_g, lse_c, nl, EW_RTOL, EW_AFRAC);
    snprintf(what, sizeof(what), "attention_forward %s: maxlogit (running max)", shape);
    cmpv(what, ml_g, ml_c, H, 1e-5, 0);
    check(ml_g[0] == 1e9f, "attention_forward: a head whose running max is larger keeps it (%.9g)", (double)ml_g[0]);
    // determinism: again from the same state
    gpu->to_device(dml, ml0, H * sizeof(float));
    gpu->attention_forward(dout_o, dlse, dml, dq_in, dkv_in, da_in, mla);
    {
        float* o2 = down_bf16(dout_o, no);
        float* l2 = down_f32(dlse, nl);
        float* m2 = down_f32(dml, H);
        snprintf(what, sizeof(what), "attention_forward deterministic (two runs, %s): out, lse, maxlogit", shape);
        int ok = !memcmp(o2, out_g, no * 4) && !memcmp(l2, lse_g, nl * 4) && !memcmp(m2, ml_g, H * 4);
        check(ok, "%s", what);
        free(o2); free(l2); free(m2);
    }
    test_attn_maxlogit(ml_g, ml0, q, kv, a, dq_in, dkv_in, da_in, mla, shape);

    // backward
    float* go = randv(no, 1.0f);
    float* da0 = randv(na, 0.5f);  // da: only the rope-key columns may change
    float* dq_c = xmalloc(nq * sizeof(float));
    float* dkv_c = xmalloc(nkv * sizeof(float));
    float* da_c = fdup(da0, na);
    cpu->attention_backward(dq_c, dkv_c, da_c, go, q, kv, a, out_c, lse_c, mla);
    void* dgo = up_bf16(go, no);
    void* ddq = gpu->malloc(nq * 2);
    void* ddkv = gpu->malloc(nkv * 2);
    void* dda = up_bf16(da0, na);
    poison_bf16(ddq, nq);
    poison_bf16(ddkv, nkv);
    // backward from the GPU's own forward (its out for D, its lse)
    gpu->attention_backward(ddq, ddkv, dda, dgo, dq_in, dkv_in, da_in, dout_o, dlse, mla);
    float* dq_g = down_bf16(ddq, nq);
    float* dkv_g = down_bf16(ddkv, nkv);
    float* da_g = down_bf16(dda, na);
    snprintf(what, sizeof(what), "attention_backward %s: dq", shape);
    cmpv(what, dq_g, dq_c, nq, 1e-2, 1e-2);
    cmp_l2(what, dq_g, dq_c, nq, 5e-3);
    snprintf(what, sizeof(what), "attention_backward %s: dkv (k-nope and v)", shape);
    cmpv(what, dkv_g, dkv_c, nkv, 1e-2, 1e-2);
    cmp_l2(what, dkv_g, dkv_c, nkv, 5e-3);
    {
        float* rg = xmalloc((size_t)N * rope * sizeof(float));
        float* rc = xmalloc((size_t)N * rope * sizeof(float));
        size_t changed = 0;
        for (int n = 0; n < N; n++)
            for (int c = 0; c < akv; c++) {
                size_t i = (size_t)n * akv + c;
                if (c >= kv_lora) { rg[(size_t)n * rope + c - kv_lora] = da_g[i]; rc[(size_t)n * rope + c - kv_lora] = da_c[i]; }
                else changed += memcmp(&da_g[i], &da0[i], 4) != 0;
            }
        snprintf(what, sizeof(what), "attention_backward %s: da rope-key columns (sum over heads)", shape);
        cmpv(what, rg, rc, (size_t)N * rope, 1e-2, 1e-2);
        cmp_l2(what, rg, rc, (size_t)N * rope, 5e-3);
        check(changed == 0, "attention_backward: da columns [0, kv_lora) untouched (%zu changed)", changed);
        free(rg); free(rc);
    }
    // determinism
    poison_bf16(ddq, nq);
    poison_bf16(ddkv, nkv);
    set_bf16(dda, da0, na);
    gpu->attention_backward(ddq, ddkv, dda, dgo, dq_in, dkv_in, da_in, dout_o, dlse, mla);
    {
        float* a2 = down_bf16(ddq, nq);
        float* b2 = down_bf16(ddkv, nkv);
        float* c2 = down_bf16(dda, na);
        int ok = !memcmp(a2, dq_g, nq * 4) && !memcmp(b2, dkv_g, nkv * 4) && !memcmp(c2, da_g, na * 4);
        check(ok, "attention_backward deterministic (two runs, %s): dq, dkv, da", shape);
        free(a2); free(b2); free(c2);
    }
    gpu->free(dq_in); gpu->free(dkv_in); gpu->free(da_in); gpu->free(dout_o); gpu->free(dlse); gpu->free(dml);
    gpu->free(dgo); gpu->free(ddq); gpu->free(ddkv); gpu->free(dda);
    free(q); free(kv); free(a); free(ml0); free(out_c); free(lse_c); free(ml_c); free(out_g); free(lse_g); free(ml_g);
    free(go); free(da0); free(dq_c); free(dkv_c); free(da_c); free(dq_g); free(dkv_g); free(da_g);
}

// ----------------------------------------------------------------------------
// router forward, balance loss, router backward

// K-th minus (K+1)-th largest of s + bias in row n (K < E), and whether they are exactly equal
static double topk_margin(const float* s, const float* bias, int E, int K) {
    float* v = xmalloc(E * sizeof(float));
    for (int e = 0; e < E; e++) v[e] = s[e] + bias[e];
    // partial selection sort, descending
    for (int i = 0; i <= K && i < E; i++) {
        int b = i;
        for (int j = i + 1; j < E; j++) if (v[j] > v[b]) b = j;
        float t = v[i]; v[i] = v[b]; v[b] = t;
    }
    double m = K < E ? (double)v[K - 1] - (double)v[K] : 1.0;
    free(v);
    return m;
}

static void test_router(int B, int T, int d, int E, int K, int with_ties) {
    char what[200], shape[120];
    const int N = B * T;
    const float routed_scale = 2.827f, alpha = 0.05f, loss_scale = 0.75f;
    const MoeShape ms = {.B = B, .T = T, .d = d, .E = E, .K = K};
    snprintf(shape, sizeof(shape), "N=%d d=%d E=%d K=%d%s", N, d, E, K, with_ties ? " (tied experts)" : "");
    float* x = randv((size_t)N * d, 1.0f);
    float* w = randv((size_t)E * d, 1.0f / sqrtf((float)d));
    float* bias = randf(E, 0.05f);
    if (with_ties) {  // experts (1, E-2) and (2, E/2) identical, with equal bias: ties must go to the lower id
        memcpy(w + (size_t)(E - 2) * d, w + (size_t)1 * d, d * sizeof(float));
        memcpy(w + (size_t)(E / 2) * d, w + (size_t)2 * d, d * sizeof(float));
        bias[E - 2] = bias[1];
        bias[E / 2] = bias[2];
    }
    // CPU
    float* sc_c = xmalloc((size_t)N * E * sizeof(float));
    int* sel_c = xmalloc((size_t)N * K * sizeof(int));
    float* g_c = xmalloc((size_t)N * K * sizeof(float));
    cpu->moe_router_forward(sc_c, sel_c, g_c, x, w, bias, ms, routed_scale);
    // GPU
    void* dx = up_bf16(x, (size_t)N * d);
    void* dw = up_bf16(w, (size_t)E * d);
    float* dbias = up_f32(bias, E);
    float* dsc = gpu->malloc((size_t)N * E * sizeof(float));
    int* dsel = gpu->malloc((size_t)N * K * sizeof(int));
    float* dg = gpu->malloc((size_t)N * K * sizeof(float));
    poison_f32(dsc, (size_t)N * E);
    poison_i32(dsel, (size_t)N * K);
    poison_f32(dg, (size_t)N * K);
    gpu->moe_router_forward(dsc, dsel, dg, dx, dw, dbias, ms, routed_scale);
    float* sc_g = down_f32(dsc, (size_t)N * E);
    int* sel_g = down_i32(dsel, (size_t)N * K);
    float* g_g = down_f32(dg, (size_t)N * K);
    snprintf(what, sizeof(what), "moe_router_forward %s: scores (fp32)", shape);
    cmpv(what, sc_g, sc_c, (size_t)N * E, EW_RTOL, EW_AFRAC);
    // the choice: identical except on rows with a near-tie (not an exact one) at the K-th place
    int bad = 0, excused = 0, exact_ties = 0, first_bad = -1;
    for (int n = 0; n < N; n++) {
        double m = topk_margin(sc_c + (size_t)n * E, bias, E, K);
        if (m == 0.0) exact_ties++;
        if (memcmp(sel_g + (size_t)n * K, sel_c + (size_t)n * K, K * sizeof(int)) == 0) continue;
        if (m > 0.0 && m < 1e-5) excused++;
        else { bad++; if (first_bad < 0) first_bad = n; }
    }
    check(bad == 0, "moe_router_forward %s: top-K choice (ascending) identical on %d rows (%d near-tie rows excused, "
          "%d rows with an exact tie at the K-th place; first bad row %d)", shape, N - bad - excused, excused,
          exact_ties, first_bad);
    {
        // gates on the rows with the same choice
        float* a = xmalloc((size_t)N * K * sizeof(float));
        float* b = xmalloc((size_t)N * K * sizeof(float));
        size_t m = 0;
        for (int n = 0; n < N; n++)
            if (!memcmp(sel_g + (size_t)n * K, sel_c + (size_t)n * K, K * sizeof(int)))
                for (int k = 0; k < K; k++) { a[m] = g_g[(size_t)n * K + k]; b[m] = g_c[(size_t)n * K + k]; m++; }
        snprintf(what, sizeof(what), "moe_router_forward %s: gates (fp32)", shape);
        cmpv(what, a, b, m, EW_RTOL, EW_AFRAC);
        free(a); free(b);
    }

    // balance loss on the CPU's scores and choices (both sides get the same inputs)
    float* dsc_in = up_f32(sc_c, (size_t)N * E);
    int* dsel_in = up_i32(sel_c, (size_t)N * K);
    float aux0 = 0.37f, aux_c = aux0, aux_g;
    cpu->moe_balance_loss(&aux_c, sc_c, sel_c, ms, alpha);
    float* daux = up_f32(&aux0, 1);
    gpu->moe_balance_loss(daux, dsc_in, dsel_in, ms, alpha);
    gpu->to_host(&aux_g, daux, sizeof(float));
    snprintf(what, sizeof(what), "moe_balance_loss B=%d T=%d E=%d K=%d: aux += (from 0.37)", B, T, E, K);
    cmpv(what, &aux_g, &aux_c, 1, 1e-6, 0);
    check(aux_c != aux0, "moe_balance_loss: the loss term is not negligible (%.9g -> %.9g)", (double)aux0, (double)aux_c);

    // router backward
    const BalanceGrad bg = balance_grad(B, T, E, K, alpha, loss_scale);
    float* dgates = randf((size_t)N * K, 1.0f);
    float* dx0 = randv((size_t)N * d, 0.5f);
    float* dw0;
    {
        // an accumulator of the gradient's size (measured with a first CPU pass from zero)
        float* z = xcalloc((size_t)E * d, sizeof(float));
        float* zx = xcalloc((size_t)N * d, sizeof(float));
        float* zs = xmalloc((size_t)N * E * sizeof(float));
        cpu->moe_router_backward(zx, z, zs, dgates, sc_c, sel_c, x, w, ms, routed_scale, bg);
        dw0 = grad_sized_init((size_t)E * d, maxabs(z, (size_t)E * d));
        free(z); free(zx); free(zs);
    }
    float* dx_c = fdup(dx0, (size_t)N * d);
    float* dw_c = fdup(dw0, (size_t)E * d);
    float* ds_c = xmalloc((size_t)N * E * sizeof(float));
    cpu->moe_router_backward(dx_c, dw_c, ds_c, dgates, sc_c, sel_c, x, w, ms, routed_scale, bg);
    float* ddg = up_f32(dgates, (size_t)N * K);
    void* ddx = up_bf16(dx0, (size_t)N * d);
    float* ddw = up_f32(dw0, (size_t)E * d);
    float* dds = gpu->malloc((size_t)N * E * sizeof(float));
    poison_f32(dds, (size_t)N * E);
    gpu->moe_router_backward(ddx, ddw, dds, ddg, dsc_in, dsel_in, dx, dw, ms, routed_scale, bg);
    float* dx_g = down_bf16(ddx, (size_t)N * d);
    float* dw_g = down_f32(ddw, (size_t)E * d);
    float* ds_g = down_f32(dds, (size_t)N * E);
    snprintf(what, sizeof(what), "moe_router_backward B=%d T=%d %s: dscores (scratch)", B, T, shape);
    cmpv(what, ds_g, ds_c, (size_t)N * E, EW_RTOL, EW_AFRAC);
    snprintf(what, sizeof(what), "moe_router_backward %s: dx += (bf16)", shape);
    cmpv(what, dx_g, dx_c, (size_t)N * d, BF_RTOL, BF_AFRAC);
    snprintf(what, sizeof(what), "moe_router_backward %s: dw_router += (fp32)", shape);
    cmpv(what, dw_g, dw_c, (size_t)E * d, 1e-4, 1e-4);
    // determinism
    set_bf16(ddx, dx0, (size_t)N * d);
    gpu->to_device(ddw, dw0, (size_t)E * d * sizeof(float));
    gpu->moe_router_backward(ddx, ddw, dds, ddg, dsc_in, dsel_in, dx, dw, ms, routed_scale, bg);
    {
        float* a2 = down_bf16(ddx, (size_t)N * d);
        float* b2 = down_f32(ddw, (size_t)E * d);
        int ok = !memcmp(a2, dx_g, (size_t)N * d * 4) && !memcmp(b2, dw_g, (size_t)E * d * 4);
        check(ok, "moe_router_backward deterministic (two runs, %s): dx, dw_router", shape);
        free(a2); free(b2);
    }
    gpu->free(dx); gpu->free(dw); gpu->free(dbias); gpu->free(dsc); gpu->free(dsel); gpu->free(dg);
    gpu->free(dsc_in); gpu->free(dsel_in); gpu->free(daux); gpu->free(ddg); gpu->free(ddx); gpu->free(ddw);
    gpu->free(dds);
    free(x); free(w); free(bias); free(sc_c); free(sel_c); free(g_c); free(sc_g); free(sel_g); free(g_g);
    free(dgates); free(dx0); free(dw0); free(dx_c); free(dw_c); free(ds_c); free(dx_g); free(dw_g); free(ds_g);
}

// ----------------------------------------------------------------------------
// dispatch, gather, combine

static void test_dispatch_gather_combine(int N, int K, int E, int d) {
    char what[200], shape[100];
    snprintf(shape, sizeof(shape), "N=%d K=%d E=%d d=%d", N, K, E, d);
    const MoeShape ms = {.B = 1, .T = N, .d = d, .E = E, .K = K};
    const size_t NK = (size_t)N * K;
    int* sel = random_sel(N, K, E);
    float* load0 = xmalloc(E * sizeof(float));
    for (int e = 0; e < E; e++) load0[e] = (float)(int)(100 * rng_uniform(&rng));
    int* off_c = xmalloc((E + 1) * sizeof(int));
    int* row_c = xmalloc(NK * sizeof(int));
    int* tok_c = xmalloc(NK * sizeof(int));
    float* load_c = fdup(load0, E);
    cpu->moe_dispatch(off_c, row_c, tok_c, load_c, sel, ms);
    int empty = 0;
    for (int e = 0; e < E; e++) empty += off_c[e + 1] == off_c[e];

    int* dsel = up_i32(sel, NK);
    int* doff = gpu->malloc((E + 1) * sizeof(int));
    int* drow = gpu->malloc(NK * sizeof(int));
    int* dtok = gpu->malloc(NK * sizeof(int));
    float* dload = up_f32(load0, E);
    poison_i32(doff, E + 1);
    poison_i32(drow, NK);
    poison_i32(dtok, NK);
    gpu->moe_dispatch(doff, drow, dtok, dload, dsel, ms);
    int* off_g = down_i32(doff, E + 1);
    int* row_g = down_i32(drow, NK);
    int* tok_g = down_i32(dtok, NK);
    float* load_g = down_f32(dload, E);
    snprintf(what, sizeof(what), "moe_dispatch %s (%d empty experts): offsets", shape, empty);
    same_ints(what, off_g, off_c, E + 1);
    snprintf(what, sizeof(what), "moe_dispatch %s: row_of", shape);
    same_ints(what, row_g, row_c, NK);
    snprintf(what, sizeof(what), "moe_dispatch %s: token_of", shape);
    same_ints(what, tok_g, tok_c, NK);
    snprintf(what, sizeof(what), "moe_dispatch %s: load +=", shape);
    same_bits(what, load_g, load_c, E * sizeof(float));
    // again: the same plan (and load added twice)
    poison_i32(drow, NK);
    gpu->moe_dispatch(doff, drow, dtok, dload, dsel, ms);
    {
        int* r2 = down_i32(drow, NK);
        int* t2 = down_i32(dtok, NK);
        check(!memcmp(r2, row_c, NK * 4) && !memcmp(t2, tok_c, NK * 4), "moe_dispatch deterministic (two runs, %s)",
              shape);
        free(r2); free(t2);
    }

    // gather: an exact copy
    float* x = randv((size_t)N * d, 1.0f);
    float* xe_c = xmalloc(NK * d * sizeof(float));
    cpu->moe_gather(xe_c, x, tok_c, (int)NK, d);
    void* dx = up_bf16(x, (size_t)N * d);
    void* dxe = gpu->malloc(NK * d * 2);
    poison_bf16(dxe, NK * d);
    gpu->moe_gather(dxe, dx, dtok, (int)NK, d);
    float* xe_g = down_bf16(dxe, NK * d);
    snprintf(what, sizeof(what), "moe_gather %s (exact copy)", shape);
    same_bits(what, xe_g, xe_c, NK * d * sizeof(float));

    // gather backward: dx += sum_k dxe[row_of]
    float* gxe = randv(NK * d, 1.0f);
    float* gx0 = randv((size_t)N * d, 1.0f);
    float* gx_c = fdup(gx0, (size_t)N * d);
    cpu->moe_gather_backward(gx_c, gxe, row_c, ms);
    set_bf16(dxe, gxe, NK * d);
    void* dgx = up_bf16(gx0, (size_t)N * d);
    gpu->moe_gather_backward(dgx, dxe, drow, ms);
    float* gx_g = down_bf16(dgx, (size_t)N * d);
    snprintf(what, sizeof(what), "moe_gather_backward %s: dx +=", shape);
    cmpv(what, gx_g, gx_c, (size_t)N * d, BF_RTOL, BF_AFRAC);

    // combine forward: y += sum_k g ye[row_of]
    float* ye = randv(NK * d, 1.0f);
    float* gates = xmalloc(NK * sizeof(float));
    for (size_t i = 0; i < NK; i++) gates[i] = 0.05f + rng_uniform(&rng);
    float* y0 = randv((size_t)N * d, 1.0f);
    float* y_c = fdup(y0, (size_t)N * d);
    cpu->moe_combine_forward(y_c, ye, gates, row_c, ms);
    void* dye = up_bf16(ye, NK * d);
    float* dgates = up_f32(gates, NK);
    void* dy = up_bf16(y0, (size_t)N * d);
    gpu->moe_combine_forward(dy, dye, dgates, drow, ms);
    float* y_g = down_bf16(dy, (size_t)N * d);
    snprintf(what, sizeof(what), "moe_combine_forward %s: y +=", shape);
    cmpv(what, y_g, y_c, (size_t)N * d, BF_RTOL, BF_AFRAC);

    // combine backward: dye = g dy (written), dgates = dy . ye (written)
    float* gy = randv((size_t)N * d, 1.0f);
    float* dye_c = xmalloc(NK * d * sizeof(float));
    float* dg_c = xmalloc(NK * sizeof(float));
    cpu->moe_combine_backward(dye_c, dg_c, gy, ye, gates, row_c, ms);
    set_bf16(dy, gy, (size_t)N * d);
    void* ddye = gpu->malloc(NK * d * 2);
    float* ddg = gpu->malloc(NK * sizeof(float));
    poison_bf16(ddye, NK * d);
    poison_f32(ddg, NK);
    gpu->moe_combine_backward(ddye, ddg, dy, dye, dgates, drow, ms);
    float* dye_g = down_bf16(ddye, NK * d);
    float* dg_g = down_f32(ddg, NK);
    snprintf(what, sizeof(what), "moe_combine_backward %s: dye", shape);
    cmpv(what, dye_g, dye_c, NK * d, BF_RTOL, BF_AFRAC);
    snprintf(what, sizeof(what), "moe_combine_backward %s: dgates (fp32)", shape);
    cmpv(what, dg_g, dg_c, NK, 1e-5, 1e-5);

    gpu->free(dsel); gpu->free(doff); gpu->free(drow); gpu->free(dtok); gpu->free(dload); gpu->free(dx);
    gpu->free(dxe); gpu->free(dgx); gpu->free(dye); gpu->free(dgates); gpu->free(dy); gpu->free(ddye); gpu->free(ddg);
    free(sel); free(load0); free(off_c); free(row_c); free(tok_c); free(load_c); free(off_g); free(row_g);
    free(tok_g); free(load_g); free(x); free(xe_c); free(xe_g); free(gxe); free(gx0); free(gx_c); free(gx_g);
    free(ye); free(gates); free(y0); free(y_c); free(y_g); free(gy); free(dye_c); free(dg_c); free(dye_g); free(dg_g);
}

// ----------------------------------------------------------------------------
// experts (grouped SwiGLU)

static void test_experts(int N, int K, int E, int d, int f, const char* mode) {
    char what[220], shape[140];
    snprintf(shape, sizeof(shape), "N=%d K=%d E=%d d=%d f=%d [%s]", N, K, E, d, f, mode);
    if (!strcmp(mode, "loop")) setenv("TRAIN_MOE_EXPERT_GEMM", "loop", 1);
    else unsetenv("TRAIN_MOE_EXPERT_GEMM");
    // "dwkernel": the weight gradients through the fp32 expert_dw_kernel instead of the default WMMA kernel
    if (!strcmp(mode, "dwkernel")) setenv("TRAIN_MOE_EXPERT_DW", "kernel", 1);
    else unsetenv("TRAIN_MOE_EXPERT_DW");
    const size_t NK = (size_t)N * K, n13 = NK * 2 * f, nh = NK * f, nx = NK * d;
    int* sel = random_sel(N, K, E);
    int* off = xmalloc((E + 1) * sizeof(int));
    int* row = xmalloc(NK * sizeof(int));
    int* tok = xmalloc(NK * sizeof(int));
    float* load = xcalloc(E, sizeof(float));
    cpu->moe_dispatch(off, row, tok, load, sel, (MoeShape){.B = 1, .T = N, .d = d, .E = E, .K = K});
    float* xe = randv(nx, 1.0f);
    float* w13 = randv((size_t)E * 2 * f * d, 1.0f / sqrtf((float)d));
    float* w2 = randv((size_t)E * d * f, 1.0f / sqrtf((float)f));

    // CPU composite (fp32 intermediates)
    float* ye_c = xmalloc(nx * sizeof(float));
    float* h13_c = xmalloc(n13 * sizeof(float));
    float* ha_c = xmalloc(nh * sizeof(float));
    cpu->moe_experts_forward(ye_c, h13_c, ha_c, xe, w13, w2, off, E, d, f);

    int* doff = up_i32(off, E + 1);
    void* dxe = up_bf16(xe, nx);
    void* dw13 = up_bf16(w13, (size_t)E * 2 * f * d);
    void* dw2 = up_bf16(w2, (size_t)E * d * f);
    void* dye = gpu->malloc(nx * 2);
    void* dh13 = gpu->malloc(n13 * 2);
    void* dha = gpu->malloc(nh * 2);
    poison_bf16(dye, nx);
    poison_bf16(dh13, n13);
    poison_bf16(dha, nh);
    gpu->moe_experts_forward(dye, dh13, dha, dxe, dw13, dw2, doff, E, d, f);
    float* ye_g = down_bf16(dye, nx);
    float* h13_g = down_bf16(dh13, n13);
    float* ha_g = down_bf16(dha, nh);
    // stage by stage, each fed the GPU's previous stage
    float* ha_r = xmalloc(nh * sizeof(float));
    cpu->swiglu_forward(ha_r, h13_g, (int)NK, f);
    float* ye_r = xmalloc(nx * sizeof(float));
    for (int e = 0; e < E; e++) {
        int r0 = off[e], n = off[e + 1] - r0;
        if (n) cpu->matmul_forward(ye_r + (size_t)r0 * d, ha_g + (size_t)r0 * f, w2 + (size_t)e * d * f, n, f, d);
    }
    snprintf(what, sizeof(what), "moe_experts_forward %s: h13 = xe w13^T", shape);
    cmpv(what, h13_g, h13_c, n13, BF_RTOL, BF_AFRAC);
    snprintf(what, sizeof(what), "moe_experts_forward %s: hact = swiglu(h13)", shape);
    cmpv(what, ha_g, ha_r, nh, BF_RTOL, BF_AFRAC);
    snprintf(what, sizeof(what), "moe_experts_forward %s: ye = hact w2^T", shape);
    cmpv(what, ye_g, ye_r, nx, BF_RTOL, BF_AFRAC);
    snprintf(what, sizeof(what), "moe_experts_forward %s: ye vs the fp32 CPU chain", shape);
    cmp_l2(what, ye_g, ye_c, nx, 1e-2);

    // backward
    float* gy = randv(nx, 1.0f);
    float* sdh13 = xmalloc(n13 * sizeof(float));
    float* sdha = xmalloc(nh * sizeof(float));
    float* dxe_c = xmalloc(nx * sizeof(float));
    float *g13_0, *g2_0;
    {
        // accumulators of the gradients' size (measured with a first CPU pass from zero)
        float* z13 = xcalloc((size_t)E * 2 * f * d, sizeof(float));
        float* z2 = xcalloc((size_t)E * d * f, sizeof(float));
        cpu->moe_experts_backward(dxe_c, z13, z2, sdh13, sdha, gy, xe, h13_c, ha_c, w13, w2, off, E, d, f);
        g13_0 = grad_sized_init((size_t)E * 2 * f * d, maxabs(z13, (size_t)E * 2 * f * d));
        g2_0 = grad_sized_init((size_t)E * d * f, maxabs(z2, (size_t)E * d * f));
        free(z13); free(z2);
    }
    float* g13_c = fdup(g13_0, (size_t)E * 2 * f * d);
    float* g2_c = fdup(g2_0, (size_t)E * d * f);
    cpu->moe_experts_backward(dxe_c, g13_c, g2_c, sdh13, sdha, gy, xe, h13_c, ha_c, w13, w2, off, E, d, f);

    void* dgy = up_bf16(gy, nx);
    float* dg13 = up_f32(g13_0, (size_t)E * 2 * f * d);
    float* dg2 = up_f32(g2_0, (size_t)E * d * f);
    void* ddxe = gpu->malloc(nx * 2);
    void* ddh13 = gpu->malloc(n13 * 2);
    void* ddha = gpu->malloc(nh * 2);
    poison_bf16(ddxe, nx);
    poison_bf16(ddh13, n13);
    poison_bf16(ddha, nh);
    gpu->moe_experts_backward(ddxe, dg13, dg2, ddh13, ddha, dgy, dxe, dh13, dha, dw13, dw2, doff, E, d, f);
    float* dxe_g = down_bf16(ddxe, nx);
    float* g13_g = down_f32(dg13, (size_t)E * 2 * f * d);
    float* g2_g = down_f32(dg2, (size_t)E * d * f);
    float* dh13_g = down_bf16(ddh13, n13);
    float* dha_g = down_bf16(ddha, nh);
    // stage references from the GPU's bf16 intermediates
    float* dha_r = xmalloc(nh * sizeof(float));
    float* g2_r = fdup(g2_0, (size_t)E * d * f);
    float* dh13_r = xmalloc(n13 * sizeof(float));
    float* dxe_r = xmalloc(nx * sizeof(float));
    float* g13_r = fdup(g13_0, (size_t)E * 2 * f * d);
    for (int e = 0; e < E; e++) {
        int r0 = off[e], n = off[e + 1] - r0;
        if (n) cpu->matmul_backward(dha_r + (size_t)r0 * f, 0, g2_r + (size_t)e * d * f, gy + (size_t)r0 * d,
                                    ha_g + (size_t)r0 * f, w2 + (size_t)e * d * f, n, f, d);
    }
    cpu->swiglu_backward(dh13_r, dha_g, h13_g, (int)NK, f);
    for (int e = 0; e < E; e++) {
        int r0 = off[e], n = off[e + 1] - r0;
        if (n) cpu->matmul_backward(dxe_r + (size_t)r0 * d, 0, g13_r + (size_t)e * 2 * f * d, dh13_g + (size_t)r0 * 2 * f,
                                    xe + (size_t)r0 * d, w13 + (size_t)e * 2 * f * d, n, d, 2 * f);
    }
    snprintf(what, sizeof(what), "moe_experts_backward %s: dhact = dye w2 (scratch)", shape);
    cmpv(what, dha_g, dha_r, nh, BF_RTOL, BF_AFRAC);
    snprintf(what, sizeof(what), "moe_experts_backward %s: dw2 += dye^T hact (fp32)", shape);
    cmpv(what, g2_g, g2_r, (size_t)E * d * f, SUM_RTOL, SUM_AFRAC);
    snprintf(what, sizeof(what), "moe_experts_backward %s: dh13 = swiglu'(dhact) (scratch)", shape);
    cmpv(what, dh13_g, dh13_r, n13, BF_RTOL, BF_AFRAC);
    snprintf(what, sizeof(what), "moe_experts_backward %s: dxe = dh13 w13", shape);
    cmpv(what, dxe_g, dxe_r, nx, BF_RTOL, BF_AFRAC);
    snprintf(what, sizeof(what), "moe_experts_backward %s: dw13 += dh13^T xe (fp32)", shape);
    cmpv(what, g13_g, g13_r, (size_t)E * 2 * f * d, SUM_RTOL, SUM_AFRAC);
    snprintf(what, sizeof(what), "moe_experts_backward %s: dxe vs the fp32 CPU chain", shape);
    cmp_l2(what, dxe_g, dxe_c, nx, 1e-2);
    snprintf(what, sizeof(what), "moe_experts_backward %s: dw13 vs the fp32 CPU chain", shape);
    cmp_l2(what, g13_g, g13_c, (size_t)E * 2 * f * d, 1e-2);
    snprintf(what, sizeof(what), "moe_experts_backward %s: dw2 vs the fp32 CPU chain", shape);
    cmp_l2(what, g2_g, g2_c, (size_t)E * d * f, 1e-2);
    // determinism
    // (through a fresh copy of the offsets that no forward has read: the backward copies them itself instead of
    // reusing its forward's host copy, and must give the same bits)
    int* doff2 = up_i32(off, E + 1);
    gpu->to_device(dg13, g13_0, (size_t)E * 2 * f * d * sizeof(float));
    gpu->to_device(dg2, g2_0, (size_t)E * d * f * sizeof(float));
    gpu->moe_experts_backward(ddxe, dg13, dg2, ddh13, ddha, dgy, dxe, dh13, dha, dw13, dw2, doff2, E, d, f);
    gpu->free(doff2);
    {
        float* a2 = down_bf16(ddxe, nx);
        float* b2 = down_f32(dg13, (size_t)E * 2 * f * d);
        float* c2 = down_f32(dg2, (size_t)E * d * f);
        int ok = !memcmp(a2, dxe_g, nx * 4) && !memcmp(b2, g13_g, (size_t)E * 2 * f * d * 4) &&
                 !memcmp(c2, g2_g, (size_t)E * d * f * 4);
        check(ok, "moe_experts_backward deterministic (two runs, %s): dxe, dw13, dw2", shape);
        free(a2); free(b2); free(c2);
    }
    unsetenv("TRAIN_MOE_EXPERT_GEMM");
    unsetenv("TRAIN_MOE_EXPERT_DW");
    gpu->free(doff); gpu->free(dxe); gpu->free(dw13); gpu->free(dw2); gpu->free(dye); gpu->free(dh13); gpu->free(dha);
    gpu->free(dgy); gpu->free(dg13); gpu->free(dg2); gpu->free(ddxe); gpu->free(ddh13); gpu->free(ddha);
    free(sel); free(off); free(row); free(tok); free(load); free(xe); free(w13); free(w2); free(ye_c); free(h13_c);
    free(ha_c); free(ye_g); free(h13_g); free(ha_g); free(ha_r); free(ye_r); free(gy); free(g13_0); free(g2_0);
    free(dxe_c); free(g13_c); free(g2_c); free(sdh13); free(sdha); free(dxe_g); free(g13_g); free(g2_g); free(dh13_g);
    free(dha_g); free(dha_r); free(g2_r); free(dh13_r); free(dxe_r); free(g13_r);
}

// ----------------------------------------------------------------------------

static void t_attention(void) {
    test_attention(2, 100, 3, 24, 12, 20, 16);   // T not a multiple of 64; dqk 36 != dv 20
    test_attention(1, 70, 2, 5, 4, 7, 6);        // odd dqk (padding column) and odd dv
    test_attention(2, 65, 2, 0, 8, 8, 4);        // no nope part; one row past a tile
    test_attention(1, 256, 2, 128, 64, 128, 32); // K2 head shape: dqk 192, dv 128, four tiles
    test_attention(3, 130, 4, 32, 8, 48, 8);     // three 16-column blocks of dv (warps own 2 and 1), 2 rows past 2 tiles
    test_attention(2, 64, 3, 200, 56, 144, 8);   // the widest dqk (256) and dv 144 (9 blocks), exactly one tile
}
static void t_router(void) {
    test_router(3, 100, 72, 40, 6, 0);
    test_router(2, 129, 64, 384, 8, 0);  // K2-like E, K
    test_router(2, 250, 48, 16, 4, 1);   // tied experts
    test_router(1, 37, 40, 9, 1, 0);     // top-1
}
static void t_dispatch(void) {
    test_dispatch_gather_combine(1000, 6, 40, 72);   // NK = 6000: several 1024-choice chunks, a partial last one
    test_dispatch_gather_combine(3000, 8, 384, 37);  // E = 384; odd d (scalar gather path)
    test_dispatch_gather_combine(5, 3, 7, 16);       // tiny
}
static void t_experts(void) {
    // modes: "grouped" = the defaults (cuBLAS grouped GEMM for the data GEMMs, the WMMA kernel for the weight
    // gradients); "loop" = every expert GEMM, weight gradients too, by the per-expert cuBLAS loop; "dwkernel" = the
    // weight gradients by the fp32 expert_dw_kernel
    test_experts(200, 6, 12, 48, 24, "grouped");  // aligned: cuBLAS grouped GEMM path, WMMA dW (16-byte loads)
    test_experts(200, 6, 12, 48, 24, "loop");     // the same through the per-expert loop
    test_experts(150, 4, 10, 36, 20, "grouped");  // d % 8 != 0: data GEMMs fall back to the loop, WMMA dW scalar loads
    test_experts(128, 8, 384, 64, 32, "grouped"); // E = 384, most experts with a few rows (< 16), some empty
    test_experts(128, 8, 384, 64, 32, "dwkernel"); // the same, weight gradients by expert_dw_kernel
    test_experts(300, 4, 9, 45, 19, "dwkernel");  // odd sizes: partial 32x32 tiles, experts with > 32 rows
    // WMMA dW edges: uneven experts (skewed draw, one never chosen: 0 rows), several 32-row slabs with a partial
    // last one, P = 2f = 80 and Q = d = 72 (dw13), P = 72 and Q = 40 (dw2): partial 64-wide tiles, whole warps'
    // quarters past the edge; 16-byte loads
    test_experts(400, 3, 7, 72, 40, "grouped");
    // the same edges with odd P and Q (38 x 45, 45 x 19): element loads, every tile partial
    test_experts(300, 4, 9, 45, 19, "grouped");
}

int main(void) {
    static const CudaTestGroup groups[] = {
        {"attention forward/backward (MLA, causal)", t_attention},
        {"moe router forward, balance loss, router backward", t_router},
        {"moe dispatch, gather, gather_backward, combine forward/backward", t_dispatch},
        {"moe experts forward/backward", t_experts},
    };
    return cuda_test_main("test_cuda_attn_moe", groups, (int)(sizeof(groups) / sizeof(groups[0])));
}
