#!/usr/bin/env bash
# tests/test_cli.sh: the trainer end to end, on tiny synthetic shards (no dependence on data/default).
#
#   bash tests/test_cli.sh [WORKDIR]
#
# 1. determinism: two fresh runs with one seed agree bit for bit, another seed differs; a run stopped at a
#    checkpoint and continued with --resume matches the straight run (losses, every other log field, samples,
#    the final model and optimizer files), with and without gradient accumulation; v1 (uint16) and v7 (uint32)
#    shards with the same tokens train identically.
# 2. bad input: each case exits non-zero with one stderr line "error: ..." that names the file or flag, and
#    creates or changes nothing in --out.
# 3. checkpoints: an incomplete checkpoint (no DONE marker, stale *.tmp files) is ignored by --resume; a kill -9
#    while checkpoints are being written leaves a resumable run.
# Each check prints one PASS/FAIL/SKIP line; the last line is "N passed, N failed, N skipped".
. "$(dirname "$0")/lib.sh" cli "$@"
need_trainer

# ---------------------------------------------------------------------------------------------------------------
# fixtures: small random shards, vocab 4096 (k2-l1's), T = 32

D=$W/data
mkdir -p "$D/v1" "$D/v7" "$D/bad"
shard() { "$PY" data/shard_tool.py write "$@" >/dev/null || { fail "fixture: shard_tool.py write $*"; finish; }; }
for v in 1 7; do
    shard "$D/v$v/train_0.bin" --version $v --random 12000 --vocab 4096 --seed 1
    shard "$D/v$v/train_1.bin" --version $v --random 12000 --vocab 4096 --seed 2
    shard "$D/v$v/val_0.bin" --version $v --random 4000 --vocab 4096 --seed 3
done
B=$D/bad
shard "$B/bad_magic.bin" --random 4000 --vocab 4096 --bad-magic
shard "$B/bad_version.bin" --random 4000 --vocab 4096 --bad-version
shard "$B/truncated.bin" --random 4000 --vocab 4096 --truncate 2
shard "$B/truncated_header.bin" --random 10 --vocab 4096 --truncate 1000
shard "$B/longer.bin" --random 4000 --vocab 4096 --append 2
shard "$B/count_high.bin" --random 4000 --vocab 4096 --header-count 5000
shard "$B/v7_truncated.bin" --version 7 --random 4000 --vocab 4096 --truncate 3
shard "$B/too_short.bin" --random 32 --vocab 4096                                   # T+1 = 33 needed
shard "$B/one_window.bin" --random 40 --vocab 4096                                  # 1 window, a step needs B = 2
shard "$B/token_mid.bin" --random 12000 --vocab 4096 --token-max --inject-at 1000   # id 4096 inside window 31
shard "$B/token_v7.bin" --version 7 --random 12000 --vocab 4096 --inject-token 4000000000 --inject-at 500
shard "$B/token_step1.bin" --random 65 --vocab 4096 --token-max --inject-at 0      # 2 windows: read at step 1
cp "$D/v1/train_0.bin" "$B/unreadable.bin"; chmod 000 "$B/unreadable.bin"
mkdir -p "$B/dir_shard.bin"

TRAIN="$D/v1/train_*.bin"
VAL="$D/v1/val_*.bin"
FAST=(--model k2-l1 --batch-size 2 --seq-len 32 --threads 2 --peak-gflops 100 --tokenizer /nonexistent)
COMMON=("${FAST[@]}" --train-data "$TRAIN" --val-data "$VAL" --val-every 0 --sample-every 0)
# the determinism runs also validate and sample, so the sampler's generator state goes through the checkpoint
DET=("${FAST[@]}" --train-data "$TRAIN" --val-data "$VAL" --val-every 4 --val-batches 2 --sample-every 3
     --sample-tokens 16 --steps 10 --ckpt-every 5 --ckpt-keep 0)

# trainer PREFIX ARGS...: runs the trainer (hang guard 120 s); stdout/stderr to PREFIX.out/.err; exit code in RC
trainer() {
    local p=$1; shift
    timeout 120 "$BIN" "$@" >"$p.out" 2>"$p.err"
    RC=$?
}
# the log records without their timing fields (ms, tok/s, MFU vary from run to run)
untimed() { sed -E 's/"ms":[^,]*,"tok_s":[^,]*,"mfu":[^,]*,//; s/"opt_ms":[^,]*,//' "$1"; }
# step losses as "step loss" lines
losses() { grep '"type":"step"' "$1" | sed -E 's/.*"step":([0-9]+),"loss":([^,]+),.*/\1 \2/'; }
# every record after the "type":"step" record of step $2, config records left out
# (the config record and the resume marker are about the process, not the trajectory)
after_step() { awk -v s="\"type\":\"step\",\"step\":$2," 'seen && !/"type":"(config|resume)"/ {print} index($0, s) {seen=1}' "$1"; }
# keep the log up to and including the "type":"step" record of step $2
cut_log() { awk -v s="\"type\":\"step\",\"step\":$2," '{print} index($0, s) {exit}' "$1" >"$1.cut" && mv "$1.cut" "$1"; }
drop_ckpt() { rm -f "$1/DONE_$(printf %08d "$2")" "$1/model_$(printf %08d "$2").bin" "$1/state_$(printf %08d "$2")_r0.bin"; }
# a directory's full state: every path, size, mode, mtime and checksum ("ABSENT" if it does not exist)
snap() {
    if [ ! -e "$1" ]; then echo ABSENT; return; fi
    find "$1" -printf '%p %s %m %T@\n' | sort
    if [ -d "$1" ]; then find "$1" -type f -exec md5sum {} + 2>/dev/null | sort; else md5sum "$1"; fi
}
# snapdiff OUT BEFORE AFTER: which files of OUT went, came or changed between two snaps
snapdiff() {
    local b a
    b=$(echo "$2" | awk -v d="$1" 'NF == 4 && $1 != d' | sort); a=$(echo "$3" | awk -v d="$1" 'NF == 4 && $1 != d' | sort)
    echo "removed [$(comm -23 <(echo "$b" | cut -d' ' -f1) <(echo "$a" | cut -d' ' -f1) | xargs -r -n1 basename | tr '\n' ' ')]" \
         "added [$(comm -13 <(echo "$b" | cut -d' ' -f1) <(echo "$a" | cut -d' ' -f1) | xargs -r -n1 basename | tr '\n' ' ')]" \
         "modified [$(join <(echo "$b") <(echo "$a") | awk '$2 != $5 || $4 != $7 {print $1}' | xargs -r -n1 basename | tr '\n' ' ')]"
}
# jsonl_ok FILE: every line parses as strict JSON (no NaN/Infinity/nan/inf); else prints the first bad line
jsonl_ok() {
    "$PY" - "$1" <<'PYEOF'
import json, sys
def bad(c):
    raise ValueError("non-JSON constant " + c)
for i, line in enumerate(open(sys.argv[1]), 1):
    try:
        json.loads(line, parse_constant=bad)
    except ValueError as e:
        print(f"line {i}: {e}: {line.strip()[:160]}")
        sys.exit(1)
PYEOF
}
oneline() { head -c 400 "$1" | tr '\n' ' '; }

# ---------------------------------------------------------------------------------------------------------------
# 1. determinism and resume

echo "# determinism and resume (k2-l1, B=2, T=32, 10 steps, val every 4, samples every 3, checkpoints every 5)"
A=$W/runA
trainer "$W/runA" "${DET[@]}" --out "$A"
if [ $RC -ne 0 ] || [ ! -f "$A/DONE_00000010" ]; then
    fail "reference run: exit $RC, stderr: $(oneline "$W/runA.err")"
    finish
fi
pass "reference run: 10 steps, checkpoints at steps 5 and 10, $(losses "$A/log.jsonl" | wc -l) step records"

if msg=$(jsonl_ok "$A/log.jsonl"); then pass "reference run: every log.jsonl line is valid JSON"
else fail "reference run: log.jsonl is not valid JSON lines: $msg"; fi
trainer "$W/help" --help
if [ $RC -eq 0 ] && grep -q -- "--resume" "$W/help.out" && grep -q -- "--total-batch" "$W/help.out" && [ ! -s "$W/help.err" ]; then
    pass "--help: exit 0, lists $(grep -c '^  --' "$W/help.out") flags on stdout"
else
    fail "--help: exit $RC, $(oneline "$W/help.err")"
fi

# two fresh runs with the same seed
C=$W/runC
trainer "$W/runC" "${DET[@]}" --out "$C"
if [ $RC -eq 0 ] && [ "$(untimed "$A/log.jsonl")" = "$(untimed "$C/log.jsonl")" ]; then
    pass "same seed twice: log.jsonl identical ($(wc -l <"$A/log.jsonl") records, timing fields left out)"
else
    fail "same seed twice: exit $RC; log differs: $(diff <(untimed "$A/log.jsonl") <(untimed "$C/log.jsonl") | head -4 | tr '\n' ' ')"
fi
if cmp -s "$A/model_00000010.bin" "$C/model_00000010.bin" && cmp -s "$A/state_00000010_r0.bin" "$C/state_00000010_r0.bin"; then
    pass "same seed twice: model_00000010.bin and state_00000010_r0.bin byte-identical"
else
    fail "same seed twice: step-10 checkpoint files differ ($(cmp "$A/model_00000010.bin" "$C/model_00000010.bin" 2>&1 | head -1))"
fi

# another seed
S=$W/runSeed
trainer "$W/runSeed" "${DET[@]}" --out "$S" --seed 7
if [ $RC -ne 0 ]; then
    fail "--seed 7: exit $RC, stderr: $(oneline "$W/runSeed.err")"
else
    l1a=$(losses "$A/log.jsonl" | head -1); l1s=$(losses "$S/log.jsonl" | head -1)
    nsame=$(join <(losses "$A/log.jsonl") <(losses "$S/log.jsonl") | awk '$2 == $3' | wc -l)
    if [ "$nsame" -eq 0 ] && ! cmp -s "$A/model_00000010.bin" "$S/model_00000010.bin"; then
        pass "--seed 7 vs 1337: all 10 losses differ (step 1: ${l1a#* } vs ${l1s#* }), final models differ"
    else
        fail "--seed 7 vs 1337: $nsame of 10 losses equal, or the final models are equal"
    fi
fi

# resume_check NAME EXTRA_FLAGS...: a copy of a straight 10-step run, cut back to its step-5 checkpoint, resumed
resume_check() {
    local name=$1; shift
    local ref=$W/resume_${name}_ref dir=$W/resume_$name
    if [ "$name" = plain ]; then ref=$A; else
        trainer "$ref" "${DET[@]}" "$@" --out "$ref"
        if [ $RC -ne 0 ]; then fail "resume ($name): straight run: exit $RC, $(oneline "$ref.err")"; return; fi
    fi
    cp -r "$ref" "$dir"
    drop_ckpt "$dir" 10
    cut_log "$dir/log.jsonl" 5
    trainer "$dir" "${DET[@]}" "$@" --out "$dir" --resume
    if [ $RC -ne 0 ]; then fail "resume ($name): --resume from step 5: exit $RC, $(oneline "$dir.err")"; return; fi
    if grep -qx "resumed from step 5" "$dir.out"; then pass "resume ($name): printed 'resumed from step 5'"
    else fail "resume ($name): no 'resumed from step 5' line: $(grep -m1 resumed "$dir.out")"; fi
    local la lb
    la=$(losses "$ref/log.jsonl" | awk '$1 > 5'); lb=$(losses "$dir/log.jsonl" | awk '$1 > 5')
    if [ -n "$la" ] && [ "$la" = "$lb" ]; then
        pass "resume ($name): losses of steps 6..10 string-equal to the straight run ($(echo $la | cut -c1-80)...)"
    else
        fail "resume ($name): losses of steps 6..10 differ: straight [$(echo $la)] resumed [$(echo $lb)]"
    fi
    local ra rb
    ra=$(after_step "$ref/log.jsonl" 5 | sed -E 's/"ms":[^,]*,"tok_s":[^,]*,"mfu":[^,]*,//; s/"opt_ms":[^,]*,//')
    rb=$(after_step "$dir/log.jsonl" 5 | sed -E 's/"ms":[^,]*,"tok_s":[^,]*,"mfu":[^,]*,//; s/"opt_ms":[^,]*,//')
    if [ -n "$ra" ] && [ "$ra" = "$rb" ]; then
        pass "resume ($name): all $(echo "$ra" | wc -l) records after step 5 (ce, aux, lr, grad norm, max logits, load, val, samples) identical"
    else
        fail "resume ($name): records after step 5 differ: $(diff <(echo "$ra") <(echo "$rb") | head -4 | cut -c1-200 | tr '\n' ' ')"
    fi
    if cmp -s "$ref/model_00000010.bin" "$dir/model_00000010.bin"; then
        pass "resume ($name): model_00000010.bin byte-identical to the straight run's"
    else
        fail "resume ($name): model_00000010.bin differs: $(cmp "$ref/model_00000010.bin" "$dir/model_00000010.bin" 2>&1 | head -1)"
    fi
    if cmp -s "$ref/state_00000010_r0.bin" "$dir/state_00000010_r0.bin"; then
        pass "resume ($name): state_00000010_r0.bin (optimizer state, data cursor, sampler) byte-identical"
    else
        fail "resume ($name): state_00000010_r0.bin differs: $(cmp "$ref/state_00000010_r0.bin" "$dir/state_00000010_r0.bin" 2>&1 | head -1)"
    fi
}
resume_check plain
resume_check accum --total-batch 128   # 2 micro-batches of 2 x 32 per step
resume_check muon --optim muon         # Muon momentum + AdamW moments go through the checkpoint
resume_check muonclip --optim muon --ns polar --muon-router 0 --qk-clip-tau 0.01   # QK-Clip acting every step
nclip=$(grep -c '"heads_clipped":[1-9]' "$W/resume_muonclip_ref/log.jsonl")
if [ "$nclip" -ge 3 ]; then pass "muonclip run: QK-Clip clipped heads in $nclip of 10 steps (tau 0.01, k2-l1's logits start at ~0.03)"
else fail "muonclip run: QK-Clip acted in only $nclip of 10 steps (tau 0.01)"; fi

# v7 (uint32) shards with the same tokens as the v1 ones
V7=$W/runV7
trainer "$V7" "${DET[@]}" --train-data "$D/v7/train_*.bin" --val-data "$D/v7/val_*.bin" --out "$V7"
if [ $RC -ne 0 ]; then
    fail "v7 uint32 shards: exit $RC, $(oneline "$V7.err")"
elif [ "$(untimed "$A/log.jsonl")" = "$(untimed "$V7/log.jsonl")" ] && cmp -s "$A/model_00000010.bin" "$V7/model_00000010.bin"; then
    pass "v7 uint32 shards load and train: log and final model identical to the v1 uint16 shards with the same tokens"
else
    fail "v7 uint32 shards: trained, but the log or model differs from the v1 run on the same tokens"
fi

# ---------------------------------------------------------------------------------------------------------------
# 2. bad input

echo "# bad input: exit != 0, one stderr line 'error: ...' naming the file or flag, --out not created or changed"
ncase=0
# expect_error DESC NEEDLES OUT ARGS...: NEEDLES is a |-separated list of strings the error must contain
expect_error() {
    local desc=$1 needles=$2 out=$3; shift 3
    ncase=$((ncase + 1))
    local p=$W/case_$ncase before after why="" n first
    before=$(snap "$out")
    trainer "$p" "${COMMON[@]}" --steps 3 --out "$out" "$@"
    after=$(snap "$out")
    if [ $RC -eq 0 ]; then why+="exit 0 (stdout ends: $(tail -n 1 "$p.out" | cut -c1-100)); "
    elif [ $RC -eq 124 ]; then why+="hung (killed after 120 s); "
    elif [ $RC -gt 128 ]; then why+="crashed (exit $RC, signal $((RC - 128))); "; fi
    n=$(grep -c . "$p.err"); first=$(grep -m1 . "$p.err")
    if [ $RC -ne 0 ]; then
        [ "$n" -eq 1 ] || why+="stderr has $n lines, expected 1; "
        case "$first" in "error: "*) ;; *) why+="stderr does not start with 'error: '; " ;; esac
        local IFS='|' nd
        for nd in $needles; do grep -qF -- "$nd" "$p.err" || why+="the error does not name '$nd'; "; done
        unset IFS
    fi
    if [ "$before" != "$after" ]; then
        if [ "$before" = ABSENT ]; then why+="--out $out was created ($(cd "$out" 2>/dev/null && ls | tr '\n' ' ')); "
        else why+="--out $out changed: $(snapdiff "$out" "$before" "$after"); "; fi
    fi
    if [ -z "$why" ]; then pass "$desc: exit $RC: $first"
    else fail "$desc: $why| stderr: $(oneline "$p.err")| args: $*"; fi
    [ "$before" = ABSENT ] && rm -rf "$out"   # the next case starts from the same state
}
NEW=$W/out_new   # never created by a correct trainer

# data
expect_error "missing shard (pattern matches nothing)" "--train-data|$W/nothing_*.bin" "$NEW" --train-data "$W/nothing_*.bin"
expect_error "missing validation shard" "--val-data|$W/nothing_val_*.bin" "$NEW" --val-data "$W/nothing_val_*.bin"
if head -c 1 "$B/unreadable.bin" >/dev/null 2>&1; then
    skip "unreadable shard (chmod 000): running as uid $(id -u), which reads it anyway"
else
    expect_error "unreadable shard (chmod 000)" "$B/unreadable.bin" "$NEW" --train-data "$B/unreadable.bin"
fi
expect_error "shard path is a directory" "$B/dir_shard.bin" "$NEW" --train-data "$B/dir_shard.bin"
expect_error "bad magic" "$B/bad_magic.bin" "$NEW" --train-data "$B/bad_magic.bin"
expect_error "bad magic in the validation shard" "$B/bad_magic.bin" "$NEW" --val-data "$B/bad_magic.bin"
expect_error "bad version" "$B/bad_version.bin" "$NEW" --train-data "$B/bad_version.bin"
expect_error "truncated shard (2 bytes short)" "$B/truncated.bin" "$NEW" --train-data "$B/truncated.bin"
expect_error "truncated v7 shard (3 bytes short)" "$B/v7_truncated.bin" "$NEW" --train-data "$B/v7_truncated.bin"
expect_error "file shorter than the 1024-byte header" "$B/truncated_header.bin" "$NEW" --train-data "$B/truncated_header.bin"
expect_error "header count above the tokens present" "$B/count_high.bin" "$NEW" --train-data "$B/count_high.bin"
expect_error "file longer than its header says (2 extra bytes)" "$B/longer.bin" "$NEW" --train-data "$B/longer.bin"
expect_error "a good shard plus a bad one in one glob" "$B/truncated.bin" "$NEW" --train-data "$D/v1/train_0.bin" --val-data "$B/truncated.bin"
expect_error "shard too short for one window (32 tokens, T+1 = 33)" "$B/too_short.bin" "$NEW" --train-data "$B/too_short.bin"
expect_error "token id 4096 >= vocab_size 4096 (v1, token 1000 of 12000)" "$B/token_mid.bin" "$NEW" --train-data "$B/token_mid.bin"
expect_error "token id 4000000000 >= vocab_size (v7, token 500 of 12000)" "$B/token_v7.bin" "$NEW" --train-data "$B/token_v7.bin"
expect_error "token id 4096 >= vocab_size in a window read at step 1" "$B/token_step1.bin" "$NEW" --train-data "$B/token_step1.bin"
expect_error "shard with 1 window, a step needs B = 2" "$B/one_window.bin" "$NEW" --train-data "$B/one_window.bin"

expect_error "validation shard with 1 window, a batch needs B = 2" "$B/one_window.bin" "$NEW" --val-data "$B/one_window.bin" --val-every 1

# flags
expect_error "unknown flag" "--bogus" "$NEW" --bogus 1
expect_error "flag missing its value (last argument)" "--lr" "$NEW" --lr
expect_error "boolean flag given a value" "--resume" "$NEW" --resume=1
expect_error "non-numeric integer value" "--steps|abc" "$NEW" --steps abc
expect_error "integer value with trailing junk" "--batch-size|2x" "$NEW" --batch-size 2x
expect_error "non-numeric float value" "--lr|fast" "$NEW" --lr fast
expect_error "--batch-size 0" "--batch-size" "$NEW" --batch-size 0
expect_error "--steps 0" "--steps" "$NEW" --steps 0
expect_error "--lr -1" "--lr" "$NEW" --lr -1
expect_error "--lr nan" "--lr" "$NEW" --lr nan
expect_error "--grad-clip -1" "--grad-clip" "$NEW" --grad-clip -1
expect_error "--beta2 1.5" "--beta2" "$NEW" --beta2 1.5
expect_error "--seq-len -1" "--seq-len" "$NEW" --seq-len -1
expect_error "--schedule bogus" "--schedule" "$NEW" --schedule bogus
expect_error "--resume with --overwrite" "--resume|--overwrite" "$NEW" --resume --overwrite
expect_error "--warmup 20 > --steps 10" "--warmup" "$NEW" --steps 10 --warmup 20
expect_error "--total-batch 100, not a multiple of 2 x 32" "--total-batch" "$NEW" --total-batch 100
# sizes that overflowed 32-bit arithmetic: 2^41 tokens per step was "0 micro-batches" (trained with loss 0, exit 0)
expect_error "--total-batch 2^41 (2^35 micro-batches)" "--total-batch|2199023255552" "$NEW" --total-batch 2199023255552
expect_error "--seq-len 2147483647" "--seq-len" "$NEW" --seq-len 2147483647
expect_error "--batch-size 2147483647" "--batch-size" "$NEW" --batch-size 2147483647
expect_error "--batch-size x --seq-len too many routed rows" "--batch-size|--seq-len" "$NEW" --batch-size 1048576 --seq-len 1024
expect_error "--total-batch 2^63-1 (does not parse)" "--total-batch" "$NEW" --total-batch 9223372036854775808
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && ! grep -q 'return NULL' model/ops_select.c; then
    skip "--device cuda: a GPU is visible and this build has a CUDA backend"
else
    expect_error "--device cuda on a build without CUDA" "cuda" "$NEW" --device cuda
fi
expect_error "--device tpu" "--device" "$NEW" --device tpu
expect_error "--attention flash" "--attention" "$NEW" --attention flash
expect_error "--attention cudnn on the cpu device" "--attention cudnn needs the CUDA backend" "$NEW" --device cpu --attention cudnn
expect_error "--optim sgd" "--optim" "$NEW" --optim sgd
expect_error "--ns cubic" "--ns" "$NEW" --optim muon --ns cubic
expect_error "--muon-ns fp16" "--muon-ns" "$NEW" --optim muon --muon-ns fp16
expect_error "--muon-ns bf16 on the CPU" "--muon-ns" "$NEW" --device cpu --optim muon --muon-ns bf16
expect_error "--muon-router 2" "--muon-router" "$NEW" --optim muon --muon-router 2
expect_error "--muon-momentum 1" "--muon-momentum" "$NEW" --optim muon --muon-momentum 1
expect_error "--qk-clip-tau -1" "--qk-clip-tau" "$NEW" --qk-clip-tau -1
expect_error "--model nonexistent" "--model|nonexistent" "$NEW" --model nonexistent
expect_error "--resume with no --out directory" "--resume|$W/no_such_run" "$W/no_such_run" --resume
mkdir -p "$W/empty_run"
expect_error "--resume in an empty --out" "--resume|$W/empty_run" "$W/empty_run" --resume
echo "not a directory" >"$W/out_is_file"
expect_error "--out is a regular file" "$W/out_is_file" "$W/out_is_file"

# an --out that holds a run (copies of the reference run: checkpoints at steps 5 and 10, k2-l1, B=2, seed 1337)
E=$W/existing
cp -r "$A" "$E"
expect_error "--out holds a run, no --resume/--overwrite" "$E|--resume|--overwrite" "$E"
expect_error "resume with --model k2-l2 (other config)" "$E/model_00000010.bin|d_model" "$E" --resume --model k2-l2 --steps 10
expect_error "resume with --seq-len 16" "$E/model_00000010.bin|seq_len" "$E" --resume --seq-len 16 --steps 10
expect_error "resume with --batch-size 4" "$E/state_00000010_r0.bin|--batch-size" "$E" --resume --batch-size 4 --steps 10
expect_error "resume with --total-batch 128 (2 micro-batches)" "$E/state_00000010_r0.bin|--total-batch" "$E" --resume --total-batch 128 --steps 10
expect_error "resume with --seed 7" "$E/state_00000010_r0.bin|--seed" "$E" --resume --seed 7 --steps 10
expect_error "resume with --steps 5 below the checkpoint's 10" "--steps" "$E" --resume --steps 5
expect_error "resume an AdamW run with --optim muon" "$E/state_00000010_r0.bin|--optim" "$E" --resume --optim muon --steps 10
cp -r "$A" "$W/corrupt_model"; drop_ckpt "$W/corrupt_model" 5; truncate -s 100000 "$W/corrupt_model/model_00000010.bin"
expect_error "resume from a truncated model file" "$W/corrupt_model/model_00000010.bin" "$W/corrupt_model" --resume --steps 10
cp -r "$A" "$W/corrupt_state"; drop_ckpt "$W/corrupt_state" 5; truncate -s 100000 "$W/corrupt_state/state_00000010_r0.bin"
expect_error "resume from a truncated state file" "$W/corrupt_state/state_00000010_r0.bin" "$W/corrupt_state" --resume --steps 10
cp -r "$A" "$W/trailing_model"; drop_ckpt "$W/trailing_model" 5; printf 'xxxx' >>"$W/trailing_model/model_00000010.bin"
expect_error "resume from a model file with trailing bytes" "$W/trailing_model/model_00000010.bin" "$W/trailing_model" --resume --steps 10
cp -r "$A" "$W/no_state"; drop_ckpt "$W/no_state" 5; rm "$W/no_state/state_00000010_r0.bin"
expect_error "resume with DONE present but the state file missing" "$W/no_state/state_00000010_r0.bin" "$W/no_state" --resume --steps 10
# a data error found only once training runs must not have deleted the run --overwrite was asked to replace
cp -r "$A" "$W/overwrite_bad"
expect_error "--overwrite with a bad token read at step 1 keeps the old run" "$B/token_step1.bin" "$W/overwrite_bad" --overwrite --train-data "$B/token_step1.bin"

# --overwrite on good input does replace the run
cp -r "$A" "$W/overwrite_ok"
trainer "$W/overwrite_ok" "${COMMON[@]}" --out "$W/overwrite_ok" --overwrite --steps 2 --ckpt-every 0
left=$(cd "$W/overwrite_ok" && ls | tr '\n' ' ')
if [ $RC -eq 0 ] && [ "$left" = "DONE_00000002 log.jsonl model_00000002.bin state_00000002_r0.bin train_moe.lock " ] \
    && [ "$(grep -c '"type":"config"' "$W/overwrite_ok/log.jsonl")" -eq 1 ]; then
    pass "--overwrite replaces the earlier run: left $left, log.jsonl with one config record"
else
    fail "--overwrite: exit $RC, directory holds: $left; $(oneline "$W/overwrite_ok.err")"
fi

# a run that diverges: step 1 with lr 1e30 and no clip makes every later step non-finite
NF=$W/nonfinite
trainer "$NF" "${COMMON[@]}" --out "$NF" --steps 20 --lr 1e30 --grad-clip 0 --warmup 0 --max-bad-steps 2
first=$(grep -m1 . "$NF.err")
if [ $RC -eq 1 ] && [ "$(grep -c . "$NF.err")" -eq 1 ] && [[ "$first" == "error: "*non-finite* ]]; then
    pass "diverging run (--lr 1e30, --max-bad-steps 2): stops with exit 1: $first"
else
    fail "diverging run (--lr 1e30, --max-bad-steps 2): exit $RC, stderr: $(oneline "$NF.err")"
fi
if msg=$(jsonl_ok "$NF/log.jsonl"); then pass "diverging run: log.jsonl stays valid JSON (non-finite values as null)"
else fail "diverging run: log.jsonl is not valid JSON: $msg"; fi

# ---------------------------------------------------------------------------------------------------------------
# 3. incomplete checkpoints and kill -9

echo "# incomplete checkpoints"
# resume_from NAME DIR EXPECT_STEP: --resume to step 10; it must pick EXPECT_STEP and end on the reference model
resume_from() {
    local desc=$1 dir=$2 want=$3
    trainer "$dir" "${DET[@]}" --out "$dir" --resume
    local got; got=$(grep -m1 '^resumed from step' "$dir.out")
    if [ $RC -eq 0 ] && [ "$got" = "resumed from step $want" ] && cmp -s "$A/model_00000010.bin" "$dir/model_00000010.bin"; then
        pass "$desc: '$got', finished with model_00000010.bin identical to the straight run's"
    else
        fail "$desc: exit $RC, '${got:-no resumed line}', want step $want; $(oneline "$dir.err")"
    fi
}
cp -r "$A" "$W/no_done"; rm "$W/no_done/DONE_00000010"
resume_from "checkpoint without DONE marker is ignored" "$W/no_done" 5
cp -r "$A" "$W/stale_tmp"; drop_ckpt "$W/stale_tmp" 10
head -c 5000 "$A/model_00000010.bin" >"$W/stale_tmp/model_00000010.bin.tmp"
head -c 5000 "$A/state_00000010_r0.bin" >"$W/stale_tmp/state_00000010_r0.bin.tmp"
printf 'do' >"$W/stale_tmp/DONE_00000010.tmp"
resume_from "partial write (model/state/DONE *.tmp for step 10) is ignored" "$W/stale_tmp" 5

echo "# kill -9 while checkpoints are written every step"
K=$W/killed
"$BIN" "${COMMON[@]}" --out "$K" --steps 100000 --ckpt-every 1 --ckpt-keep 2 >"$K.out" 2>"$K.err" &
kpid=$!
t_end=$((SECONDS + 60))
while [ ! -e "$K/DONE_00000003" ] && [ $SECONDS -lt $t_end ] && kill -0 $kpid 2>/dev/null; do sleep 0.02; done
tmp_seen=no   # then kill it while a checkpoint file is being written, if we catch one within 10 s
t_end=$((SECONDS + 10))
while [ $SECONDS -lt $t_end ] && kill -0 $kpid 2>/dev/null; do
    if compgen -G "$K/*.tmp" >/dev/null; then tmp_seen="yes: $(cd "$K" && ls *.tmp 2>/dev/null | tr '\n' ' ')"; break; fi
done
exec 3>&2 2>/dev/null   # no "Killed" job notice from bash
kill -9 $kpid
wait $kpid
exec 2>&3 3>&-
last=$(cd "$K" 2>/dev/null && ls DONE_* 2>/dev/null | sed -E 's/DONE_0*([0-9]+)$/\1/' | sort -n | tail -1)
if [ -z "$last" ]; then
    fail "kill -9: no complete checkpoint before the kill; $(oneline "$K.err")"
else
    trainer "$K.resume" "${COMMON[@]}" --out "$K" --resume --steps $((last + 2)) --ckpt-every 1 --ckpt-keep 2
    got=$(grep -m1 '^resumed from step' "$K.resume.out")
    if [ $RC -eq 0 ] && [ "$got" = "resumed from step $last" ] && [ -e "$K/DONE_$(printf %08d $((last + 2)))" ]; then
        pass "kill -9 at step $last (a *.tmp in flight: $tmp_seen): --resume '$got' and trained to step $((last + 2))"
    else
        fail "kill -9 at step $last (a *.tmp in flight: $tmp_seen): --resume exit $RC, '${got:-no resumed line}'; $(oneline "$K.resume.err")"
    fi
fi

# --adamw-lr-scale under --optim muon: one step at scales 1, 0.5 and 0.25 from the same initial weights. The first
# AdamW step is W0 (1 - s lr wd) - s lr m/(sqrt(v)+eps), linear in s, so W(1) - W(0.5) = 2 (W(0.5) - W(0.25)) on
# the AdamW tensors; the Muon tensors do not see s (bit-identical); the default equals an explicit 1.
S=$W/alrs
for sc in 1 0.5 0.25; do
    trainer "$S$sc" "${COMMON[@]}" --optim muon --lr 0.01 --steps 1 --warmup 0 --adamw-lr-scale $sc --out "$S$sc"
done
trainer "${S}def" "${COMMON[@]}" --optim muon --lr 0.01 --steps 1 --warmup 0 --out "${S}def"
if out=$(cd scripts && "$PY" - "$S" "$BIN" "${COMMON[@]}" 2>&1 <<'PYEOF'
import sys, numpy as np, scaling_sweep as ss
S, argv = sys.argv[1], sys.argv[2:]
lay = ss.trainer_layout(argv + ["--optim", "muon"])
W = {sc: ss.read_model(S + sc + "/model_00000001.bin", lay)[1] for sc in ("1", "0.5", "0.25", "def")}
names = sorted(W["1"])
adamw = [n for n in names if n in ("wte", "lm_head")]
muon = [n for n in names if n in ("wuq", "wukv", "wo")]
assert len(adamw) == 2 and len(muon) == 3, names
for n in names:
    assert np.array_equal(W["1"][n], W["def"][n]), n + ": the default differs from --adamw-lr-scale 1"
for n in muon:
    assert np.array_equal(W["1"][n], W["0.25"][n]) and np.array_equal(W["1"][n], W["0.5"][n]), n + " moved with s"
worst = 0.0
for n in adamw:
    a, b = W["1"][n] - W["0.5"][n], 2 * (W["0.5"][n] - W["0.25"][n])
    big = np.abs(a) > 1e-3 * np.abs(a).max()
    assert big.mean() > 0.2, (n, big.mean())
    worst = max(worst, float(np.max(np.abs(a - b)[big] / np.abs(a)[big])))
assert worst < 5e-3, worst
print("AdamW tensors (%s) step linearly in the scale (worst relative %.1e), Muon tensors (%s) bit-identical" % (
    ", ".join(adamw), worst, ", ".join(muon)))
PYEOF
); then pass "--adamw-lr-scale: $out"
else fail "--adamw-lr-scale: $(echo "$out" | tail -n 2 | tr '\n' ' ') $(oneline "${S}0.5.err")"; fi
trainer "$S.adamw" "${COMMON[@]}" --optim adamw --steps 1 --adamw-lr-scale 0.5 --out "$S.adamw"
if [ $RC -ne 0 ] && grep -q "^error: flag --adamw-lr-scale = 0.5 applies to --optim muon only" "$S.adamw.err"; then
    pass "--adamw-lr-scale with --optim adamw: $(oneline "$S.adamw.err")"
else fail "--adamw-lr-scale with --optim adamw: exit $RC, $(oneline "$S.adamw.err")"; fi

finish
