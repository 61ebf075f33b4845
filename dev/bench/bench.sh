#!/usr/bin/env bash
# dev/bench/bench.sh: training throughput of ./train_moe vs PyTorch (dev/bench/torch_k2.py) on the same model
# (k2-nano by default), the same batch (B=8 x T=256), the same data shard and the same number of CPU threads, in
# one invocation; prints tokens/s, ms/step, MFU against the sgemm peak measured in this invocation, and the ratio.
#
#   bash dev/bench/bench.sh                    # defaults below
#   THREADS=2 STEPS=30 TORCH_STEPS=20 SKIP=5 MODEL=k2-nano bash dev/bench/bench.sh
#   TORCH_MALLOC=0 bash dev/bench/bench.sh     # PyTorch with glibc's default malloc settings (slower, see below)
#
# Medians over the steps after the first SKIP (warmup). The peak is train_moe's own measurement (a 1024^3
# OpenBLAS sgemm on THREADS threads, printed in its banner and logged as peak_gflops); torch_k2.py also reports
# torch.mm's 1024^3 rate. MFU = flops_per_token (train_moe's config log line) x tok/s / peak, for both.
# PyTorch runs with glibc malloc tuned to keep freed memory (MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_), the
# usual CPU-PyTorch advice (as jemalloc/tcmalloc would): without it every large temporary is a fresh mmap whose
# pages fault in again. train_moe allocates its buffers once and is not affected.
set -euo pipefail
cd "$(dirname "$0")/../.."

THREADS=${THREADS:-2}
STEPS=${STEPS:-30}
TORCH_STEPS=${TORCH_STEPS:-20}
SKIP=${SKIP:-5}
MODEL=${MODEL:-k2-nano}
BATCH=${BATCH:-8}
DATA=${DATA:-data/default/train_000.bin}
TORCH_MALLOC=${TORCH_MALLOC:-1}
PY=/usr/bin/python3

[ -x ./train_moe ] || make train_moe
[ -f "$DATA" ] || { echo "bench: no data shard $DATA (run 'make data')" >&2; exit 1; }
$PY -c 'import torch, numpy' 2>/dev/null || { echo "bench: $PY lacks torch/numpy" >&2; exit 1; }

TMP=$(mktemp -d /tmp/train_moe_bench.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS

# Other work on the machine ruins a timing of THREADS threads (a descheduled OpenMP thread stalls every barrier
# for a scheduler tick); say so up front.
busy_check() {
    local a b
    read -r _ u1 n1 s1 i1 w1 q1 sq1 st1 _ < /proc/stat
    sleep 1
    read -r _ u2 n2 s2 i2 w2 q2 sq2 st2 _ < /proc/stat
    local busy=$(( (u2+n2+s2+q2+sq2+st2) - (u1+n1+s1+q1+sq1+st1) ))
    local total=$(( busy + (i2+w2) - (i1+w1) ))
    echo $(( total > 0 ? 100 * busy / total : 0 ))
}
B0=$(busy_check)
echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), load average $(cut -d' ' -f1-3 /proc/loadavg), ${B0}% busy before the run"
[ "$B0" -gt 10 ] && echo "bench: WARNING: the machine is ${B0}% busy with other work; the numbers below are not reliable"

echo "== train_moe: $MODEL, $STEPS steps, batch $BATCH, $THREADS threads"
./train_moe --model "$MODEL" --steps "$STEPS" --batch-size "$BATCH" --threads "$THREADS" --train-data "$DATA" \
    --val-every 0 --sample-every 0 --ckpt-every 0 --out "$TMP/run" --overwrite > "$TMP/c.log" 2>&1 \
    || { cat "$TMP/c.log"; echo "bench: train_moe failed" >&2; exit 1; }
grep -E "^(model|  parameters|device|MFU peak)" "$TMP/c.log" | sed 's/^/  /'
grep -E "^step" "$TMP/c.log" | sed -n "1p;$((SKIP + 1))p;\$p" | sed 's/^/  /'

echo "== PyTorch: $MODEL, $TORCH_STEPS steps, batch $BATCH, $THREADS threads"
if [ "$TORCH_MALLOC" = 1 ]; then
    export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296
fi
$PY dev/bench/torch_k2.py --model "$MODEL" --threads "$THREADS" --steps "$TORCH_STEPS" --skip "$SKIP" \
    --batch-size "$BATCH" --data "$DATA" > "$TMP/t.log" 2>&1 \
    || { cat "$TMP/t.log"; echo "bench: torch_k2.py failed" >&2; exit 1; }
unset MALLOC_MMAP_THRESHOLD_ MALLOC_TRIM_THRESHOLD_
grep -E "^(torch|parameters)" "$TMP/t.log" | sed 's/^/  /'
grep -E "^step" "$TMP/t.log" | sed -n "1p;$((SKIP + 1))p;\$p" | sed 's/^/  /'
B1=$(busy_check)

$PY - "$TMP/run/log.jsonl" "$TMP/t.log" "$SKIP" "$THREADS" "$B0" "$B1" "$TORCH_MALLOC" <<'EOF'
import json, statistics, sys
log, tlog, skip, threads, b0, b1, tmalloc = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], *sys.argv[5:]
cfg, steps = None, []
for line in open(log):
    r = json.loads(line)
    if r.get("type") == "config":
        cfg = r
    elif r.get("type") == "step":
        steps.append(r)
kept = [s for s in steps if s["step"] > skip] or steps
ours = statistics.median(s["tok_s"] for s in kept)
ours_ms = statistics.median(s["ms"] for s in kept)
res = [l for l in open(tlog) if l.startswith("RESULT ")][-1].split()[1:]
res = dict(kv.split("=") for kv in res)
theirs, theirs_ms = float(res["tok_s"]), float(res["ms_step"])
fpt, peak = cfg["flops_per_token"], cfg["peak_gflops"]
if int(res["params"]) != cfg["params"]:
    print("bench: WARNING: parameter counts differ: train_moe %d, torch %s" % (cfg["params"], res["params"]))
mfu = lambda t: 100.0 * fpt * t / (peak * 1e9)
print()
print("model %s: %.3fM parameters (both), %.3f MFLOP/token (6 x active + attention), batch %d x %d, %s threads"
      % (cfg["model"], cfg["params"] / 1e6, fpt / 1e6, cfg["batch"], cfg["seq_len"], threads))
print("sgemm peak (train_moe, OpenBLAS 1024^3, %s threads): %.1f GFLOP/s; torch.mm 1024^3: %s GFLOP/s"
      % (threads, peak, res.get("sgemm_gflops", "?")))
print("medians over steps %d.. (train_moe: %d steps timed, torch: %s)%s" % (skip + 1, len(kept), res["steps_timed"],
      "" if tmalloc == "1" else "; torch with default malloc"))
print()
print("| implementation | tokens/s | ms/step | MFU |")
print("|---|---:|---:|---:|")
print("| train_moe (C) | %.1f | %.1f | %.1f%% |" % (ours, ours_ms, mfu(ours)))
print("| PyTorch %s | %.1f | %.1f | %.1f%% |" % ("1.13 (tuned malloc)" if tmalloc == "1" else "1.13", theirs, theirs_ms,
                                             mfu(theirs)))
print()
print("ratio ours/torch: %.2fx" % (ours / theirs))
print("RESULT ours_tok_s=%.1f torch_tok_s=%.1f ratio=%.3f mfu_ours=%.4f mfu_torch=%.4f peak_gflops=%.1f busy_before=%s "
      "busy_after=%s" % (ours, theirs, ours / theirs, mfu(ours) / 100, mfu(theirs) / 100, peak, b0, b1))
EOF
[ "$B1" -gt 10 ] && echo "bench: WARNING: the machine was ${B1}% busy with other work right after the run"
exit 0
