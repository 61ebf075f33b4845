// tests/test_sdpa_plan.c: the cuDNN attention path's host side, on any machine (gcc only):
//   1. the plan (model/cuda/sdpa_plan.c): every SDPA tensor's uid, dims, strides, dtype and byte offset, checked
//      by addressing elements through the descriptor and through our buffer layouts (model/ops.h) independently;
//      the materialised K's size; the refusals and their reasons (what --attention auto falls back on);
//   2. where the binary has cuDNN (a CUDA build with libcudnn): the plan's tensors, SDPA operations and operation
//      graphs created and finalized by libcudnn on the host (no GPU needed for those), and a broken plan refused;
//      SKIP elsewhere;
//   3. the CPU twin's max logit and log-sum-exp (model/cpu/attention.c): maxlogit is the exact maximum causal
//      scaled logit (brute force in double), and max <= lse <= max + log T per row and per head (the bound a GPU
//      check uses to cross-check cuDNN's statistics against our max-logit kernel).
//
//   ./build/tests/test_sdpa_plan        (TEST_SEED=<n> repeats a run)
#include "test_util.h"
#include "../model/cuda/sdpa_plan.h"
#include "../model/cuda/sdpa_cudnn.h"
#include "../model/ops.h"

// element (b, h, t, d) of a plan tensor: its byte address relative to the base of its buffer
static size_t addr_of(const SdpaTensor* t, int64_t b, int64_t h, int64_t s, int64_t d) {
    int64_t e = b * t->strides[0] + h * t->strides[1] + s * t->strides[2] + d * t->strides[3];
    return t->byte_offset + (size_t)e * sdpa_dtype_bytes(t->dtype);
}

// the same element through our layouts (model/ops.h): which buffer, and its byte offset there
static size_t layout_addr(const SdpaPlan* p, SdpaBuffer buf, int64_t b, int64_t h, int64_t t, int64_t d) {
    const MlaShape s = p->shape;
    const int64_t n = b * s.T + t, dqk = p->dqk, kvw = s.nope + s.dv;
    switch (buf) {
        case SDPA_BUF_Q: case SDPA_BUF_DQ: case SDPA_BUF_KMAT: case SDPA_BUF_DKMAT:
            return (size_t)(n * s.H * dqk + h * dqk + d) * 2;                  // (N, H*dqk)
        case SDPA_BUF_KV: case SDPA_BUF_DKV:
            return (size_t)(n * s.H * kvw + h * kvw + s.nope + d) * 2;         // the v columns of (N, H*(nope+dv))
        case SDPA_BUF_OUT: case SDPA_BUF_DOUT:
            return (size_t)(n * s.H * s.dv + h * s.dv + d) * 2;                // (N, H*dv)
        case SDPA_BUF_LSE:
            return (size_t)((b * s.H + h) * s.T + t) * 4;                      // (B, H, T) fp32
        default:
            return 0;
    }
}

static size_t buffer_bytes(const SdpaPlan* p, SdpaBuffer buf) {
    const MlaShape s = p->shape;
    const size_t N = (size_t)s.B * s.T;
    switch (buf) {
        case SDPA_BUF_Q: case SDPA_BUF_DQ: return N * s.H * p->dqk * 2;
        case SDPA_BUF_KMAT: case SDPA_BUF_DKMAT: return p->kmat_bytes;
        case SDPA_BUF_KV: case SDPA_BUF_DKV: return N * s.H * (s.nope + s.dv) * 2;
        case SDPA_BUF_OUT: case SDPA_BUF_DOUT: return N * s.H * s.dv * 2;
        case SDPA_BUF_LSE: return N * s.H * 4;
        case SDPA_BUF_SCALE: return 4;
        default: return 0;
    }
}

// every tensor of a graph: addressing matches our layouts at random elements and at the far corner, the span stays
// inside its buffer, the base is 16-byte aligned, dtypes are right
static void check_tensors(const SdpaPlan* p, const SdpaTensor* ts, int n, const char* graph) {
    for (int i = 0; i < n; i++) {
        const SdpaTensor* t = &ts[i];
        if (t->by_value) {
            check(t->buffer == SDPA_BUF_SCALE && t->dtype == SDPA_F32 && t->dims[0] * t->dims[1] * t->dims[2] * t->dims[3] == 1,
                  "%s %s: a by-value fp32 scalar (the softmax scale)", graph, t->name);
            continue;
        }
        int bad = 0;
        for (int k = 0; k < 64 && !bad; k++) {
            int64_t b = k == 0 ? t->dims[0] - 1 : (int64_t)(rng_u64(&rng) % (uint64_t)t->dims[0]);
            int64_t h = k == 0 ? t->dims[1] - 1 : (int64_t)(rng_u64(&rng) % (uint64_t)t->dims[1]);
            int64_t s = k == 0 ? t->dims[2] - 1 : (int64_t)(rng_u64(&rng) % (uint64_t)t->dims[2]);
            int64_t d = k == 0 ? t->dims[3] - 1 : (int64_t)(rng_u64(&rng) % (uint64_t)t->dims[3]);
            size_t got = addr_of(t, b, h, s, d), want = layout_addr(p, t->buffer, b, h, s, d);
            if (got != want) {
                printf("    %s %s (b %lld, h %lld, t %lld, d %lld): descriptor byte %zu, layout byte %zu\n", graph,
                       t->name, (long long)b, (long long)h, (long long)s, (long long)d, got, want);
                bad = 1;
            }
        }
        check(!bad, "%s %s (buffer %s, dims %lldx%lldx%lldx%lld): elements land where our layout has them", graph,
              t->name, sdpa_buffer_name(t->buffer), (long long)t->dims[0], (long long)t->dims[1],
              (long long)t->dims[2], (long long)t->dims[3]);
        size_t end = t->byte_offset + sdpa_tensor_span_bytes(t);
        check(end <= buffer_bytes(p, t->buffer) && t->byte_offset % SDPA_ALIGN_BYTES == 0 && t->alignment == 16,
              "%s %s: spans bytes [%zu, %zu) of %zu, offset 16-byte aligned", graph, t->name, t->byte_offset, end,
              buffer_bytes(p, t->buffer));
        SdpaDtype want_dt = t->buffer == SDPA_BUF_LSE ? SDPA_F32 : SDPA_BF16;
        check(t->dtype == want_dt && !t->is_virtual, "%s %s: %s, not virtual", graph, t->name,
              want_dt == SDPA_F32 ? "fp32" : "bf16");
    }
}

static void test_plan_layout(void) {
    // K2-like heads (nope 128, rope 64, dv 128: dqk != dv) at a small batch, and a tiny one
    MlaShape shapes[2] = {{.B = 2, .T = 96, .H = 4, .nope = 128, .rope = 64, .dv = 128, .kv_lora = 512},
                          {.B = 3, .T = 17, .H = 2, .nope = 16, .rope = 8, .dv = 24, .kv_lora = 40}};
    for (int si = 0; si < 2; si++) {
        SdpaPlan p;
        int ok = sdpa_plan_make(&p, shapes[si], 0, 91900);
        check(ok && !p.unsupported, "plan B=%d T=%d H=%d nope=%d rope=%d dv=%d (non-causal, cuDNN 9.19): accepted (%s)",
              shapes[si].B, shapes[si].T, shapes[si].H, shapes[si].nope, shapes[si].rope, shapes[si].dv,
              p.unsupported ? p.unsupported : "ok");
        check_tensors(&p, p.fwd, SDPA_FWD_N, "fwd");
        check_tensors(&p, p.bwd, SDPA_BWD_N, "bwd");
        // uids: unique over both graphs (and non-zero)
        int64_t uids[SDPA_FWD_N + SDPA_BWD_N];
        int nu = 0, dup = 0;
        for (int i = 0; i < SDPA_FWD_N; i++) uids[nu++] = p.fwd[i].uid;
        for (int i = 0; i < SDPA_BWD_N; i++) uids[nu++] = p.bwd[i].uid;
        for (int i = 0; i < nu; i++)
            for (int j = 0; j < i; j++) dup |= uids[i] == uids[j] || uids[i] <= 0;
        check(!dup, "the %d tensor uids are distinct and positive", nu);
        // the operations' inputs and outputs sit where the attention ops' arguments are
        check(p.fwd[SDPA_FWD_V].byte_offset == (size_t)shapes[si].nope * 2 && p.bwd[SDPA_BWD_DV].buffer == SDPA_BUF_DKV &&
              p.bwd[SDPA_BWD_DK].buffer == SDPA_BUF_DKMAT && p.fwd[SDPA_FWD_K].buffer == SDPA_BUF_KMAT,
              "V and dV are views of kv / dkv (nope columns in); K and dK live in the materialised scratch");
        const size_t want_k = (size_t)shapes[si].B * shapes[si].T * shapes[si].H * (shapes[si].nope + shapes[si].rope) * 2;
        check(p.kmat_bytes == want_k, "materialised K: %zu bytes (B*T*H*dqk bf16 = %zu)", p.kmat_bytes, want_k);
        const float want_scale = (float)(1.0 / sqrt((double)(shapes[si].nope + shapes[si].rope)));
        check(p.scale == want_scale && p.fwd[SDPA_FWD_STATS].dims[3] == 1,
              "scale %.9g = 1/sqrt(dqk) as the CPU twin computes it; Stats (B,H,T,1)", p.scale);
    }
}

// refusal: sdpa_plan_make says no, and its reason names the cause
static void refused(MlaShape s, int causal, long version, const char* word, const char* what) {
    SdpaPlan p;
    int ok = sdpa_plan_make(&p, s, causal, version);
    check(!ok && p.unsupported && strstr(p.unsupported, word), "refused: %s -> \"%s\"", what,
          p.unsupported ? p.unsupported : "(accepted)");
}

static void test_plan_refusals(void) {
    MlaShape k2 = {.B = 2, .T = 64, .H = 4, .nope = 128, .rope = 64, .dv = 128, .kv_lora = 512};
    refused(k2, 1, 91900, "9.21", "causal on cuDNN 9.19 (its SDPA has no causal mask)");
    refused(k2, 1, 92000, "9.21", "causal on cuDNN 9.20");
    SdpaPlan p;
    check(sdpa_plan_make(&p, k2, 1, 92100) == 1, "causal on cuDNN 9.21: the plan accepts it (%s)",
          p.unsupported ? p.unsupported : "ok");
    check(p.rowmax_from_cudnn == 1 && sdpa_plan_make(&p, k2, 0, 91900) && p.rowmax_from_cudnn == 0,
          "row maximum from cuDNN: from 9.21 only");
    refused(k2, 0, 0, "no cuDNN", "no cuDNN library");
    MlaShape s = k2; s.dv = 100;
    refused(s, 0, 91900, "multiples of 8", "dv = 100");
    s = k2; s.rope = 60;
    refused(s, 0, 91900, "multiples of 8", "dqk = 188");
    s = k2; s.nope = 196; s.rope = 68;
    refused(s, 0, 91900, "256", "dqk = 264");
    s = k2; s.nope = 12; s.rope = 20;
    refused(s, 0, 91900, "nope", "nope = 12 (V's view would start 24 bytes into a row)");
    s = k2; s.B = 0;
    refused(s, 0, 91900, "empty", "B = 0");
    s = k2; s.rope = 0;
    refused(s, 0, 91900, "invalid", "rope = 0");
}

// libcudnn on the host: descriptors finalize from the plan; broken tensors are refused by cuDNN itself
static void test_cudnn_host(void) {
    MlaShape s = {.B = 2, .T = 64, .H = 4, .nope = 128, .rope = 64, .dv = 128, .kv_lora = 512};
    SdpaPlan p;
    sdpa_plan_make(&p, s, 0, 91900);
    int n = 0;
    const char* err = sdpa_cudnn_host_check(&p, 0, &n);
    if (err && !strncmp(err, "SKIP", 4)) {
        skip("cuDNN descriptors on the host: %s", err + 6);
        return;
    }
    // forward: 6 tensors, the SDPA forward operation, its graph
    check(!err && n == SDPA_FWD_N + 2, "cuDNN %ld (library %ld), forward: the %d tensors, the SDPA forward operation "
          "and its operation graph finalize on the host (%d of %d%s%s)", sdpa_cudnn_version(),
          sdpa_cudnn_runtime_version(), SDPA_FWD_N, n, SDPA_FWD_N + 2, err ? "; " : "", err ? err : "");
    // backward: 10 tensors and the SDPA backward operation finalize; its operation graph does not on 9.19 without a
    // device ("outputGraph.buildDAG()"): whether it does with a handle is for a GPU to say (tests/test_cuda_sdpa.c)
    err = sdpa_cudnn_host_check(&p, 1, &n);
    check(n >= SDPA_BWD_N + 1, "cuDNN backward: the %d tensors and the SDPA backward operation finalize on the host "
          "(%d of %d)", SDPA_BWD_N, n, SDPA_BWD_N + 1);
    if (err && n == SDPA_BWD_N + 1) skip("cuDNN backward operation graph on the host (no handle): %s", err);
    else check(!err, "cuDNN backward operation graph finalizes on the host%s%s", err ? ": " : "", err ? err : "");
    SdpaPlan bad = p;
    bad.fwd[SDPA_FWD_Q].dims[3] = -8;
    err = sdpa_cudnn_host_check(&bad, 0, &n);
    check(err != NULL, "a tensor with negative dims is refused by cuDNN: %s", err ? err : "(finalized)");
    bad = p;
    bad.fwd[SDPA_FWD_K].dims[3] = 64;  // K's head dim no longer Q's
    err = sdpa_cudnn_host_check(&bad, 0, &n);
    check(err != NULL && n == SDPA_FWD_N, "K with a head dim other than Q's: the SDPA operation is refused: %s",
          err ? err : "(finalized)");
}

// --attention's choice for the trainer's (causal) attention: its return and the banner's reason. The library's
// 9.19 has no causal mask, so auto falls back to our kernels and cudnn is refused, both saying why; own is ours.
static void test_choice(void) {
    MlaShape s = {.B = 2, .T = 64, .H = 4, .nope = 128, .rope = 64, .dv = 128, .kv_lora = 512};
    char why[256];
    int r = ops_cuda_choose_attention("own", s, why, sizeof(why));
    if (sdpa_cudnn_version() == 0) {
        r = ops_cuda_choose_attention("cudnn", s, why, sizeof(why));
        check(r == -1 && why[0], "--attention cudnn without cuDNN in the binary: refused (%s)", why);
        return;
    }
    check(r == 0 && strstr(why, "own"), "--attention own: our kernels (\"%s\")", why);
    r = ops_cuda_choose_attention("auto", s, why, sizeof(why));
    if (sdpa_cudnn_version() < SDPA_CUDNN_CAUSAL_MIN_VERSION) {
        check(r == 0 && strstr(why, "auto") && strstr(why, "causal"), "--attention auto on cuDNN %ld: our kernels, "
              "saying why (\"%s\")", sdpa_cudnn_version(), why);
        r = ops_cuda_choose_attention("cudnn", s, why, sizeof(why));
        check(r == -1 && strstr(why, "causal"), "--attention cudnn on cuDNN %ld: refused, saying why (\"%s\")",
              sdpa_cudnn_version(), why);
    } else {
        skip("--attention auto/cudnn on cuDNN %ld: the choice needs a GPU (%s)", sdpa_cudnn_version(), why);
    }
}

// the CPU twin: exact maxlogit, and max <= lse <= max + log(row length)
static void test_cpu_maxlogit_lse(void) {
    MlaShape s = {.B = 2, .T = 37, .H = 3, .nope = 8, .rope = 8, .dv = 8, .kv_lora = 12};
    const int B = s.B, T = s.T, H = s.H, dqk = s.nope + s.rope, N = B * T;
    const int kvw = s.nope + s.dv, aw = s.kv_lora + s.rope;
    float* q = xmalloc((size_t)N * H * dqk * sizeof(float));
    float* kv = xmalloc((size_t)N * H * kvw * sizeof(float));
    float* a = xmalloc((size_t)N * aw * sizeof(float));
    float* out = xmalloc((size_t)N * H * s.dv * sizeof(float));
    float* lse = xmalloc((size_t)B * H * T * sizeof(float));
    float maxlogit[3] = {-INFINITY, -INFINITY, -INFINITY};
    for (size_t i = 0; i < (size_t)N * H * dqk; i++) q[i] = 2.0f * rn();  // spread logits: softmax far from uniform
    for (size_t i = 0; i < (size_t)N * H * kvw; i++) kv[i] = rn();
    for (size_t i = 0; i < (size_t)N * aw; i++) a[i] = rn();
    ops_cpu.attention_forward(out, lse, maxlogit, q, kv, a, s);
    const double scale = 1.0 / sqrt((double)dqk);
    int rows_bad = 0;
    double worst_max = 0.0;
    for (int h = 0; h < H; h++) {
        double head_max = -INFINITY, head_lse = -INFINITY;
        for (int b = 0; b < B; b++)
            for (int i = 0; i < T; i++) {
                double row_max = -INFINITY;
                for (int j = 0; j <= i; j++) {
                    const float* qi = q + ((size_t)(b * T + i) * H + h) * dqk;
                    const float* kn = kv + ((size_t)(b * T + j) * H + h) * kvw;
                    const float* kr = a + (size_t)(b * T + j) * aw + s.kv_lora;
                    double dot = 0.0;
                    for (int c = 0; c < s.nope; c++) dot += (double)qi[c] * kn[c];
                    for (int c = 0; c < s.rope; c++) dot += (double)qi[s.nope + c] * kr[c];
                    if (dot * scale > row_max) row_max = dot * scale;
                }
                double l = lse[((size_t)b * H + h) * T + i];
                // fp32 arithmetic: a small slack on both sides
                if (!(l >= row_max - 1e-4 * (1 + fabs(row_max)) && l <= row_max + log(i + 1.0) + 1e-4 * (1 + fabs(row_max))))
                    rows_bad++;
                head_max = row_max > head_max ? row_max : head_max;
                head_lse = l > head_lse ? l : head_lse;
            }
        double err = fabs(maxlogit[h] - head_max) / (1e-6 + fabs(head_max));
        worst_max = err > worst_max ? err : worst_max;
        check(maxlogit[h] <= head_lse + 1e-4 && head_lse <= maxlogit[h] + log((double)T) + 1e-4,
              "head %d: maxlogit %.5f <= max lse %.5f <= maxlogit + log T (%.5f)", h, maxlogit[h], head_lse,
              maxlogit[h] + log((double)T));
    }
    check(worst_max < 1e-5, "CPU twin's maxlogit is the exact causal max scaled logit (brute force, double): "
          "worst rel. error %.2e", worst_max);
    check(rows_bad == 0, "every row: row max <= lse <= row max + log(row length) (%d of %d rows outside)", rows_bad,
          B * H * T);
    free(q); free(kv); free(a); free(out); free(lse);
}

int main(void) {
    uint64_t seed = test_seed("TEST_SEED");
    printf("TEST_SEED=%llu\n", (unsigned long long)seed);
    rng_seed(&rng, seed);
    test_plan_layout();
    test_plan_refusals();
    test_cudnn_host();
    test_choice();
    test_cpu_maxlogit_lse();
    return tests_summary();
}
