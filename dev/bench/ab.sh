#!/usr/bin/env bash
# dev/bench/ab.sh: step time of two train_moe binaries on the same run, interleaved in one invocation (A B A B ...),
# so a refactor can show it did not slow the step down. Prints each round's median ms/step and the ratio B/A.
#
#   bash dev/bench/ab.sh OLD_BINARY NEW_BINARY          (defaults below; ROUNDS=3 STEPS=30 SKIP=5 THREADS=2)
#   MODEL=k2-nano ARGS="--optim muon" bash dev/bench/ab.sh /tmp/train_moe_before ./train_moe
#
# Both get the same flags and a synthetic shard (vocab 4096, seed 1). Medians over the steps after the first SKIP.
# Timing needs a quiet machine: run nothing else meanwhile.
set -euo pipefail
cd "$(dirname "$0")/../.."
A=${1:?usage: dev/bench/ab.sh OLD_BINARY NEW_BINARY}; B=${2:?usage: dev/bench/ab.sh OLD_BINARY NEW_BINARY}
ROUNDS=${ROUNDS:-3}; STEPS=${STEPS:-30}; SKIP=${SKIP:-5}; THREADS=${THREADS:-2}; MODEL=${MODEL:-k2-nano}
ARGS=${ARGS:-}
TMP=$(mktemp -d /tmp/train_moe_ab.XXXXXX); trap 'rm -rf "$TMP"' EXIT
/usr/bin/python3 data/shard_tool.py write "$TMP/train_0.bin" --random 400000 --vocab 4096 --seed 1 > /dev/null
median_ms() {  # median "ms" of the step records after SKIP
    /usr/bin/python3 - "$1" "$SKIP" <<'PY'
import json, sys
ms = [r["ms"] for r in map(json.loads, open(sys.argv[1])) if r.get("type") == "step" and r["step"] > int(sys.argv[2])]
ms.sort(); print("%.2f" % ms[len(ms) // 2])
PY
}
export OMP_WAIT_POLICY=passive
declare -a MA MB
for r in $(seq 1 "$ROUNDS"); do
    for which in A B; do
        bin=$A; [ $which = B ] && bin=$B
        rm -rf "$TMP/run"
        "$bin" --model "$MODEL" --threads "$THREADS" --steps "$STEPS" --train-data "$TMP/train_0.bin" --val-data '' \
            --sample-every 0 --ckpt-every 0 --peak-gflops 100 --tokenizer /nonexistent --out "$TMP/run" $ARGS > /dev/null
        m=$(median_ms "$TMP/run/log.jsonl")
        if [ $which = A ]; then MA+=("$m"); else MB+=("$m"); fi
        echo "round $r $which: $m ms/step"
    done
done
/usr/bin/python3 - "${MA[*]}" "${MB[*]}" <<'PY'
import statistics, sys
a = [float(x) for x in sys.argv[1].split()]; b = [float(x) for x in sys.argv[2].split()]
ma, mb = statistics.median(a), statistics.median(b)
print("A (old): %.2f ms/step  B (new): %.2f ms/step  ratio B/A %.3f  (spread A %.2f-%.2f, B %.2f-%.2f)"
      % (ma, mb, mb / ma, min(a), max(a), min(b), max(b)))
PY
