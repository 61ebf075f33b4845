// train/checkpoint.h: checkpoints that resume bit-identically.
//
// A checkpoint of step S in directory DIR is three kinds of file:
//   DIR/model_S.bin         the model: header (config, step) + fp32 parameters in the whole model's layout (however
//                           the experts were split) + router bias   (rank 0 writes it)
//   DIR/state_S_rR.bin      rank R's training state as named sections: optimizer state, data position, RNG, ...
//   DIR/DONE_S              written last, after every other file is complete
// Each file is written to a temporary name, flushed to disk and renamed, so a kill at any moment leaves the last
// complete checkpoint intact; a checkpoint without its DONE marker is ignored.
#pragma once
#include "../model/model.h"
#include "../optim/optim.h"
#include "spikes.h"

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

void checkpoint_save(const char* dir, const Model* m, const Optimizer* opt, const TrainState* st, int rank);
// The newest step with a DONE marker in dir, or -1.
int checkpoint_latest(const char* dir);
// Loads step `step`; any mismatch with the running configuration is fatal with the file named.
void checkpoint_load(const char* dir, int step, Model* m, Optimizer* opt, TrainState* st, int rank);
// Removes checkpoints older than the newest `keep` complete ones (keep <= 0: keep all). A checkpoint with a
// keep marker (DIR/KEEP_S, written for the checkpoint before a loss spike) is never removed.
void checkpoint_prune(const char* dir, int keep);
// Marks checkpoint `step` to survive pruning (the replay of a spike starts there).
void checkpoint_protect(const char* dir, int step);
// Removes every complete checkpoint in dir (--overwrite).
void checkpoint_remove_all(const char* dir);
