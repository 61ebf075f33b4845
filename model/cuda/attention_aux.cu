// model/cuda/attention_aux.cu: our kernels around the cuDNN attention path (model/cuda/sdpa_cudnn.c; prototypes
// and contracts in sdpa_cudnn.h): K materialised for cuDNN, its dK split back into our gradient buffers, and the
// exact per-head max logit that QK-Clip needs (cuDNN 9.19's SDPA does not return it). No cuDNN call here, so the
// file runs under the CPU emulation (dev/cuda/emu/run.sh) against the CPU twin.
//
// Determinism: every output element is written by one thread in a fixed order (the rope-key sum runs over the
// heads h = 0..H-1); the max logit's only atomic is an integer max on the float's bits, whose result does not
// depend on the order.
#include "cuda_common.cuh"
#include "sdpa_cudnn.h"
#include <mma.h>

using namespace nvcuda;

// kmat[n, h, c] = c < nope ? kv[n, h*(nope+dv) + c] : a[n, kv_lora + c - nope]    (n < B*T, h < H, c < dqk)
__global__ void sdpa_build_k_kernel(bf16* __restrict__ kmat, const bf16* __restrict__ kv, const bf16* __restrict__ a,
                                    size_t N, int H, int nope, int rope, int dv, int kv_lora) {
    const int dqk = nope + rope;
    GRID_STRIDE_LOOP(idx, N * H * dqk) {
        const size_t n = idx / ((size_t)H * dqk);
        const int hc = (int)(idx - n * H * dqk), h = hc / dqk, c = hc - h * dqk;
        kmat[idx] = c < nope ? kv[n * H * (nope + dv) + (size_t)h * (nope + dv) + c]
                             : a[n * (kv_lora + rope) + kv_lora + (c - nope)];
    }
}

// one thread per (row n, column j < nope + rope): the k-nope columns of every head, then the rope-key sum
__global__ void sdpa_split_dk_kernel(bf16* __restrict__ dkv, bf16* __restrict__ da, const bf16* __restrict__ dkmat,
                                     size_t N, int H, int nope, int rope, int dv, int kv_lora) {
    const int dqk = nope + rope, width = H * nope + rope;
    GRID_STRIDE_LOOP(idx, N * width) {
        const size_t n = idx / width;
        const int j = (int)(idx - n * width);
        const bf16* row = dkmat + n * H * dqk;
        if (j < H * nope) {
            const int h = j / nope, c = j - h * nope;
            dkv[n * H * (nope + dv) + (size_t)h * (nope + dv) + c] = row[(size_t)h * dqk + c];
        } else {
            const int r = j - H * nope;
            float acc = 0.0f;
            for (int h = 0; h < H; h++) acc += bf2f(row[(size_t)h * dqk + nope + r]);
            da[n * (kv_lora + rope) + kv_lora + r] = f2bf(acc);
        }
    }
}

// ----------------------------------------------------------------------------
// the exact max logit, on tensor cores: grid (ceil(T/64), H, B), 4 warps per block; the block stages its 64 query
// rows and, in turn, every 64-row key tile up to the diagonal in shared memory (bf16, the key from both of its
// places, columns zero-padded to a multiple of 16); warp w computes the 16 x 64 logits of its query rows with
// wmma (16x16x16, bf16 products exact, fp32 sums), stores each 16 x 16 block to its own fp32 scratch and takes the
// max of scale * logit over the causal entries (i >= j, both < T). No softmax, no output but the max.
#define ML_QT 64
#define ML_KT 64
#define ML_WARPS (ML_QT / 16)
#define ML_THREADS (32 * ML_WARPS)

// staged row stride (bf16): dqk rounded up to a multiple of 16 (wmma's k step), + 8 so that rows start on
// different banks; a multiple of 8 elements (16 bytes), as wmma's loads need
static int ml_ld(int dqk) { return (dqk + 15) / 16 * 16 + 8; }
static size_t ml_smem(int dqk) {
    return (size_t)(ML_QT + ML_KT) * ml_ld(dqk) * sizeof(bf16) + (size_t)ML_WARPS * 256 * sizeof(float) +
           (size_t)ML_WARPS * sizeof(float) + 32;  // + 32: room to align the base to wmma's 32 bytes
}

// max into *addr on the float's bit pattern: non-negative floats order as ints, negative ones reversed as unsigned
__device__ __forceinline__ void atomic_max_float_bits(float* addr, float v) {
    if (v >= 0.0f) atomicMax(reinterpret_cast<int*>(addr), __float_as_int(v));
    else atomicMin(reinterpret_cast<unsigned int*>(addr), __float_as_uint(v));
}

// rows [row0, row0 + rows) of one head's q-like (is_k = 0) or key (is_k = 1) tile into dst (rows x ld); rows past T
// and columns past dqk are zero
__device__ __forceinline__ void ml_load_tile(bf16* dst, int ld, int rows, int row0, int is_k, const bf16* q,
                                             const bf16* kv, const bf16* a, size_t seq0, int T, int H, int h, int nope,
                                             int rope, int dv, int kv_lora) {
    const int dqk = nope + rope, dp = ld - 8;
    const bf16 zero = __float2bfloat16_rn(0.0f);
    for (int idx = threadIdx.x; idx < rows * dp; idx += blockDim.x) {
        const int r = idx / dp, c = idx - r * dp, t = row0 + r;
        bf16 v = zero;
        if (t < T && c < dqk) {
            const size_t n = seq0 + t;
            if (!is_k) v = q[n * (size_t)H * dqk + (size_t)h * dqk + c];
            else v = c < nope ? kv[n * (size_t)H * (nope + dv) + (size_t)h * (nope + dv) + c]
                              : a[n * (size_t)(kv_lora + rope) + kv_lora + (c - nope)];
        }
        dst[r * ld + c] = v;
    }
}

__global__ void attn_maxlogit_kernel(float* __restrict__ maxlogit, const bf16* __restrict__ q,
                                     const bf16* __restrict__ kv, const bf16* __restrict__ a, int T, int H, int nope,
                                     int rope, int dv, int kv_lora, float scale, int ld) {
    extern __shared__ __align__(16) unsigned char ml_smem_raw[];
    // wmma's loads and stores need 32-byte aligned tiles; dynamic shared memory is only promised 16
    bf16* Qs = reinterpret_cast<bf16*>(((uintptr_t)ml_smem_raw + 31) & ~(uintptr_t)31);  // (ML_QT, ld)
    bf16* Ks = Qs + ML_QT * ld;                                         // (ML_KT, ld)
    float* Ss = reinterpret_cast<float*>(Ks + ML_KT * ld);             // (ML_WARPS, 16 x 16)
    float* warp_max = Ss + ML_WARPS * 256;                              // (ML_WARPS)
    const int qt = blockIdx.x, h = blockIdx.y, b = blockIdx.z, tid = threadIdx.x;
    const int warp = tid / 32, lane = tid % 32, q0 = qt * ML_QT, dp = ld - 8;
    const size_t seq0 = (size_t)b * T;
    const int my_row0 = q0 + 16 * warp;  // this warp's first query row
    float* S = Ss + warp * 256;
    ml_load_tile(Qs, ld, ML_QT, q0, 0, q, kv, a, seq0, T, H, h, nope, rope, dv, kv_lora);
    float best = -INFINITY;
    const int last_key = (q0 + ML_QT < T ? q0 + ML_QT : T) - 1;  // no key past the block's last query row
    for (int k0 = 0; k0 <= last_key; k0 += ML_KT) {
        __syncthreads();  // the previous key tile is no longer read (and, the first time, Qs is staged)
        ml_load_tile(Ks, ld, ML_KT, k0, 1, q, kv, a, seq0, T, H, h, nope, rope, dv, kv_lora);
        __syncthreads();
        if (my_row0 >= T) continue;  // warp-uniform: no query row of this warp is in the sequence
        for (int nb = 0; nb < ML_KT / 16; nb++) {
            const int j0 = k0 + 16 * nb;
            if (j0 > my_row0 + 15) break;  // warp-uniform: every key of this block and on is masked
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.0f);
            for (int kk = 0; kk < dp; kk += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> fq;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> fk;  // K^T: key n's row is column n
                wmma::load_matrix_sync(fq, Qs + (16 * warp) * ld + kk, ld);
                wmma::load_matrix_sync(fk, Ks + (16 * nb) * ld + kk, ld);
                wmma::mma_sync(acc, fq, fk, acc);
            }
            wmma::store_matrix_sync(S, acc, 16, wmma::mem_row_major);
            __syncwarp();
            for (int e = 0; e < 8; e++) {  // lane reads 8 of the 256 (row-major, known positions)
                const int idx = lane * 8 + e, r = idx / 16, c = idx % 16, i = my_row0 + r, j = j0 + c;
                if (i < T && j <= i) best = fmaxf(best, S[idx] * scale);
            }
            __syncwarp();  // every lane has read S before the next store overwrites it
        }
    }
    // block max: a fixed butterfly per warp, then thread 0 over the warps' maxima
    for (int off = 16; off > 0; off >>= 1) best = fmaxf(best, __shfl_xor_sync(0xffffffffu, best, off));
    if (lane == 0) warp_max[warp] = best;
    __syncthreads();
    if (tid == 0) {
        float m = warp_max[0];
        for (int w = 1; w < ML_WARPS; w++) m = fmaxf(m, warp_max[w]);
        if (m > -INFINITY) atomic_max_float_bits(&maxlogit[h], m);
    }
}

// ----------------------------------------------------------------------------
// host side

extern "C" void cuda_sdpa_build_k(void* kmat, const void* kv, const void* a, MlaShape s) {
    const size_t N = (size_t)s.B * s.T, n = N * s.H * (s.nope + s.rope);
    if (!n) return;
    sdpa_build_k_kernel<<<grid_for(n, 256), 256, 0, cuda_stream>>>((bf16*)kmat, (const bf16*)kv, (const bf16*)a, N,
                                                                   s.H, s.nope, s.rope, s.dv, s.kv_lora);
    cudaCheckLaunch();
}

extern "C" void cuda_sdpa_split_dk(void* dkv, void* da, const void* dkmat, MlaShape s) {
    const size_t N = (size_t)s.B * s.T, n = N * ((size_t)s.H * s.nope + s.rope);
    if (!n) return;
    sdpa_split_dk_kernel<<<grid_for(n, 256), 256, 0, cuda_stream>>>((bf16*)dkv, (bf16*)da, (const bf16*)dkmat, N, s.H,
                                                                    s.nope, s.rope, s.dv, s.kv_lora);
    cudaCheckLaunch();
}

extern "C" void cuda_attention_maxlogit(float* maxlogit, const void* q, const void* kv, const void* a, MlaShape s) {
    if (s.B <= 0 || s.T <= 0 || s.H <= 0) return;
    const int dqk = s.nope + s.rope;
    if (dqk < 1 || dqk > SDPA_MAX_HEAD_DIM) fatal("cuda_attention_maxlogit: dqk=%d unsupported (1..%d)", dqk, SDPA_MAX_HEAD_DIM);
    const size_t smem = ml_smem(dqk);  // 55 KB at dqk = 192, 72 KB at 256: above the default 48 KB, so opted in
    cudaCheck(cudaFuncSetAttribute(attn_maxlogit_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    const float scale = (float)(1.0 / sqrt((double)dqk));  // the CPU twin's scale, to the bit
    dim3 grid(ceil_div_u(s.T, ML_QT), s.H, s.B);
    attn_maxlogit_kernel<<<grid, ML_THREADS, smem, cuda_stream>>>(maxlogit, (const bf16*)q, (const bf16*)kv,
                                                                  (const bf16*)a, s.T, s.H, s.nope, s.rope, s.dv,
                                                                  s.kv_lora, scale, ml_ld(dqk));
    cudaCheckLaunch();
}
