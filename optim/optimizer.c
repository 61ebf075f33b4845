// optim/optimizer.c: the optimizer step: AdamW (decoupled weight decay) for the tensors it owns, Muon (muon.c) for
// the rest, one call per tensor so each tensor gets its own weight-decay rule; and the global gradient norm.
#include "optim.h"
#include <math.h>

const char* optim_kind_name(OptimKind k) { return k == OPTIM_MUON ? "muon" : "adamw"; }

void optimizer_init(Optimizer* opt, const Model* model, const OptimConfig* cfg) {
    memset(opt, 0, sizeof(*opt));
    opt->cfg = *cfg;
    if (cfg->kind == OPTIM_MUON) {
        opt->ns_steps = newton_schulz_table(cfg->ns_table, opt->ns_coeffs);
        if (!opt->ns_steps) fatal("flag --ns = '%s' must be default or polar", cfg->ns_table);
    }
    // which tensors go to Muon: the hidden matrices (the router optionally); never the embedding, head or gains
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        const ParamTensor* t = &model->layout[i];
        int muon = cfg->kind == OPTIM_MUON && t->kind == PARAM_MATRIX;
        if (i == P_ROUTER && !cfg->muon_router) muon = 0;
        opt->use_muon[i] = muon;
        if (muon) {
            opt->state_off[i] = opt->muon_n;
            opt->muon_n += t->numel;
            if (t->numel > opt->scratch_n) opt->scratch_n = t->numel;
        } else {
            opt->state_off[i] = opt->adam_n;
            opt->adam_n += t->numel;
        }
    }
    const Ops* ops = model->ops;
    opt->adam_m = ops->malloc(opt->adam_n * sizeof(float));
    opt->adam_v = ops->malloc(opt->adam_n * sizeof(float));
    opt->muon_m = ops->malloc((opt->muon_n ? opt->muon_n : 1) * sizeof(float));
    opt->scratch = ops->malloc((opt->scratch_n ? opt->scratch_n : 1) * sizeof(float));
}

void optimizer_free(Optimizer* opt, const Model* model) {
    const Ops* ops = model->ops;
    ops->free(opt->adam_m);
    ops->free(opt->adam_v);
    ops->free(opt->muon_m);
    ops->free(opt->scratch);
}

// in muon.c: one Muon update of tensor i; returns the sum of squares of its scaled orthogonalised update
double muon_update_tensor(Optimizer* opt, Model* model, int i, float lr, float grad_scale);

void optimizer_step(Optimizer* opt, Model* model, float lr, float grad_scale) {
    double t0 = wall_seconds();
    opt->t++;
    opt->ns_flops = 0.0;
    double muon_sq = 0.0;
    size_t muon_elems = 0;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        const ParamTensor* t = &model->layout[i];
        if (t->numel == 0) continue;
        if (opt->use_muon[i]) {
            muon_sq += muon_update_tensor(opt, model, i, lr, grad_scale);
            muon_elems += t->numel;
        } else {
            float wd = param_decays(t) ? opt->cfg.weight_decay : 0.0f;
            model->ops->adamw_update(model->params + t->offset, model->grads + t->offset, opt->adam_m + opt->state_off[i],
                                     opt->adam_v + opt->state_off[i], t->numel, lr, opt->cfg.b1, opt->cfg.b2,
                                     opt->cfg.eps, wd, grad_scale, opt->t);
        }
    }
    opt->muon_update_rms = muon_elems ? sqrt(muon_sq / muon_elems) : 0.0;
    model_sync_weights(model);
    model->ops->sync();
    opt->seconds = wall_seconds() - t0;
}

float grad_global_norm(const Model* model) {
    return (float)sqrt(model->ops->sum_squares(model->grads, model->num_params));
}
