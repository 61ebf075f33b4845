#!/usr/bin/env bash
# fuzz/run.sh NAME|all [SECONDS]: runs the libFuzzer target build-fuzz/fuzz_NAME (from fuzz/fuzz_NAME.c; `make
# fuzz-build` builds them all, `make fuzz` builds and runs them all through this script).
#
# For one target:
#   1. regressions: every file in fuzz/regressions/NAME/ (inputs that once crashed it) is run once; each must pass
#   2. fuzzing: SECONDS (default 60) of libFuzzer from the seed corpus fuzz/corpus/NAME/ (committed, read only),
#      new inputs going to build-fuzz/corpus/NAME/ (kept between local runs), with fuzz/NAME.dict if there is one.
#      Prints the executions and crashes; a crash (or leak, timeout, out-of-memory) is copied into
#      fuzz/regressions/NAME/ (commit it with the fix: from then on step 1 replays it) and fails.
# Every check prints a PASS/FAIL line; the last line is "N passed, N failed, N skipped". With "all", every
# fuzz/fuzz_*.c, FUZZ_JOBS (default: the cores) at a time, and the last line adds them up.
#
# The targets' own stdout/stderr (a fatal()'s "error: ..." line on each bad input) are discarded
# (-close_fd_mask=3); libFuzzer's and the sanitizers' reports are kept. Leak detection is off: a target that
# returns from fatal() by longjmp leaves what the code under test had allocated, which the trainer never frees
# either (it exits).
set -u
cd "$(dirname "$0")/.."
name=${1:-}
seconds=${2:-60}
if [ -z "$name" ] || ! [[ "$seconds" =~ ^[0-9]+$ ]]; then
    echo "usage: fuzz/run.sh NAME|all [SECONDS]   (NAME: flags for fuzz/fuzz_flags.c)" >&2
    exit 2
fi

if [ "$name" = all ]; then
    # FUZZ_JOBS targets at a time (default: one per core; a fuzzer is one thread), each into its own log; the logs
    # are then shown and added up in order
    . tests/suite.sh
    jobs_max=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}
    logs=$(mktemp -d /tmp/train_moe_fuzz.XXXXXX)
    trap 'rm -rf "$logs"' EXIT
    targets=()
    for src in fuzz/fuzz_*.c; do
        [ -e "$src" ] || continue
        t=$(basename "$src" .c); t=${t#fuzz_}
        targets+=("$t")
        while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do sleep 1; done
        ( bash fuzz/run.sh "$t" "$seconds" > "$logs/$t.log" 2>&1; echo $? > "$logs/$t.rc" ) &
    done
    wait
    for t in "${targets[@]}"; do
        run "fuzz $t" bash -c 'cat "$1"; exit "$(cat "$2")"' _ "$logs/$t.log" "$logs/$t.rc"
    done
    suite_end
    exit $?
fi

name=${name#fuzz_}
BIN=build-fuzz/fuzz_$name
SEEDS=fuzz/corpus/$name
REGR=fuzz/regressions/$name
WORK=build-fuzz/corpus/$name
npass=0; nfail=0
pass() { echo "PASS $*"; npass=$((npass + 1)); }
fail() { echo "FAIL $*"; nfail=$((nfail + 1)); }
finish() { echo "$npass passed, $nfail failed, 0 skipped"; [ "$nfail" -eq 0 ]; exit $?; }
OPTS=(-close_fd_mask=3 -detect_leaks=0 -timeout=10 -rss_limit_mb=2048)
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

if [ ! -x "$BIN" ]; then
    fail "fuzz $name: $BIN is not built (make fuzz-build)"
    finish
fi

# 1. the regression inputs
nregr=0
for f in "$REGR"/*; do
    [ -f "$f" ] || continue
    nregr=$((nregr + 1))
    if out=$(timeout 60 "$BIN" "${OPTS[@]}" "$f" 2>&1); then
        pass "fuzz $name regression $(basename "$f")"
    else
        echo "$out" | tail -n 40
        fail "fuzz $name regression $(basename "$f"): it crashes again"
    fi
done
[ "$nregr" -eq 0 ] && echo "fuzz $name: no regression inputs in $REGR"

# 2. fuzzing for a fixed time
if [ -z "$(ls -A "$SEEDS" 2>/dev/null)" ]; then
    fail "fuzz $name: no seed corpus in $SEEDS"
    finish
fi
mkdir -p "$WORK"
ART=$(mktemp -d /tmp/train_moe_fuzz_$name.XXXXXX)
trap 'rm -rf "$ART"' EXIT
DICT=()
[ -f "fuzz/$name.dict" ] && DICT=(-dict="fuzz/$name.dict")
start=$(date +%s)
timeout $((seconds + 300)) "$BIN" "${OPTS[@]}" "${DICT[@]}" -max_total_time="$seconds" -print_final_stats=1 \
    -artifact_prefix="$ART/" "$WORK" "$SEEDS" >"$ART/log" 2>&1
rc=$?
took=$(($(date +%s) - start))
execs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "$ART/log" | grep -oE '[0-9]+$' | tail -n 1)
crashes=0
for a in "$ART"/crash-* "$ART"/leak-* "$ART"/timeout-* "$ART"/oom-*; do
    [ -f "$a" ] || continue
    mkdir -p "$REGR"
    cp "$a" "$REGR/"
    crashes=$((crashes + 1))
    echo "fuzz $name: saved $REGR/$(basename "$a") (commit it with the fix)"
done
summary="${execs:-?} executions in $took s, $crashes crashes, corpus $(ls "$WORK" | wc -l) + $(ls "$SEEDS" | wc -l) seed inputs"
if [ "$rc" -eq 0 ] && [ "$crashes" -eq 0 ] && [ -n "$execs" ]; then
    pass "fuzz $name: $summary"
else
    grep -vE '^#[0-9]+' "$ART/log" | tail -n 60
    fail "fuzz $name: exit code $rc, $summary"
fi
finish
