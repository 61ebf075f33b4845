// CPU emulation of the one CUB call the backend makes (dense.cu's embedding backward): a stable sort of (key,
// value) pairs by key. CUB's radix sort is stable and orders signed keys numerically; so does this.
#pragma once
#include <algorithm>
#include <vector>
#include "../cuda_runtime.h"
extern "C" void emu_cost_sort(double n, double pair_bytes, int key_bits);
namespace cub {
struct DeviceRadixSort {
    template <class K, class V>
    static cudaError_t SortPairs(void* tmp, size_t& tmp_bytes, const K* keys_in, K* keys_out, const V* vals_in,
                                 V* vals_out, int n, int begin_bit = 0, int end_bit = (int)(sizeof(K) * 8),
                                 cudaStream_t = 0) {
        if (!tmp) { tmp_bytes = 64; return cudaSuccess; }  // the size query: some scratch, like the real one
        if (begin_bit != 0 || end_bit != (int)(sizeof(K) * 8)) { fprintf(stderr, "emu cub: partial key bits\n"); abort(); }
        emu_cost_sort((double)n, (double)(sizeof(K) + sizeof(V)), end_bit - begin_bit);  // emu_cost.cpp
        std::vector<int> idx(n);
        for (int i = 0; i < n; i++) idx[i] = i;
        std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return keys_in[a] < keys_in[b]; });
        std::vector<K> k(n); std::vector<V> v(n);
        for (int i = 0; i < n; i++) { k[i] = keys_in[idx[i]]; v[i] = vals_in[idx[i]]; }
        std::copy(k.begin(), k.end(), keys_out); std::copy(v.begin(), v.end(), vals_out);
        return cudaSuccess;
    }
};
}  // namespace cub
