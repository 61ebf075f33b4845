// model/cuda/attention_aux.cu: our kernels around the cuDNN attention path (model/cuda/sdpa_cudnn.c; prototypes
// and contracts in sdpa_cudnn.h): K materialised for cuDNN, its dK split back into our gradient buffers, and the
// exact per-head max logit that QK-Clip needs (cuDNN 9.19's SDPA does not return it; attention.cu computes it,
// cuda_attn_maxlogit). No cuDNN call here, so the file runs under the CPU emulation (dev/cuda/emu/run.sh) against
// the CPU twin.
//
// Determinism: every output element is written by one thread in a fixed order (the rope-key sum runs over the
// heads h = 0..H-1).
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

// the exact max logit: attention.cu's kernel, which shares the forward's Q K^T tiles (the same values bit for bit)
extern "C" void cuda_attention_maxlogit(float* maxlogit, const void* q, const void* kv, const void* a, MlaShape s) {
    cuda_attn_maxlogit(maxlogit, q, kv, a, s.B, s.T, s.H, s.nope, s.rope, s.dv, s.kv_lora);
}
