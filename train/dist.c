// train/dist.c: see dist.h.
#include "dist.h"
#include "../comm/comm.h"

static int multi(const Model* m) { return m->comm && m->comm->world > 1; }

void dist_reduce_grads(Model* m) {
    if (!multi(m)) return;
    size_t e0 = m->layout[P_EXPERT_W13].offset;
    size_t e1 = m->layout[P_EXPERT_W2].offset + m->layout[P_EXPERT_W2].numel;
    // the model's buffers (device memory on the CUDA backend): the comm_dev_* collectives
    comm_dev_allreduce_sum_f32(m->comm, GROUP_WORLD, m->grads, e0);
    comm_dev_allreduce_sum_f32(m->comm, GROUP_WORLD, m->grads + e1, m->num_params - e1);
    comm_dev_allreduce_sum_f32(m->comm, GROUP_DP, m->grads + e0, e1 - e0);
}

void dist_reduce_step_stats(Model* m) {
    if (!multi(m)) return;
    const ModelConfig* c = &m->cfg;
    size_t nl = (size_t)cfg_n_moe(c) * c->n_experts, nh = (size_t)c->n_layers * c->n_heads;
    if (nl) comm_dev_allreduce_sum_f32(m->comm, GROUP_WORLD, m->expert_load, nl);
    comm_dev_allreduce_max_f32(m->comm, GROUP_WORLD, m->maxlogit, nh);
}

double dist_mean(Model* m, double v) {
    if (!multi(m)) return v;
    comm_allreduce_sum_f64(m->comm, GROUP_WORLD, &v, 1);
    return v / m->comm->world;
}
