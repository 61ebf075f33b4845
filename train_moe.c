// train_moe.c: the one binary. Flags, setup, the training loop, evaluation, sampling, logging, checkpoints.
//
//   ./train_moe --model k2-nano                       train on the default corpus (make data)
//   ./train_moe --model k2-nano --resume              continue the run in --out from its newest checkpoint
//   ./train_moe --help                                every flag
//   mpirun -np 4 ./train_moe --ep 2 --optim muon      4 ranks: data parallel, experts split over pairs of ranks
#include <math.h>
#include <errno.h>
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

// ----------------------------------------------------------------------------
// flags

typedef struct {
    const char* model;        // preset name
    const char* device;       // auto | cpu | cuda
    const char* train_data;   // glob of training shards
    const char* val_data;     // glob of validation shards ("" = none)
    const char* tokenizer;    // tokenizer.bin for samples
    const char* out;          // run directory: log.jsonl and checkpoints
    int batch_size;           // B, sequences per micro-batch per rank
    int seq_len;              // T (0 = the preset's)
    int vocab_size;           // override (0 = the preset's)
    long long total_batch;    // tokens per optimizer step over all ranks (0 = B*T*world)
    int steps;
    float lr, min_lr_frac;
    int warmup;
    const char* schedule;     // cosine | wsd | constant
    float decay_frac;
    const char* optim;        // adamw | muon
    float weight_decay, beta1, beta2, adam_eps, grad_clip;
    float muon_momentum;
    const char* ns;           // Newton-Schulz table: default | polar
    int muon_router;
    float qk_clip_tau;        // QK-Clip threshold (0 = off)
    float balance_alpha, bias_gamma;
    long long seed;
    int val_every, val_batches, sample_every, sample_tokens;
    int ckpt_every, ckpt_keep;
    int resume, overwrite;
    int threads;
    int ep;                   // expert-parallel group size
    float peak_gflops;        // 0 = measure sgemm at start
    int max_bad_steps;        // consecutive non-finite steps before the run stops
    float spike_z;            // z-score above which a step's loss or grad norm is a spike (0 = no detection)
    int spike_window;         // steps in the rolling window
    int skip_spikes;          // skip the update of a spike step
    const char* replay;       // "S0:S1": re-run steps S0+1..S1 from checkpoint S0 with full telemetry
    int inject_nan;           // testing: step whose gradients are made NaN
    int inject_spike;         // testing: step whose targets are replaced by random tokens
    int profile;              // per-op time breakdown
    int list_models;
    int help;
} Flags;

typedef enum { F_INT, F_LLONG, F_FLOAT, F_STR, F_BOOL } FlagType;
typedef struct {
    const char* name;
    FlagType type;
    void* ptr;
    const char* help;
} FlagSpec;

static Flags flags = {
    .model = "k2-nano", .device = "auto", .train_data = "data/default/train_*.bin",
    .val_data = "data/default/val_*.bin", .tokenizer = "data/default/tokenizer.bin", .out = NULL,
    .batch_size = 8, .seq_len = 0, .vocab_size = 0, .total_batch = 0, .steps = 1000, .lr = 3e-3f,
    .min_lr_frac = 0.1f, .warmup = -1, .schedule = "cosine", .decay_frac = 0.2f, .optim = "adamw",
    .weight_decay = 0.1f, .muon_momentum = 0.95f, .ns = "default", .muon_router = 1, .qk_clip_tau = 100.0f,
    .beta1 = 0.9f, .beta2 = 0.95f, .adam_eps = 1e-8f, .grad_clip = 1.0f, .balance_alpha = 1e-4f,
    .bias_gamma = 1e-3f, .seed = 1337, .val_every = 100, .val_batches = 8, .sample_every = 250,
    .sample_tokens = 64, .ckpt_every = 500, .ckpt_keep = 2, .resume = 0, .overwrite = 0, .threads = 0, .ep = 1,
    .peak_gflops = 0, .max_bad_steps = 5, .spike_z = 6.0f, .spike_window = 128, .skip_spikes = 0, .replay = NULL,
    .inject_nan = 0, .inject_spike = 0,
};

static const FlagSpec flag_specs[] = {
    {"--model", F_STR, &flags.model, "preset: k2-nano (default), k2-l1..k2-l5, k2-small"},
    {"--device", F_STR, &flags.device, "auto | cpu | cuda (auto: a visible GPU, else the CPU)"},
    {"--train-data", F_STR, &flags.train_data, "glob of llm.c token shards for training"},
    {"--val-data", F_STR, &flags.val_data, "glob of validation shards ('' for none)"},
    {"--tokenizer", F_STR, &flags.tokenizer, "tokenizer.bin used to decode samples"},
    {"--out", F_STR, &flags.out, "run directory for log.jsonl and checkpoints (default runs/<model>)"},
    {"--batch-size", F_INT, &flags.batch_size, "sequences per micro-batch per rank (B)"},
    {"--seq-len", F_INT, &flags.seq_len, "sequence length T (default: the preset's)"},
    {"--vocab-size", F_INT, &flags.vocab_size, "vocabulary size (default: the preset's)"},
    {"--total-batch", F_LLONG, &flags.total_batch, "tokens per optimizer step; a multiple of B*T*ranks (gradient accumulation)"},
    {"--steps", F_INT, &flags.steps, "optimizer steps in the run"},
    {"--lr", F_FLOAT, &flags.lr, "peak learning rate"},
    {"--min-lr-frac", F_FLOAT, &flags.min_lr_frac, "final learning rate as a fraction of --lr"},
    {"--warmup", F_INT, &flags.warmup, "linear warmup steps (-1: steps/10, at most 100)"},
    {"--schedule", F_STR, &flags.schedule, "cosine | wsd | constant (after warmup)"},
    {"--decay-frac", F_FLOAT, &flags.decay_frac, "wsd: fraction of the run spent decaying"},
    {"--optim", F_STR, &flags.optim, "adamw | muon (Muon for the hidden matrices, AdamW for embedding, head, gains)"},
    {"--weight-decay", F_FLOAT, &flags.weight_decay, "decoupled weight decay (not the RMSNorm gains)"},
    {"--beta1", F_FLOAT, &flags.beta1, "AdamW beta1"},
    {"--beta2", F_FLOAT, &flags.beta2, "AdamW beta2"},
    {"--adam-eps", F_FLOAT, &flags.adam_eps, "AdamW epsilon"},
    {"--grad-clip", F_FLOAT, &flags.grad_clip, "global gradient-norm clip (0 = off)"},
    {"--muon-momentum", F_FLOAT, &flags.muon_momentum, "Muon momentum (Nesterov)"},
    {"--ns", F_STR, &flags.ns, "Newton-Schulz coefficients: default (3.4445, -4.7750, 2.0315) x5 | polar (Polar Express)"},
    {"--muon-router", F_INT, &flags.muon_router, "1: the router matrices use Muon, 0: AdamW"},
    {"--qk-clip-tau", F_FLOAT, &flags.qk_clip_tau, "QK-Clip: rescale a head's q/k weights when its max logit passes this (0 = off)"},
    {"--balance-alpha", F_FLOAT, &flags.balance_alpha, "sequence-wise balance loss weight"},
    {"--bias-gamma", F_FLOAT, &flags.bias_gamma, "aux-loss-free router bias update speed (0 = off)"},
    {"--seed", F_LLONG, &flags.seed, "seed for the initial weights, data order and samples"},
    {"--val-every", F_INT, &flags.val_every, "validation loss every N steps (0 = never)"},
    {"--val-batches", F_INT, &flags.val_batches, "micro-batches per validation"},
    {"--sample-every", F_INT, &flags.sample_every, "print a text sample every N steps (0 = never)"},
    {"--sample-tokens", F_INT, &flags.sample_tokens, "tokens per sample"},
    {"--ckpt-every", F_INT, &flags.ckpt_every, "checkpoint every N steps (0 = only at the end)"},
    {"--ckpt-keep", F_INT, &flags.ckpt_keep, "keep the newest N checkpoints (0 = all)"},
    {"--resume", F_BOOL, &flags.resume, "continue from the newest complete checkpoint in --out"},
    {"--overwrite", F_BOOL, &flags.overwrite, "start afresh in an --out that holds an earlier run (deletes it)"},
    {"--threads", F_INT, &flags.threads, "CPU threads per rank (default: all cores)"},
    {"--ep", F_INT, &flags.ep, "expert parallelism: ranks that split each layer's experts (divides ranks and 384)"},
    {"--peak-gflops", F_FLOAT, &flags.peak_gflops, "peak per rank for MFU (default: measured sgemm on CPU, 989000 on a GPU)"},
    {"--max-bad-steps", F_INT, &flags.max_bad_steps, "stop (with a checkpoint) after this many non-finite steps in a row"},
    {"--spike-z", F_FLOAT, &flags.spike_z, "loss / grad-norm z-score that marks a spike (0 = no detection)"},
    {"--spike-window", F_INT, &flags.spike_window, "steps in the spike detector's rolling window (<= 1024)"},
    {"--skip-spikes", F_BOOL, &flags.skip_spikes, "skip the update of a spike step (its values stay out of the window)"},
    {"--replay", F_STR, &flags.replay, "S0:S1: re-run steps S0+1..S1 of the run in --out from its checkpoint S0 (0: from the start) with full telemetry, into replay_S0_S1.jsonl; same flags as the run"},
    {"--profile", F_BOOL, &flags.profile, "time attention, expert GEMMs, routing, Newton-Schulz and the rest every step"},
    {"--inject-nan", F_INT, &flags.inject_nan, "testing: make step N's gradients NaN"},
    {"--inject-spike", F_INT, &flags.inject_spike, "testing: give step N random targets (a loss spike)"},
    {"--list-models", F_BOOL, &flags.list_models, "print every preset with its parameter and FLOP counts"},
    {"--help", F_BOOL, &flags.help, "this list"},
};
#define NUM_FLAGS ((int)(sizeof(flag_specs) / sizeof(flag_specs[0])))

static void print_help(void) {
    printf("usage: ./train_moe [flags]\n\n");
    for (int i = 0; i < NUM_FLAGS; i++) {
        const FlagSpec* s = &flag_specs[i];
        char def[64] = "";
        switch (s->type) {
        case F_INT: snprintf(def, sizeof(def), "%d", *(int*)s->ptr); break;
        case F_LLONG: snprintf(def, sizeof(def), "%lld", *(long long*)s->ptr); break;
        case F_FLOAT: snprintf(def, sizeof(def), "%g", *(float*)s->ptr); break;
        case F_STR: snprintf(def, sizeof(def), "%s", *(const char**)s->ptr ? *(const char**)s->ptr : ""); break;
        case F_BOOL: break;
        }
        printf("  %-16s %s%s%s%s\n", s->name, s->help, s->type == F_BOOL ? "" : " [", def, s->type == F_BOOL ? "" : "]");
    }
}

static void parse_flags(int argc, char** argv) {
    for (int i = 1; i < argc; i++) {
        const char* arg = argv[i];
        const char* eq = strchr(arg, '=');
        size_t name_len = eq ? (size_t)(eq - arg) : strlen(arg);
        const FlagSpec* s = NULL;
        for (int j = 0; j < NUM_FLAGS; j++)
            if (strlen(flag_specs[j].name) == name_len && !strncmp(flag_specs[j].name, arg, name_len)) s = &flag_specs[j];
        if (!s) fatal("unknown flag '%s' (./train_moe --help lists them)", arg);
        if (s->type == F_BOOL) {
            if (eq) fatal("flag %s takes no value", s->name);
            *(int*)s->ptr = 1;
            continue;
        }
        const char* val = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!val) fatal("flag %s needs a value", s->name);
        char* end = NULL;
        errno = 0;
        switch (s->type) {
        case F_INT: {
            long v = strtol(val, &end, 10);
            if (*val == 0 || *end || errno || v < -2147483647L || v > 2147483647L)
                fatal("flag %s expects an integer, got '%s'", s->name, val);
            *(int*)s->ptr = (int)v;
            break;
        }
        case F_LLONG: {
            long long v = strtoll(val, &end, 10);
            if (*val == 0 || *end || errno) fatal("flag %s expects an integer, got '%s'", s->name, val);
            *(long long*)s->ptr = v;
            break;
        }
        case F_FLOAT: {
            float v = strtof(val, &end);
            if (*val == 0 || *end || errno || !isfinite(v)) fatal("flag %s expects a number, got '%s'", s->name, val);
            *(float*)s->ptr = v;
            break;
        }
        case F_STR: *(const char**)s->ptr = val; break;
        case F_BOOL: break;
        }
    }
}

// Range and consistency checks, before anything is read or written.
static void check_flags(void) {
    struct { const char* name; long long v, lo; } ge[] = {
        {"--batch-size", flags.batch_size, 1}, {"--steps", flags.steps, 1}, {"--warmup", flags.warmup, -1},
        {"--seq-len", flags.seq_len, 0}, {"--vocab-size", flags.vocab_size, 0}, {"--total-batch", flags.total_batch, 0},
        {"--val-every", flags.val_every, 0}, {"--val-batches", flags.val_batches, 1},
        {"--sample-every", flags.sample_every, 0}, {"--sample-tokens", flags.sample_tokens, 1},
        {"--ckpt-every", flags.ckpt_every, 0}, {"--ckpt-keep", flags.ckpt_keep, 0}, {"--threads", flags.threads, 0},
        {"--max-bad-steps", flags.max_bad_steps, 1}, {"--seed", flags.seed, 0}, {"--spike-window", flags.spike_window, 2},
        {"--inject-nan", flags.inject_nan, 0}, {"--inject-spike", flags.inject_spike, 0},
    };
    for (size_t i = 0; i < sizeof(ge) / sizeof(ge[0]); i++)
        if (ge[i].v < ge[i].lo) fatal("flag %s = %lld must be >= %lld", ge[i].name, ge[i].v, ge[i].lo);
    if (!(flags.lr > 0)) fatal("flag --lr = %g must be > 0", flags.lr);
    if (flags.min_lr_frac < 0 || flags.min_lr_frac > 1) fatal("flag --min-lr-frac = %g must be in [0, 1]", flags.min_lr_frac);
    if (flags.decay_frac < 0 || flags.decay_frac > 1) fatal("flag --decay-frac = %g must be in [0, 1]", flags.decay_frac);
    if (flags.weight_decay < 0) fatal("flag --weight-decay = %g must be >= 0", flags.weight_decay);
    if (!(flags.beta1 >= 0 && flags.beta1 < 1)) fatal("flag --beta1 = %g must be in [0, 1)", flags.beta1);
    if (!(flags.beta2 >= 0 && flags.beta2 < 1)) fatal("flag --beta2 = %g must be in [0, 1)", flags.beta2);
    if (!(flags.adam_eps > 0)) fatal("flag --adam-eps = %g must be > 0", flags.adam_eps);
    if (flags.grad_clip < 0) fatal("flag --grad-clip = %g must be >= 0", flags.grad_clip);
    if (flags.balance_alpha < 0) fatal("flag --balance-alpha = %g must be >= 0", flags.balance_alpha);
    if (flags.bias_gamma < 0) fatal("flag --bias-gamma = %g must be >= 0", flags.bias_gamma);
    if (strcmp(flags.optim, "adamw") && strcmp(flags.optim, "muon"))
        fatal("flag --optim = '%s' must be adamw or muon", flags.optim);
    if (!(flags.muon_momentum >= 0 && flags.muon_momentum < 1)) fatal("flag --muon-momentum = %g must be in [0, 1)", flags.muon_momentum);
    if (strcmp(flags.ns, "default") && strcmp(flags.ns, "polar")) fatal("flag --ns = '%s' must be default or polar", flags.ns);
    if (flags.muon_router != 0 && flags.muon_router != 1) fatal("flag --muon-router = %d must be 0 or 1", flags.muon_router);
    if (flags.qk_clip_tau < 0) fatal("flag --qk-clip-tau = %g must be >= 0 (0 turns it off)", flags.qk_clip_tau);
    if (flags.peak_gflops < 0) fatal("flag --peak-gflops = %g must be >= 0", flags.peak_gflops);
    if (flags.resume && flags.overwrite) fatal("flags --resume and --overwrite conflict: continue a run, or replace it");
    if (flags.spike_z < 0) fatal("flag --spike-z = %g must be >= 0 (0 turns detection off)", flags.spike_z);
    if (flags.spike_window > SPIKE_MAX_WINDOW) fatal("flag --spike-window = %d must be <= %d", flags.spike_window, SPIKE_MAX_WINDOW);
    if (flags.replay && (flags.resume || flags.overwrite)) fatal("flag --replay re-runs part of a run in --out; it conflicts with --resume and --overwrite");
    if (strcmp(flags.device, "auto") && strcmp(flags.device, "cpu") && strcmp(flags.device, "cuda"))
        fatal("flag --device = '%s' must be auto, cpu or cuda", flags.device);
    LRShape shape;
    if (!lr_shape_parse(flags.schedule, &shape)) fatal("flag --schedule = '%s' must be cosine, wsd or constant", flags.schedule);
    if (flags.warmup < 0) flags.warmup = flags.steps / 10 < 100 ? flags.steps / 10 : 100;
    if (flags.warmup > flags.steps) fatal("flag --warmup = %d exceeds --steps = %d", flags.warmup, flags.steps);
}

// ----------------------------------------------------------------------------
// logging: a human progress line on stdout, the same numbers and more as JSON lines

static FILE* json_log = NULL;

static void json_string(FILE* f, const char* s) {
    fputc('"', f);
    for (const unsigned char* p = (const unsigned char*)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p == '\n') fputs("\\n", f);
        else if (*p == '\t') fputs("\\t", f);
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

// JSON has no NaN or infinity: non-finite numbers are written as null
static void json_num(FILE* f, const char* key, double v) {
    if (isfinite(v)) fprintf(f, ",\"%s\":%.7g", key, v);
    else fprintf(f, ",\"%s\":null", key);
}

static void json_float_array(FILE* f, const float* v, int n) {
    fputc('[', f);
    for (int i = 0; i < n; i++) {
        if (isfinite(v[i])) fprintf(f, "%s%.6g", i ? "," : "", v[i]);
        else fprintf(f, "%snull", i ? "," : "");
    }
    fputc(']', f);
}

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
    fprintf(json_log, "{\"type\":\"val\",\"step\":%d", step);
    json_num(json_log, "val_loss", vl);
    fprintf(json_log, "}\n");
    fflush(json_log);
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
    if (json_log) {
        fprintf(json_log, "{\"type\":\"sample\",\"step\":%d,\"text\":", step);
        json_string(json_log, text);
        fprintf(json_log, "}\n");
        fflush(json_log);
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

static void clear_run_dir(const char* dir) {
    checkpoint_remove_all(dir);
    char path[1024];
    snprintf(path, sizeof(path), "%s/log.jsonl", dir);
    unlink(path);
}

// ----------------------------------------------------------------------------

int main(int argc, char** argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    Comm comm;
    comm_init(&comm, &argc, &argv);  // first: from here on a fatal error on any rank ends every rank
    int rank = comm.rank, world = comm.world;
    if (rank != 0 && !freopen("/dev/null", "w", stdout)) fatal("cannot silence stdout on rank %d", rank);
    parse_flags(argc, argv);
    if (flags.help) { print_help(); comm_finalize(&comm); return 0; }
    if (flags.list_models) {
        for (int i = 0; config_preset_names[i]; i++) {
            ModelConfig c;
            config_from_preset(&c, config_preset_names[i]);
            config_print(&c, stdout);
        }
        comm_finalize(&comm);
        return 0;
    }
    check_flags();

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
    long long tokens_per_micro = (long long)B * T * world;
    long long total_batch = flags.total_batch ? flags.total_batch : tokens_per_micro;
    if (total_batch % tokens_per_micro != 0)
        fatal("flag --total-batch = %lld is not a multiple of batch-size x seq-len x ranks = %d x %d x %d = %lld",
              total_batch, B, T, world, tokens_per_micro);
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
    comm_set_device(&comm, ops != &ops_cpu);  // the model's buffers: GPU memory -> NCCL (or staged) collectives
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
    // every rank must run the same model, batch layout and optimizer: compare the max and min over the ranks
    {
        double v[16] = {cfg.d_model, cfg.n_layers, cfg.vocab_size, B, T, (double)total_batch, flags.steps, flags.lr,
                        (double)flags.seed, flags.ep, strcmp(flags.optim, "muon") == 0, flags.qk_clip_tau};
        for (int i = 0; i < 8; i++) v[8 + i] = 0;
        double hi[16], lo[16];
        for (int i = 0; i < 16; i++) { hi[i] = v[i]; lo[i] = -v[i]; }
        comm_allreduce_max_f64(&comm, GROUP_WORLD, hi, 16);
        comm_allreduce_max_f64(&comm, GROUP_WORLD, lo, 16);
        for (int i = 0; i < 16; i++)
            if (hi[i] != -lo[i])
                fatal("the ranks were started with different settings (model, batch, steps, lr, seed, --ep, --optim or "
                      "--qk-clip-tau); give every rank the same flags");
    }
    Tokenizer tok;
    tokenizer_init(&tok, flags.tokenizer);
    if (tok.loaded && tok.vocab_size > cfg.vocab_size)
        fatal("tokenizer %s has %d tokens, more than the model's vocab_size %d", flags.tokenizer, tok.vocab_size, cfg.vocab_size);

    // --- run directory
    char out_dir[512];
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
        checkpoint_load(out_dir, resume_step, &model, &opt, &st, rank);
        dataloader_seek(&train, st.data_epoch, st.data_cursor);
        if (st.step > flags.steps) fatal("flag --steps = %d is below the checkpoint's step %d", flags.steps, st.step);
    }
    // only now, with every input checked, write anything (rank 0 writes the log; the others log nowhere)
    comm_barrier(&comm);
    if (rank != 0) {
        json_log = fopen("/dev/null", "w");
        if (!json_log) fatal("cannot open /dev/null");
    } else {
        if (!flags.resume && !flags.replay && flags.overwrite) clear_run_dir(out_dir);
        char cmd[1024];
        snprintf(cmd, sizeof(cmd), "%s", out_dir);
        for (char* p = cmd + 1; *p; p++) if (*p == '/') { *p = 0; mkdir(cmd, 0755); *p = '/'; }
        if (mkdir(cmd, 0755) != 0 && errno != EEXIST) fatal("--out %s: cannot create it: %s", out_dir, strerror(errno));
        char path[1024];
        if (flags.replay) snprintf(path, sizeof(path), "%s/replay_%d_%d.jsonl", out_dir, replay_from, replay_to);
        else snprintf(path, sizeof(path), "%s/log.jsonl", out_dir);
        json_log = fopen(path, flags.resume ? "a" : "w");
        if (!json_log) fatal("--out %s: cannot write %s: %s", out_dir, path, strerror(errno));
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
        fprintf(json_log, "{\"type\":\"resume\",\"step\":%d}\n", st.step);
    }
    fprintf(json_log, "{\"type\":\"config\",\"model\":\"%s\",\"d_model\":%d,\"n_layers\":%d,\"n_dense_layers\":%d,"
            "\"n_heads\":%d,\"n_experts\":%d,\"top_k\":%d,\"moe_hidden\":%d,\"params_global\":%zu,\"expert_params_global\":%zu,",
            cfg.name, cfg.d_model, cfg.n_layers, cfg.n_dense_layers, cfg.n_heads, cfg.n_experts, cfg.top_k, cfg.moe_hidden,
            model.num_params_global, model.global_layout[P_EXPERT_W13].numel + model.global_layout[P_EXPERT_W2].numel);
    fprintf(json_log, "\"params\":%zu,\"active_params\":%.0f,"
            "\"flops_per_token\":%.6g,\"device\":\"%s\",\"threads\":%d,\"batch\":%d,\"seq_len\":%d,\"grad_accum\":%d,"
            "\"world\":%d,\"ep\":%d,\"grad_clip\":%g,\"warmup\":%d,\"weight_decay\":%g,\"min_lr_frac\":%g,\"spike_z\":%g,"
            "\"spike_window\":%d,\"skip_spikes\":%d,\"optim\":\"%s\",\"qk_clip_tau\":%g,\"lr\":%g,\"schedule\":\"%s\",\"steps\":%d,\"seed\":%lld,\"peak_gflops\":%.1f,\"resumed_from\":%d}\n",
            model.num_params, config_active_params(&cfg), flops_per_token, ops->name, threads, B, T,
            grad_accum, world, flags.ep, flags.grad_clip, flags.warmup, flags.weight_decay, flags.min_lr_frac, flags.spike_z,
            flags.spike_window, flags.skip_spikes, flags.optim, flags.qk_clip_tau, flags.lr, flags.schedule, flags.steps, flags.seed, peak, resume_step);
    fflush(json_log);

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
            fprintf(json_log, "{\"type\":\"nonfinite\",\"step\":%d,\"in_a_row\":%d", step + 1, st.bad_in_row);
            json_num(json_log, "loss", loss);
            json_num(json_log, "grad_norm", norm);
            fprintf(json_log, "}\n");
            fflush(json_log);
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
            fprintf(json_log, "{\"type\":\"spike\",\"step\":%d", step + 1);
            json_num(json_log, "loss", loss);
            json_num(json_log, "loss_z", z_loss);
            json_num(json_log, "grad_norm", norm);
            json_num(json_log, "norm_z", z_norm);
            fprintf(json_log, ",\"action\":\"%s\",\"replay_from\":%d}\n", skip_update ? "skipped" : "logged", from);
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
        fprintf(json_log, "{\"type\":\"step\",\"step\":%d", step + 1);
        json_num(json_log, "loss", loss);
        json_num(json_log, "ce", ce);
        json_num(json_log, "aux", aux);
        json_num(json_log, "lr", lr);
        json_num(json_log, "grad_norm", norm);
        json_num(json_log, "ms", dt * 1e3);
        json_num(json_log, "tok_s", tok_s);
        json_num(json_log, "mfu", mfu);
        json_num(json_log, "max_logit", max_logit);
        json_num(json_log, "opt_ms", opt.seconds * 1e3);
        if (world > 1) {
            json_num(json_log, "allreduce_mb", comm.bytes_allreduce / 1e6);
            json_num(json_log, "allgather_mb", comm.bytes_allgather / 1e6);
            json_num(json_log, "alltoall_mb", comm.bytes_alltoall / 1e6);
        }
        if (ocfg.kind == OPTIM_MUON) {
            json_num(json_log, "muon_update_rms", opt.muon_update_rms);
            json_num(json_log, "ns_gflop", opt.ns_flops / 1e9);
        }
        if (flags.profile) {
            double p[PROF_N + 2];
            for (int i = 0; i < PROF_N; i++) p[i] = model.prof_seconds[i];
            p[PROF_N] = skip_update ? 0.0 : opt.ns_seconds;
            p[PROF_N + 1] = skip_update ? 0.0 : opt.seconds - opt.ns_seconds;
            fprintf(json_log, ",\"prof_ms\":{");
            for (int i = 0; i < PROF_N + 2; i++) {
                fprintf(json_log, "%s\"%s\":%.3f", i ? "," : "",
                        i < PROF_N ? prof_names[i] : i == PROF_N ? "newton_schulz" : "optimizer_other", 1e3 * p[i]);
                prof_total[i] += p[i];
            }
            fprintf(json_log, "}");
        }
        json_num(json_log, "loss_z", z_loss);
        json_num(json_log, "norm_z", z_norm);
        fprintf(json_log, ",\"spike\":%d,\"heads_clipped\":%d,\"skipped\":%d", spike, heads_clipped, skip_update);
        if (heads_clipped) {
            fprintf(json_log, ",\"clipped_heads\":[");
            for (int i = 0, first = 1; i < L * H; i++)
                if (clipped[i]) { fprintf(json_log, "%s%d", first ? "" : ",", i); first = 0; }
            fprintf(json_log, "]");
        }
        fprintf(json_log, ",\"max_logit_layer\":");
        json_float_array(json_log, layer_max, L);
        fprintf(json_log, ",\"max_logit_head\":");
        json_float_array(json_log, maxlogit, L * H);
        fprintf(json_log, ",\"load_imbalance\":");
        json_float_array(json_log, imbalance, Lm);
        if (flags.replay) {
            // full telemetry: every expert's load, and each tensor's update RMS per layer (experts of a layer
            // together; this rank's experts under --ep)
            fprintf(json_log, ",\"expert_load\":");
            json_float_array(json_log, load, Lm * E);
            fprintf(json_log, ",\"update_rms\":{");
            float* now = xmalloc(model.num_params * sizeof(float));
            ops->to_host(now, model.params, model.num_params * sizeof(float));
            for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
                const ParamTensor* pt = &model.layout[t];
                int groups = (t == P_EXPERT_W13 || t == P_EXPERT_W2) ? Lm : pt->count;
                size_t per = groups ? pt->numel / groups : 0;
                fprintf(json_log, "%s\"%s\":[", t ? "," : "", pt->name);
                for (int g = 0; g < groups; g++) {
                    double sq = 0.0;
                    for (size_t i = 0; i < per; i++) {
                        double dlt = (double)now[pt->offset + g * per + i] - params_before[pt->offset + g * per + i];
                        sq += dlt * dlt;
                    }
                    fprintf(json_log, "%s%.6g", g ? "," : "", sqrt(sq / per));
                }
                fprintf(json_log, "]");
            }
            fprintf(json_log, "}");
            free(now);
        }
        fprintf(json_log, "}\n");
        fflush(json_log);
        if (flags.val_every && (step % flags.val_every == 0 || last)) {
            // the table QK-Clip acts on: max scaled logit of every head this step
            printf("  max logit per head (step %d):\n", step + 1);
            for (int l = 0; l < L; l++) {
                printf("    layer %2d:", l);
                for (int h = 0; h < H; h++) printf(" %7.2f", maxlogit[l * H + h]);
                printf("\n");
            }
        }

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
    fclose(json_log);
    comm_finalize(&comm);
    return 0;
}
