#!/usr/bin/env bash
# tests/run_asan.sh: the C tests and the trainer's shell tests against the AddressSanitizer + UBSan build in
# build-asan/ (`make test-asan` builds it, then runs this). The shell tests run build-asan/train_moe through
# TRAIN_MOE_BIN (tests/lib.sh). Ends with the total "N passed, N failed" like tests/run_tests.sh.
#
# Sanitizer reports go to files (log_path), not only to stderr: a bad-input test that expects a non-zero exit, or
# one that discards the trainer's stderr, would otherwise take a sanitizer's abort for the expected failure. After
# each suite any report file is shown and counted as a failure.
# Leaks: LeakSanitizer is on for the C tests and for one clean trainer run (train, checkpoint, resume, validate,
# sample; it must exit 0 with no report). It is off for the trainer's shell tests: most of their runs end in fatal(),
# whose exit(1) comes from deep inside a function, and at -O1 the buffers of that function that only its dead
# locals still point to look leaked (seen: train_moe.c's step buffers on the "non-finite steps in a row" stop).
# Those are not leaks (the process is ending) and nothing in the code should bend to hide them.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=/usr/bin/python3
TMP=$(mktemp -d /tmp/train_moe_asan.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
. tests/suite.sh
START=$(date +%s)

export TRAIN_MOE_BIN=$ROOT/build-asan/train_moe
export SPM_ENCODE_BIN=$ROOT/build-asan/tests/spm_encode  # tests/test_eval.sh's prompt encoder filter
REPORTS=$TMP/reports
mkdir -p "$REPORTS"
# halt on the first error, report to REPORTS/asan.PID (and ubsan.PID); LeakSanitizer: see leak_check below
export ASAN_OPTIONS="log_path=$REPORTS/asan:detect_leaks=1:leak_check_at_exit=1:exitcode=86"
export UBSAN_OPTIONS="log_path=$REPORTS/ubsan:print_stacktrace=1:halt_on_error=1"
# clang's OpenMP runtime (libomp) runs our parallel regions, while Debian's OpenBLAS uses gcc's (libgomp), which
# cannot see that it is called inside one: one BLAS thread keeps them from multiplying (2 x 2 threads on 2 cores)
export OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive OPENBLAS_NUM_THREADS=1

for b in "$TRAIN_MOE_BIN" "$SPM_ENCODE_BIN" build-asan/tests/test_gradcheck build-asan/tests/test_muon build-asan/tests/test_parity \
         build-asan/tests/asan_canary; do
    [ -x "$b" ] || { echo "FAIL $b is not built (make asan)"; echo "0 passed, 1 failed"; exit 1; }
done

# sanitized NAME CMD...: one suite (run, tests/suite.sh), then any sanitizer report it left is a failure
sanitized() {
    local name=$1; shift
    run "$name (asan+ubsan)" "$@"
    local r n=0
    for r in "$REPORTS"/*; do
        [ -f "$r" ] || continue
        n=$((n + 1))
        echo "---- $r"
        head -n 60 "$r"
        mv "$r" "$TMP/seen_$(basename "$r")"
    done
    if [ "$n" -gt 0 ]; then
        echo "FAIL $name: $n sanitizer reports (above)"
        failed=$((failed + 1))
    else
        echo "PASS $name: no sanitizer report"
        passed=$((passed + 1))
    fi
}

# first, that a finding would be seen: a planted heap overflow, signed overflow and leak must each leave a report
# and a non-zero exit
echo "==== the sanitizers are live"
for kind in heap ubsan leak; do
    build-asan/tests/asan_canary "$kind" > /dev/null 2>&1
    rc=$?
    nrep=$(ls "$REPORTS" | wc -l)
    if [ "$rc" -ne 0 ] && [ "$nrep" -ge 1 ] && grep -qE "heap-buffer-overflow|signed integer overflow|detected memory leaks" "$REPORTS"/*; then
        echo "PASS canary: a planted $kind error is reported ($(grep -ohE 'heap-buffer-overflow|signed integer overflow|detected memory leaks' "$REPORTS"/* | head -n 1), exit $rc)"
        passed=$((passed + 1))
    else
        echo "FAIL canary: a planted $kind error went unseen (exit $rc, $nrep report files): ASAN_OPTIONS/UBSAN_OPTIONS or the build flags are wrong"
        failed=$((failed + 1))
    fi
    rm -f "$REPORTS"/*
done

# the C tests: every op's backward against finite differences, Muon and QK-Clip, the model against the reference
sanitized gradcheck build-asan/tests/test_gradcheck
sanitized muon build-asan/tests/test_muon
# (three of the configurations tests/run_tests.sh checks: AdamW; Muon + QK-Clip clipping heads; K2's routing shape
# with the Polar Express table)
parity() {  # parity NAME REFERENCE_ARGS...: the float64 reference writes a debug state, the C model must match it
    local name=$1; shift
    if $PY dev/ref/model_ref.py "$@" --out "$TMP/ref_$name.bin" > "$TMP/ref_$name.log" 2>&1; then
        sanitized "parity ($name)" build-asan/tests/test_parity "$TMP/ref_$name.bin"
    else
        cat "$TMP/ref_$name.log"
        echo "FAIL parity ($name): dev/ref/model_ref.py $* failed (torch and numpy come with scripts/deps.sh test)"
        failed=$((failed + 1))
    fi
}
parity adamw
parity muonclip --config tiny_muon
parity k2-routing-muon --config k2route --optim muon --ns polar --muon_router 0 --qk_clip_tau 0.6

# the trainer's shell tests: end to end, resume, bad input (flags, data, checkpoints, the run directory), the
# spike lab. The list to extend: each one named
# here must exist (a missing one is a failure, not a skip).
SHELL_TESTS="test_cli test_spikes test_ckpt_trust test_data_trust test_run_dir test_eval test_hf"
# one clean run with leak detection: must exit 0 and leave no report
leak_run() {
    local D=$TMP/leakrun out=$TMP/leakrun.out
    mkdir -p "$D"
    $PY data/shard_tool.py write "$D/train_0.bin" --random 8000 --vocab 4096 --seed 1 > /dev/null &&
        $PY data/shard_tool.py write "$D/val_0.bin" --random 2000 --vocab 4096 --seed 2 > /dev/null ||
        { echo "FAIL leak run: data/shard_tool.py write"; echo "0 passed, 1 failed"; return 1; }
    local args=(--model k2-l1 --batch-size 2 --seq-len 32 --threads 2 --peak-gflops 100 --tokenizer /nonexistent
                --train-data "$D/train_0.bin" --val-data "$D/val_0.bin" --val-every 2 --val-batches 1
                --sample-every 3 --sample-tokens 8 --ckpt-every 2 --ckpt-keep 1 --out "$D/run")
    local rc1 rc2 rc3
    timeout 300 "$TRAIN_MOE_BIN" "${args[@]}" --steps 4 > "$out" 2>&1; rc1=$?
    timeout 300 "$TRAIN_MOE_BIN" "${args[@]}" --steps 6 --resume >> "$out" 2>&1; rc2=$?
    timeout 300 "$TRAIN_MOE_BIN" "${args[@]}" --eval --dump-logits "$D/logits.bin" >> "$out" 2>&1; rc3=$?
    if [ "$rc1" -eq 0 ] && [ "$rc2" -eq 0 ] && [ "$rc3" -eq 0 ]; then
        echo "PASS leak run: 4 steps, then --resume to 6 (validation, samples, checkpoints), then --eval; all exit 0"
        echo "1 passed, 0 failed"
    else
        tail -n 5 "$out"
        echo "FAIL leak run: exit codes $rc1, $rc2, $rc3"; echo "0 passed, 1 failed"
    fi
}
sanitized "trainer, leak-checked" leak_run

# the rest of the trainer's runs without leak detection (see the top)
export ASAN_OPTIONS="${ASAN_OPTIONS/detect_leaks=1/detect_leaks=0}"
for t in $SHELL_TESTS; do
    if [ -f "tests/$t.sh" ]; then
        sanitized "$t" bash "tests/$t.sh" "$TMP/$t"
    else
        echo "FAIL $t: tests/$t.sh is missing"
        failed=$((failed + 1))
    fi
done

echo "asan tests took $(( $(date +%s) - START )) s"
suite_end
