// train/setup.c: see setup.h.
#include "setup.h"
#include "log.h"
#include "hf.h"
#include "../model/config_json.h"
#include "../model/cuda/sdpa_cudnn.h"
#include <errno.h>
#include <limits.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <cblas.h>

// micro-batches per optimizer step: far beyond any sensible accumulation, well inside an int
#define MAX_GRAD_ACCUM 1000000

void setup_config(Run* r, const Flags* f, Comm* comm) {
    memset(r, 0, sizeof(*r));
    r->flags = f;
    r->comm = comm;
    ModelConfig* cfg = &r->cfg;
    char why[1536];
    if (f->init_from) {
        // the model is the one DIR/config.json describes; an explicit --model must describe the same one
        if (f->resume)
            fatal("flags --init-from and --resume conflict: --init-from starts a run at step 0 from a Hugging Face "
                  "directory, --resume continues one from its checkpoint");
        ModelConfig from_dir;
        hf_read_config(f->init_from, &from_dir);
        if (flag_given(f, "--model")) {
            if (!config_from_model_arg(cfg, f->model, why, sizeof(why))) fatal("%s", why);
            // every field but the training context (max_position_embeddings), which no weight depends on: --model's
            // (or --seq-len's) is used
            from_dir.seq_len = cfg->seq_len;
            if (!config_equal(cfg, &from_dir, why, sizeof(why)))
                fatal("flag --model %s and --init-from %s/config.json describe different models (%s)", f->model,
                      f->init_from, why);
        } else {
            *cfg = from_dir;
        }
        if (f->vocab_size && f->vocab_size != cfg->vocab_size)
            fatal("flag --vocab-size %d differs from the vocab_size %d of --init-from %s (the weights fix it)",
                  f->vocab_size, cfg->vocab_size, f->init_from);
    } else if (!config_from_model_arg(cfg, f->model, why, sizeof(why))) {
        fatal("%s", why);
    }
    if (f->seq_len) cfg->seq_len = f->seq_len;
    if (f->vocab_size) cfg->vocab_size = f->vocab_size;
    if (!config_validate(cfg, why, sizeof(why))) fatal("model %s: %s", cfg->name, why);
    comm_set_ep(comm, f->ep, cfg->n_experts);
    int B = f->batch_size, T = cfg->seq_len, world = comm->world;
    r->B = B;
    r->T = T;
    // sizes in 64 bits, with limits: the model indexes a micro-batch's (token, expert) pairs with ints, over the
    // whole expert-parallel group
    long long routed_rows = (long long)B * T * cfg->top_k * f->ep;
    if (routed_rows > INT_MAX)
        fatal("flags --batch-size x --seq-len = %d x %d = %lld tokens per micro-batch is too many: with top-%d routing "
              "and --ep %d at most %lld fit", B, T, (long long)B * T, cfg->top_k, f->ep,
              (long long)INT_MAX / ((long long)cfg->top_k * f->ep));
    long long tokens_per_micro = (long long)B * T * world;
    long long total_batch = f->total_batch ? f->total_batch : tokens_per_micro;
    if (total_batch % tokens_per_micro != 0)
        fatal("flag --total-batch = %lld is not a multiple of batch-size x seq-len x ranks = %d x %d x %d = %lld",
              total_batch, B, T, world, tokens_per_micro);
    if (total_batch / tokens_per_micro > MAX_GRAD_ACCUM)
        fatal("flag --total-batch = %lld needs %lld micro-batches of %lld tokens per step; at most %d are allowed",
              total_batch, total_batch / tokens_per_micro, tokens_per_micro, MAX_GRAD_ACCUM);
    r->total_batch = total_batch;
    r->grad_accum = (int)(total_batch / tokens_per_micro);
}

void setup_backend(Run* r) {
    const Flags* f = r->flags;
    const Ops* ops = NULL;
    if (!strcmp(f->device, "cuda")) {
        ops = ops_cuda_get();
        if (!ops) fatal("flag --device cuda: %s (use --device cpu or auto)", ops_cuda_unavailable_reason());
    } else if (!strcmp(f->device, "auto")) {
        ops = ops_cuda_get();
        if (!ops) ops = &ops_cpu;
    } else {
        ops = &ops_cpu;
    }
    r->ops = ops;
    r->on_gpu = strcmp(ops->name, "cpu") != 0;
    // --attention: cuDNN's SDPA or our kernels, chosen once for the run's shape (the CPU has one attention)
    if (!r->on_gpu) {
        if (!strcmp(f->attention, "cudnn"))
            fatal("flag --attention cudnn needs the CUDA backend on a GPU; this run is on the cpu device "
                  "(use --attention auto or own)");
        snprintf(r->attention, sizeof(r->attention), "the CPU backend's (--attention %s; cuDNN is a GPU path)",
                 f->attention);
    } else {
        const ModelConfig* c = &r->cfg;
        MlaShape shape = {.B = r->B > 0 ? r->B : 1, .T = r->T > 0 ? r->T : 1, .H = c->n_heads, .nope = c->qk_nope, .rope = c->qk_rope,
                          .dv = c->v_head, .kv_lora = c->kv_lora};
        if (ops_cuda_choose_attention(f->attention, shape, r->attention, sizeof(r->attention)) < 0)
            fatal("flag --attention cudnn: %s (use --attention own or auto)", r->attention);
    }
    comm_set_device(r->comm, ops != &ops_cpu, ops_cuda_stream());  // the model's buffers: GPU memory -> NCCL (or staged) collectives
    if (f->threads > 0) {
#ifdef _OPENMP
        omp_set_num_threads(f->threads);
#endif
        openblas_set_num_threads(f->threads);
    }
#ifdef _OPENMP
    r->threads = omp_get_max_threads();
#else
    r->threads = 1;
#endif
}

void setup_data(Run* r) {
    const Flags* f = r->flags;
    int world = r->comm->world;
    int training = !f->eval && !f->generate;  // --eval reads validation shards only, --generate no shards at all
    if (training) dataloader_init(&r->train, f->train_data, "--train-data", r->T, r->cfg.vocab_size, 1, (uint64_t)f->seed);
    r->have_val = f->val_data && f->val_data[0] && !f->generate;
    if (f->eval && !r->have_val) fatal("flag --eval needs validation shards, and --val-data is empty");
    if (training) dataloader_require(&r->train, r->B, world, "--train-data");
    if (r->have_val) {
        dataloader_init(&r->val, f->val_data, "--val-data", r->T, r->cfg.vocab_size, 0, 0);
        if (f->val_every || f->eval) dataloader_require(&r->val, r->B, world, "--val-data");
    }
    tokenizer_init(&r->tok, f->tokenizer);
    if (r->tok.loaded && r->tok.vocab_size > r->cfg.vocab_size)
        fatal("tokenizer %s has %d tokens, more than the model's vocab_size %d", f->tokenizer, r->tok.vocab_size,
              r->cfg.vocab_size);
}

// ----------------------------------------------------------------------------
// the run directory

static int dir_has_run(const char* dir) {
    char path[1024];
    snprintf(path, sizeof(path), "%s/log.jsonl", dir);
    return access(path, F_OK) == 0 || checkpoint_latest(dir) >= 0;
}

// --overwrite: the earlier run goes whole (its checkpoints, orphans of killed writes, its log and replay logs)
static void clear_run_dir(const char* dir) {
    checkpoint_remove_all(dir);
    char path[1024];
    snprintf(path, sizeof(path), "%s/log.jsonl", dir);
    unlink(path);
    DIR* d = opendir(dir);
    if (!d) return;
    struct dirent* e;
    while ((e = readdir(d))) {
        int a, b;
        char tail;
        if (sscanf(e->d_name, "replay_%d_%d.jsonl%c", &a, &b, &tail) == 2) {
            snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
            unlink(path);
        }
    }
    closedir(d);
}

static void make_run_dir(const char* dir) {
    char path[1024];
    snprintf(path, sizeof(path), "%s", dir);
    for (char* p = path + 1; *p; p++) if (*p == '/') { *p = 0; mkdir(path, 0755); *p = '/'; }
    if (mkdir(path, 0755) != 0 && errno != EEXIST) fatal("--out %s: cannot create it: %s", dir, strerror(errno));
}

// One trainer per run directory: an exclusive flock on DIR/train_moe.lock, held until the process ends (the
// kernel releases it however the process ends, so a killed run never leaves a stale lock). The file holds the
// holder's pid for the message a second trainer gets.
static void lock_run_dir(const char* dir) {
    char path[1024];
    snprintf(path, sizeof(path), "%s/train_moe.lock", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) fatal("--out %s: cannot create the lock file %s: %s", dir, path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        char holder[32] = "";
        ssize_t n = pread(fd, holder, sizeof(holder) - 1, 0);
        holder[n > 0 ? n : 0] = 0;
        holder[strcspn(holder, "\n")] = 0;
        fatal("--out %s is in use by another trainer (pid %s holds %s); wait for it or choose another --out", dir,
              holder[0] ? holder : "?", path);
    }
    char pid[32];
    int n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n)
        fatal("--out %s: cannot write the lock file %s: %s", dir, path, strerror(errno));
    // fd stays open (and locked) for the life of the process
}

void setup_start(Run* r) {
    const Flags* f = r->flags;
    char* out_dir = r->out_dir;
    if (f->out) snprintf(out_dir, sizeof(r->out_dir), "%s", f->out);
    else snprintf(out_dir, sizeof(r->out_dir), "runs/%s", r->cfg.name);
    r->resume_step = -1;
    r->replay_from = r->replay_to = -1;
    if (f->replay) {
        char tail;
        if (sscanf(f->replay, "%d:%d%c", &r->replay_from, &r->replay_to, &tail) != 2 || r->replay_from < 0 ||
            r->replay_to <= r->replay_from || r->replay_to > f->steps)
            fatal("flag --replay = '%s' must be S0:S1 with 0 <= S0 < S1 <= --steps (%d)", f->replay, f->steps);
        if (r->replay_from > 0) {
            char done[1024];
            snprintf(done, sizeof(done), "%s/DONE_%08d", out_dir, r->replay_from);
            if (access(done, F_OK) != 0)
                fatal("flag --replay %s: %s has no complete checkpoint of step %d (spike checkpoints are kept; see the "
                      "log's spike records for replay_from)", f->replay, out_dir, r->replay_from);
            r->resume_step = r->replay_from;
        }
    } else if (f->resume) {
        r->resume_step = checkpoint_latest(out_dir);
        if (r->resume_step < 0) fatal("flag --resume: no complete checkpoint in %s", out_dir);
    } else if (dir_has_run(out_dir)) {
        if (!f->overwrite)
            fatal("--out %s already holds a run (log.jsonl or checkpoints); pass --resume to continue it or "
                  "--overwrite to replace it", out_dir);
    }
    r->end_step = f->replay ? r->replay_to : f->steps;
}

void setup_model(Run* r) {
    const Flags* f = r->flags;
    int rank = r->comm->rank;
    // the initial weights: drawn from --seed, or (a fresh run with --init-from) the whole model read from the Hugging
    // Face directory on every rank, which model_init splits as it does a checkpoint's
    float* init_params = NULL;
    float* init_bias = NULL;
    size_t n_bias = (size_t)cfg_n_moe(&r->cfg) * r->cfg.n_experts;
    if (f->init_from && r->resume_step < 0) {
        ParamTensor layout[NUM_PARAM_TENSORS];
        init_params = xmalloc(param_layout(&r->cfg, r->cfg.n_experts, layout) * sizeof(float));
        init_bias = xmalloc((n_bias ? n_bias : 1) * sizeof(float));
        hf_load_weights(f->init_from, &r->cfg, init_params, init_bias);
    }
    model_init(&r->model, &r->cfg, r->ops, r->comm, init_params, (uint64_t)f->seed);
    if (init_params) {
        r->ops->to_device(r->model.router_bias, init_bias, n_bias * sizeof(float));
        printf("initial weights and router bias from --init-from %s (step 0, fresh optimizer state)\n", f->init_from);
        free(init_params);
        free(init_bias);
    }
    r->model.balance_alpha = f->balance_alpha;
    r->model.profile = f->profile;
    // Newton-Schulz in bf16 on the GPU (optim.cu says why that is safe); the CPU backend iterates in fp32 only
    if (!strcmp(f->muon_ns, "bf16") && !r->on_gpu)
        fatal("flag --muon-ns bf16 needs the CUDA backend (this run is on the CPU, which runs Newton-Schulz in fp32)");
    const int ns_bf16 = !strcmp(f->muon_ns, "bf16") || (!strcmp(f->muon_ns, "auto") && r->on_gpu);
    OptimConfig ocfg = {.kind = !strcmp(f->optim, "muon") ? OPTIM_MUON : OPTIM_ADAMW, .b1 = f->beta1,
                        .b2 = f->beta2, .eps = f->adam_eps, .weight_decay = f->weight_decay,
                        .mu = f->muon_momentum, .ns_table = f->ns, .muon_router = f->muon_router,
                        .ns_bf16 = ns_bf16};
    optimizer_init(&r->opt, &r->model, &ocfg);
    r->opt.adamw_lr_scale = f->adamw_lr_scale;
    TrainState* st = &r->st;
    memset(st, 0, sizeof(*st));
    st->micro_batch = r->B;
    st->seq_len = r->T;
    st->grad_accum = r->grad_accum;
    st->world = r->comm->world;
    st->ep = f->ep;
    st->seed = (uint64_t)f->seed;
    snprintf(st->optimizer, sizeof(st->optimizer), "%s", optim_kind_name(ocfg.kind));
    rng_seed(&st->sample_rng, (uint64_t)f->seed ^ 0x5A4D504C45ULL);
    spikes_init(&st->spikes, f->spike_window);
    if (r->resume_step >= 0) {
        // every value is checked before use; --resume falls back past a damaged checkpoint, --replay needs its own
        CheckpointLimits lim = {f->steps, r->train.n_windows};
        if (f->resume) r->resume_step = checkpoint_resume(r->out_dir, &r->model, &r->opt, st, rank, &lim);
        else checkpoint_load(r->out_dir, r->resume_step, &r->model, &r->opt, st, rank, &lim);
        dataloader_seek(&r->train, st->data_epoch, st->data_cursor);
        if (st->step > f->steps) fatal("flag --steps = %d is below the checkpoint's step %d", f->steps, st->step);
    }
}

void setup_run_dir(Run* r) {
    const Flags* f = r->flags;
    comm_barrier(r->comm);  // every rank has checked its inputs
    if (r->comm->rank != 0) {
        log_open(NULL, 0, "--out");
    } else {
        make_run_dir(r->out_dir);
        lock_run_dir(r->out_dir);  // before anything in it is removed or written: a second trainer stops here
        if (!f->resume && !f->replay && f->overwrite) clear_run_dir(r->out_dir);
        char path[1024];
        if (f->replay) snprintf(path, sizeof(path), "%s/replay_%d_%d.jsonl", r->out_dir, r->replay_from, r->replay_to);
        else snprintf(path, sizeof(path), "%s/log.jsonl", r->out_dir);
        log_open(path, f->resume, "--out");
    }
    comm_barrier(r->comm);
}

// ----------------------------------------------------------------------------

// sgemm rate of this machine with the current thread count: the CPU's MFU denominator
static double measure_sgemm_gflops(void) {
    int n = 1024;
    float* a = xmalloc((size_t)n * n * sizeof(float));
    float* b = xmalloc((size_t)n * n * sizeof(float));
    float* c = xmalloc((size_t)n * n * sizeof(float));
    for (size_t i = 0; i < (size_t)n * n; i++) { a[i] = (float)(i % 7) * 0.1f; b[i] = (float)(i % 5) * 0.1f; }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);  // warm up
    double best = 1e30;
    for (int rep = 0; rep < 10; rep++) {
        double t0 = wall_seconds();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        double dt = wall_seconds() - t0;
        best = dt < best ? dt : best;
    }
    free(a); free(b); free(c);
    return 2.0 * n * n * (double)n / best / 1e9;
}

void setup_step(Run* r) {
    const Flags* f = r->flags;
    acts_alloc(&r->acts, &r->model, r->B, r->T, 1);
    acts_alloc(&r->sample_acts, &r->model, 1, r->T, 0);
    LRSchedule* sched = &r->sched;
    memset(sched, 0, sizeof(*sched));
    lr_shape_parse(f->schedule, &sched->shape);
    sched->lr = f->lr;
    sched->min_lr = f->lr * f->min_lr_frac;
    sched->warmup = f->warmup;
    sched->total = f->steps;
    sched->decay_frac = f->decay_frac;
    // the MFU denominator: every rank's measured sgemm rate (with its threads), summed over the ranks
    // (on a GPU: the bf16 dense peak of an H100/H200 SXM, 989 TFLOP/s, unless --peak-gflops says otherwise)
    r->peak_gflops = f->peak_gflops > 0 ? f->peak_gflops : r->on_gpu ? 989000.0 : measure_sgemm_gflops();
    comm_allreduce_sum_f64(r->comm, GROUP_WORLD, &r->peak_gflops, 1);
    r->flops_per_token = config_flops_per_token(&r->cfg, r->T);
}

void run_free(Run* r) {
    acts_free(&r->acts, &r->model);
    acts_free(&r->sample_acts, &r->model);
    optimizer_free(&r->opt, &r->model);
    model_free(&r->model);
    dataloader_free(&r->train);
    if (r->have_val) dataloader_free(&r->val);
    tokenizer_free(&r->tok);
}

// ----------------------------------------------------------------------------
// --eval and --generate: a run's checkpoint (or --init-from's weights) read, never written

void setup_read_only(Run* r) {
    const Flags* f = r->flags;
    const char* mode = f->eval ? "--eval" : "--generate";
    // One process: these modes read the whole model into one rank and print one answer. Under mpirun each rank
    // would repeat the same work and print it again, and --ep would split the experts over ranks that never
    // exchange tokens here.
    if (r->comm->world > 1)
        fatal("flag %s runs in one process; it was started as %d ranks (run it without mpirun)", mode, r->comm->world);
    r->resume_step = -1;
    r->replay_from = r->replay_to = -1;
    r->end_step = 0;
    if (f->init_from) return;  // the config is --init-from's (setup_config), the weights too (setup_model)
    if (f->out) snprintf(r->out_dir, sizeof(r->out_dir), "%s", f->out);
    else snprintf(r->out_dir, sizeof(r->out_dir), "runs/%s", r->cfg.name);
    struct stat st;
    if (stat(r->out_dir, &st) != 0 || !S_ISDIR(st.st_mode))
        fatal("flag %s: --out %s is not a run directory (%s)", mode, r->out_dir,
              stat(r->out_dir, &st) != 0 ? strerror(errno) : "not a directory");
    int step = f->step;
    if (step < 0) {
        step = checkpoint_latest(r->out_dir);
        if (step < 0) fatal("flag %s: --out %s has no complete checkpoint (no DONE_* marker)", mode, r->out_dir);
    } else {
        char done[1024];
        snprintf(done, sizeof(done), "%s/DONE_%08d", r->out_dir, step);
        int newest = checkpoint_latest(r->out_dir);
        if (access(done, F_OK) != 0 && newest < 0)
            fatal("flag --step %d: --out %s has no complete checkpoint at all", step, r->out_dir);
        if (access(done, F_OK) != 0)
            fatal("flag --step %d: --out %s has no complete checkpoint of that step (its newest is %d)", step,
                  r->out_dir, newest);
    }
    // The model is the checkpoint's, whatever --model says. Without --step the newest is wanted: if a trainer running
    // on the directory pruned the one picked meanwhile, the newest is picked again.
    char why[1536];
    for (int attempt = 0; !checkpoint_read_model(r->out_dir, step, &r->read_model, why, sizeof(why)); attempt++) {
        char done[1024];
        snprintf(done, sizeof(done), "%s/DONE_%08d", r->out_dir, step);
        int newest = checkpoint_latest(r->out_dir);
        if (f->step >= 0 || access(done, F_OK) == 0 || newest < 0 || attempt == 3)
            fatal("checkpoint: %s; refusing to read it", why);
        step = newest;
    }
    r->resume_step = step;
    r->cfg = r->read_model.cfg;  // --seq-len may change the context it is run on (r->T)
    if (f->vocab_size && f->vocab_size != r->cfg.vocab_size)
        fatal("flag --vocab-size %d: the checkpoint's model has vocab_size %d", f->vocab_size, r->cfg.vocab_size);
    r->T = f->seq_len ? f->seq_len : r->cfg.seq_len;
    long long routed_rows = (long long)r->B * r->T * r->cfg.top_k;
    if (routed_rows > INT_MAX)
        fatal("flags --batch-size x --seq-len = %d x %d = %lld tokens per micro-batch is too many for top-%d routing",
              r->B, r->T, (long long)r->B * r->T, r->cfg.top_k);
}

void setup_model_read_only(Run* r) {
    const Flags* f = r->flags;
    if (f->init_from) {
        setup_model(r);  // --init-from's weights, as a run starting from them would load them
        return;
    }
    CheckpointModel* cm = &r->read_model;
    model_init(&r->model, &r->cfg, r->ops, r->comm, cm->params, (uint64_t)f->seed);
    r->model.balance_alpha = f->balance_alpha;
    r->ops->to_device(r->model.router_bias, cm->bias, cm->nb * sizeof(float));
    checkpoint_model_free(cm);
    r->st.step = r->resume_step;
}
