// model/experts.h: inside model/ only. The routed experts of the MoE layers behind one seam: the layer code
// (model.c) routes, dispatches and gathers its rows into expert order, hands them to experts_forward, and combines
// what comes back (experts_backward is the mirror). Whether every expert is here (one rank) or the experts are
// split over the expert-parallel group (rows travel to their experts' owners by all-to-all, are computed there,
// and come back) is decided in experts.c and nowhere else; the layer code reads the same for 1 rank or 64.
// Also here, shared by model.c and experts.c: the carver of the activation memory and the profile marks.
#pragma once
#include "model.h"

// Carves one allocation into buffers: a dry run (base NULL) measures, the second assigns.
typedef struct {
    char* base;
    size_t used;
} Carver;
void* carve(Carver* cv, size_t bytes);

// --profile: closes the running category's interval and opens cat's (PROF_NONE: none)
void model_prof(Model* m, int cat);

// Sets m->n_local_experts and m->first_expert: this rank's share of every MoE layer's experts under comm's
// expert split (all of them when comm is NULL).
void experts_split(Model* m, Comm* comm);
// The experts' activation buffers for a batch of N rows, carved in acts_layout's order: per MoE layer (after its
// dispatch-ordered xe and ye), the rows in transit (after the targets), the gradient scratch (after dye, dxe).
void experts_carve_layer(const Model* m, LayerActs* la, size_t N, Carver* cv);
void experts_carve_transit(const Model* m, Acts* a, size_t N, Carver* cv);
void experts_carve_grad(const Model* m, Acts* a, size_t N, Carver* cv);
// host-side plans of the all-to-all (nothing on one rank)
void experts_acts_alloc(const Model* m, Acts* a);
void experts_acts_free(const Model* m, Acts* a);
// la->xe (N*K, d), dispatch order (la->offsets) -> la->ye (N*K, d), the experts' outputs in the same order
void experts_forward(Model* m, Acts* a, LayerActs* la, const LayerWeights* w);
// a->g.dye (N*K, d) -> a->g.dxe (N*K, d), both in dispatch order; the experts' gradients wg->expert_w13/w2 +=
void experts_backward(Model* m, Acts* a, LayerActs* la, const LayerWeights* w, LayerWeights* wg);
// every member's copy of an expert tensor of per_bytes (local layout) into all, member-major (on one rank: a copy)
void experts_allgather(const Model* m, const float* local, float* all, size_t per_bytes);
// ranks the experts are split over (1: all here)
int experts_ep(const Model* m);
