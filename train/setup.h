// train/setup.h: a run's set-up, in the order train_moe.c calls it. Every input (flags, data, tokenizer, the run
// directory's state, a checkpoint) is checked before anything is written; each check that fails is fatal with one
// line naming the flag or file.
#pragma once
#include "run.h"

// The model config (--model, --seq-len, --vocab-size), the batch layout (B, T, micro-batches per step) and their
// size limits; the expert-parallel groups of comm.
void setup_config(Run* r, const Flags* f, Comm* comm);
// The backend (--device), the collectives' memory, the threads.
void setup_backend(Run* r);
// The training and validation shards and the tokenizer.
void setup_data(Run* r);
// Where the run starts: --out, and a fresh start, --resume or --replay (checked against what the directory holds).
void setup_start(Run* r);
// The model, the optimizer and the training state, loaded from the checkpoint the run starts from.
void setup_model(Run* r);
// The first writes: the run directory (created and locked), the log (rank 0; the other ranks log nowhere).
void setup_run_dir(Run* r);
// Activations, the learning-rate schedule, the MFU denominator.
void setup_step(Run* r);
void run_free(Run* r);

// --eval and --generate (train/eval.c), in place of setup_start .. setup_step: nothing in the run directory is
// created, locked, pruned or written, so a read-only run, or one another trainer is writing, can be read.
// After setup_config: the checkpoint of --out (--step, else the newest complete one) and the model config from its
// header (--init-from: setup_config's); one process only.
void setup_read_only(Run* r);
// After setup_backend and setup_data: the model with that checkpoint's weights (--init-from: setup_model's).
void setup_model_read_only(Run* r);
