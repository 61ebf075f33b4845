// dev/cuda/emu/test_cost.cpp: the cost counter (emu_cost.cpp) against hand counts, run by `bash dev/cuda/emu/run.sh
// cost` (part of make test where g++ exists; a few seconds). Checks: the FLOPs, bytes and predicted time of a known
// bf16 GEMM, grouped GEMM and fp32 strided batch; of a known kernel launch (dense.cu's add_kernel through
// cuda_add); a kernel without a formula aborts naming itself; EMU_COUNT_ONLY=1 skips the arithmetic (outputs left
// as they were, the router-logit fill in [-2, 2]) and counts exactly what the computed run counts.
#include "cuda_runtime.h"
#include "cuda_bf16.h"
#include "cublas_v2.h"
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmath>
#include <string>

extern "C" void emu_cost_reset(void);
extern "C" int emu_cost_write(const char* path);
extern "C" void emu_cost_totals(const char* name, double* calls, double* flops, double* bytes, double* ms_h100,
                                double* ms_h200);
extern "C" int emu_count_only(void);
extern "C" void cuda_add(void* out, const void* a, const void* b, size_t n);  // dense.cu

static int passed = 0, failed = 0;
static void check(bool ok, const char* what, double got, double want) {
    printf("%s %s: %.9g (want %.9g)\n", ok ? "PASS" : "FAIL", what, got, want);
    ok ? passed++ : failed++;
}
static bool near(double a, double b) { return std::fabs(a - b) <= 1e-9 * std::fabs(b) + 1e-15; }

// the same calls in both modes: a bf16 GEMM, a fp32-output GEMM (beta 0), a grouped GEMM, a strided fp32 batch and
// one add_kernel launch; returns whether the outputs were computed (C changed from its poison)
struct Bufs {
    __nv_bfloat16 A[256 * 128], B[384 * 128], C[256 * 384], x[1000], y[1000], z[1000];
    float Cf[256 * 384], S[2 * 64 * 64];
};
static void workload(Bufs* b) {
    for (int i = 0; i < 256 * 128; i++) b->A[i] = __float2bfloat16_rn(0.01f * (i % 97));
    for (int i = 0; i < 384 * 128; i++) b->B[i] = __float2bfloat16_rn(0.02f * (i % 89) - 0.5f);
    for (int i = 0; i < 256 * 384; i++) { b->C[i] = __float2bfloat16_rn(7.0f); b->Cf[i] = 7.0f; }
    for (int i = 0; i < 1000; i++) { b->x[i] = __float2bfloat16_rn(1.0f + i % 5); b->y[i] = __float2bfloat16_rn(2.0f); b->z[i] = __float2bfloat16_rn(7.0f); }
    for (int i = 0; i < 2 * 64 * 64; i++) b->S[i] = 0.001f * (i % 31);
    float one = 1.0f, zero = 0.0f;
    // C (384 x 256, column-major) = B^T (384 x 128) A (128 x 256): m 384, n 256, k 128
    cublasGemmEx(NULL, CUBLAS_OP_T, CUBLAS_OP_N, 384, 256, 128, &one, b->B, CUDA_R_16BF, 128, b->A, CUDA_R_16BF, 128,
                 &zero, b->C, CUDA_R_16BF, 384, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    cublasGemmEx(NULL, CUBLAS_OP_T, CUBLAS_OP_N, 384, 256, 128, &one, b->B, CUDA_R_16BF, 128, b->A, CUDA_R_16BF, 128,
                 &zero, b->Cf, CUDA_R_32F, 384, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    // grouped: two groups of one problem each, (m, n, k) = (128, 64, 128) and (256, 32, 64), into C's first rows
    cublasOperation_t ta[2] = {CUBLAS_OP_T, CUBLAS_OP_T}, tb[2] = {CUBLAS_OP_N, CUBLAS_OP_N};
    int m[2] = {128, 256}, n[2] = {64, 32}, k[2] = {128, 64}, lda[2] = {128, 128}, ldb[2] = {128, 128}, ldc[2] = {384, 384}, gs[2] = {1, 1};
    float al[2] = {1, 1}, be[2] = {0, 0};
    const void* Ap[2] = {b->B, b->B};
    const void* Bp[2] = {b->A, b->A};
    void* Cp[2] = {b->C, b->C};
    cublasGemmGroupedBatchedEx(NULL, ta, tb, m, n, k, al, Ap, CUDA_R_16BF, lda, Bp, CUDA_R_16BF, ldb, be, Cp,
                               CUDA_R_16BF, ldc, 2, gs, CUBLAS_COMPUTE_32F);
    // 2 x (64 x 64) = (64 x 64)(64 x 64) fp32, beta 1
    cublasSgemmStridedBatched(NULL, CUBLAS_OP_N, CUBLAS_OP_N, 64, 64, 64, &one, b->S, 64, 4096, b->S, 64, 4096, &one,
                              b->S, 64, 4096, 2);
    cuda_add(b->z, b->x, b->y, 1000);
}

static double total(const char* name, int what) {
    double v[5];
    emu_cost_totals(name, &v[0], &v[1], &v[2], &v[3], &v[4]);
    return v[what];
}
enum { CALLS, FLOPS, BYTES, MS100, MS200 };

__global__ void kernel_without_formula(float* x) { x[threadIdx.x] = 1.0f; }

static std::string slurp(const char* p) {
    std::string s;
    FILE* f = fopen(p, "r");
    if (!f) return s;
    char buf[4096];
    size_t r;
    while ((r = fread(buf, 1, sizeof(buf), f)) > 0) s.append(buf, r);
    fclose(f);
    return s;
}

int main(void) {
    // count-only, in a child that sets the variable before anything reads it: outputs untouched, counts written
    char counted[] = "/tmp/emu_cost_test_XXXXXX";
    int fd = mkstemp(counted);
    if (fd < 0) { printf("FAIL cannot create a temporary file\n"); return 1; }
    close(fd);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("EMU_COUNT_ONLY", "1", 1);
        static Bufs b;
        workload(&b);
        int untouched = __bfloat162float(b.C[5 * 384 + 300]) == 7.0f && __bfloat162float(b.z[3]) == 7.0f && b.S[100] == 0.001f * (100 % 31);
        int filled = 1;
        for (int i = 0; i < 256 * 384; i++) filled &= b.Cf[i] >= -2.0f && b.Cf[i] <= 2.0f && b.Cf[i] != 7.0f;
        _exit(emu_cost_write(counted) ? 3 : untouched && filled ? 0 : 4);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    int child = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    check(child == 0, "EMU_COUNT_ONLY=1: bf16 GEMM, fp32 batch and add_kernel leave their outputs as they were, the "
                      "fp32 beta-0 GEMM is filled in [-2, 2] (child exit 0)", child, 0);

    // computed
    static Bufs b;
    workload(&b);
    check(__bfloat162float(b.z[3]) == 1.0f + 3 + 2.0f, "computed: add_kernel ran (z[3])", __bfloat162float(b.z[3]), 6.0);
    check(b.Cf[0] != 7.0f, "computed: the fp32 GEMM ran", b.Cf[0], 0);

    // GemmEx bf16->bf16 (m 384, n 256, k 128): 2mnk FLOPs; bytes 2 (mk + kn + mn); 3 x 2 tiles of 128 in one wave
    // of 132 SMs at 70% of 989 TFLOP/s, or the bytes at 3.35 TB/s, whichever is longer; plus 4 us
    double M = 384, N = 256, K = 128;
    double fl = 2 * M * N * K, by = 2 * (M * K + K * N + M * N);
    double t100 = std::max(132 * 2 * 128.0 * 128 * K / (989e12 * 0.7), by / 3.35e12) + 4e-6;
    double t200 = std::max(132 * 2 * 128.0 * 128 * K / (989e12 * 0.7), by / 4.8e12) + 4e-6;
    const char* g = "cublasGemmEx bf16->bf16";
    check(total(g, CALLS) == 1, "GemmEx bf16 calls", total(g, CALLS), 1);
    check(near(total(g, FLOPS), fl), "GemmEx bf16 FLOPs = 2 m n k", total(g, FLOPS), fl);
    check(near(total(g, BYTES), by), "GemmEx bf16 bytes = 2 (mk + kn + mn)", total(g, BYTES), by);
    check(near(total(g, MS100), 1e3 * t100), "GemmEx bf16 H100 ms (one wave at 70%, + 4 us)", total(g, MS100), 1e3 * t100);
    check(near(total(g, MS200), 1e3 * t200), "GemmEx bf16 H200 ms", total(g, MS200), 1e3 * t200);
    g = "cublasGemmEx bf16->f32";
    check(near(total(g, BYTES), 2 * (M * K + K * N) + 4 * M * N), "GemmEx bf16->f32 bytes (C in fp32)", total(g, BYTES),
          2 * (M * K + K * N) + 4 * M * N);
    // grouped: (128, 64, 128) 1 tile of k 128 + (256, 32, 64) 2 tiles of k 64, one call, one wave
    g = "cublasGemmGroupedBatchedEx";
    fl = 2.0 * 128 * 64 * 128 + 2.0 * 256 * 32 * 64;
    by = 2.0 * (128 * 128 + 128 * 64 + 128 * 64) + 2.0 * (256 * 64 + 64 * 32 + 256 * 32);
    double work = 132 * (2 * 128.0 * 128 * (128 + 2 * 64)) / 3;
    check(total(g, CALLS) == 1 && near(total(g, FLOPS), fl), "grouped GEMM: one call, FLOPs summed over groups",
          total(g, FLOPS), fl);
    check(near(total(g, BYTES), by), "grouped GEMM bytes summed over groups", total(g, BYTES), by);
    check(near(total(g, MS100), 1e3 * (std::max(work / (989e12 * 0.7), by / 3.35e12) + 4e-6)),
          "grouped GEMM H100 ms (3 tiles, mean k, one wave)", total(g, MS100),
          1e3 * (std::max(work / (989e12 * 0.7), by / 3.35e12) + 4e-6));
    // strided fp32 batch: 2 x 2 * 64^3 on the FMA unit (67 TFLOP/s), C read and written (beta 1)
    g = "cublasSgemmStridedBatched";
    fl = 2 * 2.0 * 64 * 64 * 64;
    by = 2 * 4.0 * (64 * 64 * 2 + 2 * 64 * 64);
    work = 132 * 2 * 128.0 * 128 * 64;
    check(near(total(g, FLOPS), fl) && near(total(g, BYTES), by), "Sgemm strided batch FLOPs and bytes", total(g, BYTES), by);
    check(near(total(g, MS100), 1e3 * (std::max(work / (67e12 * 0.7), by / 3.35e12) + 4e-6)),
          "Sgemm strided batch H100 ms (fp32 FMA peak)", total(g, MS100),
          1e3 * (std::max(work / (67e12 * 0.7), by / 3.35e12) + 4e-6));
    // add_kernel, n = 1000: n FLOPs, 3 x 2n bytes, memory-bound + 4 us
    g = "add_kernel";
    check(total(g, CALLS) == 1 && near(total(g, FLOPS), 1000), "add_kernel: one launch, n FLOPs", total(g, FLOPS), 1000);
    check(near(total(g, BYTES), 6000), "add_kernel bytes = 3 x 2 n", total(g, BYTES), 6000);
    check(near(total(g, MS100), 1e3 * (6000 / 3.35e12 + 4e-6)), "add_kernel H100 ms (bandwidth + 4 us)", total(g, MS100),
          1e3 * (6000 / 3.35e12 + 4e-6));

    // count-only counted exactly what the computed run counted
    char computed[] = "/tmp/emu_cost_test_XXXXXX";
    fd = mkstemp(computed);
    close(fd);
    emu_cost_write(computed);
    std::string a = slurp(counted), c = slurp(computed);
    check(!a.empty() && a == c, "count-only counts == computed counts (every name, calls, FLOPs, bytes, ms)",
          (double)a.size(), (double)c.size());
    unlink(counted);
    unlink(computed);

    // a kernel without a formula aborts, naming itself
    fflush(stdout);
    int pipefd[2];
    if (pipe(pipefd) != 0) { printf("FAIL pipe\n"); return 1; }
    pid = fork();
    if (pid == 0) {
        dup2(pipefd[1], 2);
        static float x[32];
        emu_launch(kernel_without_formula, "kernel_without_formula", 1, 32)(x);
        _exit(0);
    }
    close(pipefd[1]);
    char msg[512] = {0};
    ssize_t r = read(pipefd[0], msg, sizeof(msg) - 1);
    (void)r;
    waitpid(pid, &status, 0);
    bool aborted = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT && strstr(msg, "kernel_without_formula");
    check(aborted, "a kernel without a formula aborts with its name", aborted, 1);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
