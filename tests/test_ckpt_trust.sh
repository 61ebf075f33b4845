#!/usr/bin/env bash
# tests/test_ckpt_trust.sh: a damaged checkpoint is never trusted.
#
#   bash tests/test_ckpt_trust.sh [WORKDIR]        (TRAIN_MOE_BIN=path: test another build of the trainer)
#
# A 6-step run keeps checkpoints 4 and 6. For each kind of damage to checkpoint 6 (a flipped exponent bit in a
# weight, a NaN weight under a correct checksum, a spike window of 0, a spike ring head or count out of range,
# step -5, a huge data cursor, a negative Adam second moment, a truncated file, a flipped byte in a state file),
# --resume must warn "warning: checkpoint: FILE: CHECK; falling back to step 4", resume from step 4, and end
# with a model file byte-identical to the straight run's. Version 1 files (no checksum) still load, with a
# warning, and are still range-checked. When every checkpoint is damaged, --resume refuses with "error:" and a
# non-zero exit below 128 (no crash). With 2 MPI ranks, a damaged rank-1 state file makes both ranks fall back.
# Damage under a correct checksum is written by tests/ckpt_tool.py, which knows the file layout.
. "$(dirname "$0")/lib.sh" ckpt_trust "$@"
if [ ! -x "$BIN" ]; then
    make -s CUDA=0 train_moe >"$W/make.log" 2>&1 || { fail "build: make train_moe failed: $(tail -n 3 "$W/make.log" | tr '\n' ' ')"; finish; }
fi
TOOL=("$PY" tests/ckpt_tool.py)

D=$W/data
mkdir -p "$D"
"$PY" data/shard_tool.py write "$D/train_0.bin" --random 12000 --vocab 4096 --seed 1 >/dev/null &&
"$PY" data/shard_tool.py write "$D/val_0.bin" --random 4000 --vocab 4096 --seed 3 >/dev/null ||
    { fail "fixture: shard_tool.py write"; finish; }
RUN=(--model k2-l1 --batch-size 2 --seq-len 32 --threads 2 --peak-gflops 100 --tokenizer /nonexistent
     --train-data "$D/train_*.bin" --val-data "$D/val_*.bin" --val-every 0 --sample-every 0
     --steps 6 --ckpt-every 2 --ckpt-keep 2)
M4=model_00000004.bin; M6=model_00000006.bin; S4=state_00000004_r0.bin; S6=state_00000006_r0.bin

# trainer PREFIX ARGS...: runs the trainer (hang guard 120 s); stdout/stderr to PREFIX.out/.err; exit code in RC
trainer() {
    local p=$1; shift
    timeout 120 "$BIN" "$@" >"$p.out" 2>"$p.err"
    RC=$?
}
oneline() { head -c 400 "$1" | tr '\n' ' '; }

REF=$W/ref
trainer "$REF" "${RUN[@]}" --out "$REF"
if [ $RC -ne 0 ] || [ ! -f "$REF/DONE_00000004" ] || [ ! -f "$REF/DONE_00000006" ]; then
    fail "reference run: exit $RC, $(oneline "$REF.err")"
    finish
fi
pass "reference run: 6 steps, checkpoints 4 and 6 kept"

# damaged NAME FILE CHECK_REGEX TOOL_ARGS...: copies the reference run, damages FILE of checkpoint 6 with
# ckpt_tool.py, resumes; expects the fallback warning naming FILE and the check, and the straight run's model
damaged() {
    local name=$1 file=$2 check=$3; shift 3
    ncase=$((ncase + 1))
    local c=$W/case$ncase
    rm -rf "$c"; cp -r "$REF" "$c"
    if ! "${TOOL[@]}" "$1" "$c/$file" "${@:2}" >"$c.tool" 2>&1; then
        fail "$name: ckpt_tool.py $*: $(oneline "$c.tool")"; return
    fi
    trainer "$c" "${RUN[@]}" --out "$c" --resume
    local warn
    warn=$(grep -E "^warning: checkpoint: $c/$file: .*$check.*; falling back to step 4$" "$c.err" | head -1)
    if [ $RC -ne 0 ]; then
        fail "$name: resume exit $RC, $(oneline "$c.err")"
    elif [ -z "$warn" ]; then
        fail "$name: no fallback warning naming $file and /$check/; stderr: $(oneline "$c.err")"
    elif ! grep -q "resumed from step 4" "$c.out"; then
        fail "$name: did not resume from step 4: $(grep resumed "$c.out")"
    elif ! cmp -s "$REF/$M6" "$c/$M6"; then
        fail "$name: fell back, but the final model differs from the straight run's"
    else
        pass "$name: '${warn:0:160}', then equals the straight run"
    fi
}

echo "# damage to the newest checkpoint: fall back to the previous one"
ncase=0
damaged "weight exponent bit" $M6 "checksum mismatch" flip "weight[1000]" 30
damaged "NaN weight, checksum correct" $M6 "weight 1000 of [0-9]+ is not finite" set "weight[1000]" nan
damaged "NaN router bias, checksum correct" $M6 "router bias 3 is not finite" set "bias[3]" nan
damaged "spike window 0" $S6 "spike window 0 outside" set spikes.window 0
damaged "spike ring head out of range" $S6 "spike ring head 5000 outside" set spikes.head 5000
damaged "spike ring count out of range" $S6 "spike ring count 5000 outside" set spikes.count 5000
damaged "negative step" $S6 "step -5 is negative" set step -5
damaged "huge data cursor" $S6 "data cursor 4611686018427387904 is past the training data" set data_cursor 4611686018427387904
damaged "negative Adam second moment" $S6 "Adam second moment 7 is -1" set "adamw_v[7]" -1
damaged "NaN Adam first moment" $S6 "Adam first moment 9 is not finite" set "adamw_m[9]" nan
damaged "update count past the step" $S6 "optimizer update count 99 outside" set opt_t 99
damaged "truncated state file" $S6 "truncated" truncate 1000
damaged "truncated model file" $M6 "truncated" truncate 8
damaged "flipped byte in a state file" $S6 "checksum mismatch" flipbyte 300000

# Muon: its momentum is checked too (a reference run of its own)
MREF=$W/ref_muon
trainer "$MREF" "${RUN[@]}" --optim muon --out "$MREF"
if [ $RC -ne 0 ] || [ ! -f "$MREF/DONE_00000006" ]; then
    fail "Muon reference run: exit $RC, $(oneline "$MREF.err")"
else
    REF_SAVED=$REF; REF=$MREF; RUN_SAVED=("${RUN[@]}"); RUN=("${RUN[@]}" --optim muon)
    damaged "NaN Muon momentum" $S6 "Muon momentum 11 is not finite" set "muon_m[11]" nan
    REF=$REF_SAVED; RUN=("${RUN_SAVED[@]}")
fi

echo "# version 1 files (older builds, no checksum)"
c=$W/v1
rm -rf "$c"; cp -r "$REF" "$c"; rm -f "$c"/*00000006*
"${TOOL[@]}" downgrade "$c/$M4" && "${TOOL[@]}" downgrade "$c/$S4" || fail "v1: ckpt_tool.py downgrade"
trainer "$c" "${RUN[@]}" --out "$c" --resume
if [ $RC -eq 0 ] && grep -q "^warning: checkpoint: $c/$M4 is version 1 .*no checksum" "$c.err" &&
        grep -q "resumed from step 4" "$c.out" && cmp -s "$REF/$M6" "$c/$M6"; then
    pass "v1 checkpoint: loads with a no-checksum warning, then equals the straight run"
else
    fail "v1 checkpoint: exit $RC, $(oneline "$c.err")"
fi
c=$W/v1nan
rm -rf "$c"; cp -r "$REF" "$c"
"${TOOL[@]}" downgrade "$c/$M6" && "${TOOL[@]}" downgrade "$c/$S6" && "${TOOL[@]}" set "$c/$M6" "weight[5]" inf ||
    fail "v1 + inf weight: ckpt_tool.py"
trainer "$c" "${RUN[@]}" --out "$c" --resume
if [ $RC -eq 0 ] && grep -qE "^warning: checkpoint: $c/$M6: weight 5 of [0-9]+ is not finite.*falling back to step 4$" "$c.err" &&
        cmp -s "$REF/$M6" "$c/$M6"; then
    pass "v1 checkpoint with an inf weight: range-checked without a checksum, falls back, equals the straight run"
else
    fail "v1 checkpoint with an inf weight: exit $RC, $(oneline "$c.err")"
fi

echo "# every checkpoint damaged: refuse"
c=$W/allbad
rm -rf "$c"; cp -r "$REF" "$c"
"${TOOL[@]}" set "$c/$S6" spikes.window 0 && "${TOOL[@]}" set "$c/$S4" "adamw_v[0]" -3 || fail "all bad: ckpt_tool.py"
before=$(md5sum "$c"/* | sort)
trainer "$c" "${RUN[@]}" --out "$c" --resume
if [ $RC -ne 0 ] && [ $RC -lt 128 ] && [ "$(wc -l <"$c.err")" -eq 2 ] &&
        grep -q "^warning: checkpoint: $c/$S6: spike window 0.*falling back to step 4" "$c.err" &&
        grep -q "^error: checkpoint: $c/$S4: Adam second moment 0 is -3.*no usable checkpoint is left" "$c.err" &&
        [ "$before" = "$(md5sum "$c"/* | sort)" ]; then
    pass "every checkpoint damaged: exit $RC, '$(grep '^error' "$c.err" | head -c 120)', nothing changed in --out"
else
    fail "every checkpoint damaged: exit $RC, $(oneline "$c.err")"
fi

# --replay S0:S1 needs checkpoint S0 itself: a damaged one is an error, not a fallback
c=$W/replay_bad
rm -rf "$c"; cp -r "$REF" "$c"
"${TOOL[@]}" set "$c/$S4" spikes.count -1 || fail "replay: ckpt_tool.py"
trainer "$c" "${RUN[@]}" --out "$c" --replay 4:6
if [ $RC -ne 0 ] && [ $RC -lt 128 ] && [ "$(wc -l <"$c.err")" -eq 1 ] &&
        grep -q "^error: checkpoint: $c/$S4: spike ring count -1 outside" "$c.err" && [ ! -e "$c/replay_4_6.jsonl" ]; then
    pass "--replay 4:6 from a damaged checkpoint 4: exit $RC, one error line naming the file and the check"
else
    fail "--replay 4:6 from a damaged checkpoint 4: exit $RC, $(oneline "$c.err")"
fi

echo "# two MPI ranks: a damaged rank-1 state file makes both ranks fall back"
if ! command -v mpirun >/dev/null || ! grep -q USE_MPI build/.flags 2>/dev/null; then
    skip "2 ranks: mpirun or an MPI build is missing"
else
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    MPIRUN=(timeout 180 mpirun --allow-run-as-root --oversubscribe --mca btl self,vader -np 2)
    RUN2=("${RUN[@]}" --threads 1)  # the last --threads wins: two ranks share the cores
    R2=$W/ref2
    "${MPIRUN[@]}" "$BIN" "${RUN2[@]}" --out "$R2" >"$R2.out" 2>"$R2.err"; RC=$?
    if [ $RC -ne 0 ] || [ ! -f "$R2/state_00000006_r1.bin" ]; then
        fail "2 ranks: reference run exit $RC, $(oneline "$R2.err")"
    else
        c=$W/mpi_bad
        rm -rf "$c"; cp -r "$R2" "$c"
        "${TOOL[@]}" set "$c/state_00000006_r1.bin" "adamw_v[3]" -2
        "${MPIRUN[@]}" "$BIN" "${RUN2[@]}" --out "$c" --resume >"$c.out" 2>"$c.err"; RC=$?
        if [ $RC -eq 0 ] && grep -q "warning: checkpoint: $c/state_00000006_r1.bin: Adam second moment 3 is -2.*falling back to step 4" "$c.err" &&
                [ "$(grep -c '^warning: checkpoint' "$c.err")" -eq 1 ] && cmp -s "$R2/$M6" "$c/$M6"; then
            pass "2 ranks: rank 1's damaged state file named once, both ranks fall back, equals the straight 2-rank run"
        else
            fail "2 ranks, damaged rank-1 state: exit $RC, $(oneline "$c.err")"
        fi
        c=$W/mpi_allbad
        rm -rf "$c"; cp -r "$R2" "$c"
        "${TOOL[@]}" set "$c/state_00000006_r1.bin" spikes.head 9999 && "${TOOL[@]}" set "$c/state_00000004_r0.bin" step -5
        "${MPIRUN[@]}" "$BIN" "${RUN2[@]}" --out "$c" --resume >"$c.out" 2>"$c.err"; RC=$?
        if [ $RC -ne 0 ] && [ $RC -lt 128 ] && grep -q "error: .*state_00000004_r0.bin: step -5 .*no usable checkpoint" "$c.err" &&
                grep -q "warning: checkpoint: .*state_00000006_r1.bin: spike ring head 9999" "$c.err"; then
            pass "2 ranks, every checkpoint damaged: refused with exit $RC, both damaged files named"
        else
            fail "2 ranks, every checkpoint damaged: exit $RC, $(oneline "$c.err")"
        fi
    fi
fi
finish
