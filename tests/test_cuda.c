// tests/test_cuda.c: every CUDA op of model/cuda/dense.cu, optim.cu and ops_cuda.cu (memory, conversions) against
// its CPU twin (ops_cpu), on fresh random inputs (never zeros). The attention and MoE ops are tested by
// tests/test_cuda_attn_moe.c.
//
// Method, per op: odd shapes (not multiples of 32, so partial warps and blocks are exercised) and one aligned
// shape where it matters (the tensor-core GEMM path). Inputs are drawn in fp32 and rounded to bf16 on the host;
// the CPU op gets those rounded values (as fp32), the GPU op the same bf16 bits, so the two see identical inputs
// and differ only by the GPU's bf16 outputs and fp32 summation order. Outputs an op writes are poisoned first
// (bf16 0xFFFF / fp32 NaN: an element left unwritten fails); accumulators start from random values on both sides;
// memory an op must not touch holds random values checked bit for bit afterwards.
//
// Tolerances, |gpu - cpu| <= rtol |cpu| + afrac max|cpu| on every element (the printed ratio is the worst
// left/right side; <= 1 passes):
//   bf16 outputs: rtol 1e-2, afrac 1e-3. One rounding to bf16 is at most 2^-9 = 2e-3 relative; the fp32 math
//     before it differs from the CPU by ~1e-6. 1e-2 leaves ~5x margin; a wrong index or formula is off by O(1).
//   fp32 outputs of element-wise math (AdamW, Muon momentum/update, rstd, losses): rtol 1e-5, afrac 1e-6: a few
//     ulp (FMA contraction and operation order differ between nvcc and gcc).
//   fp32 sums over rows (dw, dgain, embedding gradient): rtol 1e-5, afrac 2e-5: fp32 accumulation of <= 300 terms
//     in another order (cuBLAS tensor cores: fp32 accumulation) is within ~1e-6 of the largest partial sum.
//   double sums (sum_squares, muon_update's return): rtol 1e-10 (every fp32 square is exact in double; only the
//     order of ~1e6 double additions differs, ~1e-16 each).
//   Newton-Schulz: relative L2 error 2e-4 and afrac 2e-3 per element: the iteration expands the small singular
//     directions by up to a^steps = 3.4445^5 ~ 480, so fp32 rounding (1e-7) in another summation order can grow to
//     ~5e-5; a wrong transpose, coefficient or normalisation is O(1).
//   Newton-Schulz in bf16 (--muon-ns bf16) against the CPU's fp32: relative L2 3e-2 and afrac 5e-2 per element.
//     Rounding X, A and B to bf16 (2^-9) at each of the 5 steps, amplified by the iteration's slope (a = 3.4 / 8.2
//     on small singular values), moves the result by 1-2e-2 in relative L2 -- the same in a float64 model of the
//     iteration (dev/cuda/ns_bf16_error.py) -- and leaves the singular values in the same band as fp32; a wrong
//     transpose, coefficient or normalisation is O(1).
// Determinism: the ops documented as deterministic (embedding backward with repeated tokens, RMSNorm dgain, the
// matmul weight gradient, sum_squares) are run twice on the same inputs and must agree bit for bit.
//
// Without a GPU (or in a build without the CUDA backend) every group prints one SKIP line with the reason and the
// binary exits 0. The seed is printed; TEST_CUDA_SEED=<n> reruns the same draw.
#include "cuda_test_util.h"
#include "../optim/optim.h"  // newton_schulz_table

// ----------------------------------------------------------------------------
// memory and conversions

static void test_memory(void) {
    size_t n = 1000003;
    unsigned char* h = xmalloc(n);
    float* d = gpu->malloc(n);
    gpu->to_host(h, d, n);
    size_t nz = 0;
    for (size_t i = 0; i < n; i++) nz += h[i] != 0;
    check(nz == 0, "malloc: %zu bytes zero-filled (%zu non-zero)", n, nz);
    unsigned char* r = xmalloc(n);
    for (size_t i = 0; i < n; i++) r[i] = (unsigned char)(1 + rng_below(&rng, 255));
    gpu->to_device(d, r, n);
    gpu->to_host(h, d, n);
    same_bits("to_device then to_host round trip", h, r, n);
    size_t z0 = 12345, zn = 500001;
    gpu->zero((char*)d + z0, zn);
    gpu->to_host(h, d, n);
    for (size_t i = z0; i < z0 + zn; i++) r[i] = 0;
    same_bits("zero: the range zeroed, the rest untouched", h, r, n);
    gpu->sync();
    gpu->free(d);
    free(h);
    free(r);
    check(gpu->act_bytes == 2 && gpu->separate_compute_weights == 1 && !strcmp(gpu->name, "cuda"),
          "table: name %s, act_bytes %zu, separate_compute_weights %d", gpu->name, gpu->act_bytes,
          gpu->separate_compute_weights);
}

static void test_conversions(void) {
    size_t n = 100003;
    float* x = randf(n, 3.0f);
    // ties and edge cases of round-to-nearest-even, tiny and huge values
    float special[] = {1.0f + 1.0f / 256, 1.0f + 3.0f / 256, -1.0f - 1.0f / 256, 1e-30f, -3e38f, 65504.0f, 1.00390625f,
                       1.01171875f, 0.1f, -0.3333333f};
    memcpy(x, special, sizeof(special));
    float* dm = up_f32(x, n);
    void* dc = gpu->malloc(n * 2);
    poison_bf16(dc, n);
    gpu->weights_to_compute(dc, dm, n);
    uint16_t* got = xmalloc(n * 2);
    gpu->to_host(got, dc, n * 2);
    uint16_t* want = xmalloc(n * 2);
    for (size_t i = 0; i < n; i++) want[i] = h_f2bf(x[i]);
    same_bits("weights_to_compute: fp32 -> bf16 round to nearest even", got, want, n * 2);
    float* back = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) back[i] = NAN;
    gpu->act_to_host_f32(back, dc, n);
    float* wantf = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) wantf[i] = h_bf2f(want[i]);
    same_bits("act_to_host_f32: bf16 -> fp32 exact", back, wantf, n * sizeof(float));
    // a short read at an offset (model_logits_row reads one row)
    float part[37];
    gpu->act_to_host_f32(part, ops_at(gpu, dc, 1001), 37);
    same_bits("act_to_host_f32 at an offset (37 elements)", part, wantf + 1001, sizeof(part));
    gpu->free(dm);
    gpu->free(dc);
    free(x); free(got); free(want); free(back); free(wantf);
}

// ----------------------------------------------------------------------------
// embedding

static void test_embedding(int V, int N, int d, int token_range) {
    char what[128];
    int* tok = xmalloc(N * sizeof(int));
    for (int n = 0; n < N; n++) tok[n] = (int)rng_below(&rng, token_range);
    tok[0] = V - 1;  // the last row of the table is reachable
    float* wte = randv((size_t)V * d, 1.0f);
    float* ref = xmalloc((size_t)N * d * sizeof(float));
    cpu->embedding_forward(ref, tok, wte, N, d);
    int* dtok = up_i32(tok, N);
    void* dwte = up_bf16(wte, (size_t)V * d);
    void* dout = gpu->malloc((size_t)N * d * 2);
    poison_bf16(dout, (size_t)N * d);
    gpu->embedding_forward(dout, dtok, dwte, N, d);
    float* got = down_bf16(dout, (size_t)N * d);
    snprintf(what, sizeof(what), "embedding_forward V=%d N=%d d=%d (exact copy)", V, N, d);
    cmpv(what, got, ref, (size_t)N * d, 0, 0);
    free(got);

    // backward: dwte += scatter of dout rows; repeated tokens (token_range < N) add up in row order
    float* gout = randv((size_t)N * d, 1.0f);
    float* g0 = randf((size_t)V * d, 2.0f);
    float* gref = fdup(g0, (size_t)V * d);
    cpu->embedding_backward(gref, gout, tok, N, d);
    set_bf16(dout, gout, (size_t)N * d);
    float* dg = up_f32(g0, (size_t)V * d);
    gpu->embedding_backward(dg, dout, dtok, N, d);
    float* g1 = down_f32(dg, (size_t)V * d);
    snprintf(what, sizeof(what), "embedding_backward V=%d N=%d d=%d, %d distinct tokens (dwte +=)", V, N, d, token_range);
    cmpv(what, g1, gref, (size_t)V * d, SUM_RTOL, SUM_AFRAC);
    gpu->to_device(dg, g0, (size_t)V * d * sizeof(float));
    gpu->embedding_backward(dg, dout, dtok, N, d);
    float* g2 = down_f32(dg, (size_t)V * d);
    snprintf(what, sizeof(what), "embedding_backward deterministic (two runs, V=%d N=%d)", V, N);
    same_bits(what, g1, g2, (size_t)V * d * sizeof(float));
    gpu->free(dtok); gpu->free(dwte); gpu->free(dout); gpu->free(dg);
    free(tok); free(wte); free(ref); free(gout); free(g0); free(gref); free(g1); free(g2);
}

// ----------------------------------------------------------------------------
// RMSNorm

static void test_rmsnorm(int N, int C, int in_stride) {
    char what[160];
    float eps = 1e-5f;
    size_t ni = (size_t)N * in_stride, no = (size_t)N * C;
    float* x = randv(ni, 1.5f);
    float* g = xmalloc(C * sizeof(float));
    for (int c = 0; c < C; c++) g[c] = round_bf(1.0f + 0.3f * rn());
    float* ref = xmalloc(no * sizeof(float));
    float* rref = xmalloc(N * sizeof(float));
    cpu->rmsnorm_forward(ref, rref, x, in_stride, g, N, C, eps);
    void* dx = up_bf16(x, ni);
    void* dg = up_bf16(g, C);
    void* dy = gpu->malloc(no * 2);
    float* dr = gpu->malloc(N * sizeof(float));
    poison_bf16(dy, no);
    poison_f32(dr, N);
    gpu->rmsnorm_forward(dy, dr, dx, in_stride, dg, N, C, eps);
    float* y = down_bf16(dy, no);
    float* r = down_f32(dr, N);
    snprintf(what, sizeof(what), "rmsnorm_forward N=%d C=%d in_stride=%d: out", N, C, in_stride);
    cmpv(what, y, ref, no, BF_RTOL, BF_AFRAC);
    snprintf(what, sizeof(what), "rmsnorm_forward N=%d C=%d: rstd", N, C);
    cmpv(what, r, rref, N, EW_RTOL, EW_AFRAC);

    // backward, written (accumulate 0) and added (accumulate 1), into a strided dinp whose other columns stay
    float* dout = randv(no, 1.0f);
    void* ddout = up_bf16(dout, no);
    float* drstd = up_f32(rref, N);  // both sides use the CPU's rstd
    for (int acc = 0; acc <= 1; acc++) {
        float* dx0 = randv(ni, 0.5f);
        float* dxref = fdup(dx0, ni);
        float* dg0 = randf(C, 3.0f);
        float* dgref = fdup(dg0, C);
        cpu->rmsnorm_backward(dxref, in_stride, acc, dgref, dout, x, g, rref, N, C);
        void* ddx = up_bf16(dx0, ni);
        if (!acc) {  // the written columns start as NaN; the others keep dx0's values
            float* pz = fdup(dx0, ni);
            for (int n = 0; n < N; n++)
                for (int c = 0; c < C; c++) pz[(size_t)n * in_stride + c] = NAN;
            set_bf16(ddx, pz, ni);
            free(pz);
        }
        float* ddg = up_f32(dg0, C);
        gpu->rmsnorm_backward(ddx, in_stride, acc, ddg, ddout, dx, dg, drstd, N, C);
        float* gdx = down_bf16(ddx, ni);
        float* gdg = down_f32(ddg, C);
        // compare the written columns; the rest must be untouched
        float* a = xmalloc(no * sizeof(float));
        float* b = xmalloc(no * sizeof(float));
        size_t changed = 0;
        for (int n = 0; n < N; n++)
            for (int c = 0; c < in_stride; c++) {
                size_t i = (size_t)n * in_stride + c;
                if (c < C) { a[(size_t)n * C + c] = gdx[i]; b[(size_t)n * C + c] = dxref[i]; }
                else changed += memcmp(&gdx[i], &dx0[i], sizeof(float)) != 0;
            }
        snprintf(what, sizeof(what), "rmsnorm_backward N=%d C=%d in_stride=%d accumulate=%d: dinp", N, C, in_stride, acc);
        cmpv(what, a, b, no, BF_RTOL, BF_AFRAC);
        if (in_stride > C)
            check(changed == 0, "rmsnorm_backward: columns C..in_stride of dinp untouched (%zu changed)", changed);
        snprintf(what, sizeof(what), "rmsnorm_backward N=%d C=%d accumulate=%d: dgain +=", N, C, acc);
        cmpv(what, gdg, dgref, C, SUM_RTOL, SUM_AFRAC);
        if (acc) {  // determinism of the dgain reduction
            gpu->to_device(ddg, dg0, C * sizeof(float));
            set_bf16(ddx, dx0, ni);
            gpu->rmsnorm_backward(ddx, in_stride, acc, ddg, ddout, dx, dg, drstd, N, C);
            float* gdg2 = down_f32(ddg, C);
            same_bits("rmsnorm_backward dgain deterministic (two runs)", gdg, gdg2, C * sizeof(float));
            free(gdg2);
        }
        gpu->free(ddx); gpu->free(ddg);
        free(dx0); free(dxref); free(dg0); free(dgref); free(gdx); free(gdg); free(a); free(b);
    }
    gpu->free(dx); gpu->free(dg); gpu->free(dy); gpu->free(dr); gpu->free(ddout); gpu->free(drstd);
    free(x); free(g); free(ref); free(rref); free(y); free(r); free(dout);
}

// ----------------------------------------------------------------------------
// matmul

static void test_matmul(int N, int C, int OC) {
    char what[160];
    float* x = randv((size_t)N * C, 1.0f);
    float* w = randv((size_t)OC * C, 0.2f);
    float* ref = xmalloc((size_t)N * OC * sizeof(float));
    cpu->matmul_forward(ref, x, w, N, C, OC);
    void* dx = up_bf16(x, (size_t)N * C);
    void* dw = up_bf16(w, (size_t)OC * C);
    void* dy = gpu->malloc((size_t)N * OC * 2);
    poison_bf16(dy, (size_t)N * OC);
    gpu->matmul_forward(dy, dx, dw, N, C, OC);
    float* y = down_bf16(dy, (size_t)N * OC);
    snprintf(what, sizeof(what), "matmul_forward N=%d C=%d OC=%d", N, C, OC);
    cmpv(what, y, ref, (size_t)N * OC, BF_RTOL, BF_AFRAC);

    float* dout = randv((size_t)N * OC, 1.0f);
    set_bf16(dy, dout, (size_t)N * OC);
    for (int acc = -1; acc <= 1; acc++) {  // -1: dinp NULL (weight gradient only)
        float* di0 = randv((size_t)N * C, 0.7f);
        float* diref = fdup(di0, (size_t)N * C);
        float* dw0 = randf((size_t)OC * C, 5.0f);
        float* dwref = fdup(dw0, (size_t)OC * C);
        cpu->matmul_backward(acc >= 0 ? diref : NULL, acc > 0, dwref, dout, x, w, N, C, OC);
        void* ddi = up_bf16(di0, (size_t)N * C);
        if (acc == 0) poison_bf16(ddi, (size_t)N * C);
        float* ddw = up_f32(dw0, (size_t)OC * C);
        gpu->matmul_backward(acc >= 0 ? ddi : NULL, acc > 0, ddw, dy, dx, dw, N, C, OC);
        float* gdi = down_bf16(ddi, (size_t)N * C);
        float* gdw = down_f32(ddw, (size_t)OC * C);
        if (acc >= 0) {
            snprintf(what, sizeof(what), "matmul_backward N=%d C=%d OC=%d accumulate=%d: dinp", N, C, OC, acc);
            cmpv(what, gdi, diref, (size_t)N * C, BF_RTOL, BF_AFRAC);
        } else {
            float* di0r = xmalloc((size_t)N * C * sizeof(float));
            for (size_t i = 0; i < (size_t)N * C; i++) di0r[i] = round_bf(di0[i]);
            same_bits("matmul_backward with dinp NULL leaves the dinp buffer alone", gdi, di0r, (size_t)N * C * 4);
            free(di0r);
        }
        snprintf(what, sizeof(what), "matmul_backward N=%d C=%d OC=%d %s: dw += (fp32)", N, C, OC,
                 acc < 0 ? "dinp NULL" : acc ? "accumulate" : "written");
        cmpv(what, gdw, dwref, (size_t)OC * C, SUM_RTOL, SUM_AFRAC);
        if (acc == 1) {
            gpu->to_device(ddw, dw0, (size_t)OC * C * sizeof(float));
            gpu->matmul_backward(NULL, 0, ddw, dy, dx, dw, N, C, OC);
            gpu->matmul_backward(ddi, 0, ddw, dy, dx, dw, N, C, OC);
            float* a = down_f32(ddw, (size_t)OC * C);
            gpu->to_device(ddw, dw0, (size_t)OC * C * sizeof(float));
            gpu->matmul_backward(NULL, 0, ddw, dy, dx, dw, N, C, OC);
            gpu->matmul_backward(ddi, 0, ddw, dy, dx, dw, N, C, OC);
            float* b = down_f32(ddw, (size_t)OC * C);
            same_bits("matmul_backward dw deterministic (two runs)", a, b, (size_t)OC * C * 4);
            free(a); free(b);
        }
        gpu->free(ddi); gpu->free(ddw);
        free(di0); free(diref); free(dw0); free(dwref); free(gdi); free(gdw);
    }
    gpu->free(dx); gpu->free(dw); gpu->free(dy);
    free(x); free(w); free(ref); free(y); free(dout);
}

// ----------------------------------------------------------------------------
// element-wise

static void test_adds(void) {
    size_t n = 100003;
    float* a = randv(n, 1.0f);
    float* b = randv(n, 1.0f);
    float* ref = xmalloc(n * sizeof(float));
    cpu->add(ref, a, b, n);
    void* da = up_bf16(a, n);
    void* db = up_bf16(b, n);
    void* dout = gpu->malloc(n * 2);
    poison_bf16(dout, n);
    gpu->add(dout, da, db, n);
    float* got = down_bf16(dout, n);
    cmpv("add (n=100003)", got, ref, n, BF_RTOL, 1e-6);
    gpu->add_inplace(da, db, n);
    float* got2 = down_bf16(da, n);
    cmpv("add_inplace (n=100003)", got2, ref, n, BF_RTOL, 1e-6);
    gpu->free(da); gpu->free(db); gpu->free(dout);
    free(a); free(b); free(ref); free(got); free(got2);
}

static void test_swiglu(int N, int f) {
    char what[128];
    size_t nh = (size_t)N * 2 * f, no = (size_t)N * f;
    float* h = randv(nh, 2.0f);
    float* ref = xmalloc(no * sizeof(float));
    cpu->swiglu_forward(ref, h, N, f);
    void* dh = up_bf16(h, nh);
    void* dout = gpu->malloc(no * 2);
    poison_bf16(dout, no);
    gpu->swiglu_forward(dout, dh, N, f);
    float* got = down_bf16(dout, no);
    snprintf(what, sizeof(what), "swiglu_forward N=%d f=%d", N, f);
    cmpv(what, got, ref, no, BF_RTOL, BF_AFRAC);
    float* dy = randv(no, 1.0f);
    float* dref = xmalloc(nh * sizeof(float));
    cpu->swiglu_backward(dref, dy, h, N, f);
    set_bf16(dout, dy, no);
    void* ddh = gpu->malloc(nh * 2);
    poison_bf16(ddh, nh);
    gpu->swiglu_backward(ddh, dout, dh, N, f);
    float* gd = down_bf16(ddh, nh);
    snprintf(what, sizeof(what), "swiglu_backward N=%d f=%d: dh13", N, f);
    cmpv(what, gd, dref, nh, BF_RTOL, BF_AFRAC);
    gpu->free(dh); gpu->free(dout); gpu->free(ddh);
    free(h); free(ref); free(got); free(dy); free(dref); free(gd);
}

// RoPE in place on the rope columns of each head; everything else in the buffer untouched
static void test_rope(int N, int T, int H, int row_stride, int head_stride, int offset, int rope_dim, float theta) {
    char what[200];
    size_t n = (size_t)N * row_stride;
    float* x = randv(n, 1.0f);
    void* dx = up_bf16(x, n);
    for (int inv = 0; inv <= 1; inv++) {
        float* ref = fdup(x, n);
        cpu->rope(ref, N, T, H, row_stride, head_stride, offset, rope_dim, theta, inv);
        set_bf16(dx, x, n);
        gpu->rope(dx, N, T, H, row_stride, head_stride, offset, rope_dim, theta, inv);
        float* got = down_bf16(dx, n);
        snprintf(what, sizeof(what), "rope%s N=%d T=%d H=%d row_stride=%d head_stride=%d offset=%d rope_dim=%d theta=%g",
                 inv ? " (inverse)" : "", N, T, H, row_stride, head_stride, offset, rope_dim, theta);
        cmpv(what, got, ref, n, BF_RTOL, BF_AFRAC);
        // elements outside the rope columns: bit-identical to the input
        char* in_rope = xcalloc(n, 1);
        for (int r = 0; r < N; r++)
            for (int h = 0; h < H; h++)
                for (int i = 0; i < rope_dim / 2 * 2; i++) in_rope[(size_t)r * row_stride + (size_t)h * head_stride + offset + i] = 1;
        size_t changed = 0, outside = 0;
        for (size_t i = 0; i < n; i++)
            if (!in_rope[i]) { outside++; changed += memcmp(&got[i], &x[i], 4) != 0; }
        check(changed == 0, "rope%s: the %zu elements outside the rope columns untouched (%zu changed)", inv ? " (inverse)" : "",
              outside, changed);
        free(in_rope);
        free(ref);
        free(got);
    }
    gpu->free(dx);
    free(x);
}

// ----------------------------------------------------------------------------
// cross-entropy

static void test_crossentropy(int N, int V, float scale) {
    char what[128];
    size_t nl = (size_t)N * V;
    float* z = randv(nl, scale);
    int* t = xmalloc(N * sizeof(int));
    for (int n = 0; n < N; n++) t[n] = (int)rng_below(&rng, V);
    t[0] = V - 1;
    float* lref = xmalloc(N * sizeof(float));
    cpu->crossentropy_forward(lref, z, t, N, V);
    void* dz = up_bf16(z, nl);
    int* dt = up_i32(t, N);
    float* dl = gpu->malloc(N * sizeof(float));
    poison_f32(dl, N);
    gpu->crossentropy_forward(dl, dz, dt, N, V);
    float* l = down_f32(dl, N);
    snprintf(what, sizeof(what), "crossentropy_forward N=%d V=%d (logit scale %g): losses", N, V, scale);
    cmpv(what, l, lref, N, EW_RTOL, EW_AFRAC);
    float dloss = 0.75f / N;
    float* gref = fdup(z, nl);
    cpu->crossentropy_backward(gref, z, t, dloss, N, V);
    void* dg = gpu->malloc(nl * 2);
    poison_bf16(dg, nl);
    gpu->crossentropy_backward(dg, dz, dt, dloss, N, V);
    float* g = down_bf16(dg, nl);
    snprintf(what, sizeof(what), "crossentropy_backward N=%d V=%d: dlogits (separate buffer)", N, V);
    cmpv(what, g, gref, nl, BF_RTOL, BF_AFRAC);
    gpu->crossentropy_backward(dz, dz, dt, dloss, N, V);  // in place, as the model calls it
    float* g2 = down_bf16(dz, nl);
    snprintf(what, sizeof(what), "crossentropy_backward N=%d V=%d: dlogits in place (aliasing logits)", N, V);
    cmpv(what, g2, gref, nl, BF_RTOL, BF_AFRAC);
    gpu->free(dz); gpu->free(dt); gpu->free(dl); gpu->free(dg);
    free(z); free(t); free(lref); free(l); free(gref); free(g); free(g2);
}

// ----------------------------------------------------------------------------
// optimizer

static void test_sum_squares(size_t n) {
    char what[128];
    float* g = randf(n, 0.01f);
    double ref = cpu->sum_squares(g, n);
    float* dg = up_f32(g, n);
    double a = gpu->sum_squares(dg, n);
    double b = gpu->sum_squares(dg, n);
    double rel = fabs(a - ref) / ref;
    check(rel <= 1e-10, "sum_squares n=%zu: gpu %.17g vs cpu %.17g, rel diff %.2e (tol 1e-10)", n, a, ref, rel);
    snprintf(what, sizeof(what), "sum_squares n=%zu deterministic (two runs)", n);
    same_bits(what, &a, &b, sizeof(double));
    gpu->free(dg);
    free(g);
}

static void test_adamw(void) {
    size_t n = 100003;
    float* p = randf(n, 0.1f), *g = randf(n, 0.01f), *m = randf(n, 0.001f), *v = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) v[i] = 1e-6f * rn() * rn();
    for (size_t i = 0; i < n; i++) v[i] = fabsf(v[i]) + 1e-9f;
    float *pr = fdup(p, n), *mr = fdup(m, n), *vr = fdup(v, n);
    float lr = 3e-3f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gs = 0.7f;
    int step = 3;
    float ibc1 = adamw_inv_bias_correction(b1, step), ibc2 = adamw_inv_bias_correction(b2, step);
    cpu->adamw_update(pr, g, mr, vr, n, lr, b1, b2, eps, wd, gs, ibc1, ibc2);
    float *dp = up_f32(p, n), *dg = up_f32(g, n), *dm = up_f32(m, n), *dv = up_f32(v, n);
    gpu->adamw_update(dp, dg, dm, dv, n, lr, b1, b2, eps, wd, gs, ibc1, ibc2);
    float *gp = down_f32(dp, n), *gm = down_f32(dm, n), *gv = down_f32(dv, n);
    cmpv("adamw_update: p", gp, pr, n, EW_RTOL, EW_AFRAC);
    cmpv("adamw_update: m", gm, mr, n, EW_RTOL, EW_AFRAC);
    cmpv("adamw_update: v", gv, vr, n, EW_RTOL, EW_AFRAC);
    gpu->free(dp); gpu->free(dg); gpu->free(dm); gpu->free(dv);
    free(p); free(g); free(m); free(v); free(pr); free(mr); free(vr); free(gp); free(gm); free(gv);
}

static void test_muon_momentum(void) {
    size_t n = 65537;
    float *m = randf(n, 0.01f), *g = randf(n, 0.01f);
    float* mr = fdup(m, n);
    float* ur = xmalloc(n * sizeof(float));
    cpu->muon_momentum(mr, ur, g, n, 0.95f, 0.8f);
    float *dm = up_f32(m, n), *dg = up_f32(g, n), *du = gpu->malloc(n * sizeof(float));
    poison_f32(du, n);
    gpu->muon_momentum(dm, du, dg, n, 0.95f, 0.8f);
    float *gm = down_f32(dm, n), *gu = down_f32(du, n);
    cmpv("muon_momentum: m", gm, mr, n, EW_RTOL, EW_AFRAC);
    cmpv("muon_momentum: u", gu, ur, n, EW_RTOL, EW_AFRAC);
    gpu->free(dm); gpu->free(dg); gpu->free(du);
    free(m); free(g); free(mr); free(ur); free(gm); free(gu);
}

static void test_newton_schulz(int batch, int rows, int cols, const char* table) {
    // the optimizer's table, from optim/muon.c (host memory, as the optimizer passes it)
    float coeffs[5 * 3];
    if (newton_schulz_table(table, coeffs) != 5) fatal("test_newton_schulz: no 5-step table \"%s\"", table);
    size_t n = (size_t)batch * rows * cols;
    float* x = randf(n, 0.02f);
    float* ref = fdup(x, n);
    cpu->newton_schulz(ref, batch, rows, cols, coeffs, 5, 0);
    float* dx = up_f32(x, n);
    gpu->newton_schulz(dx, batch, rows, cols, coeffs, 5, 0);  // fp32 GEMMs (--muon-ns fp32)
    float* got = down_f32(dx, n);
    double rl = rel_l2f(got, ref, n);
    char what[160];
    snprintf(what, sizeof(what), "newton_schulz %s batch=%d %dx%d%s: per element", table, batch, rows, cols,
             rows > cols ? " (tall: transposed)" : "");
    cmpv(what, got, ref, n, 0, 2e-3);
    check(rl <= 2e-4, "newton_schulz %s batch=%d %dx%d: ||gpu-cpu||/||cpu|| = %.2e (tol 2e-4)", table, batch, rows, cols, rl);
    gpu->free(dx);
    free(x); free(ref); free(got);
}

// --muon-ns bf16: the GPU's iteration with bf16 GEMM operands (fp32 accumulation, fp32 X between steps) against the
// CPU's fp32 iteration, on random non-zero matrices shaped like the experts' (w1 / w3 rows x d wide, w2 d x f tall:
// rows != cols, both orientations). Tolerance: relative L2 <= BF16_NS_RL2 and per element afrac BF16_NS_AFRAC of
// max|cpu| (see the header). Also: the bf16 path must differ from the fp32 one (it did run in bf16), and two runs
// agree bit for bit.
#define BF16_NS_RL2 3e-2
#define BF16_NS_AFRAC 5e-2
static void test_newton_schulz_bf16(int batch, int rows, int cols, const char* table) {
    float coeffs[5 * 3];
    if (newton_schulz_table(table, coeffs) != 5) fatal("test_newton_schulz_bf16: no 5-step table \"%s\"", table);
    size_t n = (size_t)batch * rows * cols;
    float* x = randf(n, 0.02f);
    float* ref = fdup(x, n);
    cpu->newton_schulz(ref, batch, rows, cols, coeffs, 5, 0);
    float* dx = up_f32(x, n);
    gpu->newton_schulz(dx, batch, rows, cols, coeffs, 5, 1);
    float* got = down_f32(dx, n);
    float* d32 = up_f32(x, n);
    gpu->newton_schulz(d32, batch, rows, cols, coeffs, 5, 0);
    float* got32 = down_f32(d32, n);
    gpu->to_device(dx, x, n * sizeof(float));
    gpu->newton_schulz(dx, batch, rows, cols, coeffs, 5, 1);
    float* again = down_f32(dx, n);
    double rl = rel_l2f(got, ref, n), rl32 = rel_l2f(got, got32, n);
    char what[160];
    snprintf(what, sizeof(what), "newton_schulz bf16 %s batch=%d %dx%d%s: per element", table, batch, rows, cols,
             rows > cols ? " (tall: transposed)" : "");
    cmpv(what, got, ref, n, 0, BF16_NS_AFRAC);
    check(rl <= BF16_NS_RL2, "newton_schulz bf16 %s batch=%d %dx%d: ||gpu-cpu||/||cpu|| = %.2e (tol %.0e)", table,
          batch, rows, cols, rl, BF16_NS_RL2);
    check(rl32 > 1e-6, "newton_schulz bf16 %s batch=%d %dx%d: differs from the fp32 GEMMs (%.2e): bf16 ran", table,
          batch, rows, cols, rl32);
    check(!memcmp(again, got, n * sizeof(float)), "newton_schulz bf16 %s batch=%d %dx%d: deterministic (two runs)",
          table, batch, rows, cols);
    gpu->free(dx); gpu->free(d32);
    free(x); free(ref); free(got); free(got32); free(again);
}

static void test_muon_update(void) {
    size_t n = 300007;
    float *p = randf(n, 0.1f), *o = randf(n, 0.05f);
    float* pr = fdup(p, n);
    float lr = 0.02f, scale = 0.2f * sqrtf(96.0f), wd = 0.1f;
    double sref = cpu->muon_update(pr, o, n, lr, scale, wd);
    float *dp = up_f32(p, n), *dO = up_f32(o, n);
    double s = gpu->muon_update(dp, dO, n, lr, scale, wd);
    float* gp = down_f32(dp, n);
    cmpv("muon_update: p", gp, pr, n, EW_RTOL, EW_AFRAC);
    double rel = fabs(s - sref) / sref;
    check(rel <= 1e-10, "muon_update: returned sum of squares %.17g vs cpu %.17g, rel diff %.2e (tol 1e-10)", s, sref, rel);
    gpu->free(dp); gpu->free(dO);
    free(p); free(o); free(pr); free(gp);
}

static void test_scale_rows(void) {
    int rows = 37, cols = 29, row0 = 5, nrows = 11;
    size_t n = (size_t)rows * cols;
    float* w = randf(n, 1.0f);
    float* ref = fdup(w, n);
    cpu->scale_rows(ref, row0, nrows, cols, 0.8123f);
    float* dw = up_f32(w, n);
    gpu->scale_rows(dw, row0, nrows, cols, 0.8123f);
    float* got = down_f32(dw, n);
    same_bits("scale_rows: rows 5..15 of 37 scaled (one multiply: bit-exact), the rest untouched", got, ref, n * 4);
    gpu->free(dw);
    free(w); free(ref); free(got);
}

// ----------------------------------------------------------------------------

static void t_memory(void) { test_memory(); }
static void t_conversions(void) { test_conversions(); }
static void t_embedding(void) {
    test_embedding(53, 91, 67, 53);   // odd sizes, some repeats
    test_embedding(1000, 300, 40, 7); // many repeats of few tokens (long runs in the deterministic backward)
    test_embedding(50, 64, 512, 50);  // d over one block of columns
}
static void t_rmsnorm(void) {
    test_rmsnorm(37, 83, 83);    // in_stride == C
    test_rmsnorm(29, 71, 90);    // in_stride > C (the kv latent inside a, its rope columns beside it)
    test_rmsnorm(16, 1024, 1024);
    test_rmsnorm(300, 40, 47);   // rows over several dgain chunks of 64
}
static void t_matmul(void) {
    test_matmul(77, 67, 45);     // odd shapes
    test_matmul(128, 256, 192);  // aligned (tensor-core path)
    test_matmul(5, 33, 300);
}
static void t_elementwise(void) {
    test_adds();
    test_swiglu(29, 71);
    test_swiglu(8, 256);
}
static void t_rope(void) {
    test_rope(26, 13, 3, 45, 15, 7, 8, 10000.0f);  // q: 3 heads of nope 7 + rope 8
    test_rope(26, 13, 1, 19, 0, 11, 8, 10000.0f);  // the shared rope key: columns [11, 19) of a, head_stride 0
    test_rope(600, 300, 2, 70, 35, 3, 32, 50000.0f);  // longer positions (larger angles, a regrown table)
    test_rope(10, 5, 3, 45, 15, 7, 8, 10000.0f);   // back to a short T with the table kept
}
static void t_crossentropy(void) {
    test_crossentropy(19, 37, 1.0f);
    test_crossentropy(13, 5000, 3.0f);
    test_crossentropy(4, 50304, 4.0f);  // k2-small's vocabulary
}
static void t_sum_squares(void) {
    test_sum_squares(5);
    test_sum_squares(1000003);
}
static void t_adamw(void) { test_adamw(); }
static void t_muon(void) {
    test_muon_momentum();
    test_newton_schulz(3, 24, 40, "default");  // wide
    test_newton_schulz(2, 50, 20, "default");  // tall: transposed
    test_newton_schulz(1, 32, 32, "polar");    // square
    test_newton_schulz(5, 64, 17, "polar");
    // bf16 GEMMs, expert-like shapes (k2-small's 288 x 1024 and 1024 x 288, scaled down): wide, tall, and odd
    test_newton_schulz_bf16(6, 72, 256, "default");
    test_newton_schulz_bf16(6, 256, 72, "default");
    test_newton_schulz_bf16(3, 40, 136, "polar");
    test_newton_schulz_bf16(2, 37, 21, "default");
    test_muon_update();
    test_scale_rows();
}

int main(void) {
    static const CudaTestGroup groups[] = {
        {"memory (malloc zero-fill, copies, zero)", t_memory},
        {"conversions (weights_to_compute, act_to_host_f32)", t_conversions},
        {"embedding forward/backward", t_embedding},
        {"rmsnorm forward/backward", t_rmsnorm},
        {"matmul forward/backward", t_matmul},
        {"add, add_inplace, swiglu", t_elementwise},
        {"rope", t_rope},
        {"crossentropy forward/backward", t_crossentropy},
        {"sum_squares", t_sum_squares},
        {"adamw_update", t_adamw},
        {"muon (momentum, newton_schulz, update), scale_rows", t_muon},
    };
    return cuda_test_main("test_cuda", groups, (int)(sizeof(groups) / sizeof(groups[0])));
}
