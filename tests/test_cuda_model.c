// tests/test_cuda_model.c: the whole model on the CUDA backend against the CPU backend, from the same weights on the
// same batches: one forward/backward (loss, balance loss, every gradient tensor, max logits, expert loads), a short
// training run under AdamW and under MuonClip (QK-Clip firing), and determinism (two GPU runs, same bits).
//
// What differs between the two backends is only precision: the GPU keeps activations and the compute copy of the
// weights in bf16 (8 bits of mantissa), the CPU everything in fp32. Each op rounds its output to bf16 once
// (<= 2^-9 = 0.2% relative), and the errors of ~40 ops in a row add up roughly as a random walk, so the model's
// outputs differ by a few tenths of a percent and the gradients, which go through the same ops backwards plus
// the router's top-k, by a few percent. The tolerances (below, with the margins measured) are chosen between that
// and what a real bug gives: the same comparison against the gradient of a *different* batch (a negative control,
// run here) is 8-80x further off, and a wrong index, transpose or missing term in any op is O(1) in its tensor.
//
// Tolerances (measured under dev/cuda/emu, which rounds exactly as the GPU does and differs only in its fp32
// summation order; "small" = k2-nano B=2 T=32 6 steps, as make test runs it; "GPU size" = the defaults below):
//   loss (cross-entropy), balance loss: 1e-2 relative (measured 3e-5 at both sizes).
//   routing: at most 3% of the N*K top-8 choices differ (measured 1.0% small, 0.6% GPU size: near-ties among 384
//     sigmoid scores).
//   gradients, per tensor, r = ||g_gpu - g_cpu|| / ||g_cpu||: r <= 0.1 for the tensors routing does not select
//     (measured 0.008-0.036 small, 0.003-0.013 GPU size); for the router and the experts r <= 0.05 + 1.5 sqrt(2 f),
//     f the fraction of flipped choices just measured (measured 0.09-0.13 at f = 1%, 0.03 at f = 0.6%): a flipped
//     choice moves a whole token's contribution from one expert's rows to another's, so these tensors differ by
//     ~sqrt(2 f) even when every op is exact. Negative control: the same distance to another batch's gradient
//     (same data distribution, so legitimately similar) must be at least 4 r (measured >= 8 r at both sizes;
//     0.24-1.2 in absolute terms).
//   max logits per (layer, head): 3e-2 relative (measured 6e-3).
//   training losses, per step: MuonClip 2e-2 relative (measured 7e-4 small, 3.3e-3 over 20 GPU-size steps);
//     AdamW 5e-2 (measured 1.9e-2 small, 9.8e-3 GPU size: Adam divides by sqrt(v), so in the first steps every
//     element moves by ~lr whatever its gradient's size, and the sign of the tiny gradients, which bf16 rounding
//     flips, decides the direction). Both runs must learn (last loss < 0.8x the first). The updates (final -
//     start weights): MuonClip ||du_gpu - du_cpu|| / ||du_cpu|| <= 0.35 (measured 0.08 small, 0.17 GPU size with
//     fp32 Newton-Schulz on both; 0.11 small, loss 5.6e-4, with the GPU's default bf16 Newton-Schulz, which this
//     test runs: ~1.5e-2 per orthogonalisation; the trajectories separate slowly over the steps; two uncorrelated
//     updates of equal size are sqrt(2) apart);
//     AdamW cosine(du_gpu, du_cpu) >= 0.8 (measured 0.94 at both).
//   determinism: two GPU runs from the same weights on the same batches give bit-identical losses and weights
//     (every kernel of the backend is deterministic: fixed-tree reductions, no float atomics, cuBLAS on one stream
//     with a fixed workspace; model/cuda/*.cu say so per file).
//
// Sizes: TEST_CUDA_MODEL=<preset> (default k2-nano), TEST_CUDA_MODEL_B / _T / _STEPS (default 4 x 128, 20 steps;
// dev/cuda/emu/run.sh uses a smaller batch and fewer steps). Without a GPU every group prints SKIP and the binary
// exits 0.
#include "cuda_test_util.h"
#include "../model/model.h"
#include "../optim/optim.h"

static ModelConfig cfg;
static int B = 4, T = 128, STEPS = 20;
static float* params0;  // the shared starting weights (global layout, host)
static size_t nparams;

static int env_int(const char* name, int def) {
    const char* v = getenv(name);
    return v && *v ? atoi(v) : def;
}

// ----------------------------------------------------------------------------
// data: a learnable stream (a fixed random successor for each of 97 tokens spread over the vocabulary, followed
// 90% of the time), so a few steps of training lower the loss a lot and a wrong update shows

static int succ[97], tok_of[97];

static void make_batch(int batch_index, int* tokens, int* targets) {
    Rng r;
    rng_seed(&r, 1000 + (uint64_t)batch_index);
    for (int b = 0; b < B; b++) {
        int s = (int)rng_below(&r, 97);
        for (int t = 0; t <= T; t++) {
            int tok = tok_of[s];
            if (t < T) tokens[b * T + t] = tok;
            if (t > 0) targets[b * T + t - 1] = tok;
            s = rng_uniform(&r) < 0.9f ? succ[s] : (int)rng_below(&r, 97);
        }
    }
}

// ----------------------------------------------------------------------------
// one forward/backward on each backend

typedef struct {
    float loss, aux;
    float* grads;    // (nparams) host, local layout (== global: one process)
    float* maxlogit; // (L, H)
    float* load;     // (Lm, E)
} FwdBwd;

static void fwd_bwd(const Ops* ops, int batch_index, FwdBwd* out) {
    Model m;
    model_init(&m, &cfg, ops, NULL, params0, 0);
    m.balance_alpha = 1e-4f;  // the trainer's default (--balance-alpha)
    Acts a;
    acts_alloc(&a, &m, B, T, 1);
    int* tokens = (int*)xmalloc((size_t)B * T * sizeof(int));
    int* targets = (int*)xmalloc((size_t)B * T * sizeof(int));
    make_batch(batch_index, tokens, targets);
    model_zero_grad(&m);
    model_zero_step_stats(&m);
    model_forward(&m, &a, tokens, targets, B, T);
    model_backward(&m, &a, 1.0f);
    out->loss = m.ce_loss;
    out->aux = m.aux_loss;
    out->grads = (float*)xmalloc(m.num_params * sizeof(float));
    ops->to_host(out->grads, m.grads, m.num_params * sizeof(float));
    out->maxlogit = (float*)xmalloc((size_t)cfg.n_layers * cfg.n_heads * sizeof(float));
    model_get_maxlogit(&m, out->maxlogit);
    out->load = (float*)xmalloc((size_t)cfg_n_moe(&cfg) * cfg.n_experts * sizeof(float));
    model_get_expert_load(&m, out->load);
    free(tokens); free(targets);
    acts_free(&a, &m);
    model_free(&m);
}

static void fwd_bwd_free(FwdBwd* f) { free(f->grads); free(f->maxlogit); free(f->load); }

static void test_forward_backward(void) {
    FwdBwd g, c, c2;
    fwd_bwd(gpu, 0, &g);
    fwd_bwd(cpu, 0, &c);
    fwd_bwd(cpu, 1, &c2);  // another batch: the negative control
    double rl = fabs(g.loss - c.loss) / fabs(c.loss);
    check(rl <= 1e-2, "%s B=%d T=%d: cross-entropy gpu %.6f vs cpu %.6f, rel diff %.2e (tol 1e-2)", cfg.name, B, T,
          g.loss, c.loss, rl);
    double ra = fabs(g.aux - c.aux) / fmax(fabs(c.aux), 1e-12);
    check(ra <= 1e-2, "balance loss gpu %.6e vs cpu %.6e, rel diff %.2e (tol 1e-2)", g.aux, c.aux, ra);

    size_t nl = (size_t)cfg_n_moe(&cfg) * cfg.n_experts;
    double diff = 0.0, total = 0.0;
    for (size_t i = 0; i < nl; i++) { diff += fabs(g.load[i] - c.load[i]); total += c.load[i]; }
    double moved = diff / 2.0;  // each flipped choice leaves one expert and lands on another
    double flip = total > 0 ? moved / total : 1.0;
    check(total == (double)B * T * cfg.top_k * cfg_n_moe(&cfg) && flip <= 0.03,
          "expert loads: %.0f of %.0f routing choices differ (%.2f%%, tol 3%%)", moved, total, 100.0 * moved / total);
    int LH = cfg.n_layers * cfg.n_heads;
    double wm = 0.0;
    int at = 0;
    for (int i = 0; i < LH; i++) {
        double r = fabs(g.maxlogit[i] - c.maxlogit[i]) / fabs(c.maxlogit[i]);
        if (!(r <= wm)) { wm = r; at = i; }
    }
    check(wm <= 3e-2, "max logit per (layer, head), %d heads: worst rel diff %.2e at layer %d head %d (%.4f vs %.4f) (tol 3e-2)",
          LH, wm, at / cfg.n_heads, at % cfg.n_heads, g.maxlogit[at], c.maxlogit[at]);
    ParamTensor layout[NUM_PARAM_TENSORS];
    param_layout(&cfg, cfg.n_experts, layout);
    double worst = 0.0, min_ratio = 1e30;
    const char *worst_name = "", *ratio_name = "";
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        const ParamTensor* p = &layout[t];
        if (!p->numel) continue;
        int routed = t == P_ROUTER || t == P_EXPERT_W13 || t == P_EXPERT_W2;
        double tol = routed ? 0.05 + 1.5 * sqrt(2.0 * flip) : 0.1;
        double r = rel_l2f(g.grads + p->offset, c.grads + p->offset, p->numel);
        double neg = rel_l2f(c2.grads + p->offset, c.grads + p->offset, p->numel);
        check(r <= tol && neg >= 4.0 * r, "grad %-12s (%9zu): ||gpu-cpu||/||cpu|| = %.4f (tol %.2f%s); another batch's: %.3f (%.0fx, >= 4x)",
              p->name, p->numel, r, tol, routed ? ", routed" : "", neg, neg / fmax(r, 1e-30));
        if (r > worst) { worst = r; worst_name = p->name; }
        if (neg / fmax(r, 1e-30) < min_ratio) { min_ratio = neg / fmax(r, 1e-30); ratio_name = p->name; }
    }
    printf("     worst gradient tensor %s at %.4f; smallest margin to another batch's gradient: %.1fx (%s)\n",
           worst_name, worst, min_ratio, ratio_name);

    fwd_bwd_free(&g); fwd_bwd_free(&c); fwd_bwd_free(&c2);
}

// ----------------------------------------------------------------------------
// short training runs, as train_moe.c steps: clip, update, router bias, QK-Clip

typedef struct {
    float* losses;  // (STEPS)
    float* params;  // (nparams) final weights
    int clipped;    // QK-Clip head rescalings over the run
} Run;

static void train(const Ops* ops, OptimKind kind, float lr, float tau, Run* out) {
    Model m;
    model_init(&m, &cfg, ops, NULL, params0, 0);
    m.balance_alpha = 1e-4f;  // the trainer's default (--balance-alpha)
    Acts a;
    acts_alloc(&a, &m, B, T, 1);
    // Newton-Schulz as the trainer runs it by default (--muon-ns auto): bf16 on the GPU, fp32 on the CPU
    OptimConfig oc = {.kind = kind, .b1 = 0.9f, .b2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f, .mu = 0.95f,
                      .ns_table = "default", .muon_router = 1, .ns_bf16 = ops != &ops_cpu};
    Optimizer opt;
    optimizer_init(&opt, &m, &oc);
    int* tokens = (int*)xmalloc((size_t)B * T * sizeof(int));
    int* targets = (int*)xmalloc((size_t)B * T * sizeof(int));
    out->losses = (float*)xmalloc(STEPS * sizeof(float));
    out->clipped = 0;
    for (int s = 0; s < STEPS; s++) {
        make_batch(100 + s, tokens, targets);
        model_zero_grad(&m);
        model_zero_step_stats(&m);
        model_forward(&m, &a, tokens, targets, B, T);
        model_backward(&m, &a, 1.0f);
        out->losses[s] = m.ce_loss;
        float norm = grad_global_norm(&m);
        optimizer_step(&opt, &m, lr, grad_clip_scale(norm, 1.0f));
        model_update_router_bias(&m, 1e-3f);
        out->clipped += qk_clip(&m, tau, NULL);
    }
    out->params = (float*)xmalloc(nparams * sizeof(float));
    model_get_params(&m, out->params);
    free(tokens); free(targets);
    optimizer_free(&opt, &m);
    acts_free(&a, &m);
    model_free(&m);
}

static void run_free(Run* r) { free(r->losses); free(r->params); }

static void compare_runs(const char* what, int adamw, const Run* g, const Run* c) {
    double loss_tol = adamw ? 5e-2 : 2e-2;
    double worst = 0.0;
    int at = 0;
    for (int s = 0; s < STEPS; s++) {
        double r = fabs(g->losses[s] - c->losses[s]) / fabs(c->losses[s]);
        if (!(r <= worst)) { worst = r; at = s; }
    }
    printf("     %s losses (gpu / cpu):", what);
    for (int s = 0; s < STEPS; s++) printf(" %.3f/%.3f", g->losses[s], c->losses[s]);
    printf("\n");
    check(worst <= loss_tol, "%s %d steps: worst per-step loss rel diff %.2e at step %d (%.4f vs %.4f) (tol %.0e)", what,
          STEPS, worst, at, g->losses[at], c->losses[at], loss_tol);
    int learned = g->losses[STEPS - 1] < 0.8f * g->losses[0] && c->losses[STEPS - 1] < 0.8f * c->losses[0];
    check(learned, "%s: both runs learn (loss %.3f -> %.3f on the gpu, %.3f -> %.3f on the cpu; want < 0.8x)", what,
          g->losses[0], g->losses[STEPS - 1], c->losses[0], c->losses[STEPS - 1]);
    // the weights moved the same way: compare the updates (final - start), not the weights, which are mostly start
    double num = 0.0, den = 0.0, dot = 0.0, gg = 0.0;
    for (size_t i = 0; i < nparams; i++) {
        double dg = (double)g->params[i] - params0[i], dc = (double)c->params[i] - params0[i];
        num += (dg - dc) * (dg - dc);
        den += dc * dc;
        dot += dg * dc;
        gg += dg * dg;
    }
    double r = sqrt(num / den), cosine = dot / sqrt(gg * den);
    if (adamw)
        check(cosine >= 0.8, "%s: cosine(update_gpu, update_cpu) = %.3f over all weights (>= 0.8; ||diff||/||cpu|| %.3f)",
              what, cosine, r);
    else
        check(r <= 0.35, "%s: ||update_gpu - update_cpu|| / ||update_cpu|| = %.3f over all weights (tol 0.35)", what, r);
}

static void test_training(void) {
    Run g, c, g2;
    train(gpu, OPTIM_ADAMW, 3e-3f, 0.0f, &g);
    train(cpu, OPTIM_ADAMW, 3e-3f, 0.0f, &c);
    compare_runs("AdamW", 1, &g, &c);
    // determinism: the same run again on the GPU
    train(gpu, OPTIM_ADAMW, 3e-3f, 0.0f, &g2);
    int same_l = memcmp(g.losses, g2.losses, STEPS * sizeof(float)) == 0;
    int same_p = memcmp(g.params, g2.params, nparams * sizeof(float)) == 0;
    check(same_l && same_p, "determinism: two GPU AdamW runs give bit-identical losses (%s) and final weights (%s, %zu)",
          same_l ? "yes" : "NO", same_p ? "yes" : "NO", nparams);
    run_free(&g); run_free(&c); run_free(&g2);

    // MuonClip with a tau low enough that QK-Clip fires: the clip is continuous in the max logit (factor
    // sqrt(tau / max) -> 1 at the threshold), so heads near it do not split the two runs
    FwdBwd f;
    fwd_bwd(cpu, 100, &f);
    float mx = 0.0f;
    for (int i = 0; i < cfg.n_layers * cfg.n_heads; i++) mx = fmaxf(mx, f.maxlogit[i]);
    fwd_bwd_free(&f);
    float tau = 0.5f * mx;
    train(gpu, OPTIM_MUON, 3e-3f, tau, &g);
    train(cpu, OPTIM_MUON, 3e-3f, tau, &c);
    compare_runs("MuonClip", 0, &g, &c);
    check(g.clipped > 0 && c.clipped > 0, "MuonClip: QK-Clip fired (tau %.3f): %d head rescalings on the gpu, %d on the cpu",
          tau, g.clipped, c.clipped);
    train(gpu, OPTIM_MUON, 3e-3f, tau, &g2);
    int same = !memcmp(g.losses, g2.losses, STEPS * sizeof(float)) && !memcmp(g.params, g2.params, nparams * sizeof(float));
    check(same, "determinism: two GPU MuonClip runs give bit-identical losses and final weights");
    run_free(&g); run_free(&c); run_free(&g2);
}

int main(void) {
    double t0 = wall_seconds();
    const char* preset = getenv("TEST_CUDA_MODEL");
    if (!preset || !*preset) preset = "k2-nano";
    B = env_int("TEST_CUDA_MODEL_B", B);
    T = env_int("TEST_CUDA_MODEL_T", T);
    STEPS = env_int("TEST_CUDA_MODEL_STEPS", STEPS);
    gpu = ops_cuda_get();
    if (!gpu) {
        const char* reason = cuda_skip_reason();
        skip("cuda whole model, forward/backward vs cpu: %s", reason);
        skip("cuda whole model, training vs cpu and determinism: %s", reason);
        return tests_summary();
    }
    if (!config_from_preset(&cfg, preset)) fatal("TEST_CUDA_MODEL=%s is not a preset", preset);
    if (B < 1 || T < 2 || T > cfg.seq_len || STEPS < 2)
        fatal("TEST_CUDA_MODEL_B/_T/_STEPS = %d/%d/%d: need B >= 1, 2 <= T <= %d, STEPS >= 2", B, T, STEPS, cfg.seq_len);
    rng_seed(&rng, 7);  // fixed: the tolerances above were measured on this data
    for (int i = 0; i < 97; i++) {
        tok_of[i] = (int)rng_below(&rng, (uint64_t)cfg.vocab_size);
        succ[i] = (int)rng_below(&rng, 97);
    }
    // the starting weights: the model's own initialisation (seed 1), read back from a CPU model
    Model m0;
    model_init(&m0, &cfg, cpu, NULL, NULL, 1);
    nparams = m0.num_params_global;
    params0 = (float*)xmalloc(nparams * sizeof(float));
    model_get_params(&m0, params0);
    model_free(&m0);
    printf("test_cuda_model: %s, %zu parameters, B=%d T=%d, %d training steps\n", cfg.name, nparams, B, T, STEPS);
    printf("---- forward/backward: gpu vs cpu\n");
    test_forward_backward();
    printf("---- training: gpu vs cpu (AdamW, MuonClip), determinism\n");
    test_training();
    free(params0);
    printf("test_cuda_model took %.1f s\n", wall_seconds() - t0);
    return tests_summary();
}
