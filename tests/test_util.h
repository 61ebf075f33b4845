// tests/test_util.h: a minimal check harness. Each check prints one line (PASS/FAIL/SKIP with the numbers it
// compared); the binary ends with "N passed, N failed, N skipped" and exits non-zero on any failure. Also the tests'
// one random stream: its seed (an environment variable, else the clock) and its non-zero normal draws.
#pragma once
#include "../common.h"
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#pragma GCC diagnostic ignored "-Wunused-function"

static int tests_passed = 0, tests_failed = 0, tests_skipped = 0;

__attribute__((format(printf, 2, 3))) static int check(int ok, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", ok ? "PASS" : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    if (ok) tests_passed++; else tests_failed++;
    return ok;
}

__attribute__((format(printf, 1, 2))) static void skip(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("SKIP ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    tests_skipped++;
}

static int tests_summary(void) {
    printf("%d passed, %d failed, %d skipped\n", tests_passed, tests_failed, tests_skipped);
    return tests_failed ? 1 : 0;
}

// Largest |a - b| / (atol + rtol * |b|) over n values; <= 1 means every element is within tolerance.
static double worst_ratio(const float* a, const double* b, size_t n, double atol, double rtol, size_t* where) {
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        double r = fabs((double)a[i] - b[i]) / (atol + rtol * fabs(b[i]));
        if (!(r <= worst)) { worst = r; if (where) *where = i; }  // NaN counts as worst
    }
    return worst;
}

// ||a - b|| / ||b||
static double rel_l2(const float* a, const double* b, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

// ----------------------------------------------------------------------------
// the random stream of a test binary (seeded once in main by test_seed)

__attribute__((unused)) static Rng rng;

// The seed: the environment variable env_name (a decimal number) when set, else from the clock and the process id
// (under 10^12, so that it is short to print and retype). The caller prints it with the variable's name.
static uint64_t test_seed(const char* env_name) {
    const char* env = getenv(env_name);
    if (env && *env) return strtoull(env, NULL, 10);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (((uint64_t)ts.tv_sec * 1000003u) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 20)) % 1000000000000ull;
}

// N(0,1), never (near) zero: no test input is all-zero or holds exact zeros by chance
static float rn(void) {
    float v;
    do { v = rng_normal(&rng); } while (fabsf(v) < 1e-3f);
    return v;
}

static float* fdup(const float* a, size_t n) {
    float* b = xmalloc(n * sizeof(float) + 4);
    memcpy(b, a, n * sizeof(float));
    return b;
}
