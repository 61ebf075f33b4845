#!/usr/bin/env bash
# tests/test_ranks.sh: ranks started with different settings are refused at start, whatever the setting.
#
#   bash tests/test_ranks.sh [WORKDIR]
#
# Table-driven: for every flag that is not per-rank (train/flags.c marks --threads and --peak-gflops as such) one
# 2-rank MPMD run (`mpirun -np 1 train_moe ARGS : -np 1 train_moe ARGS --FLAG OTHER`) must end, within 30 s and
# without a signal, with "ranks disagree on --FLAG (rank 0: X, rank 1: Y)". The same for data and tokenizer files
# that differ in content behind the same path (each rank in its own working directory, as on two hosts), and a
# flag that may differ (--threads) must not stop the run.
. "$(dirname "$0")/lib.sh" ranks "$@"

if ! command -v mpirun > /dev/null; then
    skip "every check: mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev)"
    finish
fi
if ! grep -q USE_MPI build/.flags 2>/dev/null; then
    skip "every check: ./train_moe was built without MPI (mpicc missing at build time)"
    finish
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=passive
MPIRUN=(mpirun --oversubscribe --mca btl self,vader)

# two "hosts": each rank runs in its own folder with data/ and tok.bin at the same relative paths
for h in a b; do
    mkdir -p "$W/$h/data"
    "$PY" data/shard_tool.py write "$W/$h/data/train_0.bin" --random 6000 --vocab 4096 --seed 1 > /dev/null
    "$PY" data/shard_tool.py write "$W/$h/data/val_0.bin" --random 3000 --vocab 4096 --seed 2 > /dev/null
done
"$PY" data/shard_tool.py write "$W/b/data/train_other.bin" --random 6000 --vocab 4096 --seed 1 > /dev/null
mkdir -p "$W/c/data"
"$PY" data/shard_tool.py write "$W/c/data/train_0.bin" --random 6000 --vocab 4096 --seed 9 > /dev/null
cp "$W/a/data/val_0.bin" "$W/c/data/val_0.bin"

BASE=(--model k2-l1 --batch-size 2 --seq-len 32 --peak-gflops 100 --steps 3 --val-every 0 --sample-every 0
      --tokenizer tok.bin --train-data 'data/train_*.bin' --val-data 'data/val_*.bin')

# disagree FLAG VALUE [WDIR_B]: rank 1 gets --FLAG VALUE (a boolean flag when VALUE is empty) and runs in WDIR_B
disagree() {
    local flag=$1 value=$2 wdir_b=${3:-$W/a} extra=() t0 rc dt msg
    if [ -n "$flag" ]; then extra=("$flag"); [ -n "$value" ] && extra+=("$value"); fi
    local name=${flag:-files in $wdir_b}
    rm -rf "$W/out"
    t0=$(date +%s)
    timeout 60 "${MPIRUN[@]}" -np 1 -wdir "$W/a" "$BIN" "${BASE[@]}" --threads 1 --out "$W/out" \
        : -np 1 -wdir "$wdir_b" "$BIN" "${BASE[@]}" --threads 1 --out "$W/out" "${extra[@]}" < /dev/null > "$W/run.out" 2> "$W/run.err"
    rc=$?; dt=$(( $(date +%s) - t0 ))
    msg=$(grep -m1 -o "ranks disagree on .*" "$W/run.err")
    local want="ranks disagree on ${flag:-$4} ("
    if [ $rc -ne 0 ] && [ $rc -lt 124 ] && [ "$dt" -le 30 ] && [[ "$msg" == "$want"*"rank 1: "* ]]; then
        pass "$name: exit $rc after ${dt}s: $msg"
    else
        fail "$name: exit $rc after ${dt}s (want non-zero, no signal, <= 30 s, '$want...rank 1: ...'), stderr: $(tr '\n' ' ' < "$W/run.err" | cut -c1-300)"
    fi
}

# every flag that must be the same on all ranks, with a valid other value
while read -r flag value; do
    disagree "$flag" "$value"
done <<'TABLE'
--model k2-l2
--device cpu
--attention own
--train-data data/train_?.bin
--val-data data/val_?.bin
--tokenizer other.bin
--out /tmp/train_moe_other_out
--batch-size 1
--seq-len 16
--vocab-size 8192
--total-batch 128
--steps 4
--lr 0.001
--min-lr-frac 0.2
--warmup 1
--schedule wsd
--decay-frac 0.3
--optim muon
--weight-decay 0.05
--beta1 0.8
--beta2 0.9
--adam-eps 1e-6
--grad-clip 0.5
--muon-momentum 0.9
--ns polar
--muon-ns fp32
--muon-router 0
--adamw-lr-scale 0.5
--qk-clip-tau 50
--balance-alpha 0.001
--bias-gamma 0.01
--seed 7
--val-every 2
--val-batches 2
--sample-every 2
--sample-tokens 8
--ckpt-every 1
--ckpt-keep 1
--resume
--overwrite
--ep 2
--max-bad-steps 3
--spike-z 3
--spike-window 16
--skip-spikes
--replay 0:2
--profile
--inject-nan 2
--inject-spike 2
--init-from /tmp/train_moe_hf_dir
--export-hf /tmp/train_moe_hf_out
--step 3
--dtype bf16
--max-shard-size 100000
--eval
--dump-logits /tmp/train_moe_logits.bin
--generate hello
--temperature 0.5
--top-k 5
--max-new-tokens 8
--list-models
--print-layout
--help
TABLE

# every flag of --help is in the table above or is per-rank (a new flag must be added to one or the other)
listed=$(grep -o -- '^--[a-z-]*' "$0" | sort -u)
missing=""
for f in $("$BIN" --help | grep -o -- '^  --[a-z-]*' | tr -d ' '); do
    case "$f" in --threads|--peak-gflops) continue ;; esac
    grep -qx -- "$f" <<< "$listed" || missing+=" $f"
done
if [ -z "$missing" ]; then pass "every flag of --help is compared here or per-rank"
else fail "flags of --help missing from this test's table:$missing"; fi

# same paths, other contents (two hosts whose data differ)
disagree "" "" "$W/b" "--train-data files"   # an extra shard on host b
disagree "" "" "$W/c" "--train-data files"   # same file name, other tokens
cp "$W/a/data/train_0.bin" "$W/c/data/train_0.bin"; printf 'x' >> "$W/c/data/val_0.bin"
disagree "" "" "$W/c" "--val-data files"
cp "$W/a/data/val_0.bin" "$W/c/data/val_0.bin"
# two valid tokenizers that differ only in their separator id
"$PY" data/shard_tool.py tokenizer "$W/a/tok.bin" --vocab 4096 --separator 0 > /dev/null
"$PY" data/shard_tool.py tokenizer "$W/c/tok.bin" --vocab 4096 --separator 1 > /dev/null
disagree "" "" "$W/c" "--tokenizer file"

# a per-rank flag may differ: the run trains
rm -rf "$W/out" "$W/c/tok.bin"; cp "$W/a/tok.bin" "$W/c/tok.bin"
timeout 120 "${MPIRUN[@]}" -np 1 -wdir "$W/a" "$BIN" "${BASE[@]}" --threads 1 --out "$W/out" \
    : -np 1 -wdir "$W/c" "$BIN" "${BASE[@]}" --threads 2 --peak-gflops 50 --out "$W/out" < /dev/null > "$W/run.out" 2> "$W/run.err"
rc=$?
if [ $rc -eq 0 ] && grep -q '"type":"step","step":3' "$W/out/log.jsonl" 2>/dev/null; then
    pass "--threads and --peak-gflops may differ between ranks: the run trains 3 steps"
else
    fail "--threads 1 vs 2: exit $rc, stderr: $(tr '\n' ' ' < "$W/run.err" | cut -c1-300)"
fi
finish
