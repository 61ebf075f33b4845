// model/cuda/cuda_ops.h: the CUDA backend's op prototypes, cuda_NAME for each op of model/ops_list.h (contracts
// there), implemented in model/cuda/dense.cu, attention.cu, moe.cu and optim.cu and collected into the Ops table
// by model/cuda/ops_cuda.cu. All pointers are device memory; void* are bf16. Included by cuda_common.cuh.
#pragma once
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "../ops.h"  // the scalar structs some ops take

#define OP(ret, name, params) ret cuda_##name params;
#include "../ops_list.h"
#undef OP

// Not an op: the forward's exact maximum scaled logit alone, max over b and causal (i, j <= i) of q_i . k_j / sqrt(dqk)
// per head, combined by max into maxlogit (H, fp32) -- for a fused attention (cuDNN) that does not report it.
// Same tensor-core Q K^T tiles and masking as cuda_attention_forward, so the same values bit for bit on one GPU
// (attention.cu).
void cuda_attn_maxlogit(float* maxlogit, const void* q, const void* kv, const void* a, int B, int T, int H, int nope,
                        int rope, int dv, int kv_lora);

#ifdef __cplusplus
}
#endif
