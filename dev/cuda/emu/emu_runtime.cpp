// emulation glue: thread-locals and cuBLAS on the host (column-major, as documented). With it the real
// model/cuda/*.cu (ops_cuda.cu's Ops table included) run on the CPU, "device" memory being host memory.
#include <stdio.h>
#include "cuda_runtime.h"
#include "cuda_bf16.h"
#include "cublas_v2.h"
#include <stdlib.h>
#include <vector>
#include <functional>

#include <sys/mman.h>
#include <cblas.h>

dim3 threadIdx, blockIdx, blockDim, gridDim;
unsigned char* emu_smem;

// ---- fibers: the threads of a block, each on its own stack, switched by emu_ctx_switch (x86-64 System V: the
// callee-saved registers are pushed on the old stack, the stack pointer is swapped, and they are popped from the
// new one; everything else is caller-saved around the call). No signal-mask syscalls, so a switch costs nanoseconds.
extern "C" void emu_ctx_switch(void** save_sp, void* load_sp);
#if !defined(__x86_64__)
#error "the CUDA emulator's fiber switch is written for x86-64"
#endif
asm(R"(
    .text
    .globl emu_ctx_switch
    .type emu_ctx_switch, @function
emu_ctx_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_ctx_switch, .-emu_ctx_switch
)");

enum { F_RUN, F_WAIT_BLOCK, F_WAIT_WARP, F_DONE };
struct Fiber { void* sp; int state; unsigned char* stack; };
static const size_t EMU_STACK = 256 << 10;  // per thread; the lowest page is a guard (an overflow faults)
static Fiber fib[1024];
static void* sched_sp;                      // the scheduler's stack pointer while a fiber runs
static int cur;                             // the running fiber
static const std::function<void()>* cur_body;
static uint64_t warp_slot[32][32];          // shuffle exchange, per warp

static void fiber_entry(void) {
    (*cur_body)();
    fib[cur].state = F_DONE;
    emu_ctx_switch(&fib[cur].sp, sched_sp);
    abort();  // a finished fiber is never resumed
}
static void fiber_wait(int state) {
    fib[cur].state = state;
    emu_ctx_switch(&fib[cur].sp, sched_sp);
}
void emu_sync_block(void) { fiber_wait(F_WAIT_BLOCK); }
void emu_sync_warp(void) { fiber_wait(F_WAIT_WARP); }
uint64_t* emu_warp_slots(void) { return warp_slot[threadIdx.x >> 5]; }

static void fiber_start(int t) {
    if (!fib[t].stack) {
        void* m = mmap(NULL, EMU_STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) { fprintf(stderr, "emu: no memory for a fiber stack\n"); abort(); }
        mprotect(m, 4096, PROT_NONE);
        fib[t].stack = (unsigned char*)m;
    }
    // the first switch pops six zero registers and returns into fiber_entry with the stack aligned as after a call
    void** sp = (void**)(fib[t].stack + EMU_STACK - 64);
    for (int i = 0; i < 8; i++) sp[i] = NULL;
    sp[6] = (void*)fiber_entry;
    fib[t].sp = sp;
    fib[t].state = F_RUN;
}

void emu_run_grid(dim3 g, dim3 b, size_t smem, const std::function<void()>& body) {
    int nt = (int)b.x;
    // 128-byte aligned, as the GPU's dynamic shared memory (wmma tiles in it need 32 bytes)
    std::vector<unsigned char> buf(smem + 128);
    unsigned char* sm = (unsigned char*)(((uintptr_t)buf.data() + 127) & ~(uintptr_t)127);
    blockDim = b; gridDim = g; cur_body = &body; emu_smem = sm;
    for (unsigned z = 0; z < g.z; z++)
        for (unsigned y = 0; y < g.y; y++)
            for (unsigned x = 0; x < g.x; x++) {
                blockIdx = dim3(x, y, z);
                memset(buf.data(), 0xA5, buf.size());  // shared memory starts as garbage, as on the GPU
                for (int t = 0; t < nt; t++) fiber_start(t);
                int live = nt;
                for (int phase = 0; live > 0; phase++) {
                    for (int i = 0; i < nt; i++) {
                        int t = (phase & 1) ? nt - 1 - i : i;
                        if (fib[t].state != F_RUN) continue;
                        cur = t;
                        threadIdx = dim3((unsigned)t, 0, 0);
                        emu_ctx_switch(&sched_sp, fib[t].sp);
                        if (fib[t].state == F_DONE) live--;
                    }
                    if (!live) break;
                    // open the barriers every live participant has reached: warps first, else the block's
                    int opened = 0;
                    for (int w = 0; w < nt / 32; w++) {
                        int waiting = 0, alive = 0;
                        for (int t = w * 32; t < w * 32 + 32; t++) {
                            alive += fib[t].state != F_DONE;
                            waiting += fib[t].state == F_WAIT_WARP;
                        }
                        if (waiting && waiting == alive) {
                            for (int t = w * 32; t < w * 32 + 32; t++)
                                if (fib[t].state == F_WAIT_WARP) fib[t].state = F_RUN;
                            opened = 1;
                        }
                    }
                    if (opened) continue;
                    int at_block = 0;
                    for (int t = 0; t < nt; t++) at_block += fib[t].state == F_WAIT_BLOCK;
                    if (at_block != live) {
                        fprintf(stderr, "emu: deadlock in block (%u,%u,%u): %d threads at __syncthreads, %d at a warp "
                                "collective that part of their warp never reaches\n", x, y, z, at_block, live - at_block);
                        abort();
                    }
                    for (int t = 0; t < nt; t++)
                        if (fib[t].state == F_WAIT_BLOCK) fib[t].state = F_RUN;
                }
            }
}

int emu_max_dyn_smem = 48 * 1024;
long emu_launches = 0;
long emu_gemm_calls = 0, emu_grouped_calls = 0, emu_sgemm_batched_calls = 0;

static float ld_el(const void* p, cudaDataType_t t, size_t i) {
    if (t == CUDA_R_32F) return ((const float*)p)[i];
    return __bfloat162float(((const __nv_bfloat16*)p)[i]);
}
static void st_el(void* p, cudaDataType_t t, size_t i, float v) {
    if (t == CUDA_R_32F) ((float*)p)[i] = v;
    else ((__nv_bfloat16*)p)[i] = __float2bfloat16_rn(v);
}

// One GEMM, C = alpha op(A) op(B) + beta C, column-major with cuBLAS's argument checks; the product itself by
// OpenBLAS on fp32 copies of the operands (widened from bf16 exactly), the result rounded once into C's type.
static std::vector<float> widen(const void* p, cudaDataType_t t, int rows, int cols, int ld) {
    // the column-major (rows, cols) operand with leading dimension ld: its last column ends at ld*(cols-1)+rows
    size_t n = cols > 0 && rows > 0 ? (size_t)ld * (cols - 1) + rows : 0;
    std::vector<float> v(n);
    for (size_t i = 0; i < n; i++) v[i] = ld_el(p, t, i);
    return v;
}
// EMU_GEMM_TRACE=FILE appends one line per GEMM (every argument but the pointers), so that a refactor of the
// backend's GEMM calls can be checked to issue the very same calls: diff the traces before and after.
static FILE* gemm_trace_file(void) {
    static FILE* f = NULL;
    static int opened = 0;
    if (!opened) {
        opened = 1;
        const char* path = getenv("EMU_GEMM_TRACE");
        if (path && *path && !(f = fopen(path, "a"))) { fprintf(stderr, "emu: cannot open %s\n", path); abort(); }
    }
    return f;
}
// ---- cost counting (emu_cost.cpp). Under EMU_COUNT_ONLY a GEMM computes nothing; an fp32 output written with
// beta = 0 (the router logits: what routing and so the expert GEMMs' sizes depend on) gets pseudo-random values in
// [-2, 2] instead, so that tokens spread over the experts as in a fresh model.
extern "C" int emu_count_only(void);
extern "C" void emu_cost_gemm(const char* name, int tensor, int np, const int* m, const int* n, const int* k,
                              const int* batch, double ab_bytes, double c_bytes, int beta_nonzero);
static void count_only_fill(void* C, cudaDataType_t Ct, int m, int n, int ldc, float beta) {
    if (Ct != CUDA_R_32F || beta != 0.0f || (size_t)m * n > ((size_t)1 << 24)) return;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            uint32_t h = (uint32_t)i * 2654435761u ^ (uint32_t)j * 2246822519u;
            h ^= h >> 15; h *= 2654435761u; h ^= h >> 13;
            ((float*)C)[(size_t)i + (size_t)j * ldc] = 4.0f * (h >> 8) / 16777216.0f - 2.0f;
        }
}
static double type_bytes(cudaDataType_t t) { return t == CUDA_R_32F ? 4 : 2; }

static cublasStatus_t gemm1(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha,
                            const void* A, cudaDataType_t At, int lda, const void* B, cudaDataType_t Bt, int ldb,
                            float beta, void* C, cudaDataType_t Ct, int ldc) {
    if (FILE* tf = gemm_trace_file())
        fprintf(tf, "gemm ta %d tb %d m %d n %d k %d alpha %g A %d lda %d B %d ldb %d beta %g C %d ldc %d\n", (int)ta,
                (int)tb, m, n, k, alpha, (int)At, lda, (int)Bt, ldb, beta, (int)Ct, ldc);
    if (m < 0 || n < 0 || k < 0) return CUBLAS_STATUS_INVALID_VALUE;
    if (lda < (ta == CUBLAS_OP_N ? (m > 1 ? m : 1) : (k > 1 ? k : 1))) { fprintf(stderr, "emu gemm: lda\n"); return CUBLAS_STATUS_INVALID_VALUE; }
    if (ldb < (tb == CUBLAS_OP_N ? (k > 1 ? k : 1) : (n > 1 ? n : 1))) { fprintf(stderr, "emu gemm: ldb\n"); return CUBLAS_STATUS_INVALID_VALUE; }
    if (ldc < (m > 1 ? m : 1)) { fprintf(stderr, "emu gemm: ldc\n"); return CUBLAS_STATUS_INVALID_VALUE; }
    if (At != Bt) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    if (emu_count_only()) { count_only_fill(C, Ct, m, n, ldc, beta); return CUBLAS_STATUS_SUCCESS; }
    std::vector<float> prod((size_t)m * n, 0.0f);
    if (k > 0) {
        std::vector<float> a = ta == CUBLAS_OP_N ? widen(A, At, m, k, lda) : widen(A, At, k, m, lda);
        std::vector<float> b = tb == CUBLAS_OP_N ? widen(B, Bt, k, n, ldb) : widen(B, Bt, n, k, ldb);
        cblas_sgemm(CblasColMajor, ta == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                    tb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, m, n, k, 1.0f, a.data(), lda, b.data(), ldb, 0.0f,
                    prod.data(), m);
    }
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            size_t ci = (size_t)i + (size_t)j * ldc;
            float v = alpha * prod[(size_t)i + (size_t)j * m];
            if (beta != 0.0f) v += beta * ld_el(C, Ct, ci);  // beta = 0: C is not read (it may hold NaN)
            st_el(C, Ct, ci, v);
        }
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void* alpha, const void* A, cudaDataType_t At, int lda, const void* B,
                            cudaDataType_t Bt, int ldb, const void* beta, void* C, cudaDataType_t Ct, int ldc,
                            cublasComputeType_t, cublasGemmAlgo_t) {
    emu_gemm_calls++;
    char name[64];
    snprintf(name, sizeof(name), "cublasGemmEx %s->%s", At == CUDA_R_32F ? "f32" : "bf16", Ct == CUDA_R_32F ? "f32" : "bf16");
    emu_cost_gemm(name, At == CUDA_R_16BF, 1, &m, &n, &k, NULL, type_bytes(At), type_bytes(Ct), *(const float*)beta != 0.0f);
    return gemm1(ta, tb, m, n, k, *(const float*)alpha, A, At, lda, B, Bt, ldb, *(const float*)beta, C, Ct, ldc);
}

cublasStatus_t cublasGemmGroupedBatchedEx(cublasHandle_t, const cublasOperation_t ta[], const cublasOperation_t tb[],
                                          const int m[], const int n[], const int k[], const void* alpha,
                                          const void* const A[], cudaDataType_t At, const int lda[],
                                          const void* const B[], cudaDataType_t Bt, const int ldb[], const void* beta,
                                          void* const C[], cudaDataType_t Ct, const int ldc[], int group_count,
                                          const int group_size[], cublasComputeType_t) {
    if (getenv("EMU_GROUPED_REFUSE")) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (At == CUDA_R_16BF && Ct != CUDA_R_16BF) return CUBLAS_STATUS_NOT_SUPPORTED;  // the documented table
    emu_grouped_calls++;
    const float* al = (const float*)alpha;
    const float* be = (const float*)beta;
    {
        int beta_nonzero = 0;
        for (int g = 0; g < group_count; g++) beta_nonzero |= be[g] != 0.0f;
        emu_cost_gemm("cublasGemmGroupedBatchedEx", At == CUDA_R_16BF, group_count, m, n, k, group_size, type_bytes(At),
                      type_bytes(Ct), beta_nonzero);
    }
    int idx = 0;
    for (int g = 0; g < group_count; g++)
        for (int j = 0; j < group_size[g]; j++, idx++) {
            // 16-byte alignment rule (documented for bf16 pointer arrays)
            if (((uintptr_t)A[idx] | (uintptr_t)B[idx] | (uintptr_t)C[idx]) & 15) { fprintf(stderr, "emu grouped: misaligned\n"); abort(); }
            cublasStatus_t st = gemm1(ta[g], tb[g], m[g], n[g], k[g], al[g], A[idx], At, lda[g], B[idx], Bt, ldb[g],
                                      be[g], C[idx], Ct, ldc[g]);
            if (st != CUBLAS_STATUS_SUCCESS) return st;
        }
    return CUBLAS_STATUS_SUCCESS;
}

// fp32 strided batch (Newton-Schulz): each matrix of the batch through the same host GEMM
cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                         int k, const float* alpha, const float* A, int lda, long long strideA,
                                         const float* B, int ldb, long long strideB, const float* beta, float* C,
                                         int ldc, long long strideC, int batch) {
    emu_sgemm_batched_calls++;
    emu_cost_gemm("cublasSgemmStridedBatched", 0, 1, &m, &n, &k, &batch, 4, 4, *beta != 0.0f);
    for (int i = 0; i < batch; i++) {
        cublasStatus_t st = gemm1(ta, tb, m, n, k, *alpha, A + i * strideA, CUDA_R_32F, lda, B + i * strideB,
                                  CUDA_R_32F, ldb, *beta, C + i * strideC, CUDA_R_32F, ldc);
        if (st != CUBLAS_STATUS_SUCCESS) return st;
    }
    return CUBLAS_STATUS_SUCCESS;
}

// strided batch with typed operands (Newton-Schulz in bf16): cuBLAS's table for CUBLAS_COMPUTE_32F as the backend
// uses it -- A and B both bf16 with C bf16 or fp32, or all fp32 -- and every pointer aligned to its element
long emu_gemm_strided_ex_calls = 0;
static size_t el_bytes(cudaDataType_t t) { return t == CUDA_R_32F ? 4 : 2; }
cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                          int k, const void* alpha, const void* A, cudaDataType_t At, int lda,
                                          long long strideA, const void* B, cudaDataType_t Bt, int ldb,
                                          long long strideB, const void* beta, void* C, cudaDataType_t Ct, int ldc,
                                          long long strideC, int batch, cublasComputeType_t ct, cublasGemmAlgo_t) {
    if (ct != CUBLAS_COMPUTE_32F || At != Bt) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (At == CUDA_R_32F && Ct != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (batch < 0 || strideA < 0 || strideB < 0 || strideC < 0) return CUBLAS_STATUS_INVALID_VALUE;
    if (((uintptr_t)A % el_bytes(At)) || ((uintptr_t)B % el_bytes(Bt)) || ((uintptr_t)C % el_bytes(Ct))) {
        fprintf(stderr, "emu GemmStridedBatchedEx: a pointer not aligned to its element\n");
        abort();
    }
    emu_gemm_strided_ex_calls++;
    emu_cost_gemm("cublasGemmStridedBatchedEx", At == CUDA_R_16BF, 1, &m, &n, &k, &batch, (int)el_bytes(At),
                  (int)el_bytes(Ct), *(const float*)beta != 0.0f);
    for (int i = 0; i < batch; i++) {
        cublasStatus_t st = gemm1(ta, tb, m, n, k, *(const float*)alpha, (const char*)A + i * strideA * el_bytes(At),
                                  At, lda, (const char*)B + i * strideB * el_bytes(Bt), Bt, ldb, *(const float*)beta,
                                  (char*)C + i * strideC * el_bytes(Ct), Ct, ldc);
        if (st != CUBLAS_STATUS_SUCCESS) return st;
    }
    return CUBLAS_STATUS_SUCCESS;
}

struct EmuReport { ~EmuReport() { fflush(stdout); fprintf(stderr, "emu: %ld kernel launches, %ld cublasGemmEx, %ld grouped GEMM, %ld SgemmStridedBatched calls\n",
                                              emu_launches, emu_gemm_calls, emu_grouped_calls, emu_sgemm_batched_calls); } } emu_report;
