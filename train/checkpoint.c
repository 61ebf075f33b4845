// train/checkpoint.c: see checkpoint.h.
#include "checkpoint.h"
#include "crc32c.h"
#include "atomic_file.h"
#include <math.h>
#include <dirent.h>
#include <stdarg.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>


static void path_of(char* out, size_t n, const char* dir, const char* kind, int step, int rank) {
    if (rank >= 0) snprintf(out, n, "%s/%s_%08d_r%d.bin", dir, kind, step, rank);
    else if (!strcmp(kind, "DONE") || !strcmp(kind, "KEEP")) snprintf(out, n, "%s/%s_%08d", dir, kind, step);
    else snprintf(out, n, "%s/%s_%08d.bin", dir, kind, step);
}

static void ensure_dir(const char* dir) {
    mkdir_parents(dir);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) fatal("checkpoint: cannot create directory %s: %s", dir, strerror(errno));
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

#define N_HEADER_FIELDS (int)(sizeof(header_field_names) / sizeof(header_field_names[0]))
#define MODEL_NPARAMS_SLOT 20  // the parameter count: low 31 bits here, the rest in the next slot

// The shape of tensor t of the whole model: single tensors (embedding, final norm, head) have no leading
// dimension; per-layer ones lead with their layer count, even when it is 0 or 1; the experts with (MoE layers,
// experts). Norm gains are vectors.
static int tensor_shape(const ModelConfig* c, const ParamTensor* p, int t, int* dims) {
    int n = 0;
    if (t == P_EXPERT_W13 || t == P_EXPERT_W2) { dims[n++] = cfg_n_moe(c); dims[n++] = c->n_experts; }
    else if (t != P_WTE && t != P_FINAL_NORM && t != P_LM_HEAD) dims[n++] = p->count;
    if (p->kind != PARAM_NORM) dims[n++] = p->rows;
    dims[n++] = p->cols;
    return n;
}

void checkpoint_print_layout(const ModelConfig* c, FILE* f) {
    ParamTensor layout[NUM_PARAM_TENSORS];
    size_t n = param_layout(c, c->n_experts, layout);
    int32_t h[MODEL_HEADER_INTS] = {0};
    config_to_header(c, h);
    fprintf(f, "{\"model\":\"%s\",\"header\":{\"ints\":%d,\"bytes\":%zu,\"magic\":%d,\"version\":%d,\"step_slot\":2,"
            "\"crc_slot\":%d,\"num_params_slots\":[%d,%d],\"config_slots\":{", c->name, MODEL_HEADER_INTS,
            MODEL_HEADER_INTS * sizeof(int32_t), MODEL_MAGIC, CKPT_VERSION, MODEL_CRC_SLOT, MODEL_NPARAMS_SLOT,
            MODEL_NPARAMS_SLOT + 1);
    for (int i = 0; i < N_HEADER_FIELDS; i++) fprintf(f, "%s\"%s\":%d", i ? "," : "", header_field_names[i], 3 + i);
    fprintf(f, "}},\"config\":{");
    for (int i = 0; i < N_HEADER_FIELDS; i++) fprintf(f, "%s\"%s\":%d", i ? "," : "", header_field_names[i], h[3 + i]);
    fprintf(f, "},\"num_params\":%zu,\"router_bias\":%zu,\"tensors\":[", n, (size_t)cfg_n_moe(c) * c->n_experts);
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        const ParamTensor* p = &layout[t];
        int dims[4], nd = tensor_shape(c, p, t, dims);
        fprintf(f, "%s{\"name\":\"%s\",\"offset\":%zu,\"numel\":%zu,\"count\":%d,\"shape\":[", t ? "," : "", p->name,
                p->offset, p->numel, p->count);
        for (int d = 0; d < nd; d++) fprintf(f, "%s%d", d ? "," : "", dims[d]);
        fprintf(f, "]}");
    }
    fprintf(f, "]}\n");
}

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
        int32_t h[MODEL_HEADER_INTS] = {0};
        h[0] = MODEL_MAGIC;
        h[1] = CKPT_VERSION;
        h[2] = st->step;
        config_to_header(&m->cfg, h);
        h[MODEL_NPARAMS_SLOT] = (int32_t)(n & 0x7fffffff);
        h[MODEL_NPARAMS_SLOT + 1] = (int32_t)(n >> 31);
        path_of(path, sizeof(path), dir, "model", st->step, -1);
        AtomicFile af;
        atomic_open(&af, path, "checkpoint");
        atomic_write(&af, h, sizeof(h));
        atomic_write(&af, host, n * sizeof(float));
        ops->to_host(host, m->router_bias, nb * sizeof(float));
        atomic_write(&af, host, nb * sizeof(float));
        atomic_store_crc(&af, MODEL_CRC_SLOT);
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
    atomic_open(&af, path, "checkpoint");
    int32_t h[STATE_HEADER_INTS] = {STATE_MAGIC, CKPT_VERSION, st->step, rank, nsec};
    atomic_write(&af, h, sizeof(h));
    for (int i = 0; i < nsec; i++) {
        char name[32] = {0};
        snprintf(name, sizeof(name), "%s", sec[i].name);
        uint64_t bytes = sec[i].bytes;
        atomic_write(&af, name, sizeof(name));
        atomic_write(&af, &bytes, sizeof(bytes));
        atomic_write(&af, sec[i].data, sec[i].bytes);
    }
    atomic_store_crc(&af, STATE_CRC_SLOT);
    atomic_close(&af);
    free(mom1);
    free(mom2);
    free(mmu);
    // the marker comes last, once every rank's state is on disk
    if (m->comm) comm_barrier(m->comm);
    if (rank == 0) {
        path_of(path, sizeof(path), dir, "DONE", st->step, -1);
        atomic_open(&af, path, "checkpoint");
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

// Files of checkpoints that never completed or were half removed: a kill during a write leaves *.tmp files, a
// kill during pruning (which removes the DONE marker first) leaves model and state files without their marker.
// Neither can ever be loaded. Only called between checkpoints (rank 0, after every rank's part of the newest one
// is on disk), so no file counted here is still being written.
static void remove_orphans(const char* dir) {
    DIR* d = opendir(dir);
    if (!d) return;
    struct dirent* e;
    while ((e = readdir(d))) {
        const char* name = e->d_name;
        size_t len = strlen(name);
        int step = -1, r;
        char tail;
        int is_tmp = len > 4 && !strcmp(name + len - 4, ".tmp");
        int ours = !strncmp(name, "model_", 6) || !strncmp(name, "state_", 6) || !strncmp(name, "DONE_", 5) ||
                   !strncmp(name, "KEEP_", 5);
        if (!ours) continue;
        if (!is_tmp) {
            if (sscanf(name, "model_%d.bi%c", &step, &tail) == 2 && tail == 'n') {}
            else if (sscanf(name, "state_%d_r%d.bi%c", &step, &r, &tail) == 3 && tail == 'n') {}
            else if (sscanf(name, "KEEP_%d%c", &step, &tail) == 1) {}
            else continue;  // DONE markers, and names this trainer does not write
            char done[1024];
            path_of(done, sizeof(done), dir, "DONE", step, -1);
            if (access(done, F_OK) == 0) continue;
        }
        char path[1024];
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        unlink(path);
    }
    closedir(d);
}

void checkpoint_prune(const char* dir, int keep) {
    remove_orphans(dir);
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
    atomic_open(&af, path, "checkpoint");
    atomic_write(&af, "replay\n", 7);
    atomic_close(&af);
}

void checkpoint_remove_all(const char* dir) {
    int* steps;
    int n = sorted_done_steps(dir, &steps);
    remove_steps(dir, steps, 0, n);
    free(steps);
    remove_orphans(dir);
}

// ---- loading. Every file is read whole into host memory and checked (checksum, structure, ranges) before any of
// it reaches the model or the optimizer; a checkpoint that fails a check on any rank is not used at all. Two kinds
// of failure: a damaged file (checksum, truncation, a value out of range) is a reason to fall back to an older
// checkpoint; an intact file written with other settings (model, batch layout, optimizer) is a fatal user error.

// The whole file, or NULL with the reason in why.
static uint8_t* read_file(const char* path, size_t* len, char* why, size_t why_n) {
    FILE* f = fopen(path, "rb");
    if (!f) { fail_why(why, why_n, path, "cannot open: %s", strerror(errno)); return NULL; }
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        fail_why(why, why_n, path, "not a regular file");
        return NULL;
    }
    size_t n = (size_t)sb.st_size;
    uint8_t* buf = xmalloc(n ? n : 1);
    if (n && fread(buf, 1, n, f) != n) {
        fail_why(why, why_n, path, "read failed: %s", ferror(f) ? strerror(errno) : "shorter than its size");
        fclose(f);
        free(buf);
        return NULL;
    }
    fclose(f);
    *len = n;
    return buf;
}

// Files store fp32 little-endian at 4-byte offsets; memcpy keeps reads legal for any buffer (a fuzzer's).
static float f32_at(const uint8_t* p, size_t i) {
    float x;
    memcpy(&x, p + 4 * i, 4);
    return x;
}

static size_t first_nonfinite(const uint8_t* p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(f32_at(p, i))) return i;
    return n;
}

// The CRC32C of the file with its header slot taken as zero (how the writer computed it) against the stored one.
static int crc_matches(const uint8_t* buf, size_t len, int slot, const char* path, char* why, size_t why_n) {
    uint32_t stored, zero = 0;
    memcpy(&stored, buf + 4 * slot, 4);
    uint32_t c = crc32c_update(0, buf, 4 * (size_t)slot);
    c = crc32c_update(c, &zero, 4);
    c = crc32c_update(c, buf + 4 * slot + 4, len - 4 * (size_t)slot - 4);
    if (c == stored) return 1;
    return fail_why(why, why_n, path, "checksum mismatch (stored %08x, computed %08x): the file was damaged after it "
               "was written", stored, c);
}

// ---- the model file: checks that need nothing but its bytes

typedef struct {
    int32_t h[MODEL_HEADER_INTS];  // the header: magic, version, step, config, parameter count, CRC
    size_t n;                      // parameters in the global layout
    size_t nb;                     // router-bias entries (MoE layers x experts)
    const uint8_t* params;         // (n) fp32, inside the file's bytes
    const uint8_t* bias;           // (nb) fp32
} ModelBytes;

static int parse_model_bytes(const uint8_t* buf, size_t len, const char* path, ModelBytes* mb, char* why, size_t why_n) {
    size_t hb = sizeof(mb->h);
    if (len < hb) return fail_why(why, why_n, path, "truncated: %zu bytes, shorter than the %zu-byte header", len, hb);
    memcpy(mb->h, buf, hb);
    const int32_t* h = mb->h;
    if (h[0] != MODEL_MAGIC) return fail_why(why, why_n, path, "not a train_moe model file (magic %d)", h[0]);
    if (h[1] != 1 && h[1] != CKPT_VERSION)
        return fail_why(why, why_n, path, "version %d, this build reads 1 and %d", h[1], CKPT_VERSION);
    if (h[2] < 0) return fail_why(why, why_n, path, "step %d in the header is negative", h[2]);
    int n_layers = h[5], n_dense = h[6], n_experts = h[13];  // header fields 3.. follow config_to_header
    if (n_dense < 0 || n_dense > n_layers || n_layers > 65536 || n_experts < 0 || n_experts > (1 << 20))
        return fail_why(why, why_n, path, "impossible layer or expert counts in the header (n_layers %d, n_dense_layers "
                   "%d, n_experts %d)", n_layers, n_dense, n_experts);
    mb->n = (size_t)(uint32_t)h[MODEL_NPARAMS_SLOT] | ((size_t)(uint32_t)h[MODEL_NPARAMS_SLOT + 1] << 31);
    mb->nb = (size_t)(n_layers - n_dense) * n_experts;
    size_t payload = len - hb;
    if (payload % 4) return fail_why(why, why_n, path, "%zu bytes after the header, not a whole number of floats", payload);
    size_t floats = payload / 4;
    if (mb->n > floats || mb->nb > floats - mb->n)
        return fail_why(why, why_n, path, "truncated: %zu floats after the header, the header says %zu parameters + %zu "
                   "router-bias entries", floats, mb->n, mb->nb);
    if (mb->n + mb->nb < floats)
        return fail_why(why, why_n, path, "%zu trailing bytes after the parameters", 4 * (floats - mb->n - mb->nb));
    if (h[1] >= 2 && !crc_matches(buf, len, MODEL_CRC_SLOT, path, why, why_n)) return 0;
    mb->params = buf + hb;
    mb->bias = mb->params + 4 * mb->n;
    size_t i = first_nonfinite(mb->params, mb->n);
    if (i < mb->n) return fail_why(why, why_n, path, "weight %zu of %zu is not finite (%g)", i, mb->n, f32_at(mb->params, i));
    i = first_nonfinite(mb->bias, mb->nb);
    if (i < mb->nb) return fail_why(why, why_n, path, "router bias %zu is not finite (%g)", i, f32_at(mb->bias, i));
    return 1;
}

// ---- the state file: checks that need nothing but its bytes

typedef struct {
    int32_t h[STATE_HEADER_INTS];  // magic, version, step, rank, sections, CRC
    TrainState ts;                 // a copy (the bytes need not be aligned)
    int32_t opt_t;                 // optimizer updates applied
    const uint8_t* adam_m;         // (adam_n) fp32 AdamW first moment, inside the file's bytes
    const uint8_t* adam_v;         // (adam_n) second moment
    size_t adam_n;
    const uint8_t* muon_m;         // (muon_n) Muon momentum
    size_t muon_n;
} StateBytes;

static const char* const state_section_names[] = {"train_state", "opt_t", "adamw_m", "adamw_v", "muon_m"};
#define N_STATE_SECTIONS 5

// Walks the named sections: every one known, present once, inside the file, of a sensible size; nothing after.
static int parse_state_sections(const uint8_t* buf, size_t len, const char* path, StateBytes* sb, char* why, size_t why_n) {
    int nsec = sb->h[4];
    if (nsec < 0 || nsec > 64) return fail_why(why, why_n, path, "the header claims %d sections", nsec);
    int got[N_STATE_SECTIONS] = {0};
    size_t pos = sizeof(sb->h), adam_v_n = 0;
    for (int i = 0; i < nsec; i++) {
        if (len - pos < 40) return fail_why(why, why_n, path, "truncated in the header of section %d", i);
        char name[32];
        uint64_t bytes;
        memcpy(name, buf + pos, 32);
        memcpy(&bytes, buf + pos + 32, 8);
        pos += 40;
        if (!memchr(name, 0, sizeof(name))) return fail_why(why, why_n, path, "section %d has an unterminated name", i);
        int k = 0;
        while (k < N_STATE_SECTIONS && strcmp(name, state_section_names[k])) k++;
        if (k == N_STATE_SECTIONS) return fail_why(why, why_n, path, "a section '%s' this build does not know", name);
        if (got[k]++) return fail_why(why, why_n, path, "section '%s' appears twice", name);
        if (bytes > len - pos)
            return fail_why(why, why_n, path, "truncated: section '%s' needs %llu bytes, %zu are left", name,
                       (unsigned long long)bytes, len - pos);
        const uint8_t* data = buf + pos;
        pos += bytes;
        size_t want = k == 0 ? sizeof(TrainState) : k == 1 ? sizeof(int32_t) : 0;
        if ((want && bytes != want) || (!want && bytes % 4))
            return fail_why(why, why_n, path, "section '%s' has %llu bytes, %s", name, (unsigned long long)bytes,
                       want ? "not the size this build's record has" : "not a whole number of floats");
        if (k == 0) memcpy(&sb->ts, data, sizeof(TrainState));
        else if (k == 1) memcpy(&sb->opt_t, data, sizeof(int32_t));
        else if (k == 2) { sb->adam_m = data; sb->adam_n = bytes / 4; }
        else if (k == 3) { sb->adam_v = data; adam_v_n = bytes / 4; }
        else { sb->muon_m = data; sb->muon_n = bytes / 4; }
    }
    if (pos != len) return fail_why(why, why_n, path, "%zu trailing bytes after the last section", len - pos);
    for (int k = 0; k < N_STATE_SECTIONS; k++)
        if (!got[k]) return fail_why(why, why_n, path, "section '%s' is missing", state_section_names[k]);
    if (adam_v_n != sb->adam_n) return fail_why(why, why_n, path, "sections 'adamw_m' and 'adamw_v' differ in size");
    return 1;
}

// Every field the next steps index with, divide by or feed to the update, within what a run could have written.
static int state_in_range(const char* path, const StateBytes* sb, char* why, size_t why_n) {
    const TrainState* ts = &sb->ts;
    char msg[256];
    if (ts->step < 0) return fail_why(why, why_n, path, "step %d is negative", ts->step);
    if (ts->step != sb->h[2]) return fail_why(why, why_n, path, "step %d disagrees with the header's %d", ts->step, sb->h[2]);
    if (sb->opt_t < 0 || sb->opt_t > ts->step)
        return fail_why(why, why_n, path, "optimizer update count %d outside [0, step %d]", sb->opt_t, ts->step);
    if (ts->bad_in_row < 0 || ts->bad_in_row > ts->step)
        return fail_why(why, why_n, path, "skipped-step count %d outside [0, step %d]", ts->bad_in_row, ts->step);
    if (!memchr(ts->optimizer, 0, sizeof(ts->optimizer))) return fail_why(why, why_n, path, "optimizer name is not terminated");
    if (ts->micro_batch < 1 || ts->seq_len < 1 || ts->grad_accum < 1 || ts->world < 1 || ts->ep < 1)
        return fail_why(why, why_n, path, "run layout has a size below 1 (batch %d, seq_len %d, micro-batches %d, world %d, "
                   "ep %d)", ts->micro_batch, ts->seq_len, ts->grad_accum, ts->world, ts->ep);
    if (sb->h[3] < 0 || sb->h[3] >= ts->world)
        return fail_why(why, why_n, path, "rank %d outside the %d ranks that wrote it", sb->h[3], ts->world);
    if (!spikes_valid(&ts->spikes, msg, sizeof(msg))) return fail_why(why, why_n, path, "%s", msg);
    // the loader advances by micro_batch * world windows at a time and starts a new epoch at most once per batch
    uint64_t batch_windows = (uint64_t)ts->micro_batch * (uint64_t)ts->world;
    if (ts->data_cursor % batch_windows)
        return fail_why(why, why_n, path, "data cursor %llu is not a multiple of the %llu windows a batch takes",
                   (unsigned long long)ts->data_cursor, (unsigned long long)batch_windows);
    if (ts->data_epoch > (uint64_t)ts->step * (uint64_t)ts->grad_accum)
        return fail_why(why, why_n, path, "data epoch %llu is more than %d steps can reach",
                   (unsigned long long)ts->data_epoch, ts->step);
    size_t i = first_nonfinite(sb->adam_m, sb->adam_n);
    if (i < sb->adam_n) return fail_why(why, why_n, path, "Adam first moment %zu is not finite (%g)", i, f32_at(sb->adam_m, i));
    for (i = 0; i < sb->adam_n; i++) {
        float v = f32_at(sb->adam_v, i);
        if (!(v >= 0.0f) || isinf(v))  // sqrt of a negative one puts NaN into the weights
            return fail_why(why, why_n, path, "Adam second moment %zu is %g (must be finite and >= 0)", i, v);
    }
    i = first_nonfinite(sb->muon_m, sb->muon_n);
    if (i < sb->muon_n) return fail_why(why, why_n, path, "Muon momentum %zu is not finite (%g)", i, f32_at(sb->muon_m, i));
    return 1;
}

static int parse_state_bytes(const uint8_t* buf, size_t len, const char* path, StateBytes* sb, char* why, size_t why_n) {
    memset(sb, 0, sizeof(*sb));
    if (len < sizeof(sb->h))
        return fail_why(why, why_n, path, "truncated: %zu bytes, shorter than the %zu-byte header", len, sizeof(sb->h));
    memcpy(sb->h, buf, sizeof(sb->h));
    if (sb->h[0] != STATE_MAGIC) return fail_why(why, why_n, path, "not a train_moe state file (magic %d)", sb->h[0]);
    if (sb->h[1] != 1 && sb->h[1] != CKPT_VERSION)
        return fail_why(why, why_n, path, "version %d, this build reads 1 and %d", sb->h[1], CKPT_VERSION);
    if (!parse_state_sections(buf, len, path, sb, why, why_n)) return 0;
    if (sb->h[1] >= 2 && !crc_matches(buf, len, STATE_CRC_SLOT, path, why, why_n)) return 0;
    return state_in_range(path, sb, why, why_n);
}

int checkpoint_check_bytes(const void* data, size_t bytes, char* why, size_t why_n) {
    const uint8_t* buf = (const uint8_t*)data;
    int32_t magic = 0;
    if (bytes >= 4) memcpy(&magic, buf, 4);
    if (magic == MODEL_MAGIC) {
        ModelBytes mb;
        return parse_model_bytes(buf, bytes, "model bytes", &mb, why, why_n);
    }
    if (magic == STATE_MAGIC) {
        StateBytes* sb = xmalloc(sizeof(StateBytes));  // ~16 KiB of spike window: off the stack
        int ok = parse_state_bytes(buf, bytes, "state bytes", sb, why, why_n);
        free(sb);
        return ok;
    }
    return fail_why(why, why_n, "bytes", "neither a train_moe model nor a state file (%zu bytes, magic %d)", bytes, magic);
}

// ---- a model file on its own (--export-hf)

// The inverse of config_to_header.
static void header_to_config(const int32_t* h, ModelConfig* c) {
    memset(c, 0, sizeof(*c));
    int32_t v[N_HEADER_FIELDS];
    memcpy(v, h + 3, sizeof(v));
    c->vocab_size = v[0]; c->d_model = v[1]; c->n_layers = v[2]; c->n_dense_layers = v[3]; c->n_heads = v[4];
    c->q_lora = v[5]; c->kv_lora = v[6]; c->qk_nope = v[7]; c->qk_rope = v[8]; c->v_head = v[9];
    c->n_experts = v[10]; c->top_k = v[11]; c->moe_hidden = v[12]; c->dense_hidden = v[13]; c->seq_len = v[14];
    float fl[3];
    memcpy(fl, h + 32, sizeof(fl));
    c->routed_scale = fl[0]; c->rope_theta = fl[1]; c->norm_eps = fl[2];
    memcpy(c->name, h + 64, sizeof(c->name));
    c->name[sizeof(c->name) - 1] = 0;
}

int checkpoint_read_model(const char* dir, int step, CheckpointModel* out, char* why, size_t why_n) {
    memset(out, 0, sizeof(*out));
    if (step < 0) {
        step = checkpoint_latest(dir);
        if (step < 0) { snprintf(why, why_n, "%s: no complete checkpoint (no DONE_* marker)", dir); return 0; }
    }
    char path[1024];
    path_of(path, sizeof(path), dir, "DONE", step, -1);
    if (access(path, F_OK) != 0) {
        snprintf(why, why_n, "%s: no complete checkpoint of step %d (no %s)", dir, step, path);
        return 0;
    }
    path_of(path, sizeof(path), dir, "model", step, -1);
    size_t len = 0;
    uint8_t* buf = read_file(path, &len, why, why_n);
    ModelBytes mb;
    if (!buf || !parse_model_bytes(buf, len, path, &mb, why, why_n)) { free(buf); return 0; }
    out->buf = buf;
    if (mb.h[2] != step) { checkpoint_model_free(out); return fail_why(why, why_n, path, "the header is for step %d", mb.h[2]); }
    header_to_config(mb.h, &out->cfg);
    char msg[256];
    if (!config_validate(&out->cfg, msg, sizeof(msg))) {
        checkpoint_model_free(out);
        return fail_why(why, why_n, path, "the header's model config: %s", msg);
    }
    ParamTensor layout[NUM_PARAM_TENSORS];
    size_t n = param_layout(&out->cfg, out->cfg.n_experts, layout), nb = (size_t)cfg_n_moe(&out->cfg) * out->cfg.n_experts;
    if (mb.n != n || mb.nb != nb) {
        checkpoint_model_free(out);
        return fail_why(why, why_n, path, "%zu parameters + %zu router-bias entries, its header's config has %zu + %zu", mb.n,
                   mb.nb, n, nb);
    }
    if (mb.h[1] < 2)
        fprintf(stderr, "warning: checkpoint: %s is version %d (an older build's) and carries no checksum; loading it "
                "with range checks only\n", path, mb.h[1]);
    out->step = step;
    out->n = mb.n;
    out->nb = mb.nb;
    out->params = (const float*)mb.params;  // 4-byte aligned: the header's size into a malloc'd buffer
    out->bias = (const float*)mb.bias;
    return 1;
}

void checkpoint_model_free(CheckpointModel* cm) {
    free(cm->buf);
    memset(cm, 0, sizeof(*cm));
}

// ---- checks against the running job

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

// The model file of checkpoint `step` for this run's model: a different config is the user's mistake (fatal).
static int model_fits_run(const char* path, const ModelBytes* mb, int step, const Model* m, char* why, size_t why_n) {
    if (mb->h[2] != step) return fail_why(why, why_n, path, "the header is for step %d", mb->h[2]);
    int32_t want[MODEL_HEADER_INTS] = {0};
    config_to_header(&m->cfg, want);
    for (int i = 0; i < 15; i++)
        if (mb->h[3 + i] != want[3 + i])
            fatal("checkpoint: %s is for a model with %s = %d, but this run's model (%s) has %s = %d", path,
                  header_field_names[i], mb->h[3 + i], m->cfg.name, header_field_names[i], want[3 + i]);
    if (memcmp(mb->h + 32, want + 32, 3 * sizeof(float)) != 0)
        fatal("checkpoint: %s has different routed_scale / rope_theta / norm_eps than this run's model", path);
    if (mb->n != m->num_params_global)
        fatal("checkpoint: %s holds %zu parameters, the model has %zu", path, mb->n, m->num_params_global);
    return 1;
}

// Rank `rank`'s state file of checkpoint `step` for this run: position and data bounds (a damaged file), then the
// layout and optimizer sizes (an intact file of another run's settings: fatal).
static int state_fits_run(const char* path, const StateBytes* sb, int step, int rank, const TrainState* st,
                          const Optimizer* opt, const CheckpointLimits* lim, char* why, size_t why_n) {
    if (sb->h[2] != step || sb->h[3] != rank)
        return fail_why(why, why_n, path, "the header is for step %d rank %d", sb->h[2], sb->h[3]);
    if (sb->ts.step > lim->max_step)
        return fail_why(why, why_n, path, "step %d outside [0, --steps %d]", sb->ts.step, lim->max_step);
    if (sb->ts.data_cursor > lim->n_windows)
        return fail_why(why, why_n, path, "data cursor %llu is past the training data's %llu windows",
                   (unsigned long long)sb->ts.data_cursor, (unsigned long long)lim->n_windows);
    check_layout(path, &sb->ts, st);
    if (sb->adam_n != opt->adam_n || sb->muon_n != opt->muon_n)
        fatal("checkpoint: %s holds optimizer state for %zu AdamW + %zu Muon elements, this run's optimizer needs %zu "
              "+ %zu (different --optim, --muon-router or model?)", path, sb->adam_n, sb->muon_n, opt->adam_n,
              opt->muon_n);
    return 1;
}

static void apply_checkpoint(Model* m, Optimizer* opt, TrainState* st, const ModelBytes* mb, const StateBytes* sb) {
    const Ops* ops = m->ops;
    model_set_params(m, (const float*)mb->params);  // 4-byte aligned: the header's size into a malloc'd buffer
    ops->to_device(m->router_bias, mb->bias, mb->nb * sizeof(float));
    ops->to_device(opt->adam_m, sb->adam_m, sb->adam_n * sizeof(float));
    ops->to_device(opt->adam_v, sb->adam_v, sb->adam_n * sizeof(float));
    ops->to_device(opt->muon_m, sb->muon_m, sb->muon_n * sizeof(float));
    opt->t = sb->opt_t;
    *st = sb->ts;
}

// Reads and checks checkpoint `step` on every rank (each its own state file), and applies it only if every rank's
// files pass: 1 when applied, 0 when not, with this rank's failure (if it had one) in why. The model file is
// read by every rank, but its failure is reported by rank 0 alone.
static int try_load(const char* dir, int step, Model* m, Optimizer* opt, TrainState* st, int rank,
                    const CheckpointLimits* lim, char* why, size_t why_n) {
    char mpath[1024], spath[1024];
    path_of(mpath, sizeof(mpath), dir, "model", step, -1);
    path_of(spath, sizeof(spath), dir, "state", step, rank);
    why[0] = 0;
    size_t mlen = 0, slen = 0;
    ModelBytes mb;
    memset(&mb, 0, sizeof(mb));
    StateBytes* sb = xmalloc(sizeof(StateBytes));
    memset(sb, 0, sizeof(*sb));
    uint8_t* sbuf = NULL;
    uint8_t* mbuf = read_file(mpath, &mlen, why, why_n);
    int ok = mbuf && parse_model_bytes(mbuf, mlen, mpath, &mb, why, why_n) && model_fits_run(mpath, &mb, step, m, why, why_n);
    if (ok) {
        sbuf = read_file(spath, &slen, why, why_n);
        ok = sbuf && parse_state_bytes(sbuf, slen, spath, sb, why, why_n) &&
             state_fits_run(spath, sb, step, rank, st, opt, lim, why, why_n);
    } else if (rank != 0) {
        why[0] = 0;
    }
    int all_ok = ok;
    if (m->comm && m->comm->world > 1) {  // the same decision on every rank, before any rank applies anything
        double failed = !ok;
        comm_allreduce_max_f64(m->comm, GROUP_WORLD, &failed, 1);
        all_ok = failed == 0.0;
    }
    if (all_ok) {
        if (rank == 0 && (mb.h[1] < 2 || sb->h[1] < 2))
            fprintf(stderr, "warning: checkpoint: %s is version %d (an older build's) and carries no checksum; "
                    "loading it with range checks only\n", mb.h[1] < 2 ? mpath : spath, mb.h[1] < 2 ? mb.h[1] : sb->h[1]);
        apply_checkpoint(m, opt, st, &mb, sb);
    }
    free(mbuf);
    free(sbuf);
    free(sb);
    return all_ok;
}

// A failed check with nothing to fall back to: the rank that found it says which, in one error line; the others
// wait in a barrier that its abort ends, so its line is the one printed (they speak only if no rank had a reason).
static void refuse(const Model* m, const char* why, const char* dir, const char* what) {
    if (why[0]) fatal("checkpoint: %s; %s", why, what);
    if (m->comm && m->comm->world > 1) comm_barrier(m->comm);
    fatal("checkpoint: %s failed a check on some rank; %s", dir, what);
}

void checkpoint_load(const char* dir, int step, Model* m, Optimizer* opt, TrainState* st, int rank,
                     const CheckpointLimits* lim) {
    char why[1536];
    if (!try_load(dir, step, m, opt, st, rank, lim, why, sizeof(why))) refuse(m, why, dir, "refusing to load it");
}

int checkpoint_resume(const char* dir, Model* m, Optimizer* opt, TrainState* st, int rank, const CheckpointLimits* lim) {
    int* steps;
    int n = sorted_done_steps(dir, &steps);
    if (n == 0) fatal("flag --resume: no complete checkpoint in %s", dir);
    if (steps[0] > lim->max_step) fatal("flag --steps = %d is below the checkpoint's step %d", lim->max_step, steps[0]);
    char why[1536];
    for (int i = 0; i + 1 < n; i++) {
        if (try_load(dir, steps[i], m, opt, st, rank, lim, why, sizeof(why))) {
            int step = steps[i];
            free(steps);
            return step;
        }
        if (why[0]) fprintf(stderr, "warning: checkpoint: %s; falling back to step %d\n", why, steps[i + 1]);
        fflush(stderr);
    }
    int oldest = steps[n - 1];
    free(steps);
    if (try_load(dir, oldest, m, opt, st, rank, lim, why, sizeof(why))) return oldest;
    char what[256];
    snprintf(what, sizeof(what), "no usable checkpoint is left (%d complete, every one failed a check): refusing to "
             "resume", n);
    refuse(m, why, dir, what);
    return -1;
}
