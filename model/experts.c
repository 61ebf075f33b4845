// model/experts.c: the routed experts behind one seam (experts.h). Two implementations of the same contract:
//   local:      one rank holds every expert; the dispatch order is already expert-major, so the experts run on the
//               dispatched rows in place;
//   all-to-all: each rank holds n_local of every MoE layer's experts; the rows routed to an expert travel to its
//               owner (all-to-all within the expert-parallel group), are computed there, and come back.
#include "experts.h"
#include "../comm/comm.h"

int experts_ep(const Model* m) { return m->comm ? m->comm->ep : 1; }

void experts_split(Model* m, Comm* comm) {
    int ep = comm ? comm->ep : 1;
    m->n_local_experts = m->cfg.n_experts / ep;
    m->first_expert = comm ? comm->ep_rank * m->n_local_experts : 0;
}

void experts_allgather(const Model* m, const float* local, float* all, size_t per_bytes) {
    int ep = experts_ep(m);
    if (ep == 1) {
        memcpy(all, local, per_bytes);
        return;
    }
    size_t* counts = xmalloc(ep * sizeof(size_t));
    size_t* displs = xmalloc(ep * sizeof(size_t));
    for (int j = 0; j < ep; j++) { counts[j] = per_bytes; displs[j] = per_bytes * j; }
    comm_allgatherv_bytes(m->comm, GROUP_EP, local, all, counts, displs);
    free(counts);
    free(displs);
}

// ----------------------------------------------------------------------------
// buffers

// rows this rank's experts may receive: dropless, so the worst case (every member's every choice)
static size_t max_rows(const Model* m, size_t N) { return (size_t)experts_ep(m) * N * m->cfg.top_k; }

void experts_carve_layer(const Model* m, LayerActs* la, size_t N, Carver* cv) {
    size_t R = max_rows(m, N), d = m->cfg.d_model, f = m->cfg.moe_hidden, ab = m->ops->act_bytes;
    la->e_h13 = carve(cv, R * 2 * f * ab);
    la->e_hact = carve(cv, R * f * ab);
    if (experts_ep(m) > 1) {
        la->xl = carve(cv, R * d * ab);
        la->ep_offsets = carve(cv, (m->n_local_experts + 1) * sizeof(int));
        la->ep_perm = carve(cv, R * sizeof(int));
        la->ep_inv = carve(cv, R * sizeof(int));
    } else {
        la->xl = la->xe;  // one process holds every expert: the dispatch order is already expert-major
    }
}

void experts_carve_transit(const Model* m, Acts* a, size_t N, Carver* cv) {
    if (experts_ep(m) == 1) return;
    size_t R = max_rows(m, N), row = m->cfg.d_model * m->ops->act_bytes;
    a->ep_buf = carve(cv, R * row);
    a->ep_buf2 = carve(cv, R * row);
}

void experts_carve_grad(const Model* m, Acts* a, size_t N, Carver* cv) {
    GradScratch* g = &a->g;
    size_t R = max_rows(m, N), d = m->cfg.d_model, f = m->cfg.moe_hidden, ab = m->ops->act_bytes;
    int ep = experts_ep(m);
    g->de_h13 = carve(cv, R * 2 * f * ab);
    g->de_hact = carve(cv, R * f * ab);
    g->dyl = ep > 1 ? carve(cv, R * d * ab) : g->dye;
    g->dxl = ep > 1 ? carve(cv, R * d * ab) : g->dxe;
}

void experts_acts_alloc(const Model* m, Acts* a) {
    int ep = experts_ep(m);
    if (ep == 1) return;
    size_t R = max_rows(m, (size_t)a->B * a->T), El = m->n_local_experts;
    a->ep_host = xmalloc((2 * R + m->cfg.n_experts + El + 2 + ep * El) * sizeof(int));
    for (int l = m->cfg.n_dense_layers; l < m->cfg.n_layers; l++) {
        a->layers[l].ep_send = xcalloc(ep * El, sizeof(int));
        a->layers[l].ep_recv = xcalloc(ep * El, sizeof(int));
    }
}

void experts_acts_free(const Model* m, Acts* a) {
    for (int l = 0; l < m->cfg.n_layers; l++) {
        free(a->layers[l].ep_send);
        free(a->layers[l].ep_recv);
    }
    free(a->ep_host);
}

// ----------------------------------------------------------------------------
// all-to-all: the plan and the exchange

// Exchanges the per-expert row counts and builds the orders: rows arrive member-major (member s's rows for each of
// my experts, in s's expert order); the experts want them expert-major (expert e's rows from member 0, 1, ...).
static void ep_plan(Model* m, Acts* a, LayerActs* la) {
    const Ops* ops = m->ops;
    int ep = m->comm->ep, El = m->n_local_experts, E = m->cfg.n_experts;
    size_t R = (size_t)ep * a->cur_B * a->cur_T * m->cfg.top_k;
    int* off = a->ep_host;             // (E + 1) dispatch offsets
    int* perm = off + E + 1;           // (R)
    int* inv = perm + R;               // (R)
    int* loc = inv + R;                // (El + 1)
    int* start = loc + El + 1;         // (ep, El) first received row of (member, expert)
    ops->to_host(off, la->offsets, (size_t)(E + 1) * sizeof(int));
    for (int j = 0; j < ep; j++)
        for (int e = 0; e < El; e++) la->ep_send[j * El + e] = off[j * El + e + 1] - off[j * El + e];
    comm_alltoall_int(m->comm, GROUP_EP, la->ep_send, la->ep_recv, El);
    int r = 0;
    for (int s = 0; s < ep; s++)
        for (int e = 0; e < El; e++) { start[s * El + e] = r; r += la->ep_recv[s * El + e]; }
    int rows = 0;
    loc[0] = 0;
    for (int e = 0; e < El; e++) {
        for (int s = 0; s < ep; s++)
            for (int i = 0; i < la->ep_recv[s * El + e]; i++) perm[rows++] = start[s * El + e] + i;
        loc[e + 1] = rows;
    }
    la->ep_rows = rows;
    for (int i = 0; i < rows; i++) inv[perm[i]] = i;
    ops->to_device(la->ep_perm, perm, (size_t)rows * sizeof(int));
    ops->to_device(la->ep_inv, inv, (size_t)rows * sizeof(int));
    ops->to_device(la->ep_offsets, loc, (size_t)(El + 1) * sizeof(int));
}

// Rows of d elements between the members: to_experts = 1 sends this rank's dispatch-ordered rows to their experts'
// owners (counts ep_send out, ep_recv in); 0 returns the experts' rows to where they came from.
static void ep_exchange(Model* m, LayerActs* la, const void* send, void* recv, int d, int to_experts) {
    int ep = m->comm->ep, El = m->n_local_experts;
    size_t row = (size_t)d * m->ops->act_bytes;
    size_t sc[64], sd[64], rc[64], rd[64];
    if (ep > 64) fatal("expert parallelism over %d ranks: at most 64 supported", ep);
    size_t so = 0, ro = 0;
    for (int j = 0; j < ep; j++) {
        size_t out = 0, in = 0;
        for (int e = 0; e < El; e++) { out += la->ep_send[j * El + e]; in += la->ep_recv[j * El + e]; }
        if (!to_experts) { size_t t = out; out = in; in = t; }
        sc[j] = out * row; sd[j] = so; so += sc[j];
        rc[j] = in * row; rd[j] = ro; ro += rc[j];
    }
    comm_dev_alltoallv_bytes(m->comm, GROUP_EP, send, sc, sd, recv, rc, rd);  // backend memory: host or GPU
}

// ----------------------------------------------------------------------------
// forward and backward

void experts_forward(Model* m, Acts* a, LayerActs* la, const LayerWeights* w) {
    const Ops* ops = m->ops;
    int d = m->cfg.d_model, f = m->cfg.moe_hidden;
    if (experts_ep(m) == 1) {
        model_prof(m, PROF_EXPERTS);
        ops->moe_experts_forward(la->ye, la->e_h13, la->e_hact, la->xe, w->expert_w13, w->expert_w2, la->offsets,
                                 m->cfg.n_experts, d, f);
        model_prof(m, PROF_ROUTING);
        return;
    }
    // to the experts' owners, computed there (expert-major), and back in dispatch order
    ep_plan(m, a, la);
    ep_exchange(m, la, la->xe, a->ep_buf, d, 1);
    ops->moe_gather(la->xl, a->ep_buf, la->ep_perm, la->ep_rows, d);
    model_prof(m, PROF_EXPERTS);
    ops->moe_experts_forward(a->ep_buf2, la->e_h13, la->e_hact, la->xl, w->expert_w13, w->expert_w2, la->ep_offsets,
                             m->n_local_experts, d, f);
    model_prof(m, PROF_ROUTING);
    ops->moe_gather(a->ep_buf, a->ep_buf2, la->ep_inv, la->ep_rows, d);
    ep_exchange(m, la, a->ep_buf, la->ye, d, 0);
}

void experts_backward(Model* m, Acts* a, LayerActs* la, const LayerWeights* w, LayerWeights* wg) {
    const Ops* ops = m->ops;
    GradScratch* g = &a->g;
    int d = m->cfg.d_model, f = m->cfg.moe_hidden;
    if (experts_ep(m) == 1) {
        model_prof(m, PROF_EXPERTS);
        ops->moe_experts_backward(g->dxe, wg->expert_w13, wg->expert_w2, g->de_h13, g->de_hact, g->dye, la->xe,
                                  la->e_h13, la->e_hact, w->expert_w13, w->expert_w2, la->offsets, m->cfg.n_experts,
                                  d, f);
        model_prof(m, PROF_ROUTING);
        return;
    }
    // the mirror of the forward: output gradients to the owners, input gradients back
    ep_exchange(m, la, g->dye, a->ep_buf, d, 1);
    ops->moe_gather(g->dyl, a->ep_buf, la->ep_perm, la->ep_rows, d);
    model_prof(m, PROF_EXPERTS);
    ops->moe_experts_backward(g->dxl, wg->expert_w13, wg->expert_w2, g->de_h13, g->de_hact, g->dyl, la->xl,
                              la->e_h13, la->e_hact, w->expert_w13, w->expert_w2, la->ep_offsets, m->n_local_experts,
                              d, f);
    model_prof(m, PROF_ROUTING);
    ops->moe_gather(a->ep_buf, g->dxl, la->ep_inv, la->ep_rows, d);
    ep_exchange(m, la, a->ep_buf, g->dxe, d, 0);
}
