#!/usr/bin/env bash
# dev/cuda/emu/cost_check.sh: the whole-model checks of the cost counter (emu_cost.cpp), slower than run.sh's
# `cost` part and outside make test (~1-2 minutes on one core):
#   1. a computed training step and an EMU_COUNT_ONLY=1 one count the same calls, FLOPs and bytes for every kernel
#      and library call (k2-nano with 8 experts, top-8: every token picks every expert, so routing cannot differ
#      between real and pseudo-random router logits);
#   2. the counted tensor-core and attention FLOPs of a k2-nano step (default batch) against the trainer's own count
#      (config_flops_per_token x tokens, what MFU is computed from): at least 1x (every model FLOP is counted) and
#      at most 1.25x (the attention backward recomputes the scores, the router's gradient runs twice (bf16 hi + lo)).
# Prints PASS/FAIL lines and "N passed, N failed"; exits non-zero on a failure.
set -u
cd "$(dirname "$0")"
R=$(cd ../../.. && pwd)
B=${EMU_BUILD:-$R/build/emu}
bash run.sh predict_step > /dev/null || { echo "FAIL cost_check: predict_step does not build"; exit 1; }
W=$(mktemp -d /tmp/emu_cost_check.XXXXXX)
trap 'rm -rf "$W"' EXIT
pass=0; fail=0
ok() { echo "PASS $*"; pass=$((pass + 1)); }
bad() { echo "FAIL $*"; fail=$((fail + 1)); }
export OMP_NUM_THREADS=1
ARGS=(k2-nano 2 --seq-len 64 --experts 8 --top-k 8)
if EMU_COUNT_ONLY=0 $B/predict_step "${ARGS[@]}" --out $W/computed > $W/computed.md 2> $W/computed.err \
   && EMU_COUNT_ONLY=1 $B/predict_step "${ARGS[@]}" --out $W/counted > $W/counted.md 2> $W/counted.err; then
    # the columns that are counts (name, unit, calls, FLOPs, bytes); times follow from them
    if diff <(cut -f1-5 $W/computed.tsv) <(cut -f1-5 $W/counted.tsv) > $W/diff; then
        ok "computed vs count-only step (${ARGS[*]}): $(($(wc -l < $W/counted.tsv) - 1)) kernels and calls, equal counts"
    else
        bad "computed vs count-only step (${ARGS[*]}) differ: $(head -4 $W/diff | tr '\n' ' ')"
    fi
else
    bad "predict_step failed: $(tail -n 2 $W/computed.err $W/counted.err | tr '\n' ' ')"
fi
if EMU_COUNT_ONLY=1 $B/predict_step k2-nano 8 --out $W/nano > /dev/null 2> $W/nano.err; then
    python3 - $W/nano.tsv $W/nano.json <<'PY' && ok "$(cat $W/ratio)" || bad "$(cat $W/ratio)"
import csv, json, sys, os
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
j = json.load(open(sys.argv[2]))
counted = sum(float(r["flops"]) for r in rows if r["unit"] == "tensor" or r["name"].startswith("attn_"))
model = j["model_flops_per_token"] * j["tokens"]
ratio = counted / model
msg = "k2-nano B=8: counted GEMM + attention FLOPs %.3f GFLOP = %.3fx the trainer's count %.3f GFLOP (want 1 .. 1.25)" % (
    counted / 1e9, ratio, model / 1e9)
open(os.path.join(os.path.dirname(sys.argv[1]), "ratio"), "w").write(msg)
sys.exit(0 if 1.0 <= ratio <= 1.25 else 1)
PY
else
    bad "predict_step k2-nano 8 failed: $(tail -n 2 $W/nano.err | tr '\n' ' ')"
fi
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
