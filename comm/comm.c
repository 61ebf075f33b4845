// comm/comm.c: see comm.h.
#include "comm.h"
#include "../common.h"
#ifdef COMM_CUDA
#include "comm_cuda.h"
#endif
#include <limits.h>
#ifdef USE_MPI
#include <mpi.h>
#endif

#ifdef USE_MPI
typedef struct {
    MPI_Comm world, ep, dp;
} MpiGroups;

static MPI_Comm group_comm(const Comm* c, CommGroup g) {
    const MpiGroups* m = c->mpi;
    return g == GROUP_WORLD ? m->world : g == GROUP_EP ? m->ep : m->dp;
}

static void mpi_abort_exit(int code) { MPI_Abort(MPI_COMM_WORLD, code ? code : 1); }

// MPI counts are ints: larger transfers go in pieces
#define MPI_CHUNK (1 << 30)
#endif

void comm_init(Comm* c, int* argc, char*** argv) {
    memset(c, 0, sizeof(*c));
    c->world = 1;
    c->ep = 1;
    c->dp = 1;
#ifdef USE_MPI
    // only initialise MPI when launched by an MPI launcher, so the plain binary starts without one
    int launched = getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK") || getenv("MPI_LOCALNRANKS");
    if (launched) {
        MPI_Init(argc, argv);
        MpiGroups* m = xcalloc(1, sizeof(MpiGroups));
        m->world = MPI_COMM_WORLD;
        m->ep = MPI_COMM_WORLD;
        m->dp = MPI_COMM_SELF;
        c->mpi = m;
        MPI_Comm_rank(MPI_COMM_WORLD, &c->rank);
        MPI_Comm_size(MPI_COMM_WORLD, &c->world);
        c->ep = c->world;  // until comm_set_ep: everything one group
        c->ep_rank = c->rank;
        if (c->world > 1) {
            snprintf(fatal_prefix, sizeof(fatal_prefix), "[rank %d] ", c->rank);
            fatal_exit_hook = mpi_abort_exit;
        }
    }
#else
    (void)argc;
    (void)argv;
#endif
}

void comm_set_ep(Comm* c, int ep, int n_experts) {
    if (ep < 1) fatal("flag --ep = %d must be >= 1", ep);
    if (c->world % ep != 0) fatal("flag --ep = %d must divide the number of ranks (%d)", ep, c->world);
    if (n_experts % ep != 0) fatal("flag --ep = %d must divide the number of experts (%d)", ep, n_experts);
    c->ep = ep;
    c->ep_rank = c->rank % ep;
    c->dp = c->world / ep;
    c->dp_rank = c->rank / ep;
#ifdef USE_MPI
    if (c->mpi) {
        MpiGroups* m = c->mpi;
        MPI_Comm_split(MPI_COMM_WORLD, c->rank / ep, c->rank, &m->ep);
        MPI_Comm_split(MPI_COMM_WORLD, c->rank % ep, c->rank, &m->dp);
    }
#endif
}

void comm_set_device(Comm* c, int device_buffers, void* stream) {
    device_buffers = device_buffers != 0;
    if (c->mpi && c->world > 1) {
        // every rank the same: a CPU rank among GPU ranks (--device auto where some see no GPU) would exchange fp32
        // rows with bf16 ones, and NCCL's set-up would wait for it forever
        double saved = c->bytes_allreduce;
        int64_t on_gpu = device_buffers;
        comm_allreduce_sum_i64(c, GROUP_WORLD, &on_gpu, 1);
        c->bytes_allreduce = saved;
        if (on_gpu != 0 && on_gpu != c->world)
            fatal("%lld of %d ranks run on a GPU and the others on the CPU: every rank needs the same device "
                  "(--device cpu, or one GPU per rank)", (long long)on_gpu, c->world);
    }
    c->device = device_buffers;
    if (!device_buffers) return;
#ifdef COMM_CUDA
    commcuda_init(c, stream);
#else
    (void)stream;
    fatal("comm: device buffers, but this binary was built without the CUDA backend");
#endif
}

void comm_finalize(Comm* c) {
#ifdef COMM_CUDA
    if (c->dev) commcuda_finalize(c);  // before MPI goes (NCCL's set-up used it); every rank gets here
#endif
#ifdef USE_MPI
    if (c->mpi) {
        MPI_Barrier(MPI_COMM_WORLD);
        MPI_Finalize();
        free(c->mpi);
        c->mpi = NULL;
    }
#else
    (void)c;
#endif
}

void comm_reset_bytes(Comm* c) { c->bytes_allreduce = c->bytes_allgather = c->bytes_alltoall = 0; }

// ---- all-reduce. Bytes counted as a ring algorithm moves them: 2 (p-1)/p of the buffer per rank.

#ifdef USE_MPI
static void allreduce(Comm* c, CommGroup g, void* buf, size_t n, MPI_Datatype t, size_t elem, MPI_Op op) {
    int p = comm_group_size(c, g);
    if (p == 1) return;
    for (size_t off = 0; off < n; off += MPI_CHUNK) {
        int cnt = (int)(n - off < MPI_CHUNK ? n - off : MPI_CHUNK);
        MPI_Allreduce(MPI_IN_PLACE, (char*)buf + off * elem, cnt, t, op, group_comm(c, g));
    }
    c->bytes_allreduce += 2.0 * (p - 1) / p * n * elem;
}
#endif

void comm_allreduce_sum_f32(Comm* c, CommGroup g, float* buf, size_t n) {
#ifdef USE_MPI
    if (c->mpi) allreduce(c, g, buf, n, MPI_FLOAT, 4, MPI_SUM);
#else
    (void)c; (void)g; (void)buf; (void)n;
#endif
}
void comm_allreduce_sum_f64(Comm* c, CommGroup g, double* buf, size_t n) {
#ifdef USE_MPI
    if (c->mpi) allreduce(c, g, buf, n, MPI_DOUBLE, 8, MPI_SUM);
#else
    (void)c; (void)g; (void)buf; (void)n;
#endif
}
void comm_allreduce_max_f32(Comm* c, CommGroup g, float* buf, size_t n) {
#ifdef USE_MPI
    if (c->mpi) allreduce(c, g, buf, n, MPI_FLOAT, 4, MPI_MAX);
#else
    (void)c; (void)g; (void)buf; (void)n;
#endif
}
void comm_allreduce_max_f64(Comm* c, CommGroup g, double* buf, size_t n) {
#ifdef USE_MPI
    if (c->mpi) allreduce(c, g, buf, n, MPI_DOUBLE, 8, MPI_MAX);
#else
    (void)c; (void)g; (void)buf; (void)n;
#endif
}
void comm_allreduce_sum_i64(Comm* c, CommGroup g, int64_t* buf, size_t n) {
#ifdef USE_MPI
    if (c->mpi) allreduce(c, g, buf, n, MPI_INT64_T, 8, MPI_SUM);
#else
    (void)c; (void)g; (void)buf; (void)n;
#endif
}

// ---- gathers, all-to-all, broadcast

#ifdef USE_MPI
static int to_int(size_t v, const char* what) {
    if (v > INT_MAX) fatal("comm: %s of %zu bytes exceeds MPI's int counts (split the transfer)", what, v);
    return (int)v;
}
#endif

void comm_allgatherv_bytes(Comm* c, CommGroup g, const void* send, void* recv, const size_t* counts, const size_t* displs) {
    int p = comm_group_size(c, g), me = comm_group_rank(c, g);
    if (p == 1 || !c->mpi) {
        if (recv != send && counts[me]) memmove((char*)recv + displs[me], send, counts[me]);
        return;
    }
#ifdef USE_MPI
    int* ic = xmalloc(p * sizeof(int));
    int* id = xmalloc(p * sizeof(int));
    for (int i = 0; i < p; i++) { ic[i] = to_int(counts[i], "allgather"); id[i] = to_int(displs[i], "allgather"); }
    MPI_Allgatherv(send, ic[me], MPI_BYTE, recv, ic, id, MPI_BYTE, group_comm(c, g));
    c->bytes_allgather += (double)counts[me] * (p - 1);
    free(ic);
    free(id);
#endif
}

void comm_alltoall_int(Comm* c, CommGroup g, const int* send, int* recv, int n) {
    int p = comm_group_size(c, g);
    if (p == 1 || !c->mpi) {
        memcpy(recv, send, (size_t)n * sizeof(int));
        return;
    }
#ifdef USE_MPI
    MPI_Alltoall(send, n, MPI_INT, recv, n, MPI_INT, group_comm(c, g));
    c->bytes_alltoall += (double)n * sizeof(int) * (p - 1);
#endif
}

void comm_alltoallv_bytes(Comm* c, CommGroup g, const void* send, const size_t* scounts, const size_t* sdispls,
                          void* recv, const size_t* rcounts, const size_t* rdispls) {
    int p = comm_group_size(c, g);
    if (p == 1 || !c->mpi) {
        if (scounts[0]) memmove((char*)recv + rdispls[0], (const char*)send + sdispls[0], scounts[0]);
        return;
    }
#ifdef USE_MPI
    int* v = xmalloc(4 * p * sizeof(int));
    for (int i = 0; i < p; i++) {
        v[i] = to_int(scounts[i], "all-to-all");
        v[p + i] = to_int(sdispls[i], "all-to-all");
        v[2 * p + i] = to_int(rcounts[i], "all-to-all");
        v[3 * p + i] = to_int(rdispls[i], "all-to-all");
    }
    MPI_Alltoallv(send, v, v + p, MPI_BYTE, recv, v + 2 * p, v + 3 * p, MPI_BYTE, group_comm(c, g));
    int me = comm_group_rank(c, g);
    for (int i = 0; i < p; i++)
        if (i != me) c->bytes_alltoall += (double)scounts[i];
    free(v);
#endif
}

void comm_broadcast_bytes(Comm* c, CommGroup g, void* buf, size_t bytes, int root) {
    if (comm_group_size(c, g) == 1 || !c->mpi) return;
#ifdef USE_MPI
    for (size_t off = 0; off < bytes; off += MPI_CHUNK) {
        int cnt = (int)(bytes - off < MPI_CHUNK ? bytes - off : MPI_CHUNK);
        MPI_Bcast((char*)buf + off, cnt, MPI_BYTE, root, group_comm(c, g));
    }
#else
    (void)buf; (void)root;
#endif
}

void comm_barrier(Comm* c) {
#ifdef USE_MPI
    if (c->mpi) MPI_Barrier(MPI_COMM_WORLD);
#else
    (void)c;
#endif
}

// ---- the model's buffers: host memory -> the comm_* calls above; device memory -> comm_cuda.c

void comm_dev_allreduce_sum_f32(Comm* c, CommGroup g, float* buf, size_t n) {
#ifdef COMM_CUDA
    if (c->device) { commcuda_allreduce_f32(c, g, buf, n, 0); return; }
#endif
    comm_allreduce_sum_f32(c, g, buf, n);
}

void comm_dev_allreduce_max_f32(Comm* c, CommGroup g, float* buf, size_t n) {
#ifdef COMM_CUDA
    if (c->device) { commcuda_allreduce_f32(c, g, buf, n, 1); return; }
#endif
    comm_allreduce_max_f32(c, g, buf, n);
}

void comm_dev_alltoallv_bytes(Comm* c, CommGroup g, const void* send, const size_t* scounts, const size_t* sdispls,
                              void* recv, const size_t* rcounts, const size_t* rdispls) {
#ifdef COMM_CUDA
    if (c->device) { commcuda_alltoallv(c, g, send, scounts, sdispls, recv, rcounts, rdispls); return; }
#endif
    comm_alltoallv_bytes(c, g, send, scounts, sdispls, recv, rcounts, rdispls);
}

int comm_dev_direct(const Comm* c) {
#ifdef COMM_CUDA
    if (c->device) return commcuda_direct(c);
#endif
    (void)c;
    return 0;
}

void comm_dev_broadcast_pieces(Comm* c, CommGroup g, void* buf, int n, const size_t* offs, const size_t* bytes,
                               const int* roots) {
#ifdef COMM_CUDA
    if (c->device) { commcuda_broadcast_pieces(c, g, buf, n, offs, bytes, roots); return; }
#endif
    int p = comm_group_size(c, g), me = comm_group_rank(c, g);
    if (p == 1 || !c->mpi) return;
    double mine = 0;
    for (int i = 0; i < n; i++) {
        if (bytes[i]) comm_broadcast_bytes(c, g, (char*)buf + offs[i], bytes[i], roots[i]);
        if (roots[i] == me) mine += (double)bytes[i];
    }
    c->bytes_allgather += mine * (p - 1);
}
