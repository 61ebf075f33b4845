// train/spikes.c: see spikes.h.
#include "spikes.h"
#include <math.h>
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

void spikes_push(SpikeStats* s, double loss, double norm) {
    s->loss[s->head] = loss;
    s->norm[s->head] = norm;
    s->head = (s->head + 1) % s->window;
    if (s->count < s->window) s->count++;
}
