// dev/cuda/emu/predict_step.c: one training step of the CUDA backend under the emulator, counted (emu_cost.cpp)
// and predicted on an H100 / H200. Built and run by dev/cuda/predict.sh; prints the per-kernel table, the step
// time, tokens/s and MFU, and writes the counts as TSV and JSON.
//
//   predict_step MODEL B [--seq-len T] [--optim adamw|muon] [--experts E --top-k K] [--steps S] [--out PREFIX]
//
// The step is the trainer's (train/loop.c train_step, one rank, one micro-batch): zero the gradients, forward,
// backward, the global gradient norm, the optimizer step with the trainer's default hyperparameters, the router
// bias update, QK-Clip, a synchronisation. The first S-1 steps (default S = 2) warm up (scratch buffers grow,
// tables are built once); the counts are those of the last step only. The weights are left as allocated
// (model_alloc: no 2.5B-parameter host initialisation), the tokens are 0: under EMU_COUNT_ONLY=1 no arithmetic is
// done anyway, and what decides the work (the routing) is spread as in a fresh model (emu_cost.cpp says how).
// Without EMU_COUNT_ONLY the same step is computed (for the test that both count the same).
#include "../../../common.h"
#include "../../../model/model.h"
#include "../../../model/config.h"
#include "../../../model/ops.h"
#include "../../../model/params.h"
#include "../../../optim/optim.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// emu_cost.cpp
void emu_cost_reset(void);
int emu_cost_write(const char* path);
void emu_cost_report(FILE* out, int gpu, double tokens, double model_flops_per_token);
void emu_cost_totals(const char* name, double* calls, double* flops, double* bytes, double* ms_h100, double* ms_h200);
int emu_count_only(void);
void emu_cost_set_category_source(const char* (*current)(void));
void emu_cost_categories_json(FILE* f);
const Ops* ops_cuda_get(void);

// the trainer's --profile parts (model.c's model_prof), for the per-part prediction dev/cuda/check.sh compares
static Model* profiled;
static const char* current_part(void) {
    int c = profiled->prof_cat;
    return c >= 0 && c < PROF_N ? prof_names[c] : "optimizer_other";
}

static void usage(const char* why) {
    fprintf(stderr, "predict_step: %s\nusage: predict_step MODEL B [--seq-len T] [--optim adamw|muon] "
                    "[--experts E --top-k K] [--steps S] [--out PREFIX]\n", why);
    exit(2);
}

static int int_arg(const char* s, const char* what) {
    char* end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < 1 || v > 1 << 20) {
        fprintf(stderr, "predict_step: %s must be a positive integer, got '%s'\n", what, s);
        exit(2);
    }
    return (int)v;
}

int main(int argc, char** argv) {
    if (argc < 3) usage("MODEL and B are required");
    const char* model_name = argv[1];
    int B = int_arg(argv[2], "B"), T = 0, E = 0, K = 0, steps = 2;
    const char* optim = "adamw";
    const char* out = NULL;
    for (int i = 3; i < argc; i++) {
        if (i + 1 >= argc) usage("a flag without its value");
        if (!strcmp(argv[i], "--seq-len")) T = int_arg(argv[++i], "--seq-len");
        else if (!strcmp(argv[i], "--optim")) optim = argv[++i];
        else if (!strcmp(argv[i], "--experts")) E = int_arg(argv[++i], "--experts");
        else if (!strcmp(argv[i], "--top-k")) K = int_arg(argv[++i], "--top-k");
        else if (!strcmp(argv[i], "--steps")) steps = int_arg(argv[++i], "--steps");
        else if (!strcmp(argv[i], "--out")) out = argv[++i];
        else usage("unknown flag");
    }
    if (strcmp(optim, "adamw") && strcmp(optim, "muon")) usage("--optim must be adamw or muon");
    ModelConfig cfg;
    if (!config_from_preset(&cfg, model_name)) {
        fprintf(stderr, "predict_step: %s is not a preset (./train_moe --list-models)\n", model_name);
        return 2;
    }
    if (T) cfg.seq_len = T;
    if (E) cfg.n_experts = E;
    if (K) cfg.top_k = K;
    char why[256];
    if (!config_validate(&cfg, why, sizeof(why))) { fprintf(stderr, "predict_step: %s\n", why); return 2; }
    T = cfg.seq_len;
    const Ops* ops = ops_cuda_get();
    if (!ops) { fprintf(stderr, "predict_step: no (emulated) CUDA backend\n"); return 1; }

    Model m;
    model_alloc(&m, &cfg, ops, NULL);
    m.balance_alpha = 1e-4f;  // the trainer's defaults: --balance-alpha, --b1 ... --qk-clip-tau
    if (!emu_count_only()) {  // a computed step needs real weights (count-only ones are never read)
        float* host = (float*)xmalloc(m.num_params_global * sizeof(float));
        Rng rng;
        rng_seed(&rng, 1);
        param_init(host, m.global_layout, &cfg, &rng);
        model_set_params(&m, host);
        free(host);
    }
    Acts a;
    acts_alloc(&a, &m, B, T, 1);
    OptimConfig oc = {.kind = strcmp(optim, "muon") ? OPTIM_ADAMW : OPTIM_MUON, .b1 = 0.9f, .b2 = 0.95f,
                      .eps = 1e-8f, .weight_decay = 0.1f, .mu = 0.95f, .ns_table = "default", .muon_router = 1};
    Optimizer opt;
    optimizer_init(&opt, &m, &oc);
    int* tokens = (int*)xcalloc((size_t)B * T, sizeof(int));
    int* targets = (int*)xcalloc((size_t)B * T, sizeof(int));
    for (int i = 0; i < B * T; i++) { tokens[i] = (i * 7919) % cfg.vocab_size; targets[i] = (i * 104729 + 1) % cfg.vocab_size; }
    int clipped[4096];
    if (cfg.n_layers * cfg.n_heads > 4096) { fprintf(stderr, "predict_step: too many heads\n"); return 1; }
    double tokens_per_step = (double)B * T, fpt = config_flops_per_token(&cfg, T);
    double calls = 0, flops = 0, bytes = 0, t0 = 0, t1 = 0;
    char path[1024];
    // steps-1 warm-up steps, the counted step, then one more with --profile's parts marked (its synchronisations
    // included, as in a --profile run) for the per-part prediction dev/cuda/check.sh prints beside its measurement
    for (int step = 0; step <= steps; step++) {
        if (step == steps - 1) { ops->sync(); emu_cost_reset(); }  // count this step only
        model_zero_grad(&m);
        model_zero_step_stats(&m);
        model_forward(&m, &a, tokens, targets, B, T);
        model_backward(&m, &a, 1.0f);
        float norm = grad_global_norm(&m);
        optimizer_step(&opt, &m, 3e-4f, grad_clip_scale(norm, 1.0f));
        model_update_router_bias(&m, 1e-3f);
        qk_clip(&m, 100.0f, clipped);
        ops->sync();
        fprintf(stderr, "predict_step: step %d done (loss %.4f)\n", step + 1, m.ce_loss);
        if (step != steps - 1) continue;
        // the counted step: its table and totals, then the profiled step
        printf("# %s, B=%d T=%d (%.0f tokens per step), %s; %s\n\n", model_name, B, T, tokens_per_step, optim,
               emu_count_only() ? "counted (EMU_COUNT_ONLY=1)" : "computed");
        for (int g = 0; g < 2; g++) emu_cost_report(stdout, g, tokens_per_step, fpt);
        emu_cost_totals(NULL, &calls, &flops, &bytes, &t0, &t1);
        if (out) {
            snprintf(path, sizeof(path), "%s.tsv", out);
            if (emu_cost_write(path)) { fprintf(stderr, "predict_step: cannot write %s\n", path); return 1; }
        }
        emu_cost_reset();
        m.profile = 1;
        model_profile_reset(&m);
        profiled = &m;
        emu_cost_set_category_source(current_part);
    }
    if (out) {
        snprintf(path, sizeof(path), "%s.json", out);
        FILE* f = fopen(path, "w");
        if (!f) { fprintf(stderr, "predict_step: cannot write %s\n", path); return 1; }
        fprintf(f, "{\"model\":\"%s\",\"batch\":%d,\"seq_len\":%d,\"optim\":\"%s\",\"experts\":%d,\"moe_layers\":%d,"
                   "\"tokens\":%.0f,\"model_flops_per_token\":%.6g,\"counted_flops\":%.6g,\"bytes\":%.6g,\"calls\":%.0f,"
                   "\"step_ms\":{\"H100\":%.4f,\"H200\":%.4f},\"tok_s\":{\"H100\":%.1f,\"H200\":%.1f},"
                   "\"mfu\":{\"H100\":%.4f,\"H200\":%.4f},\"profile_parts_ms\":", model_name, B, T, optim,
                cfg.n_experts, cfg_n_moe(&cfg), tokens_per_step, fpt, flops, bytes, calls, t0, t1,
                tokens_per_step / (t0 / 1e3), tokens_per_step / (t1 / 1e3), fpt * tokens_per_step / (t0 / 1e3) / 989e12,
                fpt * tokens_per_step / (t1 / 1e3) / 989e12);
        emu_cost_categories_json(f);  // the profiled step's parts: [H100 ms, H200 ms], with --profile's syncs
        fprintf(f, "}\n");
        if (fclose(f)) { fprintf(stderr, "predict_step: cannot write %s\n", path); return 1; }
    }
    return 0;
}
