// CPU emulation of CUDA's warp matrix API (nvcuda::wmma, <mma.h>) for the kernels of model/cuda/*.cu: the
// 16x16x16 shape with bf16 matrix_a / matrix_b fragments and fp32 accumulators (what the backend uses; any other
// instantiation fails to compile here, so a kernel cannot use a shape the emulator does not check).
//
// Semantics kept from the CUDA C++ Programming Guide ("Warp Matrix Functions"):
//   - a fragment's 256 elements are spread over the 32 lanes of a warp, num_elements = 8 per lane, in a mapping the
//     guide leaves unspecified. Here the mapping is deliberately scrambled (element (r, c) of the 16x16 tile sits at
//     lane p / 8, slot p % 8, p = (16 r + c) * 97 + offset mod 256, a different offset per fragment kind), so a
//     kernel that assumes which lane holds which row or column gets wrong results and fails its test; elementwise
//     use of x[i] that treats every element alike (scaling, conversion, filling) works, as on the GPU.
//   - load_matrix_sync, store_matrix_sync and mma_sync wait until every lane of the warp has arrived (a warp
//     barrier of the emulator, which aborts when part of the warp is elsewhere at a block barrier) and then act;
//     fill_fragment does not synchronise.
//   - load/store need a 32-byte aligned pointer and a leading dimension that is a multiple of 16 bytes (8 bf16 or
//     4 floats); the emulator aborts with a message where the guide says the behaviour is undefined.
//   - mma_sync: d = a b + c with the products of bf16 inputs formed exactly and summed in fp32 (k in order; the
//     hardware's summation order differs, which the tests' bf16 tolerances cover).
// Like the rest of the emulator this checks the kernels' logic (tiles, layouts, strides, barriers), not the GPU's
// speed or its exact rounding.
#pragma once
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <type_traits>
#include "cuda_runtime.h"
#include "cuda_bf16.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

// the lane / slot of element (r, c) for a fragment kind (offsets differ so the kinds do not share a mapping)
template <class Use> constexpr int emu_frag_offset() {
    return std::is_same<Use, matrix_a>::value ? 11 : std::is_same<Use, matrix_b>::value ? 190 : 77;
}
template <class Use> static inline int emu_frag_pos(int r, int c) { return ((16 * r + c) * 97 + emu_frag_offset<Use>()) & 255; }

template <class Use, int M, int N, int K, class T, class Layout = void>
class fragment {
    static_assert(M == 16 && N == 16 && K == 16, "emulated wmma: only the 16x16x16 shape");
    static_assert(std::is_same<Use, accumulator>::value ? std::is_same<T, float>::value && std::is_same<Layout, void>::value
                                                        : std::is_same<T, __nv_bfloat16>::value && !std::is_same<Layout, void>::value,
                  "emulated wmma: bf16 matrix_a / matrix_b with a layout, fp32 accumulator");
public:
    typedef T element_type;
    typedef T storage_element_type;
    enum { num_elements = 8 };
    T x[num_elements];
};

static inline void emu_wmma_check(const void* p, unsigned ldm, size_t elem, const char* who) {
    if (((uintptr_t)p & 31) != 0 || (ldm * elem) % 16 != 0) {
        fprintf(stderr, "emu: wmma::%s with pointer %p (needs 32-byte alignment) and ldm %u (needs a multiple of "
                        "16 bytes)\n", who, p, ldm);
        abort();
    }
}

template <class Use, class T, class Layout>
static inline void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, const T& v) {
    for (int i = 0; i < 8; i++) f.x[i] = v;
}

// element (r, c) of a 16x16 tile stored with leading dimension ldm, row- or column-major
template <class T> static inline const T& emu_at(const T* p, unsigned ldm, bool row, int r, int c) {
    return row ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r];
}

// this lane's 8 elements of a tile in memory, by the fragment kind's mapping
template <class Use, class T>
static inline void emu_load(T* dst, const T* p, unsigned ldm, bool row) {
    int lane = threadIdx.x & 31;
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) {
            int pos = emu_frag_pos<Use>(r, c);
            if (pos / 8 == lane) dst[pos % 8] = emu_at(p, ldm, row, r, c);
        }
}

template <class Use, class Layout>
static inline void load_matrix_sync(fragment<Use, 16, 16, 16, __nv_bfloat16, Layout>& f, const __nv_bfloat16* p, unsigned ldm) {
    emu_wmma_check(p, ldm, 2, "load_matrix_sync");
    emu_sync_warp();
    emu_load<Use>(f.x, p, ldm, std::is_same<Layout, row_major>::value);
}
static inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm, layout_t layout) {
    emu_wmma_check(p, ldm, 4, "load_matrix_sync");
    emu_sync_warp();
    emu_load<accumulator>(f.x, p, ldm, layout == mem_row_major);
}
static inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t layout) {
    emu_wmma_check(p, ldm, 4, "store_matrix_sync");
    emu_sync_warp();
    int lane = threadIdx.x & 31;
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) {
            int pos = emu_frag_pos<accumulator>(r, c);
            if (pos / 8 == lane) {
                float* q = layout == mem_row_major ? &p[(size_t)r * ldm + c] : &p[(size_t)c * ldm + r];
                *q = f.x[pos % 8];
            }
        }
}

// the warp's exchange for mma_sync: every lane publishes its a and b elements, then each computes its own 8 of d
struct EmuWmmaExchange { float a[256], b[256]; };
static inline EmuWmmaExchange* emu_wmma_exchange(void) {
    static EmuWmmaExchange ex[32];  // one per warp of the running block (blocks run one at a time)
    return &ex[threadIdx.x >> 5];
}

template <class LA, class LB>
static inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA>& a,
                            const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB>& b,
                            const fragment<accumulator, 16, 16, 16, float>& c, bool satf = false) {
    EmuWmmaExchange* ex = emu_wmma_exchange();
    int lane = threadIdx.x & 31;
    emu_sync_warp();  // every lane has arrived (and finished with the exchange's previous contents)
    for (int i = 0; i < 8; i++) {
        ex->a[lane * 8 + i] = __bfloat162float(a.x[i]);
        ex->b[lane * 8 + i] = __bfloat162float(b.x[i]);
    }
    emu_sync_warp();
    float out[8];
    for (int r = 0; r < 16; r++)
        for (int col = 0; col < 16; col++) {
            int pos = emu_frag_pos<accumulator>(r, col);
            if (pos / 8 != lane) continue;
            float s = c.x[pos % 8];
            for (int k = 0; k < 16; k++) s += ex->a[emu_frag_pos<matrix_a>(r, k)] * ex->b[emu_frag_pos<matrix_b>(k, col)];
            out[pos % 8] = s;
        }
    for (int i = 0; i < 8; i++) d.x[i] = out[i];  // after the reads: d may be c
    emu_sync_warp();  // every lane has read the exchange before any lane's next mma_sync writes it
}

}  // namespace wmma
}  // namespace nvcuda
