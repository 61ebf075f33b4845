// optim/optim.h: the optimizers (AdamW; Muon with AdamW for the non-matrix tensors), QK-Clip, gradient clipping
// and learning-rate schedules. The formulas are in model/MODEL.md.
#pragma once
#include "../model/model.h"
#include "../comm/comm.h"

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

// ---- the optimizer: AdamW for everything, or Muon for the hidden matrices and AdamW for the rest
typedef enum { OPTIM_ADAMW, OPTIM_MUON } OptimKind;

typedef struct {
    OptimKind kind;
    float b1, b2, eps;      // AdamW
    float weight_decay;     // both (decoupled; AdamW skips the RMSNorm gains)
    float mu;               // Muon momentum (Nesterov)
    const char* ns_table;   // "default" (Keller Jordan's 5 x (3.4445, -4.7750, 2.0315)) or "polar" (Polar Express)
    int muon_router;        // 1: the router matrices go to Muon, 0: to AdamW
    int ns_bf16;            // 1: Newton-Schulz's GEMMs with bf16 operands, fp32 accumulation (the CUDA backend)
} OptimConfig;

// A piece of the parameters that one rank updates: a range of one tensor's elements (AdamW), or a run of whole
// matrices of one tensor (Muon needs whole matrices). With several ranks the optimizer state is sharded (ZeRO-1):
// every rank keeps the state of its own units only, updates them, and the new weights are gathered to every rank
// that holds the tensor (all ranks, or for expert tensors the ranks holding the same experts).
typedef struct {
    int tensor;
    size_t begin, end;  // element range in the (local) parameter array
    int muon;           // 1: Muon on matrices [mat0, mat1) of the tensor
    int mat0, mat1;
    int owner;          // index of the updating rank within the tensor's group (GROUP_WORLD or GROUP_DP)
    size_t state_off;   // first element of its state in adam_m/adam_v or muon_m (owner only)
} OptUnit;

typedef struct {
    OptimConfig cfg;
    Comm* comm;              // NULL: one process
    int use_muon[NUM_PARAM_TENSORS];  // 1: this tensor's matrices are updated by Muon
    OptUnit* units;          // (n_units) every unit of every rank, in parameter order
    int n_units;
    float* adam_m;           // (adam_n) AdamW first moment of this rank's AdamW units, backend memory
    float* adam_v;           // (adam_n) second moment
    size_t adam_n;
    float* muon_m;           // (muon_n) Muon momentum of this rank's Muon units
    size_t muon_n;
    float* scratch;          // (largest own Muon unit) Nesterov input, orthogonalised in place
    size_t scratch_n;
    float* gather_buf;       // host buffers for gathering the updated weights (multi-rank only)
    size_t gather_n;
    float adamw_lr_scale;    // --optim muon: the AdamW units step with lr times this (1 after optimizer_init)
    int ns_steps;
    float ns_coeffs[3 * 8];  // (ns_steps, 3) per-iteration (a, b, c)
    double ns_flops_rank;    // Newton-Schulz FLOPs per step of this rank's units
    int t;                   // updates applied so far
    // telemetry of the last step
    double muon_update_rms;  // RMS of 0.2 sqrt(max(A,B)) O over all Muon elements of all ranks (~0.2 full rank)
    double ns_flops;         // Newton-Schulz FLOPs of the last step, all ranks (overhead, not model FLOPs)
    double seconds;          // wall time of the last step (update + gather)
    double ns_seconds;       // of which Newton-Schulz (the backend synchronised around it)
} Optimizer;

// Validates cfg (a bad ns_table is fatal, naming --ns), splits the work over model->comm's ranks and allocates
// this rank's state.
void optimizer_init(Optimizer* opt, const Model* model, const OptimConfig* cfg);
void optimizer_free(Optimizer* opt, const Model* model);
const char* optim_kind_name(OptimKind k);
// One update of every parameter with gradient grads * grad_scale at learning rate lr; refreshes the compute
// copy of the weights afterwards.
void optimizer_step(Optimizer* opt, Model* model, float lr, float grad_scale);
// Newton-Schulz FLOPs of one (rows, cols) matrix with the given number of iterations: steps (4 n^2 m + 2 n^3).
double newton_schulz_flops(int rows, int cols, int steps);
// Fills coeffs (steps x 3) for a table name; returns the number of steps, 0 if the name is unknown.
int newton_schulz_table(const char* name, float* coeffs);

// ---- QK-Clip (MuonClip): after the update, every head whose max scaled logit this step passed tau has its
// query/key rows rescaled (MODEL.md). Returns the number of heads clipped; clipped (L*H) gets 0/1 flags if not
// NULL. tau <= 0 does nothing.
int qk_clip(Model* model, float tau, int* clipped);

// ---- gradient clipping: global L2 norm of all gradients, and the factor that brings it to at most clip
float grad_global_norm(const Model* model);
static inline float grad_clip_scale(float norm, float clip) {
    if (clip <= 0.0f) return 1.0f;
    float s = clip / (norm + 1e-6f);
    return s < 1.0f ? s : 1.0f;
}
