// train/loop.h: the training loop. Each step: the micro-batches' forward and backward, the reductions over the
// ranks, the policy for non-finite values and loss spikes, the optimizer; between steps validation, text samples
// and checkpoints.
#pragma once
#include "run.h"

// Steps r->st.step .. r->end_step - 1. Every stop on the way (a changed shard, a failed log write, too many
// non-finite or --skip-spikes-skipped steps in a row) is fatal on every rank, with a checkpoint of the last completed step.
void run_loop(Run* r);
// After the loop: the --profile means and the validation loss of the final weights.
void run_finish(Run* r);
