// model/ops.h: the op interface. The model's forward/backward (model/model.c) is written once against this
// table; each backend fills one (model/cpu/ for the CPU, cuda/ for NVIDIA GPUs).
//
// Memory. Every pointer below is backend memory (host memory for the CPU, device memory for CUDA).
//   void*  : activations, their gradients and the compute copy of the weights, in the backend's compute dtype
//            (fp32 on the CPU, bf16 on CUDA; Ops.act_bytes says which). The model never dereferences them and
//            never does arithmetic on them except through ops_at().
//   float* : always fp32: master weights and weight gradients, router scores and gates, RMSNorm rstd, softmax
//            statistics, losses, optimizer state.
//   int*   : always int32: tokens, expert choices, dispatch plans.
// Rows: N = B*T token rows; a row's position in its sequence is n % T.
//
// Gradient conventions: weight gradients (dw...) always accumulate (+=), so micro-batches add up. Input gradients
// accumulate when the op says "+=", otherwise they are written.
#pragma once
#include <stddef.h>

typedef struct Ops {
    const char* name;     // "cpu", "cuda"
    size_t act_bytes;     // bytes of one activation element
    int separate_compute_weights; // 1: the compute copy is its own allocation (bf16); 0: it is the fp32 master

    // ---- memory
    void* (*malloc)(size_t bytes);                 // zero-filled
    void (*free)(void* p);
    void (*zero)(void* p, size_t bytes);
    void (*to_host)(void* host, const void* src, size_t bytes);
    void (*to_device)(void* dst, const void* host, size_t bytes);
    // n activation elements -> fp32 host values
    void (*act_to_host_f32)(float* host, const void* src, size_t n);
    void (*sync)(void);
    // memory the backend can still allocate, and its total (host RAM on the CPU, device memory on a GPU)
    void (*mem_info)(size_t* free_bytes, size_t* total_bytes);
    // fp32 master -> compute copy (only called when separate_compute_weights)
    void (*weights_to_compute)(void* compute, const float* master, size_t n);

    // ---- dense layers
    // out (N,d) = wte[tokens]
    void (*embedding_forward)(void* out, const int* tokens, const void* wte, int N, int d);
    // dwte (V,d) += scatter of dout rows to their token ids
    void (*embedding_backward)(float* dwte, const void* dout, const int* tokens, int N, int d);
    // out (N,C) = inp (N,C; rows in_stride apart) / sqrt(mean(inp^2) + eps) * gain (C); rstd (N) saved
    void (*rmsnorm_forward)(void* out, float* rstd, const void* inp, int in_stride, const void* gain, int N, int C, float eps);
    // dinp (N,C; rows in_stride apart) = or += (accumulate); dgain (C) +=
    void (*rmsnorm_backward)(void* dinp, int in_stride, int accumulate, float* dgain, const void* dout,
                             const void* inp, const void* gain, const float* rstd, int N, int C);
    // out (N,OC) = inp (N,C) w^T, w (OC,C)
    void (*matmul_forward)(void* out, const void* inp, const void* w, int N, int C, int OC);
    // dinp (N,C) = or += dout w (skipped when dinp is NULL); dw (OC,C) += dout^T inp
    void (*matmul_backward)(void* dinp, int accumulate, float* dw, const void* dout, const void* inp,
                            const void* w, int N, int C, int OC);
    // out (n) = a + b
    void (*add)(void* out, const void* a, const void* b, size_t n);
    // x (n) += y
    void (*add_inplace)(void* x, const void* y, size_t n);
    // out (N,f) = silu(h13[:, :f]) * h13[:, f:], h13 (N,2f)
    void (*swiglu_forward)(void* out, const void* h13, int N, int f);
    // dh13 (N,2f) = gradient of the above
    void (*swiglu_backward)(void* dh13, const void* dout, const void* h13, int N, int f);
    // In place, for each row n and head h: RoPE at position n % T on the rope_dim elements starting at
    // x + n*row_stride + h*head_stride + offset. inverse=1 applies the transpose (the backward).
    void (*rope)(void* x, int N, int T, int n_heads, int row_stride, int head_stride, int offset, int rope_dim,
                 float theta, int inverse);

    // ---- MLA attention (causal), model/MODEL.md
    // q (N, H*dqk) with RoPE applied; kv (N, H*(nope+dv)); the shared rope key is a[:, kv_lora:kv_lora+rope] of
    // a (N, kv_lora+rope), RoPE applied. Writes out (N, H*dv), lse (B,H,T) softmax log-sum-exp, and
    // maxlogit (H) = max(maxlogit, max scaled logit of each head) (a running max across calls).
    void (*attention_forward)(void* out, float* lse, float* maxlogit, const void* q, const void* kv, const void* a,
                              int B, int T, int H, int nope, int rope, int dv, int kv_lora);
    // writes dq (N,H*dqk), dkv (N,H*(nope+dv)) and the rope-key columns of da (N, kv_lora+rope) (others untouched)
    void (*attention_backward)(void* dq, void* dkv, void* da, const void* dout, const void* q, const void* kv,
                               const void* a, const void* out, const float* lse,
                               int B, int T, int H, int nope, int rope, int dv, int kv_lora);

    // ---- MoE
    // scores (N,E) = sigmoid(x w_router^T) in fp32; sel (N,K) = top-K of scores + bias (E);
    // gates (N,K) = routed_scale * scores[sel] / sum of scores[sel]
    void (*moe_router_forward)(float* scores, int* sel, float* gates, const void* x, const void* w_router,
                               const float* bias, int N, int d, int E, int K, float routed_scale);
    // aux += alpha * mean over the B sequences of sum_i f_i P_i (MODEL.md); aux is one float
    void (*moe_balance_loss)(float* aux, const float* scores, const int* sel, int B, int T, int E, int K, float alpha);
    // backward of router + gates + balance loss (scaled by loss_scale, like the rest of the loss):
    // dx (N,d) +=, dw_router (E,d) +=; dscores (N,E) is scratch
    void (*moe_router_backward)(void* dx, float* dw_router, float* dscores, const float* dgates, const float* scores,
                                const int* sel, const void* x, const void* w_router, int B, int T, int d, int E, int K,
                                float routed_scale, float alpha, float loss_scale);
    // Groups the N*K (row, k) choices by expert, stable in (row, k) order: offsets (E+1) where expert e's rows
    // are [offsets[e], offsets[e+1]) of the expert-ordered buffers; row_of (N*K): expert-ordered position of
    // choice (n,k); token_of (N*K): token row of each expert-ordered position; load (E) += tokens per expert.
    void (*moe_dispatch)(int* offsets, int* row_of, int* token_of, float* load, const int* sel, int N, int K, int E);
    // xe (N*K,d) = x[token_of]
    void (*moe_gather)(void* xe, const void* x, const int* token_of, int NK, int d);
    // dx (N,d) += sum over k of dxe[row_of[n,k]]
    void (*moe_gather_backward)(void* dx, const void* dxe, const int* row_of, int N, int K, int d);
    // for each expert e, its rows of xe (offsets as from moe_dispatch): h13 = xe w13[e]^T (.,2f), hact = swiglu(h13) (.,f), ye = hact w2[e]^T (.,d)
    // w13 (E,2f,d), w2 (E,d,f)
    void (*moe_experts_forward)(void* ye, void* h13, void* hact, const void* xe, const void* w13, const void* w2,
                                const int* offsets, int E, int d, int f);
    // dxe (N*K,d) written; dw13, dw2 +=; dh13 (N*K,2f) and dhact (N*K,f) are scratch
    void (*moe_experts_backward)(void* dxe, float* dw13, float* dw2, void* dh13, void* dhact, const void* dye,
                                 const void* xe, const void* h13, const void* hact, const void* w13, const void* w2,
                                 const int* offsets, int E, int d, int f);
    // y (N,d) += sum_k gates[n,k] ye[row_of[n,k]]
    void (*moe_combine_forward)(void* y, const void* ye, const float* gates, const int* row_of, int N, int K, int d);
    // dye (N*K,d) written; dgates (N,K) written
    void (*moe_combine_backward)(void* dye, float* dgates, const void* dy, const void* ye, const float* gates,
                                 const int* row_of, int N, int K, int d);

    // ---- loss
    // losses (N) = -log softmax(logits)[target]
    void (*crossentropy_forward)(float* losses, const void* logits, const int* targets, int N, int V);
    // dlogits (N,V) = (softmax(logits) - onehot(target)) * dloss; dlogits may alias logits
    void (*crossentropy_backward)(void* dlogits, const void* logits, const int* targets, float dloss, int N, int V);

    // ---- optimizer
    // returns sum of g^2 over n fp32 values (accumulated in double)
    double (*sum_squares)(const float* g, size_t n);
    // AdamW on n elements (MODEL.md); grad_scale multiplies g first (the clip); step is 1-based
    void (*adamw_update)(float* p, const float* g, float* m, float* v, size_t n, float lr, float b1, float b2,
                         float eps, float wd, float grad_scale, int step);
    // Muon: m = mu m + g * grad_scale, u = g * grad_scale + mu m (n elements)
    void (*muon_momentum)(float* m, float* u, const float* g, size_t n, float mu, float grad_scale);
    // x (batch, rows, cols) <- Newton-Schulz orthogonalisation of each matrix (MODEL.md); coeffs (steps, 3) is
    // host memory (the scalars of each iteration)
    void (*newton_schulz)(float* x, int batch, int rows, int cols, const float* coeffs, int steps);
    // p = p - lr (scale o + wd p); returns the sum over n of (scale o)^2
    double (*muon_update)(float* p, const float* o, size_t n, float lr, float scale, float wd);
    // QK-Clip: rows [row0, row0 + nrows) of w (., cols) *= factor
    void (*scale_rows)(float* w, int row0, int nrows, int cols, float factor);
} Ops;

extern const Ops ops_cpu;
const Ops* ops_cuda_get(void);  // NULL when the CUDA backend is not built in or no GPU is visible
int ops_cuda_built(void);        // 1 when this binary has the CUDA backend (built with nvcc), else 0
const char* ops_cuda_unavailable_reason(void);  // why ops_cuda_get() returned NULL (NULL when it did not)

// Pointer to element `elems` of an activation buffer, whatever the backend's element size.
static inline void* ops_at(const Ops* ops, const void* base, size_t elems) {
    return (char*)base + elems * ops->act_bytes;
}
