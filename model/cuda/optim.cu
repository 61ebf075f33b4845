// model/cuda/optim.cu: the optimizer ops on the GPU: gradient sum of squares, AdamW, Muon's momentum, batched
// Newton-Schulz and update, and QK-Clip's row scaling. The CPU twins are in model/cpu/optim.c.
//
// Precision: everything is fp32 (master weights, gradients, moments); the sums of squares are accumulated in double
// (each fp32 square is exact in double). Newton-Schulz (the Frobenius norm in double, as on the CPU) runs either
//   - in bf16 (the default on the device, --muon-ns bf16): the iterate X and the products A = X X^T, B = b A + c A A
//     in bf16, the three GEMMs of an iteration on tensor cores with fp32 accumulation (cublasGemmStridedBatchedEx;
//     the b A and a X terms as the GEMMs' beta terms, so each result is rounded once), the last X' in fp32; or
//   - in true fp32 (--muon-ns fp32: cublasSgemmStridedBatched, default math mode: no TF32), as on the CPU.
// Why bf16 is safe here: the iteration is a contraction toward the orthogonal polar factor U V^T of X -- each step
// maps every singular value in (0, 1] into a band around 1 whatever small error the previous step left, so bf16
// rounding (2^-9 relative) only moves each step's input slightly, and the next steps pull it back toward the
// band. Muon only needs an approximate polar factor (the default coefficients already leave singular values
// anywhere in about [0.7, 1.2]), which is why Keller Jordan's Muon and Moonlight (Muon at scale) run Newton-Schulz
// in bf16. On random matrices of the expert shapes the result lies 1-2e-2 (relative L2) from the fp32
// iteration's, its singular values in the same band (dev/cuda/ns_bf16_error.py; tests/test_cuda.c checks it
// against the CPU).
//
// Deterministic: every op. The sums of squares use a fixed grid (SUM_BLOCKS blocks of SUM_THREADS, whatever the
// GPU) with fixed-tree block reductions, then one block sums the block partials in a fixed tree: the bits depend
// only on n and the data. The element-wise updates have one thread per element. The GEMMs are cuBLAS's
// (deterministic on one stream with a fixed workspace).
#include "cuda_common.cuh"

#define SUM_BLOCKS 1024
#define SUM_THREADS 256

// ----------------------------------------------------------------------------
// sums of squares: pass 1 per block, pass 2 over the block partials

__global__ void sum_squares_partial_kernel(double* part, const float* g, size_t n) {
    double s = 0.0;
    GRID_STRIDE_LOOP(i, n) {
        double v = g[i];
        s += v * v;
    }
    s = block_sum(s);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

__global__ void sum_partials_kernel(double* out, const double* part, int nparts) {
    double s = 0.0;
    for (int i = threadIdx.x; i < nparts; i += blockDim.x) s += part[i];
    s = block_sum(s);
    if (threadIdx.x == 0) *out = s;
}

static CudaScratch sum_part;  // SUM_BLOCKS partials + the total

static double finish_sum(double* part) {
    sum_partials_kernel<<<1, 1024, 0, cuda_stream>>>(part + SUM_BLOCKS, part, SUM_BLOCKS);
    cudaCheckLaunch();
    double total = 0.0;
    cudaCheck(cudaMemcpyAsync(&total, part + SUM_BLOCKS, sizeof(double), cudaMemcpyDeviceToHost, cuda_stream));
    cudaCheck(cudaStreamSynchronize(cuda_stream));
    return total;
}

double cuda_sum_squares(const float* g, size_t n) {
    if (!n) return 0.0;
    double* part = (double*)cuda_scratch(&sum_part, (SUM_BLOCKS + 1) * sizeof(double));
    sum_squares_partial_kernel<<<SUM_BLOCKS, SUM_THREADS, 0, cuda_stream>>>(part, g, n);
    cudaCheckLaunch();
    return finish_sum(part);
}

// ----------------------------------------------------------------------------
// AdamW (bias corrections folded into two multipliers, as on the CPU)

__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, size_t n, float lr, float b1, float b2,
                             float eps, float decay, float grad_scale, float inv_bc1, float inv_bc2) {
    GRID_STRIDE_LOOP(i, n) {
        float gi = g[i] * grad_scale;
        float mi = b1 * m[i] + (1.0f - b1) * gi;
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = decay * p[i] - lr * (mi * inv_bc1) / (sqrtf(vi * inv_bc2) + eps);
    }
}

void cuda_adamw_update(float* p, const float* g, float* m, float* v, size_t n, float lr, float b1, float b2, float eps,
                       float wd, float grad_scale, float inv_bc1, float inv_bc2) {
    if (!n) return;
    float decay = 1.0f - lr * wd;
    adamw_kernel<<<grid_for(n, 256), 256, 0, cuda_stream>>>(p, g, m, v, n, lr, b1, b2, eps, decay, grad_scale, inv_bc1,
                                                            inv_bc2);
    cudaCheckLaunch();
}

// ----------------------------------------------------------------------------
// Muon

__global__ void muon_momentum_kernel(float* m, float* u, const float* g, size_t n, float mu, float grad_scale) {
    GRID_STRIDE_LOOP(i, n) {
        float gi = g[i] * grad_scale;
        float mi = mu * m[i] + gi;
        m[i] = mi;
        u[i] = gi + mu * mi;
    }
}

void cuda_muon_momentum(float* m, float* u, const float* g, size_t n, float mu, float grad_scale) {
    if (!n) return;
    muon_momentum_kernel<<<grid_for(n, 256), 256, 0, cuda_stream>>>(m, u, g, n, mu, grad_scale);
    cudaCheckLaunch();
}

// inv[b] = 1 / (||x_b||_F + 1e-7), the norm summed in double; one block per matrix
__global__ void ns_inv_norm_kernel(float* inv, const float* x, size_t nm) {
    const float* xb = x + (size_t)blockIdx.x * nm;
    double s = 0.0;
    for (size_t i = threadIdx.x; i < nm; i += blockDim.x) {
        double v = xb[i];
        s += v * v;
    }
    s = block_sum(s);
    if (threadIdx.x == 0) inv[blockIdx.x] = (float)(1.0 / (sqrt(s) + 1e-7));
}

// X (cnt, n, m) = x (cnt, rows, cols) * inv, transposed when the matrices are tall (rows > cols: n = cols, m = rows)
__global__ void ns_load_kernel(float* X, const float* x, const float* inv, int cnt, int rows, int cols, int tr) {
    size_t nm = (size_t)rows * cols;
    GRID_STRIDE_LOOP(i, (size_t)cnt * nm) {
        size_t b = i / nm, r = i % nm;
        float v = x[i] * inv[b];
        if (tr) {
            size_t row = r / cols, col = r % cols;
            X[b * nm + col * rows + row] = v;
        } else {
            X[i] = v;
        }
    }
}

// x (cnt, rows, cols) = X (cnt, n, m), transposed back for tall matrices
__global__ void ns_store_kernel(float* x, const float* X, int cnt, int rows, int cols, int tr) {
    size_t nm = (size_t)rows * cols;
    GRID_STRIDE_LOOP(i, (size_t)cnt * nm) {
        if (tr) {
            size_t b = i / nm, r = i % nm;
            size_t row = r / cols, col = r % cols;
            x[i] = X[b * nm + col * rows + row];
        } else {
            x[i] = X[i];
        }
    }
}

static CudaScratch ns_work;

// Each matrix X (n, m), n <= m, row-major, for each step (a, b, c): A = X X^T; B = b A + c A A; X = a X + B X.
// cuBLAS sees the row-major buffers as their transposes (column-major): X's buffer is Xc = X^T (m, n), A's and B's
// are A^T and B^T. So: A^T = Xc^T Xc (= X X^T); B^T = c A^T A^T + b A^T (= (c A A + b A)^T); and
// Y^T = Xc B^T + a Xc (= (B X + a X)^T), each a strided batch over the chunk's matrices.
static void newton_schulz_fp32(float* x, int batch, int rows, int cols, const float* coeffs, int steps) {
    int tr = rows > cols;
    int n = tr ? cols : rows, m = tr ? rows : cols;
    size_t nm = (size_t)n * m, nn = (size_t)n * n;
    // at most ~1 GiB of work space: the matrices go through in chunks
    size_t per = (2 * nm + 2 * nn + 1) * sizeof(float);
    size_t budget = (size_t)1 << 30;
    int chunk = (int)(budget / per);
    if (chunk < 1) chunk = 1;
    if (chunk > batch) chunk = batch;
    float* work = (float*)cuda_scratch(&ns_work, (size_t)chunk * per);
    float* Xa = work;
    float* Xb = Xa + (size_t)chunk * nm;
    float* A = Xb + (size_t)chunk * nm;
    float* Bm = A + (size_t)chunk * nn;
    float* inv = Bm + (size_t)chunk * nn;
    const float one = 1.0f, zero = 0.0f;
    for (int b0 = 0; b0 < batch; b0 += chunk) {
        int cnt = batch - b0 < chunk ? batch - b0 : chunk;
        float* xb = x + (size_t)b0 * nm;
        ns_inv_norm_kernel<<<cnt, 256, 0, cuda_stream>>>(inv, xb, nm);
        cudaCheckLaunch();
        ns_load_kernel<<<grid_for((size_t)cnt * nm, 256), 256, 0, cuda_stream>>>(Xa, xb, inv, cnt, rows, cols, tr);
        cudaCheckLaunch();
        float* X = Xa;
        float* Y = Xb;
        for (int s = 0; s < steps; s++) {
            float ca = coeffs[3 * s], cb = coeffs[3 * s + 1], cc = coeffs[3 * s + 2];
            // A = X X^T
            cublasCheck(cublasSgemmStridedBatched(cuda_cublas, CUBLAS_OP_T, CUBLAS_OP_N, n, n, m, &one, X, m, nm, X, m,
                                                  nm, &zero, A, n, nn, cnt));
            // B = b A + c A A
            cudaCheck(cudaMemcpyAsync(Bm, A, (size_t)cnt * nn * sizeof(float), cudaMemcpyDeviceToDevice, cuda_stream));
            cublasCheck(cublasSgemmStridedBatched(cuda_cublas, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &cc, A, n, nn, A, n,
                                                  nn, &cb, Bm, n, nn, cnt));
            // Y = a X + B X
            cudaCheck(cudaMemcpyAsync(Y, X, (size_t)cnt * nm * sizeof(float), cudaMemcpyDeviceToDevice, cuda_stream));
            cublasCheck(cublasSgemmStridedBatched(cuda_cublas, CUBLAS_OP_N, CUBLAS_OP_N, m, n, n, &one, X, m, nm, Bm, n,
                                                  nn, &ca, Y, m, nm, cnt));
            float* t = X;
            X = Y;
            Y = t;
        }
        ns_store_kernel<<<grid_for((size_t)cnt * nm, 256), 256, 0, cuda_stream>>>(xb, X, cnt, rows, cols, tr);
        cudaCheckLaunch();
    }
}

// X (cnt, n, m) bf16 = x (cnt, rows, cols) * inv, transposed for tall matrices (ns_load_kernel's bf16 twin)
__global__ void ns_load_bf16_kernel(bf16* X, const float* x, const float* inv, int cnt, int rows, int cols, int tr) {
    size_t nm = (size_t)rows * cols;
    GRID_STRIDE_LOOP(i, (size_t)cnt * nm) {
        size_t b = i / nm, r = i % nm;
        bf16 v = f2bf(x[i] * inv[b]);
        if (tr) {
            size_t row = r / cols, col = r % cols;
            X[b * nm + col * rows + row] = v;
        } else {
            X[i] = v;
        }
    }
}

__global__ void ns_widen_kernel(float* out, const bf16* in, size_t n) {
    GRID_STRIDE_LOOP(i, n) out[i] = bf2f(in[i]);
}

static CudaScratch ns_work_h;

// bf16-operand GEMM of the Newton-Schulz batch, column-major as cuBLAS: C = alpha op(A) B + beta C (C bf16 or fp32:
// fp32 accumulation, beta C added in fp32, one rounding into C's type), a strided batch of cnt
static void ns_gemm_bf16(cublasOperation_t ta, int m, int n, int k, float alpha, const bf16* A, int lda,
                         long long sa, const bf16* B, int ldb, long long sb, float beta, void* C, cudaDataType_t Ct,
                         int ldc, long long sc, int cnt) {
    cublasCheck(cublasGemmStridedBatchedEx(cuda_cublas, ta, CUBLAS_OP_N, m, n, k, &alpha, A, CUDA_R_16BF, lda, sa, B,
                                           CUDA_R_16BF, ldb, sb, &beta, C, Ct, ldc, sc, cnt, CUBLAS_COMPUTE_32F,
                                           CUBLAS_GEMM_DEFAULT));
}

// The same iteration as newton_schulz_fp32 (and the same column-major reading of the buffers) on a bf16 iterate:
// per step A = X X^T; B = b A + c A A (b A as the GEMM's beta term); X' = a X + B X (a X likewise), each GEMM's
// result rounded once to bf16 -- except the last X', which comes out in fp32. Every step is then the exact
// polynomial of the bf16 matrix it starts from, up to the roundings of A, B and X'. (Keeping an fp32 X beside
// the bf16 operands and adding a X in fp32 was tried first: it mixes two different matrices in one step and lands
// 1.2-3x further from the fp32 iteration -- dev/cuda/ns_bf16_error.py.)
static void newton_schulz_bf16(float* x, int batch, int rows, int cols, const float* coeffs, int steps) {
    int tr = rows > cols;
    int n = tr ? cols : rows, m = tr ? rows : cols;
    size_t nm = (size_t)n * m, nn = (size_t)n * n;
    // fp32: the last X', inv; bf16: X, Y, A, B -- at most ~1 GiB, the matrices in chunks
    size_t per = (nm + 1) * sizeof(float) + (2 * nm + 2 * nn) * sizeof(bf16);
    size_t budget = (size_t)1 << 30;
    int chunk = (int)(budget / per);
    if (chunk < 1) chunk = 1;
    if (chunk > batch) chunk = batch;
    float* work = (float*)cuda_scratch(&ns_work, (size_t)chunk * (nm + 1) * sizeof(float));
    float* Yf = work;
    float* inv = Yf + (size_t)chunk * nm;
    // the bf16 operands in their own buffer; every matrix starts 16-byte aligned when n m and n n are multiples of 8
    // (what cuBLAS's tensor-core kernels prefer; other sizes are correct, only slower)
    bf16* Xa = (bf16*)cuda_scratch(&ns_work_h, (size_t)chunk * (2 * nm + 2 * nn) * sizeof(bf16));
    bf16* Xb = Xa + (size_t)chunk * nm;
    bf16* A = Xb + (size_t)chunk * nm;
    bf16* Bm = A + (size_t)chunk * nn;
    for (int b0 = 0; b0 < batch; b0 += chunk) {
        int cnt = batch - b0 < chunk ? batch - b0 : chunk;
        float* xb = x + (size_t)b0 * nm;
        ns_inv_norm_kernel<<<cnt, 256, 0, cuda_stream>>>(inv, xb, nm);
        cudaCheckLaunch();
        ns_load_bf16_kernel<<<grid_for((size_t)cnt * nm, 256), 256, 0, cuda_stream>>>(Xa, xb, inv, cnt, rows, cols,
                                                                                       tr);
        cudaCheckLaunch();
        bf16* X = Xa;
        bf16* Y = Xb;
        for (int s = 0; s < steps; s++) {
            float ca = coeffs[3 * s], cb = coeffs[3 * s + 1], cc = coeffs[3 * s + 2];
            const int last = s == steps - 1;
            // A = X X^T
            ns_gemm_bf16(CUBLAS_OP_T, n, n, m, 1.0f, X, m, nm, X, m, nm, 0.0f, A, CUDA_R_16BF, n, nn, cnt);
            // B = b A + c A A
            cudaCheck(cudaMemcpyAsync(Bm, A, (size_t)cnt * nn * sizeof(bf16), cudaMemcpyDeviceToDevice, cuda_stream));
            ns_gemm_bf16(CUBLAS_OP_N, n, n, n, cc, A, n, nn, A, n, nn, cb, Bm, CUDA_R_16BF, n, nn, cnt);
            // Y = a X + B X: bf16, or fp32 for the result
            if (last) {
                ns_widen_kernel<<<grid_for((size_t)cnt * nm, 256), 256, 0, cuda_stream>>>(Yf, X, (size_t)cnt * nm);
                cudaCheckLaunch();
                ns_gemm_bf16(CUBLAS_OP_N, m, n, n, 1.0f, X, m, nm, Bm, n, nn, ca, Yf, CUDA_R_32F, m, nm, cnt);
            } else {
                cudaCheck(cudaMemcpyAsync(Y, X, (size_t)cnt * nm * sizeof(bf16), cudaMemcpyDeviceToDevice,
                                          cuda_stream));
                ns_gemm_bf16(CUBLAS_OP_N, m, n, n, 1.0f, X, m, nm, Bm, n, nn, ca, Y, CUDA_R_16BF, m, nm, cnt);
                bf16* t = X;
                X = Y;
                Y = t;
            }
        }
        if (steps <= 0) {  // no iteration: the normalised input itself
            ns_widen_kernel<<<grid_for((size_t)cnt * nm, 256), 256, 0, cuda_stream>>>(Yf, X, (size_t)cnt * nm);
            cudaCheckLaunch();
        }
        ns_store_kernel<<<grid_for((size_t)cnt * nm, 256), 256, 0, cuda_stream>>>(xb, Yf, cnt, rows, cols, tr);
        cudaCheckLaunch();
    }
}

void cuda_newton_schulz(float* x, int batch, int rows, int cols, const float* coeffs, int steps, int bf16_gemms) {
    if (batch <= 0 || rows <= 0 || cols <= 0) return;
    if (bf16_gemms) newton_schulz_bf16(x, batch, rows, cols, coeffs, steps);
    else newton_schulz_fp32(x, batch, rows, cols, coeffs, steps);
}

// p = (1 - lr wd) p - lr u with u = scale o; the sum of u^2 per block (fixed grid), then over the blocks
__global__ void muon_update_kernel(double* part, float* p, const float* o, size_t n, float lr, float scale,
                                   float decay) {
    double sq = 0.0;
    GRID_STRIDE_LOOP(i, n) {
        float u = scale * o[i];
        sq += (double)u * u;
        p[i] = decay * p[i] - lr * u;
    }
    sq = block_sum(sq);
    if (threadIdx.x == 0) part[blockIdx.x] = sq;
}

double cuda_muon_update(float* p, const float* o, size_t n, float lr, float scale, float wd) {
    if (!n) return 0.0;
    double* part = (double*)cuda_scratch(&sum_part, (SUM_BLOCKS + 1) * sizeof(double));
    muon_update_kernel<<<SUM_BLOCKS, SUM_THREADS, 0, cuda_stream>>>(part, p, o, n, lr, scale, 1.0f - lr * wd);
    cudaCheckLaunch();
    return finish_sum(part);
}

// ----------------------------------------------------------------------------
// QK-Clip

__global__ void scale_kernel(float* w, size_t n, float factor) {
    GRID_STRIDE_LOOP(i, n) w[i] *= factor;
}

void cuda_scale_rows(float* w, int row0, int nrows, int cols, float factor) {
    size_t n = (size_t)nrows * cols;
    if (!n) return;
    scale_kernel<<<grid_for(n, 256), 256, 0, cuda_stream>>>(w + (size_t)row0 * cols, n, factor);
    cudaCheckLaunch();
}
