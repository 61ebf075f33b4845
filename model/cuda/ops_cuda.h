// model/cuda/ops_cuda.h: the CUDA backend's dense-layer ops (model/cuda/dense.cu) and optimizer ops
// (model/cuda/optim.cu), collected into the Ops table by model/cuda/ops_cuda.cu. Each has exactly the signature
// and semantics of the matching field of Ops in model/ops.h; pointers are device memory, void* are bf16.
// (The attention and MoE ops are declared in cuda_ops.h.)
#pragma once
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// the stream every op of the backend runs on (a cudaStream_t; NULL until ops_cuda_get() found a GPU), for
// comm/comm_cuda.c's NCCL calls and copies
void* cuda_stream_handle(void);

// ---- dense layers (dense.cu)
void cuda_embedding_forward(void* out, const int* tokens, const void* wte, int N, int d);
void cuda_embedding_backward(float* dwte, const void* dout, const int* tokens, int N, int d);
void cuda_rmsnorm_forward(void* out, float* rstd, const void* inp, int in_stride, const void* gain, int N, int C,
                          float eps);
void cuda_rmsnorm_backward(void* dinp, int in_stride, int accumulate, float* dgain, const void* dout, const void* inp,
                           const void* gain, const float* rstd, int N, int C);
void cuda_matmul_forward(void* out, const void* inp, const void* w, int N, int C, int OC);
void cuda_matmul_backward(void* dinp, int accumulate, float* dw, const void* dout, const void* inp, const void* w,
                          int N, int C, int OC);
void cuda_add(void* out, const void* a, const void* b, size_t n);
void cuda_add_inplace(void* x, const void* y, size_t n);
void cuda_swiglu_forward(void* out, const void* h13, int N, int f);
void cuda_swiglu_backward(void* dh13, const void* dout, const void* h13, int N, int f);
void cuda_rope(void* x, int N, int T, int n_heads, int row_stride, int head_stride, int offset, int rope_dim,
               float theta, int inverse);
void cuda_crossentropy_forward(float* losses, const void* logits, const int* targets, int N, int V);
void cuda_crossentropy_backward(void* dlogits, const void* logits, const int* targets, float dloss, int N, int V);

// ---- optimizer (optim.cu)
double cuda_sum_squares(const float* g, size_t n);
void cuda_adamw_update(float* p, const float* g, float* m, float* v, size_t n, float lr, float b1, float b2, float eps,
                       float wd, float grad_scale, int step);
void cuda_muon_momentum(float* m, float* u, const float* g, size_t n, float mu, float grad_scale);
// coeffs is HOST memory (steps x 3): the optimizer passes its own table, and cuBLAS takes the scalars from the host
void cuda_newton_schulz(float* x, int batch, int rows, int cols, const float* coeffs, int steps);
double cuda_muon_update(float* p, const float* o, size_t n, float lr, float scale, float wd);
void cuda_scale_rows(float* w, int row0, int nrows, int cols, float factor);

#ifdef __cplusplus
}
#endif
