#!/usr/bin/env bash
# dev/cuda/trainer_check.sh TRAINER [--mpi]: the whole trainer on the CUDA backend against the CPU backend, end to
# end through the binary (flags, data, validation, checkpoints): the same 4 steps of k2-l1 under AdamW and under
# Muon on each device, and a CUDA run cut back to its step-2 checkpoint and resumed. With --mpi (TRAINER built with
# MPI, mpirun present): the same global batch on 1 rank and on 2 ranks (data parallel, and --ep 2) with --device
# cuda, through comm/comm_cuda.c (NCCL, or host staging when the ranks share a GPU or NCCL is absent). Run by dev/cuda/emu/run.sh with the
# emulated trainer (no GPU needed) and by dev/cuda/check.sh with ./train_moe on a GPU. Prints PASS/FAIL lines and
# "N passed, N failed"; exits non-zero on a failure.
#
# Tolerances: step and validation losses within 2e-3 relative (also between 1 and 2 ranks) (bf16 activations on the GPU side: the model test,
# tests/test_cuda_model.c, measures ~1e-4 at this size over a few steps); resume: losses, every log record and the
# final model file identical to the straight run (the backend is deterministic and checkpoints hold fp32 masters).
set -u
if [ $# -lt 1 ] || [ ! -x "$1" ] || { [ $# -ge 2 ] && [ "$2" != --mpi ]; }; then
    echo "usage: dev/cuda/trainer_check.sh TRAINER [--mpi]  (TRAINER: an executable train_moe; got: $*)" >&2; exit 2
fi
TRAINER=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
WANT_MPI=${2:-}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
W=$(mktemp -d /tmp/train_moe_trainer_check.XXXXXX)
trap 'rm -rf "$W"' EXIT
pass=0; fail=0
ok() { echo "PASS $*"; pass=$((pass + 1)); }
bad() { echo "FAIL $*"; fail=$((fail + 1)); }
python3 "$ROOT/data/shard_tool.py" write "$W/data.bin" --random 200000 --vocab 4096 --seed 7 > /dev/null
# run OUT DEVICE FLAGS...
run() {
    local out=$1 dev=$2; shift 2
    timeout 900 "$TRAINER" --device "$dev" --model k2-l1 --train-data "$W/data.bin" --val-data "$W/data.bin" \
        --val-every 2 --val-batches 1 --tokenizer "$W/none.bin" --sample-every 0 --ckpt-every 2 --out "$out" \
        --seed 1 --steps 4 --batch-size 2 --seq-len 64 --lr 3e-3 --warmup 1 "$@" > "$out.log" 2>&1
}
# records of one type as "step value" lines
field() { python3 -c '
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    if r.get("type") == sys.argv[2]: print(r["step"], repr(r[sys.argv[3]]))' "$@"; }
close() { python3 -c '
import sys
a = [l.split() for l in open(sys.argv[1])]; b = [l.split() for l in open(sys.argv[2])]
ok = len(a) == len(b) > 0 and all(x[0] == y[0] and abs(float(x[1]) - float(y[1])) <= 2e-3 * abs(float(y[1])) for x, y in zip(a, b))
worst = max((abs(float(x[1]) - float(y[1])) / abs(float(y[1])) for x, y in zip(a, b)), default=float("nan"))
print("%d values, worst rel diff %.1e" % (len(a), worst)); sys.exit(0 if ok else 1)' "$1" "$2"; }

for opt in adamw muon; do
    run "$W/cpu_$opt" cpu --optim $opt; rc_c=$?
    run "$W/gpu_$opt" cuda --optim $opt; rc_g=$?
    if [ $rc_c -ne 0 ] || [ $rc_g -ne 0 ]; then
        bad "trainer $opt: exit cpu $rc_c, cuda $rc_g: $(tail -n 1 "$W/gpu_$opt.log")"; continue
    fi
    grep -q "^device cuda" "$W/gpu_$opt.log" || bad "trainer $opt: the cuda run does not print \"device cuda\""
    for kind in "step loss" "val val_loss"; do
        set -- $kind
        field "$W/cpu_$opt/log.jsonl" $1 $2 > "$W/a"; field "$W/gpu_$opt/log.jsonl" $1 $2 > "$W/b"
        if msg=$(close "$W/b" "$W/a"); then ok "trainer $opt k2-l1 4 steps, cuda vs cpu $2: $msg (tol 2e-3)"
        else bad "trainer $opt, cuda vs cpu $2: $msg; cuda [$(cut -d' ' -f2 "$W/b" | tr '\n' ' ')] cpu [$(cut -d' ' -f2 "$W/a" | tr '\n' ' ')]"; fi
    done
done

# resume on the device: the straight Muon run, cut back to step 2, continued
ref=$W/gpu_muon
if [ -f "$ref/model_00000004.bin" ]; then
    cp -r "$ref" "$W/resumed"
    rm -f "$W/resumed/DONE_00000004" "$W/resumed/model_00000004.bin" "$W/resumed/state_00000004_r0.bin"
    awk '{print} index($0, "\"type\":\"step\",\"step\":2,") {exit}' "$ref/log.jsonl" > "$W/resumed/log.jsonl"
    run "$W/resumed" cuda --optim muon --resume; rc=$?
    strip() { awk 'seen && !/"type":"(config|resume)"/ {print} index($0, "\"type\":\"step\",\"step\":2,") {seen=1}' "$1" \
              | sed -E 's/"ms":[^,]*,"tok_s":[^,]*,"mfu":[^,]*,//; s/"opt_ms":[^,]*,//'; }
    if [ $rc -eq 0 ] && [ "$(strip "$ref/log.jsonl")" = "$(strip "$W/resumed/log.jsonl")" ] && [ -n "$(strip "$ref/log.jsonl")" ]; then
        ok "trainer cuda resume from step 2: every record of steps 3-4 identical to the straight run"
    else
        bad "trainer cuda resume from step 2: exit $rc; records differ: $(diff <(strip "$ref/log.jsonl") <(strip "$W/resumed/log.jsonl") | head -3 | cut -c1-160 | tr '\n' ' ')"
    fi
    if cmp -s "$ref/model_00000004.bin" "$W/resumed/model_00000004.bin"; then ok "trainer cuda resume: model_00000004.bin byte-identical"
    else bad "trainer cuda resume: model_00000004.bin differs from the straight run's"; fi
else
    bad "trainer cuda resume: the straight run left no step-4 checkpoint"
fi
# several ranks on the device: the same global batch (2 micro-batches of 2 x 64) on 1 rank, 2 ranks, 2 ranks --ep 2
if [ "$WANT_MPI" = --mpi ]; then
    if ! command -v mpirun > /dev/null; then
        bad "trainer --mpi: mpirun is not installed"
    else
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=passive
        MPI=(--optim muon --total-batch 256 --threads 1 --ckpt-every 0)
        # --val-batches counts each rank's micro-batches: 1 rank validates on 2 to cover the same windows as 2 x 1
        run "$W/r1" cuda "${MPI[@]}" --val-batches 2; rc1=$?
        for v in "dp:" "ep2:--ep 2"; do
            name=${v%%:*}; extra=${v#*:}
            # run() with mpirun in front: the same flags, 2 ranks
            timeout 900 mpirun --oversubscribe --mca btl self,vader -np 2 "$TRAINER" --device cuda --model k2-l1 \
                --train-data "$W/data.bin" --val-data "$W/data.bin" --val-every 2 --val-batches 1 \
                --tokenizer "$W/none.bin" --sample-every 0 --out "$W/r2_$name" --seed 1 --steps 4 --batch-size 2 \
                --seq-len 64 --lr 3e-3 --warmup 1 "${MPI[@]}" $extra > "$W/r2_$name.log" 2>&1
            rc2=$?
            if [ $rc1 -ne 0 ] || [ $rc2 -ne 0 ]; then
                bad "trainer cuda 2 ranks ($name): exit 1 rank $rc1, 2 ranks $rc2: $(tail -n 1 "$W/r2_$name.log")"; continue
            fi
            path="comm path not printed"
            grep -q "^comm: NCCL" "$W/r2_$name.log" && path="over NCCL"
            grep -q "^comm: GPU buffers are staged" "$W/r2_$name.log" && path="staged through host memory"
            for kind in "step loss" "val val_loss"; do
                set -- $kind
                field "$W/r1/log.jsonl" $1 $2 > "$W/a"; field "$W/r2_$name/log.jsonl" $1 $2 > "$W/b"
                if msg=$(close "$W/b" "$W/a"); then ok "trainer cuda Muon, 1 rank vs 2 ranks ($name) $2: $msg (tol 2e-3; $path)"
                else bad "trainer cuda 1 vs 2 ranks ($name) $2: $msg"; fi
            done
        done
    fi
fi
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
