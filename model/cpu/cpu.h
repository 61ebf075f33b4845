// model/cpu/cpu.h: shared includes for the CPU backend (fp32, OpenMP, OpenBLAS sgemm).
// Every function here is the reference that the CUDA twin is tested against.
#pragma once
#include <math.h>
#include <string.h>
#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "../ops.h"
#include "../../common.h"
#include "vec.h"  // exp_fast, sigmoid_fast, the softmax row kernels

// Row-major C (M,N) = alpha * op(A) op(B) + beta * C with leading dimensions given, so strided views of a
// buffer (one head's columns, one expert's rows) go straight to BLAS without copies.
static inline void sgemm_rm(int transA, int transB, int M, int N, int K, float alpha, const float* A, int lda,
                            const float* B, int ldb, float beta, float* C, int ldc) {
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, M, N, K,
                alpha, A, lda, B, ldb, beta, C, ldc);
}


// SwiGLU on rows [0, N) on the calling thread (dense.c; the experts' loop calls them per expert)
void swiglu_forward_rows(float* out, const float* h13, int N, int f);
void swiglu_backward_rows(float* dh13, const float* dout, const float* h13, int N, int f);

// the CPU backend's ops (cpu_NAME for each op of model/ops_list.h), defined in dense.c, attention.c, moe.c, optim.c
#define OP(ret, name, params) ret cpu_##name params;
#include "../ops_list.h"
#undef OP
