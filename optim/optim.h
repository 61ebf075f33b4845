// optim/optim.h: AdamW and learning-rate schedules. (Muon and QK-Clip join here.)
#pragma once
#include "../model/model.h"

// ---- learning-rate schedule: linear warmup, then cosine or WSD (warmup-stable-decay) down to min_lr
typedef enum { LR_COSINE, LR_WSD, LR_CONSTANT } LRShape;

typedef struct {
    LRShape shape;
    float lr;          // peak
    float min_lr;      // floor at the end
    int warmup;        // steps of linear warmup
    int total;         // steps in the run
    float decay_frac;  // WSD: the last decay_frac of the steps decay linearly
} LRSchedule;

float lr_at(const LRSchedule* s, int step);  // step is 0-based
int lr_shape_parse(const char* name, LRShape* out);
const char* lr_shape_name(LRShape s);

// ---- AdamW
typedef struct {
    float b1, b2, eps, weight_decay;
    float* m;    // (num_params) first moment, backend memory
    float* v;    // (num_params) second moment
    int t;       // updates applied so far
} AdamW;

void adamw_init(AdamW* opt, const Model* model, float b1, float b2, float eps, float weight_decay);
void adamw_free(AdamW* opt, const Model* model);
// One update of every parameter with gradient grads * grad_scale; weight decay only where param_decays().
void adamw_step(AdamW* opt, Model* model, float lr, float grad_scale);

// ---- gradient clipping: global L2 norm of all gradients, and the factor that brings it to at most clip
float grad_global_norm(const Model* model);
static inline float grad_clip_scale(float norm, float clip) {
    if (clip <= 0.0f) return 1.0f;
    float s = clip / (norm + 1e-6f);
    return s < 1.0f ? s : 1.0f;
}
