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
// the exact max logit: grid (ceil(T/ML_TILE), H, B), one block per query tile; it stages the tile's queries and,
// in turn, every key tile up to the diagonal in shared memory (bf16, the key from both of its places), and each
// thread computes ML_TILE*ML_TILE/ML_THREADS causal logits as fp32 dot products. No softmax, no output but the max.
#define ML_TILE 32
#define ML_THREADS 256

// max into *addr on the float's bit pattern: non-negative floats order as ints, negative ones reversed as unsigned
__device__ __forceinline__ void atomic_max_float_bits(float* addr, float v) {
    if (v >= 0.0f) atomicMax(reinterpret_cast<int*>(addr), __float_as_int(v));
    else atomicMin(reinterpret_cast<unsigned int*>(addr), __float_as_uint(v));
}

__global__ void attn_maxlogit_kernel(float* __restrict__ maxlogit, const bf16* __restrict__ q,
                                     const bf16* __restrict__ kv, const bf16* __restrict__ a, int T, int H, int nope,
                                     int rope, int dv, int kv_lora, float scale) {
    extern __shared__ __align__(16) bf16 ml_smem[];
    const int dqk = nope + rope, ld = dqk + 2;  // +2: rows start on different banks
    bf16* Qs = ml_smem;                         // (ML_TILE, ld)
    bf16* Ks = ml_smem + ML_TILE * ld;          // (ML_TILE, ld)
    __shared__ float warp_max[ML_THREADS / 32];
    const int qt = blockIdx.x, h = blockIdx.y, b = blockIdx.z, tid = threadIdx.x;
    const int q0 = qt * ML_TILE;
    const size_t row0 = (size_t)b * T;
    const bf16 zero = __float2bfloat16_rn(0.0f);
    for (int idx = tid; idx < ML_TILE * dqk; idx += blockDim.x) {
        const int r = idx / dqk, c = idx - r * dqk, t = q0 + r;
        Qs[r * ld + c] = t < T ? q[(row0 + t) * (size_t)H * dqk + (size_t)h * dqk + c] : zero;
    }
    float best = -INFINITY;
    const int r = tid / 8;  // this thread's query row of the tile; its key columns: tid % 8 + 8 m
    for (int kt = 0; kt <= qt; kt++) {
        const int k0 = kt * ML_TILE;
        __syncthreads();  // the previous key tile is no longer read
        for (int idx = tid; idx < ML_TILE * dqk; idx += blockDim.x) {
            const int rr = idx / dqk, c = idx - rr * dqk, t = k0 + rr;
            bf16 v = zero;
            if (t < T) {
                const size_t n = row0 + t;
                v = c < nope ? kv[n * (size_t)H * (nope + dv) + (size_t)h * (nope + dv) + c]
                             : a[n * (size_t)(kv_lora + rope) + kv_lora + (c - nope)];
            }
            Ks[rr * ld + c] = v;
        }
        __syncthreads();
        for (int m = 0; m < ML_TILE / 8; m++) {
            const int col = tid % 8 + 8 * m, i = q0 + r, j = k0 + col;
            if (i >= T || j > i) continue;  // past the sequence, or masked (causal)
            float dot = 0.0f;
            for (int c = 0; c < dqk; c++) dot += bf2f(Qs[r * ld + c]) * bf2f(Ks[col * ld + c]);
            const float s = dot * scale;
            best = s > best ? s : best;
        }
    }
    // block max: a fixed butterfly per warp, then warp 0 over the warps' maxima
    for (int off = 16; off > 0; off >>= 1) {
        const float o = __shfl_xor_sync(0xffffffffu, best, off);
        best = o > best ? o : best;
    }
    if (tid % 32 == 0) warp_max[tid / 32] = best;
    __syncthreads();
    if (tid == 0) {
        float m = warp_max[0];
        for (int w = 1; w < ML_THREADS / 32; w++) m = warp_max[w] > m ? warp_max[w] : m;
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
    const size_t smem = (size_t)2 * ML_TILE * (dqk + 2) * sizeof(bf16);  // <= 33 KB: under the default 48 KB
    const float scale = (float)(1.0 / sqrt((double)dqk));                // the CPU twin's scale, to the bit
    dim3 grid(ceil_div_u(s.T, ML_TILE), s.H, s.B);
    attn_maxlogit_kernel<<<grid, ML_THREADS, smem, cuda_stream>>>(maxlogit, (const bf16*)q, (const bf16*)kv,
                                                                  (const bf16*)a, s.T, s.H, s.nope, s.rope, s.dv,
                                                                  s.kv_lora, scale);
    cudaCheckLaunch();
}
