// tests/test_vec.c: the CPU backend's vector math (model/cpu/vec.h).
//
// exp: every 61st float of the clamped range [-87, 88] (~36M inputs, both signs, every binade), the scalar
// exp_fast and the 8-lane exp8 against the correctly rounded exp (double exp rounded to float) and against libm's
// expf, in ulps (the distance of the float bit patterns): at most 3 ulp, and 1 ulp for all but a small fraction;
// the two paths must give the same bits, and the same as the trainer's earlier plain-C exp (where the compiler
// contracts it to FMAs). Below and above the clamp, the clamped values. The row kernels (max, exp-sum, dot) against a plain double loop, at lengths that
// leave every tail from 0 to 7, and bit-equal to the scalar 8-lane order they document.
#include "../model/cpu/vec.h"
#include "test_util.h"

static uint32_t fbits(float x) { uint32_t b; memcpy(&b, &x, 4); return b; }
static float bitsf(uint32_t b) { float x; memcpy(&x, &b, 4); return x; }
static long ulps(float a, float b) {  // both positive and finite
    long d = (long)fbits(a) - (long)fbits(b);
    return d < 0 ? -d : d;
}

// the trainer's exp before vec.h, as it was written (the compiler contracts its products and sums into FMAs)
static float exp_plain(float x) {
    x = fminf(fmaxf(x, -87.0f), 88.0f);
    float k = floorf(x * 1.44269504f + 0.5f);
    float r = x - k * 0.693145752f - k * 1.42860677e-06f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
    int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}

// every `stride`-th float from 0 up to limit, with the sign given, through fn(x)
static void exp_range(int sign, float limit, uint32_t stride, long* max_ref, long* max_expf, long* mismatches,
                      long* plain_diff, long* over1, double* worst_x, long* count) {
    uint32_t top = fbits(limit);
    float xs[16];
    int nx = 0;
    for (uint64_t b = 0; b <= top; b += stride) {
        float x = bitsf((uint32_t)b) * (float)sign;
        xs[nx++] = x;
        if (nx < 16 && b + stride <= top) continue;
        float vec[16], vec16[16];
        float in[16] = {0};
        memcpy(in, xs, nx * sizeof(float));
#if VEC_AVX2
        _mm256_storeu_ps(vec, exp8(_mm256_loadu_ps(in)));
        _mm256_storeu_ps(vec + 8, exp8(_mm256_loadu_ps(in + 8)));
#endif
#if VEC_AVX512
        _mm512_storeu_ps(vec16, exp16(_mm512_loadu_ps(in)));
#else
        memcpy(vec16, vec, sizeof(vec));
#endif
        for (int i = 0; i < nx; i++) {
            float s = exp_fast(xs[i]);
            float ref = (float)exp((double)xs[i]);
            long e = ulps(s, ref), e2 = ulps(s, expf(xs[i]));
            if (e > *max_ref) { *max_ref = e; *worst_x = xs[i]; }
            if (e > 1) (*over1)++;
            if (fbits(exp_plain(xs[i])) != fbits(s)) (*plain_diff)++;
            if (e2 > *max_expf) *max_expf = e2;
#if VEC_AVX2
            if (fbits(vec[i]) != fbits(s) || fbits(vec16[i]) != fbits(s)) (*mismatches)++;
#endif
            (*count)++;
        }
        nx = 0;
    }
}

static void test_exp(void) {
    long max_ref = 0, max_expf = 0, mismatches = 0, plain_diff = 0, over1 = 0, count = 0;
    double worst = 0;
    exp_range(-1, 87.0f, 61, &max_ref, &max_expf, &mismatches, &plain_diff, &over1, &worst, &count);
    exp_range(1, 88.0f, 61, &max_ref, &max_expf, &mismatches, &plain_diff, &over1, &worst, &count);
    check(max_ref <= 3 && over1 < count / 20, "exp_fast over [-87, 88], %ld inputs: max %ld ulp from the correctly "
          "rounded exp (at x = %.9g; tol 3), %.2f%% of inputs more than 1 ulp off (tol 5%%)", count, max_ref, worst,
          100.0 * over1 / count);
    check(max_expf <= 3, "exp_fast within 3 ulp of libm expf over [-87, 88] (max %ld)", max_expf);
#ifdef __FMA__
    check(plain_diff == 0, "exp_fast gives the bits of the trainer's earlier plain-C exp on all %ld inputs (%ld differ)",
          count, plain_diff);
#else
    skip("exp_fast vs the earlier plain-C exp: this build does not contract to FMAs, so the bits may differ");
#endif
#if VEC_AVX2
    check(mismatches == 0, "exp8 (AVX2/FMA)%s gives exp_fast's bits on all %ld inputs (%ld differ)",
          VEC_AVX512 ? " and exp16 (AVX-512)" : "", count, mismatches);
#else
    skip("exp8: this build has no AVX2/FMA (the scalar path is all there is)");
#endif
    // outside the clamp: the clamp's values, never inf or 0; a NaN goes to exp(-87) like fmaxf's
    float lo = exp_fast(-87.0f), hi = exp_fast(88.0f);
    int ok = exp_fast(-1000.0f) == lo && exp_fast(-INFINITY) == lo && exp_fast(1000.0f) == hi &&
             exp_fast(INFINITY) == hi && exp_fast(NAN) == lo && isfinite(hi) && lo > 0 && exp_fast(0.0f) == 1.0f;
    check(ok, "exp_fast clamps: exp(-1000) = exp(-inf) = exp(NaN) = exp(-87) = %g, exp(1000) = exp(88) = %g, "
          "exp(0) = %g", lo, hi, exp_fast(0.0f));
    float s0 = sigmoid_fast(0.0f), s1 = sigmoid_fast(3.0f);
    check(s0 == 0.5f && fabsf(s1 - (float)(1 / (1 + exp(-3.0)))) < 2e-7f, "sigmoid_fast(0) = %g, sigmoid_fast(3) = %.9g",
          s0, s1);
}

// the kernels' documented order, written out plainly: element i into lane i % 8, lanes added pairwise
static double lanes_ref(const float* x, int n, float shift, int kind, const float* b) {
    double acc[8] = {0};
    for (int i = 0; i < n; i++)
        acc[i % 8] += kind == 0 ? (double)exp_fast(x[i] - shift) : (double)x[i] * b[i];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

static void test_rows(void) {
    enum { NMAX = 4103 };
    float* x = xmalloc(NMAX * sizeof(float));
    float* y = xmalloc(NMAX * sizeof(float));
    float* out = xmalloc(NMAX * sizeof(float));
    int lens[] = {1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 100, 255, 256, 4096, 4103};
    int bad_max = 0, bad_order = 0, bad_out = 0;
    double worst_sum = 0, worst_dot = 0;
    for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
        int n = lens[li];
        for (int i = 0; i < n; i++) { x[i] = 4.0f * rn(); y[i] = rn(); }
        float m = -INFINITY;
        for (int i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
        if (row_max(x, n) != m) bad_max++;
        double s = row_exp_sum(out, x, n, m), sd = 0;
        for (int i = 0; i < n; i++) {
            sd += exp((double)x[i] - m);
            if (out[i] != exp_fast(x[i] - m)) bad_out++;
        }
        if (s != lanes_ref(x, n, m, 0, NULL) || row_exp_sum(NULL, x, n, m) != s) bad_order++;
        double rel = fabs(s - sd) / sd;
        if (rel > worst_sum) worst_sum = rel;
        double dt = row_dot(x, y, n), dd = 0, mag = 0;
        for (int i = 0; i < n; i++) { dd += (double)x[i] * y[i]; mag += fabs((double)x[i] * y[i]); }
        if (dt != lanes_ref(x, n, 0, 1, y)) bad_order++;
        double rd = fabs(dt - dd) / mag;
        if (rd > worst_dot) worst_dot = rd;
    }
    check(bad_max == 0, "row_max equals the plain max at %zu lengths 1..4103 (%d differ)", sizeof(lens) / sizeof(lens[0]), bad_max);
    check(bad_out == 0, "row_exp_sum writes exp_fast(x - shift) for every element (%d differ)", bad_out);
    check(bad_order == 0, "row_exp_sum and row_dot equal their documented 8-lane order bit for bit (%d differ)", bad_order);
    check(worst_sum < 4e-7, "row_exp_sum within %.2g (relative) of the double-precision sum of exp (< 4e-7)", worst_sum);
    check(worst_dot < 1e-15, "row_dot within %.2g (relative to sum |x y|) of the plain double dot (< 1e-15)", worst_dot);
    // a row whose max is -inf (all -inf) and a row with one huge entry
    for (int i = 0; i < 20; i++) x[i] = -INFINITY;
    float m = row_max(x, 20);
    check(m == -INFINITY, "row_max of all -inf is -inf");
    for (int i = 0; i < 20; i++) x[i] = (float)i;
    x[13] = 1e30f;
    double s = row_exp_sum(out, x, 20, row_max(x, 20));
    check(s == 1.0 + 19 * (double)exp_fast(-87.0f) && out[13] == 1.0f, "softmax row with one huge logit: sum %.17g", s);
    free(x);
    free(y);
    free(out);
}

int main(void) {
    uint64_t seed = test_seed("VEC_SEED");
    printf("test_vec: seed %llu (VEC_SEED=%llu reproduces)\n", (unsigned long long)seed, (unsigned long long)seed);
    rng_seed(&rng, seed);
    test_exp();
    test_rows();
    return tests_summary();
}
