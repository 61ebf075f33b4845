// comm/comm_cuda.h: inside comm only: the device side of comm.c (comm_cuda.c), built with the CUDA backend
// (COMM_CUDA). comm.c calls these when comm_set_device said the buffers are device memory.
#pragma once
#include "comm.h"

// after the CUDA backend set this rank's GPU: NCCL communicators (USE_NCCL, one GPU per rank) or host staging;
// rank 0 prints which. stream (a cudaStream_t): where the copies and NCCL calls go, the one the buffers' producers
// run on
void commcuda_init(Comm* c, void* stream);
void commcuda_finalize(Comm* c);
int commcuda_direct(const Comm* c);        // 1 on NCCL
void commcuda_allreduce_f32(Comm* c, CommGroup g, float* buf, size_t n, int max);
void commcuda_alltoallv(Comm* c, CommGroup g, const void* send, const size_t* scounts, const size_t* sdispls,
                        void* recv, const size_t* rcounts, const size_t* rdispls);
void commcuda_broadcast_pieces(Comm* c, CommGroup g, void* buf, int n, const size_t* offs, const size_t* bytes,
                               const int* roots);
