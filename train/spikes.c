// train/spikes.c: see spikes.h.
#include "spikes.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void spikes_init(SpikeStats* s, int window) {
    memset(s, 0, sizeof(*s));
    s->window = window < 1 ? 1 : window > SPIKE_MAX_WINDOW ? SPIKE_MAX_WINDOW : window;
}

// Why not the plain z-score (x - mean) / sd of the window, which this detector used until 2026-12-02: while the
// loss falls (the first few hundred steps) the window's sd is the descent, not the noise, so a jump of the loss
// from 6.0 to 9.7 at step 60 scored z 3.2 and was missed, and the gradient norm, heavy-tailed, gave single-step
// outliers (4-12x, z up to 109) with the loss on its trend in every clean run measured, each reported as a spike
// (dev/results/spike_detector_2026-12-02.md). Here a value is compared with where the series is now and scaled
// by how much it moves from one step to the next:
//   level: the median of the newest SPIKE_LEVEL_VALUES values. It follows a descent with a lag of a few steps
//     (which only lowers z while the series falls), and one outlier among them does not move it.
//   noise: sigma of the step-to-step noise from the window's consecutive differences d_i = x_i - x_(i-1). With
//     x_i = trend_i + e_i, d_i = slope + e_i - e_(i-1): subtracting the median difference removes a slowly
//     changing slope, and 1.4826 x the median absolute deviation of d is sd(d) = sigma sqrt(2) for Gaussian
//     noise while a few outliers (an earlier spike gives two differences) do not inflate it.
//   z = (x - level) / sigma.
#define SPIKE_LEVEL_VALUES 8

static int cmp_double(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

static double median(double* v, int n) {  // sorts v
    qsort(v, n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// z of x against the ring's values ring[0..window) (count of them, the newest at head - 1)
static double robust_z(const SpikeStats* s, const double* ring, double x) {
    double seq[SPIKE_MAX_WINDOW], tmp[SPIKE_MAX_WINDOW];
    int n = s->count, first = s->count < s->window ? 0 : s->head;  // the oldest value's slot
    for (int i = 0; i < n; i++) seq[i] = ring[(first + i) % s->window];
    int m = n < SPIKE_LEVEL_VALUES ? n : SPIKE_LEVEL_VALUES;
    memcpy(tmp, seq + n - m, m * sizeof(double));
    double level = median(tmp, m);
    for (int i = 1; i < n; i++) tmp[i - 1] = seq[i] - seq[i - 1];
    double slope = median(tmp, n - 1);
    for (int i = 1; i < n; i++) tmp[i - 1] = fabs(seq[i] - seq[i - 1] - slope);
    double sigma = 1.4826 * median(tmp, n - 1) / sqrt(2.0);
    return sigma > 0 ? (x - level) / sigma : (x > level ? INFINITY : 0.0);
}

void spikes_z(const SpikeStats* s, double loss, double norm, double* z_loss, double* z_norm) {
    if (s->count < SPIKE_MIN_VALUES) {
        *z_loss = *z_norm = NAN;
        return;
    }
    *z_loss = robust_z(s, s->loss, loss);
    *z_norm = robust_z(s, s->norm, norm);
}

// The loss alone decides. The gradient norm's outliers in clean runs came with losses at or below their level
// (a batch with a large gradient is not a batch the model does badly on), gradient clipping already bounds their
// update, and the loss after them stays on its trend; every injected spike and every loss spike is a jump of the
// loss itself. z_norm stays in the log as telemetry (the norm often moves with a real spike, or before it).
int spikes_verdict(const SpikeStats* s, double loss, double norm, double spike_z, double* z_loss, double* z_norm) {
    spikes_z(s, loss, norm, z_loss, z_norm);
    return spike_z > 0 && *z_loss > spike_z;  // NaN (no verdict yet) compares false; +inf passes
}

void spikes_push(SpikeStats* s, double loss, double norm) {
    s->loss[s->head] = loss;
    s->norm[s->head] = norm;
    s->head = (s->head + 1) % s->window;
    if (s->count < s->window) s->count++;
}

int spikes_valid(const SpikeStats* s, char* why, size_t why_n) {
    if (s->window < 1 || s->window > SPIKE_MAX_WINDOW) {
        snprintf(why, why_n, "spike window %d outside [1, %d]", s->window, SPIKE_MAX_WINDOW);
        return 0;
    }
    if (s->count < 0 || s->count > s->window) {
        snprintf(why, why_n, "spike ring count %d outside [0, window %d]", s->count, s->window);
        return 0;
    }
    if (s->head < 0 || s->head >= s->window) {
        snprintf(why, why_n, "spike ring head %d outside [0, window %d)", s->head, s->window);
        return 0;
    }
    // a ring that has not wrapped yet was filled from slot 0, so its next slot is its count
    if (s->count < s->window && s->head != s->count) {
        snprintf(why, why_n, "spike ring head %d disagrees with its count %d (a ring not yet full has head == count)",
                 s->head, s->count);
        return 0;
    }
    for (int i = 0; i < s->count; i++)
        if (!isfinite(s->loss[i]) || !isfinite(s->norm[i])) {
            snprintf(why, why_n, "spike ring value %d is not finite (loss %g, grad norm %g)", i, s->loss[i], s->norm[i]);
            return 0;
        }
    return 1;
}
