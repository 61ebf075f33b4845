// train/checkpoint.c: see checkpoint.h.
#include "checkpoint.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#define MODEL_MAGIC 20261127
#define STATE_MAGIC 20261128
#define CKPT_VERSION 1

static void path_of(char* out, size_t n, const char* dir, const char* kind, int step, int rank) {
    if (rank >= 0) snprintf(out, n, "%s/%s_%08d_r%d.bin", dir, kind, step, rank);
    else if (!strcmp(kind, "DONE") || !strcmp(kind, "KEEP")) snprintf(out, n, "%s/%s_%08d", dir, kind, step);
    else snprintf(out, n, "%s/%s_%08d.bin", dir, kind, step);
}

// ---- atomic file writes: tmp name, fsync, rename, fsync of the directory

typedef struct {
    FILE* f;
    char path[1024];
    char tmp[1040];
} AtomicFile;

static void atomic_open(AtomicFile* af, const char* path) {
    snprintf(af->path, sizeof(af->path), "%s", path);
    snprintf(af->tmp, sizeof(af->tmp), "%s.tmp", path);
    af->f = fopen(af->tmp, "wb");
    if (!af->f) fatal("checkpoint: cannot write %s: %s", af->tmp, strerror(errno));
}

static void atomic_write(AtomicFile* af, const void* data, size_t bytes) {
    if (bytes && fwrite(data, 1, bytes, af->f) != bytes) fatal("checkpoint: write to %s failed: %s", af->tmp, strerror(errno));
}

static void fsync_dir_of(const char* path) {
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s", path);
    char* slash = strrchr(dir, '/');
    if (slash) *slash = 0; else snprintf(dir, sizeof(dir), ".");
    int fd = open(dir, O_RDONLY);
    if (fd >= 0) { fsync(fd); close(fd); }
}

static void atomic_close(AtomicFile* af) {
    if (fflush(af->f) != 0 || fsync(fileno(af->f)) != 0) fatal("checkpoint: flushing %s failed: %s", af->tmp, strerror(errno));
    if (fclose(af->f) != 0) fatal("checkpoint: closing %s failed: %s", af->tmp, strerror(errno));
    if (rename(af->tmp, af->path) != 0) fatal("checkpoint: rename %s -> %s failed: %s", af->tmp, af->path, strerror(errno));
    fsync_dir_of(af->path);
}

static void ensure_dir(const char* dir) {
    char buf[1024];
    snprintf(buf, sizeof(buf), "%s", dir);
    for (char* p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        mkdir(buf, 0755);
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) fatal("checkpoint: cannot create directory %s: %s", dir, strerror(errno));
}

// ---- the model file header: the config, so a checkpoint cannot be loaded into a different model

static void config_to_header(const ModelConfig* c, int32_t* h) {
    int32_t v[] = {c->vocab_size, c->d_model, c->n_layers, c->n_dense_layers, c->n_heads, c->q_lora, c->kv_lora,
                   c->qk_nope, c->qk_rope, c->v_head, c->n_experts, c->top_k, c->moe_hidden, c->dense_hidden,
                   c->seq_len};
    memcpy(h + 3, v, sizeof(v));
    float fl[] = {c->routed_scale, c->rope_theta, c->norm_eps};
    memcpy(h + 32, fl, sizeof(fl));
    memcpy(h + 64, c->name, sizeof(c->name));
}

static const char* const header_field_names[] = {"vocab_size", "d_model", "n_layers", "n_dense_layers", "n_heads",
    "q_lora", "kv_lora", "qk_nope", "qk_rope", "v_head", "n_experts", "top_k", "moe_hidden", "dense_hidden", "seq_len"};

void checkpoint_save(const char* dir, const Model* m, const Optimizer* opt, const TrainState* st, int rank) {
    if (rank == 0) ensure_dir(dir);
    if (m->comm) comm_barrier(m->comm);  // the directory exists before any rank writes into it
    const Ops* ops = m->ops;
    char path[1024];
    int Lm = cfg_n_moe(&m->cfg);
    size_t nb = (size_t)Lm * m->cfg.n_experts;
    size_t n = m->num_params_global;
    // the whole model in the global layout (collective over the expert-parallel group)
    float* host = xmalloc((n > nb ? n : nb) * sizeof(float));
    model_get_params(m, host);
    if (rank == 0) {
        int32_t h[256] = {0};
        h[0] = MODEL_MAGIC;
        h[1] = CKPT_VERSION;
        h[2] = st->step;
        config_to_header(&m->cfg, h);
        h[20] = (int32_t)(n & 0x7fffffff);
        h[21] = (int32_t)(n >> 31);
        path_of(path, sizeof(path), dir, "model", st->step, -1);
        AtomicFile af;
        atomic_open(&af, path);
        atomic_write(&af, h, sizeof(h));
        atomic_write(&af, host, n * sizeof(float));
        ops->to_host(host, m->router_bias, nb * sizeof(float));
        atomic_write(&af, host, nb * sizeof(float));
        atomic_close(&af);
    }
    free(host);
    // this rank's state
    float* mom1 = xmalloc((opt->adam_n ? opt->adam_n : 1) * sizeof(float));
    float* mom2 = xmalloc((opt->adam_n ? opt->adam_n : 1) * sizeof(float));
    float* mmu = xmalloc((opt->muon_n ? opt->muon_n : 1) * sizeof(float));
    ops->to_host(mom1, opt->adam_m, opt->adam_n * sizeof(float));
    ops->to_host(mom2, opt->adam_v, opt->adam_n * sizeof(float));
    ops->to_host(mmu, opt->muon_m, opt->muon_n * sizeof(float));
    int32_t opt_t = opt->t;
    TrainState copy = *st;
    StateSection sec[] = {
        {"train_state", &copy, sizeof(copy)},
        {"opt_t", &opt_t, sizeof(opt_t)},
        {"adamw_m", mom1, opt->adam_n * sizeof(float)},
        {"adamw_v", mom2, opt->adam_n * sizeof(float)},
        {"muon_m", mmu, opt->muon_n * sizeof(float)},
    };
    int nsec = sizeof(sec) / sizeof(sec[0]);
    path_of(path, sizeof(path), dir, "state", st->step, rank);
    AtomicFile af;
    atomic_open(&af, path);
    int32_t h[64] = {STATE_MAGIC, CKPT_VERSION, st->step, rank, nsec};
    atomic_write(&af, h, sizeof(h));
    for (int i = 0; i < nsec; i++) {
        char name[32] = {0};
        snprintf(name, sizeof(name), "%s", sec[i].name);
        uint64_t bytes = sec[i].bytes;
        atomic_write(&af, name, sizeof(name));
        atomic_write(&af, &bytes, sizeof(bytes));
        atomic_write(&af, sec[i].data, sec[i].bytes);
    }
    atomic_close(&af);
    free(mom1);
    free(mom2);
    free(mmu);
    // the marker comes last, once every rank's state is on disk
    if (m->comm) comm_barrier(m->comm);
    if (rank == 0) {
        path_of(path, sizeof(path), dir, "DONE", st->step, -1);
        atomic_open(&af, path);
        atomic_write(&af, "done\n", 5);
        atomic_close(&af);
    }
}

static int list_done_steps(const char* dir, int** steps_out) {
    DIR* d = opendir(dir);
    if (!d) { *steps_out = NULL; return 0; }
    int cap = 16, n = 0;
    int* steps = xmalloc(cap * sizeof(int));
    struct dirent* e;
    while ((e = readdir(d))) {
        int s;
        char tail;
        if (sscanf(e->d_name, "DONE_%d%c", &s, &tail) == 1) {
            if (n == cap) { cap *= 2; steps = realloc(steps, cap * sizeof(int)); if (!steps) fatal("out of memory"); }
            steps[n++] = s;
        }
    }
    closedir(d);
    *steps_out = steps;
    return n;
}

int checkpoint_latest(const char* dir) {
    int* steps;
    int n = list_done_steps(dir, &steps);
    int best = -1;
    for (int i = 0; i < n; i++) best = steps[i] > best ? steps[i] : best;
    free(steps);
    return best;
}

static void read_exact(FILE* f, void* dst, size_t bytes, const char* path) {
    if (bytes && fread(dst, 1, bytes, f) != bytes) fatal("checkpoint: %s is truncated", path);
}

// The run's layout must match, or the continuation would not be the same run.
static void check_layout(const char* path, const TrainState* saved, const TrainState* st) {
    if (saved->world != st->world)
        fatal("checkpoint: %s was written by %d ranks, this run has %d: the optimizer state is sharded over the "
              "ranks, so resume with the same world size", path, saved->world, st->world);
    if (strcmp(saved->optimizer, st->optimizer) != 0)
        fatal("checkpoint: %s was written with --optim %s, this run uses %s", path, saved->optimizer, st->optimizer);
    struct { const char* flag; long long a, b; } chk[] = {
        {"--batch-size", saved->micro_batch, st->micro_batch}, {"--seq-len", saved->seq_len, st->seq_len},
        {"--total-batch (micro-batches per step)", saved->grad_accum, st->grad_accum},
        {"--ep", saved->ep, st->ep}, {"--seed", (long long)saved->seed, (long long)st->seed},
    };
    for (size_t i = 0; i < sizeof(chk) / sizeof(chk[0]); i++)
        if (chk[i].a != chk[i].b)
            fatal("checkpoint: %s was written with %s %lld, this run has %lld; resume with the same setting", path,
                  chk[i].flag, chk[i].a, chk[i].b);
}

void checkpoint_load(const char* dir, int step, Model* m, Optimizer* opt, TrainState* st, int rank) {
    const Ops* ops = m->ops;
    char path[1024];
    size_t n = m->num_params_global;
    int Lm = cfg_n_moe(&m->cfg);
    size_t nb = (size_t)Lm * m->cfg.n_experts;

    // --- model
    path_of(path, sizeof(path), dir, "model", step, -1);
    FILE* f = fopen(path, "rb");
    if (!f) fatal("checkpoint: cannot open %s: %s", path, strerror(errno));
    int32_t h[256];
    read_exact(f, h, sizeof(h), path);
    if (h[0] != MODEL_MAGIC) fatal("checkpoint: %s is not a train_moe model file (magic %d)", path, h[0]);
    if (h[1] != CKPT_VERSION) fatal("checkpoint: %s has version %d, this build reads %d", path, h[1], CKPT_VERSION);
    int32_t want[256] = {0};
    config_to_header(&m->cfg, want);
    for (int i = 0; i < 15; i++)
        if (h[3 + i] != want[3 + i])
            fatal("checkpoint: %s is for a model with %s = %d, but this run's model (%s) has %s = %d", path,
                  header_field_names[i], h[3 + i], m->cfg.name, header_field_names[i], want[3 + i]);
    if (memcmp(h + 32, want + 32, 3 * sizeof(float)) != 0)
        fatal("checkpoint: %s has different routed_scale / rope_theta / norm_eps than this run's model", path);
    size_t file_n = (size_t)(uint32_t)h[20] | ((size_t)(uint32_t)h[21] << 31);
    if (file_n != n) fatal("checkpoint: %s holds %zu parameters, the model has %zu", path, file_n, n);
    float* host = xmalloc((n > nb ? n : nb) * sizeof(float));
    read_exact(f, host, n * sizeof(float), path);
    model_set_params(m, host);
    read_exact(f, host, nb * sizeof(float), path);
    ops->to_device(m->router_bias, host, nb * sizeof(float));
    if (fgetc(f) != EOF) fatal("checkpoint: %s has trailing bytes after the parameters", path);
    fclose(f);
    free(host);

    // --- state. First rank 0's record of the run's layout, which every rank can read: a different world size
    // must be refused before ranks go looking for state files that do not exist.
    if (rank != 0) {
        char p0[1024];
        path_of(p0, sizeof(p0), dir, "state", step, 0);
        FILE* f0 = fopen(p0, "rb");
        if (!f0) fatal("checkpoint: cannot open %s: %s", p0, strerror(errno));
        int32_t h0[64];
        read_exact(f0, h0, sizeof(h0), p0);
        char name[32];
        uint64_t bytes;
        TrainState first;
        read_exact(f0, name, sizeof(name), p0);
        read_exact(f0, &bytes, sizeof(bytes), p0);
        if (h0[0] != STATE_MAGIC || strncmp(name, "train_state", 32) || bytes != sizeof(first))
            fatal("checkpoint: %s does not start with the training state", p0);
        read_exact(f0, &first, sizeof(first), p0);
        fclose(f0);
        if (first.world != st->world)
            fatal("checkpoint: %s was written by %d ranks, this run has %d: the optimizer state is sharded over the "
                  "ranks, so resume with the same world size", p0, first.world, st->world);
    }
    path_of(path, sizeof(path), dir, "state", step, rank);
    f = fopen(path, "rb");
    if (!f) fatal("checkpoint: cannot open %s: %s", path, strerror(errno));
    int32_t sh[64];
    read_exact(f, sh, sizeof(sh), path);
    if (sh[0] != STATE_MAGIC || sh[1] != CKPT_VERSION) fatal("checkpoint: %s is not a train_moe state file", path);
    if (sh[2] != step || sh[3] != rank) fatal("checkpoint: %s is for step %d rank %d", path, sh[2], sh[3]);
    TrainState saved;
    int got_state = 0, got_t = 0, got_m = 0, got_v = 0, got_mu = 0;
    for (int i = 0; i < sh[4]; i++) {
        char name[32];
        uint64_t bytes;
        read_exact(f, name, sizeof(name), path);
        read_exact(f, &bytes, sizeof(bytes), path);
        name[31] = 0;
        void* dst = NULL;
        size_t expect = 0;
        int is_device = 0;
        if (!strcmp(name, "train_state")) { dst = &saved; expect = sizeof(saved); got_state = 1; }
        else if (!strcmp(name, "opt_t")) { dst = &opt->t; expect = sizeof(int32_t); got_t = 1; }
        else if (!strcmp(name, "adamw_m")) { dst = opt->adam_m; expect = opt->adam_n * sizeof(float); is_device = 1; got_m = 1; }
        else if (!strcmp(name, "adamw_v")) { dst = opt->adam_v; expect = opt->adam_n * sizeof(float); is_device = 1; got_v = 1; }
        else if (!strcmp(name, "muon_m")) { dst = opt->muon_m; expect = opt->muon_n * sizeof(float); is_device = 1; got_mu = 1; }
        else fatal("checkpoint: %s has a section '%s' this build does not know", path, name);
        if (bytes != expect)
            fatal("checkpoint: %s section '%s' has %llu bytes, this run's optimizer needs %zu (different --optim, "
                  "--muon-router or model?)", path, name, (unsigned long long)bytes, expect);
        if (is_device) {
            void* tmp = xmalloc(bytes ? bytes : 1);
            read_exact(f, tmp, bytes, path);
            ops->to_device(dst, tmp, bytes);
            free(tmp);
        } else {
            read_exact(f, dst, bytes, path);
        }
        if (dst == &saved) check_layout(path, &saved, st);  // before the sections whose sizes depend on it
    }
    fclose(f);
    if (!(got_state && got_t && got_m && got_v && got_mu)) fatal("checkpoint: %s is missing optimizer or training state", path);
    *st = saved;
}

// Removes the checkpoints of steps[from..n) (sorted newest first); the marker goes first, so a half-removed
// checkpoint is never taken for a complete one.
static void remove_steps(const char* dir, const int* steps, int from, int n) {
    for (int i = from; i < n; i++) {
        char path[1024];
        path_of(path, sizeof(path), dir, "DONE", steps[i], -1);
        unlink(path);
        path_of(path, sizeof(path), dir, "KEEP", steps[i], -1);
        unlink(path);
        path_of(path, sizeof(path), dir, "model", steps[i], -1);
        unlink(path);
        for (int r = 0;; r++) {
            path_of(path, sizeof(path), dir, "state", steps[i], r);
            if (unlink(path) != 0) break;
        }
    }
}

static int sorted_done_steps(const char* dir, int** steps) {
    int n = list_done_steps(dir, steps);
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && (*steps)[j - 1] < (*steps)[j]; j--) {
            int t = (*steps)[j]; (*steps)[j] = (*steps)[j - 1]; (*steps)[j - 1] = t;
        }
    return n;
}

void checkpoint_prune(const char* dir, int keep) {
    if (keep <= 0) return;
    int* steps;
    int n = sorted_done_steps(dir, &steps);
    // drop protected checkpoints from the removal list (they neither count toward `keep` nor go)
    int m = 0;
    for (int i = 0; i < n; i++) {
        char path[1024];
        path_of(path, sizeof(path), dir, "KEEP", steps[i], -1);
        if (i < keep || access(path, F_OK) != 0) steps[m++] = steps[i];
    }
    remove_steps(dir, steps, keep, m);
    free(steps);
}

void checkpoint_protect(const char* dir, int step) {
    char path[1024];
    path_of(path, sizeof(path), dir, "KEEP", step, -1);
    AtomicFile af;
    atomic_open(&af, path);
    atomic_write(&af, "replay\n", 7);
    atomic_close(&af);
}

void checkpoint_remove_all(const char* dir) {
    int* steps;
    int n = sorted_done_steps(dir, &steps);
    remove_steps(dir, steps, 0, n);
    free(steps);
}
