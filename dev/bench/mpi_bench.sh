#!/usr/bin/env bash
# dev/bench/mpi_bench.sh: one process x 2 threads vs 2 processes x 1 thread (data parallel, and expert parallel
# --ep 2) on the same global batch, in one invocation; and the bytes each collective moved per step against the
# communication model (README, "Multi-process launch").
#
#   bash dev/bench/mpi_bench.sh                 # k2-nano, 12 steps, global batch 16 x 256 tokens
#   MODEL=k2-l3 STEPS=20 bash dev/bench/mpi_bench.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${MODEL:-k2-nano}
STEPS=${STEPS:-12}
GLOBAL_B=${GLOBAL_B:-16}
OPTIM=${OPTIM:-adamw}
PY=/usr/bin/python3
[ -x ./train_moe ] || make train_moe
command -v mpirun > /dev/null || { echo "mpi_bench: mpirun not found (apt-get install openmpi-bin libopenmpi-dev)" >&2; exit 1; }
[ -f data/default/train_000.bin ] || { echo "mpi_bench: run 'make data' first" >&2; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
TMP=$(mktemp -d /tmp/train_moe_mpibench.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
COMMON=(--model "$MODEL" --optim "$OPTIM" --steps "$STEPS" --val-every 0 --sample-every 0 --ckpt-every 0)

./train_moe "${COMMON[@]}" --batch-size "$GLOBAL_B" --threads 2 --out "$TMP/r1" > "$TMP/r1.log" 2>&1
mpirun --oversubscribe --mca btl self,vader -np 2 ./train_moe "${COMMON[@]}" --batch-size $((GLOBAL_B / 2)) --threads 1 \
    --out "$TMP/r2" > "$TMP/r2.log" 2>&1
mpirun --oversubscribe --mca btl self,vader -np 2 ./train_moe "${COMMON[@]}" --batch-size $((GLOBAL_B / 2)) --threads 1 \
    --ep 2 --out "$TMP/r2e" > "$TMP/r2e.log" 2>&1

$PY - "$TMP" <<'PYEOF'
import json, statistics, sys
tmp = sys.argv[1]
def load(name):
    recs = [json.loads(l) for l in open("%s/%s/log.jsonl" % (tmp, name))]
    cfg = next(r for r in recs if r["type"] == "config")
    steps = [r for r in recs if r["type"] == "step"][2:]
    med = lambda k: statistics.median(r.get(k, 0.0) for r in steps)
    return cfg, {k: med(k) for k in ("tok_s", "ms", "opt_ms", "allreduce_mb", "allgather_mb", "alltoall_mb")}

def predict(cfg, world, ep):
    """bytes sent by one rank per step (fp32), from the communication model"""
    P = cfg["params_global"]; Pe = cfg["expert_params_global"]; Pr = P - Pe
    Pe_local = Pe / ep; dp = world // ep
    N = cfg["batch"] * cfg["seq_len"]; G = cfg["grad_accum"]
    Lm = cfg["n_layers"] - cfg["n_dense_layers"]; K = cfg["top_k"]; d = cfg["d_model"]
    allreduce = 2 * (world - 1) / world * Pr * 4 + 2 * (dp - 1) / dp * Pe_local * 4
    allreduce += (world - 1) / world * 2 * 4 * (Lm * cfg["n_experts"] + cfg["n_layers"] * cfg["n_heads"] + 6)  # stats
    allgather = (world - 1) / world * Pr * 4 + (dp - 1) / dp * Pe_local * 4
    # tokens to their experts' owners and back, forward and backward; uniform routing sends (ep-1)/ep of them away
    alltoall = 4 * G * Lm * N * K * (ep - 1) / ep * d * 4
    return allreduce / 1e6, allgather / 1e6, alltoall / 1e6

c1, r1 = load("r1")
print("| run | tokens/s | ms/step | vs 1 x 2 threads | all-reduce MB/step (model) | all-gather MB/step (model) | all-to-all MB/step (uniform-routing model) |")
print("|---|---:|---:|---:|---|---|---|")
print("| 1 rank x 2 threads | %.0f | %.0f | 1.00x | - | - | - |" % (r1["tok_s"], r1["ms"]))
for name, ep, label in (("r2", 1, "2 ranks x 1 thread"), ("r2e", 2, "2 ranks x 1 thread, --ep 2")):
    c, r = load(name)
    pa, pg, pt = predict(c, 2, ep)
    print("| %s | %.0f | %.0f | %.2fx | %.2f (%.2f) | %.2f (%.2f) | %.2f (%.2f) |" % (
        label, r["tok_s"], r["ms"], r["tok_s"] / r1["tok_s"], r["allreduce_mb"], pa, r["allgather_mb"], pg,
        r["alltoall_mb"], pt))
print()
print("model %s, global batch %d x %d tokens, optimizer %s; medians over steps 3..%d" % (
    c1["model"], c1["batch"], c1["seq_len"], c1["optim"], c1["steps"]))
PYEOF
