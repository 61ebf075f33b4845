// optim/adamw.c: AdamW (decoupled weight decay) over the flat parameter array, one call per tensor so each
// tensor gets its own weight-decay setting, and the global gradient norm.
#include "optim.h"
#include <math.h>

void adamw_init(AdamW* opt, const Model* model, float b1, float b2, float eps, float weight_decay) {
    opt->b1 = b1;
    opt->b2 = b2;
    opt->eps = eps;
    opt->weight_decay = weight_decay;
    opt->m = model->ops->malloc(model->num_params * sizeof(float));
    opt->v = model->ops->malloc(model->num_params * sizeof(float));
    opt->t = 0;
}

void adamw_free(AdamW* opt, const Model* model) {
    model->ops->free(opt->m);
    model->ops->free(opt->v);
}

void adamw_step(AdamW* opt, Model* model, float lr, float grad_scale) {
    opt->t++;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        const ParamTensor* t = &model->layout[i];
        if (t->numel == 0) continue;
        float wd = param_decays(t) ? opt->weight_decay : 0.0f;
        model->ops->adamw_update(model->params + t->offset, model->grads + t->offset, opt->m + t->offset,
                                 opt->v + t->offset, t->numel, lr, opt->b1, opt->b2, opt->eps, wd, grad_scale, opt->t);
    }
    model_sync_weights(model);
}

float grad_global_norm(const Model* model) {
    return (float)sqrt(model->ops->sum_squares(model->grads, model->num_params));
}
