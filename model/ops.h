// model/ops.h: the op interface. The model's forward/backward (model/model.c) is written once against this
// table; each backend fills one (model/cpu/ for the CPU, model/cuda/ for NVIDIA GPUs). The compute ops are listed
// once, in model/ops_list.h, which generates the fields below and both backends' prototypes and tables.
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
#include <math.h>

// ---- the shapes that the attention and routing ops take whole (one argument instead of a tail of ints)

// MLA attention (MODEL.md): B sequences of T rows (N = B*T), H heads; each head's query/key is nope + rope wide
// (dqk), its value dv wide; the shared latent a has kv_lora + rope columns (the last rope are the shared key).
typedef struct {
    int B, T;      // sequences, rows per sequence
    int H;         // heads
    int nope;      // per-head query/key columns without RoPE
    int rope;      // per-head query/key columns with RoPE (the key's are shared by all heads)
    int dv;        // per-head value columns
    int kv_lora;   // latent columns of a before its rope key
} MlaShape;

// A MoE layer's routing: B sequences of T rows (N = B*T) of width d, each choosing K of E experts.
typedef struct {
    int B, T;      // sequences, rows per sequence
    int d;         // model width (router input)
    int E;         // routed experts
    int K;         // experts chosen per row (top-K)
} MoeShape;

// ---- host-side scalars that both backends' ops take ready-made (one formula, not one per backend)

// The balance loss's scalars in the router backward (MODEL.md), for B sequences of T rows, E experts, top-K.
typedef struct {
    double f_scale;  // E / (K T): f_i = f_scale * (choices of expert i in its sequence)
    double grad;     // loss_scale * alpha / (B T): d loss / d (s_i / sum_j s_j) per unit f_i
} BalanceGrad;

static inline BalanceGrad balance_grad(int B, int T, int E, int K, float alpha, float loss_scale) {
    BalanceGrad g = {(double)E / ((double)K * T), (double)loss_scale * alpha / ((double)B * T)};
    return g;
}

// AdamW's bias correction 1 / (1 - beta^step), step 1-based: folded into a multiplier of m or v
static inline float adamw_inv_bias_correction(float beta, int step) {
    return (float)(1.0 / (1.0 - pow((double)beta, step)));
}

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

    // ---- the compute ops (model/ops_list.h: each op's contract, declared once)
#define OP(ret, name, params) ret (*name) params;
#include "ops_list.h"
#undef OP
} Ops;

extern const Ops ops_cpu;
const Ops* ops_cuda_get(void);  // NULL when the CUDA backend is not built in or no GPU is visible
int ops_cuda_built(void);        // 1 when this binary has the CUDA backend (built with nvcc), else 0
const char* ops_cuda_unavailable_reason(void);  // why ops_cuda_get() returned NULL (NULL when it did not)
// the stream every CUDA op runs on (a cudaStream_t), for collectives on the backend's buffers that must follow its
// kernels (comm_set_device); NULL before ops_cuda_get() found a GPU, or without the CUDA backend
void* ops_cuda_stream(void);

// Pointer to element `elems` of an activation buffer, whatever the backend's element size.
static inline void* ops_at(const Ops* ops, const void* base, size_t elems) {
    return (char*)base + elems * ops->act_bytes;
}
