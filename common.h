// common.h: error handling, allocation, timing and the random number generator shared by every file.
#pragma once
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

// ----------------------------------------------------------------------------
// Failure is loud: one line naming the problem, then a non-zero exit. Under MPI the whole job must come down, so
// fatal() goes through a hook that the launcher can replace (abort the communicator instead of exit).

extern void (*fatal_exit_hook)(int code);
extern char fatal_prefix[32];  // "[rank 3] " in multi-process runs

__attribute__((noreturn, format(printf, 1, 2))) void fatal(const char* fmt, ...);
// The readers of untrusted files (checkpoints, safetensors, config.json) report a problem instead of dying on it:
// writes "WHERE: message" into why and returns 0, so a check can end with `return fail_why(...)`.
__attribute__((format(printf, 4, 5))) int fail_why(char* why, size_t why_n, const char* where, const char* fmt, ...);

static inline void* xmalloc_impl(size_t bytes, const char* file, int line) {
    void* p = malloc(bytes ? bytes : 1);
    if (!p) fatal("out of memory allocating %zu bytes at %s:%d", bytes, file, line);
    return p;
}
static inline void* xcalloc_impl(size_t n, size_t size, const char* file, int line) {
    void* p = calloc(n ? n : 1, size ? size : 1);
    if (!p) fatal("out of memory allocating %zu x %zu bytes at %s:%d", n, size, file, line);
    return p;
}
#define xmalloc(bytes) xmalloc_impl((bytes), __FILE__, __LINE__)
#define xcalloc(n, size) xcalloc_impl((n), (size), __FILE__, __LINE__)

static inline double wall_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// ----------------------------------------------------------------------------
// Random numbers: splitmix64 seeding a xoshiro256** stream. Small, fast, and the whole state is 4 words, so
// checkpoints carry it exactly and a resumed run draws the same numbers.

typedef struct {
    uint64_t s[4];
} Rng;

void rng_seed(Rng* rng, uint64_t seed);
uint64_t rng_u64(Rng* rng);
float rng_uniform(Rng* rng);         // [0, 1)
float rng_normal(Rng* rng);          // N(0, 1), Box-Muller
uint64_t rng_below(Rng* rng, uint64_t n);  // uniform in [0, n), unbiased
