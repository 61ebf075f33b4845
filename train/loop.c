// train/loop.c: see loop.h.
#include "loop.h"
#include "dist.h"
#include "log.h"
#include "report.h"
#include <math.h>

// ----------------------------------------------------------------------------
// validation and samples

// The mean loss of --val-batches micro-batches of the validation shards, the same windows at every call.
static float validate(Run* r) {
    int B = r->B, T = r->T, rank = r->comm->rank, world = r->comm->world;
    DataLoader* val = &r->val;
    int* inp = xmalloc((size_t)B * T * sizeof(int));
    int* tgt = xmalloc((size_t)B * T * sizeof(int));
    double sum = 0.0;
    int used = 0;
    size_t w = 0;
    for (int i = 0; i < r->flags->val_batches; i++) {
        if (w + (size_t)B * world > val->n_windows) break;
        for (int b = 0; b < B; b++)
            if (dataloader_window(val, w + (size_t)rank * B + b, inp + (size_t)b * T, tgt + (size_t)b * T) != 0)
                fatal("%s, read by the validation; restore the file and --resume from the last checkpoint", val->error);
        w += (size_t)B * world;
        model_forward(&r->model, &r->acts, inp, tgt, B, T);
        sum += r->model.ce_loss;
        used++;
    }
    free(inp);
    free(tgt);
    return used ? (float)dist_mean(&r->model, sum / used) : NAN;
}

// Samples n tokens after the document separator, multinomial at temperature 1, one forward per token.
static void sample_text(Run* r, int n, int step) {
    Model* m = &r->model;
    const Tokenizer* tok = &r->tok;
    int T = r->sample_acts.T, V = m->cfg.vocab_size;
    int* toks = xmalloc((size_t)T * sizeof(int));
    float* logits = xmalloc((size_t)V * sizeof(float));
    // a valid id: tokenizer_init keeps the separator below the tokenizer's vocab, and main() the tokenizer's vocab
    // within the model's
    toks[0] = tok->loaded ? tok->separator : 0;
    int len = 1;
    size_t cap = 4096, used = 0;
    char* text = xmalloc(cap);
    text[0] = 0;
    for (int i = 0; i < n && len < T; i++) {
        model_forward(m, &r->sample_acts, toks, NULL, 1, len);
        model_logits_row(m, &r->sample_acts, len - 1, logits);
        float mx = -INFINITY;
        for (int v = 0; v < V; v++) mx = logits[v] > mx ? logits[v] : mx;
        double z = 0.0;
        for (int v = 0; v < V; v++) z += exp((double)(logits[v] - mx));
        double u = rng_uniform(&r->st.sample_rng) * z, c = 0.0;
        int next = V - 1;
        for (int v = 0; v < V; v++) {
            c += exp((double)(logits[v] - mx));
            if (c > u) { next = v; break; }
        }
        toks[len++] = next;
        // collect the decoded text so the JSON log gets it too
        char buf[512];
        FILE* mem = fmemopen(buf, sizeof(buf), "w");
        tokenizer_print(tok, next, mem);
        long k = ftell(mem);
        fclose(mem);
        if (used + k + 1 > cap) { cap = 2 * (used + k + 1); text = realloc(text, cap); if (!text) fatal("out of memory"); }
        memcpy(text + used, buf, k);
        used += k;
        text[used] = 0;
    }
    report_sample(step, text);
    free(text);
    free(toks);
    free(logits);
}

// ----------------------------------------------------------------------------
// the step's stops: every rank agrees first (one tiny collective each per step, left out of the byte counts), then
// every rank stops together

// A rank's loader found a shard changed under it (truncated, rewritten). Nothing of this step has reached the
// weights, the router bias, the optimizer or st yet (only the gradients and this step's telemetry buffers, both
// reset at the next step's start; the sampler's generator is put back to the step's start), so the checkpoint is
// that of step st.step. The lowest failed rank names the file; fatal() there ends the job (MPI_Abort), and the
// others wait in a barrier it never joins.
static void stop_if_data_failed(Run* r, int data_failed, Rng sample_rng_before) {
    Comm* comm = r->comm;
    int rank = comm->rank, world = comm->world;
    double failed = data_failed ? world - rank : 0, bytes = comm->bytes_allreduce;
    comm_allreduce_max_f64(comm, GROUP_WORLD, &failed, 1);
    comm->bytes_allreduce = bytes;
    if (failed == 0) return;
    r->st.sample_rng = sample_rng_before;
    if (!r->flags->replay) checkpoint_save(r->out_dir, &r->model, &r->opt, &r->st, rank);
    if (world - rank == (int)failed && r->flags->replay)
        fatal("%s; the replay stopped after step %d; restore the file and replay again", r->train.error, r->st.step);
    if (world - rank == (int)failed)
        fatal("%s; checkpoint of step %d written; restore the file and --resume", r->train.error, r->st.step);
    comm_barrier(comm);
    fatal("data: rank %d found a training shard changed (its error says which)", world - (int)failed);
}

// A write to the log failed (a full disk): every rank stops after this step with a checkpoint of it. Only rank 0
// writes the log, so the ranks agree first.
static void stop_if_log_failed(Run* r) {
    Comm* comm = r->comm;
    int replay = r->flags->replay != NULL;
    double failed = log_failed(), bytes = comm->bytes_allreduce;
    comm_allreduce_max_f64(comm, GROUP_WORLD, &failed, 1);
    comm->bytes_allreduce = bytes;
    if (failed == 0) return;
    if (!replay) checkpoint_save(r->out_dir, &r->model, &r->opt, &r->st, comm->rank);
    if (comm->rank == 0) {
        if (replay) fatal("--out %s: writing %s failed: %s; the replay stopped at step %d", r->out_dir, log_path(),
                          log_error(), r->st.step);
        fatal("--out %s: writing %s failed: %s; checkpoint of step %d written: make room, then --resume", r->out_dir,
              log_path(), log_error(), r->st.step);
    }
    comm_barrier(comm);  // rank 0's fatal() ends the job
    fatal("rank 0 could not write the log");
}

// ----------------------------------------------------------------------------
// one step

// Forward and backward of every micro-batch into the gradients; s gets the mean losses. Returns 1 if this rank's
// loader failed. A failed rank must still join every collective of forward and backward, or the others would
// wait for it forever: it goes on with token 0 everywhere (a valid id) and the step is dropped after.
static int step_gradients(Run* r, int step, int* inputs, int* targets, StepStats* s) {
    int B = r->B, T = r->T, rank = r->comm->rank, world = r->comm->world;
    double ce = 0.0, aux = 0.0;
    int data_failed = 0;
    for (int micro = 0; micro < r->grad_accum; micro++) {
        if (!data_failed && dataloader_next(&r->train, inputs, targets, B, rank, world) != 0) data_failed = 1;
        if (data_failed) {
            memset(inputs, 0, (size_t)B * T * sizeof(int));
            memset(targets, 0, (size_t)B * T * sizeof(int));
        }
        if (step + 1 == r->flags->inject_spike) {  // testing: random targets make this step's loss jump
            Rng rng;
            rng_seed(&rng, (uint64_t)r->flags->seed * 7919 + step * 131 + micro * 17 + rank);
            for (int i = 0; i < B * T; i++) targets[i] = (int)rng_below(&rng, r->cfg.vocab_size);
        }
        model_forward(&r->model, &r->acts, inputs, targets, B, T);
        // every rank's share of the global-batch mean: the sums over ranks below make it whole
        model_backward(&r->model, &r->acts, 1.0f / (r->grad_accum * world));
        ce += r->model.ce_loss / r->grad_accum;
        aux += r->model.aux_loss / r->grad_accum;
    }
    s->ce = ce;
    s->aux = aux;
    return data_failed;
}

// The spike window's z-scores of this step's loss and norm decide: a non-finite value never reaches the weights;
// a spike is logged, and with --skip-spikes not applied.
static void step_verdict(Run* r, StepStats* s) {
    const Flags* f = r->flags;
    s->finite = isfinite(s->loss) && isfinite(s->norm);
    s->z_loss = NAN;
    s->z_norm = NAN;
    s->spike = s->finite && spikes_verdict(&r->st.spikes, s->loss, s->norm, f->spike_z, &s->z_loss, &s->z_norm);
    s->skip_update = !s->finite || (s->spike && f->skip_spikes);
}

// The gradients of all ranks summed, the verdict, then (unless skipped) the optimizer, the router bias and QK-Clip.
static void step_update(Run* r, int step, StepStats* s) {
    const Flags* f = r->flags;
    Model* m = &r->model;
    const Ops* ops = r->ops;
    if (step + 1 == f->inject_nan) {  // testing: a NaN gradient must never reach the weights
        float nan = NAN;
        ops->to_device(m->grads, &nan, sizeof(float));
    }
    dist_reduce_grads(m);
    dist_reduce_step_stats(m);  // global expert loads (bias update) and max logits (QK-Clip)
    s->ce = dist_mean(m, s->ce);
    s->aux = dist_mean(m, s->aux);
    s->loss = (float)(s->ce + s->aux);
    s->norm = grad_global_norm(m);
    s->lr = lr_at(&r->sched, step);
    step_verdict(r, s);
    s->heads_clipped = 0;
    memset(s->clipped, 0, (size_t)r->cfg.n_layers * r->cfg.n_heads * sizeof(int));
    if (s->params_before) ops->to_host(s->params_before, m->params, m->num_params * sizeof(float));
    // steps in a row whose update is not applied: non-finite ones, and spikes under --skip-spikes. Skipping is for
    // a bad batch; when the loss stays at spike level the weights (or the data) changed for good, and skipping
    // every later step would freeze the run at the pre-spike weights while it "trains" on (step_policy stops it)
    if (s->skip_update) {
        r->st.bad_in_row++;
        if (!s->finite) report_nonfinite(s, r->st.bad_in_row);
    } else {
        r->st.bad_in_row = 0;
    }
    if (!s->skip_update) {
        optimizer_step(&r->opt, m, s->lr, grad_clip_scale(s->norm, f->grad_clip));
        if (f->bias_gamma > 0) model_update_router_bias(m, f->bias_gamma);
        s->heads_clipped = qk_clip(m, f->qk_clip_tau, s->clipped);
        spikes_push(&r->st.spikes, s->loss, s->norm);  // a skipped spike stays out of the window
    }
}

// After the update: the report of a spike, then the stop after too many skipped steps in a row.
static void step_policy(Run* r, const StepStats* s) {
    const Flags* f = r->flags;
    if (s->spike) {
        // the replay of this spike starts at the newest checkpoint before it: keep that one
        int from = f->replay ? r->replay_from : checkpoint_latest(r->out_dir);
        if (from < 0) from = 0;
        if (!f->replay && from > 0 && r->comm->rank == 0) checkpoint_protect(r->out_dir, from);
        report_spike(s, from);
    }
    if (r->st.bad_in_row >= f->max_bad_steps) {
        // the weights are those of the last applied update: keep them in a checkpoint and stop
        if (!f->replay) checkpoint_save(r->out_dir, &r->model, &r->opt, &r->st, r->comm->rank);
        if (!s->finite)
            fatal("step %d: %d non-finite steps in a row (loss %g, grad norm %g); none reached the weights. Stopped%s",
                  s->step, r->st.bad_in_row, s->loss, s->norm,
                  f->replay ? "" : "; the last good weights are checkpointed: look at the log, then --resume");
        fatal("step %d: %d steps in a row skipped as spikes by --skip-spikes (loss %g, z %.1f): the loss stays at "
              "spike level, so it is not one bad batch and skipping cannot recover. Stopped%s", s->step,
              r->st.bad_in_row, s->loss, s->z_loss,
              f->replay ? "" : "; the last applied weights are checkpointed: --resume without --skip-spikes, or "
                               "from an earlier checkpoint with a lower --lr");
    }
}

// The step's per-head max logits and expert loads, and what the step line shows of them.
static void step_telemetry(Run* r, StepStats* s) {
    int L = r->cfg.n_layers, H = r->cfg.n_heads, Lm = cfg_n_moe(&r->cfg), E = r->cfg.n_experts;
    model_get_maxlogit(&r->model, s->maxlogit);
    model_get_expert_load(&r->model, s->load);
    s->max_logit = -INFINITY;
    for (int l = 0; l < L; l++) {
        s->layer_max[l] = -INFINITY;
        for (int h = 0; h < H; h++) s->layer_max[l] = fmaxf(s->layer_max[l], s->maxlogit[l * H + h]);
        s->max_logit = fmaxf(s->max_logit, s->layer_max[l]);
    }
    s->worst_imbalance = 0.0f;
    for (int mi = 0; mi < Lm; mi++) {
        double sum = 0.0, mx = 0.0;
        for (int e = 0; e < E; e++) { sum += s->load[mi * E + e]; mx = fmax(mx, s->load[mi * E + e]); }
        s->imbalance[mi] = sum > 0 ? (float)(mx / (sum / E)) : 0.0f;
        s->worst_imbalance = fmaxf(s->worst_imbalance, s->imbalance[mi]);
    }
}

// One optimizer step: st.step goes from step to step + 1, or the run stops.
static void train_step(Run* r, int step, Rng sample_rng_before, int* inputs, int* targets, StepStats* s) {
    double t0 = wall_seconds();
    comm_reset_bytes(r->comm);
    model_profile_reset(&r->model);
    model_zero_grad(&r->model);
    model_zero_step_stats(&r->model);
    s->step = step + 1;
    int data_failed = step_gradients(r, step, inputs, targets, s);
    stop_if_data_failed(r, data_failed, sample_rng_before);
    step_update(r, step, s);
    r->ops->sync();
    s->seconds = wall_seconds() - t0;
    r->st.step = step + 1;
    r->st.data_epoch = r->train.epoch;
    r->st.data_cursor = r->train.cursor;
    step_policy(r, s);
}

// ----------------------------------------------------------------------------

void run_loop(Run* r) {
    const Flags* f = r->flags;
    int B = r->B, T = r->T, L = r->cfg.n_layers, H = r->cfg.n_heads, Lm = cfg_n_moe(&r->cfg), E = r->cfg.n_experts;
    int* inputs = xmalloc((size_t)B * T * sizeof(int));
    int* targets = xmalloc((size_t)B * T * sizeof(int));
    StepStats s = {0};
    s.maxlogit = xmalloc((size_t)L * H * sizeof(float));
    s.load = xmalloc((size_t)(Lm > 0 ? Lm : 1) * E * sizeof(float));
    s.layer_max = xmalloc((size_t)L * sizeof(float));
    s.imbalance = xmalloc((size_t)(Lm > 0 ? Lm : 1) * sizeof(float));
    s.clipped = xmalloc((size_t)L * H * sizeof(int));
    s.params_before = f->replay ? xmalloc(r->model.num_params * sizeof(float)) : NULL;
    for (int step = r->st.step; step < r->end_step; step++) {
        int last = step == f->steps - 1;
        if (!f->replay && r->have_val && f->val_every && step % f->val_every == 0) report_val(step, validate(r));
        Rng sample_rng_before = r->st.sample_rng;  // what a checkpoint of the last step holds (stop_if_data_failed)
        if (!f->replay && f->sample_every && step > 0 && step % f->sample_every == 0)
            sample_text(r, f->sample_tokens, step);

        train_step(r, step, sample_rng_before, inputs, targets, &s);
        step_telemetry(r, &s);
        r->time_sum += s.seconds;
        r->time_count++;
        report_step(r, &s);
        if (f->val_every && (step % f->val_every == 0 || last)) report_head_table(r, &s);  // what QK-Clip acts on
        stop_if_log_failed(r);

        if (!f->replay && ((f->ckpt_every && r->st.step % f->ckpt_every == 0) || r->st.step == f->steps)) {
            checkpoint_save(r->out_dir, &r->model, &r->opt, &r->st, r->comm->rank);
            if (r->comm->rank == 0) checkpoint_prune(r->out_dir, f->ckpt_keep);
            report_checkpoint(r->out_dir, r->st.step);
        }
    }
    free(inputs);
    free(targets);
    free(s.maxlogit);
    free(s.load);
    free(s.layer_max);
    free(s.imbalance);
    free(s.clipped);
    free(s.params_before);
}

void run_finish(Run* r) {
    const Flags* f = r->flags;
    if (f->profile && r->time_count > 0) report_profile(r);
    // the final weights' validation loss (step = steps: after the last update)
    if (!f->replay && r->have_val && f->val_every && r->st.step == f->steps && r->end_step > 0)
        report_val(f->steps, validate(r));
}
