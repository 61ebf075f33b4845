// optim/schedule.c: learning-rate schedules (formulas in model/MODEL.md).
#include "optim.h"
#include <math.h>
#include <string.h>

float lr_at(const LRSchedule* s, int step) {
    if (step < s->warmup) return s->lr * (float)(step + 1) / (float)s->warmup;
    switch (s->shape) {
    case LR_CONSTANT:
        return s->lr;
    case LR_COSINE: {
        int span = s->total - s->warmup;
        double p = (double)(step - s->warmup) / (double)(span > 1 ? span : 1);
        if (p > 1.0) p = 1.0;
        return (float)(s->min_lr + 0.5 * (s->lr - s->min_lr) * (1.0 + cos(M_PI * p)));
    }
    case LR_WSD: {
        // stable at lr, then the last decay_frac of the run decays linearly, reaching min_lr at the last step
        int decay_steps = (int)lround(s->decay_frac * s->total);
        int decay_start = s->total - decay_steps;
        if (decay_steps <= 0 || step < decay_start) return s->lr;
        double p = (double)(step - decay_start + 1) / (double)decay_steps;
        if (p > 1.0) p = 1.0;
        return (float)(s->lr + (s->min_lr - s->lr) * p);
    }
    }
    return s->lr;
}

int lr_shape_parse(const char* name, LRShape* out) {
    if (!strcmp(name, "cosine")) { *out = LR_COSINE; return 1; }
    if (!strcmp(name, "wsd")) { *out = LR_WSD; return 1; }
    if (!strcmp(name, "constant")) { *out = LR_CONSTANT; return 1; }
    return 0;
}
