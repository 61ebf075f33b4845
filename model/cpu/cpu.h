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

// the groups of ops, defined in dense.c, attention.c, moe.c
void cpu_embedding_forward(void* out, const int* tokens, const void* wte, int N, int d);
void cpu_embedding_backward(float* dwte, const void* dout, const int* tokens, int N, int d);
void cpu_rmsnorm_forward(void* out, float* rstd, const void* inp, int in_stride, const void* gain, int N, int C, float eps);
void cpu_rmsnorm_backward(void* dinp, int in_stride, int accumulate, float* dgain, const void* dout, const void* inp,
                          const void* gain, const float* rstd, int N, int C);
void cpu_matmul_forward(void* out, const void* inp, const void* w, int N, int C, int OC);
void cpu_matmul_backward(void* dinp, int accumulate, float* dw, const void* dout, const void* inp, const void* w,
                         int N, int C, int OC);
void cpu_add(void* out, const void* a, const void* b, size_t n);
void cpu_add_inplace(void* x, const void* y, size_t n);
void cpu_swiglu_forward(void* out, const void* h13, int N, int f);
void cpu_swiglu_backward(void* dh13, const void* dout, const void* h13, int N, int f);
void cpu_rope(void* x, int N, int T, int n_heads, int row_stride, int head_stride, int offset, int rope_dim,
              float theta, int inverse);
void cpu_crossentropy_forward(float* losses, const void* logits, const int* targets, int N, int V);
void cpu_crossentropy_backward(void* dlogits, const void* logits, const int* targets, float dloss, int N, int V);
double cpu_sum_squares(const float* g, size_t n);
void cpu_adamw_update(float* p, const float* g, float* m, float* v, size_t n, float lr, float b1, float b2, float eps,
                      float wd, float grad_scale, int step);

void cpu_muon_momentum(float* m, float* u, const float* g, size_t n, float mu, float grad_scale);
void cpu_newton_schulz(float* x, int batch, int rows, int cols, const float* coeffs, int steps);
double cpu_muon_update(float* p, const float* o, size_t n, float lr, float scale, float wd);
void cpu_scale_rows(float* w, int row0, int nrows, int cols, float factor);

void cpu_attention_forward(void* out, float* lse, float* maxlogit, const void* q, const void* kv, const void* a,
                           int B, int T, int H, int nope, int rope, int dv, int kv_lora);
void cpu_attention_backward(void* dq, void* dkv, void* da, const void* dout, const void* q, const void* kv,
                            const void* a, const void* out, const float* lse, int B, int T, int H, int nope, int rope,
                            int dv, int kv_lora);

void cpu_moe_router_forward(float* scores, int* sel, float* gates, const void* x, const void* w_router,
                            const float* bias, int N, int d, int E, int K, float routed_scale);
void cpu_moe_balance_loss(float* aux, const float* scores, const int* sel, int B, int T, int E, int K, float alpha);
void cpu_moe_router_backward(void* dx, float* dw_router, float* dscores, const float* dgates, const float* scores,
                             const int* sel, const void* x, const void* w_router, int B, int T, int d, int E, int K,
                             float routed_scale, float alpha, float loss_scale);
void cpu_moe_dispatch(int* offsets, int* row_of, int* token_of, float* load, const int* sel, int N, int K, int E);
void cpu_moe_gather(void* xe, const void* x, const int* token_of, int NK, int d);
void cpu_moe_gather_backward(void* dx, const void* dxe, const int* row_of, int N, int K, int d);
void cpu_moe_experts_forward(void* ye, void* h13, void* hact, const void* xe, const void* w13, const void* w2,
                             const int* offsets, int E, int d, int f);
void cpu_moe_experts_backward(void* dxe, float* dw13, float* dw2, void* dh13, void* dhact, const void* dye,
                              const void* xe, const void* h13, const void* hact, const void* w13, const void* w2,
                              const int* offsets, int E, int d, int f);
void cpu_moe_combine_forward(void* y, const void* ye, const float* gates, const int* row_of, int N, int K, int d);
void cpu_moe_combine_backward(void* dye, float* dgates, const void* dy, const void* ye, const float* gates,
                              const int* row_of, int N, int K, int d);
