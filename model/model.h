// model/model.h: the scaled-down Kimi K2 model: parameters, activations, forward and backward over the op
// interface in ops.h. The math is in model/MODEL.md.
#pragma once
#include "config.h"
#include "params.h"
#include "ops.h"

typedef struct Comm Comm;  // comm/comm.h: the ranks; the model hands it to its experts (experts.c) untouched

// Pointers to one layer's weights (or gradients: the same shapes). void* because the compute copy of the weights
// is in the backend's compute dtype; gradient pointers are fp32 and go to float* op arguments directly.
typedef struct {
    void* attn_norm;  // (d)
    void* wdq;        // (q_lora, d)
    void* q_norm;     // (q_lora)
    void* wuq;        // (H*dqk, q_lora)
    void* wdkv;       // (kv_lora + rope, d)
    void* kv_norm;    // (kv_lora)
    void* wukv;       // (H*(nope+dv), kv_lora)
    void* wo;         // (d, H*dv)
    void* ffn_norm;   // (d)
    void* w13;        // (2*fd, d) dense layer, or (2*f, d) the MoE layer's shared expert
    void* w2;         // (d, fd) dense, or (d, f) shared expert
    void* router;     // (E, d)          MoE layers only, else NULL
    void* expert_w13; // (E, 2*f, d)     MoE layers only
    void* expert_w2;  // (E, d, f)       MoE layers only
} LayerWeights;

// One layer's saved activations for a batch of N = B*T rows.
typedef struct {
    void* x_in;      // (N, d) residual stream entering the layer
    void* h;         // (N, d) attn_norm(x_in)
    float* rstd_h;   // (N)
    void* cq_pre;    // (N, q_lora) h wdq^T
    float* rstd_q;   // (N)
    void* cq;        // (N, q_lora) q_norm(cq_pre)
    void* q;         // (N, H*dqk) cq wuq^T, RoPE applied to each head's rope part
    void* a;         // (N, kv_lora + rope) h wdkv^T, RoPE applied to the rope-key columns
    float* rstd_kv;  // (N)
    void* ckv;       // (N, kv_lora) kv_norm(a[:, :kv_lora])
    void* kv;        // (N, H*(nope+dv)) ckv wukv^T: per head k-nope then v
    float* lse;      // (B, H, T) attention softmax log-sum-exp
    void* att;       // (N, H*dv) attention output, heads concatenated
    void* x_mid;     // (N, d) x_in + att wo^T
    void* h2;        // (N, d) ffn_norm(x_mid)
    float* rstd_h2;  // (N)
    void* h13;       // (N, 2*fw) dense FFN or shared expert: h2 w13^T (fw = fd or f)
    void* hact;      // (N, fw) silu(W1 part) * W3 part
    void* ffn_out;   // (N, d) what the FFN / MoE adds to the residual stream
    // MoE layers only (NULL in dense layers)
    float* scores;   // (N, E) sigmoid router scores, fp32
    int* sel;        // (N, K) chosen experts, ascending
    float* gates;    // (N, K) routed_scale * normalised scores of the chosen experts
    int* offsets;    // (E+1) expert e owns rows [offsets[e], offsets[e+1]) of the expert-ordered buffers
    int* row_of;     // (N*K) expert-ordered row of choice (n, k)
    int* token_of;   // (N*K) token row of each expert-ordered row
    void* xe;        // (N*K, d) h2 rows in expert order
    void* e_h13;     // (N*K, 2f)
    void* e_hact;    // (N*K, f)
    void* ye;        // (N*K, d) expert outputs, expert order
    // expert parallelism (ep > 1): this rank computes its n_local experts for the rows every member sends it.
    // With ep = 1, xl aliases xe and e_h13/e_hact hold N*K rows.
    int* ep_send;    // host (ep, n_local): rows this rank sends to each expert of each member
    int* ep_recv;    // host (ep, n_local): rows each member sends to each of this rank's experts
    int ep_rows;     // rows received this step
    int* ep_offsets; // (n_local + 1) this rank's experts' rows in the expert-major buffers
    int* ep_perm;    // (ep*N*K) expert-major row -> row of the received (member-major) buffer
    int* ep_inv;     // (ep*N*K) received row -> expert-major row
    void* xl;        // (ep*N*K, d) rows for this rank's experts, expert-major
} LayerActs;

// Scratch for the backward pass, shared by all layers (sized for the widest layer).
typedef struct {
    void* dx;        // (N, d) gradient of the residual stream, carried from the top layer down
    void* dn;        // (N, d) gradient at a norm's output (h, h2, final)
    void* datt;      // (N, H*dv)
    void* dq;        // (N, H*dqk)
    void* dkv;       // (N, H*(nope+dv))
    void* da;        // (N, kv_lora + rope)
    void* dckv;      // (N, kv_lora)
    void* dcq;       // (N, q_lora)
    void* dcq_pre;   // (N, q_lora)
    void* dh13;      // (N, 2*max(fd, f))
    void* dhact;     // (N, max(fd, f))
    float* dscores;  // (N, E)
    float* dgates;   // (N, K)
    void* dye;       // (N*K, d)
    void* dxe;       // (N*K, d)
    void* de_h13;    // (ep*N*K, 2f)
    void* de_hact;   // (ep*N*K, f)
    void* dyl;       // (ep*N*K, d) expert parallelism: output gradients of this rank's experts, expert-major
    void* dxl;       // (ep*N*K, d)
} GradScratch;

// Activations for batches of up to B x T rows. One Acts for training (with backward scratch), a smaller one for
// sampling.
typedef struct {
    int B, T;          // capacity
    int has_grad;      // backward scratch allocated
    void* memory;      // one allocation for all activation buffers
    size_t bytes;      // its size
    LayerActs* layers; // (L)
    void* x_final;     // (N, d) residual stream after the last layer
    void* xf;          // (N, d) final_norm(x_final)
    float* rstd_f;     // (N)
    void* logits;      // (N, V); overwritten by their gradient in backward
    float* losses;     // (N) per-row cross-entropy
    int* tokens;       // (N) inputs, backend memory
    int* targets;      // (N)
    void* ep_buf;      // (ep*N*K, d) expert parallelism: rows in transit, member-major
    void* ep_buf2;     // (ep*N*K, d) the experts' outputs before they travel back
    int* ep_host;      // host scratch for the plans
    GradScratch g;
    // what the last forward ran on
    int cur_B, cur_T, has_targets;
} Acts;

// Where a step's time goes (--profile): the parts of the model the forward/backward marks as it runs, each timed
// apart in the forward and in the backward (prof_names: PART_fwd for the first PROF_PARTS, then PART_bwd).
enum {
    PROF_EMBEDDING,  // token embedding (and the tokens' copy to the backend)
    PROF_NORMS,      // every RMSNorm: attention, q/kv latents, FFN, final
    PROF_ATTN_PROJ,  // MLA's projections (wdq, wuq, wdkv, wukv, wo) and RoPE
    PROF_ATTENTION,  // causal softmax attention
    PROF_RESIDUAL,   // residual adds
    PROF_FFN,        // dense SwiGLU FFN, or the MoE layer's shared expert
    PROF_ROUTING,    // router, balance loss, dispatch, gather, combine (and the all-to-all)
    PROF_EXPERTS,    // the routed experts' grouped GEMMs
    PROF_LM_HEAD,    // logits = xf lm_head^T
    PROF_LOSS,       // softmax cross-entropy and the loss's mean
    PROF_PARTS,
    PROF_N = 2 * PROF_PARTS,
    PROF_NONE = PROF_N
};
extern const char* const prof_names[PROF_N];

typedef struct {
    ModelConfig cfg;
    const Ops* ops;
    Comm* comm;             // the ranks (NULL: one process); experts are split over comm->ep ranks
    int n_local_experts;    // experts of each MoE layer held here: n_experts / ep
    int first_expert;       // global id of the first of them
    ParamTensor layout[NUM_PARAM_TENSORS];        // this rank's tensors (expert tensors hold the local experts)
    ParamTensor global_layout[NUM_PARAM_TENSORS]; // the whole model's (checkpoints are in this layout)
    size_t num_params;      // this rank's
    size_t num_params_global;
    float* params;          // (num_params) fp32 master weights, backend memory
    void* weights;          // compute copy (== params on the CPU)
    float* grads;           // (num_params) fp32
    LayerWeights* lw;       // (L) pointers into weights
    LayerWeights* lg;       // (L) pointers into grads
    float* router_bias;     // (Lm, E) aux-loss-free balancing bias, no gradient
    // statistics of the current optimizer step (summed / maxed over its micro-batches)
    float* maxlogit;        // (L, H) max scaled attention logit per head, backend memory
    float* expert_load;     // (Lm, E) routed choices per expert, backend memory
    float* aux_acc;         // (1) balance loss of the last forward, backend memory
    // training hyper-parameters that enter the loss
    float balance_alpha;    // sequence-wise balance loss weight: 0 from model_init, set by the caller (--balance-alpha)
    // results of the last forward with targets
    float ce_loss;          // mean cross-entropy
    float aux_loss;         // balance loss summed over MoE layers
    // --profile: seconds per category since the last model_profile_reset (the backend is synchronised at every
    // boundary, so on a GPU the times are exact and the run a little slower)
    int profile;
    double prof_seconds[PROF_N];
    int prof_cat;           // category being timed, PROF_PARTS further on in the backward (PROF_NONE: none)
    int prof_backward;      // 1 inside model_backward: marks count as the part's backward time
    double prof_t0;
} Model;

// Builds the model on the given backend, on one process (comm NULL) or as this rank's part of comm's expert
// split, with parameters from params_host (the whole model, global layout) or, when NULL, freshly initialised from
// seed (the same numbers whatever the split). Router bias starts at 0.
void model_init(Model* m, const ModelConfig* cfg, const Ops* ops, Comm* comm, const float* params_host, uint64_t seed);
// model_init without the weights: everything allocated (by ops->malloc: zeros), nothing drawn or copied. For
// dev/cuda/emu/predict_step.c, which counts a step's work on k2-small without 20 GB of host memory for its weights.
void model_alloc(Model* m, const ModelConfig* cfg, const Ops* ops, Comm* comm);
// Copies whole-model parameters (global layout, host) into this rank's parameters.
void model_set_params(Model* m, const float* params_host_global);
// The whole model's parameters (global layout) into out_host on every member of the expert-parallel group.
void model_get_params(const Model* m, float* out_host_global);
void model_free(Model* m);
void acts_alloc(Acts* a, const Model* m, int B, int T, int with_grad);
void acts_free(Acts* a, const Model* m);

// Forward on tokens (B, T) in host memory. With targets: per-row losses, m->ce_loss, m->aux_loss.
// Adds into the step statistics (maxlogit, expert_load).
void model_forward(Model* m, Acts* a, const int* tokens, const int* targets, int B, int T);
// Backward of the last forward (which had targets): grads += d(loss_scale * (ce + aux)) / d params.
void model_backward(Model* m, Acts* a, float loss_scale);

void model_zero_grad(Model* m);
void model_profile_reset(Model* m);
void model_zero_step_stats(Model* m);
// After an update of the fp32 master weights: refresh the compute copy (no-op on the CPU).
void model_sync_weights(Model* m);
// Aux-loss-free balancing: bias += gamma * sign(mean_load - load) per MoE layer, from expert_load.
void model_update_router_bias(Model* m, float gamma);
// Copies a row of logits to the host (after a forward).
void model_logits_row(const Model* m, const Acts* a, int row, float* out_host);
// The last forward's final_norm output (cur_B*cur_T, d) as fp32 and its targets, on the host (after a backward too:
// the backward reads xf and does not write it)
void model_final_hidden(const Model* m, const Acts* a, float* xf_host, int* targets_host);
// Host snapshots for telemetry
void model_get_maxlogit(const Model* m, float* out_host);     // (L, H)
void model_get_expert_load(const Model* m, float* out_host);  // (Lm, E)
