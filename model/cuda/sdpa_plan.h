// model/cuda/sdpa_plan.h: the cuDNN attention path's graph, described in plain C (no cuDNN, no CUDA): for an MLA
// shape and our buffer layouts, the tensors of cuDNN's scaled-dot-product-attention operations (the backend
// graph API's SDPA_FWD / SDPA_BWD operation descriptors, cudnn_graph.h) with their unique ids, dims, strides,
// data types and where each one's data lives (which of our buffers, at what byte offset), the operations'
// attributes, and whether cuDNN can run it at all (and if not, why). model/cuda/sdpa_cudnn.c turns a plan into
// descriptors; tests/test_sdpa_plan.c checks plans on any machine (gcc only, no toolkit needed).
//
// Every SDPA tensor is 4-D in cuDNN's order (B, H, S, D): batch, head, sequence row, head column. Our buffers
// (model/ops.h) are row-major with the heads side by side in a row, so a head is a strided view:
//   q    (N, H*dqk)          Q  dims (B,H,T,dqk)  strides (T*H*dqk, dqk, H*dqk, 1)            offset 0
//   kv   (N, H*(nope+dv))    V  dims (B,H,T,dv)   strides (T*H*w, w, H*w, 1), w = nope+dv    offset nope elements
//   out  (N, H*dv)           O  dims (B,H,T,dv)   strides (T*H*dv, dv, H*dv, 1)              offset 0
//   lse  (B,H,T) fp32        Stats dims (B,H,T,1) strides (H*T, T, 1, 1)
// K = [k_nope | k_rope] per head cannot be a view: its first nope columns are in kv (per head), its last rope
// columns in a (one row shared by all heads). A zero head stride would describe the shared rope part alone, but
// one tensor has one base pointer and one stride pattern, and the two halves live in different buffers. So K is
// materialised, (B,T,H,dqk) bf16 in a scratch buffer (kmat, laid out like q), by a small kernel
// (model/cuda/attention_aux.cu), and the backward's dK comes back in the same layout (dkmat) and is split into
// dkv's k-nope columns and the rope-key columns of da (summed over heads in a fixed order).
//
// Causal masking: the SDPA operation of cuDNN 9.13-9.20 has no mask attribute (only a block-sparse mask, 9.14,
// whose granularity is a tile, not a row); the causal mask arrives with 9.21's SDPA subgraph (a
// DIAGONAL_BAND_MASK operation applied to the scores, 9.20). A causal plan therefore needs cuDNN >= 9.21, both in
// the headers it is built against and in the library it runs with; below that sdpa_plan_make refuses it (and
// --attention auto uses our kernels). Non-causal plans are allowed so that the descriptor plumbing can be
// checked on a GPU against a plain reference (tests/test_cuda_sdpa.c).
//
// The exact per-head max logit that QK-Clip needs is not an SDPA output before 9.21 (its softmax descriptor can
// return the row maximum); plan.rowmax_from_cudnn says whether the library could; the path always computes it
// with our own kernel (attention_aux.cu: max of Q K^T * scale under the causal mask, no softmax).
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "../ops.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SDPA_CUDNN_CAUSAL_MIN_VERSION 92100  // SDPA subgraph (+ DIAGONAL_BAND_MASK) for the causal mask
#define SDPA_CUDNN_ROWMAX_MIN_VERSION 92100  // the SDPA softmax descriptor's row-maximum output
#define SDPA_MAX_HEAD_DIM 256                // cuDNN's SDPA head-dimension limit (Hopper; Ampere bprop: 128)
#define SDPA_ALIGN_BYTES 16                  // base pointers and row strides: 16-byte aligned (8 bf16)

// where a tensor's data lives: our op's arguments, the path's scratch buffers, or the host (by value)
typedef enum {
    SDPA_BUF_Q, SDPA_BUF_KV, SDPA_BUF_KMAT, SDPA_BUF_OUT, SDPA_BUF_LSE, SDPA_BUF_SCALE,
    SDPA_BUF_DOUT, SDPA_BUF_DQ, SDPA_BUF_DKV, SDPA_BUF_DKMAT, SDPA_BUF_COUNT
} SdpaBuffer;

typedef enum { SDPA_BF16, SDPA_F32 } SdpaDtype;

typedef struct {
    int64_t uid;          // unique within its graph (and across the two graphs)
    const char* name;
    int64_t dims[4];      // (B, H, S, D)
    int64_t strides[4];   // in elements
    SdpaDtype dtype;
    int by_value;         // 1: a host scalar (the softmax scale)
    int is_virtual;       // 1: an intermediate cuDNN never reads from or writes to memory (none in these graphs)
    SdpaBuffer buffer;
    size_t byte_offset;   // from the buffer's base pointer
    int64_t alignment;    // bytes the base (plus offset) is aligned to
} SdpaTensor;

// the forward operation's tensors, in the order of its attributes (Q, K, V, O, Stats, Scale)
enum { SDPA_FWD_Q, SDPA_FWD_K, SDPA_FWD_V, SDPA_FWD_O, SDPA_FWD_STATS, SDPA_FWD_SCALE, SDPA_FWD_N };
// the backward's: inputs Q, K, V, O, Stats, Scale, dO; outputs dQ, dK, dV
enum {
    SDPA_BWD_Q, SDPA_BWD_K, SDPA_BWD_V, SDPA_BWD_O, SDPA_BWD_STATS, SDPA_BWD_SCALE, SDPA_BWD_DO,
    SDPA_BWD_DQ, SDPA_BWD_DK, SDPA_BWD_DV, SDPA_BWD_N
};

typedef struct {
    MlaShape shape;
    int dqk;                    // nope + rope
    int causal;                 // requested mask (the trainer: always 1)
    float scale;                // 1/sqrt(dqk), computed as the CPU twin and our kernels compute it (to the bit)
    long cudnn_version;         // the version the plan was made for (0: no cuDNN)
    int rowmax_from_cudnn;      // 1 when that version could return the row maximum (not used yet: see above)
    SdpaTensor fwd[SDPA_FWD_N];
    SdpaTensor bwd[SDPA_BWD_N];
    size_t kmat_bytes;          // the materialised K (B,T,H,dqk) bf16; the backward's dK scratch is as large
    const char* unsupported;    // NULL when cuDNN can run this plan, else one line of why
    char why[200];              // storage for `unsupported`
} SdpaPlan;

// Fills *p for shape and mask against cuDNN `cudnn_version` (MAJOR*10000 + MINOR*100 + PATCH; 0 = none: the
// tensors are still described, the plan is refused). Returns 1 when cuDNN can run it, 0 when not
// (p->unsupported says why). The checks: B, T, H >= 1; dqk and dv multiples of 8 (16-byte rows) and <= 256;
// nope a multiple of 8 (V's view starts nope elements into a kv row); causal only from
// SDPA_CUDNN_CAUSAL_MIN_VERSION.
int sdpa_plan_make(SdpaPlan* p, MlaShape shape, int causal, long cudnn_version);

// bytes the tensor spans from its first element to its last (+1 element), for bounds checks
size_t sdpa_tensor_span_bytes(const SdpaTensor* t);
size_t sdpa_dtype_bytes(SdpaDtype d);
const char* sdpa_buffer_name(SdpaBuffer b);

#ifdef __cplusplus
}
#endif
