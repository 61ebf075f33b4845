// optim/qkclip.c: QK-Clip, the "Clip" of Kimi K2's MuonClip. After the update, a head whose max scaled attention
// logit over the step passed tau gets gamma = tau / max: its query nope rows and key nope rows scaled by
// sqrt(gamma) (their product by gamma) and its query rope rows by gamma (the rope key is shared by all heads, so
// it stays). The logit is bilinear in these rows, so the same batch would now peak at exactly tau.
#include "optim.h"
#include <math.h>

int qk_clip(Model* model, float tau, int* clipped) {
    const ModelConfig* c = &model->cfg;
    int L = c->n_layers, H = c->n_heads, nope = c->qk_nope, rope = c->qk_rope, dv = c->v_head, dqk = nope + rope;
    if (clipped) memset(clipped, 0, (size_t)L * H * sizeof(int));
    if (tau <= 0.0f) return 0;
    float* maxlogit = xmalloc((size_t)L * H * sizeof(float));
    model_get_maxlogit(model, maxlogit);
    const Ops* ops = model->ops;
    const ParamTensor* wuq = &model->layout[P_WUQ];
    const ParamTensor* wukv = &model->layout[P_WUKV];
    int n = 0;
    for (int l = 0; l < L; l++)
        for (int h = 0; h < H; h++) {
            float s = maxlogit[l * H + h];
            if (!(s > tau)) continue;
            float gamma = tau / s;
            float root = sqrtf(gamma);
            float* q = model->params + wuq->offset + (size_t)l * wuq->rows * wuq->cols;
            float* kv = model->params + wukv->offset + (size_t)l * wukv->rows * wukv->cols;
            ops->scale_rows(q, h * dqk, nope, wuq->cols, root);
            ops->scale_rows(q, h * dqk + nope, rope, wuq->cols, gamma);
            ops->scale_rows(kv, h * (nope + dv), nope, wukv->cols, root);
            if (clipped) clipped[l * H + h] = 1;
            n++;
        }
    free(maxlogit);
    // the compute copy (bf16 on a GPU) must see the clip too
    if (n) model_sync_weights(model);
    return n;
}
