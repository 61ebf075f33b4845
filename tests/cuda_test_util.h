// tests/cuda_test_util.h: what the CUDA tests share: the two backends (gpu, cpu) and the draw, host bf16 rounding,
// random inputs, device upload / download / poisoning (so an unwritten output fails), element-wise and L2
// comparisons with the printed worst case, bit-identity checks, and the common main (SKIP without a GPU, seeded
// groups). Included by tests/test_cuda.c, test_cuda_attn_moe.c and test_cuda_model.c.
#pragma once
#include "../model/ops.h"
#include "../common.h"
#include "test_util.h"
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#pragma GCC diagnostic ignored "-Wunused-function"

static const Ops* gpu = NULL;
static const Ops* cpu = &ops_cpu;

#define BF_RTOL 1e-2
#define BF_AFRAC 1e-3
#define EW_RTOL 1e-5
#define EW_AFRAC 1e-6
#define SUM_RTOL 1e-5
#define SUM_AFRAC 2e-5

// ----------------------------------------------------------------------------
// host bf16 (round to nearest even, as __float2bfloat16_rn)

static uint16_t h_f2bf(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static float h_bf2f(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static float round_bf(float f) { return h_bf2f(h_f2bf(f)); }

// ----------------------------------------------------------------------------
// random inputs (never zero; rn() and the stream rng are test_util.h's)

static float* randv(size_t n, float scale) {  // exactly representable in bf16
    float* a = xmalloc(n * sizeof(float) + 4);
    for (size_t i = 0; i < n; i++) a[i] = round_bf(scale * rn());
    return a;
}
static float* randf(size_t n, float scale) {
    float* a = xmalloc(n * sizeof(float) + 4);
    for (size_t i = 0; i < n; i++) a[i] = scale * rn();
    return a;
}


// ----------------------------------------------------------------------------
// device buffers

static void* up_bf16(const float* h, size_t n) {
    uint16_t* t = xmalloc(n * sizeof(uint16_t) + 2);
    for (size_t i = 0; i < n; i++) t[i] = h_f2bf(h[i]);
    void* d = gpu->malloc(n * sizeof(uint16_t));
    gpu->to_device(d, t, n * sizeof(uint16_t));
    free(t);
    return d;
}
static float* up_f32(const float* h, size_t n) {
    float* d = gpu->malloc(n * sizeof(float) + 4);
    gpu->to_device(d, h, n * sizeof(float));
    return d;
}
static int* up_i32(const int* h, size_t n) {
    int* d = gpu->malloc(n * sizeof(int) + 4);
    gpu->to_device(d, h, n * sizeof(int));
    return d;
}
static void set_bf16(void* d, const float* h, size_t n) {
    uint16_t* t = xmalloc(n * sizeof(uint16_t) + 2);
    for (size_t i = 0; i < n; i++) t[i] = h_f2bf(h[i]);
    gpu->to_device(d, t, n * sizeof(uint16_t));
    free(t);
}
static void poison_bf16(void* d, size_t n) {
    uint16_t* t = xmalloc(n * sizeof(uint16_t) + 2);
    for (size_t i = 0; i < n; i++) t[i] = 0xFFFF;  // a NaN
    gpu->to_device(d, t, n * sizeof(uint16_t));
    free(t);
}
static void poison_f32(float* d, size_t n) {
    float* t = xmalloc(n * sizeof(float) + 4);
    for (size_t i = 0; i < n; i++) t[i] = NAN;
    gpu->to_device(d, t, n * sizeof(float));
    free(t);
}
static void poison_i32(int* d, size_t n) {
    int* t = xmalloc(n * sizeof(int) + 4);
    for (size_t i = 0; i < n; i++) t[i] = -7;
    gpu->to_device(d, t, n * sizeof(int));
    free(t);
}
static float* down_bf16(const void* d, size_t n) {
    uint16_t* t = xmalloc(n * sizeof(uint16_t) + 2);
    gpu->to_host(t, d, n * sizeof(uint16_t));
    float* h = xmalloc(n * sizeof(float) + 4);
    for (size_t i = 0; i < n; i++) h[i] = h_bf2f(t[i]);
    free(t);
    return h;
}
static float* down_f32(const float* d, size_t n) {
    float* h = xmalloc(n * sizeof(float) + 4);
    gpu->to_host(h, d, n * sizeof(float));
    return h;
}
static int* down_i32(const int* d, size_t n) {
    int* h = xmalloc(n * sizeof(int) + 4);
    gpu->to_host(h, d, n * sizeof(int));
    return h;
}

// ----------------------------------------------------------------------------
// comparisons

static double maxabs(const float* a, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i]));
    return m;
}
static int cmpv(const char* what, const float* got, const float* ref, size_t n, double rtol, double afrac) {
    double atol = afrac * maxabs(ref, n) + 1e-30, worst = 0;
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        double r = fabs((double)got[i] - (double)ref[i]) / (atol + rtol * fabs((double)ref[i]));
        if (!(r <= worst)) { worst = r; w = i; }  // NaN counts as worst
    }
    return check(worst <= 1.0,
                 "%s: %zu elems, worst |gpu-cpu|/(%.0e|cpu| + %.0e max|cpu|) = %.3g (tol 1), at [%zu] %.8g vs %.8g", what,
                 n, rtol, afrac, worst, w, n ? (double)got[w] : 0.0, n ? (double)ref[w] : 0.0);
}
static double rel_l2f(const float* a, const float* b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}
static int cmp_l2(const char* what, const float* got, const float* ref, size_t n, double tol) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += !isfinite(got[i]);
    double r = rel_l2f(got, ref, n);
    return check(bad == 0 && r <= tol, "%s: %zu elems, relative L2 %.3g (tol %.0e), %zu non-finite", what, n, r, tol,
                 bad);
}
static int same_bits(const char* what, const void* a, const void* b, size_t bytes) {
    const unsigned char *x = a, *y = b;
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < bytes; i++)
        if (x[i] != y[i]) { if (!bad) first = i; bad++; }
    if (!bad) return check(1, "%s: %zu bytes bit-identical", what, bytes);
    return check(0, "%s: %zu of %zu bytes differ, first at byte %zu", what, bad, bytes, first);
}
static int same_ints(const char* what, const int* got, const int* ref, size_t n) {
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (got[i] != ref[i]) { if (!bad) first = i; bad++; }
    if (!bad) return check(1, "%s: %zu ints identical", what, n);
    return check(0, "%s: %zu of %zu differ, first [%zu] %d vs %d", what, bad, n, first, got[first], ref[first]);
}

// ----------------------------------------------------------------------------
// the tests' main: SKIP every group (with the reason) when no GPU is usable, else seed the draw (printed;
// TEST_CUDA_SEED=<n> repeats it) and run the groups

typedef struct {
    const char* name;
    void (*fn)(void);
} CudaTestGroup;

static const char* cuda_skip_reason(void) {
    const char* why = ops_cuda_unavailable_reason();
    return ops_cuda_built() ? (why ? why : "no usable GPU") : "CUDA backend not built (no nvcc, or make CUDA=0)";
}

static int cuda_test_main(const char* prog, const CudaTestGroup* groups, int ngroups) {
    double t0 = wall_seconds();
    gpu = ops_cuda_get();
    if (!gpu) {
        for (int i = 0; i < ngroups; i++) skip("cuda %s: %s", groups[i].name, cuda_skip_reason());
        return tests_summary();
    }
    uint64_t seed = test_seed("TEST_CUDA_SEED");
    rng_seed(&rng, seed);
    printf("%s: seed %llu (rerun with TEST_CUDA_SEED=%llu)\n", prog, (unsigned long long)seed, (unsigned long long)seed);
    for (int i = 0; i < ngroups; i++) {
        printf("---- %s\n", groups[i].name);
        groups[i].fn();
    }
    gpu->sync();
    printf("%s took %.1f s\n", prog, wall_seconds() - t0);
    return tests_summary();
}
