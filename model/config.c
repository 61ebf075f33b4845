// model/config.c: presets and the counts derived from a config.
#include "config.h"
#include <math.h>
#include <string.h>

// Every preset keeps Kimi K2's structure: 384 routed experts, top-8, one shared expert as wide as a routed one,
// no expert grouping, the first layer dense, MLA with q/kv latents, nope/rope/v head dims and a shared rope key,
// and few heads. Sizes shrink; ratios stay near K2's where the small sizes allow (expert width ~ d/4 rather than
// d/3.5 so widths stay multiples of 8; dense width = 9 x expert width as in K2's 18432 = 9 x 2048).
typedef struct {
    const char* name;
    int V, d, L, Ld, H, q_lora, kv_lora, nope, rope, dv, E, K, f, fd, T;
} Preset;

static const Preset presets[] = {
    //  name       V      d     L  Ld H   q_lora kv_lora nope rope dv   E    K  f    fd    T
    {"k2-nano",  4096,  128,   4, 1, 4,  64,    32,     32,  16,  32,  384, 8, 32,  288,  256},
    // the CPU scaling ladder: compute-optimal runs (20 tokens per active parameter) from ~1 to ~15 minutes on
    // 2 cores; k2-nano is bigger than all of them
    {"k2-l1",    4096,  32,    2, 1, 2,  16,    8,      8,   8,   8,   384, 8, 8,   72,   256},
    {"k2-l2",    4096,  48,    2, 1, 2,  24,    12,     16,  8,   16,  384, 8, 12,  108,  256},
    {"k2-l3",    4096,  64,    3, 1, 2,  32,    16,     16,  8,   16,  384, 8, 16,  144,  256},
    {"k2-l4",    4096,  80,    3, 1, 3,  40,    20,     16,  8,   16,  384, 8, 20,  180,  256},
    {"k2-l5",    4096,  96,    3, 1, 3,  48,    24,     24,  12,  24,  384, 8, 24,  216,  256},
    // the GPU scaling ladder (GPT-2 vocab, llm.c FineWeb shards): 8M to 60M active parameters, between the CPU
    // ladder and k2-small
    {"k2-g1",    50304, 256,   4, 1, 4,  96,    64,     64,  32,  64,  384, 8, 64,  576,  1024},
    {"k2-g2",    50304, 384,   5, 1, 4,  128,   96,     64,  32,  64,  384, 8, 96,  864,  1024},
    {"k2-g3",    50304, 512,   6, 1, 6,  160,   128,    64,  32,  64,  384, 8, 128, 1152, 1024},
    {"k2-g4",    50304, 640,   6, 1, 6,  192,   160,    96,  32,  96,  384, 8, 160, 1440, 1024},
    {"k2-g5",    50304, 768,   8, 1, 8,  224,   192,    96,  32,  96,  384, 8, 224, 2016, 1024},
    // one 80 GB GPU: ~2.5B parameters in all, ~150M active; GPT-2 vocab (padded) so llm.c FineWeb shards load
    {"k2-small", 50304, 1024,  8, 1, 8,  384,   256,    128, 64,  128, 384, 8, 288, 2592, 2048},
};

const char* const config_preset_names[] = {"k2-nano", "k2-l1", "k2-l2", "k2-l3", "k2-l4", "k2-l5",
                                           "k2-g1", "k2-g2", "k2-g3", "k2-g4", "k2-g5", "k2-small", NULL};

int config_from_preset(ModelConfig* c, const char* name) {
    for (size_t i = 0; i < sizeof(presets) / sizeof(presets[0]); i++) {
        const Preset* p = &presets[i];
        if (strcmp(p->name, name) != 0) continue;
        memset(c, 0, sizeof(*c));
        snprintf(c->name, sizeof(c->name), "%s", p->name);
        c->vocab_size = p->V; c->d_model = p->d; c->n_layers = p->L; c->n_dense_layers = p->Ld;
        c->n_heads = p->H; c->q_lora = p->q_lora; c->kv_lora = p->kv_lora; c->qk_nope = p->nope;
        c->qk_rope = p->rope; c->v_head = p->dv; c->n_experts = p->E; c->top_k = p->K;
        c->moe_hidden = p->f; c->dense_hidden = p->fd; c->seq_len = p->T;
        c->routed_scale = 2.827f; c->rope_theta = 50000.0f; c->norm_eps = 1e-6f;
        return 1;
    }
    return 0;
}

int config_validate(const ModelConfig* c, char* why, size_t n) {
    struct { const char* name; int v; int min; } f[] = {
        {"vocab_size", c->vocab_size, 2}, {"d_model", c->d_model, 1}, {"n_layers", c->n_layers, 1},
        {"n_dense_layers", c->n_dense_layers, 0}, {"n_heads", c->n_heads, 1}, {"q_lora", c->q_lora, 1},
        {"kv_lora", c->kv_lora, 1}, {"qk_nope", c->qk_nope, 0}, {"qk_rope", c->qk_rope, 2},
        {"v_head", c->v_head, 1}, {"n_experts", c->n_experts, 1}, {"top_k", c->top_k, 1},
        {"moe_hidden", c->moe_hidden, 1}, {"dense_hidden", c->dense_hidden, 1}, {"seq_len", c->seq_len, 1},
    };
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++)
        if (f[i].v < f[i].min) { snprintf(why, n, "%s = %d must be >= %d", f[i].name, f[i].v, f[i].min); return 0; }
    if (c->qk_rope % 2) { snprintf(why, n, "qk_rope = %d must be even (RoPE rotates pairs)", c->qk_rope); return 0; }
    if (c->n_dense_layers > c->n_layers) { snprintf(why, n, "n_dense_layers %d > n_layers %d", c->n_dense_layers, c->n_layers); return 0; }
    if (c->top_k > 64) { snprintf(why, n, "top_k %d > 64 is not supported", c->top_k); return 0; }
    if (c->top_k > c->n_experts) { snprintf(why, n, "top_k %d > n_experts %d", c->top_k, c->n_experts); return 0; }
    if (c->vocab_size > (1 << 30)) { snprintf(why, n, "vocab_size %d too large", c->vocab_size); return 0; }
    if (!(c->routed_scale > 0) || !(c->rope_theta > 0) || !(c->norm_eps > 0) || !isfinite(c->routed_scale) ||
        !isfinite(c->rope_theta) || !isfinite(c->norm_eps)) {
        snprintf(why, n, "routed_scale, rope_theta and norm_eps must be positive and finite"); return 0;
    }
    return 1;
}

// per-layer matrix sizes (elements)
static double attn_params(const ModelConfig* c) {
    double d = c->d_model, H = c->n_heads, dqk = cfg_dqk(c);
    return c->q_lora * d + H * dqk * c->q_lora + (c->kv_lora + c->qk_rope) * d
         + H * (c->qk_nope + c->v_head) * (double)c->kv_lora + d * H * c->v_head;
}

size_t config_num_params(const ModelConfig* c) {
    size_t V = c->vocab_size, d = c->d_model, L = c->n_layers, Ld = c->n_dense_layers, Lm = cfg_n_moe(c);
    size_t E = c->n_experts, f = c->moe_hidden, fd = c->dense_hidden;
    size_t n = 2 * V * d + d;                           // wte, lm_head, final_norm
    n += L * ((size_t)attn_params(c) + 2 * d + c->q_lora + c->kv_lora);  // attention + its 4 norm gains
    n += Ld * 3 * d * fd;                                // dense SwiGLU
    n += Lm * (E * d + 3 * d * f + E * 3 * d * f);       // router, shared expert, routed experts
    return n;
}

double config_active_params(const ModelConfig* c) {
    double d = c->d_model, L = c->n_layers, Ld = c->n_dense_layers, Lm = cfg_n_moe(c);
    return L * attn_params(c) + Ld * 3 * d * c->dense_hidden
         + Lm * (c->n_experts * d + (c->top_k + 1) * 3 * d * c->moe_hidden) + (double)c->vocab_size * d;
}

double config_flops_per_token(const ModelConfig* c, int T) {
    return 6.0 * config_active_params(c) + 3.0 * c->n_layers * c->n_heads * (double)T * (cfg_dqk(c) + c->v_head);
}

void config_print(const ModelConfig* c, FILE* f) {
    fprintf(f, "model %s: V=%d d=%d L=%d (dense %d, MoE %d) H=%d q_lora=%d kv_lora=%d nope=%d rope=%d v=%d\n",
            c->name, c->vocab_size, c->d_model, c->n_layers, c->n_dense_layers, cfg_n_moe(c), c->n_heads,
            c->q_lora, c->kv_lora, c->qk_nope, c->qk_rope, c->v_head);
    fprintf(f, "  experts E=%d top-%d + 1 shared, expert width %d, dense width %d, T=%d, routed_scale=%.3f rope_theta=%g\n",
            c->n_experts, c->top_k, c->moe_hidden, c->dense_hidden, c->seq_len, c->routed_scale, c->rope_theta);
    fprintf(f, "  parameters: %.3fM total, %.3fM active per token; training FLOPs per token %.3f MFLOP\n",
            config_num_params(c) / 1e6, config_active_params(c) / 1e6, config_flops_per_token(c, c->seq_len) / 1e6);
}
