// CPU emulation of the CUDA runtime subset used by model/cuda/*.cu (verification only)
#pragma once
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <functional>
#include <vector>
#include <memory>
#include <utility>
#include <type_traits>

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
struct alignas(16) uint4 { unsigned x, y, z, w; };  // 16-byte vector loads/stores (attention.cu's tile loader)
static inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { uint4 v; v.x = x; v.y = y; v.z = z; v.w = w; return v; }

typedef int cudaError_t;
enum { cudaSuccess = 0 };
typedef void* cudaStream_t;
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice, cudaMemcpyHostToHost };
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

static inline const char* cudaGetErrorName(cudaError_t) { return "emu"; }
static inline const char* cudaGetErrorString(cudaError_t) { return "emu"; }
static inline cudaError_t cudaGetLastError(void) { return cudaSuccess; }
// device memory 256-byte aligned, as cudaMalloc's is (wmma's loads and stores check 32-byte alignment), zeroed by
// calloc so that untouched pages of a large allocation stay unmapped (a count-only k2-small step allocates tens of
// GB it never reads); the block's own pointer sits just below the aligned one, for cudaFree
static inline void* emu_device_alloc(size_t n) {
    unsigned char* raw = (unsigned char*)calloc(1, n + 64 + 256 + sizeof(void*));
    if (!raw) return NULL;
    unsigned char* p = (unsigned char*)(((uintptr_t)raw + sizeof(void*) + 255) & ~(uintptr_t)255);
    memcpy(p - sizeof(void*), &raw, sizeof(void*));
    return p;
}
static inline void emu_device_free(void* p) {
    if (!p) return;
    void* raw;
    memcpy(&raw, (unsigned char*)p - sizeof(void*), sizeof(void*));
    free(raw);
}
static inline cudaError_t cudaMalloc(void** p, size_t n) { *p = emu_device_alloc(n); return cudaSuccess; }
template <class T> static inline cudaError_t cudaMalloc(T** p, size_t n) { *p = (T*)emu_device_alloc(n); return cudaSuccess; }
static inline cudaError_t cudaFree(void* p) { emu_device_free(p); return cudaSuccess; }
static inline cudaError_t cudaMallocHost(void** p, size_t n) { *p = calloc(1, n + 64); return cudaSuccess; }
static inline cudaError_t cudaFreeHost(void* p) { free(p); return cudaSuccess; }
// copies, memsets and synchronisations are counted (emu_cost.cpp); under EMU_COUNT_ONLY large ones move no data
extern "C" void emu_cost_memory(int kind, double bytes);
extern "C" int emu_cost_skip_data(double bytes);
static inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind k, cudaStream_t) {
    emu_cost_memory(k, (double)n); if (!emu_cost_skip_data((double)n)) memmove(d, s, n); return cudaSuccess; }
static inline cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind k) {
    emu_cost_memory(k, (double)n); if (!emu_cost_skip_data((double)n)) memmove(d, s, n); return cudaSuccess; }
static inline cudaError_t cudaMemsetAsync(void* d, int v, size_t n, cudaStream_t) {
    emu_cost_memory(-1, (double)n); if (!emu_cost_skip_data((double)n)) memset(d, v, n); return cudaSuccess; }
static inline cudaError_t cudaStreamSynchronize(cudaStream_t) { emu_cost_memory(0, -1); return cudaSuccess; }
static inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
// device selection (ops_cuda.cu): one emulated device of compute capability 9.0 with 4 multiprocessors (grid_for
// caps grids at 32 blocks per multiprocessor: few SMs keep the emulated grids small; grid-stride loops still
// cover every element)
struct cudaDeviceProp { char name[256]; int major, minor, multiProcessorCount; size_t totalGlobalMem; };
static inline cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
static inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
    memset(p, 0, sizeof(*p)); strcpy(p->name, "CPU emulator"); p->major = 9; p->minor = 0;
    p->multiProcessorCount = 4; p->totalGlobalMem = (size_t)8 << 30; return cudaSuccess; }
static inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
static inline cudaError_t cudaDeviceGetPCIBusId(char* s, int n, int) { snprintf(s, n, "0000:00:00.0"); return cudaSuccess; }
static inline cudaError_t cudaStreamCreate(cudaStream_t* s) { *s = (cudaStream_t)0x1; return cudaSuccess; }
static inline cudaError_t cudaMemGetInfo(size_t* f, size_t* t) { *f = (size_t)6 << 30; *t = (size_t)8 << 30; return cudaSuccess; }
static inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int) { *v = 232448; return cudaSuccess; }
template <class F> static inline cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int v) {
    extern int emu_max_dyn_smem; if (v > emu_max_dyn_smem) emu_max_dyn_smem = v; return cudaSuccess; }

// ---- execution model. Blocks run one after another; the threads of a block are fibers (one stack each) on one
// host thread, switched cooperatively by emu_runtime.cpp's scheduler. A thread runs until it reaches a barrier
// (__syncthreads, __syncwarp, or the two exchanges inside a shuffle / __match_any_sync) or returns; a block
// barrier opens when every live thread of the block waits at it, a warp barrier when every live lane of the warp
// does. Between barriers the threads run in ascending order in even phases and descending order in odd ones, so
// code that reads another thread's write without a barrier between them sees stale data (shared memory starts as
// 0xA5 garbage) in one of the two orders and fails its test. A shuffle reached by only part of a warp while the
// other lanes wait at a block barrier (divergent warp collectives) aborts with a message.
extern dim3 threadIdx, blockIdx, blockDim, gridDim;
extern unsigned char* emu_smem;
extern int emu_max_dyn_smem;
extern long emu_launches;

void emu_sync_block(void);  // __syncthreads
void emu_sync_warp(void);   // __syncwarp and the shuffles' exchanges
uint64_t* emu_warp_slots(void);  // 32 exchange slots of the calling thread's warp
void emu_run_grid(dim3 grid, dim3 block, size_t smem, const std::function<void()>& body);

static inline void __syncthreads(void) { emu_sync_block(); }
static inline void __syncwarp(unsigned = 0xffffffffu) { emu_sync_warp(); }
template <class T> static inline T __shfl_xor_sync(unsigned, T v, int off) {
    uint64_t* slot = emu_warp_slots();
    int lane = threadIdx.x & 31;
    memcpy(&slot[lane], &v, sizeof(T));
    emu_sync_warp();
    T r;
    memcpy(&r, &slot[lane ^ off], sizeof(T));
    emu_sync_warp();  // every lane has read before any lane's next write
    return r;
}
static inline unsigned __match_any_sync(unsigned, int v) {
    uint64_t* slot = emu_warp_slots();
    int lane = threadIdx.x & 31;
    slot[lane] = (uint64_t)(uint32_t)v;
    emu_sync_warp();
    unsigned m = 0;
    for (int i = 0; i < 32; i++) if ((uint32_t)slot[i] == (uint32_t)v) m |= 1u << i;
    emu_sync_warp();
    return m;
}
static inline int __popc(unsigned v) { return __builtin_popcount(v); }
static inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
static inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
// one host thread runs everything: plain read-modify-writes are atomic here
static inline int atomicAdd(int* p, int v) { int old = *p; *p = old + v; return old; }
static inline int atomicMax(int* p, int v) { int old = *p; if (v > old) *p = v; return old; }
static inline unsigned atomicMin(unsigned* p, unsigned v) { unsigned old = *p; if (v < old) *p = v; return old; }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline unsigned char* emu_dyn_smem(void) { return emu_smem; }

// ---- cost counting (emu_cost.cpp): each launch's arguments, as numbers, go to its kernel's FLOP/byte formula.
// Scalars become numbers, pointers stay pointers (device memory is host memory here: a formula may read a count
// the kernel will read, such as the expert offsets), and a struct argument with attention-shape members (B, T, H,
// dqk, dv, ...) is read by those names.
struct EmuArg {
    double v;
    const void* p;
    int shape, B, T, H, dqk, dv, nope, rope;
};
template <class T> static inline EmuArg emu_arg(const T& x) {
    EmuArg a;
    memset(&a, 0, sizeof(a));
    if constexpr (std::is_arithmetic_v<T> || std::is_enum_v<T>) a.v = (double)x;
    else if constexpr (std::is_pointer_v<T>) a.p = (const void*)x;
    else if constexpr (requires { x.B; x.T; x.H; x.dqk; x.dv; x.nope; x.rope; }) {
        a.shape = 1; a.B = x.B; a.T = x.T; a.H = x.H; a.dqk = x.dqk; a.dv = x.dv; a.nope = x.nope; a.rope = x.rope;
    }
    return a;
}
// counts the launch; returns 0 when EMU_COUNT_ONLY=1 skips the kernel's body (see emu_cost.cpp)
int emu_cost_launch(const char* name, dim3 g, dim3 b, size_t smem, const EmuArg* args, int nargs);

template <class F>
struct EmuLauncher {
    F f; const char* name; dim3 g, b; size_t smem;
    template <class... A> void operator()(A... args) {
        emu_launches++;
        unsigned nt = b.x * b.y * b.z;
        if (nt % 32 || nt > 1024) { fprintf(stderr, "emu: block of %u threads\n", nt); abort(); }
        if (b.y != 1 || b.z != 1) { fprintf(stderr, "emu: only 1-D blocks are emulated\n"); abort(); }
        if (smem > 48 * 1024 && (int)smem > emu_max_dyn_smem) { fprintf(stderr, "emu: %zu bytes of dynamic smem without the attribute\n", smem); abort(); }
        if (smem > 232448) { fprintf(stderr, "emu: %zu bytes of dynamic smem\n", smem); abort(); }
        if (g.x == 0 || g.y == 0 || g.z == 0 || g.y > 65535 || g.z > 65535) { fprintf(stderr, "emu: bad grid\n"); abort(); }
        const EmuArg av[] = {emu_arg(args)..., EmuArg{}};
        if (!emu_cost_launch(name, g, b, smem, av, (int)sizeof...(A))) return;
        emu_run_grid(g, b, smem, [&]() { f(args...); });
    }
};
template <class F> EmuLauncher<F> emu_launch(F f, const char* name, dim3 g, dim3 b, size_t smem = 0, cudaStream_t = 0) {
    return EmuLauncher<F>{f, name, g, b, smem};
}
