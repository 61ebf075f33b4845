// comm/comm.h: the processes of a run and the collectives between them. Built on MPI when the build found mpicc
// (USE_MPI), otherwise a single process where every collective is a copy. (The CUDA backend's NCCL collectives
// will sit behind the same calls.)
//
// Layout of the ranks: world = dp x ep. Rank r belongs to
//   the expert-parallel group {ranks with the same r / ep}: ep ranks that split the 384 experts between them and
//   exchange tokens by all-to-all; its index there is ep_rank = r % ep;
//   the expert data-parallel group {ranks with the same r % ep}: the dp = world / ep ranks that hold the same
//   experts and sum those experts' gradients; its index there is dp_rank = r / ep.
// Non-expert parameters live on every rank (the world group).
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef enum { GROUP_WORLD, GROUP_EP, GROUP_DP } CommGroup;

typedef struct {
    int rank, world;
    int ep, ep_rank;   // expert-parallel group size and this rank's index in it
    int dp, dp_rank;   // expert data-parallel group size (world / ep) and index
    void* mpi;         // MPI communicators when built with MPI (comm.c)
    // bytes this rank sent, per kind of collective, since comm_reset_bytes
    double bytes_allreduce, bytes_allgather, bytes_alltoall;
} Comm;

// MPI_Init when built with MPI (and launched by mpirun); sets the rank prefix of fatal() messages and makes
// fatal() abort the whole job, so no rank is left waiting in a collective.
void comm_init(Comm* c, int* argc, char*** argv);
// Splits the world into expert-parallel groups of ep ranks; a bad ep is fatal (naming --ep).
void comm_set_ep(Comm* c, int ep, int n_experts);
void comm_finalize(Comm* c);
int comm_built_with_mpi(void);

static inline int comm_group_size(const Comm* c, CommGroup g) { return g == GROUP_WORLD ? c->world : g == GROUP_EP ? c->ep : c->dp; }
static inline int comm_group_rank(const Comm* c, CommGroup g) { return g == GROUP_WORLD ? c->rank : g == GROUP_EP ? c->ep_rank : c->dp_rank; }

void comm_allreduce_sum_f32(Comm* c, CommGroup g, float* buf, size_t n);
void comm_allreduce_sum_f64(Comm* c, CommGroup g, double* buf, size_t n);
void comm_allreduce_max_f32(Comm* c, CommGroup g, float* buf, size_t n);
void comm_allreduce_max_f64(Comm* c, CommGroup g, double* buf, size_t n);
void comm_allreduce_sum_i64(Comm* c, CommGroup g, int64_t* buf, size_t n);
// every member contributes counts[member] bytes, received at displs[member] of recv (byte counts)
void comm_allgatherv_bytes(Comm* c, CommGroup g, const void* send, void* recv, const size_t* counts, const size_t* displs);
// n ints to each member, n ints from each member
void comm_alltoall_int(Comm* c, CommGroup g, const int* send, int* recv, int n);
// variable all-to-all (byte counts and displacements per member)
void comm_alltoallv_bytes(Comm* c, CommGroup g, const void* send, const size_t* scounts, const size_t* sdispls,
                          void* recv, const size_t* rcounts, const size_t* rdispls);
void comm_broadcast_bytes(Comm* c, CommGroup g, void* buf, size_t bytes, int root);
void comm_barrier(Comm* c);
void comm_reset_bytes(Comm* c);
