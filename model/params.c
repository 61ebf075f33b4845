// model/params.c: parameter layout and initialisation.
#include "params.h"
#include <math.h>

size_t param_layout(const ModelConfig* c, int n_local_experts, ParamTensor t[NUM_PARAM_TENSORS]) {
    int V = c->vocab_size, d = c->d_model, L = c->n_layers, Ld = c->n_dense_layers, Lm = cfg_n_moe(c);
    int H = c->n_heads, dqk = cfg_dqk(c), E = c->n_experts, f = c->moe_hidden, fd = c->dense_hidden;
    //              name          kind             count    rows                          cols       blocks resid
    t[P_WTE]        = (ParamTensor){"wte",        PARAM_EMBEDDING, 1,      V,                           d,         1, 0};
    t[P_ATTN_NORM]  = (ParamTensor){"attn_norm",  PARAM_NORM,      L,      1,                           d,         1, 0};
    t[P_WDQ]        = (ParamTensor){"wdq",        PARAM_MATRIX,    L,      c->q_lora,                   d,         1, 0};
    t[P_Q_NORM]     = (ParamTensor){"q_norm",     PARAM_NORM,      L,      1,                           c->q_lora, 1, 0};
    t[P_WUQ]        = (ParamTensor){"wuq",        PARAM_MATRIX,    L,      H * dqk,                     c->q_lora, 1, 0};
    t[P_WDKV]       = (ParamTensor){"wdkv",       PARAM_MATRIX,    L,      c->kv_lora + c->qk_rope,     d,         1, 0};
    t[P_KV_NORM]    = (ParamTensor){"kv_norm",    PARAM_NORM,      L,      1,                           c->kv_lora,1, 0};
    t[P_WUKV]       = (ParamTensor){"wukv",       PARAM_MATRIX,    L,      H * (c->qk_nope + c->v_head),c->kv_lora,1, 0};
    t[P_WO]         = (ParamTensor){"wo",         PARAM_MATRIX,    L,      d,                           H * c->v_head, 1, 1};
    t[P_FFN_NORM]   = (ParamTensor){"ffn_norm",   PARAM_NORM,      L,      1,                           d,         1, 0};
    t[P_DENSE_W13]  = (ParamTensor){"dense_w13",  PARAM_MATRIX,    Ld,     2 * fd,                      d,         2, 0};
    t[P_DENSE_W2]   = (ParamTensor){"dense_w2",   PARAM_MATRIX,    Ld,     d,                           fd,        1, 1};
    t[P_ROUTER]     = (ParamTensor){"router",     PARAM_MATRIX,    Lm,     E,                           d,         1, 0};
    t[P_SHARED_W13] = (ParamTensor){"shared_w13", PARAM_MATRIX,    Lm,     2 * f,                       d,         2, 0};
    t[P_SHARED_W2]  = (ParamTensor){"shared_w2",  PARAM_MATRIX,    Lm,     d,                           f,         1, 1};
    int El = n_local_experts;
    t[P_EXPERT_W13] = (ParamTensor){"expert_w13", PARAM_MATRIX,    Lm * El,2 * f,                       d,         2, 0};
    t[P_EXPERT_W2]  = (ParamTensor){"expert_w2",  PARAM_MATRIX,    Lm * El,d,                           f,         1, 1};
    t[P_FINAL_NORM] = (ParamTensor){"final_norm", PARAM_NORM,      1,      1,                           d,         1, 0};
    t[P_LM_HEAD]    = (ParamTensor){"lm_head",    PARAM_HEAD,      1,      V,                           d,         1, 0};
    size_t offset = 0;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        t[i].offset = offset;
        t[i].numel = (size_t)t[i].count * t[i].rows * t[i].cols;
        offset += t[i].numel;
    }
    return offset;
}

void param_init(float* p, const ParamTensor t[NUM_PARAM_TENSORS], const ModelConfig* c, Rng* rng) {
    const float std = 0.02f, resid_std = 0.02f / sqrtf(2.0f * c->n_layers);
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        float* w = p + t[i].offset;
        if (t[i].kind == PARAM_NORM) {
            for (size_t j = 0; j < t[i].numel; j++) w[j] = 1.0f;
        } else {
            float s = t[i].init_resid ? resid_std : std;
            for (size_t j = 0; j < t[i].numel; j++) w[j] = s * rng_normal(rng);
        }
    }
}
