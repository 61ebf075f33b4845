// dev/cuda/emu/sdpa_cudnn_stub.c: model/cuda/sdpa_cudnn.c's entry points in the CPU emulation, where cuDNN cannot
// run (it is a closed GPU library): the path reports itself absent, --attention auto runs our kernels (emulated),
// --attention cudnn is refused. The path's own kernels (model/cuda/attention_aux.cu) are emulated for real.
#include "../../../model/cuda/sdpa_cudnn.h"
#include "../../../common.h"
#include <stdio.h>
#include <string.h>

static const char absent[] = "cuDNN is not part of the CPU emulation";
long sdpa_cudnn_runtime_version(void) { return 0; }
long sdpa_cudnn_version(void) { return 0; }
const char* sdpa_cudnn_host_check(const SdpaPlan* plan, int bwd, int* n) { if (n) *n = 0; return "SKIP: cuDNN is not part of the CPU emulation"; }
const char* sdpa_cudnn_forward(const SdpaPlan* p, void* out, float* lse, const void* q, const void* kv, const void* a) { return absent; }
const char* sdpa_cudnn_backward(const SdpaPlan* p, void* dq, void* dkv, void* da, const void* dout, const void* q,
                                const void* kv, const void* a, const void* out, const float* lse) { return absent; }
void cudnn_attention_forward(void* out, float* lse, float* maxlogit, const void* q, const void* kv, const void* a,
                             MlaShape s) { fatal("cudnn_attention_forward: %s", absent); }
void cudnn_attention_backward(void* dq, void* dkv, void* da, const void* dout, const void* q, const void* kv,
                              const void* a, const void* out, const float* lse, MlaShape s) {
    fatal("cudnn_attention_backward: %s", absent);
}
int ops_cuda_choose_attention(const char* mode, MlaShape shape, char* why, size_t n) {
    ops_cuda_set_attention(0);
    if (!strcmp(mode, "cudnn")) { snprintf(why, n, "%s", absent); return -1; }
    snprintf(why, n, "own kernels (%s)", !strcmp(mode, "own") ? "--attention own" : "auto: cuDNN is not part of the CPU emulation");
    return 0;
}
