// model/cuda/dense.cu: the CUDA ops that are not attention, MoE or optimizer: embedding, RMSNorm, matmul, residual
// adds, SwiGLU, RoPE and cross-entropy. The CPU twins are in model/cpu/dense.c; tests/test_cuda.c compares them.
//
// Precision: activations and compute weights are bf16 in memory; every kernel widens to fp32, computes in fp32 and
// rounds once (nearest even) when it stores a bf16 result. Statistics (RMSNorm's mean square and rstd, softmax max
// and sum, the dgain and embedding-gradient sums) are fp32 and never pass through bf16. Matmuls: cuBLAS GemmEx, bf16
// inputs, fp32 compute/accumulation; forward output and dinp bf16, dw fp32 accumulated in place (beta = 1).
// expf/logf/sqrtf here are the accurate versions (the build has no --use_fast_math).
//
// Deterministic (same inputs, same bits, run after run): every kernel in this file. None uses float atomics:
//   - embedding_backward groups the rows by token with a stable radix sort (CUB), then one thread per
//     (token, column) adds that token's rows in row order, as the CPU does;
//   - RMSNorm's row statistics are block reductions with a fixed tree; dgain sums fixed chunks of 64 rows per
//     column, then the chunks in order;
//   - cross-entropy's max and sum are fixed-tree block reductions;
//   - cuBLAS GEMMs are deterministic for a fixed toolkit, GPU model and workspace (one stream, fixed workspace,
//     see ops_cuda.cu).
#include "cuda_common.cuh"
#include <cub/cub.cuh>

// ----------------------------------------------------------------------------
// embedding

__global__ void embedding_forward_kernel(bf16* out, const int* tokens, const bf16* wte, int N, int d) {
    GRID_STRIDE_LOOP(i, (size_t)N * d) {
        size_t n = i / d, c = i % d;
        out[i] = wte[(size_t)tokens[n] * d + c];
    }
}

void cuda_embedding_forward(void* out, const int* tokens, const void* wte, int N, int d) {
    size_t total = (size_t)N * d;
    if (!total) return;
    embedding_forward_kernel<<<grid_for(total, 256), 256, 0, cuda_stream>>>((bf16*)out, tokens, (const bf16*)wte, N, d);
    cudaCheckLaunch();
}

__global__ void iota_kernel(int* x, int n) {
    GRID_STRIDE_LOOP(i, n) x[i] = (int)i;
}

// Block i of the grid's x dimension owns sorted position i; only the first position of each token's run works:
// its threads (one per column) add the run's rows to dwte in row order (the sort is stable), starting from dwte's
// value, exactly the CPU's order of additions.
__global__ void embedding_backward_kernel(float* dwte, const bf16* dout, const int* sorted_tok, const int* sorted_row,
                                          int N, int d) {
    int i = blockIdx.x;
    int tok = sorted_tok[i];
    if (i > 0 && sorted_tok[i - 1] == tok) return;
    int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= d) return;
    float* dst = dwte + (size_t)tok * d + c;
    float acc = *dst;
    for (int j = i; j < N && sorted_tok[j] == tok; j++) acc += bf2f(dout[(size_t)sorted_row[j] * d + c]);
    *dst = acc;
}

static CudaScratch emb_buf, emb_sort_tmp;

void cuda_embedding_backward(float* dwte, const void* dout, const int* tokens, int N, int d) {
    if (N <= 0 || d <= 0) return;
    int* buf = (int*)cuda_scratch(&emb_buf, 3 * (size_t)N * sizeof(int));
    int* rows = buf;              // 0..N-1
    int* sorted_tok = buf + N;    // tokens, ascending
    int* sorted_row = buf + 2 * (size_t)N;  // their rows, ascending within a token (stable sort)
    iota_kernel<<<grid_for(N, 256), 256, 0, cuda_stream>>>(rows, N);
    cudaCheckLaunch();
    size_t tmp_bytes = 0;
    cudaCheck(cub::DeviceRadixSort::SortPairs(NULL, tmp_bytes, tokens, sorted_tok, rows, sorted_row, N, 0,
                                              (int)(sizeof(int) * 8), cuda_stream));
    void* tmp = cuda_scratch(&emb_sort_tmp, tmp_bytes);
    cudaCheck(cub::DeviceRadixSort::SortPairs(tmp, tmp_bytes, tokens, sorted_tok, rows, sorted_row, N, 0,
                                              (int)(sizeof(int) * 8), cuda_stream));
    dim3 grid((unsigned)N, ceil_div_u(d, 256));
    embedding_backward_kernel<<<grid, 256, 0, cuda_stream>>>(dwte, (const bf16*)dout, sorted_tok, sorted_row, N, d);
    cudaCheckLaunch();
}

// ----------------------------------------------------------------------------
// RMSNorm: y = x * rstd * g, rstd = 1/sqrt(mean(x^2) + eps); one block per row

#define NORM_THREADS 256

__global__ void rmsnorm_forward_kernel(bf16* out, float* rstd, const bf16* inp, int in_stride, const bf16* gain, int C,
                                       float eps) {
    int n = blockIdx.x;
    const bf16* x = inp + (size_t)n * in_stride;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float v = bf2f(x[c]);
        ss += v * v;
    }
    ss = block_sum(ss);
    float r = 1.0f / sqrtf(ss / (float)C + eps);
    if (threadIdx.x == 0) rstd[n] = r;
    bf16* y = out + (size_t)n * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) y[c] = f2bf(bf2f(x[c]) * r * bf2f(gain[c]));
}

void cuda_rmsnorm_forward(void* out, float* rstd, const void* inp, int in_stride, const void* gain, int N, int C,
                          float eps) {
    if (N <= 0 || C <= 0) return;
    rmsnorm_forward_kernel<<<N, NORM_THREADS, 0, cuda_stream>>>((bf16*)out, rstd, (const bf16*)inp, in_stride,
                                                                 (const bf16*)gain, C, eps);
    cudaCheckLaunch();
}

// dx_c = r g_c dy_c - r^3 x_c mean_j(g_j dy_j x_j); written or added (accumulate) into dinp's row
__global__ void rmsnorm_backward_kernel(bf16* dinp, int in_stride, int accumulate, const bf16* dout, const bf16* inp,
                                        const bf16* gain, const float* rstd, int C) {
    int n = blockIdx.x;
    const bf16* x = inp + (size_t)n * in_stride;
    const bf16* dy = dout + (size_t)n * C;
    bf16* dx = dinp + (size_t)n * in_stride;
    float r = rstd[n];
    float dot = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) dot += bf2f(gain[c]) * bf2f(dy[c]) * bf2f(x[c]);
    dot = block_sum(dot);
    float k = (dot / (float)C) * r * r * r;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float v = r * bf2f(gain[c]) * bf2f(dy[c]) - k * bf2f(x[c]);
        if (accumulate) v += bf2f(dx[c]);
        dx[c] = f2bf(v);
    }
}

// dgain, pass 1: part[chunk][c] = sum over the chunk's rows (in order) of dy x r
#define DGAIN_ROWS 64
__global__ void rmsnorm_dgain_partial_kernel(float* part, const bf16* dout, const bf16* inp, int in_stride,
                                             const float* rstd, int N, int C, int rows_per_chunk) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    int n0 = blockIdx.y * rows_per_chunk;
    int n1 = min(N, n0 + rows_per_chunk);
    float s = 0.0f;
    for (int n = n0; n < n1; n++) s += bf2f(dout[(size_t)n * C + c]) * bf2f(inp[(size_t)n * in_stride + c]) * rstd[n];
    part[(size_t)blockIdx.y * C + c] = s;
}

// dgain, pass 2: dgain[c] += the chunks' sums, in chunk order
__global__ void rmsnorm_dgain_final_kernel(float* dgain, const float* part, int nchunks, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0.0f;
    for (int k = 0; k < nchunks; k++) s += part[(size_t)k * C + c];
    dgain[c] += s;
}

static CudaScratch dgain_part;

void cuda_rmsnorm_backward(void* dinp, int in_stride, int accumulate, float* dgain, const void* dout, const void* inp,
                           const void* gain, const float* rstd, int N, int C) {
    if (N <= 0 || C <= 0) return;
    rmsnorm_backward_kernel<<<N, NORM_THREADS, 0, cuda_stream>>>((bf16*)dinp, in_stride, accumulate, (const bf16*)dout,
                                                                  (const bf16*)inp, (const bf16*)gain, rstd, C);
    cudaCheckLaunch();
    int rows_per_chunk = DGAIN_ROWS;
    if ((N + rows_per_chunk - 1) / rows_per_chunk > 65535) rows_per_chunk = (N + 65534) / 65535;  // gridDim.y limit
    int nchunks = (N + rows_per_chunk - 1) / rows_per_chunk;
    float* part = (float*)cuda_scratch(&dgain_part, (size_t)nchunks * C * sizeof(float));
    dim3 grid(ceil_div_u(C, 256), (unsigned)nchunks);
    rmsnorm_dgain_partial_kernel<<<grid, 256, 0, cuda_stream>>>(part, (const bf16*)dout, (const bf16*)inp, in_stride,
                                                                rstd, N, C, rows_per_chunk);
    cudaCheckLaunch();
    rmsnorm_dgain_final_kernel<<<ceil_div_u(C, 256), 256, 0, cuda_stream>>>(dgain, part, nchunks, C);
    cudaCheckLaunch();
}

// ----------------------------------------------------------------------------
// matmul: out (N,OC) = inp (N,C) w^T, w (OC,C), all row-major, through gemm_bf16 (cuda_common.cuh)

void cuda_matmul_forward(void* out, const void* inp, const void* w, int N, int C, int OC) {
    if (N <= 0 || OC <= 0) return;
    if (C <= 0) { cudaCheck(cudaMemsetAsync(out, 0, (size_t)N * OC * sizeof(bf16), cuda_stream)); return; }
    gemm_bf16(0, 1, N, OC, C, inp, C, w, C, 0.0f, out, CUDA_R_16BF, OC);
}

void cuda_matmul_backward(void* dinp, int accumulate, float* dw, const void* dout, const void* inp, const void* w,
                          int N, int C, int OC) {
    if (N <= 0 || C <= 0 || OC <= 0) return;
    // dinp (N,C) (+)= dout (N,OC) w (OC,C)
    if (dinp) gemm_bf16(0, 0, N, C, OC, dout, OC, w, C, accumulate ? 1.0f : 0.0f, dinp, CUDA_R_16BF, C);
    // dw (OC,C) += dout^T (OC,N) inp (N,C), fp32
    gemm_bf16(1, 0, OC, C, N, dout, OC, inp, C, 1.0f, dw, CUDA_R_32F, C);
}

// ----------------------------------------------------------------------------
// element-wise

__global__ void add_kernel(bf16* out, const bf16* a, const bf16* b, size_t n) {
    GRID_STRIDE_LOOP(i, n) out[i] = f2bf(bf2f(a[i]) + bf2f(b[i]));
}

void cuda_add(void* out, const void* a, const void* b, size_t n) {
    if (!n) return;
    add_kernel<<<grid_for(n, 256), 256, 0, cuda_stream>>>((bf16*)out, (const bf16*)a, (const bf16*)b, n);
    cudaCheckLaunch();
}

void cuda_add_inplace(void* x, const void* y, size_t n) {
    if (!n) return;
    add_kernel<<<grid_for(n, 256), 256, 0, cuda_stream>>>((bf16*)x, (const bf16*)x, (const bf16*)y, n);
    cudaCheckLaunch();
}

__device__ __forceinline__ float sigmoidf_acc(float z) { return 1.0f / (1.0f + expf(-z)); }

// out (N,f) = silu(a) b with a = h13[:, :f] (gate, W1) and b = h13[:, f:] (up, W3)
__global__ void swiglu_forward_kernel(bf16* out, const bf16* h13, int N, int f) {
    GRID_STRIDE_LOOP(i, (size_t)N * f) {
        size_t n = i / f, j = i % f;
        float a = bf2f(h13[n * 2 * f + j]), b = bf2f(h13[n * 2 * f + f + j]);
        out[i] = f2bf(a * sigmoidf_acc(a) * b);
    }
}

void cuda_swiglu_forward(void* out, const void* h13, int N, int f) {
    size_t total = (size_t)N * f;
    if (!total) return;
    swiglu_forward_kernel<<<grid_for(total, 256), 256, 0, cuda_stream>>>((bf16*)out, (const bf16*)h13, N, f);
    cudaCheckLaunch();
}

__global__ void swiglu_backward_kernel(bf16* dh13, const bf16* dout, const bf16* h13, int N, int f) {
    GRID_STRIDE_LOOP(i, (size_t)N * f) {
        size_t n = i / f, j = i % f;
        size_t ia = n * 2 * f + j, ib = ia + f;
        float a = bf2f(h13[ia]), b = bf2f(h13[ib]), dy = bf2f(dout[i]);
        float s = sigmoidf_acc(a);
        dh13[ia] = f2bf(dy * b * s * (1.0f + a * (1.0f - s)));
        dh13[ib] = f2bf(dy * a * s);
    }
}

void cuda_swiglu_backward(void* dh13, const void* dout, const void* h13, int N, int f) {
    size_t total = (size_t)N * f;
    if (!total) return;
    swiglu_backward_kernel<<<grid_for(total, 256), 256, 0, cuda_stream>>>((bf16*)dh13, (const bf16*)dout,
                                                                          (const bf16*)h13, N, f);
    cudaCheckLaunch();
}

// ----------------------------------------------------------------------------
// RoPE on adjacent pairs (2i, 2i+1), frequency theta^(-2i/rope_dim), angle = position * frequency.
// The (position, pair) cos/sin table is computed in double and rounded to fp32, exactly as the CPU does; it is
// kept between calls (every call of a run uses the same rope_dim and theta) and grown when a longer T comes.

__global__ void rope_table_kernel(float* cs, int T, int half, int rope_dim, float theta) {
    GRID_STRIDE_LOOP(i, (size_t)T * half) {
        int t = (int)(i / half), k = (int)(i % half);
        double freq = pow((double)theta, -2.0 * k / rope_dim);
        double ang = t * freq;
        cs[2 * i] = (float)cos(ang);
        cs[2 * i + 1] = (float)sin(ang);
    }
}

__global__ void rope_kernel(bf16* x, const float* cs, int N, int T, int n_heads, int row_stride, int head_stride,
                            int offset, int half, int inverse) {
    GRID_STRIDE_LOOP(i, (size_t)N * n_heads * half) {
        int k = (int)(i % half);
        size_t r = i / half;
        int h = (int)(r % n_heads);
        size_t n = r / n_heads;
        int t = (int)(n % T);
        float c = cs[2 * ((size_t)t * half + k)], s = cs[2 * ((size_t)t * half + k) + 1];
        if (inverse) s = -s;
        bf16* v = x + n * row_stride + (size_t)h * head_stride + offset + 2 * k;
        float x0 = bf2f(v[0]), x1 = bf2f(v[1]);
        v[0] = f2bf(x0 * c - x1 * s);
        v[1] = f2bf(x0 * s + x1 * c);
    }
}

static CudaScratch rope_cs;
static int rope_rows = 0, rope_dim_cached = -1;
static float rope_theta_cached = 0.0f;

void cuda_rope(void* x, int N, int T, int n_heads, int row_stride, int head_stride, int offset, int rope_dim,
               float theta, int inverse) {
    int half = rope_dim / 2;
    if (N <= 0 || n_heads <= 0 || half <= 0 || T <= 0) return;
    if (rope_dim != rope_dim_cached || theta != rope_theta_cached || T > rope_rows) {
        int rows = T;
        float* cs = (float*)cuda_scratch(&rope_cs, (size_t)rows * half * 2 * sizeof(float));
        rope_table_kernel<<<grid_for((size_t)rows * half, 256), 256, 0, cuda_stream>>>(cs, rows, half, rope_dim, theta);
        cudaCheckLaunch();
        rope_rows = rows;
        rope_dim_cached = rope_dim;
        rope_theta_cached = theta;
    }
    size_t total = (size_t)N * n_heads * half;
    rope_kernel<<<grid_for(total, 256), 256, 0, cuda_stream>>>((bf16*)x, (const float*)rope_cs.ptr, N, T, n_heads,
                                                               row_stride, head_stride, offset, half, inverse);
    cudaCheckLaunch();
}

// ----------------------------------------------------------------------------
// softmax cross-entropy: one block per row; max and sum of exp(z - max) in fp32 (fixed-tree reductions)

#define CE_THREADS 512

__device__ __forceinline__ void row_softmax_stats(const bf16* z, int V, float* mx_out, float* sum_out) {
    float mx = -INFINITY;
    for (int v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, bf2f(z[v]));
    mx = block_max(mx, -INFINITY);
    float s = 0.0f;
    for (int v = threadIdx.x; v < V; v += blockDim.x) s += expf(bf2f(z[v]) - mx);
    s = block_sum(s);
    *mx_out = mx;
    *sum_out = s;
}

__global__ void crossentropy_forward_kernel(float* losses, const bf16* logits, const int* targets, int V) {
    int n = blockIdx.x;
    const bf16* z = logits + (size_t)n * V;
    float mx, s;
    row_softmax_stats(z, V, &mx, &s);
    if (threadIdx.x == 0) losses[n] = logf(s) + mx - bf2f(z[targets[n]]);
}

void cuda_crossentropy_forward(float* losses, const void* logits, const int* targets, int N, int V) {
    if (N <= 0 || V <= 0) return;
    crossentropy_forward_kernel<<<N, CE_THREADS, 0, cuda_stream>>>(losses, (const bf16*)logits, targets, V);
    cudaCheckLaunch();
}

// dlogits may alias logits: each element is read and then written by the same thread, and the statistics'
// reductions (which end in barriers) finish every read of the row before any write.
__global__ void crossentropy_backward_kernel(bf16* dlogits, const bf16* logits, const int* targets, float dloss, int V) {
    int n = blockIdx.x;
    const bf16* z = logits + (size_t)n * V;
    bf16* g = dlogits + (size_t)n * V;
    float mx, s;
    row_softmax_stats(z, V, &mx, &s);
    float scale = dloss / s;
    int t = targets[n];
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        float p = expf(bf2f(z[v]) - mx) * scale;
        if (v == t) p -= dloss;
        g[v] = f2bf(p);
    }
}

void cuda_crossentropy_backward(void* dlogits, const void* logits, const int* targets, float dloss, int N, int V) {
    if (N <= 0 || V <= 0) return;
    crossentropy_backward_kernel<<<N, CE_THREADS, 0, cuda_stream>>>((bf16*)dlogits, (const bf16*)logits, targets,
                                                                    dloss, V);
    cudaCheckLaunch();
}
