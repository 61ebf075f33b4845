// train_moe.c: the one binary. Flags, setup, the training loop, evaluation, sampling, logging, checkpoints.
//
//   ./train_moe --model k2-nano                       train on the default corpus (make data)
//   ./train_moe --model k2-nano --resume              continue the run in --out from its newest checkpoint
//   ./train_moe --help                                every flag
//   mpirun -np 4 ./train_moe --ep 2 --optim muon      4 ranks: data parallel, experts split over pairs of ranks
#include <math.h>
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
#include "common.h"
#include "model/model.h"
#include "optim/optim.h"
#include "data/dataloader.h"
#include "data/tokenizer.h"
#include "train/checkpoint.h"
#include "train/dist.h"
#include "train/flags.h"
#include "train/settings.h"
#include "train/log.h"

static Flags flags;  // the command line (train/flags.c has the table of flags)
// micro-batches per optimizer step: far beyond any sensible accumulation, well inside an int
#define MAX_GRAD_ACCUM 1000000

// ----------------------------------------------------------------------------
// logging: a human progress line on stdout, the same numbers and more as JSON lines

static void format_duration(char* out, size_t n, double s) {
    if (s < 0 || !isfinite(s)) s = 0;
    int h = (int)(s / 3600), m = (int)(fmod(s, 3600) / 60), sec = (int)fmod(s, 60);
    if (h > 0) snprintf(out, n, "%dh%02dm", h, m);
    else snprintf(out, n, "%dm%02ds", m, sec);
}

// ----------------------------------------------------------------------------
// evaluation and sampling

static float validate(Model* m, Acts* acts, DataLoader* val, int B, int T, int batches, int rank, int world) {
    int* inp = xmalloc((size_t)B * T * sizeof(int));
    int* tgt = xmalloc((size_t)B * T * sizeof(int));
    double sum = 0.0;
    int used = 0;
    size_t w = 0;
    for (int i = 0; i < batches; i++) {
        if (w + (size_t)B * world > val->n_windows) break;
        for (int b = 0; b < B; b++)
            if (dataloader_window(val, w + (size_t)rank * B + b, inp + (size_t)b * T, tgt + (size_t)b * T) != 0)
                fatal("%s, read by the validation; restore the file and --resume from the last checkpoint", val->error);
        w += (size_t)B * world;
        model_forward(m, acts, inp, tgt, B, T);
        sum += m->ce_loss;
        used++;
    }
    free(inp);
    free(tgt);
    return used ? (float)dist_mean(m, sum / used) : NAN;
}

static void log_validation(Model* m, Acts* acts, DataLoader* val, int B, int T, int batches, int rank, int world, int step) {
    float vl = validate(m, acts, val, B, T, batches, rank, world);
    printf("step %d: val loss %.4f\n", step, vl);
    fprintf(log_file(), "{\"type\":\"val\",\"step\":%d", step);
    json_num(log_file(), "val_loss", vl);
    fprintf(log_file(), "}");
    log_end_record();
}

// Samples n tokens after the document separator, multinomial at temperature 1, one forward per token.
static void sample_text(Model* m, Acts* acts, const Tokenizer* tok, Rng* rng, int n, int step) {
    int T = acts->T;
    int* toks = xmalloc((size_t)T * sizeof(int));
    float* logits = xmalloc((size_t)m->cfg.vocab_size * sizeof(float));
    // a valid id: tokenizer_init keeps the separator below the tokenizer's vocab, and main() the tokenizer's vocab
    // within the model's
    toks[0] = tok->loaded ? tok->separator : 0;
    int len = 1;
    size_t cap = 4096, used = 0;
    char* text = xmalloc(cap);
    text[0] = 0;
    for (int i = 0; i < n && len < T; i++) {
        model_forward(m, acts, toks, NULL, 1, len);
        model_logits_row(m, acts, len - 1, logits);
        float mx = -INFINITY;
        for (int v = 0; v < m->cfg.vocab_size; v++) mx = logits[v] > mx ? logits[v] : mx;
        double z = 0.0;
        for (int v = 0; v < m->cfg.vocab_size; v++) z += exp((double)(logits[v] - mx));
        double u = rng_uniform(rng) * z, c = 0.0;
        int next = m->cfg.vocab_size - 1;
        for (int v = 0; v < m->cfg.vocab_size; v++) {
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
    printf("---- sample at step %d ----\n%s\n---------------------------\n", step, text);
    if (log_file()) {  // NULL only before the log is opened
        fprintf(log_file(), "{\"type\":\"sample\",\"step\":%d,\"text\":", step);
        json_string(log_file(), text);
        fprintf(log_file(), "}");
        log_end_record();
    }
    free(text);
    free(toks);
    free(logits);
}

// sgemm rate of this machine with the current thread count: the CPU's MFU denominator
static double measure_sgemm_gflops(void) {
    int n = 1024;
    float* a = xmalloc((size_t)n * n * sizeof(float));
    float* b = xmalloc((size_t)n * n * sizeof(float));
    float* c = xmalloc((size_t)n * n * sizeof(float));
    for (size_t i = 0; i < (size_t)n * n; i++) { a[i] = (float)(i % 7) * 0.1f; b[i] = (float)(i % 5) * 0.1f; }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);  // warm up
    double best = 1e30;
    for (int r = 0; r < 10; r++) {
        double t0 = wall_seconds();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        double dt = wall_seconds() - t0;
        best = dt < best ? dt : best;
    }
    free(a); free(b); free(c);
    return 2.0 * n * n * (double)n / best / 1e9;
}

// ----------------------------------------------------------------------------
// run directory

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

// A write to the log failed (a full disk): every rank stops after this step with a checkpoint of it. Only rank 0
// writes the log, so the ranks agree first (one tiny collective per step, left out of the byte counts).
static void stop_if_log_failed(Comm* comm, Model* m, Optimizer* opt, TrainState* st, const char* out_dir, int replay) {
    double failed = log_failed(), bytes = comm->bytes_allreduce;
    comm_allreduce_max_f64(comm, GROUP_WORLD, &failed, 1);
    comm->bytes_allreduce = bytes;
    if (failed == 0) return;
    if (!replay) checkpoint_save(out_dir, m, opt, st, comm->rank);
    if (comm->rank == 0) {
        if (replay) fatal("--out %s: writing %s failed: %s; the replay stopped at step %d", out_dir, log_path(),
                          log_error(), st->step);
        fatal("--out %s: writing %s failed: %s; checkpoint of step %d written: make room, then --resume", out_dir,
              log_path(), log_error(), st->step);
    }
    comm_barrier(comm);  // rank 0's fatal() ends the job
    fatal("rank 0 could not write the log");
}

// ----------------------------------------------------------------------------

int main(int argc, char** argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    Comm comm;
    comm_init(&comm, &argc, &argv);  // first: from here on a fatal error on any rank ends every rank
    int rank = comm.rank, world = comm.world;
    if (rank != 0 && !freopen("/dev/null", "w", stdout)) fatal("cannot silence stdout on rank %d", rank);
    flags_init(&flags);
    flags_parse(&flags, argc, argv);
    settings_agree(&comm, &flags);  // before any other collective: ranks with other flags would hang in one
    if (flags.help) { flags_print_help(); comm_finalize(&comm); return 0; }
    if (flags.list_models) {
        for (int i = 0; config_preset_names[i]; i++) {
            ModelConfig c;
            config_from_preset(&c, config_preset_names[i]);
            config_print(&c, stdout);
        }
        comm_finalize(&comm);
        return 0;
    }
    flags_check(&flags);

    // --- model config
    ModelConfig cfg;
    if (!config_from_preset(&cfg, flags.model)) {
        char names[256] = "";
        for (int i = 0; config_preset_names[i]; i++) {
            strcat(names, i ? ", " : "");
            strcat(names, config_preset_names[i]);
        }
        fatal("flag --model: no preset '%s' (choose from %s)", flags.model, names);
    }
    if (flags.seq_len) cfg.seq_len = flags.seq_len;
    if (flags.vocab_size) cfg.vocab_size = flags.vocab_size;
    char why[256];
    if (!config_validate(&cfg, why, sizeof(why))) fatal("model %s: %s", cfg.name, why);
    comm_set_ep(&comm, flags.ep, cfg.n_experts);
    int B = flags.batch_size, T = cfg.seq_len;
    // sizes in 64 bits, with limits: the model indexes a micro-batch's (token, expert) pairs with ints, over the
    // whole expert-parallel group
    long long routed_rows = (long long)B * T * cfg.top_k * flags.ep;
    if (routed_rows > INT_MAX)
        fatal("flags --batch-size x --seq-len = %d x %d = %lld tokens per micro-batch is too many: with top-%d routing "
              "and --ep %d at most %lld fit", B, T, (long long)B * T, cfg.top_k, flags.ep,
              (long long)INT_MAX / ((long long)cfg.top_k * flags.ep));
    long long tokens_per_micro = (long long)B * T * world;
    long long total_batch = flags.total_batch ? flags.total_batch : tokens_per_micro;
    if (total_batch % tokens_per_micro != 0)
        fatal("flag --total-batch = %lld is not a multiple of batch-size x seq-len x ranks = %d x %d x %d = %lld",
              total_batch, B, T, world, tokens_per_micro);
    if (total_batch / tokens_per_micro > MAX_GRAD_ACCUM)
        fatal("flag --total-batch = %lld needs %lld micro-batches of %lld tokens per step; at most %d are allowed",
              total_batch, total_batch / tokens_per_micro, tokens_per_micro, MAX_GRAD_ACCUM);
    int grad_accum = (int)(total_batch / tokens_per_micro);

    // --- backend
    const Ops* ops = NULL;
    if (!strcmp(flags.device, "cuda")) {
        ops = ops_cuda_get();
        if (!ops) fatal("flag --device cuda: %s (use --device cpu or auto)", ops_cuda_unavailable_reason());
    } else if (!strcmp(flags.device, "auto")) {
        ops = ops_cuda_get();
        if (!ops) ops = &ops_cpu;
    } else {
        ops = &ops_cpu;
    }
    comm_set_device(&comm, ops != &ops_cpu, ops_cuda_stream());  // the model's buffers: GPU memory -> NCCL (or staged) collectives
    if (flags.threads > 0) {
#ifdef _OPENMP
        omp_set_num_threads(flags.threads);
#endif
        openblas_set_num_threads(flags.threads);
    }
#ifdef _OPENMP
    int threads = omp_get_max_threads();
#else
    int threads = 1;
#endif

    // --- data (opened and checked before anything is written)
    DataLoader train, val;
    dataloader_init(&train, flags.train_data, "--train-data", T, cfg.vocab_size, 1, (uint64_t)flags.seed);
    int have_val = flags.val_data && flags.val_data[0];
    dataloader_require(&train, B, world, "--train-data");
    if (have_val) {
        dataloader_init(&val, flags.val_data, "--val-data", T, cfg.vocab_size, 0, 0);
        if (flags.val_every) dataloader_require(&val, B, world, "--val-data");
    }
    Tokenizer tok;
    tokenizer_init(&tok, flags.tokenizer);
    if (tok.loaded && tok.vocab_size > cfg.vocab_size)
        fatal("tokenizer %s has %d tokens, more than the model's vocab_size %d", flags.tokenizer, tok.vocab_size, cfg.vocab_size);

    // --- run directory
    char out_dir[512];  // flags_check refuses a longer --out
    if (flags.out) snprintf(out_dir, sizeof(out_dir), "%s", flags.out);
    else snprintf(out_dir, sizeof(out_dir), "runs/%s", cfg.name);
    int resume_step = -1;
    int replay_from = -1, replay_to = -1;  // --replay: steps replay_from+1 .. replay_to
    if (flags.replay) {
        char tail;
        if (sscanf(flags.replay, "%d:%d%c", &replay_from, &replay_to, &tail) != 2 || replay_from < 0 ||
            replay_to <= replay_from || replay_to > flags.steps)
            fatal("flag --replay = '%s' must be S0:S1 with 0 <= S0 < S1 <= --steps (%d)", flags.replay, flags.steps);
        if (replay_from > 0) {
            char done[1024];
            snprintf(done, sizeof(done), "%s/DONE_%08d", out_dir, replay_from);
            if (access(done, F_OK) != 0)
                fatal("flag --replay %s: %s has no complete checkpoint of step %d (spike checkpoints are kept; see the "
                      "log's spike records for replay_from)", flags.replay, out_dir, replay_from);
            resume_step = replay_from;
        }
    } else if (flags.resume) {
        resume_step = checkpoint_latest(out_dir);
        if (resume_step < 0) fatal("flag --resume: no complete checkpoint in %s", out_dir);
    } else if (dir_has_run(out_dir)) {
        if (!flags.overwrite)
            fatal("--out %s already holds a run (log.jsonl or checkpoints); pass --resume to continue it or "
                  "--overwrite to replace it", out_dir);
    }

    // --- model, optimizer, state
    Model model;
    model_init(&model, &cfg, ops, &comm, NULL, (uint64_t)flags.seed);
    model.balance_alpha = flags.balance_alpha;
    model.profile = flags.profile;
    OptimConfig ocfg = {!strcmp(flags.optim, "muon") ? OPTIM_MUON : OPTIM_ADAMW, flags.beta1, flags.beta2,
                        flags.adam_eps, flags.weight_decay, flags.muon_momentum, flags.ns, flags.muon_router};
    Optimizer opt;
    optimizer_init(&opt, &model, &ocfg);
    TrainState st = {0};
    st.micro_batch = B;
    st.seq_len = T;
    st.grad_accum = grad_accum;
    st.world = world;
    st.ep = flags.ep;
    st.seed = (uint64_t)flags.seed;
    snprintf(st.optimizer, sizeof(st.optimizer), "%s", optim_kind_name(ocfg.kind));
    rng_seed(&st.sample_rng, (uint64_t)flags.seed ^ 0x5A4D504C45ULL);
    spikes_init(&st.spikes, flags.spike_window);
    if (resume_step >= 0) {
        // every value is checked before use; --resume falls back past a damaged checkpoint, --replay needs its own
        CheckpointLimits lim = {flags.steps, train.n_windows};
        if (flags.resume) resume_step = checkpoint_resume(out_dir, &model, &opt, &st, rank, &lim);
        else checkpoint_load(out_dir, resume_step, &model, &opt, &st, rank, &lim);
        dataloader_seek(&train, st.data_epoch, st.data_cursor);
        if (st.step > flags.steps) fatal("flag --steps = %d is below the checkpoint's step %d", flags.steps, st.step);
    }
    // only now, with every input checked, write anything (rank 0 writes the log; the others log nowhere)
    comm_barrier(&comm);
    if (rank != 0) {
        log_open(NULL, 0, "--out");
    } else {
        make_run_dir(out_dir);
        lock_run_dir(out_dir);  // before anything in it is removed or written: a second trainer stops here
        if (!flags.resume && !flags.replay && flags.overwrite) clear_run_dir(out_dir);
        char path[1024];
        if (flags.replay) snprintf(path, sizeof(path), "%s/replay_%d_%d.jsonl", out_dir, replay_from, replay_to);
        else snprintf(path, sizeof(path), "%s/log.jsonl", out_dir);
        log_open(path, flags.resume, "--out");
    }
    comm_barrier(&comm);

    Acts acts, sample_acts;
    acts_alloc(&acts, &model, B, T, 1);
    acts_alloc(&sample_acts, &model, 1, T, 0);
    LRSchedule sched = {0};
    lr_shape_parse(flags.schedule, &sched.shape);
    sched.lr = flags.lr;
    sched.min_lr = flags.lr * flags.min_lr_frac;
    sched.warmup = flags.warmup;
    sched.total = flags.steps;
    sched.decay_frac = flags.decay_frac;
    // the MFU denominator: every rank's measured sgemm rate (with its threads), summed over the ranks
    // (on a GPU: the bf16 dense peak of an H100/H200 SXM, 989 TFLOP/s, unless --peak-gflops says otherwise)
    int on_gpu = strcmp(ops->name, "cpu") != 0;
    double peak = flags.peak_gflops > 0 ? flags.peak_gflops : on_gpu ? 989000.0 : measure_sgemm_gflops();
    comm_allreduce_sum_f64(&comm, GROUP_WORLD, &peak, 1);
    double flops_per_token = config_flops_per_token(&cfg, T);

    // --- banner
    config_print(&cfg, stdout);
    printf("device %s, %d threads; batch %d x %d tokens x %d micro-batches x %d ranks = %lld tokens/step\n",
           ops->name, threads, B, T, grad_accum, world, total_batch);
    {
        // memory per rank, and the optimizer state's split (ZeRO-1: each rank keeps the state of its own units)
        double state = (2.0 * opt.adam_n + opt.muon_n) * sizeof(float), total_state = state;
        double range[2] = {state, -state};  // largest and smallest share over the ranks
        comm_allreduce_sum_f64(&comm, GROUP_WORLD, &total_state, 1);
        comm_allreduce_max_f64(&comm, GROUP_WORLD, range, 2);
        printf("ranks %d (expert parallel %d x data parallel %d): %d of %d experts per layer on each rank\n", world,
               comm.ep, comm.dp, model.n_local_experts, cfg.n_experts);
        printf("memory on rank 0: parameters %.1f MB, gradients %.1f MB, optimizer state %.1f MB (%.1f%% of all ranks' "
               "%.1f MB), activations %.1f MB\n", model.num_params * 4 / 1e6, model.num_params * 4 / 1e6, state / 1e6,
               100.0 * state / total_state, total_state / 1e6, (acts.bytes + sample_acts.bytes) / 1e6);
        if (world > 1)
            printf("optimizer state per rank: %.1f%% to %.1f%% of the whole (1/%d = %.1f%%)\n", 100.0 * -range[1] / total_state,
                   100.0 * range[0] / total_state, world, 100.0 / world);
        // activations grow with the micro-batch; what is left says how far it could grow (90% of the free memory)
        size_t free_mem = 0, total_mem = 0;
        ops->mem_info(&free_mem, &total_mem);
        double per_seq = (double)acts.bytes / B;
        long fits = B + (long)(0.9 * free_mem / per_seq);
        printf("%s memory: %.1f GB free of %.1f GB; activations %.1f MB per sequence: the largest micro-batch that fits "
               "is about %ld x %d\n", on_gpu ? "device" : "host", free_mem / 1e9, total_mem / 1e9, per_seq / 1e6, fits, T);
    }
    printf("optimizer %s lr %g (%s, warmup %d, min %g) wd %g clip %g; balance alpha %g, bias gamma %g; QK-Clip tau %g\n",
           flags.optim, flags.lr, flags.schedule, flags.warmup, sched.min_lr, flags.weight_decay, flags.grad_clip,
           flags.balance_alpha, flags.bias_gamma, flags.qk_clip_tau);
    if (ocfg.kind == OPTIM_MUON) {
        double ns_flops = 0;
        for (int i = 0; i < NUM_PARAM_TENSORS; i++)
            if (opt.use_muon[i]) {
                const ParamTensor* t = &model.layout[i];
                ns_flops += (double)t->count * t->row_blocks * newton_schulz_flops(t->rows / t->row_blocks, t->cols, opt.ns_steps);
            }
        printf("muon: momentum %g (Nesterov), %s Newton-Schulz x%d, router %s; %.2fM parameters on Muon, %.2fM on AdamW; "
               "Newton-Schulz %.2f GFLOP per step (%.0f%% of the step's model FLOPs)\n",
               flags.muon_momentum, flags.ns, opt.ns_steps, flags.muon_router ? "Muon" : "AdamW", opt.muon_n / 1e6,
               opt.adam_n / 1e6, ns_flops / 1e9, 100.0 * ns_flops / (flops_per_token * total_batch));
    }
    printf("data: %d train shard(s), %llu tokens, %zu windows; val %s; tokenizer %s\n", train.n_shards,
           (unsigned long long)dataloader_total_tokens(&train), train.n_windows,
           have_val ? "yes" : "none", tok.loaded ? flags.tokenizer : "(none: samples print token ids)");
    // the OpenBLAS kernel set matters only where OpenBLAS does the model's work
    printf("MFU peak: %.1f GFLOP/s (%s%s%s%s%s)\n", peak,
           flags.peak_gflops > 0 ? "--peak-gflops" : on_gpu ? "H100/H200 SXM bf16 dense peak per GPU" : "measured 1024^3 sgemm, this machine",
           world > 1 ? ", summed over the ranks" : "", on_gpu ? "" : "; OpenBLAS ", on_gpu ? "" : openblas_get_corename(), on_gpu ? "" : " kernels");
    printf("run directory %s%s\n", out_dir, resume_step >= 0 ? " (resumed)" : "");
    if (flags.replay) {
        printf("replaying steps %d..%d from %s with full telemetry into %s/replay_%d_%d.jsonl\n", replay_from + 1,
               replay_to, replay_from ? "its checkpoint" : "the initial weights", out_dir, replay_from, replay_to);
    } else if (resume_step >= 0) {
        printf("resumed from step %d\n", st.step);
        // records after this line supersede any earlier ones for the same steps (a run killed after its last
        // checkpoint logged steps that are now redone)
        fprintf(log_file(), "{\"type\":\"resume\",\"step\":%d}", st.step);
        log_end_record();
    }
    fprintf(log_file(), "{\"type\":\"config\",\"model\":\"%s\",\"d_model\":%d,\"n_layers\":%d,\"n_dense_layers\":%d,"
            "\"n_heads\":%d,\"n_experts\":%d,\"top_k\":%d,\"moe_hidden\":%d,\"params_global\":%zu,\"expert_params_global\":%zu,",
            cfg.name, cfg.d_model, cfg.n_layers, cfg.n_dense_layers, cfg.n_heads, cfg.n_experts, cfg.top_k, cfg.moe_hidden,
            model.num_params_global, model.global_layout[P_EXPERT_W13].numel + model.global_layout[P_EXPERT_W2].numel);
    fprintf(log_file(), "\"params\":%zu,\"active_params\":%.0f,"
            "\"flops_per_token\":%.6g,\"device\":\"%s\",\"threads\":%d,\"batch\":%d,\"seq_len\":%d,\"grad_accum\":%d,"
            "\"world\":%d,\"ep\":%d,\"grad_clip\":%g,\"warmup\":%d,\"weight_decay\":%g,\"min_lr_frac\":%g,\"spike_z\":%g,"
            "\"spike_window\":%d,\"skip_spikes\":%d,\"optim\":\"%s\",\"qk_clip_tau\":%g,\"lr\":%g,\"schedule\":\"%s\",\"steps\":%d,\"seed\":%lld,\"peak_gflops\":%.1f,\"resumed_from\":%d}",
            model.num_params, config_active_params(&cfg), flops_per_token, ops->name, threads, B, T,
            grad_accum, world, flags.ep, flags.grad_clip, flags.warmup, flags.weight_decay, flags.min_lr_frac, flags.spike_z,
            flags.spike_window, flags.skip_spikes, flags.optim, flags.qk_clip_tau, flags.lr, flags.schedule, flags.steps, flags.seed, peak, resume_step);
    log_end_record();

    // --- training loop
    int L = cfg.n_layers, H = cfg.n_heads, Lm = cfg_n_moe(&cfg), E = cfg.n_experts;
    int* inputs = xmalloc((size_t)B * T * sizeof(int));
    int* targets = xmalloc((size_t)B * T * sizeof(int));
    float* maxlogit = xmalloc((size_t)L * H * sizeof(float));
    float* load = xmalloc((size_t)(Lm > 0 ? Lm : 1) * E * sizeof(float));
    float* layer_max = xmalloc((size_t)L * sizeof(float));
    float* imbalance = xmalloc((size_t)(Lm > 0 ? Lm : 1) * sizeof(float));
    int* clipped = xmalloc((size_t)L * H * sizeof(int));
    float* params_before = flags.replay ? xmalloc(model.num_params * sizeof(float)) : NULL;
    double time_sum = 0.0;
    double prof_total[PROF_N + 2] = {0};  // model categories, Newton-Schulz, rest of the optimizer
    int time_count = 0;
    int end_step = flags.replay ? replay_to : flags.steps;
    for (int step = st.step; step < end_step; step++) {
        int last = step == flags.steps - 1;
        if (!flags.replay && have_val && flags.val_every && step % flags.val_every == 0)
            log_validation(&model, &acts, &val, B, T, flags.val_batches, rank, world, step);
        Rng sample_rng_before = st.sample_rng;  // what a checkpoint of the last step holds (see data_failed below)
        if (!flags.replay && flags.sample_every && step > 0 && step % flags.sample_every == 0)
            sample_text(&model, &sample_acts, &tok, &st.sample_rng, flags.sample_tokens, step);

        double t0 = wall_seconds();
        comm_reset_bytes(&comm);
        model_profile_reset(&model);
        model_zero_grad(&model);
        model_zero_step_stats(&model);
        double ce = 0.0, aux = 0.0;
        int data_failed = 0;  // this rank's loader found a shard changed under it (truncated, rewritten)
        for (int micro = 0; micro < grad_accum; micro++) {
            // A failed rank must still join every collective of forward and backward, or the others would wait
            // for it forever: it goes on with token 0 everywhere (a valid id) and the step is dropped below.
            if (!data_failed && dataloader_next(&train, inputs, targets, B, rank, world) != 0) data_failed = 1;
            if (data_failed) {
                memset(inputs, 0, (size_t)B * T * sizeof(int));
                memset(targets, 0, (size_t)B * T * sizeof(int));
            }
            if (step + 1 == flags.inject_spike) {  // testing: random targets make this step's loss jump
                Rng r;
                rng_seed(&r, (uint64_t)flags.seed * 7919 + step * 131 + micro * 17 + rank);
                for (int i = 0; i < B * T; i++) targets[i] = (int)rng_below(&r, cfg.vocab_size);
            }
            model_forward(&model, &acts, inputs, targets, B, T);
            // every rank's share of the global-batch mean: the sums over ranks below make it whole
            model_backward(&model, &acts, 1.0f / (grad_accum * world));
            ce += model.ce_loss / grad_accum;
            aux += model.aux_loss / grad_accum;
        }
        {
            // All ranks learn whether one failed (one tiny collective per step, left out of the byte counts).
            // Then, all together: nothing of this step has reached the weights, the router bias, the optimizer
            // or st yet (only the gradients and this step's telemetry buffers, both reset at the next step's
            // start; the sampler's generator is put back to the step's start), so the checkpoint is that of
            // step st.step. The lowest failed rank names the file; fatal() there ends the job (MPI_Abort), and
            // the others wait in a barrier it never joins.
            double failed = data_failed ? world - rank : 0, bytes = comm.bytes_allreduce;
            comm_allreduce_max_f64(&comm, GROUP_WORLD, &failed, 1);
            comm.bytes_allreduce = bytes;
            if (failed > 0) {
                st.sample_rng = sample_rng_before;
                if (!flags.replay) checkpoint_save(out_dir, &model, &opt, &st, rank);
                if (world - rank == (int)failed && flags.replay)
                    fatal("%s; the replay stopped after step %d; restore the file and replay again", train.error, st.step);
                if (world - rank == (int)failed)
                    fatal("%s; checkpoint of step %d written; restore the file and --resume", train.error, st.step);
                comm_barrier(&comm);
                fatal("data: rank %d found a training shard changed (its error says which)", world - (int)failed);
            }
        }
        if (step + 1 == flags.inject_nan) {  // testing: a NaN gradient must never reach the weights
            float nan = NAN;
            ops->to_device(model.grads, &nan, sizeof(float));
        }
        dist_reduce_grads(&model);
        dist_reduce_step_stats(&model);  // global expert loads (bias update) and max logits (QK-Clip)
        ce = dist_mean(&model, ce);
        aux = dist_mean(&model, aux);
        float loss = (float)(ce + aux);
        float norm = grad_global_norm(&model);
        float lr = lr_at(&sched, step);

        // spikes: z-scores against the window of earlier steps; non-finite values never reach the weights
        int finite = isfinite(loss) && isfinite(norm);
        double z_loss = NAN, z_norm = NAN;
        if (finite) spikes_z(&st.spikes, loss, norm, &z_loss, &z_norm);
        int spike = finite && flags.spike_z > 0 &&
                    ((isfinite(z_loss) && z_loss > flags.spike_z) || (isfinite(z_norm) && z_norm > flags.spike_z) ||
                     (z_loss == INFINITY) || (z_norm == INFINITY));
        int skip_update = !finite || (spike && flags.skip_spikes);
        int heads_clipped = 0;
        memset(clipped, 0, (size_t)L * H * sizeof(int));
        if (params_before) ops->to_host(params_before, model.params, model.num_params * sizeof(float));
        if (!finite) {
            st.bad_in_row++;
            fprintf(log_file(), "{\"type\":\"nonfinite\",\"step\":%d,\"in_a_row\":%d", step + 1, st.bad_in_row);
            json_num(log_file(), "loss", loss);
            json_num(log_file(), "grad_norm", norm);
            fprintf(log_file(), "}");
            log_end_record();
        } else {
            st.bad_in_row = 0;
        }
        if (!skip_update) {
            optimizer_step(&opt, &model, lr, grad_clip_scale(norm, flags.grad_clip));
            if (flags.bias_gamma > 0) model_update_router_bias(&model, flags.bias_gamma);
            heads_clipped = qk_clip(&model, flags.qk_clip_tau, clipped);
            spikes_push(&st.spikes, loss, norm);  // a skipped spike stays out of the window
        }
        ops->sync();
        double dt = wall_seconds() - t0;
        st.step = step + 1;
        st.data_epoch = train.epoch;
        st.data_cursor = train.cursor;
        if (st.bad_in_row >= flags.max_bad_steps) {
            // the weights are those of the last good update: keep them in a checkpoint and stop
            if (!flags.replay) checkpoint_save(out_dir, &model, &opt, &st, rank);
            fatal("step %d: %d non-finite steps in a row (loss %g, grad norm %g); none reached the weights. Stopped%s",
                  step + 1, st.bad_in_row, loss, norm,
                  flags.replay ? "" : "; the last good weights are checkpointed: look at the log, then --resume");
        }
        if (spike) {
            // the replay of this spike starts at the newest checkpoint before it: keep that one
            int from = flags.replay ? replay_from : checkpoint_latest(out_dir);
            if (from < 0) from = 0;
            if (!flags.replay && from > 0 && rank == 0) checkpoint_protect(out_dir, from);
            printf("SPIKE at step %d: loss %.4f (z %.1f), grad norm %.3f (z %.1f)%s; replay with --replay %d:%d\n",
                   step + 1, loss, z_loss, norm, z_norm, skip_update ? ", update skipped" : "", from, step + 1);
            fprintf(log_file(), "{\"type\":\"spike\",\"step\":%d", step + 1);
            json_num(log_file(), "loss", loss);
            json_num(log_file(), "loss_z", z_loss);
            json_num(log_file(), "grad_norm", norm);
            json_num(log_file(), "norm_z", z_norm);
            fprintf(log_file(), ",\"action\":\"%s\",\"replay_from\":%d}", skip_update ? "skipped" : "logged", from);
            log_end_record();
        }

        // --- telemetry
        model_get_maxlogit(&model, maxlogit);
        model_get_expert_load(&model, load);
        float max_logit = -INFINITY;
        for (int l = 0; l < L; l++) {
            layer_max[l] = -INFINITY;
            for (int h = 0; h < H; h++) layer_max[l] = fmaxf(layer_max[l], maxlogit[l * H + h]);
            max_logit = fmaxf(max_logit, layer_max[l]);
        }
        float worst_imb = 0.0f;
        for (int mi = 0; mi < Lm; mi++) {
            double sum = 0.0, mx = 0.0;
            for (int e = 0; e < E; e++) { sum += load[mi * E + e]; mx = fmax(mx, load[mi * E + e]); }
            imbalance[mi] = sum > 0 ? (float)(mx / (sum / E)) : 0.0f;
            worst_imb = fmaxf(worst_imb, imbalance[mi]);
        }
        time_sum += dt;
        time_count++;
        double tok_s = total_batch / dt;
        double mfu = flops_per_token * tok_s / (peak * 1e9);
        char eta[32];
        format_duration(eta, sizeof(eta), (time_sum / time_count) * (end_step - step - 1));
        char clip_note[64] = "";
        if (heads_clipped) snprintf(clip_note, sizeof(clip_note), " (%d clipped)", heads_clipped);
        if (ocfg.kind == OPTIM_MUON)
            snprintf(clip_note + strlen(clip_note), sizeof(clip_note) - strlen(clip_note), " | muon rms %.3f", opt.muon_update_rms);
        printf("step %5d/%d | loss %.4f (aux %.4f) | lr %.2e | norm %.3f | %6.0f ms (opt %.0f) | %7.0f tok/s | MFU %4.1f%% | "
               "maxlogit %.2f%s | load max/mean %.2f | ETA %s%s\n",
               step + 1, flags.steps, loss, aux, lr, norm, dt * 1e3, opt.seconds * 1e3, tok_s, 100 * mfu, max_logit,
               clip_note, worst_imb, eta, !finite ? " | SKIPPED (non-finite)" : skip_update ? " | SKIPPED (spike)" : "");
        fprintf(log_file(), "{\"type\":\"step\",\"step\":%d", step + 1);
        json_num(log_file(), "loss", loss);
        json_num(log_file(), "ce", ce);
        json_num(log_file(), "aux", aux);
        json_num(log_file(), "lr", lr);
        json_num(log_file(), "grad_norm", norm);
        json_num(log_file(), "ms", dt * 1e3);
        json_num(log_file(), "tok_s", tok_s);
        json_num(log_file(), "mfu", mfu);
        json_num(log_file(), "max_logit", max_logit);
        json_num(log_file(), "opt_ms", opt.seconds * 1e3);
        if (world > 1) {
            json_num(log_file(), "allreduce_mb", comm.bytes_allreduce / 1e6);
            json_num(log_file(), "allgather_mb", comm.bytes_allgather / 1e6);
            json_num(log_file(), "alltoall_mb", comm.bytes_alltoall / 1e6);
        }
        if (ocfg.kind == OPTIM_MUON) {
            json_num(log_file(), "muon_update_rms", opt.muon_update_rms);
            json_num(log_file(), "ns_gflop", opt.ns_flops / 1e9);
        }
        if (flags.profile) {
            double p[PROF_N + 2];
            for (int i = 0; i < PROF_N; i++) p[i] = model.prof_seconds[i];
            p[PROF_N] = skip_update ? 0.0 : opt.ns_seconds;
            p[PROF_N + 1] = skip_update ? 0.0 : opt.seconds - opt.ns_seconds;
            fprintf(log_file(), ",\"prof_ms\":{");
            for (int i = 0; i < PROF_N + 2; i++) {
                fprintf(log_file(), "%s\"%s\":%.3f", i ? "," : "",
                        i < PROF_N ? prof_names[i] : i == PROF_N ? "newton_schulz" : "optimizer_other", 1e3 * p[i]);
                prof_total[i] += p[i];
            }
            fprintf(log_file(), "}");
        }
        json_num(log_file(), "loss_z", z_loss);
        json_num(log_file(), "norm_z", z_norm);
        fprintf(log_file(), ",\"spike\":%d,\"heads_clipped\":%d,\"skipped\":%d", spike, heads_clipped, skip_update);
        if (heads_clipped) {
            fprintf(log_file(), ",\"clipped_heads\":[");
            for (int i = 0, first = 1; i < L * H; i++)
                if (clipped[i]) { fprintf(log_file(), "%s%d", first ? "" : ",", i); first = 0; }
            fprintf(log_file(), "]");
        }
        fprintf(log_file(), ",\"max_logit_layer\":");
        json_float_array(log_file(), layer_max, L);
        fprintf(log_file(), ",\"max_logit_head\":");
        json_float_array(log_file(), maxlogit, L * H);
        fprintf(log_file(), ",\"load_imbalance\":");
        json_float_array(log_file(), imbalance, Lm);
        if (flags.replay) {
            // full telemetry: every expert's load, and each tensor's update RMS per layer (experts of a layer
            // together; this rank's experts under --ep)
            fprintf(log_file(), ",\"expert_load\":");
            json_float_array(log_file(), load, Lm * E);
            fprintf(log_file(), ",\"update_rms\":{");
            float* now = xmalloc(model.num_params * sizeof(float));
            ops->to_host(now, model.params, model.num_params * sizeof(float));
            for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
                const ParamTensor* pt = &model.layout[t];
                int groups = (t == P_EXPERT_W13 || t == P_EXPERT_W2) ? Lm : pt->count;
                size_t per = groups ? pt->numel / groups : 0;
                fprintf(log_file(), "%s\"%s\":[", t ? "," : "", pt->name);
                for (int g = 0; g < groups; g++) {
                    double sq = 0.0;
                    for (size_t i = 0; i < per; i++) {
                        double dlt = (double)now[pt->offset + g * per + i] - params_before[pt->offset + g * per + i];
                        sq += dlt * dlt;
                    }
                    fprintf(log_file(), "%s%.6g", g ? "," : "", sqrt(sq / per));
                }
                fprintf(log_file(), "]");
            }
            fprintf(log_file(), "}");
            free(now);
        }
        fprintf(log_file(), "}");
        log_end_record();
        if (flags.val_every && (step % flags.val_every == 0 || last)) {
            // the table QK-Clip acts on: max scaled logit of every head this step
            printf("  max logit per head (step %d):\n", step + 1);
            for (int l = 0; l < L; l++) {
                printf("    layer %2d:", l);
                for (int h = 0; h < H; h++) printf(" %7.2f", maxlogit[l * H + h]);
                printf("\n");
            }
        }

        stop_if_log_failed(&comm, &model, &opt, &st, out_dir, flags.replay != NULL);

        if (!flags.replay && ((flags.ckpt_every && st.step % flags.ckpt_every == 0) || st.step == flags.steps)) {
            checkpoint_save(out_dir, &model, &opt, &st, rank);
            if (rank == 0) checkpoint_prune(out_dir, flags.ckpt_keep);
            printf("checkpoint: %s step %d\n", out_dir, st.step);
        }
    }

    if (flags.profile && time_count > 0) {
        printf("time per step, mean over %d steps (%.1f ms):\n", time_count, 1e3 * time_sum / time_count);
        for (int i = 0; i < PROF_N + 2; i++)
            printf("  %-16s %8.2f ms  %5.1f%%\n", i < PROF_N ? prof_names[i] : i == PROF_N ? "newton_schulz" : "optimizer_other",
                   1e3 * prof_total[i] / time_count, 100.0 * prof_total[i] / time_sum);
    }
    // the final weights' validation loss (step = steps: after the last update)
    if (!flags.replay && have_val && flags.val_every && st.step == flags.steps && end_step > 0)
        log_validation(&model, &acts, &val, B, T, flags.val_batches, rank, world, flags.steps);

    free(clipped);
    free(params_before);
    free(inputs); free(targets); free(maxlogit); free(load); free(layer_max); free(imbalance);
    acts_free(&acts, &model);
    acts_free(&sample_acts, &model);
    optimizer_free(&opt, &model);
    model_free(&model);
    dataloader_free(&train);
    if (have_val) dataloader_free(&val);
    tokenizer_free(&tok);
    log_close();
    if (log_failed()) fatal("--out %s: writing %s failed: %s", out_dir, log_path(), log_error());
    comm_finalize(&comm);
    return 0;
}
