// model/cuda/moe.cu: the MoE layer on the GPU (model/cpu/moe.c is the twin every op is tested against).
//
// Router. logits (N,E) = x w_router^T by one cuBLAS GEMM, bf16 inputs, fp32 accumulation and fp32 output (the
// products of bf16 values are exact in fp32, so this is the CPU's fp32 sgemm on the same values up to summation
// order). Then one warp per row: sigmoid in place, top-K of score + bias by K rounds of a warp argmax under the
// order (value descending, expert id ascending) -- the CPU's rule, ties to the lower id -- each round taking the
// best candidate strictly after the previous pick; the K picks sorted ascending; gates in double as on the CPU.
// Balance loss: per-row score sums (double, one warp per row), per-sequence expert counts (integer shared-memory
// histogram), P_i summed in double over row chunks then over the chunks in order, the loss per sequence by a
// fixed-tree block sum, the sum over sequences by one thread in order.
// Router backward: the per-row gradient in double/fp32 exactly as the CPU writes it (one warp per row), then the
// fp32 dscores is split into bf16 hi + lo (hi = bf16(ds), lo = bf16(ds - hi), together ~16 mantissa bits) so the
// two GEMMs run on tensor cores without losing the fp32 gradient: dx (bf16) += [hi | lo] (N,2E) [W; W] (2E,d) in one
// GEMM (one rounding of dx), dW_router (fp32) += hi^T x + lo^T x (two GEMMs, fp32 output).
// Dispatch: a stable counting sort entirely on the device: per-chunk expert histograms (chunks of 1024 choices,
// integer shared-memory atomics: counts do not depend on order), a per-expert exclusive scan over the chunks in
// chunk order, a block scan over experts for offsets (and load += counts), then one warp per chunk places its
// choices 32 at a time in (row, k) order (__match_any_sync ranks equal experts by lane) -- the CPU's plan exactly.
// Gather / gather backward / combine forward / combine backward: elementwise kernels, fp32 accumulation in the CPU's
// k order, one bf16 rounding per output; dgates by a warp dot product (fp32, fixed butterfly).
// Experts: cuBLAS's grouped GEMM takes the per-expert sizes on the host, so the forward copies the offsets to the
// host (one stream synchronisation per MoE layer) and the backward of the same layer reuses that copy (no
// synchronisation; a device check of the offsets against the forward's snapshot, offsets_to_host says how). Then
//   - the bf16-output GEMMs (h13, ye forward; dhact, dxe backward) go to cublasGemmGroupedBatchedEx (one call per
//     GEMM over all non-empty experts; pointer arrays on the device), falling back to a per-expert cublasGemmEx
//     loop if grouped GEMM is refused or the pointers are not aligned as it requires;
//   - the weight-gradient GEMMs (dw13, dw2 +=, fp32 output; cuBLAS's grouped GEMM has no bf16-input / fp32-output
//     form) are one launch each over all experts on tensor cores (expert_dw_wmma_kernel: WMMA bf16 16x16x16, fp32
//     accumulate, offsets read on the device). TRAIN_MOE_EXPERT_DW=kernel uses the fp32 CUDA-core kernel
//     (expert_dw_kernel), TRAIN_MOE_EXPERT_DW=loop the per-expert cublasGemmEx loop (~2 x 384 calls per layer).
//   TRAIN_MOE_EXPERT_GEMM=loop forces the per-expert loop for every expert GEMM, weight gradients included.
//   SwiGLU (forward and backward) runs once over all routed rows, by dense.cu's kernels (cuda_swiglu_*).
// Host synchronisations inside a layer's forward / backward (single rank):
//   - forward: one, offsets_to_host (the grouped GEMMs' sizes). It stays: removing it needs grouped GEMMs that read
//     the sizes on the device -- our own kernels for the four data GEMMs in place of cuBLAS's tuned ones, a trade
//     to measure on a GPU first;
//   - backward: none (the forward's host offsets; the weight gradients read the offsets on the device);
//   - only when a buffer grows (the first step, or a larger batch): cuda_scratch, the pointer-array pool and the
//     offsets mirrors (allocation waits for queued work that may use the old buffer);
//   - with --ep > 1, model/experts.c's ep_plan reads the offsets (to_host) and exchanges the counts between the
//     ranks once per layer forward (the all-to-all sizes are needed on the host by MPI / NCCL), and the row
//     exchanges synchronise when they are staged through the host (no NCCL).
//   --profile adds one per profiled region (model_prof), by design.
// Every GEMM here is row-major, through gemm_bf16 (cuda_common.cuh) or, for the experts' grouped GEMMs, gemm_many
// with the same convention.
// Determinism: every kernel here is deterministic (no float atomics; integer atomics only for counts); cuBLAS GEMMs
// are deterministic for a fixed configuration and stream.
#include "cuda_common.cuh"

#include <limits.h>
#include <mma.h>

using namespace nvcuda;

// ----------------------------------------------------------------------------
// the experts' GEMMs: many row-major GEMMs (gemm_bf16's convention, cuda_common.cuh), grouped when cuBLAS can

// one row-major GEMM of a group: C (M,N) = op(A) op(B) + beta C, as gemm_bf16's arguments
typedef struct {
    int ta, tb, M, N, K, lda, ldb, ldc;
    const void* A;
    const void* B;
    void* C;
} GemmProb;

static GemmProb prob(int ta, int tb, int M, int N, int K, int lda, int ldb, int ldc, const void* A, const void* B,
                     void* C) {
    GemmProb g;
    g.ta = ta; g.tb = tb; g.M = M; g.N = N; g.K = K; g.lda = lda; g.ldb = ldb; g.ldc = ldc;
    g.A = A; g.B = B; g.C = C;
    return g;
}

static int expert_gemm_loop_forced(void) {
    const char* v = getenv("TRAIN_MOE_EXPERT_GEMM");
    return v && strcmp(v, "loop") == 0;
}

static int grouped_gemm_ok = 1;  // cleared (with one note on stderr) the first time cuBLAS refuses grouped GEMM

// Pointer arrays for the grouped GEMMs: pinned host staging and its device copy, a bump allocator. A region is
// written on the host, copied to the device asynchronously and read by the GEMM later in stream order; it is not
// handed out again until this file has synchronised the stream (offsets_to_host calls moe_ptr_reset), when every
// earlier copy is complete. The backward does not synchronise, so all the layers' backward calls between two
// forwards take fresh regions: the pool grows (one stream synchronisation) until it holds a whole backward pass.
static void** moe_ptr_host = NULL;
static void** moe_ptr_dev = NULL;
static size_t moe_ptr_cap = 0;   // pointers in the pool
static size_t moe_ptr_used = 0;  // pointers handed out since the last synchronisation

static void moe_ptr_reset(void) { moe_ptr_used = 0; }

// n pointers of host staging (returned) and their device twin (*dev)
static void** moe_ptr_take(size_t n, void*** dev) {
    if (moe_ptr_used + n > moe_ptr_cap) {
        cudaCheck(cudaStreamSynchronize(cuda_stream));  // every copy out of the old pool is done
        size_t want = moe_ptr_used + n;
        if (want < 2 * moe_ptr_cap) want = 2 * moe_ptr_cap;
        if (moe_ptr_host) cudaCheck(cudaFreeHost(moe_ptr_host));
        if (moe_ptr_dev) cudaCheck(cudaFree(moe_ptr_dev));
        cudaCheck(cudaMallocHost((void**)&moe_ptr_host, want * sizeof(void*)));
        cudaCheck(cudaMalloc((void**)&moe_ptr_dev, want * sizeof(void*)));
        moe_ptr_cap = want;
        moe_ptr_used = 0;
    }
    void** h = moe_ptr_host + moe_ptr_used;
    *dev = moe_ptr_dev + moe_ptr_used;
    moe_ptr_used += n;
    return h;
}

// cuBLAS reads the grouped GEMM's matrices through device pointer arrays, so it cannot pick kernels by their
// alignment; we take the grouped path only when every matrix is 16-byte aligned with row strides a multiple of 8
// elements (cuBLAS's documented rules ask less), else the per-expert loop.
static int grouped_aligned(const void* p, int ld) { return ((uintptr_t)p & 15) == 0 && ld % 8 == 0; }

// Runs count GEMMs (bf16 A and B; C of type Ct), grouped when possible (Ct bf16 only), else one cublasGemmEx each.
static void gemm_many(const GemmProb* g, int count, float beta, cudaDataType_t Ct) {
    if (count <= 0) return;
    int grouped = Ct == CUDA_R_16BF && grouped_gemm_ok && !expert_gemm_loop_forced();
    for (int i = 0; grouped && i < count; i++)
        if (!grouped_aligned(g[i].A, g[i].lda) || !grouped_aligned(g[i].B, g[i].ldb) ||
            !grouped_aligned(g[i].C, g[i].ldc) || g[i].K <= 0)
            grouped = 0;
    if (grouped) {
        void** dp;
        void** hp = moe_ptr_take((size_t)3 * count, &dp);
        cublasOperation_t* opa = (cublasOperation_t*)xmalloc((size_t)count * 2 * sizeof(cublasOperation_t));
        cublasOperation_t* opb = opa + count;
        int* dims = (int*)xmalloc((size_t)count * 7 * sizeof(int));
        int *m = dims, *n = dims + count, *k = dims + 2 * count, *lda = dims + 3 * count, *ldb = dims + 4 * count,
            *ldc = dims + 5 * count, *gs = dims + 6 * count;
        float* ab = (float*)xmalloc((size_t)count * 2 * sizeof(float));
        for (int i = 0; i < count; i++) {
            // column-major: C^T = op(B)^T op(A)^T, the swap gemm_bf16 makes
            opa[i] = cublas_op(g[i].tb);
            opb[i] = cublas_op(g[i].ta);
            m[i] = g[i].N;
            n[i] = g[i].M;
            k[i] = g[i].K;
            lda[i] = g[i].ldb;
            ldb[i] = g[i].lda;
            ldc[i] = g[i].ldc;
            gs[i] = 1;
            ab[i] = 1.0f;
            ab[count + i] = beta;
            hp[i] = (void*)g[i].B;
            hp[count + i] = (void*)g[i].A;
            hp[2 * count + i] = g[i].C;
        }
        cudaCheck(cudaMemcpyAsync(dp, hp, (size_t)3 * count * sizeof(void*), cudaMemcpyHostToDevice, cuda_stream));
        cublasStatus_t st = cublasGemmGroupedBatchedEx(
            cuda_cublas, opa, opb, m, n, k, ab, (const void* const*)dp, CUDA_R_16BF, lda,
            (const void* const*)(dp + count), CUDA_R_16BF, ldb, ab + count, (void* const*)(dp + 2 * count), Ct, ldc,
            count, gs, CUBLAS_COMPUTE_32F);
        free(opa);
        free(dims);
        free(ab);
        if (st == CUBLAS_STATUS_SUCCESS) return;
        fprintf(stderr, "note: cublasGemmGroupedBatchedEx refused (%s); using a per-expert cublasGemmEx loop\n",
                cublasGetStatusString(st));
        grouped_gemm_ok = 0;
    }
    for (int i = 0; i < count; i++)
        gemm_bf16(g[i].ta, g[i].tb, g[i].M, g[i].N, g[i].K, g[i].A, g[i].lda, g[i].B, g[i].ldb, beta, g[i].C, Ct,
                  g[i].ldc);
}

// ----------------------------------------------------------------------------
// router forward

#define ROUTER_WARPS 8

__device__ __forceinline__ bool topk_better(float v, int e, float bv, int be) { return v > bv || (v == bv && e < be); }

__global__ void router_topk_kernel(float* __restrict__ scores, int* __restrict__ sel, float* __restrict__ gates,
                                   const float* __restrict__ bias, int N, int E, int K, float routed_scale) {
    __shared__ int chosen_s[ROUTER_WARPS][64];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n = blockIdx.x * ROUTER_WARPS + warp;
    if (n >= N) return;  // whole warps leave together
    float* s = scores + (size_t)n * E;
    for (int e = lane; e < E; e += 32) s[e] = 1.0f / (1.0f + expf(-s[e]));
    // each lane reads back only the scores it wrote: no synchronisation needed before the selection
    float pv = INFINITY;  // the previous pick; candidates come strictly after it in the order
    int pe = -1;
    for (int k = 0; k < K; k++) {
        float bv = -INFINITY;
        int be = INT_MAX;
        for (int e = lane; e < E; e += 32) {
            float v = s[e] + bias[e];
            if (v != v) v = -INFINITY;  // NaN: last, so K distinct experts are always found
            const bool after = v < pv || (v == pv && e > pe);
            if (after && topk_better(v, e, bv, be)) { bv = v; be = e; }
        }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, off);
            const int oe = __shfl_xor_sync(0xffffffffu, be, off);
            if (topk_better(ov, oe, bv, be)) { bv = ov; be = oe; }
        }
        if (lane == 0) chosen_s[warp][k] = be;
        pv = bv;
        pe = be;
    }
    __syncwarp();  // chosen_s and every lane's scores visible to lane 0
    if (lane == 0) {
        int* ch = chosen_s[warp];
        for (int i = 1; i < K; i++)
            for (int j = i; j > 0 && ch[j - 1] > ch[j]; j--) { int t = ch[j]; ch[j] = ch[j - 1]; ch[j - 1] = t; }
        double sum = 0.0;
        for (int k = 0; k < K; k++) sum += s[ch[k]];
        for (int k = 0; k < K; k++) {
            sel[(size_t)n * K + k] = ch[k];
            gates[(size_t)n * K + k] = (float)((double)(routed_scale * s[ch[k]]) / sum);  // as the CPU rounds it
        }
    }
}

extern "C" void cuda_moe_router_forward(float* scores, int* sel, float* gates, const void* x, const void* w_router,
                                        const float* bias, MoeShape shape, float routed_scale) {
    int N = shape.B * shape.T, d = shape.d, E = shape.E, K = shape.K;
    if (N <= 0) return;
    if (K < 1 || K > 64 || K > E) fatal("cuda_moe_router_forward: top_k %d unsupported (1..min(64, E=%d))", K, E);
    gemm_bf16(0, 1, N, E, d, x, d, w_router, d, 0.0f, scores, CUDA_R_32F, E);
    router_topk_kernel<<<ceil_div_u(N, ROUTER_WARPS), ROUTER_WARPS * 32, 0, cuda_stream>>>(scores, sel, gates, bias, N,
                                                                                         E, K, routed_scale);
    cudaCheckLaunch();
}

// ----------------------------------------------------------------------------
// balance loss

#define BAL_CHUNK 128  // rows per block of the P_i partial sums

// rowsum[n] = sum_e scores[n, e] in double, one warp per row
__global__ void score_rowsum_kernel(double* __restrict__ rowsum, const float* __restrict__ scores, int N, int E) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n = blockIdx.x * (blockDim.x >> 5) + warp;
    if (n >= N) return;
    const float* s = scores + (size_t)n * E;
    double acc = 0.0;
    for (int e = lane; e < E; e += 32) acc += (double)s[e];
    acc = warp_sum(acc);
    if (lane == 0) rowsum[n] = acc;
}

// counts[b, e] = choices of expert e in sequence b (one block per sequence; dynamic shared memory E ints)
__global__ void seq_counts_kernel(int* __restrict__ counts, const int* __restrict__ sel, int T, int E, int K) {
    extern __shared__ int cnt_s[];
    const int b = blockIdx.x;
    for (int e = threadIdx.x; e < E; e += blockDim.x) cnt_s[e] = 0;
    __syncthreads();
    const int* sb = sel + (size_t)b * T * K;
    for (size_t i = threadIdx.x; i < (size_t)T * K; i += blockDim.x) {
        const int e = sb[i];
        if (e >= 0 && e < E) atomicAdd(&cnt_s[e], 1);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x) counts[(size_t)b * E + e] = cnt_s[e];
}

// Ppart[b, c, e] = sum over the rows of chunk c of sequence b of s_e / rowsum   (grid (chunks, B))
__global__ void bal_p_kernel(double* __restrict__ Ppart, const float* __restrict__ scores,
                             const double* __restrict__ rowsum, int T, int E) {
    const int c = blockIdx.x, b = blockIdx.y, nc = gridDim.x;
    const int t0 = c * BAL_CHUNK, t1 = min(T, t0 + BAL_CHUNK);
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        double acc = 0.0;
        for (int t = t0; t < t1; t++) {
            const size_t n = (size_t)b * T + t;
            acc += (double)scores[n * E + e] / rowsum[n];
        }
        Ppart[((size_t)b * nc + c) * E + e] = acc;
    }
}

// lb[b] = sum_e f_e P_e for sequence b (one block each)
__global__ void bal_seq_kernel(double* __restrict__ lb, const double* __restrict__ Ppart, const int* __restrict__ counts,
                               int T, int E, int K, int nc) {
    const int b = blockIdx.x;
    const double fscale = (double)E / ((double)K * T);
    double acc = 0.0;
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        double P = 0.0;
        for (int c = 0; c < nc; c++) P += Ppart[((size_t)b * nc + c) * E + e];
        acc += (fscale * counts[(size_t)b * E + e]) * (P / T);
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) lb[b] = acc;
}

__global__ void bal_final_kernel(float* aux, const double* __restrict__ lb, int B, float alpha) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    double total = 0.0;
    for (int b = 0; b < B; b++) total += alpha * lb[b];
    *aux += (float)(total / B);
}

static CudaScratch moe_s_rowsum, moe_s_counts, moe_s_ppart, moe_s_lb, moe_s_ds2, moe_s_w2;

static void seq_counts(int* counts, const int* sel, int B, int T, int E, int K) {
    if ((size_t)E * sizeof(int) > 48 * 1024) fatal("moe: n_experts %d too large for the shared-memory histogram", E);
    seq_counts_kernel<<<B, 256, (size_t)E * sizeof(int), cuda_stream>>>(counts, sel, T, E, K);
    cudaCheckLaunch();
}

extern "C" void cuda_moe_balance_loss(float* aux, const float* scores, const int* sel, MoeShape shape, float alpha) {
    int B = shape.B, T = shape.T, E = shape.E, K = shape.K;
    if (B <= 0 || T <= 0) return;
    const int N = B * T, nc = (T + BAL_CHUNK - 1) / BAL_CHUNK;
    double* rowsum = (double*)cuda_scratch(&moe_s_rowsum, (size_t)N * sizeof(double));
    int* counts = (int*)cuda_scratch(&moe_s_counts, (size_t)B * E * sizeof(int));
    double* Ppart = (double*)cuda_scratch(&moe_s_ppart, (size_t)B * nc * E * sizeof(double));
    double* lb = (double*)cuda_scratch(&moe_s_lb, (size_t)B * sizeof(double));
    score_rowsum_kernel<<<ceil_div_u(N, 8), 256, 0, cuda_stream>>>(rowsum, scores, N, E);
    cudaCheckLaunch();
    seq_counts(counts, sel, B, T, E, K);
    bal_p_kernel<<<dim3(nc, B), 256, 0, cuda_stream>>>(Ppart, scores, rowsum, T, E);
    cudaCheckLaunch();
    bal_seq_kernel<<<B, 256, 0, cuda_stream>>>(lb, Ppart, counts, T, E, K, nc);
    cudaCheckLaunch();
    bal_final_kernel<<<1, 32, 0, cuda_stream>>>(aux, lb, B, alpha);
    cudaCheckLaunch();
}

// ----------------------------------------------------------------------------
// router backward

// dscores for row n, exactly the CPU's expressions (one warp per row)
__global__ void router_bwd_rows_kernel(float* __restrict__ dscores, const float* __restrict__ dgates,
                                       const float* __restrict__ scores, const int* __restrict__ sel,
                                       const int* __restrict__ counts, int N, int T, int E, int K, double fscale,
                                       double bal, float routed_scale) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n = blockIdx.x * (blockDim.x >> 5) + warp;
    if (n >= N) return;
    const int b = n / T;
    const float* s = scores + (size_t)n * E;
    float* ds = dscores + (size_t)n * E;
    const int* cnt = counts + (size_t)b * E;
    // balance loss: d/ds_j of sum_i f_i s_i / S = f_j / S - (sum_i f_i s_i) / S^2
    double S = 0.0, fs = 0.0;
    for (int e = lane; e < E; e += 32) {
        S += s[e];
        fs += fscale * cnt[e] * s[e];
    }
    S = warp_sum(S);
    fs = warp_sum(fs);
    for (int e = lane; e < E; e += 32) ds[e] = (float)(bal * (fscale * cnt[e] / S - fs / (S * S)));
    __syncwarp();
    if (lane == 0) {
        // gates g_k = c s_k / S_sel: ds_j += (c / S_sel) (dg_j - sum_k dg_k s_k / S_sel)
        const int* ch = sel + (size_t)n * K;
        const float* dg = dgates + (size_t)n * K;
        double Ssel = 0.0, dgs = 0.0;
        for (int k = 0; k < K; k++) {
            Ssel += s[ch[k]];
            dgs += (double)dg[k] * s[ch[k]];
        }
        for (int k = 0; k < K; k++) ds[ch[k]] += (float)(routed_scale / Ssel * (dg[k] - dgs / Ssel));
    }
    __syncwarp();
    // through the sigmoid
    for (int e = lane; e < E; e += 32) ds[e] *= s[e] * (1.0f - s[e]);
}

// ds2 (N, 2E) bf16: [:, :E] = hi = bf16(ds), [:, E:] = lo = bf16(ds - hi)
__global__ void split_hi_lo_kernel(bf16* __restrict__ ds2, const float* __restrict__ ds, int N, int E) {
    GRID_STRIDE_LOOP(i, (size_t)N * E) {
        const size_t n = i / E, e = i - n * E;
        const float v = ds[i];
        const bf16 hi = __float2bfloat16_rn(v);
        const bf16 lo = __float2bfloat16_rn(v - __bfloat162float(hi));
        ds2[n * 2 * E + e] = hi;
        ds2[n * 2 * E + E + e] = lo;
    }
}

extern "C" void cuda_moe_router_backward(void* dx, float* dw_router, float* dscores, const float* dgates,
                                         const float* scores, const int* sel, const void* x, const void* w_router,
                                         MoeShape shape, float routed_scale, BalanceGrad bg) {
    int B = shape.B, T = shape.T, d = shape.d, E = shape.E, K = shape.K;
    if (B <= 0 || T <= 0) return;
    const int N = B * T;
    int* counts = (int*)cuda_scratch(&moe_s_counts, (size_t)B * E * sizeof(int));
    seq_counts(counts, sel, B, T, E, K);
    const double fscale = bg.f_scale, bal = bg.grad;
    router_bwd_rows_kernel<<<ceil_div_u(N, 8), 256, 0, cuda_stream>>>(dscores, dgates, scores, sel, counts, N, T, E, K,
                                                                      fscale, bal, routed_scale);
    cudaCheckLaunch();
    bf16* ds2 = (bf16*)cuda_scratch(&moe_s_ds2, (size_t)N * 2 * E * sizeof(bf16));
    bf16* w2 = (bf16*)cuda_scratch(&moe_s_w2, (size_t)2 * E * d * sizeof(bf16));
    split_hi_lo_kernel<<<grid_for((size_t)N * E, 256), 256, 0, cuda_stream>>>(ds2, dscores, N, E);
    cudaCheckLaunch();
    const size_t wbytes = (size_t)E * d * sizeof(bf16);
    cudaCheck(cudaMemcpyAsync(w2, w_router, wbytes, cudaMemcpyDeviceToDevice, cuda_stream));
    cudaCheck(cudaMemcpyAsync((char*)w2 + wbytes, w_router, wbytes, cudaMemcpyDeviceToDevice, cuda_stream));
    // dx (N,d) += [hi | lo] (N,2E) [W; W] (2E,d)
    gemm_bf16(0, 0, N, d, 2 * E, ds2, 2 * E, w2, d, 1.0f, dx, CUDA_R_16BF, d);
    // dW (E,d) += hi^T x + lo^T x
    gemm_bf16(1, 0, E, d, N, ds2, 2 * E, x, d, 1.0f, dw_router, CUDA_R_32F, d);
    gemm_bf16(1, 0, E, d, N, ds2 + E, 2 * E, x, d, 1.0f, dw_router, CUDA_R_32F, d);
}

// ----------------------------------------------------------------------------
// dispatch

#define DISPATCH_CHUNK 1024  // choices per chunk (a multiple of 32)

// hist[c, e] = choices of expert e in chunk c
__global__ void dispatch_hist_kernel(int* __restrict__ hist, const int* __restrict__ sel, int NK, int E) {
    extern __shared__ int h_s[];
    const int c = blockIdx.x;
    for (int e = threadIdx.x; e < E; e += blockDim.x) h_s[e] = 0;
    __syncthreads();
    const int i0 = c * DISPATCH_CHUNK, i1 = min(NK, i0 + DISPATCH_CHUNK);
    for (int i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
        const int e = sel[i];
        if (e >= 0 && e < E) atomicAdd(&h_s[e], 1);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x) hist[(size_t)c * E + e] = h_s[e];
}

// per expert: hist[c, e] <- choices of e in chunks before c (exclusive, chunk order); cnt[e] = total
__global__ void dispatch_colscan_kernel(int* __restrict__ hist, int* __restrict__ cnt, int nchunks, int E) {
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= E) return;
    int run = 0;
    for (int c = 0; c < nchunks; c++) {
        const int v = hist[(size_t)c * E + e];
        hist[(size_t)c * E + e] = run;
        run += v;
    }
    cnt[e] = run;
}

// offsets[0] = 0, offsets[e+1] = offsets[e] + cnt[e]; load[e] += cnt[e]. One block of 1024 threads.
__global__ void dispatch_offsets_kernel(int* __restrict__ offsets, float* __restrict__ load, const int* __restrict__ cnt,
                                        int E) {
    __shared__ int buf[1024];
    __shared__ int carry;
    const int tid = threadIdx.x;
    if (tid == 0) {
        carry = 0;
        offsets[0] = 0;
    }
    for (int base = 0; base < E; base += 1024) {
        const int e = base + tid;
        const int v = e < E ? cnt[e] : 0;
        buf[tid] = v;
        __syncthreads();
        for (int off = 1; off < 1024; off <<= 1) {  // inclusive Hillis-Steele scan
            const int t = tid >= off ? buf[tid - off] : 0;
            __syncthreads();
            buf[tid] += t;
            __syncthreads();
        }
        if (e < E) {
            offsets[e + 1] = carry + buf[tid];
            load[e] += (float)v;
        }
        __syncthreads();  // every thread has read carry
        if (tid == 1023) carry += buf[1023];
        __syncthreads();
    }
}

// one warp per chunk: place the chunk's choices in (row, k) order
__global__ void dispatch_place_kernel(int* __restrict__ row_of, int* __restrict__ token_of,
                                      const int* __restrict__ offsets, const int* __restrict__ hist,
                                      const int* __restrict__ sel, int NK, int K, int E) {
    extern __shared__ int base_s[];
    const int c = blockIdx.x, lane = threadIdx.x;
    for (int e = lane; e < E; e += 32) base_s[e] = offsets[e] + hist[(size_t)c * E + e];
    __syncwarp();
    const int i0 = c * DISPATCH_CHUNK;
    for (int step = 0; step < DISPATCH_CHUNK; step += 32) {
        const int i = i0 + step + lane;
        int e = i < NK ? sel[i] : -1;
        if (e < 0 || e >= E) e = -1;
        const unsigned same = __match_any_sync(0xffffffffu, e);
        const int rank = __popc(same & ((1u << lane) - 1u));
        if (e >= 0) {
            const int pos = base_s[e] + rank;
            row_of[i] = pos;
            token_of[pos] = i / K;
        }
        __syncwarp();  // every lane has read base_s before it moves on
        if (e >= 0 && rank == 0) base_s[e] += __popc(same);
        __syncwarp();
    }
}

static CudaScratch moe_s_hist, moe_s_cnt;

extern "C" void cuda_moe_dispatch(int* offsets, int* row_of, int* token_of, float* load, const int* sel,
                                  MoeShape shape) {
    int N = shape.B * shape.T, K = shape.K, E = shape.E;
    const int NK = N * K;
    const int nchunks = (NK + DISPATCH_CHUNK - 1) / DISPATCH_CHUNK;
    if ((size_t)E * sizeof(int) > 48 * 1024) fatal("cuda_moe_dispatch: n_experts %d too large", E);
    int* hist = (int*)cuda_scratch(&moe_s_hist, (size_t)(nchunks > 0 ? nchunks : 1) * E * sizeof(int));
    int* cnt = (int*)cuda_scratch(&moe_s_cnt, (size_t)E * sizeof(int));
    const size_t smem = (size_t)E * sizeof(int);
    if (nchunks > 0) {
        dispatch_hist_kernel<<<nchunks, 256, smem, cuda_stream>>>(hist, sel, NK, E);
        cudaCheckLaunch();
    }
    dispatch_colscan_kernel<<<ceil_div_u(E, 128), 128, 0, cuda_stream>>>(hist, cnt, nchunks, E);
    cudaCheckLaunch();
    dispatch_offsets_kernel<<<1, 1024, 0, cuda_stream>>>(offsets, load, cnt, E);
    cudaCheckLaunch();
    if (nchunks > 0) {
        dispatch_place_kernel<<<nchunks, 32, smem, cuda_stream>>>(row_of, token_of, offsets, hist, sel, NK, K, E);
        cudaCheckLaunch();
    }
}

// ----------------------------------------------------------------------------
// gather, combine

static int aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }

// dst[i] = src[idx[i]] for rows of d bf16; vec: 8 elements (16 bytes) at a time
template <bool VEC>
__global__ void gather_rows_kernel(bf16* __restrict__ dst, const bf16* __restrict__ src, const int* __restrict__ idx,
                                   int rows, int d) {
    const int w = VEC ? d / 8 : d;
    GRID_STRIDE_LOOP(u, (size_t)rows * w) {
        const size_t i = u / w, c = u - i * w;
        const size_t from = (size_t)idx[i];
        if (VEC) reinterpret_cast<int4*>(dst)[i * w + c] = reinterpret_cast<const int4*>(src)[from * w + c];
        else dst[i * d + c] = src[from * d + c];
    }
}

extern "C" void cuda_moe_gather(void* xe, const void* x, const int* token_of, int NK, int d) {
    if (NK <= 0 || d <= 0) return;
    if (d % 8 == 0 && aligned16(xe) && aligned16(x)) {
        gather_rows_kernel<true><<<grid_for((size_t)NK * d / 8, 256), 256, 0, cuda_stream>>>((bf16*)xe, (const bf16*)x,
                                                                                           token_of, NK, d);
    } else {
        gather_rows_kernel<false><<<grid_for((size_t)NK * d, 256), 256, 0, cuda_stream>>>((bf16*)xe, (const bf16*)x,
                                                                                        token_of, NK, d);
    }
    cudaCheckLaunch();
}

// dx[n, c] += sum_k dxe[row_of[n, k], c]   (fp32 sum in k order, one rounding)
__global__ void gather_bwd_kernel(bf16* __restrict__ dx, const bf16* __restrict__ dxe, const int* __restrict__ row_of,
                                  int N, int K, int d) {
    GRID_STRIDE_LOOP(u, (size_t)N * d) {
        const size_t n = u / d, c = u - n * d;
        float acc = __bfloat162float(dx[u]);
        for (int k = 0; k < K; k++) acc += __bfloat162float(dxe[(size_t)row_of[n * K + k] * d + c]);
        dx[u] = __float2bfloat16_rn(acc);
    }
}

extern "C" void cuda_moe_gather_backward(void* dx, const void* dxe, const int* row_of, MoeShape shape) {
    int N = shape.B * shape.T, K = shape.K, d = shape.d;
    if (N <= 0 || d <= 0) return;
    gather_bwd_kernel<<<grid_for((size_t)N * d, 256), 256, 0, cuda_stream>>>((bf16*)dx, (const bf16*)dxe, row_of, N, K,
                                                                             d);
    cudaCheckLaunch();
}

// y[n, c] += sum_k gates[n, k] ye[row_of[n, k], c]
__global__ void combine_fwd_kernel(bf16* __restrict__ y, const bf16* __restrict__ ye, const float* __restrict__ gates,
                                   const int* __restrict__ row_of, int N, int K, int d) {
    GRID_STRIDE_LOOP(u, (size_t)N * d) {
        const size_t n = u / d, c = u - n * d;
        float acc = __bfloat162float(y[u]);
        for (int k = 0; k < K; k++)
            acc = fmaf(gates[n * K + k], __bfloat162float(ye[(size_t)row_of[n * K + k] * d + c]), acc);
        y[u] = __float2bfloat16_rn(acc);
    }
}

extern "C" void cuda_moe_combine_forward(void* y, const void* ye, const float* gates, const int* row_of,
                                         MoeShape shape) {
    int N = shape.B * shape.T, K = shape.K, d = shape.d;
    if (N <= 0 || d <= 0) return;
    combine_fwd_kernel<<<grid_for((size_t)N * d, 256), 256, 0, cuda_stream>>>((bf16*)y, (const bf16*)ye, gates, row_of,
                                                                              N, K, d);
    cudaCheckLaunch();
}

// one warp per (n, k): dye[row_of[n,k]] = gates[n,k] dy[n]; dgates[n,k] = dy[n] . ye[row_of[n,k]]
__global__ void combine_bwd_kernel(bf16* __restrict__ dye, float* __restrict__ dgates, const bf16* __restrict__ dy,
                                   const bf16* __restrict__ ye, const float* __restrict__ gates,
                                   const int* __restrict__ row_of, int NK, int K, int d) {
    const int lane = threadIdx.x & 31;
    const size_t w = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (w >= (size_t)NK) return;
    const size_t n = w / K;
    const size_t r = (size_t)row_of[w];
    const float g = gates[w];
    const bf16* up = dy + n * d;
    const bf16* src = ye + r * d;
    bf16* dst = dye + r * d;
    float dot = 0.0f;
    for (int c = lane; c < d; c += 32) {
        const float u = __bfloat162float(up[c]);
        dst[c] = __float2bfloat16_rn(g * u);
        dot = fmaf(u, __bfloat162float(src[c]), dot);
    }
    dot = warp_sum(dot);
    if (lane == 0) dgates[w] = dot;
}

extern "C" void cuda_moe_combine_backward(void* dye, float* dgates, const void* dy, const void* ye, const float* gates,
                                          const int* row_of, MoeShape shape) {
    int N = shape.B * shape.T, K = shape.K, d = shape.d;
    const size_t NK = (size_t)N * K;
    if (NK == 0) return;
    combine_bwd_kernel<<<ceil_div_u(NK, 8), 256, 0, cuda_stream>>>((bf16*)dye, dgates, (const bf16*)dy, (const bf16*)ye,
                                                                   gates, row_of, (int)NK, K, d);
    cudaCheckLaunch();
}

// ----------------------------------------------------------------------------
// experts

// The expert offsets on the host, which cuBLAS's grouped GEMM needs for its per-expert sizes. The forward copies
// them (one stream synchronisation per MoE layer) into a pinned buffer kept per device offsets buffer (one per
// layer), with a device snapshot beside it; the next backward on the same buffer (the same layer: the model runs
// each layer's backward once after its forward) reuses that host copy without synchronising, once, and a kernel
// compares the device offsets with the snapshot: a difference (offsets changed between a forward and its
// backward -- the model never does this) sets a flag that the next forward's synchronisation finds, and the run
// stops there with an error. A backward with no forward on its buffer since the last backward (a buffer freed and
// allocated again, an op called alone) copies the offsets itself (one synchronisation).
typedef struct {
    const int* dev;  // the device offsets this entry mirrors
    int E;
    int* host;       // pinned (E + 1)
    int* snap;       // device (E + 1): the offsets as the forward read them
    int armed;       // 1: read by a forward, not yet used by a backward
} OffsetsMirror;

static OffsetsMirror* moe_mirrors = NULL;
static int moe_mirrors_n = 0;
static int* moe_stale_dev = NULL;   // set to 1 by offsets_check_kernel on a mismatch
static int* moe_stale_host = NULL;  // pinned

static OffsetsMirror* mirror_find(const int* offsets, int E) {
    for (int i = 0; i < moe_mirrors_n; i++)
        if (moe_mirrors[i].dev == offsets && moe_mirrors[i].E == E) return &moe_mirrors[i];
    return NULL;
}

__global__ void offsets_check_kernel(int* stale, const int* __restrict__ offsets, const int* __restrict__ snap, int n) {
    GRID_STRIDE_LOOP(i, n)
        if (offsets[i] != snap[i]) *stale = 1;  // every writer writes 1: the order does not matter
}

// copies the offsets to the host and synchronises; returns the host copy (valid until the next call for them).
// arm: 1 from the forward (the next backward on these offsets may reuse the copy), 0 from a backward
static const int* offsets_to_host(const int* offsets, int E, int arm) {
    OffsetsMirror* m = mirror_find(offsets, E);
    if (!m) {
        cudaCheck(cudaStreamSynchronize(cuda_stream));
        if (!moe_stale_dev) {
            cudaCheck(cudaMalloc((void**)&moe_stale_dev, sizeof(int)));
            cudaCheck(cudaMemsetAsync(moe_stale_dev, 0, sizeof(int), cuda_stream));
            cudaCheck(cudaMallocHost((void**)&moe_stale_host, sizeof(int)));
        }
        moe_mirrors = (OffsetsMirror*)realloc(moe_mirrors, (size_t)(moe_mirrors_n + 1) * sizeof(OffsetsMirror));
        if (!moe_mirrors) fatal("moe experts: out of host memory");
        m = &moe_mirrors[moe_mirrors_n++];
        m->dev = offsets;
        m->E = E;
        cudaCheck(cudaMallocHost((void**)&m->host, (size_t)(E + 1) * sizeof(int)));
        cudaCheck(cudaMalloc((void**)&m->snap, (size_t)(E + 1) * sizeof(int)));
    }
    m->armed = arm;
    cudaCheck(cudaMemcpyAsync(m->host, offsets, (size_t)(E + 1) * sizeof(int), cudaMemcpyDeviceToHost, cuda_stream));
    cudaCheck(cudaMemcpyAsync(m->snap, offsets, (size_t)(E + 1) * sizeof(int), cudaMemcpyDeviceToDevice,
                              cuda_stream));
    cudaCheck(cudaMemcpyAsync(moe_stale_host, moe_stale_dev, sizeof(int), cudaMemcpyDeviceToHost, cuda_stream));
    cudaCheck(cudaStreamSynchronize(cuda_stream));
    moe_ptr_reset();  // every earlier copy out of the pointer staging is complete
    if (*moe_stale_host)
        fatal("moe experts: a backward ran on expert offsets that changed after its layer's forward read them");
    const int* o = m->host;
    if (o[0] < 0) fatal("moe experts: offsets[0] = %d", o[0]);
    for (int e = 0; e < E; e++)
        if (o[e + 1] < o[e]) fatal("moe experts: offsets not monotone at expert %d (%d > %d)", e, o[e], o[e + 1]);
    return o;
}

// the backward's host offsets: its forward's copy (checked on the device, no synchronisation), else a fresh one
static const int* offsets_for_backward(const int* offsets, int E) {
    OffsetsMirror* m = mirror_find(offsets, E);
    if (!m || !m->armed) return offsets_to_host(offsets, E, 0);
    m->armed = 0;
    offsets_check_kernel<<<1, 256, 0, cuda_stream>>>(moe_stale_dev, offsets, m->snap, E + 1);
    cudaCheckLaunch();
    return m->host;
}

extern "C" void cuda_moe_experts_forward(void* ye, void* h13, void* hact, const void* xe, const void* w13,
                                         const void* w2, const int* offsets, int E, int d, int f) {
    if (E <= 0) return;
    const int* off = offsets_to_host(offsets, E, 1);
    const bf16 *X = (const bf16*)xe, *W13 = (const bf16*)w13, *W2 = (const bf16*)w2;
    bf16 *H13 = (bf16*)h13, *HA = (bf16*)hact, *Y = (bf16*)ye;
    GemmProb* g1 = (GemmProb*)xmalloc((size_t)E * sizeof(GemmProb));
    GemmProb* g2 = (GemmProb*)xmalloc((size_t)E * sizeof(GemmProb));
    int cnt = 0;
    for (int e = 0; e < E; e++) {
        const int r0 = off[e], n = off[e + 1] - r0;
        if (n == 0) continue;
        // h13 (n,2f) = xe (n,d) W13[e]^T ; ye (n,d) = hact (n,f) W2[e]^T
        g1[cnt] = prob(0, 1, n, 2 * f, d, d, d, 2 * f, X + (size_t)r0 * d, W13 + (size_t)e * 2 * f * d,
                       H13 + (size_t)r0 * 2 * f);
        g2[cnt] = prob(0, 1, n, d, f, f, f, d, HA + (size_t)r0 * f, W2 + (size_t)e * d * f, Y + (size_t)r0 * d);
        cnt++;
    }
    const size_t r0 = (size_t)off[0], rows = (size_t)(off[E] - off[0]);
    gemm_many(g1, cnt, 0.0f, CUDA_R_16BF);
    cuda_swiglu_forward(HA + r0 * f, H13 + r0 * 2 * f, (int)rows, f);
    gemm_many(g2, cnt, 0.0f, CUDA_R_16BF);
    free(g1);
    free(g2);
}

// The experts' weight gradients in one launch: out[e] (P,Q) fp32 row-major += A_e^T B_e, where A_e and B_e are rows
// [offsets[e], offsets[e+1]) of A (rows of P bf16) and B (rows of Q). Block (x, y, e) owns a 32x32 tile of out[e]:
// 32-row slabs of A_e and B_e go through shared memory (fp32), each thread accumulates 4 outputs over the rows in
// order, then adds them once. Deterministic; experts without rows return at once (their gradient is unchanged).
#define DW_TILE 32
__global__ void expert_dw_kernel(float* __restrict__ out, const bf16* __restrict__ A, const bf16* __restrict__ B,
                                 const int* __restrict__ offsets, int P, int Q) {
    const int e = blockIdx.z;
    const int r0 = offsets[e], n = offsets[e + 1] - r0;
    if (n <= 0) return;  // uniform over the block: no thread is left waiting at a barrier
    __shared__ float As[DW_TILE][DW_TILE + 1], Bs[DW_TILE][DW_TILE + 1];
    const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;  // 8 warps: ty owns rows ty, ty+8, ty+16, ty+24
    const int p0 = blockIdx.y * DW_TILE, q0 = blockIdx.x * DW_TILE;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int r = 0; r < n; r += DW_TILE) {
        for (int i = ty; i < DW_TILE; i += 8) {
            const int row = r + i;
            const size_t g = (size_t)r0 + row;
            As[i][tx] = row < n && p0 + tx < P ? bf2f(A[g * P + p0 + tx]) : 0.0f;
            Bs[i][tx] = row < n && q0 + tx < Q ? bf2f(B[g * Q + q0 + tx]) : 0.0f;
        }
        __syncthreads();
        for (int k = 0; k < DW_TILE; k++) {
            const float b = Bs[k][tx];
            for (int i = 0; i < 4; i++) acc[i] += As[k][ty + 8 * i] * b;
        }
        __syncthreads();  // the slab is read before the next one overwrites it
    }
    float* o = out + (size_t)e * P * Q;
    for (int i = 0; i < 4; i++) {
        const int pp = p0 + ty + 8 * i, qq = q0 + tx;
        if (pp < P && qq < Q) o[(size_t)pp * Q + qq] += acc[i];
    }
}

// The same product on tensor cores (the default): out[e] (P,Q) fp32 += A_e^T B_e with bf16 inputs, fp32 accumulate.
// Block (x, y, e) owns a DWW_TILE x DWW_TILE tile of out[e]; its 4 warps own 32x32 quarters (2x2 wmma 16x16
// accumulators each). The expert's rows go through shared memory DWW_ROWS at a time, as they lie in memory: a slab
// of A_e (rows, P cols) read column-major is A_e^T (the matrix_a operand), a slab of B_e row-major is matrix_b.
// Rows past the expert's last row and columns past P / Q are staged as zeros, so partial tiles need no special
// case in the products; the accumulators then go through shared memory and each in-range element is added to out
// once. Deterministic: each output element is summed by one warp over the rows in a fixed order, and written once.
// Experts with no rows return at once (their gradient is unchanged). The offsets are read on the device: this path
// needs nothing from the host.
#define DWW_TILE 64
#define DWW_ROWS 32
#define DWW_LD (DWW_TILE + 8)   // bf16 row stride of the slabs: a multiple of 16 bytes (wmma's ldm rule)
#define DWW_CLD (DWW_TILE + 4)  // fp32 row stride of the accumulator staging (likewise)
#define DWW_THREADS 128

// VEC: P and Q multiples of 8 and A, B 16-byte aligned, so the slabs load 8 bf16 (16 bytes) at a time
template <bool VEC>
__global__ void __launch_bounds__(DWW_THREADS)
    expert_dw_wmma_kernel(float* __restrict__ out, const bf16* __restrict__ A, const bf16* __restrict__ B,
                          const int* __restrict__ offsets, int P, int Q) {
    const int e = blockIdx.z;
    const int r0 = offsets[e], n = offsets[e + 1] - r0;
    if (n <= 0) return;  // uniform over the block
    __align__(32) __shared__ bf16 As[DWW_ROWS][DWW_LD];     // rows x P-columns of A_e
    __align__(32) __shared__ bf16 Bs[DWW_ROWS][DWW_LD];     // rows x Q-columns of B_e
    __align__(32) __shared__ float Cs[DWW_TILE][DWW_CLD];   // the block's sums, for the bounded += at the end
    const int tid = threadIdx.x, warp = tid >> 5;
    const int wp = (warp >> 1) * 32, wq = (warp & 1) * 32;  // the warp's quarter of the tile
    const int p0 = blockIdx.y * DWW_TILE, q0 = blockIdx.x * DWW_TILE;
    // a quarter wholly past P or Q has nothing to compute (warp-uniform, so the warp collectives stay whole)
    const bool live = p0 + wp < P && q0 + wq < Q;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0.0f);
    for (int r = 0; r < n; r += DWW_ROWS) {
        if (VEC) {
            const int4 zero = {0, 0, 0, 0};
            for (int u = tid; u < DWW_ROWS * DWW_TILE / 8; u += DWW_THREADS) {
                const int i = u / (DWW_TILE / 8), c = (u % (DWW_TILE / 8)) * 8;
                int4 va = zero, vb = zero;
                if (r + i < n) {
                    const size_t g = (size_t)r0 + r + i;
                    if (p0 + c < P) va = *reinterpret_cast<const int4*>(A + g * P + p0 + c);
                    if (q0 + c < Q) vb = *reinterpret_cast<const int4*>(B + g * Q + q0 + c);
                }
                *reinterpret_cast<int4*>(&As[i][c]) = va;
                *reinterpret_cast<int4*>(&Bs[i][c]) = vb;
            }
        } else {
            for (int u = tid; u < DWW_ROWS * DWW_TILE; u += DWW_THREADS) {
                const int i = u / DWW_TILE, c = u % DWW_TILE;
                const bool row_ok = r + i < n;
                const size_t g = (size_t)r0 + r + i;
                As[i][c] = row_ok && p0 + c < P ? A[g * P + p0 + c] : f2bf(0.0f);
                Bs[i][c] = row_ok && q0 + c < Q ? B[g * Q + q0 + c] : f2bf(0.0f);
            }
        }
        __syncthreads();
        // k steps of 16 rows; a step wholly past the expert's rows adds only zeros and is skipped (block-uniform)
        for (int k = 0; k < DWW_ROWS && live && r + k < n; k += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::col_major> a[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> b[2];
            for (int i = 0; i < 2; i++) wmma::load_matrix_sync(a[i], &As[k][wp + 16 * i], DWW_LD);
            for (int j = 0; j < 2; j++) wmma::load_matrix_sync(b[j], &Bs[k][wq + 16 * j], DWW_LD);
            for (int i = 0; i < 2; i++)
                for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
        }
        __syncthreads();  // the slabs are read before the next ones overwrite them
    }
    if (live)
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 2; j++)
                wmma::store_matrix_sync(&Cs[wp + 16 * i][wq + 16 * j], acc[i][j], DWW_CLD, wmma::mem_row_major);
    __syncthreads();
    float* o = out + (size_t)e * P * Q;
    for (int u = tid; u < DWW_TILE * DWW_TILE; u += DWW_THREADS) {
        const int i = u / DWW_TILE, j = u % DWW_TILE;
        const int pp = p0 + i, qq = q0 + j;
        // an element in range lies in a live quarter, so Cs holds its sum
        if (pp < P && qq < Q) o[(size_t)pp * Q + qq] += Cs[i][j];
    }
}

// the weight-gradient paths: WMMA (default), the fp32 kernel, or the per-expert cuBLAS loop
typedef enum { EXPERT_DW_WMMA, EXPERT_DW_FP32, EXPERT_DW_LOOP } ExpertDwPath;

static ExpertDwPath expert_dw_path(void) {
    if (expert_gemm_loop_forced()) return EXPERT_DW_LOOP;
    const char* v = getenv("TRAIN_MOE_EXPERT_DW");
    if (!v || !*v || !strcmp(v, "wmma")) return EXPERT_DW_WMMA;
    if (!strcmp(v, "kernel")) return EXPERT_DW_FP32;
    if (!strcmp(v, "loop")) return EXPERT_DW_LOOP;
    fatal("TRAIN_MOE_EXPERT_DW=%s: expected wmma, kernel or loop", v);
    return EXPERT_DW_WMMA;
}

static void expert_dw(float* out, const bf16* A, const bf16* B, const int* offsets, int E, int P, int Q,
                      ExpertDwPath path) {
    if (E > 65535) fatal("moe experts: %d experts exceed the grid's z limit", E);
    if (path == EXPERT_DW_FP32) {
        dim3 grid(ceil_div_u(Q, DW_TILE), ceil_div_u(P, DW_TILE), (unsigned)E);
        expert_dw_kernel<<<grid, 256, 0, cuda_stream>>>(out, A, B, offsets, P, Q);
    } else {
        dim3 grid(ceil_div_u(Q, DWW_TILE), ceil_div_u(P, DWW_TILE), (unsigned)E);
        if (P % 8 == 0 && Q % 8 == 0 && aligned16(A) && aligned16(B))
            expert_dw_wmma_kernel<true><<<grid, DWW_THREADS, 0, cuda_stream>>>(out, A, B, offsets, P, Q);
        else
            expert_dw_wmma_kernel<false><<<grid, DWW_THREADS, 0, cuda_stream>>>(out, A, B, offsets, P, Q);
    }
    cudaCheckLaunch();
}

extern "C" void cuda_moe_experts_backward(void* dxe, float* dw13, float* dw2, void* dh13, void* dhact, const void* dye,
                                          const void* xe, const void* h13, const void* hact, const void* w13,
                                          const void* w2, const int* offsets, int E, int d, int f) {
    if (E <= 0) return;
    const int* off = offsets_for_backward(offsets, E);
    const bf16 *dY = (const bf16*)dye, *X = (const bf16*)xe, *H13 = (const bf16*)h13, *HA = (const bf16*)hact;
    const bf16 *W13 = (const bf16*)w13, *W2 = (const bf16*)w2;
    bf16 *dX = (bf16*)dxe, *dH13 = (bf16*)dh13, *dH = (bf16*)dhact;
    GemmProb* g = (GemmProb*)xmalloc((size_t)4 * E * sizeof(GemmProb));
    GemmProb *g_dh = g, *g_dw2 = g + E, *g_dx = g + 2 * E, *g_dw13 = g + 3 * E;
    int cnt = 0;
    for (int e = 0; e < E; e++) {
        const int r0 = off[e], n = off[e + 1] - r0;
        if (n == 0) continue;
        const bf16* dYe = dY + (size_t)r0 * d;
        // dhact (n,f) = dY (n,d) W2[e] (d,f) ; dW2[e] (d,f) += dY^T hact
        g_dh[cnt] = prob(0, 0, n, f, d, d, f, f, dYe, W2 + (size_t)e * d * f, dH + (size_t)r0 * f);
        g_dw2[cnt] = prob(1, 0, d, f, n, d, f, f, dYe, HA + (size_t)r0 * f, dw2 + (size_t)e * d * f);
        // dxe (n,d) = dH13 (n,2f) W13[e] (2f,d) ; dW13[e] (2f,d) += dH13^T xe
        g_dx[cnt] = prob(0, 0, n, d, 2 * f, 2 * f, d, d, dH13 + (size_t)r0 * 2 * f, W13 + (size_t)e * 2 * f * d,
                         dX + (size_t)r0 * d);
        g_dw13[cnt] = prob(1, 0, 2 * f, d, n, 2 * f, d, d, dH13 + (size_t)r0 * 2 * f, X + (size_t)r0 * d,
                           dw13 + (size_t)e * 2 * f * d);
        cnt++;
    }
    const size_t r0 = (size_t)off[0], rows = (size_t)(off[E] - off[0]);
    gemm_many(g_dh, cnt, 0.0f, CUDA_R_16BF);
    const ExpertDwPath dw_path = expert_dw_path();
    // dW2[e] (d,f) += dY_e^T hact_e
    if (dw_path != EXPERT_DW_LOOP) expert_dw(dw2, dY, HA, offsets, E, d, f, dw_path);
    else gemm_many(g_dw2, cnt, 1.0f, CUDA_R_32F);  // per-expert loop (no grouped bf16 -> fp32)
    cuda_swiglu_backward(dH13 + r0 * 2 * f, dH + r0 * f, H13 + r0 * 2 * f, (int)rows, f);
    gemm_many(g_dx, cnt, 0.0f, CUDA_R_16BF);
    // dW13[e] (2f,d) += dH13_e^T xe_e
    if (dw_path != EXPERT_DW_LOOP) expert_dw(dw13, dH13, X, offsets, E, 2 * f, d, dw_path);
    else gemm_many(g_dw13, cnt, 1.0f, CUDA_R_32F);
    free(g);
}
