#!/usr/bin/env bash
# dev/bench/profile_parts.sh: where a training step's time goes, per model part (train_moe --profile), for one or
# more binaries on the same runs, as one markdown table per model (ms per step, mean over the steps after SKIP;
# binaries interleaved per model so that both see the same machine).
#
#   bash dev/bench/profile_parts.sh BINARY [BINARY2 ...]
#   MODELS="k2-l1 k2-l3 k2-nano" STEPS=30 SKIP=5 THREADS=2 ARGS="--optim muon" bash dev/bench/profile_parts.sh ./train_moe
#
# Synthetic shard (vocab 4096, seed 1), default batch, AdamW unless ARGS says otherwise. The parts are the
# "prof_ms" fields of the step records (a binary without the fine parts shows its own coarser ones).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 1 ] || { echo "usage: dev/bench/profile_parts.sh BINARY [BINARY2 ...]" >&2; exit 2; }
MODELS=${MODELS:-k2-l1 k2-l3 k2-nano}; STEPS=${STEPS:-30}; SKIP=${SKIP:-5}; THREADS=${THREADS:-2}; ARGS=${ARGS:-}
TMP=$(mktemp -d /tmp/train_moe_prof.XXXXXX); trap 'rm -rf "$TMP"' EXIT
/usr/bin/python3 data/shard_tool.py write "$TMP/train_0.bin" --random 400000 --vocab 4096 --seed 1 > /dev/null
export OMP_WAIT_POLICY=passive
for model in $MODELS; do
    i=0
    for bin in "$@"; do
        # shellcheck disable=SC2086
        "$bin" --model "$model" --threads "$THREADS" --steps "$STEPS" --train-data "$TMP/train_0.bin" --val-data '' \
            --sample-every 0 --ckpt-every 0 --peak-gflops 100 --tokenizer /nonexistent --out "$TMP/run_${model}_$i" \
            --profile $ARGS > /dev/null
        i=$((i + 1))
    done
    /usr/bin/python3 - "$model" "$SKIP" "$TMP" "$@" <<'PY'
import json, sys
model, skip, tmp, bins = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
cols, order = [], []
for i, b in enumerate(bins):
    steps = [r for r in map(json.loads, open("%s/run_%s_%d/log.jsonl" % (tmp, model, i)))
             if r.get("type") == "step" and r["step"] > skip]
    parts = {}
    for r in steps:
        for k, v in r["prof_ms"].items():
            parts[k] = parts.get(k, 0.0) + v / len(steps)
            if k not in order: order.append(k)
    total = sum(r["ms"] for r in steps) / len(steps)
    cols.append((b, parts, total))
print("\n%s (%d steps after the first %d, ms per step)\n" % (model, len(steps), skip))
print("| part | " + " | ".join("%s ms | %%" % b for b, _, _ in cols) + " |")
print("|---|" + "---:|---:|" * len(cols))
for k in order:
    print("| %s | " % k + " | ".join("%.2f | %.1f%%" % (p.get(k, 0.0), 100 * p.get(k, 0.0) / t) if k in p else "- | -"
                                     for _, p, t in cols) + " |")
print("| **step** | " + " | ".join("**%.1f** | 100%%" % t for _, _, t in cols) + " |")
PY
done
