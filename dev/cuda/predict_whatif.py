"""dev/cuda/predict_whatif.py PREFIX: what the roofline of dev/cuda/emu/emu_cost.cpp says the changes under way would
buy, from one counted step (PREFIX.tsv, PREFIX.json written by dev/cuda/predict.sh with PREDICT_OUT=PREFIX).
Re-times rows of the counted step under stated assumptions (it counts nothing new: the counts are the emulator's):

  attention on tensor cores: the attn_* kernels still on fp32 FMA, their FLOPs at ATT_EFF of the bf16 peak
      (FlashAttention-2 reaches ~35-50% on an H100, FlashAttention-3 ~75%);
  grouped expert dW: the fp32-output cuBLAS GEMMs, where they still include the per-expert weight-gradient loop
      (2 x E calls per MoE layer, plus the few dense ones), as one roofline at cuBLAS's 70% with 2 launches per
      MoE layer instead of 2 x E;
  faster tensor-core kernels: our own WMMA kernels (counted at 20% of the bf16 peak, emu_cost.cpp) at ATT_EFF,
      what an mma.sync / wgmma rewrite with register-resident tiles could reach;
  gradient accumulation G: the per-step rows (optimizer, bf16 weight copy, gradient norm, the gradients' memset)
      once per G micro-batches, everything else G times.
A change that finds nothing to change in the counted step (it is already made) is left out of the table.
Prints a markdown table of step time, tokens/s and MFU on both GPUs per scenario; --json adds a JSON line."""
import csv, json, sys

PEAK = 989e12
GPUS = [("H100", "ms_h100", 3.35e12), ("H200", "ms_h200", 4.8e12)]
ATT_EFF = 0.5
CUBLAS_EFF = 0.7
LAUNCH_MS = 4e-3
PER_STEP = ("adamw_kernel", "muon_momentum_kernel", "muon_update_kernel", "ns_inv_norm_kernel", "ns_load_kernel",
            "ns_store_kernel", "ns_load_bf16_kernel", "ns_widen_kernel", "cublasSgemmStridedBatched",
            "cublasGemmStridedBatchedEx", "f32_to_bf16_kernel", "sum_squares_partial_kernel",
            "sum_partials_kernel", "scale_kernel", "cudaMemset")

prefix = sys.argv[1]
rows = list(csv.DictReader(open(prefix + ".tsv"), delimiter="\t"))
meta = json.load(open(prefix + ".json"))
n_moe = meta.get("moe_layers", 0)
n_exp = meta.get("experts", 0)


def own_tensor(r):
    return r["unit"] == "tensor" and not r["name"].startswith("cublas")


def ms(r, col, bw, change):
    """one row's predicted ms with the changes in the set `change` made"""
    f, b, calls = float(r["flops"]), float(r["bytes"]), int(r["calls"])
    if "att" in change and r["name"].startswith("attn_") and r["unit"] == "fma":
        return max(f / (PEAK * ATT_EFF), b / bw) * 1e3 + calls * LAUNCH_MS
    if "dw" in change and r["name"] == "cublasGemmEx bf16->f32":
        launches = max(calls - 2 * n_exp * n_moe + 2 * n_moe, 1)
        return max(f / (PEAK * CUBLAS_EFF), b / bw) * 1e3 + launches * LAUNCH_MS
    if "tc" in change and own_tensor(r):
        return max(f / (PEAK * ATT_EFF), b / bw) * 1e3 + calls * LAUNCH_MS
    return float(r[col])


# the changes that still have something to change in this counted step
possible = []
if any(r["name"].startswith("attn_") and r["unit"] == "fma" for r in rows):
    possible.append(("att", "attention on tensor cores (%d%% of peak)" % (100 * ATT_EFF)))
if any(r["name"] == "cublasGemmEx bf16->f32" and int(r["calls"]) >= 2 * n_exp * n_moe > 0 for r in rows):
    possible.append(("dw", "grouped tensor-core expert dW"))
if any(own_tensor(r) for r in rows):
    possible.append(("tc", "our tensor-core kernels at %d%% of peak (counted at 20%%)" % (100 * ATT_EFF)))
scenarios, made = [("as counted", frozenset(), 1)], set()
for i, (key, label) in enumerate(possible):
    made.add(key)
    scenarios.append(((label if i == 0 else "+ " + label), frozenset(made), 1))
scenarios += [("+ gradient accumulation x%d" % g, frozenset(made), g) for g in (2, 4, 8, 16)]
out = []
print("| scenario | tokens per step | %s |" % " | ".join("%s step ms | %s tok/s | %s MFU" % (g, g, g) for g, _, _ in GPUS))
print("|---|---:|%s" % ("---:|---:|---:|" * len(GPUS)))
for name, change, G in scenarios:
    cells, rec = [], {"scenario": name, "grad_accum": G}
    tokens = meta["tokens"] * G
    for g, col, bw in GPUS:
        per_step = sum(ms(r, col, bw, change) for r in rows if r["name"] in PER_STEP)
        per_micro = sum(ms(r, col, bw, change) for r in rows if r["name"] not in PER_STEP)
        step = G * per_micro + per_step
        tok_s = tokens / (step / 1e3)
        mfu = meta["model_flops_per_token"] * tok_s / PEAK
        cells.append("%.1f | %.0f | %.1f%%" % (step, tok_s, 100 * mfu))
        rec[g] = {"step_ms": round(step, 3), "tok_s": round(tok_s), "mfu": round(mfu, 4)}
    out.append(rec)
    print("| %s | %d | %s |" % (name, tokens, " | ".join(cells)))
if "--json" in sys.argv:
    print(json.dumps(out))
