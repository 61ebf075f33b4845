#!/usr/bin/env bash
# tests/test_run_dir.sh: the run directory and its log under things going wrong.
#
#   bash tests/test_run_dir.sh [WORKDIR]
#
# 1. the log: a failed write (log.jsonl on a full device) stops the run with one error line and a checkpoint of
#    that step, and --resume then finishes bit-identically to a straight run; a real full disk (a small tmpfs,
#    where root may mount one) ends with an error, never a signal, and leaves a checkpoint that resumes exactly;
#    sample text with bytes that are not UTF-8 still gives strict UTF-8 JSON; a partial last line (a record cut
#    short) is dropped by --resume.
# 2. the directory: an --out longer than 511 characters is refused (it used to be cut: the run landed elsewhere);
#    a second trainer on a busy --out is refused (--resume and --overwrite alike) while the first runs on;
#    checkpoint files without their DONE marker (a kill during a write or a prune) are removed by the next
#    prune and by --overwrite.
# Each check prints one PASS/FAIL/SKIP line; the last line is "N passed, N failed, N skipped".
. "$(dirname "$0")/lib.sh" run_dir "$@"

D=$W/data
mkdir -p "$D"
"$PY" data/shard_tool.py write "$D/train_0.bin" --random 20000 --vocab 4096 --seed 1 > /dev/null
"$PY" data/shard_tool.py write "$D/val_0.bin" --random 4000 --vocab 4096 --seed 2 > /dev/null
RUN=(--model k2-l1 --batch-size 2 --seq-len 32 --threads 2 --peak-gflops 100 --tokenizer /nonexistent
     --train-data "$D/train_*.bin" --val-data "$D/val_*.bin" --val-every 0 --sample-every 0)
# trainer PREFIX ARGS...: runs the trainer (hang guard 120 s); output in PREFIX.out/.err; exit code in RC
trainer() { local p=$1; shift; timeout 120 "$BIN" "$@" > "$p.out" 2> "$p.err" < /dev/null; RC=$?; }
oneline() { head -c 300 "$1" | tr '\n' ' '; }
same_file() { cmp -s "$1" "$2"; }

# the straight run every resumed one must equal: 8 steps, checkpoints every 2
trainer "$W/straight" "${RUN[@]}" --steps 8 --ckpt-every 2 --ckpt-keep 0 --out "$W/straight"
[ $RC -eq 0 ] || { fail "straight run: exit $RC: $(oneline "$W/straight.err")"; finish; }
FINAL=$W/straight/model_00000008.bin

# ---- 1. the log
# log.jsonl on /dev/full: every write fails with ENOSPC while the checkpoints still have room
# (the run is the straight one stopped at step 4: its checkpoints after 4 lose their markers)
cp -r "$W/straight" "$W/full"; rm "$W/full/DONE_00000006" "$W/full/DONE_00000008"
mv "$W/full/log.jsonl" "$W/full_log.jsonl"; ln -s /dev/full "$W/full/log.jsonl"
trainer "$W/full2" "${RUN[@]}" --steps 8 --ckpt-every 2 --ckpt-keep 0 --out "$W/full" --resume
nerr=$(grep -c . "$W/full2.err")
if [ $RC -eq 1 ] && [ "$nerr" -eq 1 ] && grep -q "^error: .*log.jsonl failed: No space left on device.*checkpoint of step 5" "$W/full2.err" \
   && [ -f "$W/full/DONE_00000005" ]; then
    pass "log write fails (ENOSPC): exit 1 after step 5 with a checkpoint of it: $(cat "$W/full2.err")"
else
    fail "log write fails: exit $RC, $nerr stderr lines (want 1, exit 1, a checkpoint of step 5): $(oneline "$W/full2.err")"
fi
rm "$W/full/log.jsonl"; mv "$W/full_log.jsonl" "$W/full/log.jsonl"
trainer "$W/full3" "${RUN[@]}" --steps 8 --ckpt-every 2 --ckpt-keep 0 --out "$W/full" --resume
if [ $RC -eq 0 ] && same_file "$FINAL" "$W/full/model_00000008.bin" && same_file "$W/straight/state_00000008_r0.bin" "$W/full/state_00000008_r0.bin"; then
    pass "after the log failure, --resume from step 5 ends byte-identical to the straight run"
else
    fail "resume after the log failure: exit $RC, final model/state differ or missing: $(oneline "$W/full3.err")"
fi

# a real full disk: a tmpfs with room for three checkpoints of k2-l1 (7 MB each), all kept
T=$W/tmpfs
mkdir -p "$T"
if mount -t tmpfs -o size=26m tmpfs "$T" 2>/dev/null; then
    trap 'umount "$T" 2>/dev/null' EXIT
    trainer "$W/disk1" "${RUN[@]}" --steps 8 --ckpt-every 1 --ckpt-keep 0 --out "$T/run"  # 7 MB a checkpoint
    nerr=$(grep -c "^error: " "$W/disk1.err")
    last=$(ls "$T/run" | sed -n 's/^DONE_0*\([0-9]\+\)$/\1/p' | sort -n | tail -1)
    if [ $RC -ge 1 ] && [ $RC -lt 128 ] && [ "$nerr" -eq 1 ] && [ -n "$last" ]; then
        pass "full tmpfs: exit $RC, newest complete checkpoint step $last: $(grep -m1 "^error: " "$W/disk1.err" | cut -c1-200)"
        mount -o remount,size=64m "$T"
        trainer "$W/disk2" "${RUN[@]}" --steps 8 --ckpt-every 2 --ckpt-keep 0 --out "$T/run" --resume
        rc8=$RC
        if [ "$last" -le 8 ] && [ $rc8 -eq 0 ] && same_file "$FINAL" "$T/run/model_00000008.bin"; then
            pass "full tmpfs: with room again, --resume from step $last to 8 is byte-identical to the straight run"
        elif [ "$last" -gt 8 ]; then
            fail "full tmpfs: the disk filled only after step $last; the tmpfs is too big for this check"
        else
            fail "full tmpfs: resume from step $last: exit $rc8: $(oneline "$W/disk2.err")"
        fi
        if "$PY" tests/check_logs.py "$T/run" > "$W/disk_logs.txt"; then pass "full tmpfs: the log is whole records only after the resume"
        else fail "full tmpfs: log: $(grep FAIL "$W/disk_logs.txt" | head -2)"; fi
    else
        fail "full tmpfs: exit $RC (want 1..127), $nerr error lines (want 1), newest checkpoint '${last}': $(oneline "$W/disk1.err")"
    fi
    umount "$T"; trap - EXIT
else
    skip "full disk on a real file system: cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)"
fi

# sample text that is not UTF-8: a tokenizer whose pieces are invalid byte sequences
"$PY" - "$W/bad_utf8_tok.bin" <<'PY'
import struct, sys
bad = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"ok\x80", b"\xe2\x82\xac", b"\x7f"]
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<256i", 20240328, 2, 4096, 1, *([0] * 252)))
    for i in range(4096):
        p = bad[i % len(bad)]
        f.write(bytes([len(p)]) + p)
PY
trainer "$W/utf8" "${RUN[@]}" --steps 3 --sample-every 1 --sample-tokens 24 --tokenizer "$W/bad_utf8_tok.bin" --out "$W/utf8"
if [ $RC -eq 0 ] && grep -q '"type":"sample"' "$W/utf8/log.jsonl" && "$PY" tests/check_logs.py "$W/utf8" > "$W/utf8_check.txt"; then
    pass "samples of invalid UTF-8 pieces: the log is strict UTF-8 JSON ($(grep -c '"type":"sample"' "$W/utf8/log.jsonl") sample records)"
else
    fail "samples of invalid UTF-8 pieces: exit $RC: $(grep FAIL "$W/utf8_check.txt" | head -1 | cut -c1-200) $(oneline "$W/utf8.err")"
fi

# a partial last line (a record cut short by a kill) goes on --resume
cp -r "$W/straight" "$W/partial"
rm "$W/partial/DONE_00000008" "$W/partial/DONE_00000006"
printf '{"type":"step","step":7,"loss":4.1' >> "$W/partial/log.jsonl"
trainer "$W/partial" "${RUN[@]}" --steps 8 --ckpt-every 2 --ckpt-keep 0 --out "$W/partial" --resume
if [ $RC -eq 0 ] && grep -q "partial record" "$W/partial.err" && "$PY" tests/check_logs.py "$W/partial" > /dev/null; then
    pass "a partial last log line is dropped on --resume: $(grep -m1 warning "$W/partial.err" | cut -c1-160)"
else
    fail "partial last log line: exit $RC: $(oneline "$W/partial.err")"
fi

# ---- 2. the directory
LONG=$W/$(printf 'd%.0s' $(seq 1 600))
trainer "$W/long" "${RUN[@]}" --steps 2 --out "$LONG"
cut511=${LONG:0:511}
if [ $RC -eq 1 ] && grep -q "^error: flag --out is 6[0-9][0-9] characters long; at most 511" "$W/long.err" && [ ! -e "$cut511" ] && [ ! -e "$LONG" ]; then
    pass "--out of ${#LONG} characters is refused, nothing created: $(cat "$W/long.err")"
else
    fail "--out of ${#LONG} characters: exit $RC, $( [ -e "$cut511" ] && echo "the run landed in the cut path ${#cut511} chars; ")$(oneline "$W/long.err")"
fi
rm -rf "$cut511" 2>/dev/null

# a second trainer on a busy --out
# (started directly, so $! is the trainer itself, the process kill -9 must hit; a watchdog stands in for timeout;
# --steps far beyond what it reaches, so it is still running, however fast the machine, when the second one starts)
"$BIN" "${RUN[@]}" --steps 100000 --ckpt-every 1 --ckpt-keep 2 --out "$W/busy" > "$W/busy.out" 2> "$W/busy.err" < /dev/null &
first=$!
( sleep 300; kill -9 $first 2>/dev/null ) > /dev/null 2>&1 &
watchdog=$!
for _ in $(seq 1 200); do [ -f "$W/busy/DONE_00000002" ] && break; sleep 0.1; done
for mode in --resume --overwrite; do
    t0=$(date +%s)
    trainer "$W/second" "${RUN[@]}" --steps 100000 --ckpt-every 1 --ckpt-keep 2 --out "$W/busy" $mode
    if [ $RC -eq 1 ] && grep -q "^error: --out $W/busy is in use by another trainer (pid [0-9]* holds $W/busy/train_moe.lock)" "$W/second.err" && kill -0 $first 2>/dev/null; then
        pass "second trainer with $mode on a busy --out: refused after $(( $(date +%s) - t0 ))s, the first runs on: $(cut -c1-150 "$W/second.err")"
    else
        fail "second trainer with $mode: exit $RC: $(oneline "$W/second.err")"
    fi
done
kill -9 $first 2>/dev/null; wait $first 2>/dev/null; kill $watchdog 2>/dev/null
if [ -f "$W/busy/log.jsonl" ] && [ -n "$(ls "$W/busy" | grep '^DONE_')" ]; then pass "the first trainer's run survived the refused --overwrite"
else fail "the first trainer's run was damaged: $(ls "$W/busy" | tr '\n' ' ')"; fi
# the kernel drops a killed process's lock: a --resume starts (stopped once it has resumed)
timeout 120 "$BIN" "${RUN[@]}" --steps 100000 --ckpt-every 1 --ckpt-keep 2 --out "$W/busy" --resume > "$W/busy_resume.out" 2> "$W/busy_resume.err" < /dev/null &
again=$!
for _ in $(seq 1 300); do grep -q "resumed from step" "$W/busy_resume.out" && break; kill -0 $again 2>/dev/null || break; sleep 0.1; done
if grep -q "resumed from step" "$W/busy_resume.out"; then pass "after a kill -9 of the lock holder, --resume runs: $(grep -m1 "resumed from" "$W/busy_resume.out")"
else fail "--resume after kill -9 of the lock holder: $(oneline "$W/busy_resume.err")"; fi
kill $again 2>/dev/null; wait $again 2>/dev/null

# orphans: checkpoint files with no DONE marker
cp -r "$W/straight" "$W/orphans"
rm "$W/orphans/DONE_00000008" "$W/orphans/DONE_00000006"          # as if killed while pruning
cp "$W/orphans/model_00000004.bin" "$W/orphans/model_00000005.bin.tmp"   # as if killed while writing
touch "$W/orphans/state_00000007_r0.bin.tmp" "$W/orphans/KEEP_00000003" "$W/orphans/DONE_00000009.tmp"
trainer "$W/orphans" "${RUN[@]}" --steps 8 --ckpt-every 2 --ckpt-keep 2 --out "$W/orphans" --resume
left=$(ls "$W/orphans" | grep -E '^(model|state|DONE|KEEP)_' | tr '\n' ' ')
want="DONE_00000006 DONE_00000008 model_00000006.bin model_00000008.bin state_00000006_r0.bin state_00000008_r0.bin "
if [ $RC -eq 0 ] && [ "$left" = "$want" ]; then pass "orphan checkpoint files go at the next prune: left [$left]"
else fail "orphans after a pruning run: exit $RC, left [$left], want [$want]"; fi
cp "$W/orphans/model_00000006.bin" "$W/orphans/model_00000011.bin"; touch "$W/orphans/state_00000013_r0.bin.tmp" "$W/orphans/replay_2_4.jsonl"
trainer "$W/orphans_ow" "${RUN[@]}" --steps 2 --ckpt-every 0 --out "$W/orphans" --overwrite
left=$(ls "$W/orphans" | grep -E '^(model|state|DONE|KEEP|replay)_' | tr '\n' ' ')
want="DONE_00000002 model_00000002.bin state_00000002_r0.bin "
if [ $RC -eq 0 ] && [ "$left" = "$want" ]; then pass "--overwrite removes the earlier run whole, orphans and replay logs too: left [$left]"
else fail "--overwrite: exit $RC, left [$left], want [$want]"; fi

# every log this test wrote
if "$PY" tests/check_logs.py "$W" > "$W/all_logs.txt"; then pass "$(grep PASS "$W/all_logs.txt")"
else fail "logs: $(grep FAIL "$W/all_logs.txt" | head -3 | tr '\n' ' ')"; fi
finish
