// train/run.h: one training run's pieces. train_moe.c sets them up, train/loop.c steps them, train/report.c
// prints and logs what happens.
#pragma once
#include "../model/model.h"
#include "../optim/optim.h"
#include "../data/dataloader.h"
#include "../data/tokenizer.h"
#include "checkpoint.h"
#include "flags.h"

typedef struct {
    const Flags* flags;
    Comm* comm;
    const Ops* ops;
    ModelConfig cfg;
    int B, T;                  // micro-batch per rank: B sequences of T tokens
    int grad_accum;            // micro-batches per optimizer step
    long long total_batch;     // tokens per optimizer step, all ranks: B x T x grad_accum x world
    int threads;               // OpenMP threads of this rank
    int on_gpu;
    char attention[256];       // the attention the backend runs and why (--attention; the banner prints it)
    DataLoader train, val;
    int have_val;              // --val-data names shards (val is open)
    Tokenizer tok;
    char out_dir[512];         // flags_check refuses a longer --out
    int resume_step;           // the checkpoint the run starts from, -1: the initial weights
    int replay_from, replay_to;  // --replay: steps replay_from+1 .. replay_to (else -1)
    int end_step;              // the loop runs steps st.step .. end_step-1 (0-based)
    Model model;
    CheckpointModel read_model; // --eval / --generate: the checkpoint's model file, from setup_read_only to setup_model_read_only
    Optimizer opt;
    TrainState st;
    LRSchedule sched;
    Acts acts;                 // (B, T): training and validation
    Acts sample_acts;          // (1, T): sampling
    double peak_gflops;        // the MFU denominator, summed over the ranks
    double flops_per_token;
    // --profile and the ETA: step times so far
    double time_sum;
    int time_count;
    double prof_total[PROF_N + 2];  // model categories, Newton-Schulz, the rest of the optimizer
} Run;

// What one step did, for the step line and the log (buffers sized by the run's config, reused every step).
typedef struct {
    int step;                  // 1-based: the step just taken
    double ce, aux;            // means over the global batch
    float loss, norm, lr;      // loss = ce + aux; norm: the gradient's global L2 norm before clipping
    double z_loss, z_norm;     // against the spike window (NaN: no verdict)
    int finite, spike, skip_update;
    int heads_clipped;         // by QK-Clip after the update
    double seconds;            // wall time of the step
    float* maxlogit;           // (L, H) max scaled logit per head this step
    float* layer_max;          // (L)
    float max_logit;           // over all heads
    float* load;               // (Lm, E) tokens routed to each expert, all ranks
    float* imbalance;          // (Lm) max/mean expert load per MoE layer
    float worst_imbalance;
    int* clipped;              // (L, H) 1: the head was clipped
    float* params_before;      // (num_params) the weights before the update (--replay's update RMS), else NULL
} StepStats;
