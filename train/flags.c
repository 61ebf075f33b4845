// train/flags.c: see flags.h. The table below is the one place a flag's default, range and help are written.
#include "flags.h"
#include "../common.h"
#include "spikes.h"
#include <errno.h>
#include <math.h>
#include <stddef.h>

#define FIELD(f) offsetof(Flags, f)
#define NONE_LO (-INFINITY)
#define NONE_HI INFINITY
// Sizes are capped well below where int arithmetic on them could overflow (B*T*top_k*ep positions, T+1 window
// lengths, steps+1); anything larger is not a run this trainer can hold in memory anyway.
#define MAX_COUNT 1e9         // steps, intervals, step numbers
#define MAX_DIM (1 << 20)     // batch size, sequence length, tokens per sample, validation batches
#define MAX_OUT_PATH 511      // characters of --out

const FlagSpec flag_specs[] = {
    // name             type     field               default                        lo  hi  choices  attrs  help
    {"--model", F_STR, FIELD(model), "k2-nano", 0, 0, NULL, 0,
     "preset (k2-nano, k2-l1..k2-l5, k2-small, k2-g1..k2-g5; --list-models shows them), or a path to a DeepSeek-V3 "
     "config.json or the folder holding it"},
    {"--device", F_STR, FIELD(device), "auto", 0, 0, "auto|cpu|cuda", 0,
     "auto | cpu | cuda (auto: a visible GPU, else the CPU)"},
    {"--attention", F_STR, FIELD(attention), "auto", 0, 0, "auto|cudnn|own", 0,
     "CUDA attention: cudnn (cuDNN's SDPA) | own (our kernels) | auto (cuDNN where its version and the shape allow, "
     "else ours); the banner says which and why. --device cpu: auto/own only"},
    {"--train-data", F_STR, FIELD(train_data), "data/default/train_*.bin", 0, 0, NULL, 0,
     "glob of llm.c token shards for training"},
    {"--val-data", F_STR, FIELD(val_data), "data/default/val_*.bin", 0, 0, NULL, 0,
     "glob of validation shards ('' for none)"},
    {"--tokenizer", F_STR, FIELD(tokenizer), "data/default/tokenizer.bin", 0, 0, NULL, 0,
     "tokenizer.bin used to decode samples"},
    {"--out", F_STR, FIELD(out), NULL, 0, 0, NULL, 0,
     "run directory for log.jsonl and checkpoints (default runs/<model>)"},
    {"--batch-size", F_INT, FIELD(batch_size), "8", 1, MAX_DIM, NULL, 0,
     "sequences per micro-batch per rank (B)"},
    {"--seq-len", F_INT, FIELD(seq_len), "0", 0, MAX_DIM, NULL, 0,
     "sequence length T (default: the preset's)"},
    {"--vocab-size", F_INT, FIELD(vocab_size), "0", 0, 1 << 24, NULL, 0,
     "vocabulary size (default: the preset's)"},
    {"--total-batch", F_LLONG, FIELD(total_batch), "0", 0, 1e15, NULL, 0,
     "tokens per optimizer step; a multiple of B*T*ranks (gradient accumulation)"},
    {"--steps", F_INT, FIELD(steps), "1000", 1, MAX_COUNT, NULL, 0,
     "optimizer steps in the run"},
    {"--lr", F_FLOAT, FIELD(lr), "0.003", 0, NONE_HI, NULL, FLAG_LO_OPEN,
     "peak learning rate"},
    {"--min-lr-frac", F_FLOAT, FIELD(min_lr_frac), "0.1", 0, 1, NULL, 0,
     "final learning rate as a fraction of --lr"},
    {"--warmup", F_INT, FIELD(warmup), "-1", -1, MAX_COUNT, NULL, 0,
     "linear warmup steps (-1: steps/10, at most 100)"},
    {"--schedule", F_STR, FIELD(schedule), "cosine", 0, 0, "cosine|wsd|constant", 0,
     "cosine | wsd | constant (after warmup)"},
    {"--decay-frac", F_FLOAT, FIELD(decay_frac), "0.2", 0, 1, NULL, 0,
     "wsd: fraction of the run spent decaying"},
    {"--optim", F_STR, FIELD(optim), "adamw", 0, 0, "adamw|muon", 0,
     "adamw | muon (Muon for the hidden matrices, AdamW for embedding, head, gains)"},
    {"--weight-decay", F_FLOAT, FIELD(weight_decay), "0.1", 0, NONE_HI, NULL, 0,
     "decoupled weight decay (not the RMSNorm gains)"},
    {"--beta1", F_FLOAT, FIELD(beta1), "0.9", 0, 1, NULL, FLAG_HI_OPEN,
     "AdamW beta1"},
    {"--beta2", F_FLOAT, FIELD(beta2), "0.95", 0, 1, NULL, FLAG_HI_OPEN,
     "AdamW beta2"},
    {"--adam-eps", F_FLOAT, FIELD(adam_eps), "1e-08", 0, NONE_HI, NULL, FLAG_LO_OPEN,
     "AdamW epsilon"},
    {"--grad-clip", F_FLOAT, FIELD(grad_clip), "1", 0, NONE_HI, NULL, 0,
     "global gradient-norm clip (0 = off)"},
    {"--muon-momentum", F_FLOAT, FIELD(muon_momentum), "0.95", 0, 1, NULL, FLAG_HI_OPEN,
     "Muon momentum (Nesterov)"},
    {"--ns", F_STR, FIELD(ns), "default", 0, 0, "default|polar", 0,
     "Newton-Schulz coefficients: default (3.4445, -4.7750, 2.0315) x5 | polar (Polar Express)"},
    {"--muon-ns", F_STR, FIELD(muon_ns), "auto", 0, 0, "auto|bf16|fp32", 0,
     "Newton-Schulz GEMMs: bf16 operands, fp32 accumulation (auto on --device cuda) | fp32 (auto on the CPU)"},
    {"--muon-router", F_INT, FIELD(muon_router), "1", 0, 1, NULL, 0,
     "1: the router matrices use Muon, 0: AdamW"},
    {"--adamw-lr-scale", F_FLOAT, FIELD(adamw_lr_scale), "1", 0, NONE_HI, NULL, FLAG_LO_OPEN,
     "--optim muon: the tensors AdamW updates (embedding, LM head, norm gains; the router with --muon-router 0) step with --lr times this"},
    {"--qk-clip-tau", F_FLOAT, FIELD(qk_clip_tau), "100", 0, NONE_HI, NULL, 0,
     "QK-Clip: rescale a head's q/k weights when its max logit passes this (0 = off)"},
    {"--balance-alpha", F_FLOAT, FIELD(balance_alpha), "0.0001", 0, NONE_HI, NULL, 0,
     "sequence-wise balance loss weight"},
    {"--bias-gamma", F_FLOAT, FIELD(bias_gamma), "0.001", 0, NONE_HI, NULL, 0,
     "aux-loss-free router bias update speed (0 = off)"},
    {"--seed", F_LLONG, FIELD(seed), "1337", 0, 9.2e18, NULL, 0,
     "seed for the initial weights, data order and samples"},
    {"--val-every", F_INT, FIELD(val_every), "100", 0, MAX_COUNT, NULL, 0,
     "validation loss every N steps (0 = never)"},
    {"--val-batches", F_INT, FIELD(val_batches), "8", 1, MAX_DIM, NULL, 0,
     "micro-batches per validation"},
    {"--sample-every", F_INT, FIELD(sample_every), "250", 0, MAX_COUNT, NULL, 0,
     "print a text sample every N steps (0 = never)"},
    {"--sample-tokens", F_INT, FIELD(sample_tokens), "64", 1, MAX_DIM, NULL, 0,
     "tokens per sample"},
    {"--ckpt-every", F_INT, FIELD(ckpt_every), "500", 0, MAX_COUNT, NULL, 0,
     "checkpoint every N steps (0 = only at the end)"},
    {"--ckpt-keep", F_INT, FIELD(ckpt_keep), "2", 0, MAX_COUNT, NULL, 0,
     "keep the newest N checkpoints (0 = all)"},
    {"--resume", F_BOOL, FIELD(resume), NULL, 0, 0, NULL, 0,
     "continue from the newest complete checkpoint in --out"},
    {"--overwrite", F_BOOL, FIELD(overwrite), NULL, 0, 0, NULL, 0,
     "start afresh in an --out that holds an earlier run (deletes it)"},
    {"--threads", F_INT, FIELD(threads), "0", 0, 4096, NULL, FLAG_PER_RANK,
     "CPU threads per rank (default: all cores)"},
    {"--ep", F_INT, FIELD(ep), "1", 1, 65536, NULL, 0,
     "expert parallelism: ranks that split each layer's experts (divides ranks and 384)"},
    {"--peak-gflops", F_FLOAT, FIELD(peak_gflops), "0", 0, NONE_HI, NULL, FLAG_PER_RANK,
     "peak per rank for MFU (default: measured sgemm on CPU, 989000 on a GPU)"},
    {"--max-bad-steps", F_INT, FIELD(max_bad_steps), "5", 1, MAX_COUNT, NULL, 0,
     "stop (with a checkpoint) after this many steps in a row that did not reach the weights (non-finite, or spikes skipped by --skip-spikes)"},
    {"--spike-z", F_FLOAT, FIELD(spike_z), "6", 0, NONE_HI, NULL, 0,
     "a loss this many noise sigmas above its recent level is a spike (robust z: train/spikes.h; 0 = off)"},
    {"--spike-window", F_INT, FIELD(spike_window), "128", 2, SPIKE_MAX_WINDOW, NULL, 0,
     "steps in the spike detector's rolling window (<= 1024)"},
    {"--skip-spikes", F_BOOL, FIELD(skip_spikes), NULL, 0, 0, NULL, 0,
     "skip the update of a spike step (its values stay out of the window)"},
    {"--replay", F_STR, FIELD(replay), NULL, 0, 0, NULL, 0,
     "S0:S1: re-run steps S0+1..S1 of the run in --out from its checkpoint S0 (0: from the start) with full "
     "telemetry, into replay_S0_S1.jsonl; same flags as the run"},
    {"--profile", F_BOOL, FIELD(profile), NULL, 0, 0, NULL, 0,
     "time attention, expert GEMMs, routing, Newton-Schulz and the rest every step"},
    {"--inject-nan", F_INT, FIELD(inject_nan), "0", 0, MAX_COUNT, NULL, 0,
     "testing: make step N's gradients NaN"},
    {"--inject-spike", F_INT, FIELD(inject_spike), "0", 0, MAX_COUNT, NULL, 0,
     "testing: give step N random targets (a loss spike)"},
    {"--init-from", F_STR, FIELD(init_from), NULL, 0, 0, NULL, 0,
     "DIR: start from a Hugging Face DeepSeek-V3 checkpoint (safetensors + config.json) at step 0"},
    {"--export-hf", F_STR, FIELD(export_hf), NULL, 0, 0, NULL, 0,
     "DIR: write the checkpoint of --out (the newest, or --step) as a Hugging Face DeepSeek-V3 directory and exit"},
    {"--step", F_INT, FIELD(step), "-1", -1, MAX_COUNT, NULL, 0,
     "the checkpoint --export-hf, --eval and --generate read (-1: the newest complete one)"},
    {"--dtype", F_STR, FIELD(dtype), "fp32", 0, 0, "fp32|bf16", 0,
     "fp32 | bf16: the weights --export-hf writes"},
    {"--max-shard-size", F_LLONG, FIELD(max_shard_size), "5000000000", 1024, 1e15, NULL, 0,
     "bytes per safetensors file of --export-hf (larger models: several files and an index)"},
    {"--eval", F_BOOL, FIELD(eval), NULL, 0, 0, NULL, 0,
     "validation loss and perplexity of the checkpoint in --out (or --init-from) on --val-data; trains and "
     "writes nothing"},
    {"--dump-logits", F_STR, FIELD(dump_logits), NULL, 0, 0, NULL, 0,
     "FILE: with --eval, the first validation batch's tokens and logits (format: train/eval.h)"},
    {"--generate", F_STR, FIELD(generate), NULL, 0, 0, NULL, 0,
     "TEXT: continue the prompt with the checkpoint in --out (or --init-from) and exit"},
    {"--temperature", F_FLOAT, FIELD(temperature), "1", 0, 100, NULL, 0,
     "--generate's sampling temperature (0: always the most likely token)"},
    {"--top-k", F_INT, FIELD(top_k), "0", 0, MAX_DIM, NULL, 0,
     "--generate samples among the K most likely tokens (0: all)"},
    {"--max-new-tokens", F_INT, FIELD(max_new_tokens), "64", 1, MAX_DIM, NULL, 0,
     "tokens --generate adds to the prompt"},
    {"--list-models", F_BOOL, FIELD(list_models), NULL, 0, 0, NULL, 0,
     "print every preset with its parameter and FLOP counts"},
    {"--print-layout", F_BOOL, FIELD(print_layout), NULL, 0, 0, NULL, 0,
     "print the model file's layout as JSON (header fields, each tensor's offset and shape) and exit"},
    {"--help", F_BOOL, FIELD(help), NULL, 0, 0, NULL, 0,
     "this list"},
};
const int num_flags = (int)(sizeof(flag_specs) / sizeof(flag_specs[0]));

static void* field_of(Flags* f, const FlagSpec* s) { return (char*)f + s->offset; }
static const void* cfield_of(const Flags* f, const FlagSpec* s) { return (const char*)f + s->offset; }

int flag_given(const Flags* f, const char* name) {
    const FlagSpec* s = flag_find(name);
    return s && f->given[s - flag_specs];
}

const FlagSpec* flag_find(const char* name) {
    for (int i = 0; i < num_flags; i++)
        if (!strcmp(flag_specs[i].name, name)) return &flag_specs[i];
    return NULL;
}

// Sets one flag from its text; 0 if the text is not a value of the flag's type.
static int set_value(Flags* f, const FlagSpec* s, const char* val) {
    char* end = NULL;
    errno = 0;
    switch (s->type) {
    case F_INT: {
        long v = strtol(val, &end, 10);
        if (*val == 0 || *end || errno || v < -2147483647L || v > 2147483647L) return 0;
        *(int*)field_of(f, s) = (int)v;
        return 1;
    }
    case F_LLONG: {
        long long v = strtoll(val, &end, 10);
        if (*val == 0 || *end || errno) return 0;
        *(long long*)field_of(f, s) = v;
        return 1;
    }
    case F_FLOAT: {
        float v = strtof(val, &end);
        if (*val == 0 || *end || errno || !isfinite(v)) return 0;
        *(float*)field_of(f, s) = v;
        return 1;
    }
    case F_STR: *(const char**)field_of(f, s) = val; return 1;
    case F_BOOL: *(int*)field_of(f, s) = 1; return 1;
    }
    return 0;
}

void flags_init(Flags* f) {
    if (num_flags > FLAGS_MAX) fatal("flags: the table has %d rows, Flags.given holds %d (raise FLAGS_MAX)", num_flags, FLAGS_MAX);
    memset(f, 0, sizeof(*f));
    for (int i = 0; i < num_flags; i++) {
        const FlagSpec* s = &flag_specs[i];
        if (s->def && !set_value(f, s, s->def)) fatal("flags: the table's default '%s' of %s is not valid", s->def, s->name);
    }
}

void flags_parse(Flags* f, int argc, char** argv) {
    for (int i = 1; i < argc; i++) {
        const char* arg = argv[i];
        const char* eq = strchr(arg, '=');
        size_t name_len = eq ? (size_t)(eq - arg) : strlen(arg);
        const FlagSpec* s = NULL;
        for (int j = 0; j < num_flags; j++)
            if (strlen(flag_specs[j].name) == name_len && !strncmp(flag_specs[j].name, arg, name_len)) s = &flag_specs[j];
        if (!s) fatal("unknown flag '%s' (./train_moe --help lists them)", arg);
        f->given[s - flag_specs] = 1;
        if (s->type == F_BOOL) {
            if (eq) fatal("flag %s takes no value", s->name);
            set_value(f, s, "1");
            continue;
        }
        const char* val = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!val) fatal("flag %s needs a value", s->name);
        if (!set_value(f, s, val))
            fatal("flag %s expects %s, got '%s'", s->name, s->type == F_FLOAT ? "a number" : "an integer", val);
    }
}

void flag_value_text(const Flags* f, const FlagSpec* s, char* out, size_t n) {
    const void* p = cfield_of(f, s);
    switch (s->type) {
    case F_INT: case F_BOOL: snprintf(out, n, "%d", *(const int*)p); break;
    case F_LLONG: snprintf(out, n, "%lld", *(const long long*)p); break;
    case F_FLOAT: snprintf(out, n, "%.9g", *(const float*)p); break;
    case F_STR: snprintf(out, n, "%s", *(const char* const*)p ? *(const char* const*)p : "(none)"); break;
    }
}

static double numeric_value(const Flags* f, const FlagSpec* s) {
    const void* p = cfield_of(f, s);
    return s->type == F_INT ? *(const int*)p : s->type == F_LLONG ? (double)*(const long long*)p : *(const float*)p;
}

// "must be >= 1", "must be in [0, 1)", "must be > 0"
static void describe_range(const FlagSpec* s, char* out, size_t n) {
    int has_lo = isfinite(s->lo), has_hi = isfinite(s->hi);
    if (has_lo && has_hi)
        snprintf(out, n, "in %c%.10g, %.10g%c", s->attrs & FLAG_LO_OPEN ? '(' : '[', s->lo, s->hi,
                 s->attrs & FLAG_HI_OPEN ? ')' : ']');
    else if (has_lo) snprintf(out, n, "%s %.10g", s->attrs & FLAG_LO_OPEN ? ">" : ">=", s->lo);
    else snprintf(out, n, "%s %.10g", s->attrs & FLAG_HI_OPEN ? "<" : "<=", s->hi);
}

static int in_choices(const char* choices, const char* v) {
    size_t len = strlen(v);
    for (const char* c = choices; *c;) {
        const char* bar = strchr(c, '|');
        size_t clen = bar ? (size_t)(bar - c) : strlen(c);
        if (clen == len && !strncmp(c, v, len)) return 1;
        if (!bar) break;
        c = bar + 1;
    }
    return 0;
}

void flags_check(Flags* f) {
    for (int i = 0; i < num_flags; i++) {
        const FlagSpec* s = &flag_specs[i];
        if (s->type == F_INT || s->type == F_LLONG || s->type == F_FLOAT) {
            double v = numeric_value(f, s);
            int low = s->attrs & FLAG_LO_OPEN ? !(v > s->lo) : !(v >= s->lo);
            int high = s->attrs & FLAG_HI_OPEN ? !(v < s->hi) : !(v <= s->hi);
            if (low || high) {
                char range[96], text[64];
                describe_range(s, range, sizeof(range));
                flag_value_text(f, s, text, sizeof(text));
                fatal("flag %s = %s must be %s", s->name, text, range);
            }
        } else if (s->type == F_STR && s->choices) {
            const char* v = *(const char**)field_of(f, s);
            if (!v || !in_choices(s->choices, v)) fatal("flag %s = '%s' must be one of: %s", s->name, v ? v : "", s->choices);
        }
    }
    // the run directory's path must fit, whole, in the buffers every file name in it is built in (a cut path
    // would put the run, or with --overwrite a deletion, in another folder)
    if (f->out && strlen(f->out) > MAX_OUT_PATH)
        fatal("flag --out is %zu characters long; at most %d are allowed", strlen(f->out), MAX_OUT_PATH);
    if (f->out && !f->out[0]) fatal("flag --out is empty");
    if (f->resume && f->overwrite) fatal("flags --resume and --overwrite conflict: continue a run, or replace it");
    if (f->replay && (f->resume || f->overwrite))
        fatal("flag --replay re-runs part of a run in --out; it conflicts with --resume and --overwrite");
    // --eval and --generate read a model and train nothing (train/eval.c)
    if (f->eval && f->generate) fatal("flags --eval and --generate conflict: one at a time");
    if (f->dump_logits && !f->eval) fatal("flag --dump-logits writes what --eval computes; it needs --eval");
    if (f->eval || f->generate) {
        const char* mode = f->eval ? "--eval" : "--generate";
        const char* other = f->resume ? "--resume" : f->overwrite ? "--overwrite" : f->replay ? "--replay"
                          : f->export_hf ? "--export-hf" : NULL;
        if (other) fatal("flag %s reads a model and trains or writes nothing; it conflicts with %s", mode, other);
        if (f->init_from && f->out)
            fatal("flag %s reads either the checkpoint of --out or --init-from's directory; both are given", mode);
        if (f->init_from && f->step >= 0) fatal("flag --step picks a checkpoint of --out; --init-from has none");
    }
    if (f->adamw_lr_scale != 1.0f && strcmp(f->optim, "muon") != 0)
        fatal("flag --adamw-lr-scale = %g applies to --optim muon only (with --optim %s every tensor steps with --lr)",
              f->adamw_lr_scale, f->optim);
    if (f->warmup < 0) f->warmup = f->steps / 10 < 100 ? f->steps / 10 : 100;
    if (f->warmup > f->steps) fatal("flag --warmup = %d exceeds --steps = %d", f->warmup, f->steps);
}

void flags_print_help(void) {
    printf("usage: ./train_moe [flags]\n\n");
    for (int i = 0; i < num_flags; i++) {
        const FlagSpec* s = &flag_specs[i];
        if (s->type == F_BOOL) printf("  %-16s %s\n", s->name, s->help);
        else printf("  %-16s %s [%s]\n", s->name, s->help, s->def ? s->def : "");
    }
}
