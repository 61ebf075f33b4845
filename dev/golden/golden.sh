#!/usr/bin/env bash
# dev/golden/golden.sh: golden runs that a refactor must reproduce to the bit.
#
#   bash dev/golden/golden.sh record DIR     runs the four golden runs with ./train_moe into DIR
#   bash dev/golden/golden.sh check DIR      runs them again into DIR.now and compares with DIR: every checkpoint
#                                            file byte for byte, every log record with its timing fields removed
#
# The runs: k2-l1 (B 2, T 64, synthetic shards), AdamW and MuonClip (tau 20, so heads get clipped), 1 rank and 2
# ranks with --ep 2 under mpirun, 30 steps with checkpoints at 15 and 30, validation and samples every 10 steps.
# Build first (make). Timings vary from run to run; every other number must not.
set -u
cd "$(dirname "$0")/../.."
mode=${1:-}; dir=${2:-}
if [ -z "$dir" ] || { [ "$mode" != record ] && [ "$mode" != check ]; }; then
    echo "usage: dev/golden/golden.sh record|check DIR" >&2; exit 2
fi
[ -x ./train_moe ] || { echo "golden: build ./train_moe first (make)" >&2; exit 2; }
out=$dir; [ "$mode" = check ] && out=$dir.now
rm -rf "$out"; mkdir -p "$out/data"
PY=/usr/bin/python3
$PY data/shard_tool.py write "$out/data/train_0.bin" --random 60000 --vocab 4096 --seed 21 > /dev/null
$PY data/shard_tool.py write "$out/data/val_0.bin" --random 8000 --vocab 4096 --seed 22 > /dev/null
export OMP_WAIT_POLICY=passive OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
COMMON=(--model k2-l1 --batch-size 2 --seq-len 64 --steps 30 --ckpt-every 15 --ckpt-keep 0 --val-every 10
        --val-batches 2 --sample-every 10 --sample-tokens 16 --peak-gflops 100 --tokenizer /nonexistent
        --train-data "$out/data/train_*.bin" --val-data "$out/data/val_*.bin" --lr 1e-2)
rc=0
for optim in adamw muon; do
    OPT=(--optim "$optim"); [ "$optim" = muon ] && OPT+=(--qk-clip-tau 20)
    name=${optim}_1rank
    timeout 600 ./train_moe "${COMMON[@]}" "${OPT[@]}" --threads 2 --out "$out/$name" > "$out/$name.out" 2>&1 \
        || { echo "golden: $name failed: $(tail -n 2 "$out/$name.out")"; rc=1; }
    name=${optim}_2ranks_ep2
    timeout 600 mpirun --oversubscribe --mca btl self,vader -np 2 ./train_moe "${COMMON[@]}" "${OPT[@]}" --ep 2 \
        --threads 1 --out "$out/$name" > "$out/$name.out" 2>&1 < /dev/null \
        || { echo "golden: $name failed: $(tail -n 2 "$out/$name.out")"; rc=1; }
done
[ "$mode" = record ] && { echo "golden: recorded in $out"; exit $rc; }

# the log without what varies from run to run: step times, rates, MFU, the optimizer's and the profile's times
untimed() { sed -E 's/,"(ms|tok_s|mfu|opt_ms)":[^,}]*//g; s/,"prof_ms":\{[^}]*\}//' "$1"; }
for run in adamw_1rank adamw_2ranks_ep2 muon_1rank muon_2ranks_ep2; do
    n=0
    for f in "$dir/$run"/model_*.bin "$dir/$run"/state_*.bin "$dir/$run"/DONE_*; do
        b=$(basename "$f")
        if ! cmp -s "$f" "$out/$run/$b"; then echo "DIFF $run/$b"; rc=1; fi
        n=$((n + 1))
    done
    if ! diff <(untimed "$dir/$run/log.jsonl") <(untimed "$out/$run/log.jsonl") > "$out/$run.logdiff"; then
        echo "DIFF $run/log.jsonl: $(head -c 300 "$out/$run.logdiff")"; rc=1
    fi
    [ "$rc" -eq 0 ] && echo "same $run: $n checkpoint files byte-identical, $(wc -l < "$dir/$run/log.jsonl") log records equal"
done
[ "$rc" -eq 0 ] && echo "golden: identical" || echo "golden: DIFFERENT"
exit $rc
