// train/report.c: see report.h.
#include "report.h"
#include "log.h"
#include <math.h>
#include <cblas.h>

static void format_duration(char* out, size_t n, double s) {
    if (s < 0 || !isfinite(s)) s = 0;
    int h = (int)(s / 3600), m = (int)(fmod(s, 3600) / 60), sec = (int)fmod(s, 60);
    if (h > 0) snprintf(out, n, "%dh%02dm", h, m);
    else snprintf(out, n, "%dm%02ds", m, sec);
}

// ----------------------------------------------------------------------------
// the banner

// Memory per rank, the optimizer state's split (ZeRO-1: each rank keeps the state of its own units) and how far
// the micro-batch could grow. Collectives: every rank.
static void banner_memory(Run* r) {
    const Model* m = &r->model;
    const Optimizer* opt = &r->opt;
    Comm* comm = r->comm;
    int world = comm->world;
    double state = (2.0 * opt->adam_n + opt->muon_n) * sizeof(float), total_state = state;
    double range[2] = {state, -state};  // largest and smallest share over the ranks
    comm_allreduce_sum_f64(comm, GROUP_WORLD, &total_state, 1);
    comm_allreduce_max_f64(comm, GROUP_WORLD, range, 2);
    printf("ranks %d (expert parallel %d x data parallel %d): %d of %d experts per layer on each rank\n", world,
           comm->ep, comm->dp, m->n_local_experts, r->cfg.n_experts);
    printf("memory on rank 0: parameters %.1f MB, gradients %.1f MB, optimizer state %.1f MB (%.1f%% of all ranks' "
           "%.1f MB), activations %.1f MB\n", m->num_params * 4 / 1e6, m->num_params * 4 / 1e6, state / 1e6,
           100.0 * state / total_state, total_state / 1e6, (r->acts.bytes + r->sample_acts.bytes) / 1e6);
    if (world > 1)
        printf("optimizer state per rank: %.1f%% to %.1f%% of the whole (1/%d = %.1f%%)\n", 100.0 * -range[1] / total_state,
               100.0 * range[0] / total_state, world, 100.0 / world);
    // activations grow with the micro-batch; what is left says how far it could grow (90% of the free memory)
    size_t free_mem = 0, total_mem = 0;
    r->ops->mem_info(&free_mem, &total_mem);
    double per_seq = (double)r->acts.bytes / r->B;
    long fits = r->B + (long)(0.9 * free_mem / per_seq);
    printf("%s memory: %.1f GB free of %.1f GB; activations %.1f MB per sequence: the largest micro-batch that fits "
           "is about %ld x %d\n", r->on_gpu ? "device" : "host", free_mem / 1e9, total_mem / 1e9, per_seq / 1e6, fits,
           r->T);
}

static void banner_optimizer(const Run* r) {
    const Flags* f = r->flags;
    const Optimizer* opt = &r->opt;
    printf("optimizer %s lr %g (%s, warmup %d, min %g) wd %g clip %g; balance alpha %g, bias gamma %g; QK-Clip tau %g\n",
           f->optim, f->lr, f->schedule, f->warmup, r->sched.min_lr, f->weight_decay, f->grad_clip,
           f->balance_alpha, f->bias_gamma, f->qk_clip_tau);
    if (opt->cfg.kind != OPTIM_MUON) return;
    double ns_flops = 0;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++)
        if (opt->use_muon[i]) {
            const ParamTensor* t = &r->model.layout[i];
            ns_flops += (double)t->count * t->row_blocks * newton_schulz_flops(t->rows / t->row_blocks, t->cols, opt->ns_steps);
        }
    printf("muon: momentum %g (Nesterov), %s Newton-Schulz x%d (%s GEMMs), router %s; %.2fM parameters on Muon, %.2fM on AdamW (lr x%g); "
           "Newton-Schulz %.2f GFLOP per step (%.0f%% of the step's model FLOPs)\n",
           f->muon_momentum, f->ns, opt->ns_steps, opt->cfg.ns_bf16 ? "bf16" : "fp32", f->muon_router ? "Muon" : "AdamW", opt->muon_n / 1e6,
           opt->adam_n / 1e6, f->adamw_lr_scale, ns_flops / 1e9, 100.0 * ns_flops / (r->flops_per_token * r->total_batch));
}

// The log's first record of a run (or of its resumption): the model and every setting its numbers depend on.
static void config_record(const Run* r) {
    const Flags* f = r->flags;
    const ModelConfig* c = &r->cfg;
    const Model* m = &r->model;
    fprintf(log_file(), "{\"type\":\"config\",\"model\":\"%s\",\"d_model\":%d,\"n_layers\":%d,\"n_dense_layers\":%d,"
            "\"n_heads\":%d,\"n_experts\":%d,\"top_k\":%d,\"moe_hidden\":%d,\"params_global\":%zu,\"expert_params_global\":%zu,",
            c->name, c->d_model, c->n_layers, c->n_dense_layers, c->n_heads, c->n_experts, c->top_k, c->moe_hidden,
            m->num_params_global, m->global_layout[P_EXPERT_W13].numel + m->global_layout[P_EXPERT_W2].numel);
    fprintf(log_file(), "\"params\":%zu,\"active_params\":%.0f,"
            "\"flops_per_token\":%.6g,\"device\":\"%s\",\"threads\":%d,\"batch\":%d,\"seq_len\":%d,\"grad_accum\":%d,"
            "\"world\":%d,\"ep\":%d,\"grad_clip\":%g,\"warmup\":%d,\"weight_decay\":%g,\"min_lr_frac\":%g,\"spike_z\":%g,"
            "\"spike_window\":%d,\"skip_spikes\":%d,\"optim\":\"%s\",\"qk_clip_tau\":%g,\"lr\":%g,\"adamw_lr_scale\":%g,\"schedule\":\"%s\",\"steps\":%d,\"seed\":%lld,\"peak_gflops\":%.1f,\"resumed_from\":%d}",
            m->num_params, config_active_params(c), r->flops_per_token, r->ops->name, r->threads, r->B, r->T,
            r->grad_accum, r->comm->world, f->ep, f->grad_clip, f->warmup, f->weight_decay, f->min_lr_frac, f->spike_z,
            f->spike_window, f->skip_spikes, f->optim, f->qk_clip_tau, f->lr, f->adamw_lr_scale, f->schedule, f->steps, f->seed,
            r->peak_gflops, r->resume_step);
    log_end_record();
}

void report_banner(Run* r) {
    const Flags* f = r->flags;
    int world = r->comm->world, on_gpu = r->on_gpu;
    config_print(&r->cfg, stdout);
    printf("device %s, %d threads; batch %d x %d tokens x %d micro-batches x %d ranks = %lld tokens/step\n",
           r->ops->name, r->threads, r->B, r->T, r->grad_accum, world, r->total_batch);
    printf("attention: %s\n", r->attention);
    banner_memory(r);
    banner_optimizer(r);
    printf("data: %d train shard(s), %llu tokens, %zu windows; val %s; tokenizer %s\n", r->train.n_shards,
           (unsigned long long)dataloader_total_tokens(&r->train), r->train.n_windows,
           r->have_val ? "yes" : "none", r->tok.loaded ? f->tokenizer : "(none: samples print token ids)");
    // the OpenBLAS kernel set matters only where OpenBLAS does the model's work
    printf("MFU peak: %.1f GFLOP/s (%s%s%s%s%s)\n", r->peak_gflops,
           f->peak_gflops > 0 ? "--peak-gflops" : on_gpu ? "H100/H200 SXM bf16 dense peak per GPU" : "measured 1024^3 sgemm, this machine",
           world > 1 ? ", summed over the ranks" : "", on_gpu ? "" : "; OpenBLAS ", on_gpu ? "" : openblas_get_corename(), on_gpu ? "" : " kernels");
    printf("run directory %s%s\n", r->out_dir, r->resume_step >= 0 ? " (resumed)" : "");
    if (f->replay) {
        printf("replaying steps %d..%d from %s with full telemetry into %s/replay_%d_%d.jsonl\n", r->replay_from + 1,
               r->replay_to, r->replay_from ? "its checkpoint" : "the initial weights", r->out_dir, r->replay_from,
               r->replay_to);
    } else if (r->resume_step >= 0) {
        printf("resumed from step %d\n", r->st.step);
        // records after this line supersede any earlier ones for the same steps (a run killed after its last
        // checkpoint logged steps that are now redone)
        fprintf(log_file(), "{\"type\":\"resume\",\"step\":%d}", r->st.step);
        log_end_record();
    }
    config_record(r);
}

// ----------------------------------------------------------------------------
// the step

static void step_line(const Run* r, const StepStats* s) {
    const Optimizer* opt = &r->opt;
    double tok_s = r->total_batch / s->seconds;
    double mfu = r->flops_per_token * tok_s / (r->peak_gflops * 1e9);
    char eta[32];
    format_duration(eta, sizeof(eta), (r->time_sum / r->time_count) * (r->end_step - s->step));
    char clip_note[64] = "";
    if (s->heads_clipped) snprintf(clip_note, sizeof(clip_note), " (%d clipped)", s->heads_clipped);
    if (opt->cfg.kind == OPTIM_MUON)
        snprintf(clip_note + strlen(clip_note), sizeof(clip_note) - strlen(clip_note), " | muon rms %.3f", opt->muon_update_rms);
    printf("step %5d/%d | loss %.4f (aux %.4f) | lr %.2e | norm %.3f | %6.0f ms (opt %.0f) | %7.0f tok/s | MFU %4.1f%% | "
           "maxlogit %.2f%s | load max/mean %.2f | ETA %s%s\n",
           s->step, r->flags->steps, s->loss, s->aux, s->lr, s->norm, s->seconds * 1e3, opt->seconds * 1e3, tok_s,
           100 * mfu, s->max_logit, clip_note, s->worst_imbalance, eta,
           !s->finite ? " | SKIPPED (non-finite)" : s->skip_update ? " | SKIPPED (spike)" : "");
}

// ,"prof_ms":{...}: the step's time per model category, Newton-Schulz and the rest of the optimizer
static void profile_fields(Run* r, const StepStats* s) {
    double p[PROF_N + 2];
    for (int i = 0; i < PROF_N; i++) p[i] = r->model.prof_seconds[i];
    p[PROF_N] = s->skip_update ? 0.0 : r->opt.ns_seconds;
    p[PROF_N + 1] = s->skip_update ? 0.0 : r->opt.seconds - r->opt.ns_seconds;
    fprintf(log_file(), ",\"prof_ms\":{");
    for (int i = 0; i < PROF_N + 2; i++) {
        fprintf(log_file(), "%s\"%s\":%.3f", i ? "," : "",
                i < PROF_N ? prof_names[i] : i == PROF_N ? "newton_schulz" : "optimizer_other", 1e3 * p[i]);
        r->prof_total[i] += p[i];
    }
    fprintf(log_file(), "}");
}

// --replay's output-logit telemetry: the LM head's logits of the step's last micro-batch (this rank's rows),
// recomputed on the host from the final hidden states and the head's weights before the update, 256 rows at a
// time. Output-logit divergence (Wortsman et al. 2023) shows as a drifting log Z = logsumexp of a row's logits;
// "ce" is the rows' cross-entropy from these logits (it equals the step's loss with one micro-batch on one rank).
static void output_logit_fields(const Run* r, const StepStats* s) {
    const Model* m = &r->model;
    const Acts* a = &r->acts;
    int N = a->cur_B * a->cur_T, d = r->cfg.d_model, V = r->cfg.vocab_size;
    enum { CHUNK = 256 };
    float* xf = xmalloc((size_t)N * d * sizeof(float));
    int* targets = xmalloc((size_t)N * sizeof(int));
    float* logits = xmalloc((size_t)CHUNK * V * sizeof(float));
    model_final_hidden(m, a, xf, targets);
    const float* W = s->params_before + m->layout[P_LM_HEAD].offset;  // (V, d)
    double lse_sum = 0.0, ce_sum = 0.0, lse_max = -INFINITY, logit_max = -INFINITY;
    int n_ce = 0;
    for (int r0 = 0; r0 < N; r0 += CHUNK) {
        int n = N - r0 < CHUNK ? N - r0 : CHUNK;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, V, d, 1.0f, xf + (size_t)r0 * d, d, W, d, 0.0f,
                    logits, V);
        for (int i = 0; i < n; i++) {
            const float* row = logits + (size_t)i * V;
            float mx = row[0];
            for (int v = 1; v < V; v++) mx = row[v] > mx ? row[v] : mx;
            double sum = 0.0;
            for (int v = 0; v < V; v++) sum += exp((double)row[v] - mx);
            double lse = mx + log(sum);
            lse_sum += lse;
            lse_max = lse > lse_max ? lse : lse_max;
            logit_max = mx > logit_max ? mx : logit_max;
            int t = targets[r0 + i];
            if (t >= 0 && t < V) { ce_sum += lse - row[t]; n_ce++; }
        }
    }
    fprintf(log_file(), ",\"out_logits\":{\"rows\":%d", N);
    json_num(log_file(), "max", logit_max);
    json_num(log_file(), "lse_mean", N ? lse_sum / N : NAN);
    json_num(log_file(), "lse_max", lse_max);
    json_num(log_file(), "ce", n_ce ? ce_sum / n_ce : NAN);
    fprintf(log_file(), "}");
    free(xf);
    free(targets);
    free(logits);
}

// --replay's full telemetry: every expert's load, each tensor's update RMS per layer (experts of a layer together;
// this rank's experts under --ep), the output logits
static void replay_fields(const Run* r, const StepStats* s) {
    const Model* m = &r->model;
    int Lm = cfg_n_moe(&r->cfg);
    output_logit_fields(r, s);
    fprintf(log_file(), ",\"expert_load\":");
    json_float_array(log_file(), s->load, Lm * r->cfg.n_experts);
    fprintf(log_file(), ",\"update_rms\":{");
    float* now = xmalloc(m->num_params * sizeof(float));
    r->ops->to_host(now, m->params, m->num_params * sizeof(float));
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        const ParamTensor* pt = &m->layout[t];
        int groups = (t == P_EXPERT_W13 || t == P_EXPERT_W2) ? Lm : pt->count;
        size_t per = groups ? pt->numel / groups : 0;
        fprintf(log_file(), "%s\"%s\":[", t ? "," : "", pt->name);
        for (int g = 0; g < groups; g++) {
            double sq = 0.0;
            for (size_t i = 0; i < per; i++) {
                double dlt = (double)now[pt->offset + g * per + i] - s->params_before[pt->offset + g * per + i];
                sq += dlt * dlt;
            }
            fprintf(log_file(), "%s%.6g", g ? "," : "", sqrt(sq / per));
        }
        fprintf(log_file(), "]");
    }
    fprintf(log_file(), "}");
    free(now);
}

static void step_record(Run* r, const StepStats* s) {
    const Optimizer* opt = &r->opt;
    const Comm* comm = r->comm;
    int L = r->cfg.n_layers, H = r->cfg.n_heads;
    double tok_s = r->total_batch / s->seconds;
    FILE* f = log_file();
    fprintf(f, "{\"type\":\"step\",\"step\":%d", s->step);
    json_num(f, "loss", s->loss);
    json_num(f, "ce", s->ce);
    json_num(f, "aux", s->aux);
    json_num(f, "lr", s->lr);
    json_num(f, "grad_norm", s->norm);
    json_num(f, "ms", s->seconds * 1e3);
    json_num(f, "tok_s", tok_s);
    json_num(f, "mfu", r->flops_per_token * tok_s / (r->peak_gflops * 1e9));
    json_num(f, "max_logit", s->max_logit);
    json_num(f, "opt_ms", opt->seconds * 1e3);
    if (comm->world > 1) {
        json_num(f, "allreduce_mb", comm->bytes_allreduce / 1e6);
        json_num(f, "allgather_mb", comm->bytes_allgather / 1e6);
        json_num(f, "alltoall_mb", comm->bytes_alltoall / 1e6);
    }
    if (opt->cfg.kind == OPTIM_MUON) {
        json_num(f, "muon_update_rms", opt->muon_update_rms);
        json_num(f, "ns_gflop", opt->ns_flops / 1e9);
    }
    if (r->flags->profile) profile_fields(r, s);
    json_num(f, "loss_z", s->z_loss);
    json_num(f, "norm_z", s->z_norm);
    fprintf(f, ",\"spike\":%d,\"heads_clipped\":%d,\"skipped\":%d", s->spike, s->heads_clipped, s->skip_update);
    if (s->heads_clipped) {
        fprintf(f, ",\"clipped_heads\":[");
        for (int i = 0, first = 1; i < L * H; i++)
            if (s->clipped[i]) { fprintf(f, "%s%d", first ? "" : ",", i); first = 0; }
        fprintf(f, "]");
    }
    fprintf(f, ",\"max_logit_layer\":");
    json_float_array(f, s->layer_max, L);
    fprintf(f, ",\"max_logit_head\":");
    json_float_array(f, s->maxlogit, L * H);
    fprintf(f, ",\"load_imbalance\":");
    json_float_array(f, s->imbalance, cfg_n_moe(&r->cfg));
    if (r->flags->replay) replay_fields(r, s);
    fprintf(f, "}");
    log_end_record();
}

void report_step(Run* r, const StepStats* s) {
    step_line(r, s);
    step_record(r, s);
}

void report_head_table(const Run* r, const StepStats* s) {
    int L = r->cfg.n_layers, H = r->cfg.n_heads;
    printf("  max logit per head (step %d):\n", s->step);
    for (int l = 0; l < L; l++) {
        printf("    layer %2d:", l);
        for (int h = 0; h < H; h++) printf(" %7.2f", s->maxlogit[l * H + h]);
        printf("\n");
    }
}

// ----------------------------------------------------------------------------
// events

void report_nonfinite(const StepStats* s, int in_a_row) {
    fprintf(log_file(), "{\"type\":\"nonfinite\",\"step\":%d,\"in_a_row\":%d", s->step, in_a_row);
    json_num(log_file(), "loss", s->loss);
    json_num(log_file(), "grad_norm", s->norm);
    fprintf(log_file(), "}");
    log_end_record();
}

void report_spike(const StepStats* s, int replay_from) {
    printf("SPIKE at step %d: loss %.4f (z %.1f), grad norm %.3f (z %.1f)%s; replay with --replay %d:%d\n",
           s->step, s->loss, s->z_loss, s->norm, s->z_norm, s->skip_update ? ", update skipped" : "", replay_from,
           s->step);
    fprintf(log_file(), "{\"type\":\"spike\",\"step\":%d", s->step);
    json_num(log_file(), "loss", s->loss);
    json_num(log_file(), "loss_z", s->z_loss);
    json_num(log_file(), "grad_norm", s->norm);
    json_num(log_file(), "norm_z", s->z_norm);
    fprintf(log_file(), ",\"action\":\"%s\",\"replay_from\":%d}", s->skip_update ? "skipped" : "logged", replay_from);
    log_end_record();
}

void report_val(int step, float val_loss) {
    printf("step %d: val loss %.4f\n", step, val_loss);
    fprintf(log_file(), "{\"type\":\"val\",\"step\":%d", step);
    json_num(log_file(), "val_loss", val_loss);
    fprintf(log_file(), "}");
    log_end_record();
}

void report_sample(int step, const char* text) {
    printf("---- sample at step %d ----\n%s\n---------------------------\n", step, text);
    if (log_file()) {  // NULL only before the log is opened
        fprintf(log_file(), "{\"type\":\"sample\",\"step\":%d,\"text\":", step);
        json_string(log_file(), text);
        fprintf(log_file(), "}");
        log_end_record();
    }
}

void report_checkpoint(const char* out_dir, int step) { printf("checkpoint: %s step %d\n", out_dir, step); }

void report_profile(const Run* r) {
    printf("time per step, mean over %d steps (%.1f ms):\n", r->time_count, 1e3 * r->time_sum / r->time_count);
    for (int i = 0; i < PROF_N + 2; i++)
        printf("  %-16s %8.2f ms  %5.1f%%\n", i < PROF_N ? prof_names[i] : i == PROF_N ? "newton_schulz" : "optimizer_other",
               1e3 * r->prof_total[i] / r->time_count, 100.0 * r->prof_total[i] / r->time_sum);
}
