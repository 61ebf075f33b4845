// model/ops_select.c: the CUDA backend's entry points in a build without it (compiled only when nvcc is not
// found, or with `make CUDA=0`; with nvcc, model/cuda/ops_cuda.cu defines them). --device cuda then answers
// that the CUDA backend is not built.
#include "ops.h"
#include <stddef.h>

const Ops* ops_cuda_get(void) { return NULL; }
int ops_cuda_built(void) { return 0; }
void* ops_cuda_stream(void) { return NULL; }
const char* ops_cuda_unavailable_reason(void) { return "this binary was built without the CUDA backend (no nvcc at build time, or make CUDA=0)"; }

// the cuDNN attention path's entry points (model/cuda/sdpa_cudnn.h): never reached without the backend (no GPU
// table to run them on), except the ones a test or the trainer asks what is there
#include "cuda/sdpa_cudnn.h"
#include "../common.h"
#include <stdio.h>

static const char no_backend[] = "this binary was built without the CUDA backend";
int ops_cuda_choose_attention(const char* mode, MlaShape shape, char* why, size_t n) {
    snprintf(why, n, "%s", no_backend);
    return -1;
}
void ops_cuda_set_attention(int use_cudnn) {}
long sdpa_cudnn_runtime_version(void) { return 0; }
long sdpa_cudnn_version(void) { return 0; }
const char* sdpa_cudnn_host_check(const SdpaPlan* plan, int bwd, int* n_finalized) {
    if (n_finalized) *n_finalized = 0;
    return "SKIP: built without the CUDA backend (no cuDNN)";
}
const char* sdpa_cudnn_forward(const SdpaPlan* plan, void* out, float* lse, const void* q, const void* kv,
                               const void* a) { return no_backend; }
const char* sdpa_cudnn_backward(const SdpaPlan* plan, void* dq, void* dkv, void* da, const void* dout, const void* q,
                                const void* kv, const void* a, const void* out, const float* lse) { return no_backend; }
void cudnn_attention_forward(void* out, float* lse, float* maxlogit, const void* q, const void* kv, const void* a,
                             MlaShape shape) { fatal("cudnn_attention_forward: %s", no_backend); }
void cudnn_attention_backward(void* dq, void* dkv, void* da, const void* dout, const void* q, const void* kv,
                              const void* a, const void* out, const float* lse, MlaShape shape) {
    fatal("cudnn_attention_backward: %s", no_backend);
}
void cuda_sdpa_build_k(void* kmat, const void* kv, const void* a, MlaShape shape) { fatal("cuda_sdpa_build_k: %s", no_backend); }
void cuda_sdpa_split_dk(void* dkv, void* da, const void* dkmat, MlaShape shape) { fatal("cuda_sdpa_split_dk: %s", no_backend); }
void cuda_attention_maxlogit(float* maxlogit, const void* q, const void* kv, const void* a, MlaShape shape) {
    fatal("cuda_attention_maxlogit: %s", no_backend);
}
