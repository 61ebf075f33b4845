// dev/bench/sgemm_prof.c: an LD_PRELOAD shim that times every cblas_sgemm call of a program and, at exit, prints
// the time, call count and GFLOP/s per call shape (row-major view: transA, transB, M, N, K), heaviest first.
// Wall time per call, so run the program with one thread (calls made concurrently from several threads add up).
//
//   gcc -O2 -shared -fPIC -o /tmp/sgemm_prof.so dev/bench/sgemm_prof.c -ldl
//   SGEMM_PROF_TOP=30 LD_PRELOAD=/tmp/sgemm_prof.so ./train_moe --threads 1 ...
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { ROW_MAJOR = 101, NO_TRANS = 111 };
typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*,
                         int);

typedef struct {
    int ta, tb, M, N, K, used;
    long calls;
    double seconds, flops;
} Entry;

#define SLOTS 4096
static Entry table[SLOTS];
static volatile int lock;
static double total_seconds, total_flops;
static long total_calls;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

void cblas_sgemm(int order, int ta, int tb, int M, int N, int K, float alpha, const float* A, int lda,
                 const float* B, int ldb, float beta, float* C, int ldc) {
    static sgemm_fn real;
    if (!real) real = (sgemm_fn)dlsym(RTLD_NEXT, "cblas_sgemm");
    double t0 = now();
    real(order, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    double dt = now() - t0;
    if (order != ROW_MAJOR) {  // describe it as the row-major call it is equivalent to
        int t = ta; ta = tb; tb = t;
        t = M; M = N; N = t;
    }
    ta = ta != NO_TRANS;
    tb = tb != NO_TRANS;
    unsigned h = (unsigned)(ta * 131 + tb * 17 + M * 2654435761u + N * 40503u + K * 977u) % SLOTS;
    while (__sync_lock_test_and_set(&lock, 1)) {}
    for (int i = 0; i < SLOTS; i++, h = (h + 1) % SLOTS) {
        Entry* e = &table[h];
        if (!e->used) { e->used = 1; e->ta = ta; e->tb = tb; e->M = M; e->N = N; e->K = K; }
        if (e->ta == ta && e->tb == tb && e->M == M && e->N == N && e->K == K) {
            e->calls++;
            e->seconds += dt;
            e->flops += 2.0 * M * N * (double)K;
            break;
        }
    }
    total_seconds += dt;
    total_flops += 2.0 * M * N * (double)K;
    total_calls++;
    __sync_lock_release(&lock);
}

static int by_time(const void* a, const void* b) {
    double x = ((const Entry*)a)->seconds, y = ((const Entry*)b)->seconds;
    return x < y ? 1 : x > y ? -1 : 0;
}

__attribute__((destructor)) static void report(void) {
    if (!total_calls) return;
    int top = getenv("SGEMM_PROF_TOP") ? atoi(getenv("SGEMM_PROF_TOP")) : 25;
    qsort(table, SLOTS, sizeof(Entry), by_time);
    fprintf(stderr, "sgemm_prof: %ld calls, %.3f s, %.2f GFLOP, %.1f GFLOP/s overall\n", total_calls, total_seconds,
            total_flops / 1e9, total_flops / total_seconds / 1e9);
    fprintf(stderr, "sgemm_prof: %-3s %-3s %7s %7s %7s %9s %9s %7s %9s\n", "tA", "tB", "M", "N", "K", "calls", "s",
            "%", "GFLOP/s");
    for (int i = 0; i < SLOTS && i < top && table[i].used; i++) {
        Entry* e = &table[i];
        fprintf(stderr, "sgemm_prof: %-3d %-3d %7d %7d %7d %9ld %9.3f %6.1f%% %9.1f\n", e->ta, e->tb, e->M, e->N,
                e->K, e->calls, e->seconds, 100.0 * e->seconds / total_seconds, e->flops / e->seconds / 1e9);
    }
    // grouped over the row count: the per-expert calls of one kind. In the trainer's calls the rows are M when A
    // is not transposed (activations x weights) and K when it is (weight gradients, dW = dY^T X)
    static Entry g[SLOTS];
    int ng = 0;
    for (int i = 0; i < SLOTS; i++) {
        Entry e = table[i];
        if (!e.used) continue;
        if (e.ta) e.K = -1; else e.M = -1;
        int j = 0;
        while (j < ng && !(g[j].ta == e.ta && g[j].tb == e.tb && g[j].M == e.M && g[j].N == e.N && g[j].K == e.K)) j++;
        if (j == ng) { g[ng++] = e; continue; }
        g[j].calls += e.calls;
        g[j].seconds += e.seconds;
        g[j].flops += e.flops;
    }
    qsort(g, ng, sizeof(Entry), by_time);
    fprintf(stderr, "sgemm_prof: grouped over the row count (-1: any):\n");
    for (int i = 0; i < ng && i < top; i++)
        fprintf(stderr, "sgemm_prof: %-3d %-3d %7d %7d %7d %9ld %9.3f %6.1f%% %9.1f\n", g[i].ta, g[i].tb, g[i].M, g[i].N,
                g[i].K, g[i].calls, g[i].seconds, 100.0 * g[i].seconds / total_seconds, g[i].flops / g[i].seconds / 1e9);
}
