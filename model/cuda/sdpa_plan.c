// model/cuda/sdpa_plan.c: see sdpa_plan.h. Plain C: built into every binary (the plan is host arithmetic), so
// tests/test_sdpa_plan.c runs without the CUDA toolkit.
#include "sdpa_plan.h"
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

size_t sdpa_dtype_bytes(SdpaDtype d) { return d == SDPA_BF16 ? 2 : 4; }

const char* sdpa_buffer_name(SdpaBuffer b) {
    static const char* names[SDPA_BUF_COUNT] = {"q", "kv", "kmat", "out", "lse", "scale", "dout", "dq", "dkv", "dkmat"};
    return (unsigned)b < SDPA_BUF_COUNT ? names[b] : "?";
}

size_t sdpa_tensor_span_bytes(const SdpaTensor* t) {
    int64_t last = 0;
    for (int i = 0; i < 4; i++) last += (t->dims[i] - 1) * t->strides[i];
    return (size_t)(last + 1) * sdpa_dtype_bytes(t->dtype);
}

// one tensor: (B, H, S, D) dims with the given strides, in buffer `buf` starting `offset_elems` elements in
static SdpaTensor tensor(int64_t uid, const char* name, SdpaBuffer buf, SdpaDtype dt, int64_t B, int64_t H,
                         int64_t S, int64_t D, int64_t sb, int64_t sh, int64_t ss, int64_t sd, size_t offset_elems) {
    SdpaTensor t;
    memset(&t, 0, sizeof(t));
    t.uid = uid;
    t.name = name;
    t.buffer = buf;
    t.dtype = dt;
    t.dims[0] = B; t.dims[1] = H; t.dims[2] = S; t.dims[3] = D;
    t.strides[0] = sb; t.strides[1] = sh; t.strides[2] = ss; t.strides[3] = sd;
    t.byte_offset = offset_elems * sdpa_dtype_bytes(dt);
    t.alignment = SDPA_ALIGN_BYTES;
    return t;
}

// a head of a row-major (B*T, H*w) bf16 buffer whose head block is w wide and the tensor's d columns start
// `col0` into it: dims (B,H,T,d), strides (T*H*w, w, H*w, 1)
static SdpaTensor head_view(int64_t uid, const char* name, SdpaBuffer buf, int64_t B, int64_t H, int64_t T,
                            int64_t w, int64_t d, int64_t col0) {
    return tensor(uid, name, buf, SDPA_BF16, B, H, T, d, T * H * w, w, H * w, 1, (size_t)col0);
}

static int refuse(SdpaPlan* p, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->why, sizeof(p->why), fmt, ap);
    va_end(ap);
    p->unsupported = p->why;
    return 0;
}

int sdpa_plan_make(SdpaPlan* p, MlaShape sh, int causal, long cudnn_version) {
    memset(p, 0, sizeof(*p));
    p->shape = sh;
    p->dqk = sh.nope + sh.rope;
    p->causal = causal ? 1 : 0;
    p->cudnn_version = cudnn_version;
    p->rowmax_from_cudnn = cudnn_version >= SDPA_CUDNN_ROWMAX_MIN_VERSION;
    p->scale = (float)(1.0 / sqrt((double)p->dqk));  // as model/cpu/attention.c and model/cuda/attention.cu
    const int64_t B = sh.B, T = sh.T, H = sh.H, nope = sh.nope, dv = sh.dv, dqk = p->dqk;
    const int64_t kvw = nope + dv;

    // uids: 1.. for the forward graph, 101.. for the backward (distinct across both, so a variant pack can never
    // bind one graph's pointer to the other's tensor)
    p->fwd[SDPA_FWD_Q] = head_view(1, "Q", SDPA_BUF_Q, B, H, T, dqk, dqk, 0);
    p->fwd[SDPA_FWD_K] = head_view(2, "K", SDPA_BUF_KMAT, B, H, T, dqk, dqk, 0);
    p->fwd[SDPA_FWD_V] = head_view(3, "V", SDPA_BUF_KV, B, H, T, kvw, dv, nope);
    p->fwd[SDPA_FWD_O] = head_view(4, "O", SDPA_BUF_OUT, B, H, T, dv, dv, 0);
    p->fwd[SDPA_FWD_STATS] = tensor(5, "Stats", SDPA_BUF_LSE, SDPA_F32, B, H, T, 1, H * T, T, 1, 1, 0);
    p->fwd[SDPA_FWD_SCALE] = tensor(6, "Scale", SDPA_BUF_SCALE, SDPA_F32, 1, 1, 1, 1, 1, 1, 1, 1, 0);
    p->fwd[SDPA_FWD_SCALE].by_value = 1;

    p->bwd[SDPA_BWD_Q] = head_view(101, "Q", SDPA_BUF_Q, B, H, T, dqk, dqk, 0);
    p->bwd[SDPA_BWD_K] = head_view(102, "K", SDPA_BUF_KMAT, B, H, T, dqk, dqk, 0);
    p->bwd[SDPA_BWD_V] = head_view(103, "V", SDPA_BUF_KV, B, H, T, kvw, dv, nope);
    p->bwd[SDPA_BWD_O] = head_view(104, "O", SDPA_BUF_OUT, B, H, T, dv, dv, 0);
    p->bwd[SDPA_BWD_STATS] = tensor(105, "Stats", SDPA_BUF_LSE, SDPA_F32, B, H, T, 1, H * T, T, 1, 1, 0);
    p->bwd[SDPA_BWD_SCALE] = tensor(106, "Scale", SDPA_BUF_SCALE, SDPA_F32, 1, 1, 1, 1, 1, 1, 1, 1, 0);
    p->bwd[SDPA_BWD_SCALE].by_value = 1;
    p->bwd[SDPA_BWD_DO] = head_view(107, "dO", SDPA_BUF_DOUT, B, H, T, dv, dv, 0);
    p->bwd[SDPA_BWD_DQ] = head_view(108, "dQ", SDPA_BUF_DQ, B, H, T, dqk, dqk, 0);
    p->bwd[SDPA_BWD_DK] = head_view(109, "dK", SDPA_BUF_DKMAT, B, H, T, dqk, dqk, 0);
    p->bwd[SDPA_BWD_DV] = head_view(110, "dV", SDPA_BUF_DKV, B, H, T, kvw, dv, nope);
    p->kmat_bytes = (size_t)(B > 0 ? B : 0) * (size_t)(T > 0 ? T : 0) * (size_t)(H > 0 ? H : 0) *
                    (size_t)(dqk > 0 ? dqk : 0) * sizeof(uint16_t);

    if (sh.B < 1 || sh.T < 1 || sh.H < 1) return refuse(p, "empty shape (B=%d T=%d H=%d)", sh.B, sh.T, sh.H);
    if (sh.nope < 0 || sh.rope < 1 || sh.dv < 1) return refuse(p, "head dims invalid (nope=%d rope=%d dv=%d)", sh.nope, sh.rope, sh.dv);
    if (dqk % 8 || dv % 8)
        return refuse(p, "cuDNN SDPA needs head dims that are multiples of 8 (16-byte rows): dqk=%d dv=%d",
                      (int)dqk, (int)dv);
    if (dqk > SDPA_MAX_HEAD_DIM || dv > SDPA_MAX_HEAD_DIM)
        return refuse(p, "cuDNN SDPA supports head dims up to 256: dqk=%d dv=%d", (int)dqk, (int)dv);
    if (nope % 8)
        return refuse(p, "V is a view of kv starting nope=%d columns into each head's block: needs nope %% 8 == 0 "
                      "(16-byte aligned)", (int)nope);
    if (cudnn_version <= 0) return refuse(p, "no cuDNN library in this build");
    if (causal && cudnn_version < SDPA_CUDNN_CAUSAL_MIN_VERSION)
        return refuse(p, "cuDNN's SDPA operation has no causal mask before 9.21 (the SDPA subgraph with a diagonal "
                      "band mask)");
    return 1;
}
