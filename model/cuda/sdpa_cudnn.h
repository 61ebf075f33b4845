// model/cuda/sdpa_cudnn.h: the CUDA backend's second attention, through cuDNN's SDPA operations, and the choice
// between it and our own kernels (model/cuda/attention.cu). C entry points, all device pointers (void* bf16):
//   model/cuda/sdpa_cudnn.c      the cuDNN calls (descriptors from a plan, heuristics, execution plan, variant
//                                pack); C on cuDNN's C API, built only with the toolkit (nvcc found), linked
//                                with -lcudnn; never emulated
//   model/cuda/attention_aux.cu  the path's own kernels: K = [k_nope | k_rope] materialised, dK split back into
//                                dkv and da, and the exact per-head max logit (emulated, dev/cuda/emu/run.sh)
//   model/ops_select.c           stand-ins in a build without the CUDA backend (never called: no GPU table)
//   dev/cuda/emu/sdpa_cudnn_stub.c  stand-ins in the CPU emulation (cuDNN cannot run there)
#pragma once
#include <stddef.h>
#include "../ops.h"
#include "sdpa_plan.h"

#ifdef __cplusplus
extern "C" {
#endif

// ---- the choice (--attention), made once at start-up for the run's shape
// mode "cudnn" | "own" | "auto". Returns 1 when the cuDNN path is chosen (the CUDA op table's attention pair then
// runs it), 0 when our kernels are (the table as built), -1 when mode "cudnn" cannot run (why says why). why
// gets one line either way (what was chosen and why: library version, shape refusal, no cuDNN in the build).
int ops_cuda_choose_attention(const char* mode, MlaShape shape, char* why, size_t why_len);
// the CUDA op table's attention pair: 1 = cudnn_attention_forward/backward, 0 = ours (model/cuda/ops_cuda.cu)
void ops_cuda_set_attention(int use_cudnn);

// the cuDNN library's version at run time (cudnnGetVersion: MAJOR*10000 + MINOR*100 + PATCH), or 0 when the
// binary has no cuDNN; the version the plan checks is the smaller of this and the headers' (sdpa_cudnn_version)
long sdpa_cudnn_runtime_version(void);
long sdpa_cudnn_version(void);

// ---- the cuDNN path's ops, with the signatures of the attention op pair (model/ops_list.h)
void cudnn_attention_forward(void* out, float* lse, float* maxlogit, const void* q, const void* kv, const void* a,
                             MlaShape shape);
void cudnn_attention_backward(void* dq, void* dkv, void* da, const void* dout, const void* q, const void* kv,
                              const void* a, const void* out, const float* lse, MlaShape shape);

// The same for any plan (causal or not: the non-causal one lets a GPU check the plumbing against a plain
// reference while the library has no causal mask). Return NULL on success, else why cuDNN refused (no engine for
// this GPU and shape, ...). No max logit: cuda_attention_maxlogit is separate.
const char* sdpa_cudnn_forward(const SdpaPlan* plan, void* out, float* lse, const void* q, const void* kv,
                               const void* a);
const char* sdpa_cudnn_backward(const SdpaPlan* plan, void* dq, void* dkv, void* da, const void* dout, const void* q,
                                const void* kv, const void* a, const void* out, const float* lse);

// Host-only check (no GPU needed): creates and finalizes the backend tensor descriptors of the plan's forward
// (bwd = 0) or backward (bwd = 1) graph, its SDPA operation descriptor, and its operation graph without a
// handle, counting the finalized descriptors in *n_finalized (tensors first, then the operation, then the graph).
// Returns NULL when all finalized, else the first failure ("cudnnBackendFinalize of X: CUDNN_STATUS_...:
// <cuDNN's message>"), or "SKIP: ..." when the binary has no cuDNN.
const char* sdpa_cudnn_host_check(const SdpaPlan* plan, int bwd, int* n_finalized);

// ---- attention_aux.cu (our kernels, on the backend's stream)
// kmat (B*T, H*dqk) = per row and head [kv[:, h, :nope] | a[:, kv_lora:]]
void cuda_sdpa_build_k(void* kmat, const void* kv, const void* a, MlaShape shape);
// dkv[:, h, :nope] = dkmat[:, h, :nope]; da[:, kv_lora + r] = sum over h = 0..H-1 in order of dkmat[:, h, nope + r]
// (fp32 sum, one rounding to bf16); the rest of dkv and da untouched
void cuda_sdpa_split_dk(void* dkv, void* da, const void* dkmat, MlaShape shape);
// maxlogit[h] = max(maxlogit[h], max over b and causal (i >= j) of scale * q_i . k_j), scale = 1/sqrt(dqk):
// the exact maximum (every causal logit computed in fp32 from the bf16 inputs), not an estimate; attention.cu's
// cuda_attn_maxlogit (the forward's own tiles) under this file's shape struct
void cuda_attention_maxlogit(float* maxlogit, const void* q, const void* kv, const void* a, MlaShape shape);

#ifdef __cplusplus
}
#endif
