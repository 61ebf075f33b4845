// emulation glue: thread-locals, cuBLAS on the host (column-major, as documented), the globals of ops_cuda.cu, and
// an Ops table whose "device" memory is host memory, so tests/test_cuda_attn_moe.c runs the real kernels on the CPU
#include <stdio.h>
#include "cuda_runtime.h"
#include "cuda_bf16.h"
#include "cublas_v2.h"
#include "cublasLt.h"
extern "C" {
#include "/work/main/common.h"
#include "/work/main/model/ops.h"
}
#include "/work/main/model/cuda/cuda_ops.h"

thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
thread_local std::barrier<>* emu_block_bar;
thread_local EmuWarp* emu_warp;
thread_local unsigned char* emu_smem;
int emu_max_dyn_smem = 48 * 1024;
long emu_launches = 0;
long emu_gemm_calls = 0, emu_grouped_calls = 0;

cudaStream_t cuda_stream = 0;
cublasHandle_t cuda_cublas = 0;
cublasLtHandle_t cuda_cublaslt = 0;
void* cuda_lt_workspace = 0;
size_t cuda_lt_workspace_bytes = 0;
int cuda_num_sms = 4;

static float ld_el(const void* p, cudaDataType_t t, size_t i) {
    if (t == CUDA_R_32F) return ((const float*)p)[i];
    return __bfloat162float(((const __nv_bfloat16*)p)[i]);
}
static void st_el(void* p, cudaDataType_t t, size_t i, float v) {
    if (t == CUDA_R_32F) ((float*)p)[i] = v;
    else ((__nv_bfloat16*)p)[i] = __float2bfloat16_rn(v);
}

static cublasStatus_t gemm1(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha,
                            const void* A, cudaDataType_t At, int lda, const void* B, cudaDataType_t Bt, int ldb,
                            float beta, void* C, cudaDataType_t Ct, int ldc) {
    if (m < 0 || n < 0 || k < 0) return CUBLAS_STATUS_INVALID_VALUE;
    if (lda < (ta == CUBLAS_OP_N ? (m > 1 ? m : 1) : (k > 1 ? k : 1))) { fprintf(stderr, "emu gemm: lda\n"); return CUBLAS_STATUS_INVALID_VALUE; }
    if (ldb < (tb == CUBLAS_OP_N ? (k > 1 ? k : 1) : (n > 1 ? n : 1))) { fprintf(stderr, "emu gemm: ldb\n"); return CUBLAS_STATUS_INVALID_VALUE; }
    if (ldc < (m > 1 ? m : 1)) { fprintf(stderr, "emu gemm: ldc\n"); return CUBLAS_STATUS_INVALID_VALUE; }
    if (At != Bt) return CUBLAS_STATUS_NOT_SUPPORTED;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            float acc = 0.0f;
            for (int l = 0; l < k; l++) {
                float a = ld_el(A, At, ta == CUBLAS_OP_N ? (size_t)i + (size_t)l * lda : (size_t)l + (size_t)i * lda);
                float b = ld_el(B, Bt, tb == CUBLAS_OP_N ? (size_t)l + (size_t)j * ldb : (size_t)j + (size_t)l * ldb);
                acc = fmaf(a, b, acc);
            }
            size_t ci = (size_t)i + (size_t)j * ldc;
            float v = alpha * acc;
            if (beta != 0.0f) v += beta * ld_el(C, Ct, ci);
            st_el(C, Ct, ci, v);
        }
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void* alpha, const void* A, cudaDataType_t At, int lda, const void* B,
                            cudaDataType_t Bt, int ldb, const void* beta, void* C, cudaDataType_t Ct, int ldc,
                            cublasComputeType_t, cublasGemmAlgo_t) {
    emu_gemm_calls++;
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

// ---- the Ops table (host memory standing in for device memory)
static void* e_malloc(size_t b) { return calloc(1, b ? b : 1); }
static void e_free(void* p) { free(p); }
static void e_zero(void* p, size_t b) { memset(p, 0, b); }
static void e_copy(void* d, const void* s, size_t b) { memmove(d, s, b); }
static void e_act(float* h, const void* s, size_t n) {
    for (size_t i = 0; i < n; i++) h[i] = __bfloat162float(((const __nv_bfloat16*)s)[i]);
}
static void e_sync(void) {}

static Ops make_table() {
    Ops o;
    memset(&o, 0, sizeof(o));
    o.name = "cuda";
    o.act_bytes = 2;
    o.separate_compute_weights = 1;
    o.malloc = e_malloc; o.free = e_free; o.zero = e_zero; o.to_host = e_copy; o.to_device = e_copy;
    o.act_to_host_f32 = e_act; o.sync = e_sync;
    o.attention_forward = cuda_attention_forward;
    o.attention_backward = cuda_attention_backward;
    o.moe_router_forward = cuda_moe_router_forward;
    o.moe_balance_loss = cuda_moe_balance_loss;
    o.moe_router_backward = cuda_moe_router_backward;
    o.moe_dispatch = cuda_moe_dispatch;
    o.moe_gather = cuda_moe_gather;
    o.moe_gather_backward = cuda_moe_gather_backward;
    o.moe_experts_forward = cuda_moe_experts_forward;
    o.moe_experts_backward = cuda_moe_experts_backward;
    o.moe_combine_forward = cuda_moe_combine_forward;
    o.moe_combine_backward = cuda_moe_combine_backward;
    return o;
}
static Ops table = make_table();

extern "C" const Ops* ops_cuda_get(void) { return &table; }
extern "C" int ops_cuda_built(void) { return 1; }
extern "C" const char* ops_cuda_unavailable_reason(void) { return NULL; }
struct EmuReport { ~EmuReport() { fprintf(stderr, "emu: %ld kernel launches, %ld cublasGemmEx, %ld grouped GEMM calls\n", emu_launches, emu_gemm_calls, emu_grouped_calls); } } emu_report;
