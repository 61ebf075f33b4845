# tests/suite.sh: adding up test suites; sourced by tests/run_tests.sh, tests/run_asan.sh, fuzz/run.sh and .ci/run.
#
#   run NAME CMD...   runs one suite, its output shown as it comes, and adds its closing line "N passed, N failed"
#                     (", N skipped" or "(N skipped)" may follow; one word and a colon may stand before it) to the
#                     totals; a suite with no such line, or one that exits non-zero with no failed check, counts as
#                     one failure
#   suite_end         prints the total "N passed, N failed (N skipped)" (the line CI reads) and returns non-zero
#                     when anything failed
passed=0; failed=0; skipped=0

run() {
    local name=$1; shift
    echo "==== $name"
    local log rc line p f s
    log=$(mktemp /tmp/train_moe_suite.XXXXXX)
    "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    line=$(grep -E '^([A-Za-z_-]+: )?[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
    rm -f "$log"
    if [ -z "$line" ]; then
        echo "FAIL $name: no summary line (exit code $rc)"
        failed=$((failed + 1))
        return
    fi
    p=$(echo "$line" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+')
    f=$(echo "$line" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+')
    s=$(echo "$line" | grep -oE '[0-9]+ skipped' | grep -oE '[0-9]+' || true)
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + ${s:-0}))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "FAIL $name: exit code $rc"
        failed=$((failed + 1))
    fi
}

suite_end() {
    echo "===="
    echo "$passed passed, $failed failed ($skipped skipped)"
    [ "$failed" -eq 0 ]
}
