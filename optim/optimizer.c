// optim/optimizer.c: the optimizer step. Which tensor goes to AdamW or Muon; how the work (and the state) is split
// over the ranks (ZeRO-1: AdamW tensors by element ranges, Muon tensors by whole matrices balanced by
// Newton-Schulz cost); the update of this rank's units; the gather of the new weights; the global gradient norm.
#include "optim.h"
#include <math.h>

const char* optim_kind_name(OptimKind k) { return k == OPTIM_MUON ? "muon" : "adamw"; }

static CommGroup tensor_group(int t) { return is_expert_tensor(t) ? GROUP_DP : GROUP_WORLD; }

// Splits every tensor among the members of its group. Deterministic: every rank computes the same table.
static void split_work(Optimizer* opt, const Model* model) {
    Comm* c = opt->comm;
    int max_units = 0;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) max_units += c ? comm_group_size(c, tensor_group(t)) : 1;
    opt->units = xcalloc(max_units, sizeof(OptUnit));
    double* load[2] = {xcalloc(c ? c->world : 1, sizeof(double)), xcalloc(c ? c->world : 1, sizeof(double))};
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        const ParamTensor* p = &model->layout[t];
        if (p->numel == 0) continue;
        int g = tensor_group(t), P = c ? comm_group_size(c, g) : 1;
        double* cost = load[g == GROUP_DP];
        if (opt->use_muon[t]) {
            // whole matrices: each member gets nm / P of them; the leftovers go to the members with the least
            // Newton-Schulz work so far (the first that least, on ties), one each
            int rm = p->rows / p->row_blocks, nm = p->count * p->row_blocks;
            double per = newton_schulz_flops(rm, p->cols, opt->ns_steps);
            int q = nm / P, rem = nm % P;
            int* extra = xcalloc(P, sizeof(int));
            for (int k = 0; k < rem; k++) {
                int best = -1;
                for (int j = 0; j < P; j++)
                    if (!extra[j] && (best < 0 || cost[j] < cost[best])) best = j;
                extra[best] = 1;
            }
            int mat = 0;
            for (int j = 0; j < P; j++) {
                int cnt = q + extra[j];
                if (cnt == 0) continue;
                OptUnit* u = &opt->units[opt->n_units++];
                u->tensor = t;
                u->muon = 1;
                u->mat0 = mat;
                u->mat1 = mat + cnt;
                u->begin = p->offset + (size_t)mat * rm * p->cols;
                u->end = p->offset + (size_t)(mat + cnt) * rm * p->cols;
                u->owner = j;
                cost[j] += cnt * per;
                mat += cnt;
            }
            free(extra);
        } else {
            // element ranges (AdamW is element-wise)
            for (int j = 0; j < P; j++) {
                size_t a = p->numel * j / P, b = p->numel * (j + 1) / P;
                if (a == b) continue;
                OptUnit* u = &opt->units[opt->n_units++];
                u->tensor = t;
                u->begin = p->offset + a;
                u->end = p->offset + b;
                u->owner = j;
            }
        }
    }
    free(load[0]);
    free(load[1]);
}

static int unit_is_mine(const Optimizer* opt, const OptUnit* u) {
    return !opt->comm || u->owner == comm_group_rank(opt->comm, tensor_group(u->tensor));
}

void optimizer_init(Optimizer* opt, const Model* model, const OptimConfig* cfg) {
    memset(opt, 0, sizeof(*opt));
    opt->cfg = *cfg;
    opt->comm = model->comm;
    opt->adamw_lr_scale = 1.0f;
    if (cfg->kind == OPTIM_MUON) {
        opt->ns_steps = newton_schulz_table(cfg->ns_table, opt->ns_coeffs);
        if (!opt->ns_steps) fatal("flag --ns = '%s' must be default or polar", cfg->ns_table);
    }
    // which tensors go to Muon: the hidden matrices (the router optionally); never the embedding, head or gains
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        int muon = cfg->kind == OPTIM_MUON && model->layout[i].kind == PARAM_MATRIX;
        if (i == P_ROUTER && !cfg->muon_router) muon = 0;
        opt->use_muon[i] = muon;
    }
    split_work(opt, model);
    for (int k = 0; k < opt->n_units; k++) {
        OptUnit* u = &opt->units[k];
        if (!unit_is_mine(opt, u)) continue;
        size_t n = u->end - u->begin;
        if (u->muon) {
            u->state_off = opt->muon_n;
            opt->muon_n += n;
            if (n > opt->scratch_n) opt->scratch_n = n;
            const ParamTensor* p = &model->layout[u->tensor];
            opt->ns_flops_rank += (u->mat1 - u->mat0) * newton_schulz_flops(p->rows / p->row_blocks, p->cols, opt->ns_steps);
        } else {
            u->state_off = opt->adam_n;
            opt->adam_n += n;
        }
    }
    const Ops* ops = model->ops;
    opt->adam_m = ops->malloc((opt->adam_n ? opt->adam_n : 1) * sizeof(float));
    opt->adam_v = ops->malloc((opt->adam_n ? opt->adam_n : 1) * sizeof(float));
    opt->muon_m = ops->malloc((opt->muon_n ? opt->muon_n : 1) * sizeof(float));
    opt->scratch = ops->malloc((opt->scratch_n ? opt->scratch_n : 1) * sizeof(float));
    if (opt->comm && opt->comm->world > 1) {
        opt->gather_n = model->num_params;
        opt->gather_buf = xmalloc(2 * opt->gather_n * sizeof(float));
    }
}

void optimizer_free(Optimizer* opt, const Model* model) {
    const Ops* ops = model->ops;
    ops->free(opt->adam_m);
    ops->free(opt->adam_v);
    ops->free(opt->muon_m);
    ops->free(opt->scratch);
    free(opt->units);
    free(opt->gather_buf);
}

// in muon.c: one Muon update of a unit; returns the sum of squares of its scaled orthogonalised update
double muon_update_unit(Optimizer* opt, Model* model, const OptUnit* u, float lr, float grad_scale);

// Every member of the group gets every other member's updated units of the group's tensors (fp32 master values).
// On NCCL, in place on the GPU: each unit is broadcast from its owner. Otherwise through host memory: pack mine,
// gather, unpack theirs (ops->to_host / to_device copy device memory on the CUDA backend).
static void gather_updates(Optimizer* opt, Model* model, CommGroup g) {
    Comm* c = opt->comm;
    int P = comm_group_size(c, g), me = comm_group_rank(c, g);
    if (P == 1) return;
    if (comm_dev_direct(c)) {
        size_t* offs = xmalloc((opt->n_units + 1) * sizeof(size_t));
        size_t* bytes = xmalloc((opt->n_units + 1) * sizeof(size_t));
        int* roots = xmalloc((opt->n_units + 1) * sizeof(int));
        int n = 0;
        for (int k = 0; k < opt->n_units; k++) {
            const OptUnit* u = &opt->units[k];
            if (tensor_group(u->tensor) != g) continue;
            offs[n] = u->begin * sizeof(float);
            bytes[n] = (u->end - u->begin) * sizeof(float);
            roots[n++] = u->owner;
        }
        comm_dev_broadcast_pieces(c, g, model->params, n, offs, bytes, roots);
        free(offs);
        free(bytes);
        free(roots);
        return;
    }
    size_t* counts = xcalloc(P, sizeof(size_t));
    size_t* displs = xcalloc(P, sizeof(size_t));
    for (int k = 0; k < opt->n_units; k++) {
        const OptUnit* u = &opt->units[k];
        if (tensor_group(u->tensor) == g) counts[u->owner] += (u->end - u->begin) * sizeof(float);
    }
    for (int j = 1; j < P; j++) displs[j] = displs[j - 1] + counts[j - 1];
    float* send = opt->gather_buf;
    float* recv = opt->gather_buf + opt->gather_n;
    const Ops* ops = model->ops;
    size_t pos = 0;
    for (int k = 0; k < opt->n_units; k++) {
        const OptUnit* u = &opt->units[k];
        if (tensor_group(u->tensor) != g || u->owner != me) continue;
        ops->to_host(send + pos, model->params + u->begin, (u->end - u->begin) * sizeof(float));
        pos += u->end - u->begin;
    }
    comm_allgatherv_bytes(c, g, send, recv, counts, displs);
    size_t* cursor = xcalloc(P, sizeof(size_t));
    for (int k = 0; k < opt->n_units; k++) {
        const OptUnit* u = &opt->units[k];
        if (tensor_group(u->tensor) != g) continue;
        size_t n = u->end - u->begin;
        if (u->owner != me)
            ops->to_device(model->params + u->begin, (char*)recv + displs[u->owner] + cursor[u->owner], n * sizeof(float));
        cursor[u->owner] += n * sizeof(float);
    }
    free(cursor);
    free(counts);
    free(displs);
}

void optimizer_step(Optimizer* opt, Model* model, float lr, float grad_scale) {
    double t0 = wall_seconds();
    opt->t++;
    opt->ns_seconds = 0.0;
    float inv_bc1 = adamw_inv_bias_correction(opt->cfg.b1, opt->t), inv_bc2 = adamw_inv_bias_correction(opt->cfg.b2, opt->t);
    double stats[3] = {0.0, 0.0, 0.0};  // Muon update sum of squares, Muon elements, Newton-Schulz FLOPs
    for (int k = 0; k < opt->n_units; k++) {
        const OptUnit* u = &opt->units[k];
        if (!unit_is_mine(opt, u)) continue;
        const ParamTensor* t = &model->layout[u->tensor];
        size_t n = u->end - u->begin;
        if (u->muon) {
            stats[0] += muon_update_unit(opt, model, u, lr, grad_scale);
            stats[1] += n;
            stats[2] += (u->mat1 - u->mat0) * newton_schulz_flops(t->rows / t->row_blocks, t->cols, opt->ns_steps);
        } else {
            float wd = param_decays(t) ? opt->cfg.weight_decay : 0.0f;
            model->ops->adamw_update(model->params + u->begin, model->grads + u->begin, opt->adam_m + u->state_off,
                                     opt->adam_v + u->state_off, n, lr * opt->adamw_lr_scale, opt->cfg.b1, opt->cfg.b2, opt->cfg.eps, wd,
                                     grad_scale, inv_bc1, inv_bc2);
        }
    }
    if (opt->comm && opt->comm->world > 1) {
        gather_updates(opt, model, GROUP_WORLD);
        gather_updates(opt, model, GROUP_DP);
        comm_allreduce_sum_f64(opt->comm, GROUP_WORLD, stats, 3);  // every unit is owned once in the world
    }
    opt->muon_update_rms = stats[1] > 0 ? sqrt(stats[0] / stats[1]) : 0.0;
    opt->ns_flops = stats[2];
    model_sync_weights(model);
    model->ops->sync();
    opt->seconds = wall_seconds() - t0;
}

float grad_global_norm(const Model* model) {
    const Comm* c = model->comm;
    if (!c || c->world == 1) return (float)sqrt(model->ops->sum_squares(model->grads, model->num_params));
    // after the gradient reduction the non-expert gradients are the same on every rank and the expert ones the
    // same within each expert data-parallel group: count the first once, sum the second over the expert shards
    size_t e0 = model->layout[P_EXPERT_W13].offset, e1 = model->layout[P_EXPERT_W2].offset + model->layout[P_EXPERT_W2].numel;
    const Ops* ops = model->ops;
    double shared = ops->sum_squares(model->grads, e0) + ops->sum_squares(model->grads + e1, model->num_params - e1);
    double experts = ops->sum_squares(model->grads + e0, e1 - e0);
    comm_allreduce_sum_f64((Comm*)c, GROUP_EP, &experts, 1);
    return (float)sqrt(shared + experts);
}
