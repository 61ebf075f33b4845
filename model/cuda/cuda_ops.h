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

#ifdef __cplusplus
}
#endif
