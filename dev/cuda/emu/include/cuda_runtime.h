// CPU emulation of the CUDA runtime subset used by model/cuda/{attention,moe}.cu (verification only)
#pragma once
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <barrier>
#include <thread>
#include <vector>
#include <memory>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct float2 { float x, y; };
struct int4 { int x, y, z, w; };

typedef int cudaError_t;
enum { cudaSuccess = 0 };
typedef void* cudaStream_t;
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice, cudaMemcpyHostToHost };
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

static inline const char* cudaGetErrorName(cudaError_t) { return "emu"; }
static inline const char* cudaGetErrorString(cudaError_t) { return "emu"; }
static inline cudaError_t cudaGetLastError(void) { return cudaSuccess; }
static inline cudaError_t cudaMalloc(void** p, size_t n) { *p = calloc(1, n + 64); return cudaSuccess; }
template <class T> static inline cudaError_t cudaMalloc(T** p, size_t n) { *p = (T*)calloc(1, n + 64); return cudaSuccess; }
static inline cudaError_t cudaFree(void* p) { free(p); return cudaSuccess; }
static inline cudaError_t cudaMallocHost(void** p, size_t n) { *p = calloc(1, n + 64); return cudaSuccess; }
static inline cudaError_t cudaFreeHost(void* p) { free(p); return cudaSuccess; }
static inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t) { memmove(d, s, n); return cudaSuccess; }
static inline cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind) { memmove(d, s, n); return cudaSuccess; }
static inline cudaError_t cudaMemsetAsync(void* d, int v, size_t n, cudaStream_t) { memset(d, v, n); return cudaSuccess; }
static inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
static inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
static inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int) { *v = 232448; return cudaSuccess; }
template <class F> static inline cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int v) {
    extern int emu_max_dyn_smem; if (v > emu_max_dyn_smem) emu_max_dyn_smem = v; return cudaSuccess; }

// ---- execution model: one std::thread per CUDA thread of a block; blocks run one after another
struct EmuWarp {
    std::barrier<> bar{32};
    uint64_t slot[32];
};
extern thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
extern thread_local std::barrier<>* emu_block_bar;
extern thread_local EmuWarp* emu_warp;
extern thread_local unsigned char* emu_smem;
extern int emu_max_dyn_smem;
extern long emu_launches;

static inline void __syncthreads(void) { emu_block_bar->arrive_and_wait(); }
static inline void __syncwarp(unsigned = 0xffffffffu) { emu_warp->bar.arrive_and_wait(); }
template <class T> static inline T __shfl_xor_sync(unsigned, T v, int off) {
    EmuWarp* w = emu_warp;
    int lane = threadIdx.x & 31;
    memcpy(&w->slot[lane], &v, sizeof(T));
    w->bar.arrive_and_wait();
    T r;
    memcpy(&r, &w->slot[lane ^ off], sizeof(T));
    w->bar.arrive_and_wait();
    return r;
}
static inline unsigned __match_any_sync(unsigned, int v) {
    EmuWarp* w = emu_warp;
    int lane = threadIdx.x & 31;
    w->slot[lane] = (uint64_t)(uint32_t)v;
    w->bar.arrive_and_wait();
    unsigned m = 0;
    for (int i = 0; i < 32; i++) if ((uint32_t)w->slot[i] == (uint32_t)v) m |= 1u << i;
    w->bar.arrive_and_wait();
    return m;
}
static inline int __popc(unsigned v) { return __builtin_popcount(v); }
static inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
static inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
static inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline int atomicMax(int* p, int v) {
    int old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (old < v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
    return old;
}
static inline unsigned atomicMin(unsigned* p, unsigned v) {
    unsigned old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (old > v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
    return old;
}
static inline int min(int a, int b) { return a < b ? a : b; }
static inline unsigned char* emu_dyn_smem(void) { return emu_smem; }

template <class F>
struct EmuLauncher {
    F f; dim3 g, b; size_t smem;
    template <class... A> void operator()(A... args) {
        emu_launches++;
        unsigned nt = b.x * b.y * b.z;
        if (nt % 32) { fprintf(stderr, "emu: block of %u threads\n", nt); abort(); }
        if (smem > 48 * 1024 && (int)smem > emu_max_dyn_smem) { fprintf(stderr, "emu: %zu bytes of dynamic smem without the attribute\n", smem); abort(); }
        if (smem > 232448) { fprintf(stderr, "emu: %zu bytes of dynamic smem\n", smem); abort(); }
        if (g.x == 0 || g.y == 0 || g.z == 0 || g.y > 65535 || g.z > 65535) { fprintf(stderr, "emu: bad grid\n"); abort(); }
        std::vector<unsigned char> buf(smem + 16, 0xA5);  // garbage, like real shared memory
        unsigned char* sm = (unsigned char*)(((uintptr_t)buf.data() + 15) & ~(uintptr_t)15);
        std::barrier<> bbar(nt);
        std::vector<std::unique_ptr<EmuWarp>> warps;
        for (unsigned w = 0; w < nt / 32; w++) warps.emplace_back(new EmuWarp());
        std::vector<std::thread> th;
        for (unsigned t = 0; t < nt; t++)
            th.emplace_back([&, t]() {
                threadIdx = dim3(t, 0, 0); blockDim = b; gridDim = g;
                emu_block_bar = &bbar; emu_warp = warps[t / 32].get(); emu_smem = sm;
                for (unsigned z = 0; z < g.z; z++)
                    for (unsigned y = 0; y < g.y; y++)
                        for (unsigned x = 0; x < g.x; x++) {
                            blockIdx = dim3(x, y, z);
                            f(args...);
                            bbar.arrive_and_wait();
                        }
            });
        for (auto& t : th) t.join();
    }
};
template <class F> EmuLauncher<F> emu_launch(F f, dim3 g, dim3 b, size_t smem = 0, cudaStream_t = 0) {
    return EmuLauncher<F>{f, g, b, smem};
}
