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
static void cpu_zero(void* p, size_t bytes) { memset(p, 0, bytes); }
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
    .embedding_forward = cpu_embedding_forward,
    .embedding_backward = cpu_embedding_backward,
    .rmsnorm_forward = cpu_rmsnorm_forward,
    .rmsnorm_backward = cpu_rmsnorm_backward,
    .matmul_forward = cpu_matmul_forward,
    .matmul_backward = cpu_matmul_backward,
    .add = cpu_add,
    .add_inplace = cpu_add_inplace,
    .swiglu_forward = cpu_swiglu_forward,
    .swiglu_backward = cpu_swiglu_backward,
    .rope = cpu_rope,
    .attention_forward = cpu_attention_forward,
    .attention_backward = cpu_attention_backward,
    .moe_router_forward = cpu_moe_router_forward,
    .moe_balance_loss = cpu_moe_balance_loss,
    .moe_router_backward = cpu_moe_router_backward,
    .moe_dispatch = cpu_moe_dispatch,
    .moe_gather = cpu_moe_gather,
    .moe_gather_backward = cpu_moe_gather_backward,
    .moe_experts_forward = cpu_moe_experts_forward,
    .moe_experts_backward = cpu_moe_experts_backward,
    .moe_combine_forward = cpu_moe_combine_forward,
    .moe_combine_backward = cpu_moe_combine_backward,
    .crossentropy_forward = cpu_crossentropy_forward,
    .crossentropy_backward = cpu_crossentropy_backward,
    .sum_squares = cpu_sum_squares,
    .adamw_update = cpu_adamw_update,
    .muon_momentum = cpu_muon_momentum,
    .newton_schulz = cpu_newton_schulz,
    .muon_update = cpu_muon_update,
    .scale_rows = cpu_scale_rows,
};
