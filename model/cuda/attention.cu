// model/cuda/attention.cu: causal MLA attention on the GPU, our own flash-attention-style kernels.
//
// Shapes (model/ops.h, model/MODEL.md): q (N, H*dqk) with RoPE applied, kv (N, H*(nope+dv)), a (N, kv_lora+rope)
// whose columns [kv_lora, kv_lora+rope) are the rope key shared by every head. dqk = nope + rope may differ from dv.
// Per sequence b and head h: K = [kv[:, h, :nope] | a[:, kv_lora:]] (never materialised: a key tile is loaded
// from both places), V = kv[:, h, nope:], S = Q K^T / sqrt(dqk) causal, P = softmax(S), O = P V.
//
// Precision: bf16 inputs staged in shared memory as bf16 (head dims zero-padded to a multiple of 16); the tile
// products on tensor cores (nvcuda::wmma 16x16x16, bf16 operands, fp32 accumulation): S = Q K^T and dP = dO V^T
// from the bf16 inputs, then O += P V, dV += P^T dO, dK += dS^T Q, dQ += dS K with P and dS rounded to bf16 (as
// FlashAttention does; the row sum l stays the fp32 sum of the unrounded p). Softmax, lse, D, the online rescale,
// maxlogit and the per-head rope-key partials fp32; exp by expf; out and the input gradients rounded to bf16 once at
// the end. Against the fp32 CPU twin: out within ~2^-9 of the values' scale (relative L2 ~2e-3), the gradients
// relative L2 ~3e-3 (tests/test_cuda_attn_moe.c).
//
// Kernels (all tiles are TILE x TILE = 64 x 64, 256 threads = 8 warps). Tile products: warp w owns the 16 x 16
// blocks of row block w & 3 and column blocks (w >> 2) + 2 f (two blocks of a 64 x 64 S, ceil(d / 32) of a d-wide
// accumulator, kept in fragments across the loop). The fragment layout is unspecified, so row-wise work goes
// through shared memory: S / dP are stored as fp32 tiles, read by thread (ty, tx) = (tid / 16, tid % 16) for the
// 4 rows ty*4 + r and columns tx + 16 m (softmax, masking, dS), which writes P / dS as bf16 tiles for the next
// product; the online rescale multiplies O's fragments elementwise by a fragment of the same kind loaded from a
// (64, 16) tile of each row's factor; results leave the fragments through a per-warp 16 x 16 staging tile.
//   attn_fwd_kernel     grid (T/64, H, B): one block per query tile; loops over the key tiles up to the diagonal
//                       with the online softmax; writes out (bf16), lse (fp32) and combines the block's maximum
//                       scaled logit (from the fp32 S, before any rounding) into maxlogit[h] with an atomic max on
//                       the float's bit pattern (exact, and order-independent, so deterministic).
//   attn_maxlogit_kernel the forward's max logit alone (cuda_attn_maxlogit, for a fused attention that does not
//                       report it): the same Q K^T tiles, masking and scaling, so the same value bit for bit.
//   attn_bwd_d_kernel   D = rowsum(dO * O) per (row, head), one warp each (fixed-order butterfly).
//   attn_bwd_dkv_kernel grid (T/64, H, B): one block per key tile; loops over the query tiles from the diagonal on,
//                       recomputes P^T = exp(K Q^T scale - lse) and dP^T = V dO^T, accumulates dV = P^T dO and
//                       dK = dS^T Q in fragments; writes the k-nope and v columns of dkv (bf16) and this head's
//                       rope-key gradient to an fp32 scratch (N, H, rope).
//   attn_bwd_dq_kernel  grid (T/64, H, B): one block per query tile; loops over the key tiles up to the diagonal,
//                       recomputes P and dS, accumulates dQ = dS K (both halves of dqk).
//   attn_bwd_dkr_kernel da[:, kv_lora:] = sum over heads, h = 0, 1, ..., H-1 in that order, of the partials.
// Determinism: every kernel above is deterministic (each output element is produced by one warp or thread in a
// fixed order -- an mma's summation order is fixed by the hardware; no float atomics anywhere; the only atomic is
// the integer max of maxlogit, whose result does not depend on the order). dQ and dK/dV come from separate kernels
// (P is recomputed twice) precisely so that nothing needs to be accumulated across blocks.
//
// Limits: dqk <= 256 and dv <= 256 (the fragment arrays are sized at compile time: 1, 2, 4, 6 or 8 per warp);
// shared memory per block (K2 head, dqk = 192, dv = 128): forward 97 KB, dK/dV 137 KB, dQ 111 KB, max logit
// 67 KB; at most ~184 KB at dqk = dv = 256; requested with the opt-in attribute. Global tiles are read with 16-byte
// vectors when every row start and column range is 16-byte aligned (head dims multiples of 8), else per element.
// Speed (dev/results/attention_tc_2026-12-03.md: a model from the per-tile work and ptxas's counts, not yet measured
// on a GPU): at the K2 head shape every kernel is bound by shared-memory bandwidth (8-9 FLOP per byte of fragment
// loads and fp32 staging, ~320 KB per 64 x 64 tile pair in the forward), plus the synchronous tile loads. Forward
// (128 registers, 2 blocks/SM) ~0.20-0.30 ms per k2-small layer (B=4, T=2048; ~150-220 TFLOP/s on an H100),
// backward (dK/dV 174 registers, 1 block/SM; dQ 128, 2 blocks/SM) ~0.65-0.9 ms -- 7-9x the scalar-FMA kernels this replaced, still 2-4x
// below FlashAttention-3 / cuDNN (wgmma, TMA, asynchronous double-buffered loads, softmax in registers).
//
// These kernels are the CUDA backend's attention; a cuDNN fused-attention path is the design's other option (see
// the README's CUDA section).
#include "cuda_common.cuh"
#include <mma.h>
using namespace nvcuda;

#define ATT_TILE 64
#define ATT_THREADS 256             // 8 warps
#define ATT_LDS (ATT_TILE + 4)      // row stride (floats) of the fp32 64 x 64 tiles: a multiple of 4 (wmma: 16 bytes)
#define ATT_LDB (ATT_TILE + 8)      // row stride (bf16) of the bf16 64 x 64 tiles (P, dS): a multiple of 8
#define ATT_MAX_D 256
#define ATT_LOAD_BATCH 4           // 16-byte global loads in flight per thread while staging a tile

typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> FragC;
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> FragA;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> FragB;     // B (k, n) stored row-major
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> FragBt;    // B = X^T, X (n, k) row-major

static int pad16(int d) { return (d + 15) & ~15; }

// accumulator fragments per warp for a d-wide output (d / 16 column blocks over 2 warps per row block), rounded up
// to an instantiated count
static int att_frags(int d) {
    int f = (pad16(d) / 16 + 1) / 2;
    if (f <= 1) return 1;
    if (f <= 2) return 2;
    if (f <= 4) return 4;
    if (f <= 6) return 6;
    if (f <= 8) return 8;
    return -1;
}

struct AttnArgs {
    int B, T, H, nope, rope, dv, kv_lora;
    int dqk, dqkp, dvp;              // dqkp, dvp: head dims rounded up to 16 (zero columns in shared memory)
    int ldq, ldv;                    // shared-memory row strides (bf16 elements) of dqk- and dv-wide tiles
    int q_stride, kv_stride, a_stride, o_stride;
    float scale;
};

static AttnArgs attn_args(int B, int T, int H, int nope, int rope, int dv, int kv_lora) {
    AttnArgs s;
    s.B = B; s.T = T; s.H = H; s.nope = nope; s.rope = rope; s.dv = dv; s.kv_lora = kv_lora;
    s.dqk = nope + rope;
    s.dqkp = pad16(s.dqk);
    s.dvp = pad16(dv);
    s.ldq = s.dqkp + 8;  // +16 bytes: the 8 rows a fragment load reads at once start in different banks
    s.ldv = s.dvp + 8;
    s.q_stride = H * s.dqk;
    s.kv_stride = H * (nope + dv);
    s.a_stride = kv_lora + rope;
    s.o_stride = H * dv;
    s.scale = (float)(1.0 / sqrt((double)s.dqk));  // the CPU twin's scale, to the bit
    return s;
}

// ----------------------------------------------------------------------------
// device helpers: staging tiles

// Copy columns [0, ncols) of 64 rows (row r at src + r * stride; rows >= nrows are zero) into columns [c0, c0 + ncols)
// of a shared tile with row stride ld. With 16-byte vectors (8 bf16) where every row start and both column ranges
// allow it (the model's head dims are multiples of 8), else element by element; the condition is the same for the
// whole block.
__device__ __forceinline__ void load_cols(bf16* dst, int ld, int c0, const bf16* src, size_t stride, int ncols,
                                          int nrows) {
    const bool vec = ((uintptr_t)src & 15) == 0 && (stride & 7) == 0 && (ncols & 7) == 0 && (c0 & 7) == 0;
    if (vec) {
        // ATT_LOAD_BATCH loads in flight per thread before their stores: the tile is read synchronously, so its
        // time is the L2 latency times the number of batches (10 vectors per thread for a K2 key + value tile)
        const int nv = ncols >> 3, total = ATT_TILE * nv;  // vectors per row, per tile
        for (int base = threadIdx.x; base < total; base += ATT_LOAD_BATCH * blockDim.x) {
            uint4 v[ATT_LOAD_BATCH];
#pragma unroll
            for (int u = 0; u < ATT_LOAD_BATCH; u++) {
                const int idx = base + u * blockDim.x, r = idx / nv, c = (idx - r * nv) << 3;
                v[u] = make_uint4(0u, 0u, 0u, 0u);
                if (idx < total && r < nrows) v[u] = *reinterpret_cast<const uint4*>(src + (size_t)r * stride + c);
            }
#pragma unroll
            for (int u = 0; u < ATT_LOAD_BATCH; u++) {
                const int idx = base + u * blockDim.x, r = idx / nv, c = (idx - r * nv) << 3;
                if (idx < total) *reinterpret_cast<uint4*>(dst + r * ld + c0 + c) = v[u];
            }
        }
    } else {
        const bf16 zero = __float2bfloat16_rn(0.0f);
        for (int idx = threadIdx.x; idx < ATT_TILE * ncols; idx += blockDim.x) {
            const int r = idx / ncols, c = idx - r * ncols;
            dst[r * ld + c0 + c] = r < nrows ? src[(size_t)r * stride + c] : zero;
        }
    }
}

// zero columns [d, dp) of a 64-row shared tile (the padding to a multiple of 16 that the products run over)
__device__ __forceinline__ void zero_pad_cols(bf16* dst, int ld, int d, int dp) {
    const int w = dp - d;
    if (w == 0) return;
    const bf16 zero = __float2bfloat16_rn(0.0f);
    for (int idx = threadIdx.x; idx < ATT_TILE * w; idx += blockDim.x) {
        const int r = idx / w;
        dst[r * ld + d + (idx - r * w)] = zero;
    }
}

// Stage rows [row0, row0 + TILE) of one head's Q-like tile (dqk columns of q) into shared memory; rows >= T and the
// padding columns [dqk, dqkp) are zero (they enter the products as zeros).
__device__ __forceinline__ void load_q_tile(bf16* dst, const bf16* q, const AttnArgs& s, int b, int h, int row0) {
    const bf16* src = q + ((size_t)b * s.T + row0) * s.q_stride + (size_t)h * s.dqk;
    load_cols(dst, s.ldq, 0, src, s.q_stride, s.dqk, s.T - row0);
    zero_pad_cols(dst, s.ldq, s.dqk, s.dqkp);
}

// The key tile: columns [0, nope) from kv (this head's k-nope), [nope, dqk) from the shared rope key in a.
__device__ __forceinline__ void load_k_tile(bf16* dst, const bf16* kv, const bf16* a, const AttnArgs& s, int b, int h,
                                            int row0) {
    const size_t n0 = (size_t)b * s.T + row0;
    if (s.nope > 0) load_cols(dst, s.ldq, 0, kv + n0 * s.kv_stride + (size_t)h * (s.nope + s.dv), s.kv_stride, s.nope,
                              s.T - row0);
    load_cols(dst, s.ldq, s.nope, a + n0 * s.a_stride + s.kv_lora, s.a_stride, s.rope, s.T - row0);
    zero_pad_cols(dst, s.ldq, s.dqk, s.dqkp);
}

// A dv-wide tile: this head's v columns of kv (is_v = 1), or its columns of a (N, H*dv) buffer (out / dout).
__device__ __forceinline__ void load_v_tile(bf16* dst, const bf16* src, int is_v, const AttnArgs& s, int b, int h,
                                            int row0) {
    const size_t stride = is_v ? (size_t)s.kv_stride : (size_t)s.o_stride;
    const size_t col0 = is_v ? (size_t)h * (s.nope + s.dv) + s.nope : (size_t)h * s.dv;
    load_cols(dst, s.ldv, 0, src + ((size_t)b * s.T + row0) * stride + col0, stride, s.dv, s.T - row0);
    zero_pad_cols(dst, s.ldv, s.dv, s.dvp);
}

// lse and D of the query tile's rows (0 past T) into shared memory
__device__ __forceinline__ void load_row_stats(float* lse_s, float* D_s, const float* lse, const float* D,
                                               const AttnArgs& s, int b, int h, int row0) {
    for (int i = threadIdx.x; i < ATT_TILE; i += blockDim.x) {
        const int t = row0 + i;
        const size_t li = ((size_t)b * s.H + h) * s.T + t;
        lse_s[i] = t < s.T ? lse[li] : 0.0f;
        D_s[i] = t < s.T ? D[li] : 0.0f;
    }
}

// ----------------------------------------------------------------------------
// device helpers: tile products on tensor cores
//
// Every 64-row result is 4 row blocks of 16; warp w owns row block w & 3 and the column blocks (w >> 2) + 2 f,
// f = 0, 1, ... (so a 64 x 64 tile is 2 blocks per warp and a d-wide accumulator ceil(d / 32) blocks).

// C (64 x 64 fp32, stride ATT_LDS) = A X^T over the first kdim (a multiple of 16) columns: A and X are 64-row bf16
// tiles, row-major with strides lda and ldx (so C[i][j] = A[i] . X[j]: S = Q K^T, dP = dO V^T, or their transposes).
__device__ __forceinline__ void tile_abt(float* C, const bf16* A, int lda, const bf16* X, int ldx, int kdim) {
    const int warp = threadIdx.x >> 5, rb = warp & 3, cb0 = warp >> 2;
    FragC c[2];
    wmma::fill_fragment(c[0], 0.0f);
    wmma::fill_fragment(c[1], 0.0f);
    for (int k = 0; k < kdim; k += 16) {
        FragA fa;
        wmma::load_matrix_sync(fa, A + rb * 16 * lda + k, lda);
#pragma unroll
        for (int f = 0; f < 2; f++) {
            FragBt fb;
            wmma::load_matrix_sync(fb, X + (cb0 + 2 * f) * 16 * ldx + k, ldx);
            wmma::mma_sync(c[f], fa, fb, c[f]);
        }
    }
#pragma unroll
    for (int f = 0; f < 2; f++)
        wmma::store_matrix_sync(C + rb * 16 * ATT_LDS + (cb0 + 2 * f) * 16, c[f], ATT_LDS, wmma::mem_row_major);
}

// acc += W X: W a 64 x 64 bf16 tile (stride ATT_LDB; P, P^T, dS or dS^T), X a 64-row bf16 tile (stride ldx) of
// which the first nblocks 16-column blocks are used; this warp's blocks of the 64 x 16 nblocks result.
template <int F>
__device__ __forceinline__ void tile_acc(FragC (&acc)[F], const bf16* W, const bf16* X, int ldx, int nblocks) {
    const int warp = threadIdx.x >> 5, rb = warp & 3, cb0 = warp >> 2;
#pragma unroll
    for (int k = 0; k < ATT_TILE; k += 16) {
        FragA fa;
        wmma::load_matrix_sync(fa, W + rb * 16 * ATT_LDB + k, ATT_LDB);
#pragma unroll
        for (int f = 0; f < F; f++) {
            const int cb = cb0 + 2 * f;
            if (cb < nblocks) {  // warp-uniform
                FragB fb;
                wmma::load_matrix_sync(fb, X + k * ldx + cb * 16, ldx);
                wmma::mma_sync(acc[f], fa, fb, acc[f]);
            }
        }
    }
}

// The fragment layout is unspecified, so results leave a fragment through a per-warp 16 x 16 fp32 staging tile in
// shared memory: store, then lane l reads row l / 2, columns (l % 2) * 8 + j, j < 8 (the caller loops over j and
// must __syncwarp() before the next stage_block reuses the tile).
__device__ __forceinline__ void stage_block(float* stage, const FragC& c) {
    wmma::store_matrix_sync(stage, c, 16, wmma::mem_row_major);
    __syncwarp();
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

template <int FV>
__global__ void __launch_bounds__(ATT_THREADS) attn_fwd_kernel(bf16* __restrict__ out, float* __restrict__ lse,
                                                               float* __restrict__ maxlogit, const bf16* __restrict__ q,
                                                               const bf16* __restrict__ kv, const bf16* __restrict__ a,
                                                               AttnArgs s) {
    extern __shared__ __align__(128) unsigned char att_smem[];
    bf16* Qs = reinterpret_cast<bf16*>(att_smem);                 // every region starts on a 32-byte boundary
    bf16* Ks = Qs + ATT_TILE * s.ldq;
    bf16* Vs = Ks + ATT_TILE * s.ldq;
    float* Ss = reinterpret_cast<float*>(Vs + ATT_TILE * s.ldv);  // fp32 scores; after the loop, staging tiles
    bf16* Pb = reinterpret_cast<bf16*>(Ss + ATT_TILE * ATT_LDS);  // P rounded to bf16
    float* alpha_s = reinterpret_cast<float*>(Pb + ATT_TILE * ATT_LDB);  // (64, 16): row i's rescale, 16 copies
    float* linv_s = alpha_s + ATT_TILE * 16;                              // (64): 1 / row sum

    const int qt = gridDim.x - 1 - blockIdx.x;  // the longest (last) query tiles first
    const int h = blockIdx.y, b = blockIdx.z;
    const int q0 = qt * ATT_TILE;
    const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;  // softmax: rows ty*4 + r, columns tx + 16 m
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, rb = warp & 3, cb0 = warp >> 2;
    const int nvb = s.dvp / 16;

    load_q_tile(Qs, q, s, b, h, q0);

    FragC o[FV];
#pragma unroll
    for (int f = 0; f < FV; f++) wmma::fill_fragment(o[f], 0.0f);
    float mrow[4], lrow[4];
#pragma unroll
    for (int r = 0; r < 4; r++) { mrow[r] = -INFINITY; lrow[r] = 0.0f; }
    float mloc = -INFINITY;  // this thread's largest valid scaled logit

    const int kend = min(q0 + ATT_TILE, s.T);  // keys [0, kend) can be seen by this tile's queries
    for (int k0 = 0; k0 < kend; k0 += ATT_TILE) {
        __syncthreads();  // the previous tile's readers of Ks, Vs, Pb, alpha_s are done
        load_k_tile(Ks, kv, a, s, b, h, k0);
        load_v_tile(Vs, kv, 1, s, b, h, k0);
        __syncthreads();
        tile_abt(Ss, Qs, s.ldq, Ks, s.ldq, s.dqkp);  // S = Q K^T (unscaled, fp32)
        __syncthreads();

        // online softmax over this tile, row by row; the 16 threads of a row are one half-warp (xor < 16 stays in it)
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int i = ty * 4 + r, qi = q0 + i;
            float sc[4];
            float tmax = -INFINITY;
#pragma unroll
            for (int m = 0; m < 4; m++) {
                const int kj = k0 + tx + 16 * m;
                const bool valid = qi < s.T && kj <= qi;
                sc[m] = valid ? Ss[i * ATT_LDS + tx + 16 * m] * s.scale : -INFINITY;
                tmax = fmaxf(tmax, sc[m]);
            }
#pragma unroll
            for (int off = 8; off > 0; off >>= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, off));
            mloc = fmaxf(mloc, tmax);  // the exact logit of the fp32 S, before any rounding
            const float mnew = fmaxf(mrow[r], tmax);
            const float muse = mnew == -INFINITY ? 0.0f : mnew;  // a row with nothing valid yet stays at zero
            const float alpha = expf(mrow[r] - muse);           // exp(-inf) = 0 on the first tile
            float psum = 0.0f;
#pragma unroll
            for (int m = 0; m < 4; m++) {
                const float p = sc[m] == -INFINITY ? 0.0f : expf(sc[m] - muse);
                psum += p;  // the row sum from the fp32 p; the product with V from p rounded to bf16
                Pb[i * ATT_LDB + tx + 16 * m] = __float2bfloat16_rn(p);
            }
#pragma unroll
            for (int off = 8; off > 0; off >>= 1) psum += __shfl_xor_sync(0xffffffffu, psum, off);
            lrow[r] = lrow[r] * alpha + psum;
            mrow[r] = mnew;
            alpha_s[i * 16 + tx] = alpha;
        }
        __syncthreads();

        // O = alpha O + P V: the rescale multiplies O's fragment by a fragment of the same kind holding alpha of
        // each element's row (one fragment kind has one layout, whatever it is), so no lane needs to know its rows
        FragC al;
        wmma::load_matrix_sync(al, alpha_s + rb * 16 * 16, 16, wmma::mem_row_major);
#pragma unroll
        for (int f = 0; f < FV; f++)
#pragma unroll
            for (int e = 0; e < al.num_elements; e++) o[f].x[e] *= al.x[e];
        tile_acc<FV>(o, Pb, Vs, s.ldv, nvb);  // rows past T have P = 0 and V = 0
    }

#pragma unroll
    for (int r = 0; r < 4; r++) {
        const int i = ty * 4 + r, qi = q0 + i;
        if (tx == 0) linv_s[i] = qi < s.T ? 1.0f / lrow[r] : 0.0f;
        if (tx == 0 && qi < s.T) lse[((size_t)b * s.H + h) * s.T + qi] = mrow[r] + logf(lrow[r]);
    }
    __syncthreads();  // linv_s written; Ss (last read before the loop's final barrier) is free for staging

    float* stage = Ss + warp * 256;
#pragma unroll
    for (int f = 0; f < FV; f++) {
        const int cb = cb0 + 2 * f;
        if (cb >= nvb) continue;  // warp-uniform
        stage_block(stage, o[f]);
        const int i = rb * 16 + (lane >> 1), qi = q0 + i;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int cs = (lane & 1) * 8 + j, c = cb * 16 + cs;
            if (qi < s.T && c < s.dv)
                out[((size_t)b * s.T + qi) * s.o_stride + (size_t)h * s.dv + c] =
                    __float2bfloat16_rn(stage[(lane >> 1) * 16 + cs] * linv_s[i]);
        }
        __syncwarp();
    }

    // the block's largest logit -> maxlogit[h]
    const float bmax = block_max(mloc, -INFINITY);
    if (threadIdx.x == 0 && bmax > -INFINITY) atomic_max_float(maxlogit + h, bmax);
}

// The forward's maximum alone (for a fused attention that does not report it): the same Q K^T tiles on tensor cores,
// the same masked max of S * scale, no softmax.
__global__ void __launch_bounds__(ATT_THREADS) attn_maxlogit_kernel(float* __restrict__ maxlogit,
                                                                    const bf16* __restrict__ q,
                                                                    const bf16* __restrict__ kv,
                                                                    const bf16* __restrict__ a, AttnArgs s) {
    extern __shared__ __align__(128) unsigned char att_smem[];
    bf16* Qs = reinterpret_cast<bf16*>(att_smem);
    bf16* Ks = Qs + ATT_TILE * s.ldq;
    float* Ss = reinterpret_cast<float*>(Ks + ATT_TILE * s.ldq);

    const int qt = gridDim.x - 1 - blockIdx.x;
    const int h = blockIdx.y, b = blockIdx.z;
    const int q0 = qt * ATT_TILE;
    const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;

    load_q_tile(Qs, q, s, b, h, q0);
    float mloc = -INFINITY;
    const int kend = min(q0 + ATT_TILE, s.T);
    for (int k0 = 0; k0 < kend; k0 += ATT_TILE) {
        __syncthreads();  // the previous tile's readers of Ss are done
        load_k_tile(Ks, kv, a, s, b, h, k0);
        __syncthreads();
        tile_abt(Ss, Qs, s.ldq, Ks, s.ldq, s.dqkp);
        __syncthreads();
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int i = ty * 4 + r, qi = q0 + i;
#pragma unroll
            for (int m = 0; m < 4; m++) {
                const int kj = k0 + tx + 16 * m;
                if (qi < s.T && kj <= qi) mloc = fmaxf(mloc, Ss[i * ATT_LDS + tx + 16 * m] * s.scale);
            }
        }
    }
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
template <int FQ, int FV>
__global__ void __launch_bounds__(ATT_THREADS) attn_bwd_dkv_kernel(bf16* __restrict__ dkv, float* __restrict__ dkr,
                                                                   const bf16* __restrict__ dout,
                                                                   const bf16* __restrict__ q,
                                                                   const bf16* __restrict__ kv,
                                                                   const bf16* __restrict__ a,
                                                                   const float* __restrict__ lse,
                                                                   const float* __restrict__ D, AttnArgs s) {
    extern __shared__ __align__(128) unsigned char att_smem[];
    bf16* Ks = reinterpret_cast<bf16*>(att_smem);
    bf16* Qs = Ks + ATT_TILE * s.ldq;
    bf16* Vs = Qs + ATT_TILE * s.ldq;
    bf16* dOs = Vs + ATT_TILE * s.ldv;
    float* St = reinterpret_cast<float*>(dOs + ATT_TILE * s.ldv);  // S^T (key row, query col); later staging
    float* dPt = St + ATT_TILE * ATT_LDS;                           // dP^T
    bf16* Pb = reinterpret_cast<bf16*>(dPt + ATT_TILE * ATT_LDS);   // P^T in bf16
    bf16* dSb = Pb + ATT_TILE * ATT_LDB;                            // dS^T in bf16
    float* lse_s = reinterpret_cast<float*>(dSb + ATT_TILE * ATT_LDB);
    float* D_s = lse_s + ATT_TILE;

    const int kt = blockIdx.x;  // the longest (first) key tiles first
    const int h = blockIdx.y, b = blockIdx.z;
    const int k0 = kt * ATT_TILE;
    const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, rb = warp & 3, cb0 = warp >> 2;
    const int nqb = s.dqkp / 16, nvb = s.dvp / 16;

    load_k_tile(Ks, kv, a, s, b, h, k0);
    load_v_tile(Vs, kv, 1, s, b, h, k0);

    FragC dk[FQ], dvacc[FV];
#pragma unroll
    for (int f = 0; f < FQ; f++) wmma::fill_fragment(dk[f], 0.0f);
#pragma unroll
    for (int f = 0; f < FV; f++) wmma::fill_fragment(dvacc[f], 0.0f);

    // query tiles at or after the diagonal (tiles are aligned and equal, so earlier queries see none of these keys)
    for (int q0 = k0; q0 < s.T; q0 += ATT_TILE) {
        __syncthreads();  // previous iteration's readers are done
        load_q_tile(Qs, q, s, b, h, q0);
        load_v_tile(dOs, dout, 0, s, b, h, q0);
        load_row_stats(lse_s, D_s, lse, D, s, b, h, q0);
        __syncthreads();
        tile_abt(St, Ks, s.ldq, Qs, s.ldq, s.dqkp);   // S^T = K Q^T
        tile_abt(dPt, Vs, s.ldv, dOs, s.ldv, s.dvp);  // dP^T = V dO^T
        __syncthreads();

        // this thread: key rows ty*4 + r, query columns tx + 16 m
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int jr = ty * 4 + r, kj = k0 + jr;
#pragma unroll
            for (int m = 0; m < 4; m++) {
                const int i = tx + 16 * m, qi = q0 + i;
                const bool valid = qi < s.T && kj <= qi;
                const float p = valid ? expf(St[jr * ATT_LDS + i] * s.scale - lse_s[i]) : 0.0f;
                const float ds = p * (dPt[jr * ATT_LDS + i] - D_s[i]) * s.scale;
                Pb[jr * ATT_LDB + i] = __float2bfloat16_rn(p);
                dSb[jr * ATT_LDB + i] = __float2bfloat16_rn(ds);
            }
        }
        __syncthreads();

        // dV += P^T dO ; dK += dS^T Q  (query rows past T: P = dS = 0)
        tile_acc<FV>(dvacc, Pb, dOs, s.ldv, nvb);
        tile_acc<FQ>(dk, dSb, Qs, s.ldq, nqb);
    }

    // St was last read before the loop's final barrier: free for the warps' staging tiles
    float* stage = St + warp * 256;
    const int jr = rb * 16 + (lane >> 1), kj = k0 + jr;
    const size_t n = (size_t)b * s.T + kj;
    bf16* drow = dkv + n * s.kv_stride + (size_t)h * (s.nope + s.dv);
#pragma unroll
    for (int f = 0; f < FQ; f++) {
        const int cb = cb0 + 2 * f;
        if (cb >= nqb) continue;  // warp-uniform
        stage_block(stage, dk[f]);
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int cs = (lane & 1) * 8 + j, c = cb * 16 + cs;
            const float v = stage[(lane >> 1) * 16 + cs];
            if (kj >= s.T) continue;
            if (c < s.nope) drow[c] = __float2bfloat16_rn(v);
            else if (c < s.dqk) dkr[(n * s.H + h) * s.rope + (c - s.nope)] = v;
        }
        __syncwarp();
    }
#pragma unroll
    for (int f = 0; f < FV; f++) {
        const int cb = cb0 + 2 * f;
        if (cb >= nvb) continue;
        stage_block(stage, dvacc[f]);
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int cs = (lane & 1) * 8 + j, c = cb * 16 + cs;
            if (kj < s.T && c < s.dv) drow[s.nope + c] = __float2bfloat16_rn(stage[(lane >> 1) * 16 + cs]);
        }
        __syncwarp();
    }
}

// One block per query tile: dQ = dS K over the keys up to the diagonal. Up to dqk = 192 (FQ <= 6) two blocks fit
// in an SM's shared memory, so registers are capped for two (128; ptxas spills 4 bytes at FQ = 6).
template <int FQ>
__global__ void __launch_bounds__(ATT_THREADS, FQ <= 6 ? 2 : 1) attn_bwd_dq_kernel(bf16* __restrict__ dq,
                                                                  const bf16* __restrict__ dout,
                                                                  const bf16* __restrict__ q,
                                                                  const bf16* __restrict__ kv,
                                                                  const bf16* __restrict__ a,
                                                                  const float* __restrict__ lse,
                                                                  const float* __restrict__ D, AttnArgs s) {
    extern __shared__ __align__(128) unsigned char att_smem[];
    bf16* Qs = reinterpret_cast<bf16*>(att_smem);
    bf16* Ks = Qs + ATT_TILE * s.ldq;
    bf16* dOs = Ks + ATT_TILE * s.ldq;
    bf16* Vs = dOs + ATT_TILE * s.ldv;
    // S (query row, key col), then dP in the same tile (one fp32 tile fewer: 2 blocks per SM at the K2 shape);
    // after the loop, the warps' staging tiles
    float* Ss = reinterpret_cast<float*>(Vs + ATT_TILE * s.ldv);
    bf16* dSb = reinterpret_cast<bf16*>(Ss + ATT_TILE * ATT_LDS);  // dS in bf16
    float* lse_s = reinterpret_cast<float*>(dSb + ATT_TILE * ATT_LDB);
    float* D_s = lse_s + ATT_TILE;

    const int qt = gridDim.x - 1 - blockIdx.x;
    const int h = blockIdx.y, b = blockIdx.z;
    const int q0 = qt * ATT_TILE;
    const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, rb = warp & 3, cb0 = warp >> 2;
    const int nqb = s.dqkp / 16;

    load_q_tile(Qs, q, s, b, h, q0);
    load_v_tile(dOs, dout, 0, s, b, h, q0);
    load_row_stats(lse_s, D_s, lse, D, s, b, h, q0);

    FragC dqacc[FQ];
#pragma unroll
    for (int f = 0; f < FQ; f++) wmma::fill_fragment(dqacc[f], 0.0f);

    const int kend = min(q0 + ATT_TILE, s.T);
    for (int k0 = 0; k0 < kend; k0 += ATT_TILE) {
        __syncthreads();
        load_k_tile(Ks, kv, a, s, b, h, k0);
        load_v_tile(Vs, kv, 1, s, b, h, k0);
        __syncthreads();
        tile_abt(Ss, Qs, s.ldq, Ks, s.ldq, s.dqkp);  // S = Q K^T
        __syncthreads();

        // this thread: query rows ty*4 + r, key columns tx + 16 m
        float p[4][4];
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int i = ty * 4 + r, qi = q0 + i;
#pragma unroll
            for (int m = 0; m < 4; m++) {
                const int jc = tx + 16 * m, kj = k0 + jc;
                const bool valid = qi < s.T && kj <= qi;
                p[r][m] = valid ? expf(Ss[i * ATT_LDS + jc] * s.scale - lse_s[i]) : 0.0f;
            }
        }
        __syncthreads();  // every S read before dP overwrites it
        tile_abt(Ss, dOs, s.ldv, Vs, s.ldv, s.dvp);  // dP = dO V^T
        __syncthreads();
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int i = ty * 4 + r;
#pragma unroll
            for (int m = 0; m < 4; m++) {
                const int jc = tx + 16 * m;
                dSb[i * ATT_LDB + jc] = __float2bfloat16_rn(p[r][m] * (Ss[i * ATT_LDS + jc] - D_s[i]) * s.scale);
            }
        }
        __syncthreads();

        tile_acc<FQ>(dqacc, dSb, Ks, s.ldq, nqb);  // dQ += dS K
    }

    float* stage = Ss + warp * 256;  // Ss was last read before the loop's final barrier
    const int i = rb * 16 + (lane >> 1), qi = q0 + i;
    bf16* drow = dq + ((size_t)b * s.T + qi) * s.q_stride + (size_t)h * s.dqk;
#pragma unroll
    for (int f = 0; f < FQ; f++) {
        const int cb = cb0 + 2 * f;
        if (cb >= nqb) continue;
        stage_block(stage, dqacc[f]);
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int cs = (lane & 1) * 8 + j, c = cb * 16 + cs;
            if (qi < s.T && c < s.dqk) drow[c] = __float2bfloat16_rn(stage[(lane >> 1) * 16 + cs]);
        }
        __syncwarp();
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

// dynamic shared memory per kernel (the layouts at the top of each kernel)
static size_t fwd_smem(const AttnArgs& s) {
    return (size_t)ATT_TILE * (2 * s.ldq + s.ldv + ATT_LDB) * sizeof(bf16) +
           (size_t)ATT_TILE * (ATT_LDS + 16 + 1) * sizeof(float);
}
static size_t maxlogit_smem(const AttnArgs& s) {
    return (size_t)ATT_TILE * 2 * s.ldq * sizeof(bf16) + (size_t)ATT_TILE * ATT_LDS * sizeof(float);
}
static size_t dkv_smem(const AttnArgs& s) {
    return (size_t)ATT_TILE * (2 * s.ldq + 2 * s.ldv + 2 * ATT_LDB) * sizeof(bf16) +
           (size_t)ATT_TILE * (2 * ATT_LDS + 2) * sizeof(float);
}
static size_t dq_smem(const AttnArgs& s) {
    return (size_t)ATT_TILE * (2 * s.ldq + 2 * s.ldv + ATT_LDB) * sizeof(bf16) +
           (size_t)ATT_TILE * (ATT_LDS + 2) * sizeof(float);
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

template <int FV>
static void launch_fwd(bf16* out, float* lse, float* maxlogit, const bf16* q, const bf16* kv, const bf16* a,
                       const AttnArgs& s) {
    size_t smem = fwd_smem(s);
    att_set_smem(attn_fwd_kernel<FV>, smem);
    dim3 grid(ceil_div_u(s.T, ATT_TILE), s.H, s.B);
    attn_fwd_kernel<FV><<<grid, ATT_THREADS, smem, cuda_stream>>>(out, lse, maxlogit, q, kv, a, s);
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
    switch (att_frags(dv)) {
        case 1: launch_fwd<1>(o, lse, maxlogit, qq, kk, aa, s); break;
        case 2: launch_fwd<2>(o, lse, maxlogit, qq, kk, aa, s); break;
        case 4: launch_fwd<4>(o, lse, maxlogit, qq, kk, aa, s); break;
        case 6: launch_fwd<6>(o, lse, maxlogit, qq, kk, aa, s); break;
        case 8: launch_fwd<8>(o, lse, maxlogit, qq, kk, aa, s); break;
        default: fatal("cuda_attention_forward: dv=%d unsupported", dv);
    }
}

extern "C" void cuda_attn_maxlogit(float* maxlogit, const void* q, const void* kv, const void* a, int B, int T, int H,
                                   int nope, int rope, int dv, int kv_lora) {
    if (B <= 0 || T <= 0 || H <= 0) return;
    AttnArgs s = attn_args(B, T, H, nope, rope, dv, kv_lora);
    size_t smem = maxlogit_smem(s);
    att_check_shape("cuda_attn_maxlogit", s, smem);
    att_set_smem(attn_maxlogit_kernel, smem);
    dim3 grid(ceil_div_u(s.T, ATT_TILE), s.H, s.B);
    attn_maxlogit_kernel<<<grid, ATT_THREADS, smem, cuda_stream>>>(maxlogit, (const bf16*)q, (const bf16*)kv,
                                                                   (const bf16*)a, s);
    cudaCheckLaunch();
}

struct BwdPtrs {
    bf16 *dq, *dkv;
    float *dkr, *D;
    const bf16 *dout, *q, *kv, *a;
    const float* lse;
};

template <int FQ, int FV>
static void launch_bwd(const BwdPtrs& p, const AttnArgs& s) {
    dim3 grid(ceil_div_u(s.T, ATT_TILE), s.H, s.B);
    size_t sm1 = dkv_smem(s), sm2 = dq_smem(s);
    att_set_smem(attn_bwd_dkv_kernel<FQ, FV>, sm1);
    attn_bwd_dkv_kernel<FQ, FV><<<grid, ATT_THREADS, sm1, cuda_stream>>>(p.dkv, p.dkr, p.dout, p.q, p.kv, p.a, p.lse,
                                                                          p.D, s);
    cudaCheckLaunch();
    att_set_smem(attn_bwd_dq_kernel<FQ>, sm2);
    attn_bwd_dq_kernel<FQ><<<grid, ATT_THREADS, sm2, cuda_stream>>>(p.dq, p.dout, p.q, p.kv, p.a, p.lse, p.D, s);
    cudaCheckLaunch();
}

template <int FQ>
static void launch_bwd_v(const BwdPtrs& p, const AttnArgs& s, int fv) {
    switch (fv) {
        case 1: launch_bwd<FQ, 1>(p, s); break;
        case 2: launch_bwd<FQ, 2>(p, s); break;
        case 4: launch_bwd<FQ, 4>(p, s); break;
        case 6: launch_bwd<FQ, 6>(p, s); break;
        case 8: launch_bwd<FQ, 8>(p, s); break;
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
    int fv = att_frags(dv);
    switch (att_frags(s.dqk)) {
        case 1: launch_bwd_v<1>(p, s, fv); break;
        case 2: launch_bwd_v<2>(p, s, fv); break;
        case 4: launch_bwd_v<4>(p, s, fv); break;
        case 6: launch_bwd_v<6>(p, s, fv); break;
        case 8: launch_bwd_v<8>(p, s, fv); break;
        default: fatal("cuda_attention_backward: dqk=%d unsupported", s.dqk);
    }
    attn_bwd_dkr_kernel<<<grid_for(N * rope, 256), 256, 0, cuda_stream>>>((bf16*)da, p.dkr, (int)N, H, rope,
                                                                          s.a_stride, kv_lora);
    cudaCheckLaunch();
}
