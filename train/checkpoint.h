// train/checkpoint.h: checkpoints that resume bit-identically.
//
// A checkpoint of step S in directory DIR is three kinds of file:
//   DIR/model_S.bin         the model: header (config, step) + fp32 parameters in the whole model's layout (however
//                           the experts were split) + router bias   (rank 0 writes it)
//   DIR/state_S_rR.bin      rank R's training state as named sections: optimizer state, data position, RNG, ...
//   DIR/DONE_S              written last, after every other file is complete
// Version 2 files carry a CRC32C of the whole file in their header (the slot itself taken as zero); version 1
// files (older builds) have none and are still read, with a warning.
// Each file is written to a temporary name, flushed to disk and renamed, so a kill at any moment leaves the last
// complete checkpoint intact; a checkpoint without its DONE marker is ignored.
#pragma once
#include "../model/model.h"
#include "../optim/optim.h"
#include "spikes.h"

// the file format (tests/ckpt_tool.py and fuzz/fuzz_checkpoint.c read it too)
#define MODEL_MAGIC 20261127
#define STATE_MAGIC 20261128
#define CKPT_VERSION 2  // 2: CRC32C of the whole file in the header; 1 (still read): no checksum
#define MODEL_HEADER_INTS 256
#define STATE_HEADER_INTS 64
// where the CRC32C sits in each header (int32 index); the CRC covers the whole file with this slot zero
#define MODEL_CRC_SLOT 22
#define STATE_CRC_SLOT 5

// Everything besides the model and the optimizer that the next step depends on.
typedef struct {
    int step;               // optimizer steps completed
    uint64_t data_epoch;    // training data position
    uint64_t data_cursor;
    Rng sample_rng;         // generator for text samples
    // the run's layout: resuming with a different one could not continue the same trajectory
    int micro_batch;        // B per rank
    int seq_len;            // T
    int grad_accum;         // micro-batches per step
    int world;              // ranks
    int ep;                 // expert-parallel group size
    uint64_t seed;
    char optimizer[16];     // "adamw" or "muon"
    SpikeStats spikes;      // the loss / grad-norm window of the spike detector
    int bad_in_row;         // consecutive non-finite steps
} TrainState;

// A named blob in a state file; a loader asks for each by name, so later sections (Muon momentum, spike
// statistics) can be added without breaking older readers' checks.
typedef struct {
    const char* name;
    void* data;   // host memory
    size_t bytes;
} StateSection;

// What the running job bounds a checkpoint's contents by.
typedef struct {
    int max_step;        // --steps
    uint64_t n_windows;  // windows of the training data: the saved data cursor may not pass it
} CheckpointLimits;

void checkpoint_save(const char* dir, const Model* m, const Optimizer* opt, const TrainState* st, int rank);
// The newest step with a DONE marker in dir, or -1.
int checkpoint_latest(const char* dir);
// Loading reads each file whole and checks it before anything is applied: the checksum, the structure, and every
// value the next steps depend on (weights, router bias and optimizer moments finite, Adam's second moment >= 0,
// step, update count, data position and the spike ring in range). Under MPI every rank checks its own state file
// and the ranks agree before any applies. A file of another run's settings (model, batch layout, optimizer) is
// fatal with the file named.
// Loads step `step` (--replay: that checkpoint or none); a failed check is fatal, naming the file and the check.
void checkpoint_load(const char* dir, int step, Model* m, Optimizer* opt, TrainState* st, int rank,
                     const CheckpointLimits* lim);
// --resume: loads the newest complete checkpoint that passes every check and returns its step. A failed check
// warns "warning: checkpoint: FILE: CHECK; falling back to step S" and tries the next older complete one; fatal
// when none is left (or there is none, or the newest is past --steps).
int checkpoint_resume(const char* dir, Model* m, Optimizer* opt, TrainState* st, int rank, const CheckpointLimits* lim);
// A model file read on its own, without a Model or a run (--export-hf, --eval, --generate): the config and step of
// its header, the whole model's parameters (global layout, param_layout(&cfg, cfg.n_experts)) and the router bias.
// Reading takes no lock and writes nothing, so a directory a running trainer holds can be read.
typedef struct {
    ModelConfig cfg;     // ints, the 3 floats and the name, as the header stores them
    int step;
    size_t n, nb;        // parameters, router-bias entries
    const float* params; // (n)  inside buf
    const float* bias;   // (nb) inside buf
    void* buf;           // the file's bytes
} CheckpointModel;
// Reads model file `step` of dir (-1: the newest complete checkpoint; either way its DONE marker must exist) and
// runs every check a load would (checksum, sizes, finite values) plus the header's config (config_validate) and its
// parameter count against that config: 1, or 0 with "PATH: why" in why (out holds nothing to free).
int checkpoint_read_model(const char* dir, int step, CheckpointModel* out, char* why, size_t why_n);
void checkpoint_model_free(CheckpointModel* cm);
// Checks a model or state file's bytes on their own (no Model, no run: the checks above that need neither) and
// returns 1 if they pass, else 0 with "what: why" in why. Safe on any input: the entry point for fuzzing.
int checkpoint_check_bytes(const void* data, size_t bytes, char* why, size_t why_n);
// The model file of config c as JSON on f (--print-layout; scripts/scaling_sweep.py reads model files with it):
// the header's size, magic, version and slots (step, config fields, parameter count) with c's values, the parameter
// count, each tensor's name, offset (in floats after the header), numel, count and shape, and the router bias.
void checkpoint_print_layout(const ModelConfig* c, FILE* f);
// Removes checkpoints older than the newest `keep` complete ones (keep <= 0: keep all). A checkpoint with a
// keep marker (DIR/KEEP_S, written for the checkpoint before a loss spike) is never removed. Also removes the
// files of checkpoints that never completed (no DONE marker, *.tmp: left by a kill during a write or a prune).
void checkpoint_prune(const char* dir, int keep);
// Marks checkpoint `step` to survive pruning (the replay of a spike starts there).
void checkpoint_protect(const char* dir, int step);
// Removes every checkpoint file in dir, complete or not (--overwrite).
void checkpoint_remove_all(const char* dir);
