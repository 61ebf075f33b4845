// tests/test_parity.c: the C model against the independent float64 PyTorch reference (dev/ref/model_ref.py).
//
//   test_parity FILE     FILE is a debug-state file written by model_ref.py (format in model/MODEL.md)
//
// Checks, with the tolerances stated where they are applied (fp32 C vs float64 reference):
//   the first forward: logits, cross-entropy, balance loss, per-head max logits, the experts chosen;
//   the first backward: every parameter tensor's gradient and the global gradient norm;
//   the same forward/backward as two accumulated micro-batches of half the size;
//   n optimizer steps (AdamW, or Muon + AdamW, with clip, schedule, router-bias update and QK-Clip): the loss and
//   the per-head max logits before each, the lr, the heads clipped, parameters and bias after.
#include "../model/model.h"
#include "../optim/optim.h"
#include "test_util.h"

static FILE* fh;
static const char* path;

static void rd(void* dst, size_t bytes) {
    if (fread(dst, 1, bytes, fh) != bytes) { fprintf(stderr, "error: %s is truncated\n", path); exit(1); }
}
static float* rd_f32(size_t n) { float* p = xmalloc(n * sizeof(float) + 1); rd(p, n * sizeof(float)); return p; }
static int* rd_i32(size_t n) { int* p = xmalloc(n * sizeof(int) + 1); rd(p, n * sizeof(int)); return p; }
// a float32 array of the file, widened to float64
static double* rd_f32_as_f64(size_t n) {
    float* a = rd_f32(n);
    double* d = xmalloc(n * sizeof(double) + 1);
    for (size_t i = 0; i < n; i++) d[i] = a[i];
    free(a);
    return d;
}

// gradients of the model against the reference, tensor by tensor
static void check_grads(const Model* m, const float* host_grads, const double* ref, const char* what) {
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        const ParamTensor* p = &m->layout[t];
        if (p->numel == 0) continue;
        const float* g = host_grads + p->offset;
        const double* r = ref + p->offset;
        double mx = 0.0;
        for (size_t i = 0; i < p->numel; i++) mx = fmax(mx, fabs(r[i]));
        double rel = rel_l2(g, r, p->numel);
        size_t where = 0;
        // element-wise: within 1e-3 relative, or 1e-4 of the tensor's largest gradient (fp32 cancellation)
        double worst = worst_ratio(g, r, p->numel, 1e-4 * mx + 1e-12, 1e-3, &where);
        check(rel < 1e-4 && worst <= 1.0, "%s grad %-10s rel_l2 %.2e (tol 1e-4) worst elem ratio %.3f (tol 1) at %zu: %.6e vs %.6e",
              what, p->name, rel, worst, where, g[where], r[where]);
    }
}

// ----------------------------------------------------------------------------
// the debug-state file: the config and run settings (header), then the reference's inputs and results

typedef struct {
    ModelConfig c;
    int B, T, n_steps;
    size_t n;                  // parameters
    float alpha, gamma;        // balance-loss weight, router-bias update rate
    float clip, tau;           // gradient clip, QK-Clip threshold
    LRSchedule sched;
    OptimConfig ocfg;
    int* tokens;               // (B*T)
    int* targets;              // (B*T)
    float* params0;            // (n) the starting weights
    float* bias0;              // (Lm, E) the starting router bias
    double* logits;            // (B*T, V) first forward
    float* losses;             // (3) cross-entropy, balance loss, (unused here)
    double* maxlogit;          // (L, H) first forward
    int* sel;                  // (Lm, B*T, K) experts chosen, first forward
    double* grads;             // (n) first backward
    float norm;                // global gradient norm, first backward
    float* step_loss;          // (n_steps) loss before each step
    float* step_lr;            // (n_steps)
    double* params_after;      // (n) after the steps
    double* bias_after;        // (Lm, E) after the steps
    double* step_maxlogit;     // (n_steps, L, H) before each step
    int* step_clipped;         // (n_steps) heads clipped by each step
} DebugState;

// the header: config and settings; 0, or 2 after an error line naming the file
static int read_header(DebugState* r) {
    int32_t ih[64];
    float fhd[64];
    rd(ih, sizeof(ih));
    rd(fhd, sizeof(fhd));
    if (ih[0] != 20261126 || ih[1] != 2) { fprintf(stderr, "error: %s is not a debug-state file v2\n", path); return 2; }
    ModelConfig c = {0};
    snprintf(c.name, sizeof(c.name), "parity");
    c.vocab_size = ih[2]; c.d_model = ih[3]; c.n_layers = ih[4]; c.n_dense_layers = ih[5]; c.n_heads = ih[6];
    c.q_lora = ih[7]; c.kv_lora = ih[8]; c.qk_nope = ih[9]; c.qk_rope = ih[10]; c.v_head = ih[11];
    c.n_experts = ih[12]; c.top_k = ih[13]; c.moe_hidden = ih[14]; c.dense_hidden = ih[15];
    r->B = ih[16]; r->T = ih[17]; r->n_steps = ih[18];
    c.seq_len = r->T;
    c.routed_scale = fhd[0]; c.rope_theta = fhd[1]; c.norm_eps = fhd[2];
    r->alpha = fhd[3]; r->gamma = fhd[4];
    r->sched = (LRSchedule){.shape = LR_COSINE, .lr = fhd[5], .min_lr = fhd[6], .warmup = ih[20], .total = ih[21],
                            .decay_frac = 0};
    r->clip = fhd[11];
    r->ocfg = (OptimConfig){.kind = ih[22] == 1 ? OPTIM_MUON : OPTIM_ADAMW, .b1 = fhd[7], .b2 = fhd[8], .eps = fhd[9],
                            .weight_decay = fhd[10], .mu = fhd[12], .ns_table = ih[24] == 1 ? "polar" : "default",
                            .muon_router = ih[23]};
    r->tau = fhd[13];
    char why[256];
    if (!config_validate(&c, why, sizeof(why))) { fprintf(stderr, "error: %s: %s\n", path, why); return 2; }
    ParamTensor layout[NUM_PARAM_TENSORS];
    r->n = param_layout(&c, c.n_experts, layout);
    if ((size_t)ih[19] != r->n) { fprintf(stderr, "error: %s has %d params, layout says %zu\n", path, ih[19], r->n); return 2; }
    r->c = c;
    return 0;
}

// the arrays after the header; 0, or 2 after an error line (a truncated file exits in rd)
static int read_arrays(DebugState* r) {
    const ModelConfig* c = &r->c;
    int N = r->B * r->T, L = c->n_layers, H = c->n_heads, K = c->top_k, Lm = cfg_n_moe(c), E = c->n_experts;
    r->tokens = rd_i32(N);
    r->targets = rd_i32(N);
    r->params0 = rd_f32(r->n);
    r->bias0 = rd_f32((size_t)Lm * E);
    r->logits = rd_f32_as_f64((size_t)N * c->vocab_size);
    r->losses = rd_f32(3);
    r->maxlogit = rd_f32_as_f64((size_t)L * H);
    r->sel = rd_i32((size_t)Lm * N * K);
    r->grads = rd_f32_as_f64(r->n);
    rd(&r->norm, sizeof(float));
    r->step_loss = rd_f32(r->n_steps);
    r->step_lr = rd_f32(r->n_steps);
    r->params_after = rd_f32_as_f64(r->n);
    r->bias_after = rd_f32_as_f64((size_t)Lm * E);
    r->step_maxlogit = rd_f32_as_f64((size_t)r->n_steps * L * H);
    r->step_clipped = rd_i32(r->n_steps);
    if (fgetc(fh) != EOF) { fprintf(stderr, "error: %s has trailing bytes\n", path); return 2; }
    return 0;
}

static void debug_state_free(DebugState* r) {
    free(r->tokens); free(r->targets); free(r->params0); free(r->bias0); free(r->logits); free(r->losses);
    free(r->maxlogit); free(r->sel); free(r->grads); free(r->step_loss); free(r->step_lr); free(r->params_after);
    free(r->bias_after); free(r->step_maxlogit); free(r->step_clipped);
}

// ----------------------------------------------------------------------------
// the checks, in the order they run

// the first forward: logits, the two losses, per-head max logits, the experts chosen
static void check_first_forward(Model* m, Acts* a, const DebugState* r) {
    const ModelConfig* c = &r->c;
    int N = r->B * r->T, V = c->vocab_size, L = c->n_layers, H = c->n_heads, K = c->top_k, Lm = cfg_n_moe(c);
    model_zero_grad(m);
    model_zero_step_stats(m);
    model_forward(m, a, r->tokens, r->targets, r->B, r->T);
    float* logits = xmalloc((size_t)N * V * sizeof(float));
    memcpy(logits, a->logits, (size_t)N * V * sizeof(float));
    size_t where = 0;
    double w = worst_ratio(logits, r->logits, (size_t)N * V, 1e-5, 1e-4, &where);
    check(w <= 1.0, "logits: worst |diff| / (1e-5 + 1e-4 |ref|) = %.3f (tol 1) at %zu: %.7f vs %.7f", w, where,
          logits[where], r->logits[where]);
    check(fabs(m->ce_loss - r->losses[0]) <= 1e-5 * fabs(r->losses[0]), "cross-entropy %.7f vs %.7f (rel tol 1e-5)",
          m->ce_loss, r->losses[0]);
    check(fabs(m->aux_loss - r->losses[1]) <= 1e-5 * fabs(r->losses[1]) + 1e-9, "balance loss %.8f vs %.8f (rel tol 1e-5)",
          m->aux_loss, r->losses[1]);
    float* maxlogit = xmalloc((size_t)L * H * sizeof(float));
    model_get_maxlogit(m, maxlogit);
    w = worst_ratio(maxlogit, r->maxlogit, (size_t)L * H, 1e-6, 1e-5, &where);
    check(w <= 1.0, "max logit per head: worst ratio %.3f (tol 1e-5 rel) at %zu: %.7f vs %.7f", w, where, maxlogit[where],
          r->maxlogit[where]);
    long sel_diff = 0;
    for (int mi = 0; mi < Lm; mi++) {
        const int* sel = a->layers[c->n_dense_layers + mi].sel;
        for (int i = 0; i < N * K; i++) sel_diff += sel[i] != r->sel[(size_t)mi * N * K + i];
    }
    check(sel_diff == 0, "experts chosen: %ld of %d choices differ", sel_diff, Lm * N * K);
    free(logits);
    free(maxlogit);
}

// the first backward (after check_first_forward): every gradient and the global norm
static void check_first_backward(Model* m, Acts* a, const DebugState* r) {
    model_backward(m, a, 1.0f);
    check_grads(m, m->grads, r->grads, "1 batch ");
    float norm = grad_global_norm(m);
    check(fabs(norm - r->norm) <= 1e-5 * r->norm, "grad norm %.7f vs %.7f (rel tol 1e-5)", norm, r->norm);
}

// the same batch as 2 accumulated micro-batches (only when B splits evenly)
static void check_micro_batches(Model* m, const DebugState* r) {
    int B = r->B, T = r->T, N = B * T;
    if (B % 2 != 0) { skip("2 micro-batches: B = %d does not split in two", B); return; }
    Acts half;
    acts_alloc(&half, m, B / 2, T, 1);
    model_zero_grad(m);
    model_zero_step_stats(m);
    double ce = 0.0, aux = 0.0;
    for (int mb = 0; mb < 2; mb++) {
        model_forward(m, &half, r->tokens + mb * (N / 2), r->targets + mb * (N / 2), B / 2, T);
        model_backward(m, &half, 0.5f);
        ce += 0.5 * m->ce_loss;
        aux += 0.5 * m->aux_loss;
    }
    check(fabs(ce - r->losses[0]) <= 1e-5 * fabs(r->losses[0]) && fabs(aux - r->losses[1]) <= 1e-5 * fabs(r->losses[1]) + 1e-9,
          "2 micro-batches: ce %.7f aux %.8f vs %.7f %.8f", ce, aux, r->losses[0], r->losses[1]);
    check_grads(m, m->grads, r->grads, "2 micro  ");
    acts_free(&half, m);
}

// Muon's share: the split the reference makes, every hidden matrix on Muon (router optional), the rest on AdamW
static void check_muon_split(const Optimizer* opt, const Model* m, const OptimConfig* ocfg, size_t n) {
    size_t muon_expect = 0;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++)
        if (m->layout[t].kind == PARAM_MATRIX && (t != P_ROUTER || ocfg->muon_router)) muon_expect += m->layout[t].numel;
    check(opt->muon_n == muon_expect && opt->muon_n + opt->adam_n == n && !opt->use_muon[P_WTE] &&
          !opt->use_muon[P_LM_HEAD] && !opt->use_muon[P_ATTN_NORM] && opt->use_muon[P_EXPERT_W13] &&
          opt->use_muon[P_ROUTER] == ocfg->muon_router,
          "muon takes the hidden matrices (%zu params%s), AdamW the embedding, head and gains (%zu params)",
          opt->muon_n, ocfg->muon_router ? " incl. router" : ", router on AdamW", opt->adam_n);
}

// n optimizer steps on the same batch: loss, lr and per-head max logits before each, heads clipped by each
static void check_steps(Model* m, Acts* a, Optimizer* opt, const DebugState* r) {
    int n_steps = r->n_steps, L = r->c.n_layers, H = r->c.n_heads;
    float* maxlogit = xmalloc((size_t)L * H * sizeof(float));
    float worst_loss = 0, worst_lr = 0;
    double worst_ml = 0;
    int clipped_diff = 0, clipped_total = 0;
    for (int s = 0; s < n_steps; s++) {
        model_zero_grad(m);
        model_zero_step_stats(m);
        model_forward(m, a, r->tokens, r->targets, r->B, r->T);
        model_backward(m, a, 1.0f);
        float loss = m->ce_loss + m->aux_loss;
        float lr = lr_at(&r->sched, s);
        worst_loss = fmaxf(worst_loss, fabsf(loss - r->step_loss[s]) / fabsf(r->step_loss[s]));
        worst_lr = fmaxf(worst_lr, fabsf(lr - r->step_lr[s]) / r->step_lr[s]);
        model_get_maxlogit(m, maxlogit);
        worst_ml = fmax(worst_ml, worst_ratio(maxlogit, r->step_maxlogit + (size_t)s * L * H, (size_t)L * H, 1e-6, 1e-5, NULL));
        optimizer_step(opt, m, lr, grad_clip_scale(grad_global_norm(m), r->clip));
        model_update_router_bias(m, r->gamma);
        int clipped = qk_clip(m, r->tau, NULL);
        clipped_diff += clipped != r->step_clipped[s];
        clipped_total += clipped;
        printf("  step %d: loss %.7f (ref %.7f) lr %.6g (ref %.6g) heads clipped %d (ref %d)\n", s, loss,
               r->step_loss[s], lr, r->step_lr[s], clipped, r->step_clipped[s]);
    }
    check(worst_loss <= 1e-5, "%d steps: worst relative loss difference %.2e (tol 1e-5)", n_steps, worst_loss);
    check(worst_lr <= 1e-6, "%d steps: worst relative lr difference %.2e (tol 1e-6)", n_steps, worst_lr);
    check(worst_ml <= 1.0, "%d steps: per-head max logits before each update, worst ratio %.3f (tol 1e-5 rel)", n_steps, worst_ml);
    check(clipped_diff == 0, "%d steps: heads clipped per step match the reference (%d in all, tau %g)", n_steps,
          clipped_total, r->tau);
    free(maxlogit);
}

// the parameters and router bias after the steps
static void check_params_after(const Model* m, const DebugState* r) {
    float lr = r->sched.lr;
    size_t where = 0;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        const ParamTensor* p = &m->layout[t];
        if (p->numel == 0) continue;
        // AdamW and Muon move every parameter by O(lr) per step whatever its gradient's size, so a gradient at
        // float32 rounding level (|g| ~ 1e-9, next to Adam's eps) can move by a different fraction of lr in C
        // than in float64, and later steps carry that on. So: the change of the whole tensor must match closely
        // (rel_l2 of the update), and no element may be off by more than 5% of one step's lr.
        double num = 0.0, den = 0.0, worst_abs = 0.0;
        size_t off_count = 0;
        for (size_t i = 0; i < p->numel; i++) {
            double got = m->params[p->offset + i], want = r->params_after[p->offset + i];
            double start = r->params0[p->offset + i];
            num += (got - want) * (got - want);
            den += (want - start) * (want - start);
            double e = fabs(got - want);
            if (e > worst_abs) { worst_abs = e; where = i; }
            off_count += e > 1e-3 * lr;
        }
        double rel = den > 0 ? sqrt(num / den) : sqrt(num);
        check(rel < 1e-3 && worst_abs < 0.05 * lr,
              "after %d steps: param %-10s update rel_l2 %.2e (tol 1e-3), worst |diff| %.2e = %.3f lr (tol 0.05 lr), "
              "%zu of %zu elements off by > 1e-3 lr", r->n_steps, p->name, rel, worst_abs, worst_abs / lr,
              off_count, p->numel);
    }
    size_t nb = (size_t)cfg_n_moe(&r->c) * r->c.n_experts;
    float* bias = xmalloc(nb * sizeof(float) + 1);
    ops_cpu.to_host(bias, m->router_bias, nb * sizeof(float));
    double w = worst_ratio(bias, r->bias_after, nb, 1e-7, 1e-6, &where);
    check(w <= 1.0, "after %d steps: router bias worst ratio %.3f (tol 1e-7 + 1e-6 rel)", r->n_steps, w);
    free(bias);
}

// ----------------------------------------------------------------------------

int main(int argc, char** argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s DEBUG_STATE_FILE\n", argv[0]); return 2; }
    path = argv[1];
    fh = fopen(path, "rb");
    if (!fh) { fprintf(stderr, "error: cannot open %s\n", path); return 2; }
    DebugState r = {0};
    if (read_header(&r)) return 2;
    const ModelConfig* c = &r.c;
    printf("parity: %s  V=%d d=%d L=%d (dense %d) H=%d E=%d K=%d B=%d T=%d, %zu params, %d %s steps (ns %s, "
           "router %s), QK-Clip tau %g\n", path, c->vocab_size, c->d_model, c->n_layers, c->n_dense_layers, c->n_heads,
           c->n_experts, c->top_k, r.B, r.T, r.n, r.n_steps, optim_kind_name(r.ocfg.kind), r.ocfg.ns_table,
           r.ocfg.muon_router ? "muon" : "adamw", r.tau);
    if (read_arrays(&r)) return 2;
    fclose(fh);

    Model m;
    model_init(&m, c, &ops_cpu, NULL, r.params0, 0);
    m.balance_alpha = r.alpha;
    ops_cpu.to_device(m.router_bias, r.bias0, (size_t)cfg_n_moe(c) * c->n_experts * sizeof(float));
    Acts a;
    acts_alloc(&a, &m, r.B, r.T, 1);
    check_first_forward(&m, &a, &r);
    check_first_backward(&m, &a, &r);
    check_micro_batches(&m, &r);
    Optimizer opt;
    optimizer_init(&opt, &m, &r.ocfg);
    if (r.ocfg.kind == OPTIM_MUON) check_muon_split(&opt, &m, &r.ocfg, r.n);
    check_steps(&m, &a, &opt, &r);
    check_params_after(&m, &r);

    acts_free(&a, &m);
    optimizer_free(&opt, &m);
    model_free(&m);
    debug_state_free(&r);
    return tests_summary();
}
