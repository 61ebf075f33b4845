// train/spikes.c: see spikes.h.
#include "spikes.h"
#include <math.h>
#include <stdio.h>
#include <string.h>

void spikes_init(SpikeStats* s, int window) {
    memset(s, 0, sizeof(*s));
    s->window = window < 1 ? 1 : window > SPIKE_MAX_WINDOW ? SPIKE_MAX_WINDOW : window;
}

static double zscore(const double* v, int n, double x) {
    double mean = 0.0, var = 0.0;
    for (int i = 0; i < n; i++) mean += v[i];
    mean /= n;
    for (int i = 0; i < n; i++) var += (v[i] - mean) * (v[i] - mean);
    double sd = sqrt(var / (n - 1));
    return sd > 0 ? (x - mean) / sd : (x > mean ? INFINITY : 0.0);
}

void spikes_z(const SpikeStats* s, double loss, double norm, double* z_loss, double* z_norm) {
    if (s->count < SPIKE_MIN_VALUES) {
        *z_loss = *z_norm = NAN;
        return;
    }
    *z_loss = zscore(s->loss, s->count, loss);
    *z_norm = zscore(s->norm, s->count, norm);
}

int spikes_verdict(const SpikeStats* s, double loss, double norm, double spike_z, double* z_loss, double* z_norm) {
    spikes_z(s, loss, norm, z_loss, z_norm);
    // NaN (no verdict) compares false; an infinite z (a constant window and a higher value) is a spike
    return spike_z > 0 && (*z_loss > spike_z || *z_norm > spike_z);
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
