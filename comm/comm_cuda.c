// comm/comm_cuda.c: the collectives of comm.h on device buffers of the CUDA backend (comm_dev_*), one GPU per rank.
//   NCCL (USE_NCCL): one communicator per group of more than one rank (world, EP, DP; EP or DP reuses the world's
//   when it is the whole world), bootstrapped by broadcasting an ncclUniqueId over the group's MPI communicator;
//   all-reduce in place, all-to-all-v as grouped ncclSend/ncclRecv (a rank's own rows: a device copy), all-gather
//   of pieces as grouped in-place broadcasts. Everything runs on the stream comm_set_device was given (the CUDA
//   backend's), so it follows the kernels that produced the data, and is synchronised before returning.
//   Staged (a build without NCCL, ranks sharing a GPU, or TRAIN_MOE_NCCL=0): device -> host scratch, the host
//   collective of comm.c, host -> device. Correct, slow; rank 0 says so at start.
// Byte counters: as the host collectives count them (the staged path calls them; the NCCL path adds the same).
// Built only with the CUDA backend (the Makefile's COMM_CUDA); C, on the CUDA runtime's and NCCL's C APIs.
#include "comm_cuda.h"
#include "../common.h"
#include <cuda_runtime_api.h>
#include <unistd.h>
#ifdef USE_NCCL
#include <nccl.h>
#endif

typedef enum { DEV_LOCAL, DEV_NCCL, DEV_STAGED } DevPath;

typedef struct {
    DevPath path;
    cudaStream_t stream;  // the CUDA backend's (comm_set_device's argument)
#ifdef USE_NCCL
    ncclComm_t nccl[3];   // per CommGroup; NULL for a group of one rank
    int owned[3];         // 0 where it is the world's communicator again
#endif
    char* host[2];        // staging scratch, grown on demand
    size_t host_n[2];
} DevState;

static void cuda_ok(cudaError_t e, const char* what) {
    if (e != cudaSuccess) fatal("comm: CUDA error %s (%s) in %s", cudaGetErrorName(e), cudaGetErrorString(e), what);
}
#define CK(call) cuda_ok((call), #call)

#ifdef USE_NCCL
static void nccl_ok(ncclResult_t r, const char* what) {
    if (r != ncclSuccess) fatal("comm: NCCL error %d (%s) in %s: %s", (int)r, ncclGetErrorString(r), what, ncclGetLastError(NULL));
}
#define NK(call) nccl_ok((call), #call)
#endif

static DevState* state(const Comm* c) {
    if (!c->dev) fatal("comm: a device collective before comm_set_device");
    return c->dev;
}

static char* scratch(DevState* s, int i, size_t bytes) {
    if (bytes == 0) bytes = 1;
    if (bytes > s->host_n[i]) {
        free(s->host[i]);
        s->host[i] = xmalloc(bytes);
        s->host_n[i] = bytes;
    }
    return s->host[i];
}

static void to_host(DevState* s, void* host, const void* dev, size_t bytes) {
    if (!bytes) return;
    CK(cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, s->stream));
    CK(cudaStreamSynchronize(s->stream));
}

static void to_device(DevState* s, void* dev, const void* host, size_t bytes) {
    if (!bytes) return;
    CK(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, s->stream));
    CK(cudaStreamSynchronize(s->stream));
}

// ---- set-up

#ifdef USE_NCCL
static ncclComm_t nccl_group_init(Comm* c, CommGroup g) {
    ncclUniqueId id;
    memset(&id, 0, sizeof(id));
    if (comm_group_rank(c, g) == 0) NK(ncclGetUniqueId(&id));
    comm_broadcast_bytes(c, g, &id, sizeof(id), 0);  // rank 0 of the group's MPI communicator is member 0
    ncclComm_t nc = NULL;
    NK(ncclCommInitRank(&nc, comm_group_size(c, g), id, comm_group_rank(c, g)));
    return nc;
}
#endif

typedef struct {
    char host[64];
    char bus[32];  // PCI bus id of the rank's GPU
    int want;      // 0: TRAIN_MOE_NCCL=0 in its environment
} RankGpu;

void commcuda_init(Comm* c, void* stream) {
    DevState* s = xcalloc(1, sizeof(DevState));
    c->dev = s;
    s->stream = (cudaStream_t)stream;
    if (!s->stream) fatal("comm: device buffers, but no CUDA stream (comm_set_device comes after ops_cuda_get)");
    if (!c->mpi || c->world == 1) {
        s->path = DEV_LOCAL;
        return;
    }
    double saved[3] = {c->bytes_allreduce, c->bytes_allgather, c->bytes_alltoall};
    // which GPU every rank has: NCCL needs one per rank (ranks that share one stage instead)
    RankGpu me;
    memset(&me, 0, sizeof(me));
    gethostname(me.host, sizeof(me.host) - 1);
    int dev = 0;
    CK(cudaGetDevice(&dev));
    CK(cudaDeviceGetPCIBusId(me.bus, sizeof(me.bus) - 1, dev));
    const char* env = getenv("TRAIN_MOE_NCCL");
    me.want = !(env && !strcmp(env, "0"));
    int W = c->world;
    RankGpu* all = xcalloc(W, sizeof(RankGpu));
    size_t* counts = xmalloc(W * sizeof(size_t));
    size_t* displs = xmalloc(W * sizeof(size_t));
    for (int i = 0; i < W; i++) { counts[i] = sizeof(RankGpu); displs[i] = (size_t)i * sizeof(RankGpu); }
    comm_allgatherv_bytes(c, GROUP_WORLD, &me, all, counts, displs);
    char why[256] = "";
#ifdef USE_NCCL
    for (int i = 0; i < W && !*why; i++)
        if (!all[i].want) snprintf(why, sizeof(why), "TRAIN_MOE_NCCL=0 on rank %d", i);
    for (int i = 0; i < W && !*why; i++)
        for (int j = i + 1; j < W && !*why; j++)
            if (!strcmp(all[i].host, all[j].host) && !strcmp(all[i].bus, all[j].bus))
                snprintf(why, sizeof(why), "ranks %d and %d share the GPU %s on %s, and NCCL needs one GPU per rank", i,
                         j, all[i].bus, all[i].host);
#else
    snprintf(why, sizeof(why), "this binary was built without NCCL");
#endif
    free(all);
    free(counts);
    free(displs);
    if (*why) {
        s->path = DEV_STAGED;
        if (c->rank == 0)
            printf("comm: GPU buffers are staged through host memory for MPI (%s): correct but slow\n", why);
    } else {
#ifdef USE_NCCL
        s->nccl[GROUP_WORLD] = nccl_group_init(c, GROUP_WORLD);
        s->owned[GROUP_WORLD] = 1;
        // every rank sets up the same groups in the same order (each within its own EP / DP group)
        CommGroup sub[2] = {GROUP_EP, GROUP_DP};
        for (int k = 0; k < 2; k++) {
            int p = comm_group_size(c, sub[k]);
            if (p == W) s->nccl[sub[k]] = s->nccl[GROUP_WORLD];
            else if (p > 1) { s->nccl[sub[k]] = nccl_group_init(c, sub[k]); s->owned[sub[k]] = 1; }
        }
        int v = 0;
        NK(ncclGetVersion(&v));
        s->path = DEV_NCCL;
        if (c->rank == 0)
            printf("comm: NCCL %d.%d.%d between the ranks' GPUs (all-reduce, all-gather, grouped send/recv)\n",
                   v / 10000, v / 100 % 100, v % 100);
#endif
    }
    c->bytes_allreduce = saved[0];
    c->bytes_allgather = saved[1];
    c->bytes_alltoall = saved[2];
}

void commcuda_finalize(Comm* c) {
    DevState* s = c->dev;
    if (!s) return;
#ifdef USE_NCCL
    for (int g = 0; g < 3; g++)
        if (s->owned[g]) NK(ncclCommDestroy(s->nccl[g]));
#endif
    free(s->host[0]);
    free(s->host[1]);
    free(s);
    c->dev = NULL;
}

int commcuda_direct(const Comm* c) { return state(c)->path == DEV_NCCL; }

// ---- collectives

void commcuda_allreduce_f32(Comm* c, CommGroup g, float* buf, size_t n, int max) {
    DevState* s = state(c);
    int p = comm_group_size(c, g);
    if (p == 1 || n == 0) return;
    if (s->path == DEV_STAGED) {
        float* h = (float*)scratch(s, 0, n * sizeof(float));
        to_host(s, h, buf, n * sizeof(float));
        if (max) comm_allreduce_max_f32(c, g, h, n);
        else comm_allreduce_sum_f32(c, g, h, n);
        to_device(s, buf, h, n * sizeof(float));
        return;
    }
#ifdef USE_NCCL
    NK(ncclAllReduce(buf, buf, n, ncclFloat32, max ? ncclMax : ncclSum, s->nccl[g], s->stream));
    CK(cudaStreamSynchronize(s->stream));
    c->bytes_allreduce += 2.0 * (p - 1) / p * n * sizeof(float);
#endif
}

void commcuda_alltoallv(Comm* c, CommGroup g, const void* send, const size_t* scounts, const size_t* sdispls,
                        void* recv, const size_t* rcounts, const size_t* rdispls) {
    DevState* s = state(c);
    int p = comm_group_size(c, g), me = comm_group_rank(c, g);
    const char* sb = send;
    char* rb = recv;
    if (p > 1 && s->path == DEV_STAGED) {
        size_t sn = 0, rn = 0;
        for (int j = 0; j < p; j++) {
            if (scounts[j] && sdispls[j] + scounts[j] > sn) sn = sdispls[j] + scounts[j];
            if (rcounts[j] && rdispls[j] + rcounts[j] > rn) rn = rdispls[j] + rcounts[j];
        }
        char* hs = scratch(s, 0, sn);
        char* hr = scratch(s, 1, rn);
        to_host(s, hs, sb, sn);  // the whole span (reading a gap is harmless); written back only where received
        comm_alltoallv_bytes(c, g, hs, scounts, sdispls, hr, rcounts, rdispls);
        for (int j = 0; j < p; j++)
            if (rcounts[j]) CK(cudaMemcpyAsync(rb + rdispls[j], hr + rdispls[j], rcounts[j], cudaMemcpyHostToDevice, s->stream));
        CK(cudaStreamSynchronize(s->stream));
        return;
    }
#ifdef USE_NCCL
    if (p > 1) {
        ncclComm_t nc = s->nccl[g];
        NK(ncclGroupStart());
        for (int j = 0; j < p; j++) {
            if (j == me) continue;
            if (scounts[j]) NK(ncclSend(sb + sdispls[j], scounts[j], ncclUint8, j, nc, s->stream));
            if (rcounts[j]) NK(ncclRecv(rb + rdispls[j], rcounts[j], ncclUint8, j, nc, s->stream));
        }
        NK(ncclGroupEnd());
        for (int j = 0; j < p; j++)
            if (j != me) c->bytes_alltoall += (double)scounts[j];
    }
#endif
    // this rank's own rows (and the whole of a group of one)
    if (scounts[me]) CK(cudaMemcpyAsync(rb + rdispls[me], sb + sdispls[me], scounts[me], cudaMemcpyDeviceToDevice, s->stream));
    CK(cudaStreamSynchronize(s->stream));
}

void commcuda_broadcast_pieces(Comm* c, CommGroup g, void* buf, int n, const size_t* offs, const size_t* bytes,
                               const int* roots) {
    DevState* s = state(c);
    int p = comm_group_size(c, g), me = comm_group_rank(c, g);
    if (p == 1) return;
    char* b = buf;
    double mine = 0;
    for (int i = 0; i < n; i++)
        if (roots[i] == me) mine += (double)bytes[i];
    if (s->path == DEV_STAGED) {
        for (int i = 0; i < n; i++) {
            if (!bytes[i]) continue;
            char* h = scratch(s, 0, bytes[i]);
            if (roots[i] == me) to_host(s, h, b + offs[i], bytes[i]);
            comm_broadcast_bytes(c, g, h, bytes[i], roots[i]);
            if (roots[i] != me) to_device(s, b + offs[i], h, bytes[i]);
        }
    } else {
#ifdef USE_NCCL
        const int per_group = 256;  // operations fused per ncclGroupStart/End
        for (int i0 = 0; i0 < n; i0 += per_group) {
            NK(ncclGroupStart());
            for (int i = i0; i < n && i < i0 + per_group; i++)
                if (bytes[i]) NK(ncclBroadcast(b + offs[i], b + offs[i], bytes[i], ncclUint8, roots[i], s->nccl[g], s->stream));
            NK(ncclGroupEnd());
        }
        CK(cudaStreamSynchronize(s->stream));
#endif
    }
    c->bytes_allgather += mine * (p - 1);
}
