#!/usr/bin/env bash
# dev/cuda/predict_results.sh [TAG]: dev/cuda/predict.sh for k2-nano and k2-small at the trainer's default batch
# (--batch-size 8, the preset's sequence length), written to dev/results/cuda_predict_<date>[_TAG].md (both
# tables, H100 and H200, and dev/cuda/predict_whatif.py's scenarios) and .json (per model: the totals, every
# counted row, the scenarios). dev/cuda/check.sh prints the newest .json's prediction beside what it measures.
# About 3 minutes on one core (k2-small's counts are most of it). It also counts the shapes dev/cuda/check.sh times
# (k2-nano B=32 AdamW and Muon, k2-small B=4) into the .json's "bench" list.
#
#   bash dev/cuda/predict_results.sh            # e.g. dev/results/cuda_predict_2026-12-03.md
#   bash dev/cuda/predict_results.sh after      # dev/results/cuda_predict_2026-12-03_after.md
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
TAG=${1:+_$1}
NAME=dev/results/cuda_predict_$(date -u +%Y-%m-%d)$TAG
W=$(mktemp -d /tmp/train_moe_predict.XXXXXX)
trap 'rm -rf "$W"' EXIT
MODELS="k2-nano k2-small"
bash dev/cuda/emu/run.sh predict_step > "$W/build.log" 2>&1 || { tail -n 20 "$W/build.log" >&2; exit 1; }
export PREDICT_NO_BUILD=1  # built once above
for m in $MODELS; do
    echo "predict_results: counting one $m step..." >&2
    PREDICT_OUT=$W/$m bash dev/cuda/predict.sh "$m" > "$W/$m.md" 2> "$W/$m.err" \
        || { tail -n 5 "$W/$m.err" >&2; echo "predict_results: $m failed" >&2; exit 1; }
    python3 dev/cuda/predict_whatif.py "$W/$m" --json > "$W/$m.whatif"
done
# the shapes dev/cuda/check.sh times (its bench rows), for its predicted-vs-measured lines: id model batch flags
BENCH=("nano32 k2-nano 32" "nano32muon k2-nano 32 --optim muon" "small4 k2-small 4")
for b in "${BENCH[@]}"; do
    set -- $b
    id=$1; shift
    echo "predict_results: counting $* for check.sh..." >&2
    PREDICT_OUT=$W/bench_$id bash dev/cuda/predict.sh "$@" > /dev/null 2> "$W/bench_$id.err" \
        || { tail -n 5 "$W/bench_$id.err" >&2; echo "predict_results: $* failed" >&2; exit 1; }
done
{
    echo "# Predicted CUDA step time, H100 SXM and H200 ($(date -u +%Y-%m-%d) UTC)"
    echo
    echo "Commit $(git rev-parse --short HEAD)$(git diff --quiet -- model dev/cuda 2>/dev/null || echo ' + local changes'). Regenerate with \`bash dev/cuda/predict_results.sh [TAG]\`"
    echo "(no GPU needed: the CPU emulator runs one warm-up and one counted step of the real kernels' launches under"
    echo "\`EMU_COUNT_ONLY=1\`; \`bash dev/cuda/predict.sh MODEL [BATCH] [--optim muon]\` prints one table)."
    echo
    echo "Roofline per launch (dev/cuda/emu/emu_cost.cpp): max(FLOPs / (unit peak x eff), compulsory bytes / bandwidth)"
    echo "+ 4 us per launch or library call, + 10 us per stream synchronisation, host copies at 25 GB/s. Peaks 989"
    echo "TFLOP/s dense bf16 (tensor), 67 TFLOP/s fp32 FMA, 3.35 TB/s (H100 SXM) / 4.8 TB/s (H200), 132 SMs. cuBLAS at"
    echo "70% of the unit's peak after 128x128-tile wave quantisation; our own kernels at 100% of their unit's peak and"
    echo "of the bandwidth (a stated best case), except our tensor-core (WMMA) kernels, where they exist, at 20% of the"
    echo "bf16 peak (shared-memory bound: dev/results/attention_tc_2026-12-03.md). MFU = the trainer's model FLOPs per"
    echo "token x tokens/s / 989 TFLOP/s."
    echo
    for m in $MODELS; do
        echo "## $m"
        echo
        grep -v '^emu:' "$W/$m.md" | sed 's/^# /### /'
        echo "What-if (dev/cuda/predict_whatif.py: counted rows re-timed under the changes' assumptions):"
        echo
        grep '^|' "$W/$m.whatif"
        echo
    done
} > "$NAME.md"
python3 - "$W" "$NAME.json" $MODELS <<'PY'
import csv, glob, json, sys
w, out, models = sys.argv[1], sys.argv[2], sys.argv[3:]
res = {}
for m in models:
    j = json.load(open("%s/%s.json" % (w, m)))
    j["rows"] = list(csv.DictReader(open("%s/%s.tsv" % (w, m)), delimiter="\t"))
    j["whatif"] = json.loads([l for l in open("%s/%s.whatif" % (w, m)) if l.startswith("[")][0])
    res[m] = j
# check.sh's shapes: totals and the predicted time per --profile part
res["bench"] = [json.load(open(p)) for p in sorted(glob.glob("%s/bench_*.json" % w))]
json.dump(res, open(out, "w"), indent=1)
PY
echo "predict_results: wrote $NAME.md and $NAME.json (add a hand-written reading of the tables: where the time goes)" >&2
