// model/params.h: the parameter layout. All parameters live in one fp32 allocation, carved into the tensors
// below in this order (model/MODEL.md has the table with shapes and row meanings).
#pragma once
#include "config.h"
#include "../common.h"

enum {
    P_WTE,        // (V, d)
    P_ATTN_NORM,  // (L, d)
    P_WDQ,        // (L, q_lora, d)
    P_Q_NORM,     // (L, q_lora)
    P_WUQ,        // (L, H*dqk, q_lora)
    P_WDKV,       // (L, kv_lora + rope, d)
    P_KV_NORM,    // (L, kv_lora)
    P_WUKV,       // (L, H*(nope+dv), kv_lora)
    P_WO,         // (L, d, H*dv)
    P_FFN_NORM,   // (L, d)
    P_DENSE_W13,  // (Ld, 2*fd, d)  W1 rows then W3 rows
    P_DENSE_W2,   // (Ld, d, fd)
    P_ROUTER,     // (Lm, E, d)
    P_SHARED_W13, // (Lm, 2*f, d)
    P_SHARED_W2,  // (Lm, d, f)
    P_EXPERT_W13, // (Lm, E, 2*f, d)
    P_EXPERT_W2,  // (Lm, E, d, f)
    P_FINAL_NORM, // (d)
    P_LM_HEAD,    // (V, d)
    NUM_PARAM_TENSORS
};

// What the optimizer needs to know about a tensor: AdamW decays everything but the norm gains; Muon takes the
// hidden matrices and leaves the embedding, the head and the gains to AdamW (optim/optimizer.c).
typedef enum { PARAM_EMBEDDING, PARAM_NORM, PARAM_MATRIX, PARAM_HEAD } ParamKind;

typedef struct {
    const char* name;
    ParamKind kind;
    int count;       // stacked items: layers, or layers x experts; 1 for a single tensor
    int rows, cols;  // shape of one item; a vector has rows = 1
    int row_blocks;  // an item is this many separate matrices stacked by rows (2 for the fused W1|W3), else 1
    int init_resid;  // 1: writes into the residual stream, initialised with the smaller std
    size_t offset;   // first element in the flat parameter array
    size_t numel;    // count * rows * cols
} ParamTensor;

// Fills layout[NUM_PARAM_TENSORS] and returns the total number of parameters. n_local_experts is how many of each
// MoE layer's experts this process holds (the expert tensors are (Lm, n_local_experts, ...)); the whole model is
// n_local_experts = n_experts.
size_t param_layout(const ModelConfig* c, int n_local_experts, ParamTensor layout[NUM_PARAM_TENSORS]);
// Weight decay applies to every tensor but the RMSNorm gains: the matrices, the embedding and the head.
static inline int param_decays(const ParamTensor* t) { return t->kind != PARAM_NORM; }
// The routed experts' tensors: split over the expert-parallel group (each rank holds n_local_experts of every
// MoE layer), so their gradients are summed over the expert data-parallel group, not the world.
static inline int is_expert_tensor(int t) { return t == P_EXPERT_W13 || t == P_EXPERT_W2; }
// Initialisation (MODEL.md): matrices N(0, 0.02), residual writers N(0, 0.02/sqrt(2L)), norm gains 1.
void param_init(float* params_host, const ParamTensor layout[NUM_PARAM_TENSORS], const ModelConfig* c, Rng* rng);
