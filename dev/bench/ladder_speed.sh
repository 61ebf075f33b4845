#!/usr/bin/env bash
# dev/bench/ladder_speed.sh: training throughput of two train_moe binaries (old, new) on the CPU ladder's sizes,
# AdamW and Muon, interleaved in one invocation (per model and optimizer: A B A B ...), so that both see the same
# machine. Prints per cell the median ms/step, tokens/s, MFU and the speed-up new/old, then a markdown table.
#
#   bash dev/bench/ladder_speed.sh OLD_BINARY NEW_BINARY
#   MODELS="k2-l1 k2-l3 k2-nano" OPTIMS="adamw muon" ROUNDS=3 STEPS=30 SKIP=5 THREADS=2 bash dev/bench/ladder_speed.sh A B
#   WAIT_QUIET=30 bash dev/bench/ladder_speed.sh A B   # before each old/new pair, wait up to 30 s for a quiet second
#   PEAK=237.7 bash dev/bench/ladder_speed.sh A B       # the MFU peak given (a busy machine measures it low)
#
# Default batch (8 x 256), a synthetic shard (vocab 4096, seed 1), no validation, samples or checkpoints. MFU is
# flops_per_token x tokens/s over the sgemm peak that NEW_BINARY measures once at the start (a 1024^3 OpenBLAS
# sgemm on THREADS threads); every run gets that peak by --peak-gflops, so the runs themselves skip the measurement.
# Medians over the steps after the first SKIP of each run, then the median over the rounds.
# Timing needs a quiet machine: the script reports how busy the CPUs were before and after.
set -euo pipefail
cd "$(dirname "$0")/../.."
A=${1:?usage: dev/bench/ladder_speed.sh OLD_BINARY NEW_BINARY}; B=${2:?usage: dev/bench/ladder_speed.sh OLD_BINARY NEW_BINARY}
MODELS=${MODELS:-k2-l1 k2-l3 k2-nano}; OPTIMS=${OPTIMS:-adamw muon}
ROUNDS=${ROUNDS:-3}; STEPS=${STEPS:-30}; SKIP=${SKIP:-5}; THREADS=${THREADS:-2}; WAIT_QUIET=${WAIT_QUIET:-0}
PY=/usr/bin/python3
TMP=$(mktemp -d /tmp/train_moe_ladder.XXXXXX); trap 'rm -rf "$TMP"' EXIT
$PY data/shard_tool.py write "$TMP/train_0.bin" --random 400000 --vocab 4096 --seed 1 > /dev/null
export OMP_WAIT_POLICY=passive

busy() {  # percent of all CPUs busy over the next second (everyone's work)
    local a b
    read -r _ u1 n1 s1 i1 w1 q1 sq1 st1 _ < /proc/stat; sleep 1
    read -r _ u2 n2 s2 i2 w2 q2 sq2 st2 _ < /proc/stat
    a=$(( (u2+n2+s2+q2+sq2+st2) - (u1+n1+s1+q1+sq1+st1) )); b=$(( a + (i2+w2) - (i1+w1) ))
    echo $(( b > 0 ? 100 * a / b : 0 ))
}
COMMON=(--threads "$THREADS" --steps "$STEPS" --train-data "$TMP/train_0.bin" --val-data '' --sample-every 0
        --ckpt-every 0 --tokenizer /nonexistent)
echo "machine: $(nproc) CPUs ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), $THREADS threads, $(busy)% busy before"
if [ -n "${PEAK:-}" ]; then
    echo "sgemm peak: $PEAK GFLOP/s (given by PEAK)"
else
    "$B" --model k2-l1 "${COMMON[@]}" --steps 1 --out "$TMP/peak" > /dev/null
    PEAK=$($PY -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["peak_gflops"])' "$TMP/peak/log.jsonl")
    echo "sgemm peak (1024^3, $THREADS threads, measured by $B): $PEAK GFLOP/s"
fi

: > "$TMP/results.tsv"
for model in $MODELS; do
    for optim in $OPTIMS; do
        for r in $(seq 1 "$ROUNDS"); do
            waited=0
            while [ "$waited" -lt "$WAIT_QUIET" ] && [ "$(busy)" -gt 10 ]; do waited=$((waited + 1)); done
            for which in A B; do
                bin=$A; [ $which = B ] && bin=$B
                rm -rf "$TMP/run"
                "$bin" --model "$model" --optim "$optim" "${COMMON[@]}" --peak-gflops "$PEAK" --out "$TMP/run" > /dev/null
                $PY - "$TMP/run/log.jsonl" "$SKIP" "$model" "$optim" "$which" >> "$TMP/results.tsv" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
cfg = recs[0]
steps = sorted((r for r in recs if r.get("type") == "step" and r["step"] > int(sys.argv[2])), key=lambda r: r["ms"])
mid = steps[len(steps) // 2]
print("\t".join([sys.argv[3], sys.argv[4], sys.argv[5], "%.3f" % mid["ms"], "%.1f" % mid["tok_s"], "%.4f" % mid["mfu"]]))
PY
                echo "$model $optim round $r $which: $(tail -n 1 "$TMP/results.tsv" | cut -f4) ms/step (waited ${waited}s for quiet)"
            done
        done
    done
done
echo "$(busy)% busy after"
$PY - "$TMP/results.tsv" "$A" "$B" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
cells = {}
for model, optim, which, ms, tok, mfu in rows:
    cells.setdefault((model, optim), {"A": [], "B": []})[which].append((float(ms), float(tok), float(mfu)))
print("\n| model | optimizer | old ms/step | new ms/step | old tok/s | new tok/s | old MFU | new MFU | speed-up (tok/s new/old) |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for (model, optim), c in cells.items():
    a = [statistics.median(x[i] for x in c["A"]) for i in range(3)]
    b = [statistics.median(x[i] for x in c["B"]) for i in range(3)]
    print("| %s | %s | %.1f | %.1f | %.0f | %.0f | %.1f%% | %.1f%% | **%.2fx** |" % (model, optim, a[0], b[0], a[1], b[1],
          100 * a[2], 100 * b[2], b[1] / a[1]))
print("\nold = %s, new = %s; medians over %d rounds (each: the median step after the warm-up)" % (sys.argv[2], sys.argv[3], len(c["A"])))
PY
