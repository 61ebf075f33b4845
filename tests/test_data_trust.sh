#!/usr/bin/env bash
# tests/test_data_trust.sh: the data files are not trusted (shards and tokenizer.bin).
#
#   bash tests/test_data_trust.sh [WORKDIR]          (TRAIN_MOE_BIN=path: test another build of the trainer)
#
# 1. tokenizer.bin: a separator id outside the vocab (it starts every sample), a piece length running past the
#    end, trailing bytes, a bad vocab size, a truncated header, a FIFO or a directory: each exits 1 with one
#    stderr line "error: ..." naming the file, before --out is created (samples every step, so a bad separator
#    that got through would be used at step 1). A missing file still means "no tokenizer".
# 2. shards that are not regular files: a FIFO matched by --train-data is refused without blocking.
# 3. a shard changed while training runs: shortened past a page (SIGBUS on the old reader), shortened within its
#    last page (zeros, no fault), rewritten in place with ids >= vocab, a validation shard emptied. The trainer
#    ends with "error: data: FILE changed while training", exit 1; for the training shard with a complete
#    checkpoint of the last completed step, byte-identical to a straight run's checkpoint of that step (sampling
#    every step: the sampler's generator is part of it), and --resume after restoring the file ends on the
#    straight run's final model. The same on 2 ranks under mpirun (--ep 2, 2 micro-batches per step), where only
#    rank 1's shard is cut: both ranks end within seconds.
# Each check prints one PASS/FAIL/SKIP line; the last line is "N passed, N failed, N skipped".
. "$(dirname "$0")/lib.sh" data_trust "$@"
need_trainer

D=$W/data
mkdir -p "$D"
tool() { "$PY" data/shard_tool.py "$@" >/dev/null || { fail "fixture: shard_tool.py $*"; finish; }; }
tool write "$D/train_0.bin" --random 12000 --vocab 4096 --seed 1
tool write "$D/val_0.bin" --random 4000 --vocab 4096 --seed 3
tool write "$D/small.bin" --random 1500 --vocab 4096 --seed 4   # 4024 bytes: the whole file in one page

FAST=(--model k2-l1 --batch-size 2 --seq-len 32 --threads 2 --peak-gflops 100 --val-every 0 --sample-every 0)
oneline() { head -c 400 "$1" | tr '\n' ' '; }
# trainer PREFIX ARGS...: runs the trainer (hang guard 20 s); stdout/stderr to PREFIX.out/.err; exit code in RC
trainer() {
    local p=$1; shift
    timeout 20 "$BIN" "$@" >"$p.out" 2>"$p.err"
    RC=$?
}
# why_bad RC ERRFILE NEEDLE: empty when the run exited 1 with one stderr line "error: ..." containing NEEDLE
why_bad() {
    local why="" n first
    if [ "$1" -eq 0 ]; then why+="exit 0; "
    elif [ "$1" -eq 124 ]; then why+="hung (killed after 20 s); "
    elif [ "$1" -gt 128 ]; then why+="crashed (exit $1, signal $(($1 - 128))); "
    elif [ "$1" -ne 1 ]; then why+="exit $1, expected 1; "; fi
    n=$(grep -c . "$2"); first=$(grep -m1 . "$2")
    [ "$n" -eq 1 ] || why+="stderr has $n lines, expected 1; "
    case "$first" in "error: "*) ;; *) why+="stderr does not start with 'error: '; " ;; esac
    grep -qF -- "$3" "$2" || why+="the error does not name $3; "
    echo "$why"
}

# ---------------------------------------------------------------------------------------------------------------
# 1. tokenizer.bin

echo "# tokenizer.bin: exit 1, one 'error:' line naming the file, --out not created (samples every step)"
TK=$D/tok
mkdir -p "$TK"
tool tokenizer "$TK/good.bin" --vocab 4096
tool tokenizer "$TK/sep_99999999.bin" --vocab 4096 --separator 99999999
tool tokenizer "$TK/sep_minus5.bin" --vocab 4096 --separator -5
tool tokenizer "$TK/sep_minus1.bin" --vocab 4096 --separator -1
tool tokenizer "$TK/sep_4096.bin" --vocab 4096 --separator 4096
tool tokenizer "$TK/last_piece_long.bin" --vocab 4096 --piece-len 4095:200     # 5 bytes left, length says 200
tool tokenizer "$TK/mid_piece_long.bin" --vocab 4096 --piece-len 100:255       # the lengths after it are misread
tool tokenizer "$TK/trailing.bin" --vocab 4096 --append 3
tool tokenizer "$TK/trailing_piece.bin" --vocab 4095 --header-vocab 4094       # one whole piece too many
tool tokenizer "$TK/vocab_0.bin" --vocab 4096 --header-vocab 0
tool tokenizer "$TK/vocab_neg.bin" --vocab 4096 --header-vocab -7
tool tokenizer "$TK/vocab_huge.bin" --vocab 4096 --header-vocab 2147483647
tool tokenizer "$TK/vocab_16M.bin" --vocab 4096 --header-vocab 16777216       # allowed size, far beyond the file
tool tokenizer "$TK/header_cut.bin" --vocab 4096 --header-only --truncate 24
tool tokenizer "$TK/header_only.bin" --vocab 4096 --header-only
mkdir -p "$TK/dir.bin"
mkfifo "$TK/fifo.bin"

ncase=0
tok_error() {  # tok_error DESC FILE
    ncase=$((ncase + 1))
    local p=$W/tok_$ncase out=$W/tok_out_$ncase why
    trainer "$p" "${FAST[@]}" --train-data "$D/train_0.bin" --val-data "" --steps 3 --sample-every 1 \
        --sample-tokens 4 --tokenizer "$2" --out "$out"
    why=$(why_bad $RC "$p.err" "$2")
    [ -e "$out" ] && why+="--out was created ($(ls "$out" | tr '\n' ' ')); "
    if [ -z "$why" ]; then pass "tokenizer $1: exit 1: $(grep -m1 . "$p.err")"
    else fail "tokenizer $1: $why| stderr: $(oneline "$p.err")"; fi
}
tok_error "separator 99999999" "$TK/sep_99999999.bin"
tok_error "separator -5" "$TK/sep_minus5.bin"
tok_error "separator -1 (prepare.py always writes <s>; llm.c its end-of-text id)" "$TK/sep_minus1.bin"
tok_error "separator 4096 = vocab 4096" "$TK/sep_4096.bin"
tok_error "last piece's length runs past the end" "$TK/last_piece_long.bin"
tok_error "a middle piece's length runs on (misreads the rest)" "$TK/mid_piece_long.bin"
tok_error "3 trailing bytes" "$TK/trailing.bin"
tok_error "one whole piece more than the header's vocab" "$TK/trailing_piece.bin"
tok_error "vocab size 0" "$TK/vocab_0.bin"
tok_error "vocab size -7" "$TK/vocab_neg.bin"
tok_error "vocab size 2147483647" "$TK/vocab_huge.bin"
tok_error "vocab size 16777216 in a 24 KB file" "$TK/vocab_16M.bin"
tok_error "header cut to 1000 bytes" "$TK/header_cut.bin"
tok_error "header only, no pieces" "$TK/header_only.bin"
tok_error "a directory" "$TK/dir.bin"
tok_error "a FIFO (would block in open)" "$TK/fifo.bin"
if head -c 1 /etc/shadow >/dev/null 2>&1; then
    skip "tokenizer unreadable (chmod 000): running as uid $(id -u), which reads it anyway"
else
    cp "$TK/good.bin" "$TK/unreadable.bin"; chmod 000 "$TK/unreadable.bin"
    tok_error "unreadable (chmod 000; was taken for a missing file)" "$TK/unreadable.bin"
fi

# the good file and a missing one still work: samples decode, or print ids
trainer "$W/tok_good" "${FAST[@]}" --train-data "$D/train_0.bin" --val-data "" --steps 2 --sample-every 1 \
    --sample-tokens 4 --tokenizer "$TK/good.bin" --out "$W/tok_good"
if [ $RC -eq 0 ] && grep -q "tokenizer $TK/good.bin" "$W/tok_good.out" && grep -q '"type":"sample"' "$W/tok_good/log.jsonl" \
    && grep '"type":"sample"' "$W/tok_good/log.jsonl" | grep -q '"text":"[^"]*t[0-9]'; then
    pass "good tokenizer.bin (4096 pieces, separator 0): loaded, samples decode to its pieces"
else
    fail "good tokenizer.bin: exit $RC, $(oneline "$W/tok_good.err") $(grep -m1 '"type":"sample"' "$W/tok_good/log.jsonl" | cut -c1-200)"
fi
trainer "$W/tok_none" "${FAST[@]}" --train-data "$D/train_0.bin" --val-data "" --steps 2 --sample-every 1 \
    --sample-tokens 4 --tokenizer "$TK/does_not_exist.bin" --out "$W/tok_none"
if [ $RC -eq 0 ] && grep -q "tokenizer (none: samples print token ids)" "$W/tok_none.out"; then
    pass "missing tokenizer.bin: no tokenizer, samples print ids (as before)"
else
    fail "missing tokenizer.bin: exit $RC, $(oneline "$W/tok_none.err")"
fi

# ---------------------------------------------------------------------------------------------------------------
# 2. a shard that is not a regular file

echo "# shards that are not regular files"
mkdir -p "$D/fifo"
mkfifo "$D/fifo/train_0.bin"
trainer "$W/fifo_shard" "${FAST[@]}" --train-data "$D/fifo/train_*.bin" --val-data "" --steps 2 --tokenizer /nonexistent \
    --out "$W/fifo_shard"
why=$(why_bad $RC "$W/fifo_shard.err" "data: $D/fifo/train_0.bin is not a regular file")
[ -e "$W/fifo_shard" ] && why+="--out was created; "
if [ -z "$why" ]; then pass "a FIFO matched by --train-data: $(grep -m1 . "$W/fifo_shard.err")"
else fail "a FIFO matched by --train-data: $why| stderr: $(oneline "$W/fifo_shard.err")"; fi
trainer "$W/fifo_val" "${FAST[@]}" --train-data "$D/train_0.bin" --val-data "$D/fifo/train_0.bin" --steps 2 \
    --tokenizer /nonexistent --out "$W/fifo_val"
why=$(why_bad $RC "$W/fifo_val.err" "$D/fifo/train_0.bin")
if [ -z "$why" ]; then pass "a FIFO as --val-data: $(grep -m1 . "$W/fifo_val.err")"
else fail "a FIFO as --val-data: $why| stderr: $(oneline "$W/fifo_val.err")"; fi

# ---------------------------------------------------------------------------------------------------------------
# 3. a shard changed while training runs

echo "# a shard changed while training runs"
# cut_during NAME ACTION CMD...: starts CMD (a trainer writing --out $W/NAME), runs ACTION (a shell command) once
# the step-2 checkpoint exists, waits for the end (guard 120 s). Exit code in RC, seconds from ACTION to the end in DT.
cut_during() {
    local name=$1 action=$2; shift 2
    local out=$W/$name t_end
    timeout 120 "$@" >"$out.out" 2>"$out.err" &
    local pid=$!
    t_end=$((SECONDS + 100))
    while [ ! -e "$out/DONE_00000002" ] && [ $SECONDS -lt $t_end ] && kill -0 $pid 2>/dev/null; do sleep 0.02; done
    local t0; t0=$(date +%s.%N)
    eval "$action"
    wait $pid
    RC=$?
    DT=$(echo "$(date +%s.%N) $t0" | awk '{printf "%.1f", $1 - $2}')
}
# stopped_step ERRFILE: S of "checkpoint of step S written"
stopped_step() { sed -nE 's/.*checkpoint of step ([0-9]+) written.*/\1/p' "$1" | head -1; }
ckpt_files() { local s; s=$(printf %08d "$2"); echo "$1/DONE_$s $1/model_$s.bin $(ls "$1"/state_${s}_r*.bin 2>/dev/null | tr '\n' ' ')"; }
# same_ckpt DIR REF STEP: every file of DIR's checkpoint STEP exists and equals REF's
same_ckpt() {
    local s f n=0; s=$(printf %08d "$3")
    [ -e "$1/DONE_$s" ] || return 1
    for f in "$2"/model_$s.bin "$2"/state_${s}_r*.bin; do
        cmp -s "$f" "$1/$(basename "$f")" || return 1
        n=$((n + 1))
    done
    [ $n -ge 2 ]
}

STEPS=24
TR=("${FAST[@]}" --val-data "" --tokenizer /nonexistent --steps $STEPS --sample-every 1 --sample-tokens 4 --total-batch 128)
cp "$D/train_0.bin" "$D/keep.bin"
REF=$W/straight
trainer "$REF" "${TR[@]}" --train-data "$D/keep.bin" --ckpt-every 1 --ckpt-keep 0 --out "$REF"
if [ $RC -ne 0 ] || [ ! -e "$REF/DONE_000000$STEPS" ]; then fail "straight run: exit $RC, $(oneline "$REF.err")"; finish; fi

# shortened past a page: the next read there raises SIGBUS
cp "$D/keep.bin" "$D/cut.bin"
cut_during cut 'truncate -s 2048 "$D/cut.bin"' "$BIN" "${TR[@]}" --train-data "$D/cut.bin" --ckpt-every 2 --out "$W/cut"
C=$W/cut
why=$(why_bad $RC "$C.err" "error: data: $D/cut.bin changed while training")
S=$(stopped_step "$C.err")
if [ -z "$why" ] && [ -n "$S" ]; then pass "shard cut to 2048 bytes while training: exit 1 after ${DT}s: $(grep -m1 . "$C.err")"
else fail "shard cut to 2048 bytes while training: $why| stderr: $(oneline "$C.err")"; fi
last_logged=$(grep '"type":"step"' "$C/log.jsonl" 2>/dev/null | tail -1 | sed -E 's/.*"step":([0-9]+),.*/\1/')
if [ -n "$S" ] && [ "$S" = "$last_logged" ] && same_ckpt "$C" "$REF" "$S"; then
    pass "the checkpoint of step $S (the last one logged) is complete and byte-identical to the straight run's: $(ckpt_files "$C" "$S" | xargs -n1 basename | tr '\n' ' ')"
else
    fail "checkpoint after the cut: step '${S}', last logged step '${last_logged}'; files: $(ls "$C" 2>/dev/null | tr '\n' ' ')"
fi
cp "$D/keep.bin" "$D/cut.bin"
trainer "$C.resume" "${TR[@]}" --train-data "$D/cut.bin" --ckpt-every 2 --resume --out "$C"
if [ $RC -eq 0 ] && [ -n "$S" ] && grep -qx "resumed from step $S" "$C.resume.out" && \
    cmp -s "$REF/model_000000$STEPS.bin" "$C/model_000000$STEPS.bin" && cmp -s "$REF/state_000000${STEPS}_r0.bin" "$C/state_000000${STEPS}_r0.bin"; then
    pass "file restored, --resume from step $S: model and state of step $STEPS byte-identical to the straight run's"
else
    fail "resume after the cut: exit $RC, $(grep -m1 resumed "$C.resume.out"), $(oneline "$C.resume.err")"
fi

# shortened within its last page: the mapping reads zeros there, no fault; the size check sees it
cp "$D/small.bin" "$D/small_cut.bin"
cut_during small 'truncate -s 2000 "$D/small_cut.bin"' "$BIN" "${TR[@]}" --train-data "$D/small_cut.bin" --ckpt-every 2 \
    --out "$W/small"
why=$(why_bad $RC "$W/small.err" "error: data: $D/small_cut.bin changed while training")
if [ -z "$why" ] && [ -n "$(stopped_step "$W/small.err")" ]; then pass "one-page shard cut to 2000 bytes (reads zeros, no SIGBUS): $(grep -m1 . "$W/small.err")"
else fail "one-page shard cut to 2000 bytes: $why| stderr: $(oneline "$W/small.err")"; fi

# rewritten in place, same size, every token 0xFFFF (>= vocab 4096)
cp "$D/keep.bin" "$D/rewrite.bin"
cut_during rewrite \
    'head -c 24000 /dev/zero | tr "\000" "\377" | dd of="$D/rewrite.bin" bs=1024 seek=1 conv=notrunc status=none' \
    "$BIN" "${TR[@]}" --train-data "$D/rewrite.bin" --ckpt-every 2 --out "$W/rewrite"
why=$(why_bad $RC "$W/rewrite.err" "error: data: $D/rewrite.bin changed while training")
if [ -z "$why" ] && [ -n "$(stopped_step "$W/rewrite.err")" ]; then pass "shard rewritten in place with ids 65535: $(grep -m1 . "$W/rewrite.err")"
else fail "shard rewritten in place with ids 65535: $why| stderr: $(oneline "$W/rewrite.err")"; fi

# the validation shard emptied: validation reads its first windows, now past the end
cp "$D/val_0.bin" "$D/val_cut.bin"
cut_during valcut 'truncate -s 0 "$D/val_cut.bin"' \
    "$BIN" "${FAST[@]}" --val-data "$D/val_cut.bin" --val-every 1 --val-batches 1 --tokenizer /nonexistent --steps $STEPS \
    --train-data "$D/train_0.bin" --ckpt-every 2 --out "$W/valcut"
why=$(why_bad $RC "$W/valcut.err" "error: data: $D/val_cut.bin changed while training")
if [ -z "$why" ]; then pass "validation shard emptied while training: $(grep -m1 . "$W/valcut.err")"
else fail "validation shard emptied while training: $why| stderr: $(oneline "$W/valcut.err")"; fi

# 2 ranks, expert parallel (all-to-all inside forward and backward), 2 micro-batches per step; rank 1 reads its
# own copy of the shard (same path, its own working directory, as on two hosts: the ranks' start-up check of their
# settings sees the same file) and only that copy is cut, so only rank 1 sees the failure
if ! command -v mpirun >/dev/null || ! grep -q USE_MPI build/.flags 2>/dev/null; then
    skip "2 ranks: mpirun or an MPI build is missing"
    finish
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN=(mpirun --allow-run-as-root --oversubscribe --mca btl self,vader)
MP=("${FAST[@]}" --threads 1 --val-data "" --tokenizer /nonexistent --steps 16 --sample-every 1 --sample-tokens 4
    --ep 2 --total-batch 256)
mkdir -p "$D/host0" "$D/host1"; cp "$D/keep.bin" "$D/host0/r.bin"; cp "$D/keep.bin" "$D/host1/r.bin"
MREF=$W/mpi_straight
timeout 120 "${MPIRUN[@]}" -np 2 -wdir "$D/host0" "$BIN" "${MP[@]}" --train-data r.bin --ckpt-every 1 --ckpt-keep 0 --out "$MREF" \
    >"$MREF.out" 2>"$MREF.err"
RC=$?
if [ $RC -ne 0 ] || [ ! -e "$MREF/DONE_00000016" ]; then fail "2 ranks, straight run: exit $RC, $(oneline "$MREF.err")"; finish; fi
M=$W/mpi_cut
cut_during mpi_cut 'truncate -s 2048 "$D/host1/r.bin"' \
    "${MPIRUN[@]}" -np 1 -wdir "$D/host0" "$BIN" "${MP[@]}" --train-data r.bin --ckpt-every 2 --out "$M" : \
                   -np 1 -wdir "$D/host1" "$BIN" "${MP[@]}" --train-data r.bin --ckpt-every 2 --out "$M"
msg=$(grep -m1 "error:" "$M.err")
S=$(stopped_step "$M.err")
if [ $RC -ne 0 ] && [ $RC -ne 124 ] && [[ "$msg" == *"[rank 1] data: r.bin changed while training"* ]] && [ -n "$S" ] \
    && awk -v t="$DT" 'BEGIN {exit !(t < 20)}'; then
    pass "2 ranks, rank 1's shard cut: both ranks ended ${DT}s after the cut (exit $RC): $msg"
else
    fail "2 ranks, rank 1's shard cut: exit $RC after ${DT}s, stderr: $(oneline "$M.err")"
fi
if [ -n "$S" ] && [ -e "$M/state_$(printf %08d "$S")_r1.bin" ] && same_ckpt "$M" "$MREF" "$S"; then
    pass "2 ranks: the checkpoint of step $S (model, both ranks' state) is complete and byte-identical to the straight run's"
else
    fail "2 ranks: checkpoint of step '$S' missing or different; files: $(ls "$M" 2>/dev/null | tr '\n' ' ')"
fi
cp "$D/keep.bin" "$D/host1/r.bin"
timeout 120 "${MPIRUN[@]}" -np 1 -wdir "$D/host0" "$BIN" "${MP[@]}" --train-data r.bin --ckpt-every 2 --resume --out "$M" : \
    -np 1 -wdir "$D/host1" "$BIN" "${MP[@]}" --train-data r.bin --ckpt-every 2 --resume --out "$M" >"$M.resume.out" 2>"$M.resume.err"
RC=$?
if [ $RC -eq 0 ] && [ -n "$S" ] && grep -q "resumed from step $S" "$M.resume.out" && same_ckpt "$M" "$MREF" 16; then
    pass "2 ranks: file restored, --resume from step $S: model and both states of step 16 byte-identical to the straight run's"
else
    fail "2 ranks: resume after the cut: exit $RC, $(grep -m1 resumed "$M.resume.out"), $(oneline "$M.resume.err")"
fi

finish
