// comm/comm.h: the processes of a run and the collectives between them. Built on MPI when the build found mpicc
// (USE_MPI), otherwise a single process where every collective is a copy.
//
// Host and device buffers. The comm_* collectives take host memory. The comm_dev_* ones take the model's buffers
// (gradients, expert loads, max logits, activation rows, weights), which live where comm_set_device says: host
// memory on the CPU backend, where each is exactly its comm_* twin (same call, same result bits, same byte
// counts); device memory of this rank's GPU on the CUDA backend (one GPU per rank), where they run on NCCL when
// the build has it (USE_NCCL: communicators for the world, EP and DP groups, bootstrapped over MPI; the CUDA
// backend's stream) and otherwise stage through host memory for MPI (correct, slow: said once at start). Either
// way a comm_dev_* call returns when its result is in place, and it counts bytes as its comm_* twin does.
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

typedef struct Comm {
    int rank, world;
    int ep, ep_rank;   // expert-parallel group size and this rank's index in it
    int dp, dp_rank;   // expert data-parallel group size (world / ep) and index
    void* mpi;         // MPI communicators when built with MPI (comm.c)
    int device;        // where the comm_dev_* buffers live: 0 host memory, 1 CUDA device memory (comm_set_device)
    void* dev;         // the device side (comm_cuda.c): NCCL communicators or host staging buffers
    // bytes this rank sent, per kind of collective, since comm_reset_bytes
    double bytes_allreduce, bytes_allgather, bytes_alltoall;
} Comm;

// MPI_Init when built with MPI (and launched by mpirun); sets the rank prefix of fatal() messages and makes
// fatal() abort the whole job, so no rank is left waiting in a collective.
void comm_init(Comm* c, int* argc, char*** argv);
// Splits the world into expert-parallel groups of ep ranks; a bad ep is fatal (naming --ep).
void comm_set_ep(Comm* c, int ep, int n_experts);
// Where the model's buffers live: 0 host memory (CPU backend), 1 device memory of the CUDA backend's GPU (call
// after the backend chose and set its GPU, after comm_set_ep). Collective: every rank must pass the same value
// (fatal otherwise). With 1 and several ranks it sets up NCCL (or host staging) and says which on stdout. stream:
// with device buffers, the CUDA stream (a cudaStream_t) their producers run on (ops_cuda_stream()), so the
// collectives follow the kernels that wrote the data; ignored with host buffers.
void comm_set_device(Comm* c, int device_buffers, void* stream);
void comm_finalize(Comm* c);

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

// ---- the same on the model's buffers (host or device memory, comm_set_device)
void comm_dev_allreduce_sum_f32(Comm* c, CommGroup g, float* buf, size_t n);
void comm_dev_allreduce_max_f32(Comm* c, CommGroup g, float* buf, size_t n);
void comm_dev_alltoallv_bytes(Comm* c, CommGroup g, const void* send, const size_t* scounts, const size_t* sdispls,
                              void* recv, const size_t* rcounts, const size_t* rdispls);
// 1 when the comm_dev_* calls work on device memory directly (NCCL), so a caller may skip its own host staging
int comm_dev_direct(const Comm* c);
// In place, an all-gather of pieces: piece i (bytes[i] bytes at buf + offs[i]) is owned by member roots[i] of g
// and afterwards holds the owner's bytes on every member. Counted as an all-gather (each member sends its own
// pieces to the p - 1 others). NCCL: grouped broadcasts; otherwise one broadcast per piece (through host memory
// when staged).
void comm_dev_broadcast_pieces(Comm* c, CommGroup g, void* buf, int n, const size_t* offs, const size_t* bytes,
                               const int* roots);
void comm_barrier(Comm* c);
void comm_reset_bytes(Comm* c);
