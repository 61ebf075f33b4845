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

// sgemm_rm over the threads, for products called outside a parallel region: C's rows (or, when it has few rows,
// its columns) in one contiguous part per thread, each part one single-threaded sgemm (OpenBLAS's OpenMP build
// runs single-threaded inside a parallel region). One fork and one join per product, where OpenBLAS's own
// threading synchronises its threads several times per call: costly with OMP_WAIT_POLICY=passive, and on a
// machine where another process takes a core. Products under SGEMM_SPLIT_MIN multiply-adds run whole on the
// calling thread. The parts depend only on the thread count, so a run repeats itself bit for bit.
#define SGEMM_SPLIT_MIN (1 << 20)
static inline void sgemm_par(int transA, int transB, int M, int N, int K, float alpha, const float* A, int lda,
                             const float* B, int ldb, float beta, float* C, int ldc) {
#ifdef _OPENMP
    int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
#else
    int nt = 1;
#endif
    if ((double)M * N * K < SGEMM_SPLIT_MIN) nt = 1;
    int split_m = M >= 32 * nt;          // parts of at least 32 rows, else columns
    int extent = split_m ? M : N;
    if (extent < 16 * nt) nt = 1;
    if (nt == 1) {
#ifdef _OPENMP
        if (!omp_in_parallel()) {  // keep OpenBLAS from threading it
            int saved = omp_get_max_threads();
            omp_set_num_threads(1);
            sgemm_rm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
            omp_set_num_threads(saved);
            return;
        }
#endif
        sgemm_rm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    #pragma omp parallel num_threads(nt)
    {
#ifdef _OPENMP
        int t = omp_get_thread_num();
#else
        int t = 0;
#endif
        int p0 = (int)((long)extent * t / nt) & ~15, p1 = t + 1 == nt ? extent : (int)((long)extent * (t + 1) / nt) & ~15;
        if (p1 > p0) {
            if (split_m)
                sgemm_rm(transA, transB, p1 - p0, N, K, alpha, transA ? A + p0 : A + (size_t)p0 * lda, lda, B, ldb,
                         beta, C + (size_t)p0 * ldc, ldc);
            else
                sgemm_rm(transA, transB, M, p1 - p0, K, alpha, A, lda, transB ? B + (size_t)p0 * ldb : B + p0, ldb,
                         beta, C + p0, ldc);
        }
    }
}

// the CPU backend's ops (cpu_NAME for each op of model/ops_list.h), defined in dense.c, attention.c, moe.c, optim.c
#define OP(ret, name, params) ret cpu_##name params;
#include "../ops_list.h"
#undef OP
