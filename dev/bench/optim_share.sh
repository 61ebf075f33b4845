#!/usr/bin/env bash
# dev/bench/optim_share.sh: the optimizer step's time as a share of forward+backward, Muon vs AdamW, per model
# and global batch, with the Newton-Schulz FLOPs counted. One invocation, same machine and threads for every row.
#
#   bash dev/bench/optim_share.sh                         # k2-nano and k2-l5, 1 and 8 micro-batches of 8 x 256
#   MODELS="k2-nano" ACCUMS="1 4 16" STEPS=12 bash dev/bench/optim_share.sh
#
# Newton-Schulz work does not grow with the batch (it is per matrix), while forward+backward does, so the share
# falls as the global batch grows; K2 itself trains with 67M-token batches.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODELS=${MODELS:-k2-nano k2-l5}
ACCUMS=${ACCUMS:-1 8}
STEPS=${STEPS:-8}
THREADS=${THREADS:-2}
PY=/usr/bin/python3
[ -x ./train_moe ] || make train_moe
[ -f data/default/train_000.bin ] || { echo "optim_share: run 'make data' first" >&2; exit 1; }
TMP=$(mktemp -d /tmp/train_moe_optim.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

echo "| model | optim | tokens/step | step ms | optimizer ms | fwd+bwd ms | optimizer / fwd+bwd | NS GFLOP/step | NS GFLOP/s | NS FLOPs / model FLOPs |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for model in $MODELS; do
    for acc in $ACCUMS; do
        for optim in adamw muon; do
            out=$TMP/$model-$optim-$acc
            ./train_moe --model "$model" --optim "$optim" --steps "$STEPS" --total-batch $((acc * 8 * 256)) \
                --threads "$THREADS" --val-every 0 --sample-every 0 --ckpt-every 0 --out "$out" > "$out.log" 2>&1 \
                || { echo "optim_share: $model $optim failed: $(tail -n 2 "$out.log")" >&2; exit 1; }
            $PY - "$out/log.jsonl" "$model" "$optim" "$((acc * 8 * 256))" <<'PYEOF'
import json, sys, statistics
path, model, optim, tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
recs = [json.loads(l) for l in open(path)]
cfg = next(r for r in recs if r["type"] == "config")
steps = [r for r in recs if r["type"] == "step"][2:]   # the first steps warm caches and allocators
ms = statistics.median(r["ms"] for r in steps)
opt = statistics.median(r["opt_ms"] for r in steps)
fb = ms - opt
ns = statistics.median(r.get("ns_gflop", 0.0) for r in steps)
model_gflop = cfg["flops_per_token"] * tokens / 1e9
print("| %s | %s | %d | %.0f | %.1f | %.0f | %.1f%% | %.2f | %s | %s |" % (
    model, optim, tokens, ms, opt, fb, 100 * opt / fb, ns,
    "%.0f" % (ns / (opt / 1e3)) if ns else "-", "%.0f%%" % (100 * ns / model_gflop) if ns else "-"))
PYEOF
        done
    done
done
echo
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $THREADS threads; steps $STEPS (medians of steps 3..)"
