// model/cpu/vec.h: the CPU backend's vector math: exp (scalar and 8 lanes of AVX2/FMA, the same bits either way)
// and the row kernels of the softmaxes (max, exp and sum, dot products) that run on it.
//
// exp(x) = 2^k p(r), k = floor(x log2 e + 1/2), r = x - k ln2 (ln2 split in two so k ln2 is exact enough), p the
// degree-6 Taylor polynomial of exp (truncation < 1.3e-7 relative on |r| <= ln2/2); within 3 ulp of the correctly
// rounded exp over the whole clamped range, 1 ulp for most inputs (tests/test_vec.c measures it). Every step is
// written as the FMA it compiles to, so the scalar and the vector path, and any compiler's contraction, give the
// same bits as the trainer always had (its scalar exp compiled to exactly these FMAs). No call and no branch.
// Inputs are clamped to [-87, 88]: no overflow, and exp(-87) ~ 1.6e-38 stands in for anything smaller (a NaN
// input also comes out as exp(-87), as from fmaxf).
//
// Sums that decide a result (softmax denominators, dot products) are carried in double in 8 lanes, element i in
// lane i % 8, the lanes added in one fixed order at the end: the AVX2 path and the scalar path (a machine without
// AVX2/FMA) give the same bits, and the result does not depend on the thread count.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define VEC_AVX2 1
#else
#define VEC_AVX2 0
#endif
// where the compiler targets AVX-512 (-march=native on a machine that has it), the exp rows run 16 lanes at a time:
// the same steps, and the same 8 double lanes for the sums (elements i and i + 8 into lane i % 8, in order)
#if VEC_AVX2 && defined(__AVX512F__)
#define VEC_AVX512 1
#else
#define VEC_AVX512 0
#endif

#define VEXP_LO (-87.0f)
#define VEXP_HI 88.0f
#define VEXP_LOG2E 1.44269504f
#define VEXP_LN2_HI 0.693145752f  // ln 2 to 17 bits: k * VEXP_LN2_HI is exact for |k| < 128
#define VEXP_LN2_LO 1.42860677e-06f

static inline float exp_fast(float x) {
    // the clamp as fmaxf/fminf would do it (a NaN becomes VEXP_LO), written so that it compiles to maxss/minss
    // and vectorises (without -ffinite-math-only, fmaxf/fminf are library calls)
    x = x > VEXP_LO ? x : VEXP_LO;
    x = x < VEXP_HI ? x : VEXP_HI;
    // k = floor(x log2 e + 1/2) through int (floorf would not vectorise without -fno-trapping-math); exact for
    // the clamped range, and never -0 (x log2 e + 1/2 rounds to +0 when it is 0)
    float y = fmaf(x, VEXP_LOG2E, 0.5f);
    int32_t ki = (int32_t)y;
    ki -= (float)ki > y;
    float k = (float)ki;
    float r = fmaf(-k, VEXP_LN2_HI, x);
    r = fmaf(-k, VEXP_LN2_LO, r);
    float p = fmaf(r, 1.0f / 720, 1.0f / 120);
    p = fmaf(r, p, 1.0f / 24);
    p = fmaf(r, p, 1.0f / 6);
    p = fmaf(r, p, 0.5f);
    p = fmaf(r, p, 1.0f);
    p = fmaf(r, p, 1.0f);
    union { int32_t i; float f; } scale = {(ki + 127) << 23};  // 2^k
    return p * scale.f;
}

static inline float sigmoid_fast(float z) { return 1.0f / (1.0f + exp_fast(-z)); }

#if VEC_AVX2
// the same steps as exp_fast on 8 lanes (max_ps/min_ps treat a NaN like fmaxf/fminf here: the constant wins)
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(VEXP_LO)), _mm256_set1_ps(VEXP_HI));
    __m256 k = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(VEXP_LOG2E), _mm256_set1_ps(0.5f)));
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(VEXP_LN2_HI), x);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(VEXP_LN2_LO), r);
    __m256 p = _mm256_fmadd_ps(r, _mm256_set1_ps(1.0f / 720), _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(r, p, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(r, p, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(r, p, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(r, p, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(r, p, _mm256_set1_ps(1.0f));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

#if VEC_AVX512
static inline __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(VEXP_LO)), _mm512_set1_ps(VEXP_HI));
    __m512 k = _mm512_roundscale_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(VEXP_LOG2E), _mm512_set1_ps(0.5f)),
                                    _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(VEXP_LN2_HI), x);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(VEXP_LN2_LO), r);
    __m512 p = _mm512_fmadd_ps(r, _mm512_set1_ps(1.0f / 720), _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(1.0f));
    __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(k), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}
#endif

// acc[0..7] (as lanes 0-3 and 4-7) += the 8 floats of v, in double
static inline void acc8_add(__m256d* lo, __m256d* hi, __m256 v) {
    *lo = _mm256_add_pd(*lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    *hi = _mm256_add_pd(*hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}
#endif

// the 8 lanes added in a fixed order
static inline double lanes8_sum(const double* acc) {
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// max of x[0..n) (-INFINITY when n == 0; NaNs are skipped as by `x > m ? x : m`)
static inline float row_max(const float* x, int n) {
    float m = -INFINITY;
    int i = 0;
#if VEC_AVX2
    if (n >= 8) {
        __m256 vm = _mm256_set1_ps(-INFINITY);
#if VEC_AVX512
        if (n >= 32) {  // the max is the same in any order (a NaN is skipped either way)
            __m512 v16 = _mm512_set1_ps(-INFINITY);
            for (; i + 16 <= n; i += 16) v16 = _mm512_max_ps(_mm512_loadu_ps(x + i), v16);
            vm = _mm256_max_ps(_mm512_castps512_ps256(v16),
                               _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v16), 1)));
        }
#endif
        for (; i + 8 <= n; i += 8) vm = _mm256_max_ps(_mm256_loadu_ps(x + i), vm);
        float t[8];
        _mm256_storeu_ps(t, vm);
        for (int j = 0; j < 8; j++) m = t[j] > m ? t[j] : m;
    }
#endif
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

// sum over i of exp(x[i] - shift), in double (8 lanes); out (may be x itself, or NULL) gets the float exps
static inline double row_exp_sum(float* out, const float* x, int n, float shift) {
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i = 0;
#if VEC_AVX512
    if (n >= 16) {
        __m512d a8 = _mm512_setzero_pd();
        __m512 vs16 = _mm512_set1_ps(shift);
        for (; i + 16 <= n; i += 16) {
            __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), vs16));
            if (out) _mm512_storeu_ps(out + i, e);
            a8 = _mm512_add_pd(a8, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
            a8 = _mm512_add_pd(a8, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
        }
        _mm512_storeu_pd(acc, a8);
    }
#endif
#if VEC_AVX2
    __m256d lo = _mm256_loadu_pd(acc), hi = _mm256_loadu_pd(acc + 4);
    __m256 vs = _mm256_set1_ps(shift);
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vs));
        if (out) _mm256_storeu_ps(out + i, e);
        acc8_add(&lo, &hi, e);
    }
    _mm256_storeu_pd(acc, lo);
    _mm256_storeu_pd(acc + 4, hi);
#endif
    for (; i < n; i++) {
        float e = exp_fast(x[i] - shift);
        if (out) out[i] = e;
        acc[i % 8] += e;
    }
    return lanes8_sum(acc);
}

// out[i] = exp(x[i] - shift) (out may be x)
static inline void row_exp(float* out, const float* x, int n, float shift) {
    int i = 0;
#if VEC_AVX512
    __m512 vs16 = _mm512_set1_ps(shift);
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), vs16)));
#endif
#if VEC_AVX2
    __m256 vs = _mm256_set1_ps(shift);
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vs)));
#endif
    for (; i < n; i++) out[i] = exp_fast(x[i] - shift);
}

// sum over i of a[i] b[i] in double (8 lanes; a product of two floats is exact in double)
static inline double row_dot(const float* a, const float* b, size_t n) {
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = 0;
#if VEC_AVX2
    __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
    for (; i + 8 <= n; i += 8) {
        __m256 va = _mm256_loadu_ps(a + i), vb = _mm256_loadu_ps(b + i);
        lo = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(va)), _mm256_cvtps_pd(_mm256_castps256_ps128(vb)), lo);
        hi = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(va, 1)), _mm256_cvtps_pd(_mm256_extractf128_ps(vb, 1)), hi);
    }
    _mm256_storeu_pd(acc, lo);
    _mm256_storeu_pd(acc + 4, hi);
#endif
    for (; i < n; i++) acc[i % 8] += (double)a[i] * b[i];
    return lanes8_sum(acc);
}

// x[0..n) *= s
static inline void row_scale(float* x, int n, float s) {
    for (int i = 0; i < n; i++) x[i] *= s;
}
