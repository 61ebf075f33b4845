// model/model.c: forward and backward of the whole model, written once over the op interface (ops.h).
// Reads top to bottom as model/MODEL.md's forward, then the same in reverse.
#include "model.h"
#include "experts.h"
#include <math.h>

// ----------------------------------------------------------------------------
// setup

// Element `i` of item `item` (a layer, or layer x expert) of tensor `t`, in a buffer of elem_bytes elements.
static void* tensor_item(const Model* m, void* base, size_t elem_bytes, int t, size_t item) {
    const ParamTensor* p = &m->layout[t];
    return (char*)base + (p->offset + item * (size_t)p->rows * p->cols) * elem_bytes;
}

static void layer_pointers(const Model* m, LayerWeights* lw, void* base, size_t elem_bytes) {
    const ModelConfig* c = &m->cfg;
    for (int l = 0; l < c->n_layers; l++) {
        LayerWeights* w = &lw[l];
        memset(w, 0, sizeof(*w));
        w->attn_norm = tensor_item(m, base, elem_bytes, P_ATTN_NORM, l);
        w->wdq = tensor_item(m, base, elem_bytes, P_WDQ, l);
        w->q_norm = tensor_item(m, base, elem_bytes, P_Q_NORM, l);
        w->wuq = tensor_item(m, base, elem_bytes, P_WUQ, l);
        w->wdkv = tensor_item(m, base, elem_bytes, P_WDKV, l);
        w->kv_norm = tensor_item(m, base, elem_bytes, P_KV_NORM, l);
        w->wukv = tensor_item(m, base, elem_bytes, P_WUKV, l);
        w->wo = tensor_item(m, base, elem_bytes, P_WO, l);
        w->ffn_norm = tensor_item(m, base, elem_bytes, P_FFN_NORM, l);
        if (l < c->n_dense_layers) {
            w->w13 = tensor_item(m, base, elem_bytes, P_DENSE_W13, l);
            w->w2 = tensor_item(m, base, elem_bytes, P_DENSE_W2, l);
        } else {
            int mi = l - c->n_dense_layers;
            w->w13 = tensor_item(m, base, elem_bytes, P_SHARED_W13, mi);
            w->w2 = tensor_item(m, base, elem_bytes, P_SHARED_W2, mi);
            w->router = tensor_item(m, base, elem_bytes, P_ROUTER, mi);
            w->expert_w13 = tensor_item(m, base, elem_bytes, P_EXPERT_W13, (size_t)mi * m->n_local_experts);
            w->expert_w2 = tensor_item(m, base, elem_bytes, P_EXPERT_W2, (size_t)mi * m->n_local_experts);
        }
    }
}

void model_alloc(Model* m, const ModelConfig* cfg, const Ops* ops, Comm* comm) {
    memset(m, 0, sizeof(*m));
    m->cfg = *cfg;
    m->ops = ops;
    m->comm = comm;
    experts_split(m, comm);
    m->num_params = param_layout(cfg, m->n_local_experts, m->layout);
    m->num_params_global = param_layout(cfg, cfg->n_experts, m->global_layout);
    size_t n = m->num_params;
    m->params = ops->malloc(n * sizeof(float));
    m->grads = ops->malloc(n * sizeof(float));
    m->weights = ops->separate_compute_weights ? ops->malloc(n * ops->act_bytes) : (void*)m->params;
    m->lw = xcalloc(cfg->n_layers, sizeof(LayerWeights));
    m->lg = xcalloc(cfg->n_layers, sizeof(LayerWeights));
    layer_pointers(m, m->lw, m->weights, ops->act_bytes);
    layer_pointers(m, m->lg, m->grads, sizeof(float));
    int Lm = cfg_n_moe(cfg);
    m->router_bias = ops->malloc((size_t)(Lm > 0 ? Lm : 1) * cfg->n_experts * sizeof(float));
    m->expert_load = ops->malloc((size_t)(Lm > 0 ? Lm : 1) * cfg->n_experts * sizeof(float));
    m->maxlogit = ops->malloc((size_t)cfg->n_layers * cfg->n_heads * sizeof(float));
    m->aux_acc = ops->malloc(sizeof(float));
    m->prof_cat = PROF_NONE;
    model_zero_step_stats(m);
}

void model_init(Model* m, const ModelConfig* cfg, const Ops* ops, Comm* comm, const float* params_host, uint64_t seed) {
    model_alloc(m, cfg, ops, comm);
    if (params_host) {
        model_set_params(m, params_host);
    } else {
        // drawn in the global layout, so every expert split starts from the same model
        float* host = xmalloc(m->num_params_global * sizeof(float));
        Rng rng;
        rng_seed(&rng, seed);
        param_init(host, m->global_layout, cfg, &rng);
        model_set_params(m, host);
        free(host);
    }
}

void model_set_params(Model* m, const float* global) {
    float* local = xmalloc(m->num_params * sizeof(float));
    int Lm = cfg_n_moe(&m->cfg), E = m->cfg.n_experts, El = m->n_local_experts;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        const ParamTensor* lt = &m->layout[t];
        const ParamTensor* gt = &m->global_layout[t];
        if (!is_expert_tensor(t)) {
            memcpy(local + lt->offset, global + gt->offset, lt->numel * sizeof(float));
            continue;
        }
        size_t item = (size_t)lt->rows * lt->cols;  // one expert's matrix
        for (int mi = 0; mi < Lm; mi++)
            memcpy(local + lt->offset + (size_t)mi * El * item, global + gt->offset + ((size_t)mi * E + m->first_expert) * item,
                   (size_t)El * item * sizeof(float));
    }
    m->ops->to_device(m->params, local, m->num_params * sizeof(float));
    free(local);
    model_sync_weights(m);
}

void model_get_params(const Model* m, float* global) {
    float* local = xmalloc(m->num_params * sizeof(float));
    m->ops->to_host(local, m->params, m->num_params * sizeof(float));
    int Lm = cfg_n_moe(&m->cfg), E = m->cfg.n_experts, El = m->n_local_experts, ep = experts_ep(m);
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        const ParamTensor* lt = &m->layout[t];
        const ParamTensor* gt = &m->global_layout[t];
        if (!is_expert_tensor(t)) {
            memcpy(global + gt->offset, local + lt->offset, lt->numel * sizeof(float));
            continue;
        }
        // every member's experts, member-major, then into the global (layer, expert) order
        size_t item = (size_t)lt->rows * lt->cols;
        size_t per = lt->numel * sizeof(float);
        float* all = xmalloc(per * ep);
        experts_allgather(m, local + lt->offset, all, per);
        for (int j = 0; j < ep; j++)
            for (int mi = 0; mi < Lm; mi++)
                memcpy(global + gt->offset + ((size_t)mi * E + (size_t)j * El) * item,
                       all + (size_t)j * lt->numel + (size_t)mi * El * item, (size_t)El * item * sizeof(float));
        free(all);
    }
    free(local);
}

void model_free(Model* m) {
    const Ops* ops = m->ops;
    if (ops->separate_compute_weights) ops->free(m->weights);
    ops->free(m->params);
    ops->free(m->grads);
    ops->free(m->router_bias);
    ops->free(m->expert_load);
    ops->free(m->maxlogit);
    ops->free(m->aux_acc);
    free(m->lw);
    free(m->lg);
    memset(m, 0, sizeof(*m));
}

void* carve(Carver* cv, size_t bytes) {
    size_t start = (cv->used + 255) & ~(size_t)255;  // 256-byte aligned for any backend's vector loads
    cv->used = start + bytes;
    return cv->base ? cv->base + start : NULL;
}

static void acts_layout(Acts* a, const Model* m, Carver* cv) {
    const ModelConfig* c = &m->cfg;
    size_t N = (size_t)a->B * a->T, d = c->d_model, H = c->n_heads, K = c->top_k, E = c->n_experts;
    size_t dqk = cfg_dqk(c), akv = c->kv_lora + c->qk_rope, f = c->moe_hidden, fd = c->dense_hidden;
    size_t ab = m->ops->act_bytes, fb = sizeof(float), ib = sizeof(int);
    for (int l = 0; l < c->n_layers; l++) {
        LayerActs* la = &a->layers[l];
        int moe = l >= c->n_dense_layers;
        size_t fw = moe ? f : fd;
        la->x_in = carve(cv, N * d * ab);
        la->h = carve(cv, N * d * ab);
        la->rstd_h = carve(cv, N * fb);
        la->cq_pre = carve(cv, N * c->q_lora * ab);
        la->rstd_q = carve(cv, N * fb);
        la->cq = carve(cv, N * c->q_lora * ab);
        la->q = carve(cv, N * H * dqk * ab);
        la->a = carve(cv, N * akv * ab);
        la->rstd_kv = carve(cv, N * fb);
        la->ckv = carve(cv, N * c->kv_lora * ab);
        la->kv = carve(cv, N * H * (c->qk_nope + c->v_head) * ab);
        la->lse = carve(cv, N * H * fb);
        la->att = carve(cv, N * H * c->v_head * ab);
        la->x_mid = carve(cv, N * d * ab);
        la->h2 = carve(cv, N * d * ab);
        la->rstd_h2 = carve(cv, N * fb);
        la->h13 = carve(cv, N * 2 * fw * ab);
        la->hact = carve(cv, N * fw * ab);
        la->ffn_out = carve(cv, N * d * ab);
        if (moe) {
            la->scores = carve(cv, N * E * fb);
            la->sel = carve(cv, N * K * ib);
            la->gates = carve(cv, N * K * fb);
            la->offsets = carve(cv, (E + 1) * ib);
            la->row_of = carve(cv, N * K * ib);
            la->token_of = carve(cv, N * K * ib);
            la->xe = carve(cv, N * K * d * ab);
            la->ye = carve(cv, N * K * d * ab);
            experts_carve_layer(m, la, N, cv);
        }
    }
    a->x_final = carve(cv, N * d * ab);
    a->xf = carve(cv, N * d * ab);
    a->rstd_f = carve(cv, N * fb);
    a->logits = carve(cv, N * c->vocab_size * ab);
    a->losses = carve(cv, N * fb);
    a->tokens = carve(cv, N * ib);
    a->targets = carve(cv, N * ib);
    if (cfg_n_moe(c) > 0) experts_carve_transit(m, a, N, cv);
    if (a->has_grad) {
        GradScratch* g = &a->g;
        size_t fmax = fd > f ? fd : f;
        g->dx = carve(cv, N * d * ab);
        g->dn = carve(cv, N * d * ab);
        g->datt = carve(cv, N * H * c->v_head * ab);
        g->dq = carve(cv, N * H * dqk * ab);
        g->dkv = carve(cv, N * H * (c->qk_nope + c->v_head) * ab);
        g->da = carve(cv, N * akv * ab);
        g->dckv = carve(cv, N * c->kv_lora * ab);
        g->dcq = carve(cv, N * c->q_lora * ab);
        g->dcq_pre = carve(cv, N * c->q_lora * ab);
        g->dh13 = carve(cv, N * 2 * fmax * ab);
        g->dhact = carve(cv, N * fmax * ab);
        if (cfg_n_moe(c) > 0) {
            g->dscores = carve(cv, N * E * fb);
            g->dgates = carve(cv, N * K * fb);
            g->dye = carve(cv, N * K * d * ab);
            g->dxe = carve(cv, N * K * d * ab);
            experts_carve_grad(m, a, N, cv);
        }
    }
}

void acts_alloc(Acts* a, const Model* m, int B, int T, int with_grad) {
    memset(a, 0, sizeof(*a));
    a->B = B;
    a->T = T;
    a->has_grad = with_grad;
    a->layers = xcalloc(m->cfg.n_layers, sizeof(LayerActs));
    Carver cv = {NULL, 0};
    acts_layout(a, m, &cv);
    a->bytes = cv.used;
    a->memory = m->ops->malloc(cv.used);
    cv = (Carver){a->memory, 0};
    acts_layout(a, m, &cv);
    experts_acts_alloc(m, a);
}

void acts_free(Acts* a, const Model* m) {
    m->ops->free(a->memory);
    experts_acts_free(m, a);
    free(a->layers);
    memset(a, 0, sizeof(*a));
}

// ----------------------------------------------------------------------------
// profiling: each mark closes the running category's interval and opens the next

const char* const prof_names[PROF_N] = {
    "embedding_fwd", "norms_fwd", "attn_proj_fwd", "attention_fwd", "residual_fwd", "ffn_fwd", "routing_fwd",
    "expert_gemms_fwd", "lm_head_fwd", "loss_fwd",
    "embedding_bwd", "norms_bwd", "attn_proj_bwd", "attention_bwd", "residual_bwd", "ffn_bwd", "routing_bwd",
    "expert_gemms_bwd", "lm_head_bwd", "loss_bwd"};

void model_prof(Model* m, int cat) {
    if (!m->profile) return;
    if (cat != PROF_NONE && m->prof_backward) cat += PROF_PARTS;
    m->ops->sync();
    double t = wall_seconds();
    if (m->prof_cat != PROF_NONE) m->prof_seconds[m->prof_cat] += t - m->prof_t0;
    m->prof_t0 = t;
    m->prof_cat = cat;
}

void model_profile_reset(Model* m) {
    memset(m->prof_seconds, 0, sizeof(m->prof_seconds));
    m->prof_cat = PROF_NONE;
}

// ----------------------------------------------------------------------------
// forward

void model_forward(Model* m, Acts* a, const int* tokens, const int* targets, int B, int T) {
    const Ops* ops = m->ops;
    const ModelConfig* c = &m->cfg;
    if (B > a->B || T > a->T) fatal("model_forward: batch %dx%d exceeds the allocated %dx%d", B, T, a->B, a->T);
    int N = B * T, d = c->d_model, H = c->n_heads, K = c->top_k, E = c->n_experts;
    int nope = c->qk_nope, rope = c->qk_rope, dv = c->v_head, dqk = nope + rope, kvl = c->kv_lora;
    int akv = kvl + rope;
    MlaShape mla = {.B = B, .T = T, .H = H, .nope = nope, .rope = rope, .dv = dv, .kv_lora = kvl};
    MoeShape moe_shape = {.B = B, .T = T, .d = d, .E = E, .K = K};
    a->cur_B = B;
    a->cur_T = T;
    a->has_targets = targets != NULL;
    m->prof_backward = 0;
    model_prof(m, PROF_EMBEDDING);
    ops->to_device(a->tokens, tokens, (size_t)N * sizeof(int));
    if (targets) ops->to_device(a->targets, targets, (size_t)N * sizeof(int));
    ops->zero(m->aux_acc, sizeof(float));
    ops->embedding_forward(a->layers[0].x_in, a->tokens, tensor_item(m, m->weights, ops->act_bytes, P_WTE, 0), N, d);
    for (int l = 0; l < c->n_layers; l++) {
        LayerWeights* w = &m->lw[l];
        LayerActs* la = &a->layers[l];
        void* x_out = l + 1 < c->n_layers ? a->layers[l + 1].x_in : a->x_final;

        // --- MLA attention
        model_prof(m, PROF_NORMS);
        ops->rmsnorm_forward(la->h, la->rstd_h, la->x_in, d, w->attn_norm, N, d, c->norm_eps);
        model_prof(m, PROF_ATTN_PROJ);
        ops->matmul_forward(la->cq_pre, la->h, w->wdq, N, d, c->q_lora);
        model_prof(m, PROF_NORMS);
        ops->rmsnorm_forward(la->cq, la->rstd_q, la->cq_pre, c->q_lora, w->q_norm, N, c->q_lora, c->norm_eps);
        model_prof(m, PROF_ATTN_PROJ);
        ops->matmul_forward(la->q, la->cq, w->wuq, N, c->q_lora, H * dqk);
        ops->rope(la->q, N, T, H, H * dqk, dqk, nope, rope, c->rope_theta, 0);
        ops->matmul_forward(la->a, la->h, w->wdkv, N, d, akv);
        ops->rope(la->a, N, T, 1, akv, 0, kvl, rope, c->rope_theta, 0);
        model_prof(m, PROF_NORMS);
        ops->rmsnorm_forward(la->ckv, la->rstd_kv, la->a, akv, w->kv_norm, N, kvl, c->norm_eps);
        model_prof(m, PROF_ATTN_PROJ);
        ops->matmul_forward(la->kv, la->ckv, w->wukv, N, kvl, H * (nope + dv));
        model_prof(m, PROF_ATTENTION);
        ops->attention_forward(la->att, la->lse, m->maxlogit + (size_t)l * H, la->q, la->kv, la->a, mla);
        model_prof(m, PROF_ATTN_PROJ);
        ops->matmul_forward(la->x_mid, la->att, w->wo, N, H * dv, d);  // the projection, then the residual add
        model_prof(m, PROF_RESIDUAL);
        ops->add_inplace(la->x_mid, la->x_in, (size_t)N * d);

        // --- FFN: dense SwiGLU, or shared expert + routed experts
        model_prof(m, PROF_NORMS);
        ops->rmsnorm_forward(la->h2, la->rstd_h2, la->x_mid, d, w->ffn_norm, N, d, c->norm_eps);
        int moe = l >= c->n_dense_layers;
        int fw = moe ? c->moe_hidden : c->dense_hidden;
        model_prof(m, PROF_FFN);
        ops->matmul_forward(la->h13, la->h2, w->w13, N, d, 2 * fw);
        ops->swiglu_forward(la->hact, la->h13, N, fw);
        ops->matmul_forward(la->ffn_out, la->hact, w->w2, N, fw, d);
        if (moe) {
            int mi = l - c->n_dense_layers;
            float* bias = m->router_bias + (size_t)mi * E;
            model_prof(m, PROF_ROUTING);
            ops->moe_router_forward(la->scores, la->sel, la->gates, la->h2, w->router, bias, moe_shape, c->routed_scale);
            if (targets) ops->moe_balance_loss(m->aux_acc, la->scores, la->sel, moe_shape, m->balance_alpha);
            ops->moe_dispatch(la->offsets, la->row_of, la->token_of, m->expert_load + (size_t)mi * E, la->sel, moe_shape);
            ops->moe_gather(la->xe, la->h2, la->token_of, N * K, d);
            experts_forward(m, a, la, w);  // ye: the experts' outputs, wherever the experts are
            ops->moe_combine_forward(la->ffn_out, la->ye, la->gates, la->row_of, moe_shape);
        }
        model_prof(m, PROF_RESIDUAL);
        ops->add(x_out, la->x_mid, la->ffn_out, (size_t)N * d);
    }
    model_prof(m, PROF_NORMS);
    ops->rmsnorm_forward(a->xf, a->rstd_f, a->x_final, d, tensor_item(m, m->weights, ops->act_bytes, P_FINAL_NORM, 0),
                         N, d, c->norm_eps);
    model_prof(m, PROF_LM_HEAD);
    ops->matmul_forward(a->logits, a->xf, tensor_item(m, m->weights, ops->act_bytes, P_LM_HEAD, 0), N, d, c->vocab_size);

    if (targets) {
        model_prof(m, PROF_LOSS);
        ops->crossentropy_forward(a->losses, a->logits, a->targets, N, c->vocab_size);
        float* losses = xmalloc((size_t)N * sizeof(float));
        ops->to_host(losses, a->losses, (size_t)N * sizeof(float));
        double sum = 0.0;
        for (int n = 0; n < N; n++) sum += losses[n];
        free(losses);
        m->ce_loss = (float)(sum / N);
        ops->to_host(&m->aux_loss, m->aux_acc, sizeof(float));
    }
    model_prof(m, PROF_NONE);
}

// ----------------------------------------------------------------------------
// backward

void model_backward(Model* m, Acts* a, float loss_scale) {
    const Ops* ops = m->ops;
    const ModelConfig* c = &m->cfg;
    if (!a->has_grad) fatal("model_backward: activations were allocated without gradient buffers");
    if (!a->has_targets) fatal("model_backward: the last forward had no targets");
    int B = a->cur_B, T = a->cur_T, N = B * T, d = c->d_model, H = c->n_heads, K = c->top_k, E = c->n_experts;
    int nope = c->qk_nope, rope = c->qk_rope, dv = c->v_head, dqk = nope + rope, kvl = c->kv_lora;
    int akv = kvl + rope, V = c->vocab_size;
    MlaShape mla = {.B = B, .T = T, .H = H, .nope = nope, .rope = rope, .dv = dv, .kv_lora = kvl};
    MoeShape moe_shape = {.B = B, .T = T, .d = d, .E = E, .K = K};
    GradScratch* g = &a->g;
    size_t ab = ops->act_bytes;

    // loss = mean over rows of cross-entropy: each row's dloss is loss_scale / N
    m->prof_backward = 1;
    model_prof(m, PROF_LOSS);
    ops->crossentropy_backward(a->logits, a->logits, a->targets, loss_scale / N, N, V);
    model_prof(m, PROF_LM_HEAD);
    ops->matmul_backward(g->dn, 0, tensor_item(m, m->grads, sizeof(float), P_LM_HEAD, 0), a->logits, a->xf,
                         tensor_item(m, m->weights, ab, P_LM_HEAD, 0), N, d, V);
    model_prof(m, PROF_NORMS);
    ops->rmsnorm_backward(g->dx, d, 0, tensor_item(m, m->grads, sizeof(float), P_FINAL_NORM, 0), g->dn, a->x_final,
                          tensor_item(m, m->weights, ab, P_FINAL_NORM, 0), a->rstd_f, N, d);

    for (int l = c->n_layers - 1; l >= 0; l--) {
        LayerWeights* w = &m->lw[l];
        LayerWeights* wg = &m->lg[l];
        LayerActs* la = &a->layers[l];
        int moe = l >= c->n_dense_layers;
        int fw = moe ? c->moe_hidden : c->dense_hidden;

        // --- FFN. dx is d loss / d x_out; it is also the gradient of ffn_out and, through the residual, of x_mid.
        model_prof(m, PROF_FFN);
        ops->matmul_backward(g->dhact, 0, wg->w2, g->dx, la->hact, w->w2, N, fw, d);
        ops->swiglu_backward(g->dh13, g->dhact, la->h13, N, fw);
        ops->matmul_backward(g->dn, 0, wg->w13, g->dh13, la->h2, w->w13, N, d, 2 * fw);
        if (moe) {
            model_prof(m, PROF_ROUTING);
            ops->moe_combine_backward(g->dye, g->dgates, g->dx, la->ye, la->gates, la->row_of, moe_shape);
            experts_backward(m, a, la, w, wg);  // dxe, and the experts' gradients
            ops->moe_gather_backward(g->dn, g->dxe, la->row_of, moe_shape);
            BalanceGrad bal = balance_grad(B, T, E, K, m->balance_alpha, loss_scale);
            ops->moe_router_backward(g->dn, wg->router, g->dscores, g->dgates, la->scores, la->sel, la->h2, w->router,
                                     moe_shape, c->routed_scale, bal);
        }
        model_prof(m, PROF_NORMS);
        ops->rmsnorm_backward(g->dx, d, 1, wg->ffn_norm, g->dn, la->x_mid, w->ffn_norm, la->rstd_h2, N, d);

        // --- attention. dx is now d loss / d x_mid.
        model_prof(m, PROF_ATTN_PROJ);
        ops->matmul_backward(g->datt, 0, wg->wo, g->dx, la->att, w->wo, N, H * dv, d);
        model_prof(m, PROF_ATTENTION);
        ops->attention_backward(g->dq, g->dkv, g->da, g->datt, la->q, la->kv, la->a, la->att, la->lse, mla);
        model_prof(m, PROF_ATTN_PROJ);
        ops->rope(g->dq, N, T, H, H * dqk, dqk, nope, rope, c->rope_theta, 1);
        ops->rope(g->da, N, T, 1, akv, 0, kvl, rope, c->rope_theta, 1);
        ops->matmul_backward(g->dckv, 0, wg->wukv, g->dkv, la->ckv, w->wukv, N, kvl, H * (nope + dv));
        model_prof(m, PROF_NORMS);
        ops->rmsnorm_backward(g->da, akv, 0, wg->kv_norm, g->dckv, la->a, w->kv_norm, la->rstd_kv, N, kvl);
        model_prof(m, PROF_ATTN_PROJ);
        ops->matmul_backward(g->dcq, 0, wg->wuq, g->dq, la->cq, w->wuq, N, c->q_lora, H * dqk);
        model_prof(m, PROF_NORMS);
        ops->rmsnorm_backward(g->dcq_pre, c->q_lora, 0, wg->q_norm, g->dcq, la->cq_pre, w->q_norm, la->rstd_q, N,
                              c->q_lora);
        model_prof(m, PROF_ATTN_PROJ);
        ops->matmul_backward(g->dn, 0, wg->wdq, g->dcq_pre, la->h, w->wdq, N, d, c->q_lora);
        ops->matmul_backward(g->dn, 1, wg->wdkv, g->da, la->h, w->wdkv, N, d, akv);
        model_prof(m, PROF_NORMS);
        ops->rmsnorm_backward(g->dx, d, 1, wg->attn_norm, g->dn, la->x_in, w->attn_norm, la->rstd_h, N, d);
    }
    model_prof(m, PROF_EMBEDDING);
    ops->embedding_backward(tensor_item(m, m->grads, sizeof(float), P_WTE, 0), g->dx, a->tokens, N, d);
    model_prof(m, PROF_NONE);
    m->prof_backward = 0;
}

// ----------------------------------------------------------------------------
// step bookkeeping

void model_zero_grad(Model* m) { m->ops->zero(m->grads, m->num_params * sizeof(float)); }

void model_zero_step_stats(Model* m) {
    const ModelConfig* c = &m->cfg;
    size_t nl = (size_t)c->n_layers * c->n_heads;
    float* neg = xmalloc(nl * sizeof(float));
    for (size_t i = 0; i < nl; i++) neg[i] = -INFINITY;
    m->ops->to_device(m->maxlogit, neg, nl * sizeof(float));
    free(neg);
    int Lm = cfg_n_moe(c);
    m->ops->zero(m->expert_load, (size_t)(Lm > 0 ? Lm : 1) * c->n_experts * sizeof(float));
}

void model_sync_weights(Model* m) {
    if (m->ops->separate_compute_weights) m->ops->weights_to_compute(m->weights, m->params, m->num_params);
}

void model_update_router_bias(Model* m, float gamma) {
    const ModelConfig* c = &m->cfg;
    int Lm = cfg_n_moe(c), E = c->n_experts;
    if (Lm == 0) return;
    size_t n = (size_t)Lm * E;
    float* load = xmalloc(n * sizeof(float));
    float* bias = xmalloc(n * sizeof(float));
    m->ops->to_host(load, m->expert_load, n * sizeof(float));
    m->ops->to_host(bias, m->router_bias, n * sizeof(float));
    for (int mi = 0; mi < Lm; mi++) {
        double total = 0.0;
        for (int e = 0; e < E; e++) total += load[(size_t)mi * E + e];
        double mean = total / E;
        for (int e = 0; e < E; e++) {
            double diff = mean - load[(size_t)mi * E + e];
            float sgn = diff > 0 ? 1.0f : (diff < 0 ? -1.0f : 0.0f);
            bias[(size_t)mi * E + e] += gamma * sgn;
        }
    }
    m->ops->to_device(m->router_bias, bias, n * sizeof(float));
    free(load);
    free(bias);
}

void model_logits_row(const Model* m, const Acts* a, int row, float* out) {
    size_t V = m->cfg.vocab_size;
    m->ops->act_to_host_f32(out, ops_at(m->ops, a->logits, (size_t)row * V), V);
}

void model_final_hidden(const Model* m, const Acts* a, float* xf, int* targets) {
    size_t N = (size_t)a->cur_B * a->cur_T;
    m->ops->act_to_host_f32(xf, a->xf, N * m->cfg.d_model);
    m->ops->to_host(targets, a->targets, N * sizeof(int));
}

void model_get_maxlogit(const Model* m, float* out) {
    m->ops->to_host(out, m->maxlogit, (size_t)m->cfg.n_layers * m->cfg.n_heads * sizeof(float));
}

void model_get_expert_load(const Model* m, float* out) {
    int Lm = cfg_n_moe(&m->cfg);
    if (Lm > 0) m->ops->to_host(out, m->expert_load, (size_t)Lm * m->cfg.n_experts * sizeof(float));
}
