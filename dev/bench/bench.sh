#!/usr/bin/env bash
# dev/bench/bench.sh: training throughput of ./train_moe vs PyTorch (dev/bench/torch_k2.py) on the same model
# (k2-nano by default), the same batch (B=8 x T=256), the same data shard and the same number of CPU threads, in
# one invocation; prints tokens/s, ms/step, MFU against the sgemm peak measured in this invocation, and the ratios.
#
#   bash dev/bench/bench.sh                    # defaults below
#   THREADS=2 STEPS=30 TORCH_STEPS=20 SKIP=5 MODEL=k2-nano bash dev/bench/bench.sh
#   WAIT_QUIET=600 bash dev/bench/bench.sh     # first wait (up to 600 s) until nothing else keeps the CPUs busy
#   TORCH_SETUPS=tuned SCENARIOS=train bash dev/bench/bench.sh    # one PyTorch setup, one scenario
#
# Scenarios (both implementations get the same flags):
#   train    lr 3e-3, the trainer's default. The router collapses within a few steps (in both implementations) to
#            the same 8 experts for every token (load max/mean 48), so the MoE runs as 8 big GEMMs per layer.
#   frozen   lr 1e-9: the router stays near its random init (load max/mean ~4-6, ~43 rows per expert), the routing
#            a healthy MoE run has; many small per-expert GEMMs.
# PyTorch setups (torch_k2.py --malloc/--blas):
#   as-installed  Debian's torch as it comes: the system libblas.so.3 (OpenBLAS, pthreads build) and glibc malloc's
#                 defaults. The BLAS's own threads fight torch's OpenMP threads, and every large temporary is a
#                 fresh mmap whose pages fault in again.
#   tuned         what a PyTorch user tuning for speed does: the OpenMP build of OpenBLAS (shares torch's OpenMP
#                 threads; the library ./train_moe links) and malloc that keeps freed memory (as jemalloc/tcmalloc
#                 would). The fair baseline.
# Medians over the steps after the first SKIP (warmup). The peak is train_moe's own measurement (a 1024^3
# OpenBLAS sgemm on THREADS threads, printed in its banner and logged as peak_gflops, once per train_moe run);
# torch_k2.py prints torch.mm's 1024^3 rate too. MFU = flops_per_token (train_moe's config log line) x tok/s / peak.
# OpenBLAS picks its kernels at load time from the CPU; 0.3.21 (Debian 12) does not know AMD Zen 5 and takes the
# AVX2 "Haswell" kernels. OPENBLAS_CORETYPE=COOPERLAKE (or SKYLAKEX) in the environment selects the AVX-512 ones
# for both implementations (and for the peak measurement, which nearly doubles); the runs print the core in use.
# Timing needs a quiet machine: with another busy process, a descheduled OpenMP thread stalls every barrier for a
# scheduler tick and 2-thread runs slow down several-fold; the script measures how busy the CPUs were and warns.
set -euo pipefail
cd "$(dirname "$0")/../.."

THREADS=${THREADS:-2}
STEPS=${STEPS:-30}
TORCH_STEPS=${TORCH_STEPS:-20}
SKIP=${SKIP:-5}
MODEL=${MODEL:-k2-nano}
BATCH=${BATCH:-8}
DATA=${DATA:-data/default/train_000.bin}
SCENARIOS=${SCENARIOS:-train frozen}
TORCH_SETUPS=${TORCH_SETUPS:-as-installed tuned}
WAIT_QUIET=${WAIT_QUIET:-0}
PY=/usr/bin/python3

[ -x ./train_moe ] || make train_moe
[ -f "$DATA" ] || { echo "bench: no data shard $DATA (run 'make data')" >&2; exit 1; }
$PY -c 'import torch, numpy' 2>/dev/null || { echo "bench: $PY lacks torch/numpy" >&2; exit 1; }

TMP=$(mktemp -d /tmp/train_moe_bench.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS

busy_check() {  # percent of all CPUs busy over the next second (everyone's work)
    local u1 n1 s1 i1 w1 q1 sq1 st1 u2 n2 s2 i2 w2 q2 sq2 st2
    read -r _ u1 n1 s1 i1 w1 q1 sq1 st1 _ < /proc/stat
    sleep 1
    read -r _ u2 n2 s2 i2 w2 q2 sq2 st2 _ < /proc/stat
    local busy=$(( (u2+n2+s2+q2+sq2+st2) - (u1+n1+s1+q1+sq1+st1) ))
    local total=$(( busy + (i2+w2) - (i1+w1) ))
    echo $(( total > 0 ? 100 * busy / total : 0 ))
}
B0=$(busy_check)
waited=0
while [ "$B0" -gt 10 ] && [ "$waited" -lt "$WAIT_QUIET" ]; do B0=$(busy_check); waited=$((waited + 1)); done
[ "$waited" -gt 0 ] && echo "bench: waited ${waited}s for the machine to go quiet"
echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), load average $(cut -d' ' -f1-3 /proc/loadavg), ${B0}% busy just before the run"
[ "$B0" -gt 10 ] && echo "bench: WARNING: the machine is ${B0}% busy with other work; the numbers below are not reliable"

for scenario in $SCENARIOS; do
    case $scenario in
        train) lr=3e-3 ;;
        frozen) lr=1e-9 ;;
        *) echo "bench: unknown SCENARIOS entry '$scenario' (train | frozen)" >&2; exit 1 ;;
    esac
    echo "== [$scenario] train_moe: $MODEL, $STEPS steps, batch $BATCH, lr $lr, $THREADS threads"
    OPENBLAS_VERBOSE=2 ./train_moe --model "$MODEL" --steps "$STEPS" --batch-size "$BATCH" --threads "$THREADS" --train-data "$DATA" \
        --lr "$lr" --val-every 0 --sample-every 0 --ckpt-every 0 --out "$TMP/run_$scenario" --overwrite \
        > "$TMP/c_$scenario.log" 2>&1 || { cat "$TMP/c_$scenario.log"; echo "bench: train_moe failed" >&2; exit 1; }
    grep -E "^(model|  parameters|device|MFU peak)" "$TMP/c_$scenario.log" | sed 's/^/  /'
    grep -m1 "^Core:" "$TMP/c_$scenario.log" | sed "s/^Core: */  OpenBLAS kernels: /"
    grep -E "^step" "$TMP/c_$scenario.log" | sed -n "1p;$((SKIP + 1))p;\$p" | sed 's/^/  /'
    rm -f "$TMP/run_$scenario"/model_* "$TMP/run_$scenario"/state_*   # the final checkpoint; only log.jsonl is read
    for setup in $TORCH_SETUPS; do
        case $setup in
            as-installed) flags="--malloc default --blas system" ;;
            tuned) flags="--malloc tuned --blas openmp" ;;
            *) echo "bench: unknown TORCH_SETUPS entry '$setup' (as-installed | tuned)" >&2; exit 1 ;;
        esac
        echo "== [$scenario] PyTorch ($setup): $MODEL, $TORCH_STEPS steps, batch $BATCH, lr $lr, $THREADS threads"
        # shellcheck disable=SC2086
        $PY dev/bench/torch_k2.py --model "$MODEL" --threads "$THREADS" --steps "$TORCH_STEPS" --skip "$SKIP" \
            --batch-size "$BATCH" --data "$DATA" --lr "$lr" $flags > "$TMP/t_${scenario}_$setup.log" 2>&1 \
            || { cat "$TMP/t_${scenario}_$setup.log"; echo "bench: torch_k2.py failed" >&2; exit 1; }
        grep -E "^(torch|parameters)" "$TMP/t_${scenario}_$setup.log" | sed 's/^/  /'
        grep -E "^step" "$TMP/t_${scenario}_$setup.log" | sed -n "1p;$((SKIP + 1))p;\$p" | sed 's/^/  /'
    done
done
B1=$(busy_check)

$PY - "$TMP" "$SKIP" "$THREADS" "$B0" "$B1" "$SCENARIOS" "$TORCH_SETUPS" <<'EOF'
import json, statistics, sys
tmp, skip, threads, b0, b1 = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
scenarios, setups = sys.argv[6].split(), sys.argv[7].split()
about = {"train": "lr 3e-3, real training: the router collapses within a few steps to the same 8 experts for every "
                  "token, so the experts run as 8 large GEMMs",
         "frozen": "lr 1e-9: the router stays near its random init, ~43 rows per expert (healthy MoE routing)"}
rows, result, peaks = [], "RESULT", []
for sc in scenarios:
    cfg, steps = None, []
    for line in open("%s/run_%s/log.jsonl" % (tmp, sc)):
        r = json.loads(line)
        if r.get("type") == "config":
            cfg = r
        elif r.get("type") == "step":
            steps.append(r)
    kept = [s for s in steps if s["step"] > skip] or steps
    ours = statistics.median(s["tok_s"] for s in kept)
    ours_ms = statistics.median(s["ms"] for s in kept)
    imb = statistics.median(max(s["load_imbalance"]) for s in kept)
    fpt, peak = cfg["flops_per_token"], cfg["peak_gflops"]
    peaks.append(peak)
    core = [l.split()[1] for l in open("%s/c_%s.log" % (tmp, sc)) if l.startswith("Core:")][:1] or ["?"]
    mfu = lambda t: 100.0 * fpt * t / (peak * 1e9)
    rows.append("| %s | train_moe (C) | %.1f | %.1f | %.1f%% | 1.00x |" % (sc, ours, ours_ms, mfu(ours)))
    result += " %s_ours_tok_s=%.1f %s_mfu_ours=%.4f %s_load_max_mean=%.1f" % (sc, ours, sc, mfu(ours) / 100, sc, imb)
    for st in setups:
        res = [l for l in open("%s/t_%s_%s.log" % (tmp, sc, st)) if l.startswith("RESULT ")][-1].split()[1:]
        t = dict(kv.split("=") for kv in res)
        if int(t["params"]) != cfg["params"]:
            print("bench: WARNING: parameter counts differ: train_moe %d, torch %s" % (cfg["params"], t["params"]))
        tok = float(t["tok_s"])
        rows.append("| %s | PyTorch 1.13, %s | %.1f | %.1f | %.1f%% | %.2fx |"
                    % (sc, st, tok, float(t["ms_step"]), mfu(tok), ours / tok))
        k = st.replace("-", "_")
        result += " %s_torch_%s_tok_s=%.1f %s_ratio_%s=%.3f" % (sc, k, tok, sc, k, ours / tok)
print()
print("model %s: %.3fM parameters (both), %.3f MFLOP/token (6 x active + attention), batch %d x %d, %s threads"
      % (cfg["model"], cfg["params"] / 1e6, fpt / 1e6, cfg["batch"], cfg["seq_len"], threads))
print("sgemm peak (train_moe's measurement, OpenBLAS 1024^3, %s threads, one per scenario): %s GFLOP/s; OpenBLAS "
      "kernels: %s" % (threads, " / ".join("%.1f" % p for p in peaks), core[0]))
for sc in scenarios:
    print("  %s: %s" % (sc, about[sc]))
print("medians over steps %d.. of each run; PyTorch as-installed = system BLAS (pthreads) + default malloc, "
      "tuned = OpenMP OpenBLAS + malloc keeping freed memory" % (skip + 1))
print()
print("| scenario | implementation | tokens/s | ms/step | MFU | ours / this |")
print("|---|---|---:|---:|---:|---:|")
print("\n".join(rows))
print()
print(result + " peak_gflops=%.1f blas_core=%s" % (peaks[0], core[0]) + " busy_before=%s busy_after=%s" % (b0, b1))
EOF
[ "$B1" -gt 10 ] && echo "bench: WARNING: the machine was ${B1}% busy with other work right after the run"
exit 0
