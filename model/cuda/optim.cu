// model/cuda/optim.cu: the optimizer ops on the GPU: gradient sum of squares, AdamW, Muon's momentum, batched
// Newton-Schulz and update, and QK-Clip's row scaling. The CPU twins are in model/cpu/optim.c.
//
// Precision: everything is fp32 (master weights, gradients, moments); the sums of squares are accumulated in double
// (each fp32 square is exact in double). Newton-Schulz runs in true fp32 (cublasSgemmStridedBatched, default math
// mode: no TF32), the Frobenius norm in double, as on the CPU.
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
void cuda_newton_schulz(float* x, int batch, int rows, int cols, const float* coeffs, int steps) {
    if (batch <= 0 || rows <= 0 || cols <= 0) return;
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
