// model/cuda/cuda_common.cuh: what every CUDA file of the backend shares: error checks that carry file and line,
// the bf16 type, the one stream and the cuBLAS handle every op runs on, the one GEMM helper (row-major), launch-size
// helpers, deterministic warp/block reductions, and growable scratch buffers.
//
// Conventions of the backend (ops.h says the rest):
//   - activations and the compute copy of the weights are bf16 (`bf16` below); everything else fp32 / int32;
//   - every kernel and library call goes to `cuda_stream`, so ops are ordered among themselves; host <-> device
//     copies go to the same stream and are synchronised before they return;
//   - after every kernel launch `cudaCheckLaunch()`;
//   - reductions use a fixed tree (shuffles and shared memory in a fixed order), never atomics on floats, so a
//     result does not depend on scheduling: same inputs, same launch shape -> same bits.
#pragma once
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <math.h>
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cublas_v2.h>

extern "C" {
#include "../../common.h"
#include "../ops.h"
}
#include "cuda_ops.h"

typedef __nv_bfloat16 bf16;

// ----------------------------------------------------------------------------
// errors: one line naming the call, the file and the line, through fatal() (which brings an MPI job down)

static inline void cuda_check_impl(cudaError_t err, const char* what, const char* file, int line) {
    if (err != cudaSuccess)
        fatal("CUDA error %s (%s) at %s:%d in %s", cudaGetErrorName(err), cudaGetErrorString(err), file, line, what);
}
static inline void cublas_check_impl(cublasStatus_t st, const char* what, const char* file, int line) {
    if (st != CUBLAS_STATUS_SUCCESS)
        fatal("cuBLAS error %d (%s) at %s:%d in %s", (int)st, cublasGetStatusString(st), file, line, what);
}
#define cudaCheck(call) cuda_check_impl((call), #call, __FILE__, __LINE__)
#define cublasCheck(call) cublas_check_impl((call), #call, __FILE__, __LINE__)
// after every kernel launch: a bad launch configuration is reported here, at its own line
#define cudaCheckLaunch() cuda_check_impl(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

// ----------------------------------------------------------------------------
// the shared stream and library handle (defined in ops_cuda.cu, created by ops_cuda_get())

extern cudaStream_t cuda_stream;
extern cublasHandle_t cuda_cublas;       // bound to cuda_stream, default (true fp32) math mode
extern void* cuda_lt_workspace;          // cuBLAS's one fixed workspace, cuda_lt_workspace_bytes
extern size_t cuda_lt_workspace_bytes;
extern int cuda_num_sms;                 // multiprocessors of the current device

// ----------------------------------------------------------------------------
// GEMM, in the backend's one layout convention: every matrix row-major, as the rest of the code stores it.
//   C (M,N) = op(A) op(B) + beta C,  op(A) (M,K), op(B) (K,N),  op = transpose where ta / tb is 1,
//   lda, ldb, ldc = row strides in elements; A and B bf16, C bf16 or fp32 (Ct), fp32 compute and accumulation.
// cuBLAS is column-major, and a row-major (R,C) buffer is the column-major (C,R) matrix, its transpose; so cuBLAS
// computes C^T (N,M) = op(B)^T op(A)^T: B and A swapped, dimensions (N, M, K). The experts' grouped GEMM
// (moe.cu, gemm_many) makes the same swap for every GEMM of its group.

static inline cublasOperation_t cublas_op(int transpose) { return transpose ? CUBLAS_OP_T : CUBLAS_OP_N; }

static inline void gemm_bf16(int ta, int tb, int M, int N, int K, const void* A, int lda, const void* B, int ldb,
                             float beta, void* C, cudaDataType_t Ct, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0 && beta == 1.0f) return;  // nothing to add
    const float alpha = 1.0f;
    cublasCheck(cublasGemmEx(cuda_cublas, cublas_op(tb), cublas_op(ta), N, M, K, &alpha, B, CUDA_R_16BF, ldb, A,
                             CUDA_R_16BF, lda, &beta, C, Ct, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// ----------------------------------------------------------------------------
// launch helpers

static inline unsigned int ceil_div_u(size_t a, size_t b) { return (unsigned int)((a + b - 1) / b); }

// for (size_t i = ...; i < n; ...) over a 1-D grid of any size
#define GRID_STRIDE_LOOP(i, n) \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)(n); i += (size_t)gridDim.x * blockDim.x)

// Blocks for a grid-stride loop over n elements with `block` threads: enough to fill the GPU, never more than
// the elements need, never 0 (a zero-sized grid is a launch error; kernels then find no work).
static inline unsigned int grid_for(size_t n, int block) {
    size_t want = (n + block - 1) / block;
    size_t cap = (size_t)(cuda_num_sms > 0 ? cuda_num_sms : 132) * 32;
    if (want > cap) want = cap;
    return (unsigned int)(want > 0 ? want : 1);
}

// ----------------------------------------------------------------------------
// deterministic reductions (blockDim.x must be a multiple of 32, at most 1024). Every thread gets the result.
// The xor butterfly gives every lane the same sum of the same tree; each warp then reduces the same 32 warp
// partials the same way, so all threads agree bit for bit.

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
template <typename T>
__device__ __forceinline__ T warp_max(T v) {
    for (int o = 16; o > 0; o >>= 1) {
        T u = __shfl_xor_sync(0xffffffffu, v, o);
        v = u > v ? u : v;
    }
    return v;
}

template <typename T>
__device__ __forceinline__ T block_sum(T v) {
    __shared__ T part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // an earlier call's readers are done with part[]
    if (lane == 0) part[warp] = v;
    __syncthreads();
    return warp_sum(lane < nwarps ? part[lane] : (T)0);
}
template <typename T>
__device__ __forceinline__ T block_max(T v, T lowest) {
    __shared__ T part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    return warp_max(lane < nwarps ? part[lane] : lowest);
}

// ----------------------------------------------------------------------------
// growable device scratch: one per purpose, kept across calls; growing waits for the stream (the old buffer
// may still be in use by queued work) before freeing it. Not thread-safe (the trainer drives the GPU from one
// host thread).

typedef struct {
    void* ptr;
    size_t bytes;
} CudaScratch;

static inline void* cuda_scratch(CudaScratch* s, size_t bytes) {
    if (bytes == 0) bytes = 1;
    if (bytes > s->bytes) {
        if (s->ptr) {
            cudaCheck(cudaStreamSynchronize(cuda_stream));
            cudaCheck(cudaFree(s->ptr));
        }
        size_t want = bytes + bytes / 4;  // some headroom, fewer regrowths
        cudaCheck(cudaMalloc(&s->ptr, want));
        s->bytes = want;
    }
    return s->ptr;
}

// bf16 <-> fp32 on the device: round to nearest even, as the host's reference conversion
__device__ __forceinline__ float bf2f(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ bf16 f2bf(float x) { return __float2bfloat16_rn(x); }
