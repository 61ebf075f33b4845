// train/flags.h: the trainer's command line. One table row per flag (train/flags.c) holds its name, type,
// default, limits, choices and help, and says whether every rank of a multi-process run must be given the same
// value: the default, the range check and the help text come from that one row.
#pragma once
#include <stddef.h>

#define FLAGS_MAX 96  // rows the flag table may have (flags_init checks)

typedef struct {
    const char* model;        // preset name, or a DeepSeek-V3 config.json path (model/config_json.c)
    const char* device;       // auto | cpu | cuda
    const char* attention;    // auto | cudnn | own: the CUDA backend's attention (train/setup.c setup_backend)
    const char* train_data;   // glob of training shards
    const char* val_data;     // glob of validation shards ("" = none)
    const char* tokenizer;    // tokenizer.bin for samples
    const char* out;          // run directory: log.jsonl and checkpoints (NULL = runs/<model>)
    int batch_size;           // B, sequences per micro-batch per rank
    int seq_len;              // T (0 = the preset's)
    int vocab_size;           // override (0 = the preset's)
    long long total_batch;    // tokens per optimizer step over all ranks (0 = B*T*world)
    int steps;
    float lr, min_lr_frac;
    int warmup;               // -1 until flags_check resolves it
    const char* schedule;     // cosine | wsd | constant
    float decay_frac;
    const char* optim;        // adamw | muon
    float weight_decay, beta1, beta2, adam_eps, grad_clip;
    float muon_momentum;
    const char* ns;           // Newton-Schulz table: default | polar
    const char* muon_ns;      // Newton-Schulz GEMM precision: auto (bf16 on the GPU, fp32 on the CPU) | bf16 | fp32
    int muon_router;
    float adamw_lr_scale;     // --optim muon: lr multiplier of the tensors AdamW updates
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
    // Hugging Face interop and looking at a model (train/hf.c, train/eval.c)
    const char* init_from;    // start from a Hugging Face DeepSeek-V3 directory (NULL: random init / resume)
    const char* export_hf;    // write the checkpoint of --out as a Hugging Face directory and exit
    int step;                 // the checkpoint --export-hf, --eval and --generate read (-1: the newest)
    const char* dtype;        // fp32 | bf16: the weights --export-hf writes
    long long max_shard_size; // bytes per safetensors file of --export-hf
    int eval;                 // validation loss of a checkpoint, no training
    const char* dump_logits;  // with --eval: the first validation batch's tokens and logits go to this file
    const char* generate;     // prompt to continue
    float temperature;        // --generate's sampling temperature (0: greedy)
    int top_k;                // --generate samples among the K most likely tokens (0: all)
    int max_new_tokens;
    int list_models;
    int print_layout;         // print the model file's layout as JSON and exit
    int help;
    unsigned char given[FLAGS_MAX];  // flags_parse: 1 where flag_specs[i] was on the command line (not a default)
} Flags;

typedef enum { F_INT, F_LLONG, F_FLOAT, F_STR, F_BOOL } FlagType;

// attributes of a flag
#define FLAG_PER_RANK 1u  // may differ between the ranks of one run (threads, the MFU peak)
#define FLAG_LO_OPEN 2u   // the lower limit is excluded (> lo instead of >= lo)
#define FLAG_HI_OPEN 4u   // the upper limit is excluded

typedef struct {
    const char* name;      // "--batch-size"
    FlagType type;
    size_t offset;         // of the field in Flags
    const char* def;       // the default as one would type it (NULL: none)
    double lo, hi;         // numeric flags: the allowed range
    const char* choices;   // string flags with a fixed set of values: "adamw|muon" (NULL: free text)
    unsigned attrs;        // FLAG_*
    const char* help;
} FlagSpec;

extern const FlagSpec flag_specs[];
extern const int num_flags;

// Every field set to its table default.
void flags_init(Flags* f);
// Parses argv into f (on top of what f holds); an unknown flag, a missing or malformed value is fatal.
void flags_parse(Flags* f, int argc, char** argv);
// Each flag's range and choices, and the checks between flags; resolves --warmup -1. Fatal on the first problem.
void flags_check(Flags* f);
void flags_print_help(void);
// The flag's value in f as text, exactly (floats with 9 significant digits, NULL strings as "(none)").
void flag_value_text(const Flags* f, const FlagSpec* s, char* out, size_t n);
// 1 if the flag was on the command line, 0 if it holds its table default (e.g. --init-from takes the model from
// its config.json unless --model was given).
int flag_given(const Flags* f, const char* name);
// The row of a flag by name ("--seed"), or NULL.
const FlagSpec* flag_find(const char* name);
