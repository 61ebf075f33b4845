// dev/cuda/emu/emu_cost.cpp: what a step costs on a GPU, counted by the emulator. Every kernel launch, cuBLAS call,
// CUB sort, copy, memset and stream synchronisation the backend issues is counted here with its FLOPs and its
// compulsory bytes (each input read once, each output written once: what no cache can save), computed from the
// call's own arguments, and turned into a predicted time on an H100 SXM and an H200 by a roofline:
//
//   time = max(FLOPs / (unit peak x efficiency), bytes / memory bandwidth) + launch overhead
//
// Assumptions (stated, not measured; dev/cuda/check.sh prints the measured times beside these on a GPU):
//   peaks: 989 TFLOP/s dense bf16 tensor core, 67 TFLOP/s fp32 FMA (both GPUs), 3.35 TB/s (H100 SXM) and
//     4.8 TB/s (H200) HBM, 132 SMs;
//   cuBLAS (GemmEx, grouped, strided batched): 70% of the unit's peak, after tile and wave quantisation (128 x 128
//     output tiles, ceil(tiles / 132) full waves), and the bandwidth term at 100%;
//   our own kernels: 100% of their unit's peak and of the bandwidth -- a best case, not a forecast: a kernel
//     predicted at 1 ms may well take 2; except our tensor-core (WMMA) kernels: 20% of the bf16 peak (~200
//     TFLOP/s), what dev/results/attention_tc_2026-12-03.md works out for tiles staged through shared memory
//     (shared-memory bandwidth, not the tensor cores, bounds them: 150-245 TFLOP/s; WMMA compiles to mma.sync,
//     which reaches ~2/3 of the wgmma peak at best);
//   a unit per kernel: "tensor" (bf16 tensor cores: WMMA/MMA kernels), "fma" (fp32 CUDA cores), "memory" (element-
//     wise: FLOPs counted against the FMA peak, but bandwidth decides);
//   4 us per kernel launch or library call (a stream of small kernels is launch-bound), 10 us per stream
//     synchronisation (the queue drains, then refills), host <-> device copies at 25 GB/s (PCIe).
//
// A kernel has one line in kernel_rules below: its name (as written before <<<...>>>, template arguments dropped),
// its unit, whether EMU_COUNT_ONLY must still run it, and its FLOPs and bytes as expressions of its arguments
// a[i] (the i-th argument as a number; a.p(i) as a pointer, a.s(i) an attention-shape struct) and its grid a.g.
// A kernel without a line aborts the emulator with its name, so no kernel goes uncounted.
//
// EMU_COUNT_ONLY=1 counts without computing: cuBLAS arithmetic is skipped, copies and memsets over 64 MB move no
// data, and kernel bodies are skipped except those marked "runs" (the ones whose results the host reads and acts
// on: routing and dispatch, which decide the expert GEMMs' sizes). An fp32 GEMM output written with beta = 0 (the
// router logits) is filled with pseudo-random values in [-2, 2], so that routing spreads tokens over experts as a
// freshly initialised model does. The counts of a computed run and a count-only run are equal when routing does
// not change them (dev/cuda/emu/cost_check.sh tests it with every expert chosen by every token).
//
// Output: emu_cost_write(path) (a TSV per name) and emu_cost_report() (the markdown table), driven by
// dev/cuda/emu/predict_step.c; EMU_COST_OUT=FILE writes the TSV at exit from any emulated program.
#include "cuda_runtime.h"
#include <map>
#include <string>
#include <algorithm>
#include <cmath>

// ---------------------------------------------------------------------------- the machine
struct Gpu {
    const char* name;
    double tensor_flops, fma_flops, bandwidth;  // per second
    int sms;
};
static const Gpu gpus[2] = {{"H100 SXM", 989e12, 67e12, 3.35e12, 132}, {"H200", 989e12, 67e12, 4.8e12, 132}};
static const double CUBLAS_EFF = 0.70;       // of the unit's peak, after tile/wave quantisation
static const double OWN_EFF = 1.00;          // our kernels: best case
static const double OWN_TENSOR_EFF = 0.20;   // our WMMA kernels: shared-memory bound (attention_tc_2026-12-03.md)
static const double LAUNCH_S = 4e-6;         // per kernel launch / library call
static const double SYNC_S = 10e-6;          // per stream synchronisation
static const double PCIE_BPS = 25e9;         // host <-> device copies
static const double GEMM_TILE = 128;         // cuBLAS output tile edge, for the quantisation

enum Unit { TENSOR, FMA, MEMORY, HOST };
static const char* unit_name[] = {"tensor", "fma", "memory", "host"};

// ---------------------------------------------------------------------------- counts
struct Stat {
    int unit = MEMORY;
    long calls = 0;
    double flops = 0, bytes = 0, seconds[2] = {0, 0};
};
static std::map<std::string, Stat>& stats() {
    static auto* m = new std::map<std::string, Stat>;  // never destroyed: EMU_COST_OUT is written at exit
    return *m;
}

extern "C" int emu_count_only(void) {
    static int v = -1;
    if (v < 0) {
        const char* e = getenv("EMU_COUNT_ONLY");
        v = e && *e && strcmp(e, "0") != 0;
    }
    return v;
}

// one call: FLOPs at the unit's rate (work: the FLOPs after quantisation), bytes at the bandwidth (byte_rate: 0
// for the GPU's), plus fixed seconds
// optional: the caller's current category (predict_step.c: the trainer's --profile parts), each call's predicted
// time summed per category as well; Newton-Schulz's calls go to "newton_schulz" (as the trainer times them)
static const char* (*category_now)(void) = NULL;
static std::map<std::string, std::pair<double, double>>& category_seconds() {
    static auto* m = new std::map<std::string, std::pair<double, double>>;
    return *m;
}
extern "C" void emu_cost_set_category_source(const char* (*current)(void)) { category_now = current; }

static void record(const std::string& name, int unit, double flops, double work, double bytes, double eff,
                   double fixed_s, double byte_rate = 0) {
    Stat& s = stats()[name];
    double secs[2];
    s.unit = unit;
    s.calls++;
    s.flops += flops;
    s.bytes += bytes;
    for (int i = 0; i < 2; i++) {
        const Gpu& g = gpus[i];
        double peak = unit == TENSOR ? g.tensor_flops : g.fma_flops;
        double t_compute = work / (peak * eff);
        double t_memory = bytes / (byte_rate > 0 ? byte_rate : g.bandwidth);
        secs[i] = std::max(t_compute, t_memory) + fixed_s;
        s.seconds[i] += secs[i];
    }
    if (category_now) {
        bool ns = name.rfind("ns_", 0) == 0 || name == "cublasSgemmStridedBatched" || name == "cublasGemmStridedBatchedEx";
        auto& c = category_seconds()[ns ? "newton_schulz" : category_now()];
        c.first += secs[0];
        c.second += secs[1];
    }
}

// ---------------------------------------------------------------------------- kernels
struct A {
    const EmuArg* a;
    dim3 g;
    double operator[](int i) const { return a[i].v; }
    const void* p(int i) const { return a[i].p; }
    const EmuArg& s(int i) const {
        if (!a[i].shape) { fprintf(stderr, "emu cost: argument %d is not an attention shape\n", i); abort(); }
        return a[i];
    }
};
struct Cost { double flops, bytes; };
struct KernelRule {
    const char* name;
    int unit;
    int runs;  // 1: EMU_COUNT_ONLY still runs it (the host reads what it computes)
    Cost (*cost)(const A&);
};
static const double BF = 2, F4 = 4, F8 = 8;  // bytes per bf16, fp32/int32, double
static double cdiv(double a, double b) { return std::ceil(a / b); }
// the routed rows between expert offsets: offsets[E] - offsets[0] (device memory is host memory here)
static double routed_rows(const void* offsets, int E) { const int* o = (const int*)offsets; return o[E] - o[0]; }
static double nonempty_experts(const void* offsets, int E) {
    const int* o = (const int*)offsets;
    int c = 0;
    for (int e = 0; e < E; e++) c += o[e + 1] > o[e];
    return c;
}

#define RULE(name, unit, runs, flops, bytes) \
    {#name, unit, runs, [](const A& a) -> Cost { (void)a; return Cost{(double)(flops), (double)(bytes)}; }},
// attention shape shorthands (AttnArgs, attention.cu): N = B T rows; causal: T^2/2 score pairs per head
#define ATT_PAIRS(s) ((double)(s).B * (s).H * (double)(s).T * (s).T / 2)
#define ATT_N(s) ((double)(s).B * (s).T)
static const KernelRule kernel_rules[] = {
    // ---- attention.cu (flash kernels on tensor cores, WMMA; S = Q K^T and O = P V: 2 FLOPs per pair per dim)
    RULE(attn_fwd_kernel, TENSOR, 0, 2 * ATT_PAIRS(a.s(6)) * (a.s(6).dqk + a.s(6).dv),
         ATT_N(a.s(6)) * (BF * a.s(6).H * (a.s(6).dqk + a.s(6).nope + 2 * a.s(6).dv) + BF * a.s(6).rope + F4 * a.s(6).H))
    // S again, dP = dO V^T, dV += P^T dO, dK += dS^T Q
    RULE(attn_bwd_dkv_kernel, TENSOR, 0, 2 * ATT_PAIRS(a.s(8)) * (2 * a.s(8).dqk + 2 * a.s(8).dv),
         ATT_N(a.s(8)) * (BF * a.s(8).H * (2 * a.s(8).dqk + 2 * a.s(8).nope + 3 * a.s(8).dv) + BF * a.s(8).rope +
                          F4 * a.s(8).H * (2 + a.s(8).rope)))
    // S again, dP = dO V^T, dQ = dS K
    RULE(attn_bwd_dq_kernel, TENSOR, 0, 2 * ATT_PAIRS(a.s(7)) * (2 * a.s(7).dqk + a.s(7).dv),
         ATT_N(a.s(7)) * (BF * a.s(7).H * (2 * a.s(7).dqk + a.s(7).nope + 2 * a.s(7).dv) + BF * a.s(7).rope + F4 * 2 * a.s(7).H))
    // the forward's S = Q K^T alone, for its max (maxlogit, q, kv, a, s)
    RULE(attn_maxlogit_kernel, TENSOR, 0, 2 * ATT_PAIRS(a.s(4)) * a.s(4).dqk,
         ATT_N(a.s(4)) * (BF * a.s(4).H * (a.s(4).dqk + a.s(4).nope) + BF * a.s(4).rope) + F4 * a.s(4).H)
    // D = rowsum(dO * O)   (D, dout, out, N, T, H, dv)
    RULE(attn_bwd_d_kernel, MEMORY, 0, 2 * a[3] * a[5] * a[6], a[3] * a[5] * (2 * BF * a[6] + F4))
    // da[:, rope part] += sum over heads of dkr   (da, dkr, N, H, rope, a_stride, kv_lora)
    RULE(attn_bwd_dkr_kernel, MEMORY, 0, a[2] * a[3] * a[4], a[2] * a[4] * (F4 * a[3] + 2 * BF))
    // ---- attention_aux.cu (the cuDNN path's own kernels)
    // (kmat, kv, a, N, H, nope, rope, dv, kv_lora): K = [k_nope | k_rope] per head
    RULE(sdpa_build_k_kernel, MEMORY, 0, 0, BF * a[3] * (2 * a[4] * (a[5] + a[6])))
    // (dkv, da, dkmat, N, H, nope, rope, dv, kv_lora): k-nope columns copied, the rope part summed over heads
    RULE(sdpa_split_dk_kernel, MEMORY, 0, a[3] * a[4] * a[6], BF * a[3] * (a[4] * (a[5] + a[6]) + a[4] * a[5] + a[6]))
    // ---- dense.cu
    RULE(embedding_forward_kernel, MEMORY, 0, 0, a[3] * (2 * BF * a[4] + F4))          // (out, tokens, wte, N, d)
    RULE(iota_kernel, MEMORY, 0, 0, F4 * a[1])                                          // (x, n)
    RULE(embedding_backward_kernel, MEMORY, 0, a[4] * a[5], a[4] * (BF * a[5] + 2 * F4 * a[5] + 2 * F4))
    // one block per row: (out, rstd, inp, in_stride, gain, C, eps), N = grid.x
    RULE(rmsnorm_forward_kernel, MEMORY, 0, 4 * a.g.x * a[5], a.g.x * (2 * BF * a[5] + F4) + BF * a[5])
    // (dinp, in_stride, accumulate, dout, inp, gain, rstd, C), N = grid.x
    RULE(rmsnorm_backward_kernel, MEMORY, 0, 6 * a.g.x * a[7], a.g.x * (BF * a[7] * (3 + a[2]) + F4) + BF * a[7])
    // (part, dout, inp, in_stride, rstd, N, C, rows_per_chunk)
    RULE(rmsnorm_dgain_partial_kernel, MEMORY, 0, 3 * a[5] * a[6], a[5] * (2 * BF * a[6] + F4) + F4 * cdiv(a[5], a[7]) * a[6])
    RULE(rmsnorm_dgain_final_kernel, MEMORY, 0, a[2] * a[3], F4 * (a[2] + 2) * a[3])  // (dgain, part, nchunks, C)
    RULE(add_kernel, MEMORY, 0, a[3], 3 * BF * a[3])                                   // (out, a, b, n)
    RULE(swiglu_forward_kernel, MEMORY, 0, 5 * a[2] * a[3], 3 * BF * a[2] * a[3])      // (out, h13, N, f)
    RULE(swiglu_backward_kernel, MEMORY, 0, 10 * a[3] * a[4], 5 * BF * a[3] * a[4])    // (dh13, dout, h13, N, f)
    RULE(rope_table_kernel, MEMORY, 0, 20 * a[1] * a[2], 2 * F4 * a[1] * a[2])         // (cs, T, half, rope_dim, theta)
    // (x, cs, N, T, n_heads, row_stride, head_stride, offset, half, inverse): pairs rotated in place
    RULE(rope_kernel, MEMORY, 0, 6 * a[2] * a[4] * a[8], 2 * BF * 2 * a[2] * a[4] * a[8] + 2 * F4 * a[3] * a[8])
    // one block per row: (losses, logits, targets, V), N = grid.x
    RULE(crossentropy_forward_kernel, MEMORY, 0, 3 * a.g.x * a[3], a.g.x * (BF * a[3] + 2 * F4))
    RULE(crossentropy_backward_kernel, MEMORY, 0, 3 * a.g.x * a[4], a.g.x * (2 * BF * a[4] + F4))
    // ---- moe.cu
    // (scores, sel, gates, bias, N, E, K, routed_scale): sigmoid in place, K argmax rounds
    RULE(router_topk_kernel, MEMORY, 1, a[4] * a[5] * (4 + 2 * a[6]), a[4] * (2 * F4 * a[5] + 2 * F4 * a[6]) + F4 * a[5])
    RULE(score_rowsum_kernel, MEMORY, 0, a[2] * a[3], a[2] * (F4 * a[3] + F8))        // (rowsum, scores, N, E)
    // (counts, sel, T, E, K), B = grid.x
    RULE(seq_counts_kernel, MEMORY, 0, 0, a.g.x * (F4 * a[2] * a[4] + F4 * a[3]))
    // (Ppart, scores, rowsum, T, E), grid (chunks, B)
    RULE(bal_p_kernel, MEMORY, 0, 2 * a.g.y * a[3] * a[4], a.g.y * (a[3] * (F4 * a[4] + F8) + F8 * a.g.x * a[4]))
    // (lb, Ppart, counts, T, E, K, nc), B = grid.x
    RULE(bal_seq_kernel, MEMORY, 0, a.g.x * a[4] * (a[6] + 3), a.g.x * (F8 * a[6] * a[4] + F4 * a[4] + F8))
    RULE(bal_final_kernel, MEMORY, 0, a[2], F8 * a[2] + F4)                             // (aux, lb, B, alpha)
    // (dscores, dgates, scores, sel, counts, N, T, E, K, fscale, bal, routed_scale)
    RULE(router_bwd_rows_kernel, MEMORY, 0, 8 * a[5] * a[7],
         a[5] * (3 * F4 * a[7] + 2 * F4 * a[8]) + F4 * cdiv(a[5], a[6]) * a[7])
    RULE(split_hi_lo_kernel, MEMORY, 0, 2 * a[2] * a[3], a[2] * a[3] * (F4 + 2 * BF))  // (ds2, ds, N, E)
    // dispatch: (hist, sel, NK, E), nchunks = grid.x; the host reads the offsets, so these run in count-only
    RULE(dispatch_hist_kernel, MEMORY, 1, 0, F4 * a[2] + F4 * a.g.x * a[3])
    RULE(dispatch_colscan_kernel, MEMORY, 1, 0, 2 * F4 * a[2] * a[3] + F4 * a[3])      // (hist, cnt, nchunks, E)
    RULE(dispatch_offsets_kernel, MEMORY, 1, 0, 4 * F4 * a[3])                         // (offsets, load, cnt, E)
    // (row_of, token_of, offsets, hist, sel, NK, K, E), nchunks = grid.x
    RULE(dispatch_place_kernel, MEMORY, 1, 0, 3 * F4 * a[5] + F4 * a.g.x * a[7])
    RULE(gather_rows_kernel, MEMORY, 0, 0, a[3] * (2 * BF * a[4] + F4))                // (dst, src, idx, rows, d)
    // (dx, dxe, row_of, N, K, d): dx += sum_k dxe rows
    RULE(gather_bwd_kernel, MEMORY, 0, a[3] * a[4] * a[5], a[3] * (2 * BF * a[5] + BF * a[4] * a[5] + F4 * a[4]))
    // (y, ye, gates, row_of, N, K, d)
    RULE(combine_fwd_kernel, MEMORY, 0, 2 * a[4] * a[5] * a[6], a[4] * (2 * BF * a[6] + BF * a[5] * a[6] + 2 * F4 * a[5]))
    // (dye, dgates, dy, ye, gates, row_of, NK, K, d): one warp per (row, choice)
    RULE(combine_bwd_kernel, MEMORY, 0, 3 * a[6] * a[8], a[6] * (2 * BF * a[8] + 3 * F4) + BF * a[6] / a[7] * a[8])
    // (out, A, B, offsets, P, Q), E = grid.z: out[e] (P,Q) fp32 += A_e^T B_e over the expert's rows
    RULE(expert_dw_kernel, FMA, 0, 2 * routed_rows(a.p(3), a.g.z) * a[4] * a[5],
         BF * routed_rows(a.p(3), a.g.z) * (a[4] + a[5]) + 2 * F4 * nonempty_experts(a.p(3), a.g.z) * a[4] * a[5])
    // ---- dev/cuda/emu/wmma_test.cpp (the emulator's own check): (C, A, B, C0, M, N, K, ...) and the 16x16x16 one
    RULE(wmma_gemm_kernel, TENSOR, 0, 2 * a[4] * a[5] * a[6], BF * (a[4] + a[5]) * a[6] + 2 * F4 * a[4] * a[5])
    RULE(wmma_layout_assuming_kernel, TENSOR, 0, 2 * 16 * 16 * 16, BF * 2 * 256 + F4 * 256)
    // (out, A, B, offsets, P, Q), E = grid.z: the same on tensor cores (WMMA), the default
    RULE(expert_dw_wmma_kernel, TENSOR, 0, 2 * routed_rows(a.p(3), a.g.z) * a[4] * a[5],
         BF * routed_rows(a.p(3), a.g.z) * (a[4] + a[5]) + 2 * F4 * nonempty_experts(a.p(3), a.g.z) * a[4] * a[5])
    RULE(offsets_check_kernel, MEMORY, 0, a[3], 2 * F4 * a[3])                          // (stale, offsets, snap, n)
    // ---- ops_cuda.cu
    RULE(f32_to_bf16_kernel, MEMORY, 0, a[2], (F4 + BF) * a[2])                        // (out, in, n)
    RULE(bf16_to_f32_kernel, MEMORY, 0, a[2], (F4 + BF) * a[2])
    // ---- optim.cu
    RULE(sum_squares_partial_kernel, MEMORY, 0, 2 * a[2], F4 * a[2])                   // (part, g, n)
    RULE(sum_partials_kernel, MEMORY, 0, a[2], F8 * (a[2] + 1))                        // (out, part, nparts)
    RULE(adamw_kernel, MEMORY, 0, 15 * a[4], 7 * F4 * a[4])                            // (p, g, m, v, n, ...): 4 reads, 3 writes
    RULE(muon_momentum_kernel, MEMORY, 0, 4 * a[3], 4 * F4 * a[3])                     // (m, u, g, n, mu, scale)
    RULE(ns_inv_norm_kernel, MEMORY, 0, 2 * a.g.x * a[2], F4 * a.g.x * a[2])           // (inv, x, nm), cnt = grid.x
    RULE(ns_load_kernel, MEMORY, 0, a[3] * a[4] * a[5], 2 * F4 * a[3] * a[4] * a[5])  // (X, x, inv, cnt, rows, cols, tr)
    RULE(ns_load_bf16_kernel, MEMORY, 0, a[3] * a[4] * a[5], (F4 + BF) * a[3] * a[4] * a[5])  // (X, x, inv, cnt, rows, cols, tr)
    RULE(ns_widen_kernel, MEMORY, 0, 0, (BF + F4) * a[2])                              // (out, in, n)
    RULE(ns_store_kernel, MEMORY, 0, 0, 2 * F4 * a[2] * a[3] * a[4])                  // (x, X, cnt, rows, cols, tr)
    RULE(muon_update_kernel, MEMORY, 0, 4 * a[3], 3 * F4 * a[3])                       // (part, p, o, n, lr, scale, decay)
    RULE(scale_kernel, MEMORY, 0, a[1], 2 * F4 * a[1])                                 // (w, n, factor)
};

int emu_cost_launch(const char* name, dim3 g, dim3 b, size_t smem, const EmuArg* args, int nargs) {
    (void)b; (void)smem; (void)nargs;
    for (const KernelRule& r : kernel_rules) {
        if (strcmp(r.name, name) != 0) continue;
        Cost c = r.cost(A{args, g});
        record(name, r.unit, c.flops, c.flops, c.bytes, r.unit == TENSOR ? OWN_TENSOR_EFF : OWN_EFF, LAUNCH_S);
        return !emu_count_only() || r.runs;
    }
    fprintf(stderr, "emu cost: kernel %s has no FLOP/byte formula: add its line to kernel_rules in "
                    "dev/cuda/emu/emu_cost.cpp\n", name);
    abort();
}

// ---------------------------------------------------------------------------- libraries
// One cuBLAS call of np GEMM problems (each batch x (m, n, k), column-major C (m,n) = op(A) op(B) (+ beta C)):
// FLOPs 2 m n k; bytes A, B and C once (C twice with beta != 0); time from the 128 x 128 output tiles of all
// problems, run in full waves of one tile per SM, at CUBLAS_EFF of the unit's peak.
extern "C" void emu_cost_gemm(const char* name, int tensor, int np, const int* m, const int* n, const int* k,
                              const int* batch, double ab_bytes, double c_bytes, int beta_nonzero) {
    double flops = 0, bytes = 0, tiles = 0, tile_flops = 0;
    for (int i = 0; i < np; i++) {
        double bt = batch ? batch[i] : 1, M = m[i], N = n[i], K = k[i];
        flops += bt * 2 * M * N * K;
        bytes += bt * (ab_bytes * (M * K + K * N) + c_bytes * M * N * (beta_nonzero ? 2 : 1));
        double t = bt * cdiv(M, GEMM_TILE) * cdiv(N, GEMM_TILE);
        tiles += t;
        tile_flops += t * 2 * GEMM_TILE * GEMM_TILE * K;
    }
    double work = 0;
    if (tiles > 0) {
        double waves = cdiv(tiles, gpus[0].sms);  // both GPUs have 132 SMs
        work = waves * gpus[0].sms * (tile_flops / tiles);
    }
    record(name, tensor ? TENSOR : FMA, flops, work, bytes, CUBLAS_EFF, LAUNCH_S);
}

// CUB's onesweep radix sort of n (key, value) pairs: a histogram pass, then one pass per 8 key bits, each reading
// and writing keys and values
extern "C" void emu_cost_sort(double n, double pair_bytes, int key_bits) {
    int passes = (key_bits + 7) / 8;
    record("cub::DeviceRadixSort::SortPairs", MEMORY, 0, 0, n * pair_bytes / 2 + passes * 2 * n * pair_bytes,
           OWN_EFF, (passes + 1) * LAUNCH_S);
}

// copies (kind as cudaMemcpyKind), memsets (kind -1), stream synchronisations (bytes -1)
extern "C" void emu_cost_memory(int kind, double bytes) {
    if (bytes < 0) { record("cudaStreamSynchronize", HOST, 0, 0, 0, 1, SYNC_S); return; }
    switch (kind) {
        case -1: record("cudaMemset", MEMORY, 0, 0, bytes, 1, LAUNCH_S); break;
        case cudaMemcpyDeviceToDevice: record("cudaMemcpy D2D", MEMORY, 0, 0, 2 * bytes, 1, LAUNCH_S); break;
        case cudaMemcpyHostToDevice: record("cudaMemcpy H2D", HOST, 0, 0, bytes, 1, LAUNCH_S, PCIE_BPS); break;
        case cudaMemcpyDeviceToHost: record("cudaMemcpy D2H", HOST, 0, 0, bytes, 1, LAUNCH_S, PCIE_BPS); break;
        default: break;  // host to host: no GPU time
    }
}

// count-only: may this copy or memset move no data? (large ones: weights, gradients, optimizer state, activations)
extern "C" int emu_cost_skip_data(double bytes) { return emu_count_only() && bytes > (64.0 * (1 << 20)); }

// ---------------------------------------------------------------------------- output
extern "C" void emu_cost_reset(void) { stats().clear(); category_seconds().clear(); }

// {"category": [ms H100, ms H200], ...}
extern "C" void emu_cost_categories_json(FILE* f) {
    fprintf(f, "{");
    int first = 1;
    for (auto& [k, v] : category_seconds()) {
        fprintf(f, "%s\"%s\":[%.4f,%.4f]", first ? "" : ",", k.c_str(), 1e3 * v.first, 1e3 * v.second);
        first = 0;
    }
    fprintf(f, "}");
}

extern "C" void emu_cost_totals(const char* name, double* calls, double* flops, double* bytes, double* ms_h100,
                                double* ms_h200) {
    double c = 0, f = 0, b = 0, t0 = 0, t1 = 0;
    for (auto& [k, s] : stats())
        if (!name || k == name) { c += s.calls; f += s.flops; b += s.bytes; t0 += s.seconds[0]; t1 += s.seconds[1]; }
    if (calls) *calls = c;
    if (flops) *flops = f;
    if (bytes) *bytes = b;
    if (ms_h100) *ms_h100 = 1e3 * t0;
    if (ms_h200) *ms_h200 = 1e3 * t1;
}

extern "C" int emu_cost_write(const char* path) {
    FILE* f = fopen(path, "w");
    if (!f) return 1;
    fprintf(f, "name\tunit\tcalls\tflops\tbytes\tms_h100\tms_h200\n");
    for (auto& [k, s] : stats())
        fprintf(f, "%s\t%s\t%ld\t%.17g\t%.17g\t%.9g\t%.9g\n", k.c_str(), unit_name[s.unit], s.calls, s.flops, s.bytes,
                1e3 * s.seconds[0], 1e3 * s.seconds[1]);
    return fclose(f) != 0;
}

// The markdown table for one GPU (rows by predicted time), then step time, tokens/s and MFU (model FLOPs per token
// as the trainer counts them, against the 989 TFLOP/s bf16 peak).
extern "C" void emu_cost_report(FILE* out, int gpu, double tokens, double model_flops_per_token) {
    std::vector<std::pair<std::string, const Stat*>> rows;
    double total = 0, flops = 0, bytes = 0;
    for (auto& [k, s] : stats()) { rows.push_back({k, &s}); total += s.seconds[gpu]; flops += s.flops; bytes += s.bytes; }
    std::sort(rows.begin(), rows.end(), [&](auto& x, auto& y) { return x.second->seconds[gpu] > y.second->seconds[gpu]; });
    const Gpu& g = gpus[gpu];
    fprintf(out, "%s (%.0f TFLOP/s bf16, %.0f TFLOP/s fp32 FMA, %.2f TB/s):\n\n", g.name, g.tensor_flops / 1e12,
            g.fma_flops / 1e12, g.bandwidth / 1e12);
    fprintf(out, "| kernel / call | unit | count | GFLOP | GB | predicted ms | share |\n|---|---|---:|---:|---:|---:|---:|\n");
    for (auto& [k, s] : rows)
        fprintf(out, "| %s | %s | %ld | %.3f | %.4f | %.3f | %.1f%% |\n", k.c_str(), unit_name[s->unit], s->calls,
                s->flops / 1e9, s->bytes / 1e9, 1e3 * s->seconds[gpu], total > 0 ? 100 * s->seconds[gpu] / total : 0);
    double mfu = total > 0 ? model_flops_per_token * tokens / total / g.tensor_flops : 0;
    fprintf(out, "| **step** | | | %.1f | %.2f | **%.2f** | 100%% |\n\n", flops / 1e9, bytes / 1e9, 1e3 * total);
    fprintf(out, "%s: predicted step %.2f ms, %.0f tokens/s, MFU %.1f%% (model %.1f GFLOP per step = %.1f MFLOP/token x "
                 "%.0f tokens; counted %.1f GFLOP)\n\n", g.name, 1e3 * total, total > 0 ? tokens / total : 0, 100 * mfu,
            model_flops_per_token * tokens / 1e9, model_flops_per_token / 1e6, tokens, flops / 1e9);
}

// EMU_COST_OUT=FILE: the counts of the whole run at exit, from any emulated program
struct EmuCostAtExit {
    ~EmuCostAtExit() {
        const char* p = getenv("EMU_COST_OUT");
        if (p && *p && emu_cost_write(p)) fprintf(stderr, "emu cost: cannot write %s\n", p);
    }
} emu_cost_at_exit;
