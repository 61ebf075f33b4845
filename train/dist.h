// train/dist.h: the data-parallel bookkeeping of a step over the ranks: gradient sums, and the statistics every
// rank must agree on (expert loads for the bias update, per-head max logits for QK-Clip).
#pragma once
#include "../model/model.h"

// grads: non-expert tensors summed over all ranks, expert tensors over the ranks holding the same experts.
// (Each rank's backward used loss_scale 1 / (micro-batches x ranks), so the sums are the global-batch mean.)
void dist_reduce_grads(Model* m);
// expert_load summed over all ranks, maxlogit max over all ranks
void dist_reduce_step_stats(Model* m);
// a value's mean over all ranks
double dist_mean(Model* m, double v);
