#!/usr/bin/env bash
# tests/test_hf_parity.sh: ./train_moe --export-hf checked by an independent float64 forward of Hugging Face's
# DeepseekV3ForCausalLM (dev/hf/hf_ref.py, written from transformers' own code, sharing nothing with the trainer).
#
#   bash tests/test_hf_parity.sh [WORKDIR]
#
# A tiny k2-nano run (3 steps on synthetic shards, so no dependence on data/default; the router bias is non-zero
# after them) is exported, and `./train_moe --eval --dump-logits` gives the trainer's fp32 logits of the first
# validation batch. Then:
# 1. the fp32 export (one file, and sharded with an index): the reference's logits equal the trainer's to 1e-4
#    relative per row (rows with a routing near-tie that differ are excluded and counted; over 1% fails).
# 2. the bf16 export: every tensor is the fp32 export's rounded to the nearest bfloat16 (exact, bit for bit: with
#    the fp32 export checked at 1e-4 above, this is the real check of the bf16 file), and its reference logits are
#    within 1e-1 relative (worst row) of the trainer's fp32 logits. That bound is loose on purpose: bf16 weights
#    move the logits by ~5e-3 (median row) and flip routing choices, which moved single rows by 3.8e-2 in this run,
#    so it only says the bf16 file holds the same model (a garbage or transposed model is off by ~1); it cannot
#    tell a RoPE-order bug from bf16 noise, the exact rounding check and the fp32 check can.
# 3. controls, proving the check can fail: the fp32 export with rope_interleave false, with the query's rope rows
#    in the halves order, with the router bias zeroed, with a dense layer's gate and up swapped, with o_proj
#    transposed: each must be reported as a mismatch. And the same model rewritten in HF's other RoPE layout
#    (rope rows of q and k in halves order, rope_interleave false) must match: the reference follows both of
#    HF's conventions. A truncated safetensors file is refused with an error line.
# Nothing is skipped: a train_moe without --export-hf or --eval --dump-logits fails here.
# Each check prints one PASS/FAIL/SKIP line; the last line is "N passed, N failed, N skipped".
. "$(dirname "$0")/lib.sh" hf_parity "$@"
need_trainer
if ! "$PY" -c 'import numpy' 2>/dev/null; then
    fail "$PY has no numpy (apt-get install python3-numpy): dev/hf/hf_ref.py needs it"; finish
fi
REF=(timeout 300 "$PY" dev/hf/hf_ref.py)
oneline() { head -c 400 "$1" | tr '\n' ' '; }

# ---- the reference's own unit checks (RoPE conventions, router groups, safetensors, causality)
if "${REF[@]}" --self-test > "$W/selftest.log" 2>&1; then
    pass "hf_ref.py --self-test: $(tail -n 1 "$W/selftest.log")"
else
    fail "hf_ref.py --self-test: $(grep -E '^FAIL|rror' "$W/selftest.log" | head -n 3 | tr '\n' ' ')"
fi

# ---- a tiny run, its exports and the trainer's logits
D=$W/data
mkdir -p "$D"
"$PY" data/shard_tool.py write "$D/train_0.bin" --random 40000 --vocab 4096 --seed 1 > /dev/null &&
"$PY" data/shard_tool.py write "$D/val_0.bin" --random 4000 --vocab 4096 --seed 2 > /dev/null ||
    { fail "fixture: shard_tool.py write failed"; finish; }
# trainer PREFIX ARGS...: runs the trainer (hang guard 300 s); output in PREFIX.out/.err; exit code in RC
trainer() { local p=$1; shift; timeout 300 "$BIN" "$@" > "$p.out" 2> "$p.err" < /dev/null; RC=$?; }
DATA=(--train-data "$D/train_*.bin" --val-data "$D/val_*.bin" --tokenizer /nonexistent --threads 2)

trainer "$W/train" --model k2-nano --steps 3 --batch-size 2 --seq-len 64 --ckpt-every 3 --val-batches 1 \
    --sample-every 0 --val-every 0 --out "$W/run" "${DATA[@]}"
[ $RC -eq 0 ] || { fail "training 3 steps: exit $RC: $(oneline "$W/train.err")"; finish; }

# export DIR ARGS...: ./train_moe --export-hf DIR --out RUN ARGS...; a pass/fail line; returns non-zero on failure
export_hf() {
    local dir=$1; shift
    trainer "$dir" --export-hf "$dir" --out "$W/run" "$@"
    if [ $RC -eq 0 ] && [ -f "$dir/config.json" ] && ls "$dir"/*.safetensors > /dev/null 2>&1; then
        pass "--export-hf $(basename "$dir")${*:+ $*}: $(ls "$dir" | tr '\n' ' ')"
    else
        fail "--export-hf $(basename "$dir")${*:+ $*}: exit $RC (a train_moe without --export-hf fails here): $(oneline "$dir.err")"
        return 1
    fi
}
export_hf "$W/hf32" || finish
trainer "$W/eval" --eval --out "$W/run" --val-batches 1 --batch-size 2 --seq-len 64 --dump-logits "$W/logits.bin" \
    "${DATA[@]}"
if [ $RC -eq 0 ] && [ -s "$W/logits.bin" ]; then
    pass "--eval --dump-logits: $(wc -c < "$W/logits.bin") bytes; $(grep -m1 -i 'loss' "$W/eval.out" | cut -c1-120)"
else
    fail "--eval --dump-logits: exit $RC, no dump (a train_moe without them fails here): $(oneline "$W/eval.err")"
    finish
fi

# ref NAME WANT DIR ARGS...: hf_ref.py DIR --logits the dump; WANT: 0 (match), 1 (mismatch), 2 (refused)
ref() {
    local name=$1 want=$2 dir=$3; shift 3
    "${REF[@]}" "$dir" --logits "$W/logits.bin" "$@" > "$W/ref_$name.log" 2>&1
    local rc=$? summary
    summary=$(grep -E '^(PASS|FAIL|error)' "$W/ref_$name.log" | head -n 3 | cut -c1-220 | tr '\n' ' ')
    case "$want:$rc" in
        0:0) pass "$name: the reference matches the trainer: $summary" ;;
        1:1) pass "$name: the reference reports the mismatch, as it must: $summary" ;;
        2:2) pass "$name: refused: $summary" ;;
        0:*) fail "$name: exit $rc, want a match: $summary" ;;
        1:0) fail "$name: the reference MATCHES a corrupted export: the check cannot see this error: $summary" ;;
        *)   fail "$name: exit $rc, want $want: $summary $(tail -n 2 "$W/ref_$name.log" | tr '\n' ' ')" ;;
    esac
}

# ---- 1. fp32, one file and sharded
ref "fp32 export" 0 "$W/hf32"
if export_hf "$W/hf32_sharded" --max-shard-size 4000000; then
    n=$(ls "$W/hf32_sharded" | grep -c '^model-.*-of-.*\.safetensors$')
    if [ "$n" -ge 2 ] && [ -f "$W/hf32_sharded/model.safetensors.index.json" ]; then
        pass "--max-shard-size 4000000: $n shards and model.safetensors.index.json"
    else
        fail "--max-shard-size 4000000: $n shard files, index $( [ -f "$W/hf32_sharded/model.safetensors.index.json" ] && echo present || echo missing) (want >= 2 and an index)"
    fi
    ref "fp32 sharded export" 0 "$W/hf32_sharded"
fi

# ---- 2. bf16: bit-exact rounding of the fp32 export, and the same model within bf16's reach
if export_hf "$W/hf16" --dtype bf16; then
    ref "bf16 export (exact rounding; logits within 1e-1)" 0 "$W/hf16" --bf16-of "$W/hf32" --tol 1e-1
fi

# ---- 3. controls: each corruption must be seen; HF's other RoPE layout must not be
mutate() { "$PY" dev/hf/hf_mutate.py "$W/hf32" "$W/mut_$1" "$1" > "$W/mut_$1.log" 2>&1; }
for kind in no-interleave q-rope-halves zero-bias swap-gate-up transpose-o; do
    if mutate $kind; then ref "control $kind" 1 "$W/mut_$kind"
    else fail "control $kind: hf_mutate.py failed: $(oneline "$W/mut_$kind.log")"; fi
done
if mutate halves-convention; then ref "same model in the halves RoPE layout (rope_interleave false)" 0 "$W/mut_halves-convention"
else fail "halves-convention: hf_mutate.py failed: $(oneline "$W/mut_halves-convention.log")"; fi
mkdir -p "$W/truncated"
cp "$W/hf32/config.json" "$W/truncated/"
f=$(ls "$W/hf32"/*.safetensors | head -n 1)
head -c $(( $(wc -c < "$f") - 100 )) "$f" > "$W/truncated/model.safetensors"
ref "truncated safetensors" 2 "$W/truncated"

finish
