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

// Row-major C (M,N) = alpha * op(A) op(B) + beta * C with leading dimensions given, so strided views of a
// buffer (one head's columns, one expert's rows) go straight to BLAS without copies.
static inline void sgemm_rm(int transA, int transB, int M, int N, int K, float alpha, const float* A, int lda,
                            const float* B, int ldb, float beta, float* C, int ldc) {
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, M, N, K,
                alpha, A, lda, B, ldb, beta, C, ldc);
}

// exp(x) for the softmaxes, sigmoids and SiLUs: 2^k exp(r) with k = round(x / ln 2) and r in [-ln2/2, ln2/2],
// exp(r) by its degree-6 Taylor polynomial (truncation error < 1.3e-7 relative, about 1 ulp). Unlike libm's expf
// it has no call and no branch, so the loops around it vectorise. Inputs are clamped to [-87, 88] (no overflow;
// exp(-87) ~ 1.6e-38 stands in for anything smaller).
static inline float exp_fast(float x) {
    x = fminf(fmaxf(x, -87.0f), 88.0f);
    float k = floorf(x * 1.44269504f + 0.5f);
    float r = x - k * 0.693145752f - k * 1.42860677e-06f;  // ln 2 split in two so k * ln2 is exact enough
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
    int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}

static inline float sigmoid_fast(float z) { return 1.0f / (1.0f + exp_fast(-z)); }

// the CPU backend's ops (cpu_NAME for each op of model/ops_list.h), defined in dense.c, attention.c, moe.c, optim.c
#define OP(ret, name, params) ret cpu_##name params;
#include "../ops_list.h"
#undef OP
