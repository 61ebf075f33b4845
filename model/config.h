// model/config.h: the model's shape, the named presets, and the parameter / FLOP counts derived from them.
// The math these numbers describe is in model/MODEL.md.
#pragma once
#include <stddef.h>
#include <stdio.h>

typedef struct {
    char name[32];
    int vocab_size;    // V
    int d_model;       // d, residual width
    int n_layers;      // L; the first n_dense_layers are dense SwiGLU, the rest MoE
    int n_dense_layers;// Ld (Kimi K2: 1)
    int n_heads;       // H (reduced: K2 uses 64 where DeepSeek-V3 uses 128)
    int q_lora;        // rank of the query latent c_q
    int kv_lora;       // rank of the key/value latent c_kv
    int qk_nope;       // per-head q/k dims without position
    int qk_rope;       // per-head q/k dims with RoPE; one rope key shared by all heads
    int v_head;        // per-head value dims
    int n_experts;     // E, routed experts (384 in every preset)
    int top_k;         // K, routed experts per token (8)
    int moe_hidden;    // f, width of each routed expert and of the shared expert
    int dense_hidden;  // fd, width of the dense SwiGLU layers
    int seq_len;       // T, training context
    float routed_scale;// routed_scaling_factor (K2: 2.827)
    float rope_theta;  // (K2: 50000)
    float norm_eps;    // RMSNorm epsilon (1e-6)
} ModelConfig;

// derived sizes
static inline int cfg_dqk(const ModelConfig* c) { return c->qk_nope + c->qk_rope; }
static inline int cfg_n_moe(const ModelConfig* c) { return c->n_layers - c->n_dense_layers; }

// Fills *c with the named preset; returns 0 if there is no such name.
int config_from_preset(ModelConfig* c, const char* name);
// Names of all presets, NULL-terminated, for --help and errors.
extern const char* const config_preset_names[];
// Checks every field; on a problem writes a one-line reason into why and returns 0.
int config_validate(const ModelConfig* c, char* why, size_t why_len);

// Counts, following REFERENCE.md section 4.
size_t config_num_params(const ModelConfig* c);        // every trained parameter
double config_active_params(const ModelConfig* c);     // matrices a token multiplies through (no embedding, norms)
double config_flops_per_token(const ModelConfig* c, int T); // 6 N_active + 3 L H T (dqk + dv)
void config_print(const ModelConfig* c, FILE* f);
