// tests/test_util.h: a minimal check harness. Each check prints one line (PASS/FAIL/SKIP with the numbers it
// compared); the binary ends with "N passed, N failed, N skipped" and exits non-zero on any failure.
#pragma once
#include <math.h>
#include <stdarg.h>
#include <stdio.h>

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
