// dev/cuda/emu/wmma_test.cpp: checks the emulator's nvcuda::wmma (include/mma.h) before any kernel is tested
// with it: GEMMs through fragments in every layout combination against a host loop, the accumulator's load and
// store in both memory layouts, and that a kernel assuming a lane owns a fixed row of a fragment (true of one GPU
// generation's layout, promised by none) computes a wrong answer here, so such a kernel fails its own test.
// Run by run.sh (part `wmma`); prints `N passed, N failed`.
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <mma.h>
#include <stdint.h>
#include <stdio.h>
#include <math.h>
#include <type_traits>
#include <vector>
using namespace nvcuda;
typedef __nv_bfloat16 bf16;

// C (M, N) row-major = A (M, K) B (K, N) + C0; A stored row- or column-major (lda), B likewise; one warp per
// 16x16 tile of C, two warps per block; the accumulator starts from C0 loaded in layout c_layout
template <class LA, class LB>
__global__ void wmma_gemm_kernel(float* C, const bf16* A, const bf16* B, const float* C0, int M, int N, int K, int lda,
                                 int ldb, int c_col_major) {
    int warp = blockIdx.x * 2 + (threadIdx.x >> 5);
    int tiles_n = N / 16;
    if (warp >= (M / 16) * tiles_n) return;
    int tm = warp / tiles_n, tn = warp % tiles_n;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::layout_t cl = c_col_major ? wmma::mem_col_major : wmma::mem_row_major;
    const float* c0 = c_col_major ? C0 + (size_t)tn * 16 * M + tm * 16 : C0 + (size_t)tm * 16 * N + tn * 16;
    wmma::load_matrix_sync(acc, c0, c_col_major ? M : N, cl);
    for (int k = 0; k < K; k += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, LA> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, LB> b;
        bool ar = std::is_same<LA, wmma::row_major>::value, br = std::is_same<LB, wmma::row_major>::value;
        wmma::load_matrix_sync(a, ar ? A + (size_t)tm * 16 * lda + k : A + (size_t)k * lda + tm * 16, lda);
        wmma::load_matrix_sync(b, br ? B + (size_t)k * ldb + tn * 16 : B + (size_t)tn * 16 * ldb + k, ldb);
        wmma::mma_sync(acc, a, b, acc);
    }
    for (int i = 0; i < acc.num_elements; i++) acc.x[i] *= 0.5f;  // elementwise use of x[] is layout-free
    wmma::store_matrix_sync(C + (size_t)tm * 16 * N + tn * 16, acc, N, wmma::mem_row_major);
}

// wrong on purpose: assumes lane l holds row l / 2 of the accumulator, columns (l % 2) * 8 + i
__global__ void wmma_layout_assuming_kernel(float* C, const bf16* A, const bf16* B) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> b;
    wmma::fill_fragment(acc, 0.0f);
    wmma::load_matrix_sync(a, A, 16);
    wmma::load_matrix_sync(b, B, 16);
    wmma::mma_sync(acc, a, b, acc);
    int lane = threadIdx.x & 31;
    for (int i = 0; i < 8; i++) C[(lane / 2) * 16 + (lane % 2) * 8 + i] = acc.x[i];
}

static int passed = 0, failed = 0;
static void check(bool ok, const char* what, double err) {
    printf("%s %s (max rel err %.2e)\n", ok ? "ok  " : "FAIL", what, err);
    ok ? passed++ : failed++;
}
static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float urand(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (float)((rng >> 11) * 0x1.0p-53) * 2.0f - 1.0f; }

template <class T> static T* dev_alloc(size_t n) { T* p; cudaMalloc(&p, n * sizeof(T)); return p; }

template <class LA, class LB> static void gemm_case(int M, int N, int K, int c_col_major, const char* name) {
    bool ar = std::is_same<LA, wmma::row_major>::value, br = std::is_same<LB, wmma::row_major>::value;
    int lda = (ar ? K : M) + 8, ldb = (br ? N : K) + 16;  // padded leading dimensions, multiples of 8
    std::vector<float> a((size_t)M * K), b((size_t)K * N), c0((size_t)M * N);
    bf16* A = dev_alloc<bf16>((size_t)(ar ? M : K) * lda);
    bf16* B = dev_alloc<bf16>((size_t)(br ? K : N) * ldb);
    float* C0 = dev_alloc<float>((size_t)M * N);
    float* C = dev_alloc<float>((size_t)M * N);
    for (int i = 0; i < M; i++)
        for (int k = 0; k < K; k++) {
            bf16 v = __float2bfloat16_rn(urand());
            a[(size_t)i * K + k] = __bfloat162float(v);
            (ar ? A[(size_t)i * lda + k] : A[(size_t)k * lda + i]) = v;
        }
    for (int k = 0; k < K; k++)
        for (int j = 0; j < N; j++) {
            bf16 v = __float2bfloat16_rn(urand());
            b[(size_t)k * N + j] = __bfloat162float(v);
            (br ? B[(size_t)k * ldb + j] : B[(size_t)j * ldb + k]) = v;
        }
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float v = urand();
            c0[(size_t)i * N + j] = v;
            (c_col_major ? C0[(size_t)j * M + i] : C0[(size_t)i * N + j]) = v;
        }
    int tiles = (M / 16) * (N / 16);
    wmma_gemm_kernel<LA, LB><<<(tiles + 1) / 2, 64>>>(C, A, B, C0, M, N, K, lda, ldb, c_col_major);
    double worst = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = c0[(size_t)i * N + j];
            for (int k = 0; k < K; k++) s += (double)a[(size_t)i * K + k] * b[(size_t)k * N + j];
            s *= 0.5;
            double e = fabs(C[(size_t)i * N + j] - s) / (fabs(s) + 1e-3);
            if (e > worst) worst = e;
        }
    check(worst < 1e-4, name, worst);
    cudaFree(A); cudaFree(B); cudaFree(C0); cudaFree(C);
}

int main(void) {
    gemm_case<wmma::row_major, wmma::row_major>(48, 32, 64, 0, "wmma gemm A row, B row, C0 row (48x32x64)");
    gemm_case<wmma::col_major, wmma::row_major>(32, 48, 32, 1, "wmma gemm A col, B row, C0 col (32x48x32)");
    gemm_case<wmma::row_major, wmma::col_major>(16, 64, 48, 0, "wmma gemm A row, B col, C0 row (16x64x48)");
    gemm_case<wmma::col_major, wmma::col_major>(64, 16, 16, 1, "wmma gemm A col, B col, C0 col (64x16x16)");
    {  // the layout-assuming kernel must be wrong somewhere
        bf16* A = dev_alloc<bf16>(256);
        bf16* B = dev_alloc<bf16>(256);
        float* C = dev_alloc<float>(256);
        std::vector<float> a(256), b(256);
        for (int i = 0; i < 256; i++) { A[i] = __float2bfloat16_rn(urand()); a[i] = __bfloat162float(A[i]); }
        for (int i = 0; i < 256; i++) { B[i] = __float2bfloat16_rn(urand()); b[i] = __bfloat162float(B[i]); }
        wmma_layout_assuming_kernel<<<1, 32>>>(C, A, B);
        int wrong = 0;
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 16; j++) {
                double s = 0;
                for (int k = 0; k < 16; k++) s += (double)a[i * 16 + k] * b[k * 16 + j];
                if (fabs(C[i * 16 + j] - s) > 1e-3 * (fabs(s) + 1)) wrong++;
            }
        printf("     layout-assuming kernel: %d of 256 elements wrong\n", wrong);
        check(wrong > 128, "a kernel assuming a fragment layout gets wrong results", 0);
        cudaFree(A); cudaFree(B); cudaFree(C);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
