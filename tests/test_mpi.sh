#!/usr/bin/env bash
# tests/test_mpi.sh: training over several processes (mpirun, oversubscribed on a small machine) equals one
# process on the same global batch; the optimizer state is split 1/N; a 2-rank run resumes bit-identically; a
# failing rank ends the whole job in bounded time; bad --ep values and mismatched ranks are refused.
#
#   bash tests/test_mpi.sh [WORKDIR]
#
# Each check prints one PASS/FAIL/SKIP line; the last line is "N passed, N failed, N skipped".
. "$(dirname "$0")/lib.sh" mpi "$@"
BIN=./train_moe

if ! command -v mpirun > /dev/null; then
    skip "every multi-process check: mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev)"
    finish
fi
if ! "$BIN" --help > /dev/null 2>&1 || ! grep -q USE_MPI build/.flags 2>/dev/null; then
    skip "every multi-process check: ./train_moe was built without MPI (mpicc missing at build time)"
    finish
fi
# OpenMPI refuses root without these; threads sleep while they wait (ranks share 2 cores)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=passive
MPIRUN=(mpirun --oversubscribe --mca btl self,vader)

D=$W/data
mkdir -p "$D"
"$PY" data/shard_tool.py write "$D/train_0.bin" --random 40000 --vocab 4096 --seed 11 > /dev/null
"$PY" data/shard_tool.py write "$D/val_0.bin" --random 6000 --vocab 4096 --seed 12 > /dev/null
"$PY" data/shard_tool.py write "$D/bad_magic.bin" --random 4000 --vocab 4096 --bad-magic > /dev/null
# the same global batch of 4 sequences x 64 tokens per step, split over 1, 2 or 4 ranks
BASE=(--model k2-l1 --seq-len 64 --threads 1 --peak-gflops 100 --lr 1e-2 --tokenizer /nonexistent
      --train-data "$D/train_*.bin" --val-data "$D/val_*.bin" --val-every 2 --val-batches 1 --sample-every 0)

# run NAME NP ARGS...: trains in $W/NAME (hang guard 120 s); exit code in RC
run() {
    local name=$1 np=$2; shift 2
    if [ "$np" -eq 1 ]; then
        timeout 120 "$BIN" "$@" --out "$W/$name" > "$W/$name.out" 2> "$W/$name.err"
    else
        timeout 120 "${MPIRUN[@]}" -np "$np" "$BIN" "$@" --out "$W/$name" > "$W/$name.out" 2> "$W/$name.err"
    fi
    RC=$?
}
oneline() { tr '\n' ' ' < "$1" | cut -c1-300; }
# same NAME REF RUN WEIGHT_RL2 WEIGHT_ATOL: losses and final weights of RUN equal REF's
# Ranks sum gradients in another order than one process, so a gradient at float32 rounding level (an expert that
# saw one token) differs in its last bits, and both optimizers turn such a gradient into an O(lr) move (AdamW
# divides by sqrt(v) + eps; Newton-Schulz normalises). The losses must agree to 1e-5 relative; the weights as a
# whole closely (relative L2), and element-wise within a fraction of one step's lr (lr = 1e-2 here). AdamW runs
# use --adam-eps 1e-6, which damps only those rounding-level gradients, so its bound can be tight.
same() {
    local msg
    msg=$("$PY" tests/compare_runs.py "$W/$2" "$W/$3" 5 --weight-rl2 "$4" --weight-atol "$5" 2>&1)
    if [ $? -eq 0 ]; then pass "$1: $msg"; else fail "$1: $msg"; fi
}

# ---- 1. equal to one process: data parallel, expert parallel, AdamW and Muon, gradient accumulation
for optim in adamw muon; do
    if [ $optim = adamw ]; then OPT=(--optim adamw --adam-eps 1e-6); TOL=(1e-5 1e-4); else OPT=(--optim muon); TOL=(3e-4 2.5e-3); fi
    run "ref_$optim" 1 "${BASE[@]}" "${OPT[@]}" --batch-size 4 --steps 5
    [ $RC -eq 0 ] || { fail "1 process ($optim): exit $RC: $(oneline "$W/ref_$optim.err")"; continue; }
    for layout in "2 2 1" "4 1 1" "2 2 2" "4 1 2" "4 1 4"; do
        set -- $layout
        name="np$1_ep$3_$optim"
        run "$name" "$1" "${BASE[@]}" "${OPT[@]}" --batch-size "$2" --ep "$3" --steps 5
        if [ $RC -ne 0 ]; then fail "$1 ranks, --ep $3 ($optim): exit $RC: $(oneline "$W/$name.err")"; continue; fi
        same "$1 ranks x batch $2, --ep $3, $optim == 1 process x batch 4" "ref_$optim" "$name" "${TOL[@]}"
    done
done
run ref_accum 1 "${BASE[@]}" --adam-eps 1e-6 --batch-size 2 --total-batch 256 --steps 5
run np2_accum 2 "${BASE[@]}" --adam-eps 1e-6 --batch-size 1 --total-batch 256 --ep 2 --steps 5
if [ $RC -eq 0 ]; then same "2 ranks x 2 micro-batches of 1, --ep 2 == 1 process x 2 micro-batches of 2" ref_accum np2_accum 1e-5 1e-4
else fail "2 ranks with gradient accumulation: exit $RC: $(oneline "$W/np2_accum.err")"; fi
# the validation loss is the global mean too
va=$(grep -o '"val_loss":[^}]*' "$W/ref_adamw/log.jsonl" | cut -d: -f2 | tr '\n' ' ')
vb=$(grep -o '"val_loss":[^}]*' "$W/np4_ep4_adamw/log.jsonl" | cut -d: -f2 | tr '\n' ' ')
if [ -n "$va" ] && "$PY" -c "import sys; a, b = [list(map(float, x.split())) for x in sys.argv[1:3]]; sys.exit(not (len(a) == len(b) > 0 and all(abs(x - y) <= 1e-6 * abs(x) for x, y in zip(a, b))))" "$va" "$vb"; then
    pass "validation loss on 4 ranks (--ep 4) equals 1 process within 1e-6 relative: [$va] vs [$vb]"
else fail "validation loss differs: 1 process [$va], 4 ranks [$vb]"; fi

# ---- 2. ZeRO-1: each rank keeps about 1/N of the optimizer state
for name in np2_ep1_adamw np4_ep2_adamw np4_ep4_muon; do
    line=$(grep "optimizer state per rank" "$W/$name.out")
    lo=$(echo "$line" | sed -E 's/.*: ([0-9.]+)% to ([0-9.]+)% of the whole \(1\/([0-9]+).*/\1/')
    hi=$(echo "$line" | sed -E 's/.*: ([0-9.]+)% to ([0-9.]+)% of the whole \(1\/([0-9]+).*/\2/')
    n=$(echo "$line" | sed -E 's/.*\(1\/([0-9]+).*/\1/')
    if [ -n "$line" ] && awk -v lo="$lo" -v hi="$hi" -v n="$n" 'BEGIN { t = 100 / n; exit !(lo >= 0.9 * t && hi <= 1.1 * t) }'; then
        pass "optimizer state split ($name): $line"
    else
        fail "optimizer state split ($name): '$line' (want every rank within 10% of 1/N)"
    fi
done

# ---- 3. a 2-rank run (--ep 2, Muon) resumes bit-identically
R=(--optim muon --batch-size 2 --ep 2 --steps 10 --ckpt-every 5 --ckpt-keep 0)
run resume_ref 2 "${BASE[@]}" "${R[@]}"
if [ $RC -ne 0 ]; then
    fail "2-rank resume: straight run exit $RC: $(oneline "$W/resume_ref.err")"
else
    cp -r "$W/resume_ref" "$W/resume_b"
    rm -f "$W/resume_b/DONE_00000010" "$W/resume_b/model_00000010.bin" "$W/resume_b"/state_00000010_r*.bin
    awk '{print} /"type":"step","step":5,/ {exit}' "$W/resume_ref/log.jsonl" > "$W/resume_b/log.jsonl"
    run resume_b 2 "${BASE[@]}" "${R[@]}" --resume
    steps_ref=$(grep '"type":"step"' "$W/resume_ref/log.jsonl" | sed -E 's/.*"step":([0-9]+),"loss":([^,]+),.*/\1 \2/' | awk '$1 > 5')
    steps_b=$(grep '"type":"step"' "$W/resume_b/log.jsonl" | sed -E 's/.*"step":([0-9]+),"loss":([^,]+),.*/\1 \2/' | awk '$1 > 5')
    if [ $RC -eq 0 ] && grep -q "resumed from step 5" "$W/resume_b.out" && [ -n "$steps_ref" ] && [ "$steps_ref" = "$steps_b" ] \
        && cmp -s "$W/resume_ref/model_00000010.bin" "$W/resume_b/model_00000010.bin" \
        && cmp -s "$W/resume_ref/state_00000010_r0.bin" "$W/resume_b/state_00000010_r0.bin" \
        && cmp -s "$W/resume_ref/state_00000010_r1.bin" "$W/resume_b/state_00000010_r1.bin"; then
        pass "2-rank resume from step 5: losses of steps 6..10, model and both ranks' state files bit-identical"
    else
        fail "2-rank resume: exit $RC; losses [$(echo $steps_ref)] vs [$(echo $steps_b)]; $(oneline "$W/resume_b.err")"
    fi
fi

# ---- 4. failures end every rank, with the rank and the reason, in bounded time
# expect_fail DESC NEEDLE SECONDS CMD...: non-zero exit within SECONDS, stderr has "error:" and NEEDLE
expect_fail() {
    local desc=$1 needle=$2 limit=$3; shift 3
    local t0=$(date +%s)
    timeout 60 "$@" > "$W/fail.out" 2> "$W/fail.err"
    local rc=$? dt=$(( $(date +%s) - t0 ))
    local msg
    msg=$(grep -m1 "error:" "$W/fail.err")
    if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ "$dt" -le "$limit" ] && [[ "$msg" == *"$needle"* ]]; then
        pass "$desc: exit $rc after ${dt}s: $msg"
    else
        fail "$desc: exit $rc after ${dt}s (limit ${limit}s), stderr: $(oneline "$W/fail.err")"
    fi
}
F=("${BASE[@]}" --batch-size 2 --steps 50)
# rank 1 is given a bad shard (a misconfigured node): the start-up settings check refuses it on every rank
expect_fail "bad shard on rank 1 of 2 ends both ranks" "ranks disagree on --train-data" 30 \
    "${MPIRUN[@]}" -np 1 "$BIN" "${F[@]}" --out "$W/f1" : -np 1 "$BIN" "${F[@]}" --train-data "$D/bad_magic.bin" --out "$W/f1"
expect_fail "ranks started with different --lr are refused" "ranks disagree on --lr (rank 0: 0.00999999978, rank 1: 0.5)" 30 \
    "${MPIRUN[@]}" -np 1 "$BIN" "${F[@]}" --out "$W/f2" : -np 1 "$BIN" "${F[@]}" --lr 0.5 --out "$W/f2"
expect_fail "non-finite steps stop all 4 ranks" "non-finite" 60 \
    "${MPIRUN[@]}" -np 4 "$BIN" "${BASE[@]}" --batch-size 1 --ep 2 --steps 20 --lr 1e30 --grad-clip 0 --warmup 0 --max-bad-steps 2 --out "$W/f3"
expect_fail "--ep 3 on 2 ranks" "--ep = 3 must divide the number of ranks (2)" 30 "${MPIRUN[@]}" -np 2 "$BIN" "${F[@]}" --ep 3 --out "$W/f4"
expect_fail "--ep 5 on 5 ranks (384 experts)" "--ep = 5 must divide the number of experts (384)" 30 "${MPIRUN[@]}" -np 5 "$BIN" "${F[@]}" --batch-size 1 --ep 5 --out "$W/f5"
expect_fail "--ep 0" "--ep = 0 must be in [1, 65536]" 30 "$BIN" "${F[@]}" --ep 0 --out "$W/f6"
expect_fail "--ep 2 in a single process" "--ep = 2 must divide the number of ranks (1)" 30 "$BIN" "${F[@]}" --ep 2 --out "$W/f7"
expect_fail "resuming a 2-rank run on 4 ranks is refused" "world size" 30 \
    "${MPIRUN[@]}" -np 4 "$BIN" "${BASE[@]}" "${R[@]}" --batch-size 1 --resume --out "$W/resume_ref"
expect_fail "resuming an --ep 2 run with --ep 1 is refused" "--ep" 30 \
    "${MPIRUN[@]}" -np 2 "$BIN" "${BASE[@]}" --optim muon --batch-size 2 --ep 1 --steps 10 --resume --out "$W/resume_ref"

finish
