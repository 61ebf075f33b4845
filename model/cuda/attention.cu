// model/cuda/attention.cu: causal MLA attention on the GPU, our own flash-attention-style kernels.
//
// Shapes (model/ops.h, model/MODEL.md): q (N, H*dqk) with RoPE applied, kv (N, H*(nope+dv)), a (N, kv_lora+rope)
// whose columns [kv_lora, kv_lora+rope) are the rope key shared by every head. dqk = nope + rope may differ from dv.
// Per sequence b and head h: K = [kv[:, h, :nope] | a[:, kv_lora:]] (never materialised: a key tile is loaded
// from both places), V = kv[:, h, nope:], S = Q K^T / sqrt(dqk) causal, P = softmax(S), O = P V.
//
// Precision: bf16 inputs staged in shared memory as bf16, every product and sum in fp32, exp by expf; out and the
// input gradients rounded to bf16 once at the end; lse, maxlogit, D and the per-head rope-key partials fp32.
//
// Kernels (all tiles are TILE x TILE = 64 x 64, 256 threads; thread (ty, tx) = (tid / 16, tid % 16) owns the
// 4 tile rows ty*4 + r and the columns tx + 16 m of every row-major tile it accumulates):
//   attn_fwd_kernel     grid (T/64, H, B): one block per query tile; loops over the key tiles up to the diagonal
//                       with the online softmax; writes out (bf16), lse (fp32) and combines the block's maximum
//                       scaled logit into maxlogit[h] with an atomic max on the float's bit pattern (exact, and
//                       order-independent, so deterministic).
//   attn_bwd_d_kernel   D = rowsum(dO * O) per (row, head), one warp each (fixed-order butterfly).
//   attn_bwd_dkv_kernel grid (T/64, H, B): one block per key tile; loops over the query tiles from the diagonal on,
//                       recomputes P from lse, accumulates dV = P^T dO and dK = dS^T Q in registers; writes the
//                       k-nope and v columns of dkv (bf16) and this head's rope-key gradient to an fp32 scratch
//                       (N, H, rope).
//   attn_bwd_dq_kernel  grid (T/64, H, B): one block per query tile; loops over the key tiles up to the diagonal,
//                       recomputes P and dS, accumulates dQ = dS K (both halves of dqk).
//   attn_bwd_dkr_kernel da[:, kv_lora:] = sum over heads, h = 0, 1, ..., H-1 in that order, of the partials.
// Determinism: every kernel above is deterministic (each output element is produced by one thread in a fixed
// order; no float atomics anywhere; the only atomic is the integer max of maxlogit, whose result does not depend
// on the order). dQ and dK/dV come from separate kernels (P is recomputed twice) precisely so that nothing needs
// to be accumulated across blocks.
//
// Limits: dqk <= 256 and dv <= 256 (the per-thread accumulators are sized at compile time); shared memory per block
// is at most ~167 KB at those limits (~118 KB at dqk = 192, dv = 128), requested with the opt-in attribute.
// Speed: the tile products are scalar fp32 FMAs from shared memory (no tensor cores) -- simple and exact, but an
// order of magnitude below a tensor-core flash attention; an mma/WMMA version (or cuDNN) is the optimisation.
//
// These kernels are the CUDA backend's only attention: a cuDNN fused-attention path (the design's other option)
// is not written (choosing and validating its engine configurations needs a GPU; see the README's CUDA section).
#include "cuda_common.cuh"

#define ATT_TILE 64
#define ATT_THREADS 256
#define ATT_LDP (ATT_TILE + 4)  // fp32 P / dS tiles: the two half-warps' rows land 16 banks apart
#define ATT_MAX_D 256

// Row stride (in bf16 elements) of a staged tile with d columns: even (so bf16 pairs are 4-byte aligned) and
// with an odd number of 4-byte words, so 16 threads reading the same column of 16 different rows hit 16 banks.
static int att_ld(int d) {
    int p = d + (d & 1);
    if (p % 4 == 0) p += 2;
    return p;
}

// pick the compile-time column-chunk count (columns per thread = MC, 16 MC >= d)
static int att_mc(int d) {
    int c = (d + 15) / 16;
    if (c <= 1) return 1;
    if (c <= 2) return 2;
    if (c <= 4) return 4;
    if (c <= 8) return 8;
    if (c <= 12) return 12;
    if (c <= 16) return 16;
    return -1;
}

struct AttnArgs {
    int B, T, H, nope, rope, dv, kv_lora;
    int dqk, dqk2, dv2;              // dqk2, dv2: rounded up to even (the zero-padded width the dot loops run over)
    int ldq, ldv;                    // shared-memory row strides (bf16 elements) of dqk- and dv-wide tiles
    int q_stride, kv_stride, a_stride, o_stride;
    float scale;
};

static AttnArgs attn_args(int B, int T, int H, int nope, int rope, int dv, int kv_lora) {
    AttnArgs s;
    s.B = B; s.T = T; s.H = H; s.nope = nope; s.rope = rope; s.dv = dv; s.kv_lora = kv_lora;
    s.dqk = nope + rope;
    s.dqk2 = s.dqk + (s.dqk & 1);
    s.dv2 = dv + (dv & 1);
    s.ldq = att_ld(s.dqk);
    s.ldv = att_ld(dv);
    s.q_stride = H * s.dqk;
    s.kv_stride = H * (nope + dv);
    s.a_stride = kv_lora + rope;
    s.o_stride = H * dv;
    s.scale = (float)(1.0 / sqrt((double)s.dqk));  // the CPU twin's scale, to the bit
    return s;
}

// ----------------------------------------------------------------------------
// device helpers

// Stage rows [row0, row0 + TILE) of one head's Q-like tile (dqk columns of q) into shared memory; rows >= T and the
// padding column (when dqk is odd) are zero.
__device__ __forceinline__ void load_q_tile(bf16* dst, const bf16* q, const AttnArgs& s, int b, int h, int row0) {
    const bf16 zero = __float2bfloat16_rn(0.0f);
    for (int idx = threadIdx.x; idx < ATT_TILE * s.dqk2; idx += blockDim.x) {
        int r = idx / s.dqk2, c = idx - r * s.dqk2, t = row0 + r;
        bf16 v = zero;
        if (t < s.T && c < s.dqk) v = q[((size_t)b * s.T + t) * s.q_stride + (size_t)h * s.dqk + c];
        dst[r * s.ldq + c] = v;
    }
}

// The key tile: columns [0, nope) from kv (this head's k-nope), [nope, dqk) from the shared rope key in a.
__device__ __forceinline__ void load_k_tile(bf16* dst, const bf16* kv, const bf16* a, const AttnArgs& s, int b, int h,
                                            int row0) {
    const bf16 zero = __float2bfloat16_rn(0.0f);
    for (int idx = threadIdx.x; idx < ATT_TILE * s.dqk2; idx += blockDim.x) {
        int r = idx / s.dqk2, c = idx - r * s.dqk2, t = row0 + r;
        bf16 v = zero;
        if (t < s.T) {
            size_t n = (size_t)b * s.T + t;
            if (c < s.nope) v = kv[n * s.kv_stride + (size_t)h * (s.nope + s.dv) + c];
            else if (c < s.dqk) v = a[n * s.a_stride + s.kv_lora + (c - s.nope)];
        }
        dst[r * s.ldq + c] = v;
    }
}

// A dv-wide tile: this head's v columns of kv (is_v = 1), or its columns of a (N, H*dv) buffer (out / dout).
__device__ __forceinline__ void load_v_tile(bf16* dst, const bf16* src, int is_v, const AttnArgs& s, int b, int h,
                                            int row0) {
    const bf16 zero = __float2bfloat16_rn(0.0f);
    size_t stride = is_v ? (size_t)s.kv_stride : (size_t)s.o_stride;
    size_t col0 = is_v ? (size_t)h * (s.nope + s.dv) + s.nope : (size_t)h * s.dv;
    for (int idx = threadIdx.x; idx < ATT_TILE * s.dv2; idx += blockDim.x) {
        int r = idx / s.dv2, c = idx - r * s.dv2, t = row0 + r;
        bf16 v = zero;
        if (t < s.T && c < s.dv) v = src[((size_t)b * s.T + t) * stride + col0 + c];
        dst[r * s.ldv + c] = v;
    }
}

__device__ __forceinline__ float2 ld_bf2(const bf16* p) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
}

// acc[r][m] += sum over the (even, zero-padded) width w of A[(arow0 + r) * lda + c] * Bt[(bcol0 + 16 m) * ldb + c]:
// four rows of A (this thread's rows) against four rows of B (this thread's columns of the 64-wide tile)
__device__ __forceinline__ void dot_4x4(float acc[4][4], const bf16* A, int lda, int arow0, const bf16* Bm, int ldb,
                                        int brow0, int w) {
    for (int c = 0; c < w; c += 2) {
        float2 av[4], bv[4];
#pragma unroll
        for (int r = 0; r < 4; r++) av[r] = ld_bf2(A + (arow0 + r) * lda + c);
#pragma unroll
        for (int m = 0; m < 4; m++) bv[m] = ld_bf2(Bm + (brow0 + 16 * m) * ldb + c);
#pragma unroll
        for (int r = 0; r < 4; r++)
#pragma unroll
            for (int m = 0; m < 4; m++) acc[r][m] = fmaf(av[r].x, bv[m].x, fmaf(av[r].y, bv[m].y, acc[r][m]));
    }
}

// acc[r][m] += sum over the tile's 64 j of W[(ty*4 + r) * ATT_LDP + j] * X[j * ldx + tx + 16 m], for columns
// tx + 16 m < ncols: this thread's 4 rows of a 64 x 64 fp32 tile in shared memory (probabilities or their
// gradients) times a bf16 tile of 64 rows (V, dO, Q or K). Rows past T hold W = 0 and X = 0.
template <int MC>
__device__ __forceinline__ void tile_rows_times(float (&acc)[4][MC], const float* W, const bf16* X, int ldx, int ncols,
                                                int tx, int ty) {
    for (int j = 0; j < ATT_TILE; j++) {
        float w[4];
#pragma unroll
        for (int r = 0; r < 4; r++) w[r] = W[(ty * 4 + r) * ATT_LDP + j];
#pragma unroll
        for (int m = 0; m < MC; m++) {
            const int c = tx + 16 * m;
            if (c < ncols) {
                const float x = __bfloat162float(X[j * ldx + c]);
#pragma unroll
                for (int r = 0; r < 4; r++) acc[r][m] = fmaf(w[r], x, acc[r][m]);
            }
        }
    }
}

// Float max as an atomic on its bit pattern: for non-negative floats the int order is the float order, for negative
// ones the unsigned order is the reverse. Exact and independent of the order in which blocks arrive.
__device__ __forceinline__ void atomic_max_float(float* addr, float v) {
    v += 0.0f;  // -0 -> +0
    if (v >= 0.0f) atomicMax(reinterpret_cast<int*>(addr), __float_as_int(v));
    else atomicMin(reinterpret_cast<unsigned int*>(addr), __float_as_uint(v));
}

// ----------------------------------------------------------------------------
// forward

template <int MCV>
__global__ void __launch_bounds__(ATT_THREADS) attn_fwd_kernel(bf16* __restrict__ out, float* __restrict__ lse,
                                                               float* __restrict__ maxlogit, const bf16* __restrict__ q,
                                                               const bf16* __restrict__ kv, const bf16* __restrict__ a,
                                                               AttnArgs s) {
    extern __shared__ __align__(16) unsigned char att_smem[];
    bf16* Qs = reinterpret_cast<bf16*>(att_smem);
    bf16* Ks = Qs + ATT_TILE * s.ldq;
    bf16* Vs = Ks + ATT_TILE * s.ldq;
    float* Ps = reinterpret_cast<float*>(Vs + ATT_TILE * s.ldv);  // offsets are multiples of 4 bytes (ld even)

    const int qt = gridDim.x - 1 - blockIdx.x;  // the longest (last) query tiles first
    const int h = blockIdx.y, b = blockIdx.z;
    const int q0 = qt * ATT_TILE;
    const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;

    load_q_tile(Qs, q, s, b, h, q0);

    float o[4][MCV];
    float mrow[4], lrow[4];
#pragma unroll
    for (int r = 0; r < 4; r++) {
        mrow[r] = -INFINITY;
        lrow[r] = 0.0f;
#pragma unroll
        for (int m = 0; m < MCV; m++) o[r][m] = 0.0f;
    }
    float mloc = -INFINITY;  // this thread's largest valid scaled logit

    const int kend = min(q0 + ATT_TILE, s.T);  // keys [0, kend) can be seen by this tile's queries
    for (int k0 = 0; k0 < kend; k0 += ATT_TILE) {
        __syncthreads();  // the previous tile's readers of Ks, Vs, Ps are done
        load_k_tile(Ks, kv, a, s, b, h, k0);
        load_v_tile(Vs, kv, 1, s, b, h, k0);
        __syncthreads();

        float sc[4][4];
#pragma unroll
        for (int r = 0; r < 4; r++)
#pragma unroll
            for (int m = 0; m < 4; m++) sc[r][m] = 0.0f;
        dot_4x4(sc, Qs, s.ldq, ty * 4, Ks, s.ldq, tx, s.dqk2);

        // online softmax over this tile, row by row; the 16 threads of a row are one half-warp (xor < 16 stays in it)
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int qi = q0 + ty * 4 + r;
            float tmax = -INFINITY;
#pragma unroll
            for (int m = 0; m < 4; m++) {
                const int kj = k0 + tx + 16 * m;
                const bool valid = qi < s.T && kj <= qi;
                sc[r][m] = valid ? sc[r][m] * s.scale : -INFINITY;
                tmax = fmaxf(tmax, sc[r][m]);
            }
#pragma unroll
            for (int off = 8; off > 0; off >>= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, off));
            mloc = fmaxf(mloc, tmax);
            const float mnew = fmaxf(mrow[r], tmax);
            const float muse = mnew == -INFINITY ? 0.0f : mnew;  // a row with nothing valid yet stays at zero
            const float alpha = expf(mrow[r] - muse);           // exp(-inf) = 0 on the first tile
            float psum = 0.0f;
#pragma unroll
            for (int m = 0; m < 4; m++) {
                const float p = sc[r][m] == -INFINITY ? 0.0f : expf(sc[r][m] - muse);
                psum += p;
                Ps[(ty * 4 + r) * ATT_LDP + tx + 16 * m] = p;
            }
#pragma unroll
            for (int off = 8; off > 0; off >>= 1) psum += __shfl_xor_sync(0xffffffffu, psum, off);
            lrow[r] = lrow[r] * alpha + psum;
            mrow[r] = mnew;
#pragma unroll
            for (int m = 0; m < MCV; m++) o[r][m] *= alpha;
        }
        __syncthreads();  // Ps complete (only this half-warp reads its rows, but keep it simple)

        // O += P V over the tile's 64 keys (rows past T have P = 0 and V = 0)
        tile_rows_times(o, Ps, Vs, s.ldv, s.dv, tx, ty);
    }

#pragma unroll
    for (int r = 0; r < 4; r++) {
        const int qi = q0 + ty * 4 + r;
        if (qi >= s.T) continue;  // (no shuffles below)
        const float inv = 1.0f / lrow[r];
        const size_t n = (size_t)b * s.T + qi;
#pragma unroll
        for (int m = 0; m < MCV; m++) {
            const int c = tx + 16 * m;
            if (c < s.dv) out[n * s.o_stride + (size_t)h * s.dv + c] = __float2bfloat16_rn(o[r][m] * inv);
        }
        if (tx == 0) lse[((size_t)b * s.H + h) * s.T + qi] = mrow[r] + logf(lrow[r]);
    }

    // the block's largest logit -> maxlogit[h]
    const float bmax = block_max(mloc, -INFINITY);
    if (threadIdx.x == 0 && bmax > -INFINITY) atomic_max_float(maxlogit + h, bmax);
}

// ----------------------------------------------------------------------------
// backward

// D[(b, h, t)] = sum_c dout[n, h*dv + c] * out[n, h*dv + c]: one warp per (row, head)
__global__ void attn_bwd_d_kernel(float* __restrict__ D, const bf16* __restrict__ dout, const bf16* __restrict__ out,
                                  int N, int T, int H, int dv) {
    const int lane = threadIdx.x & 31;
    const size_t w = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (w >= (size_t)N * H) return;  // whole warps leave together
    const size_t n = w / H;
    const int h = (int)(w - n * H);
    const bf16* g = dout + n * (size_t)H * dv + (size_t)h * dv;
    const bf16* o = out + n * (size_t)H * dv + (size_t)h * dv;
    float acc = 0.0f;
    for (int c = lane; c < dv; c += 32) acc = fmaf(__bfloat162float(g[c]), __bfloat162float(o[c]), acc);
    acc = warp_sum(acc);
    const size_t b = n / T, t = n - b * T;
    if (lane == 0) D[(b * H + h) * T + t] = acc;
}

// One block per key tile: dK (nope -> dkv, rope -> dkr scratch) and dV (-> dkv).
template <int MCQ, int MCV>
__global__ void __launch_bounds__(ATT_THREADS) attn_bwd_dkv_kernel(bf16* __restrict__ dkv, float* __restrict__ dkr,
                                                                   const bf16* __restrict__ dout,
                                                                   const bf16* __restrict__ q,
                                                                   const bf16* __restrict__ kv,
                                                                   const bf16* __restrict__ a,
                                                                   const float* __restrict__ lse,
                                                                   const float* __restrict__ D, AttnArgs s) {
    extern __shared__ __align__(16) unsigned char att_smem[];
    bf16* Ks = reinterpret_cast<bf16*>(att_smem);
    bf16* Qs = Ks + ATT_TILE * s.ldq;
    bf16* Vs = Qs + ATT_TILE * s.ldq;
    bf16* dOs = Vs + ATT_TILE * s.ldv;
    float* Pt = reinterpret_cast<float*>(dOs + ATT_TILE * s.ldv);  // (key row, query col)
    float* dSt = Pt + ATT_TILE * ATT_LDP;
    float* lse_s = dSt + ATT_TILE * ATT_LDP;
    float* D_s = lse_s + ATT_TILE;

    const int kt = blockIdx.x;  // the longest (first) key tiles first
    const int h = blockIdx.y, b = blockIdx.z;
    const int k0 = kt * ATT_TILE;
    const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;

    load_k_tile(Ks, kv, a, s, b, h, k0);
    load_v_tile(Vs, kv, 1, s, b, h, k0);

    float dk[4][MCQ], dvacc[4][MCV];
#pragma unroll
    for (int r = 0; r < 4; r++) {
#pragma unroll
        for (int m = 0; m < MCQ; m++) dk[r][m] = 0.0f;
#pragma unroll
        for (int m = 0; m < MCV; m++) dvacc[r][m] = 0.0f;
    }

    // query tiles at or after the diagonal (tiles are aligned and equal, so earlier queries see none of these keys)
    for (int q0 = k0; q0 < s.T; q0 += ATT_TILE) {
        __syncthreads();  // previous iteration's readers are done
        load_q_tile(Qs, q, s, b, h, q0);
        load_v_tile(dOs, dout, 0, s, b, h, q0);
        for (int i = threadIdx.x; i < ATT_TILE; i += blockDim.x) {
            const int t = q0 + i;
            const size_t li = ((size_t)b * s.H + h) * s.T + t;
            lse_s[i] = t < s.T ? lse[li] : 0.0f;
            D_s[i] = t < s.T ? D[li] : 0.0f;
        }
        __syncthreads();

        // this thread: key rows ty*4 + r, query columns tx + 16 m
        float sc[4][4], dp[4][4];
#pragma unroll
        for (int r = 0; r < 4; r++)
#pragma unroll
            for (int m = 0; m < 4; m++) { sc[r][m] = 0.0f; dp[r][m] = 0.0f; }
        dot_4x4(sc, Ks, s.ldq, ty * 4, Qs, s.ldq, tx, s.dqk2);
        dot_4x4(dp, Vs, s.ldv, ty * 4, dOs, s.ldv, tx, s.dv2);
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int kj = k0 + ty * 4 + r;
#pragma unroll
            for (int m = 0; m < 4; m++) {
                const int i = tx + 16 * m, qi = q0 + i;
                const bool valid = qi < s.T && kj <= qi;
                const float p = valid ? expf(sc[r][m] * s.scale - lse_s[i]) : 0.0f;
                Pt[(ty * 4 + r) * ATT_LDP + i] = p;
                dSt[(ty * 4 + r) * ATT_LDP + i] = p * (dp[r][m] - D_s[i]) * s.scale;
            }
        }
        __syncthreads();

        // dV[j] += sum_i P[i][j] dO[i] ; dK[j] += sum_i dS[i][j] Q[i]  (rows past T: P = dS = 0)
        tile_rows_times(dvacc, Pt, dOs, s.ldv, s.dv, tx, ty);
        tile_rows_times(dk, dSt, Qs, s.ldq, s.dqk, tx, ty);
    }

#pragma unroll
    for (int r = 0; r < 4; r++) {
        const int kj = k0 + ty * 4 + r;
        if (kj >= s.T) continue;
        const size_t n = (size_t)b * s.T + kj;
        bf16* drow = dkv + n * s.kv_stride + (size_t)h * (s.nope + s.dv);
#pragma unroll
        for (int m = 0; m < MCQ; m++) {
            const int c = tx + 16 * m;
            if (c < s.nope) drow[c] = __float2bfloat16_rn(dk[r][m]);
            else if (c < s.dqk) dkr[(n * s.H + h) * s.rope + (c - s.nope)] = dk[r][m];
        }
#pragma unroll
        for (int m = 0; m < MCV; m++) {
            const int c = tx + 16 * m;
            if (c < s.dv) drow[s.nope + c] = __float2bfloat16_rn(dvacc[r][m]);
        }
    }
}

// One block per query tile: dQ = dS K over the keys up to the diagonal.
template <int MCQ>
__global__ void __launch_bounds__(ATT_THREADS) attn_bwd_dq_kernel(bf16* __restrict__ dq,
                                                                  const bf16* __restrict__ dout,
                                                                  const bf16* __restrict__ q,
                                                                  const bf16* __restrict__ kv,
                                                                  const bf16* __restrict__ a,
                                                                  const float* __restrict__ lse,
                                                                  const float* __restrict__ D, AttnArgs s) {
    extern __shared__ __align__(16) unsigned char att_smem[];
    bf16* Qs = reinterpret_cast<bf16*>(att_smem);
    bf16* Ks = Qs + ATT_TILE * s.ldq;
    bf16* dOs = Ks + ATT_TILE * s.ldq;
    bf16* Vs = dOs + ATT_TILE * s.ldv;
    float* dSs = reinterpret_cast<float*>(Vs + ATT_TILE * s.ldv);  // (query row, key col)
    float* lse_s = dSs + ATT_TILE * ATT_LDP;
    float* D_s = lse_s + ATT_TILE;

    const int qt = gridDim.x - 1 - blockIdx.x;
    const int h = blockIdx.y, b = blockIdx.z;
    const int q0 = qt * ATT_TILE;
    const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;

    load_q_tile(Qs, q, s, b, h, q0);
    load_v_tile(dOs, dout, 0, s, b, h, q0);
    for (int i = threadIdx.x; i < ATT_TILE; i += blockDim.x) {
        const int t = q0 + i;
        const size_t li = ((size_t)b * s.H + h) * s.T + t;
        lse_s[i] = t < s.T ? lse[li] : 0.0f;
        D_s[i] = t < s.T ? D[li] : 0.0f;
    }

    float dqa[4][MCQ];
#pragma unroll
    for (int r = 0; r < 4; r++)
#pragma unroll
        for (int m = 0; m < MCQ; m++) dqa[r][m] = 0.0f;

    const int kend = min(q0 + ATT_TILE, s.T);
    for (int k0 = 0; k0 < kend; k0 += ATT_TILE) {
        __syncthreads();
        load_k_tile(Ks, kv, a, s, b, h, k0);
        load_v_tile(Vs, kv, 1, s, b, h, k0);
        __syncthreads();

        // this thread: query rows ty*4 + r, key columns tx + 16 m
        float sc[4][4], dp[4][4];
#pragma unroll
        for (int r = 0; r < 4; r++)
#pragma unroll
            for (int m = 0; m < 4; m++) { sc[r][m] = 0.0f; dp[r][m] = 0.0f; }
        dot_4x4(sc, Qs, s.ldq, ty * 4, Ks, s.ldq, tx, s.dqk2);
        dot_4x4(dp, dOs, s.ldv, ty * 4, Vs, s.ldv, tx, s.dv2);
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int i = ty * 4 + r, qi = q0 + i;
#pragma unroll
            for (int m = 0; m < 4; m++) {
                const int kj = k0 + tx + 16 * m;
                const bool valid = qi < s.T && kj <= qi;
                const float p = valid ? expf(sc[r][m] * s.scale - lse_s[i]) : 0.0f;
                dSs[i * ATT_LDP + tx + 16 * m] = p * (dp[r][m] - D_s[i]) * s.scale;
            }
        }
        __syncthreads();

        // dQ[i] += sum_j dS[i][j] K[j]
        tile_rows_times(dqa, dSs, Ks, s.ldq, s.dqk, tx, ty);
    }

#pragma unroll
    for (int r = 0; r < 4; r++) {
        const int qi = q0 + ty * 4 + r;
        if (qi >= s.T) continue;
        bf16* drow = dq + ((size_t)b * s.T + qi) * s.q_stride + (size_t)h * s.dqk;
#pragma unroll
        for (int m = 0; m < MCQ; m++) {
            const int c = tx + 16 * m;
            if (c < s.dqk) drow[c] = __float2bfloat16_rn(dqa[r][m]);
        }
    }
}

// da[n, kv_lora + r] = sum over heads in order of dkr[n, h, r]
__global__ void attn_bwd_dkr_kernel(bf16* __restrict__ da, const float* __restrict__ dkr, int N, int H, int rope,
                                    int a_stride, int kv_lora) {
    GRID_STRIDE_LOOP(idx, (size_t)N * rope) {
        const size_t n = idx / rope;
        const int r = (int)(idx - n * rope);
        const float* src = dkr + n * (size_t)H * rope + r;
        float acc = 0.0f;
        for (int h = 0; h < H; h++) acc += src[(size_t)h * rope];
        da[n * a_stride + kv_lora + r] = __float2bfloat16_rn(acc);
    }
}

// ----------------------------------------------------------------------------
// host side

static size_t fwd_smem(const AttnArgs& s) {
    return (size_t)ATT_TILE * (2 * s.ldq + s.ldv) * sizeof(bf16) + (size_t)ATT_TILE * ATT_LDP * sizeof(float);
}
static size_t dkv_smem(const AttnArgs& s) {
    return (size_t)ATT_TILE * (2 * s.ldq + 2 * s.ldv) * sizeof(bf16) + (size_t)2 * ATT_TILE * ATT_LDP * sizeof(float) +
           (size_t)2 * ATT_TILE * sizeof(float);
}
static size_t dq_smem(const AttnArgs& s) {
    return (size_t)ATT_TILE * (2 * s.ldq + 2 * s.ldv) * sizeof(bf16) + (size_t)ATT_TILE * ATT_LDP * sizeof(float) +
           (size_t)2 * ATT_TILE * sizeof(float);
}

static int att_smem_optin(void) {
    static int v = -1;
    if (v < 0) {
        int dev;
        cudaCheck(cudaGetDevice(&dev));
        cudaCheck(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    }
    return v;
}

static void att_check_shape(const char* who, const AttnArgs& s, size_t smem) {
    if (s.dqk > ATT_MAX_D || s.dv > ATT_MAX_D || s.dqk < 1 || s.dv < 1 || s.rope < 1)
        fatal("%s: head dims dqk=%d dv=%d rope=%d unsupported (1..%d)", who, s.dqk, s.dv, s.rope, ATT_MAX_D);
    if (smem > (size_t)att_smem_optin())
        fatal("%s: needs %zu bytes of shared memory per block, the device allows %d", who, smem, att_smem_optin());
}

template <typename Kern>
static void att_set_smem(Kern kern, size_t smem) {
    cudaCheck(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
}

template <int MCV>
static void launch_fwd(bf16* out, float* lse, float* maxlogit, const bf16* q, const bf16* kv, const bf16* a,
                       const AttnArgs& s) {
    size_t smem = fwd_smem(s);
    att_set_smem(attn_fwd_kernel<MCV>, smem);
    dim3 grid(ceil_div_u(s.T, ATT_TILE), s.H, s.B);
    attn_fwd_kernel<MCV><<<grid, ATT_THREADS, smem, cuda_stream>>>(out, lse, maxlogit, q, kv, a, s);
    cudaCheckLaunch();
}

extern "C" void cuda_attention_forward(void* out, float* lse, float* maxlogit, const void* q, const void* kv,
                                       const void* a, MlaShape shape) {
    int B = shape.B, T = shape.T, H = shape.H, nope = shape.nope, rope = shape.rope, dv = shape.dv;
    int kv_lora = shape.kv_lora;
    if (B <= 0 || T <= 0 || H <= 0) return;
    AttnArgs s = attn_args(B, T, H, nope, rope, dv, kv_lora);
    att_check_shape("cuda_attention_forward", s, fwd_smem(s));
    bf16* o = (bf16*)out;
    const bf16 *qq = (const bf16*)q, *kk = (const bf16*)kv, *aa = (const bf16*)a;
    switch (att_mc(dv)) {
        case 1: launch_fwd<1>(o, lse, maxlogit, qq, kk, aa, s); break;
        case 2: launch_fwd<2>(o, lse, maxlogit, qq, kk, aa, s); break;
        case 4: launch_fwd<4>(o, lse, maxlogit, qq, kk, aa, s); break;
        case 8: launch_fwd<8>(o, lse, maxlogit, qq, kk, aa, s); break;
        case 12: launch_fwd<12>(o, lse, maxlogit, qq, kk, aa, s); break;
        case 16: launch_fwd<16>(o, lse, maxlogit, qq, kk, aa, s); break;
        default: fatal("cuda_attention_forward: dv=%d unsupported", dv);
    }
}

struct BwdPtrs {
    bf16 *dq, *dkv;
    float *dkr, *D;
    const bf16 *dout, *q, *kv, *a;
    const float* lse;
};

template <int MCQ, int MCV>
static void launch_bwd(const BwdPtrs& p, const AttnArgs& s) {
    dim3 grid(ceil_div_u(s.T, ATT_TILE), s.H, s.B);
    size_t sm1 = dkv_smem(s), sm2 = dq_smem(s);
    att_set_smem(attn_bwd_dkv_kernel<MCQ, MCV>, sm1);
    attn_bwd_dkv_kernel<MCQ, MCV><<<grid, ATT_THREADS, sm1, cuda_stream>>>(p.dkv, p.dkr, p.dout, p.q, p.kv, p.a,
                                                                            p.lse, p.D, s);
    cudaCheckLaunch();
    att_set_smem(attn_bwd_dq_kernel<MCQ>, sm2);
    attn_bwd_dq_kernel<MCQ><<<grid, ATT_THREADS, sm2, cuda_stream>>>(p.dq, p.dout, p.q, p.kv, p.a, p.lse, p.D, s);
    cudaCheckLaunch();
}

template <int MCQ>
static void launch_bwd_v(const BwdPtrs& p, const AttnArgs& s, int mcv) {
    switch (mcv) {
        case 1: launch_bwd<MCQ, 1>(p, s); break;
        case 2: launch_bwd<MCQ, 2>(p, s); break;
        case 4: launch_bwd<MCQ, 4>(p, s); break;
        case 8: launch_bwd<MCQ, 8>(p, s); break;
        case 12: launch_bwd<MCQ, 12>(p, s); break;
        case 16: launch_bwd<MCQ, 16>(p, s); break;
        default: fatal("cuda_attention_backward: dv=%d unsupported", s.dv);
    }
}

static CudaScratch att_scratch_dkr, att_scratch_D;

extern "C" void cuda_attention_backward(void* dq, void* dkv, void* da, const void* dout, const void* q, const void* kv,
                                        const void* a, const void* out, const float* lse, MlaShape shape) {
    int B = shape.B, T = shape.T, H = shape.H, nope = shape.nope, rope = shape.rope, dv = shape.dv;
    int kv_lora = shape.kv_lora;
    if (B <= 0 || T <= 0 || H <= 0) return;
    AttnArgs s = attn_args(B, T, H, nope, rope, dv, kv_lora);
    size_t smem = dkv_smem(s) > dq_smem(s) ? dkv_smem(s) : dq_smem(s);
    att_check_shape("cuda_attention_backward", s, smem);
    const size_t N = (size_t)B * T;
    BwdPtrs p;
    p.dq = (bf16*)dq;
    p.dkv = (bf16*)dkv;
    p.dkr = (float*)cuda_scratch(&att_scratch_dkr, N * H * rope * sizeof(float));
    p.D = (float*)cuda_scratch(&att_scratch_D, N * H * sizeof(float));
    p.dout = (const bf16*)dout;
    p.q = (const bf16*)q;
    p.kv = (const bf16*)kv;
    p.a = (const bf16*)a;
    p.lse = lse;

    {
        const int threads = 256, warps = threads / 32;
        attn_bwd_d_kernel<<<ceil_div_u(N * H, warps), threads, 0, cuda_stream>>>(p.D, p.dout, (const bf16*)out, (int)N,
                                                                                 T, H, dv);
        cudaCheckLaunch();
    }
    int mcv = att_mc(dv);
    switch (att_mc(s.dqk)) {
        case 1: launch_bwd_v<1>(p, s, mcv); break;
        case 2: launch_bwd_v<2>(p, s, mcv); break;
        case 4: launch_bwd_v<4>(p, s, mcv); break;
        case 8: launch_bwd_v<8>(p, s, mcv); break;
        case 12: launch_bwd_v<12>(p, s, mcv); break;
        case 16: launch_bwd_v<16>(p, s, mcv); break;
        default: fatal("cuda_attention_backward: dqk=%d unsupported", s.dqk);
    }
    attn_bwd_dkr_kernel<<<grid_for(N * rope, 256), 256, 0, cuda_stream>>>((bf16*)da, p.dkr, (int)N, H, rope,
                                                                          s.a_stride, kv_lora);
    cudaCheckLaunch();
}
