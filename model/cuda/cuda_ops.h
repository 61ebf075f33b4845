// model/cuda/cuda_ops.h: the CUDA backend's attention and MoE ops (implemented in model/cuda/attention.cu and
// model/cuda/moe.cu), collected into the Ops table by model/cuda/ops_cuda.cu. Each has exactly the signature
// and semantics of the matching field of Ops in model/ops.h; all pointers are device memory, void* are bf16.
#pragma once
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// ---- MLA attention (causal)
void cuda_attention_forward(void* out, float* lse, float* maxlogit, const void* q, const void* kv, const void* a,
                            int B, int T, int H, int nope, int rope, int dv, int kv_lora);
void cuda_attention_backward(void* dq, void* dkv, void* da, const void* dout, const void* q, const void* kv,
                             const void* a, const void* out, const float* lse,
                             int B, int T, int H, int nope, int rope, int dv, int kv_lora);

// ---- MoE
void cuda_moe_router_forward(float* scores, int* sel, float* gates, const void* x, const void* w_router,
                             const float* bias, int N, int d, int E, int K, float routed_scale);
void cuda_moe_balance_loss(float* aux, const float* scores, const int* sel, int B, int T, int E, int K, float alpha);
void cuda_moe_router_backward(void* dx, float* dw_router, float* dscores, const float* dgates, const float* scores,
                              const int* sel, const void* x, const void* w_router, int B, int T, int d, int E, int K,
                              float routed_scale, float alpha, float loss_scale);
void cuda_moe_dispatch(int* offsets, int* row_of, int* token_of, float* load, const int* sel, int N, int K, int E);
void cuda_moe_gather(void* xe, const void* x, const int* token_of, int NK, int d);
void cuda_moe_gather_backward(void* dx, const void* dxe, const int* row_of, int N, int K, int d);
void cuda_moe_experts_forward(void* ye, void* h13, void* hact, const void* xe, const void* w13, const void* w2,
                              const int* offsets, int E, int d, int f);
void cuda_moe_experts_backward(void* dxe, float* dw13, float* dw2, void* dh13, void* dhact, const void* dye,
                               const void* xe, const void* h13, const void* hact, const void* w13, const void* w2,
                               const int* offsets, int E, int d, int f);
void cuda_moe_combine_forward(void* y, const void* ye, const float* gates, const int* row_of, int N, int K, int d);
void cuda_moe_combine_backward(void* dye, float* dgates, const void* dy, const void* ye, const float* gates,
                               const int* row_of, int N, int K, int d);

#ifdef __cplusplus
}
#endif
