// common.c: fatal errors and the random number generator.
#include "common.h"
#include <math.h>
#include <stdarg.h>

static void default_exit(int code) { exit(code); }
void (*fatal_exit_hook)(int code) = default_exit;
char fatal_prefix[32] = "";

void fatal(const char* fmt, ...) {
    // the whole line in one write: under mpirun, other ranks' lines and the launcher's abort notice must not
    // land in the middle of it
    char line[4096];
    int n = snprintf(line, sizeof(line), "error: %s", fatal_prefix);
    va_list ap;
    va_start(ap, fmt);
    if (n >= 0 && n < (int)sizeof(line)) vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    va_end(ap);
    size_t len = strlen(line);
    if (len > sizeof(line) - 2) len = sizeof(line) - 2;
    line[len] = '\n';
    fwrite(line, 1, len + 1, stderr);
    fflush(stderr);
    fflush(stdout);
    fatal_exit_hook(1);
    exit(1);  // the hook should not return; make sure we never do
}

int fail_why(char* why, size_t why_n, const char* where, const char* fmt, ...) {
    int k = snprintf(why, why_n, "%s: ", where);
    if (k < 0 || (size_t)k >= why_n) return 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why + k, why_n - (size_t)k, fmt, ap);
    va_end(ap);
    return 0;
}

static uint64_t splitmix64(uint64_t* x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void rng_seed(Rng* rng, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) rng->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t rng_u64(Rng* rng) {
    uint64_t* s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

float rng_uniform(Rng* rng) { return (float)(rng_u64(rng) >> 40) * (1.0f / 16777216.0f); }

float rng_normal(Rng* rng) {
    // Box-Muller on doubles; u1 in (0, 1] so the log is finite
    double u1 = ((double)(rng_u64(rng) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = (double)(rng_u64(rng) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

uint64_t rng_below(Rng* rng, uint64_t n) {
    // rejection sampling removes the modulo bias
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t r;
    do { r = rng_u64(rng); } while (r >= limit);
    return r % n;
}
