// model/ops_list.h: the compute ops of the interface, each declared once, as OP(return type, name, (parameters))
// under its contract. Whoever includes this file defines OP first and gets one line per op:
//   model/ops.h            the Ops table's fields           ret (*name) params;
//   model/cpu/cpu.h        the CPU backend's prototypes     ret cpu_##name params;
//   model/cpu/ops_cpu.c    the CPU backend's table          .name = cpu_##name,
//   model/cuda/cuda_ops.h  the CUDA backend's prototypes    ret cuda_##name params;
//   model/cuda/ops_cuda.cu the CUDA backend's table         .name = cuda_##name,
// so adding an op is one entry here plus its two implementations. No include guard: it is meant to be included
// once per use. The memory ops (malloc, copies, ...) are in ops.h: each backend has its own names for them.
//
// Conventions (ops.h says more): void* is backend memory in the compute dtype, float* fp32, int* int32; N = B*T
// rows; weight gradients (dw...) accumulate, input gradients accumulate where the op says "+=".
#ifndef OP
#error "define OP(ret, name, params) before including model/ops_list.h"
#endif

// ---- dense layers
// out (N,d) = wte[tokens]
OP(void, embedding_forward, (void* out, const int* tokens, const void* wte, int N, int d))
// dwte (V,d) += scatter of dout rows to their token ids
OP(void, embedding_backward, (float* dwte, const void* dout, const int* tokens, int N, int d))
// out (N,C) = inp (N,C; rows in_stride apart) / sqrt(mean(inp^2) + eps) * gain (C); rstd (N) saved
OP(void, rmsnorm_forward, (void* out, float* rstd, const void* inp, int in_stride, const void* gain, int N, int C,
   float eps))
// dinp (N,C; rows in_stride apart) = or += (accumulate); dgain (C) +=
OP(void, rmsnorm_backward, (void* dinp, int in_stride, int accumulate, float* dgain, const void* dout,
   const void* inp, const void* gain, const float* rstd, int N, int C))
// out (N,OC) = inp (N,C) w^T, w (OC,C)
OP(void, matmul_forward, (void* out, const void* inp, const void* w, int N, int C, int OC))
// dinp (N,C) = or += dout w (skipped when dinp is NULL); dw (OC,C) += dout^T inp
OP(void, matmul_backward, (void* dinp, int accumulate, float* dw, const void* dout, const void* inp, const void* w,
   int N, int C, int OC))
// out (n) = a + b
OP(void, add, (void* out, const void* a, const void* b, size_t n))
// x (n) += y
OP(void, add_inplace, (void* x, const void* y, size_t n))
// out (N,f) = silu(h13[:, :f]) * h13[:, f:], h13 (N,2f)
OP(void, swiglu_forward, (void* out, const void* h13, int N, int f))
// dh13 (N,2f) = gradient of the above
OP(void, swiglu_backward, (void* dh13, const void* dout, const void* h13, int N, int f))
// In place, for each row n and head h: RoPE at position n % T on the rope_dim elements starting at
// x + n*row_stride + h*head_stride + offset. inverse=1 applies the transpose (the backward).
OP(void, rope, (void* x, int N, int T, int n_heads, int row_stride, int head_stride, int offset, int rope_dim,
   float theta, int inverse))

// ---- MLA attention (causal), model/MODEL.md
// q (N, H*dqk) with RoPE applied; kv (N, H*(nope+dv)); the shared rope key is a[:, kv_lora:kv_lora+rope] of
// a (N, kv_lora+rope), RoPE applied. Writes out (N, H*dv), lse (B,H,T) softmax log-sum-exp, and
// maxlogit (H) = max(maxlogit, max scaled logit of each head) (a running max across calls).
OP(void, attention_forward, (void* out, float* lse, float* maxlogit, const void* q, const void* kv, const void* a,
   MlaShape shape))
// writes dq (N,H*dqk), dkv (N,H*(nope+dv)) and the rope-key columns of da (N, kv_lora+rope) (others untouched)
OP(void, attention_backward, (void* dq, void* dkv, void* da, const void* dout, const void* q, const void* kv,
   const void* a, const void* out, const float* lse, MlaShape shape))

// ---- MoE
// scores (N,E) = sigmoid(x w_router^T) in fp32; sel (N,K) = top-K of scores + bias (E);
// gates (N,K) = routed_scale * scores[sel] / sum of scores[sel]
OP(void, moe_router_forward, (float* scores, int* sel, float* gates, const void* x, const void* w_router,
   const float* bias, MoeShape shape, float routed_scale))
// aux += alpha * mean over the B sequences of sum_i f_i P_i (MODEL.md); aux is one float
OP(void, moe_balance_loss, (float* aux, const float* scores, const int* sel, MoeShape shape, float alpha))
// backward of router + gates + balance loss (its scalars in bal, from balance_grad(): scaled by loss_scale like
// the rest of the loss): dx (N,d) +=, dw_router (E,d) +=; dscores (N,E) is scratch
OP(void, moe_router_backward, (void* dx, float* dw_router, float* dscores, const float* dgates, const float* scores,
   const int* sel, const void* x, const void* w_router, MoeShape shape, float routed_scale, BalanceGrad bal))
// Groups the N*K (row, k) choices by expert, stable in (row, k) order: offsets (E+1) where expert e's rows
// are [offsets[e], offsets[e+1]) of the expert-ordered buffers; row_of (N*K): expert-ordered position of
// choice (n,k); token_of (N*K): token row of each expert-ordered position; load (E) += tokens per expert.
OP(void, moe_dispatch, (int* offsets, int* row_of, int* token_of, float* load, const int* sel, MoeShape shape))
// xe (N*K,d) = x[token_of]
OP(void, moe_gather, (void* xe, const void* x, const int* token_of, int NK, int d))
// dx (N,d) += sum over k of dxe[row_of[n,k]]
OP(void, moe_gather_backward, (void* dx, const void* dxe, const int* row_of, MoeShape shape))
// for each expert e, its rows of xe (offsets as from moe_dispatch): h13 = xe w13[e]^T (.,2f),
// hact = swiglu(h13) (.,f), ye = hact w2[e]^T (.,d); w13 (E,2f,d), w2 (E,d,f)
OP(void, moe_experts_forward, (void* ye, void* h13, void* hact, const void* xe, const void* w13, const void* w2,
   const int* offsets, int E, int d, int f))
// dxe (N*K,d) written; dw13, dw2 +=; dh13 (N*K,2f) and dhact (N*K,f) are scratch
OP(void, moe_experts_backward, (void* dxe, float* dw13, float* dw2, void* dh13, void* dhact, const void* dye,
   const void* xe, const void* h13, const void* hact, const void* w13, const void* w2, const int* offsets, int E,
   int d, int f))
// y (N,d) += sum_k gates[n,k] ye[row_of[n,k]]
OP(void, moe_combine_forward, (void* y, const void* ye, const float* gates, const int* row_of, MoeShape shape))
// dye (N*K,d) written; dgates (N,K) written
OP(void, moe_combine_backward, (void* dye, float* dgates, const void* dy, const void* ye, const float* gates,
   const int* row_of, MoeShape shape))

// ---- loss
// losses (N) = -log softmax(logits)[target]
OP(void, crossentropy_forward, (float* losses, const void* logits, const int* targets, int N, int V))
// dlogits (N,V) = (softmax(logits) - onehot(target)) * dloss; dlogits may alias logits
OP(void, crossentropy_backward, (void* dlogits, const void* logits, const int* targets, float dloss, int N, int V))

// ---- optimizer
// returns sum of g^2 over n fp32 values (accumulated in double)
OP(double, sum_squares, (const float* g, size_t n))
// AdamW on n elements (MODEL.md); grad_scale multiplies g first (the clip); inv_bc1, inv_bc2 are the bias
// corrections 1 / (1 - b^step) of this step (adamw_inv_bias_correction)
OP(void, adamw_update, (float* p, const float* g, float* m, float* v, size_t n, float lr, float b1, float b2,
   float eps, float wd, float grad_scale, float inv_bc1, float inv_bc2))
// Muon: m = mu m + g * grad_scale, u = g * grad_scale + mu m (n elements)
OP(void, muon_momentum, (float* m, float* u, const float* g, size_t n, float mu, float grad_scale))
// x (batch, rows, cols) <- Newton-Schulz orthogonalisation of each matrix (MODEL.md); coeffs (steps, 3) is
// host memory (the scalars of each iteration); bf16_gemms: 1 = the iteration's GEMMs may take bf16 operands with
// fp32 accumulation (CUDA: --muon-ns bf16), 0 = true fp32. The CPU always runs fp32 and ignores it.
OP(void, newton_schulz, (float* x, int batch, int rows, int cols, const float* coeffs, int steps, int bf16_gemms))
// p = p - lr (scale o + wd p); returns the sum over n of (scale o)^2
OP(double, muon_update, (float* p, const float* o, size_t n, float lr, float scale, float wd))
// QK-Clip: rows [row0, row0 + nrows) of w (., cols) *= factor
OP(void, scale_rows, (float* w, int row0, int nrows, int cols, float factor))
