// model/cpu/ops_cpu.c: the CPU backend's op table. Memory is ordinary host memory; the compute copy of the
// weights is the fp32 master itself.
#include "cpu.h"
#include <unistd.h>

static void* cpu_malloc(size_t bytes) {
    // 64-byte aligned for the vector units; zero-filled as the interface promises
    void* p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) fatal("out of memory allocating %zu bytes (cpu backend)", bytes);
    memset(p, 0, bytes);
    return p;
}
static void cpu_free(void* p) { free(p); }
// the gradients (tens of MB at k2-nano) are zeroed every step: in slices, one per thread, for the bandwidth
static void cpu_zero(void* p, size_t bytes) {
    if (bytes < ((size_t)1 << 20)) {
        memset(p, 0, bytes);
        return;
    }
    #pragma omp parallel
    {
#ifdef _OPENMP
        size_t nt = (size_t)omp_get_num_threads(), id = (size_t)omp_get_thread_num();
#else
        size_t nt = 1, id = 0;
#endif
        size_t b0 = bytes * id / nt, b1 = bytes * (id + 1) / nt;
        memset((char*)p + b0, 0, b1 - b0);
    }
}
static void cpu_copy(void* dst, const void* src, size_t bytes) { if (dst != src) memcpy(dst, src, bytes); }
static void cpu_sync(void) {}
static void cpu_mem_info(size_t* free_bytes, size_t* total_bytes) {
    long page = sysconf(_SC_PAGESIZE);
    *free_bytes = (size_t)sysconf(_SC_AVPHYS_PAGES) * page;
    *total_bytes = (size_t)sysconf(_SC_PHYS_PAGES) * page;
}
static void cpu_act_to_host_f32(float* host, const void* src, size_t n) { cpu_copy(host, src, n * sizeof(float)); }
static void cpu_weights_to_compute(void* compute, const float* master, size_t n) { cpu_copy(compute, master, n * 4); }

const Ops ops_cpu = {
    .name = "cpu",
    .act_bytes = sizeof(float),
    .separate_compute_weights = 0,
    .malloc = cpu_malloc,
    .free = cpu_free,
    .zero = cpu_zero,
    .to_host = cpu_copy,
    .to_device = cpu_copy,
    .act_to_host_f32 = cpu_act_to_host_f32,
    .sync = cpu_sync,
    .mem_info = cpu_mem_info,
    .weights_to_compute = cpu_weights_to_compute,
#define OP(ret, name, params) .name = cpu_##name,
#include "../ops_list.h"
#undef OP
};
