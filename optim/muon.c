// optim/muon.c: Muon for a run of same-shape matrices (MODEL.md): Nesterov momentum, Newton-Schulz orthogonalisation
// of every matrix of the run as one batch, the RMS-matched update with decoupled weight decay.
#include "optim.h"
#include <math.h>

// Keller Jordan's quintic, the same coefficients every iteration
static const float ns_default[5][3] = {
    {3.4445f, -4.7750f, 2.0315f}, {3.4445f, -4.7750f, 2.0315f}, {3.4445f, -4.7750f, 2.0315f},
    {3.4445f, -4.7750f, 2.0315f}, {3.4445f, -4.7750f, 2.0315f},
};
// Polar Express (Amsel et al., arXiv 2505.16932): 5 iterations, safety factor 2e-2, cushion 2
static const float ns_polar[5][3] = {
    {8.156554524902461f, -22.48329292557795f, 15.878769915207462f},
    {4.042929935166739f, -2.808917465908714f, 0.5000178451051316f},
    {3.8916678022926607f, -2.772484153217685f, 0.5060648178503393f},
    {3.285753657755655f, -2.3681294933425376f, 0.46449024233003106f},
    {2.3465413258596377f, -1.7097828382687081f, 0.42323551169305323f},
};

int newton_schulz_table(const char* name, float* coeffs) {
    const float(*table)[3] = NULL;
    if (!strcmp(name, "default")) table = ns_default;
    else if (!strcmp(name, "polar")) table = ns_polar;
    else return 0;
    memcpy(coeffs, table, 5 * 3 * sizeof(float));
    return 5;
}

double newton_schulz_flops(int rows, int cols, int steps) {
    double n = rows < cols ? rows : cols, m = rows < cols ? cols : rows;
    return steps * (4.0 * n * n * m + 2.0 * n * n * n);
}

double muon_update_unit(Optimizer* opt, Model* model, const OptUnit* u, float lr, float grad_scale) {
    const ParamTensor* t = &model->layout[u->tensor];
    const Ops* ops = model->ops;
    size_t n = u->end - u->begin;
    float* x = opt->scratch;
    // M = mu M + G ; U = G + mu M
    ops->muon_momentum(opt->muon_m + u->state_off, x, model->grads + u->begin, n, opt->cfg.mu, grad_scale);
    // the unit's matrices (a run of layers x experts x row blocks), each (rows, cols), orthogonalised in one call
    int rows = t->rows / t->row_blocks, cols = t->cols;
    ops->sync();
    double t0 = wall_seconds();
    ops->newton_schulz(x, u->mat1 - u->mat0, rows, cols, opt->ns_coeffs, opt->ns_steps, opt->cfg.ns_bf16);
    ops->sync();
    opt->ns_seconds += wall_seconds() - t0;
    // W -= lr (0.2 sqrt(max(A, B)) O + wd W): the 0.2 sqrt(max) gives the update AdamW's RMS, so lr and wd carry over
    float scale = 0.2f * sqrtf((float)(rows > cols ? rows : cols));
    return ops->muon_update(model->params + u->begin, x, n, lr, scale, opt->cfg.weight_decay);
}
