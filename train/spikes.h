// train/spikes.h: loss-spike detection. The loss and the gradient norm of a step get a robust z-score against a
// rolling window of the previous steps: the distance from the median of the newest few values in units of the
// window's step-to-step noise (the why in spikes.c); a loss z above --spike-z is a spike. The window lives in the
// checkpoint, so a resumed or replayed run makes the same decisions.
#pragma once
#include <stddef.h>

#define SPIKE_MAX_WINDOW 1024
#define SPIKE_MIN_VALUES 16  // no verdict until the window has this many values

typedef struct {
    int window;                        // values kept (<= SPIKE_MAX_WINDOW)
    int count;                         // values in the window
    int head;                          // next slot
    double loss[SPIKE_MAX_WINDOW];     // ring buffers
    double norm[SPIKE_MAX_WINDOW];
} SpikeStats;

void spikes_init(SpikeStats* s, int window);
// z = (x - level) / sigma: level the median of the window's newest 8 values, sigma the noise of one value from
// the window's consecutive differences (1.4826 MAD around their median, / sqrt 2); NaN while the window holds
// fewer than SPIKE_MIN_VALUES
void spikes_z(const SpikeStats* s, double loss, double norm, double* z_loss, double* z_norm);
// 1 if the step with this (finite) loss and grad norm is a spike at threshold spike_z (0 = never): its loss z
// above spike_z (the norm does not decide; why in spikes.c). z_loss and z_norm get its z-scores (NaN: no verdict
// yet). Depends only on the window and the step's values, so a resumed or replayed run decides the same.
int spikes_verdict(const SpikeStats* s, double loss, double norm, double spike_z, double* z_loss, double* z_norm);
void spikes_push(SpikeStats* s, double loss, double norm);
// 1 if s is a ring spikes_init/spikes_push could have made (window in range, head and count inside it, the
// values it holds finite); else 0 with the broken invariant in why. A checkpoint's window is checked with it
// before use: a window of 0 divides by zero, a head or count outside it indexes past the buffers.
int spikes_valid(const SpikeStats* s, char* why, size_t why_n);
