# tests/lib.sh: the shell tests' common start, sourced as the first command of each:
#     . "$(dirname "$0")/lib.sh" NAME "$@"
# Goes to the repository root (ROOT) and sets START, the work folder W (the script's first argument, kept; else a
# temporary folder removed at exit), PY, quiet OpenMP waiting (threads sleep instead of spinning: on a loaded
# 2-core machine spinning slows a 2-thread run ~10x; results do not depend on it), BIN, the trainer under test
# ($TRAIN_MOE_BIN, else ./train_moe; `make test-asan` points it at the sanitizer build), and pass / fail / skip /
# finish, which count the checks and end with "N passed, N failed, N skipped" (what tests/run_tests.sh adds up);
# need_trainer and need_plot_python (a test's prerequisites: one FAIL line and the end where they are missing) and
# py_check (a Python snippet with scripts/ importable as one check).
set -u
TEST_NAME=$1
cd "$(dirname "$0")/.."
ROOT=$(pwd)
START=$(date +%s)
if [ $# -ge 2 ]; then
    W=$2
    mkdir -p "$W"
else
    W=$(mktemp -d "/tmp/train_moe_$TEST_NAME.XXXXXX")
    trap 'rm -rf "$W"' EXIT
fi
W=$(cd "$W" && pwd)
BIN=${TRAIN_MOE_BIN:-$ROOT/train_moe}
npass=0; nfail=0; nskip=0
pass() { echo "PASS $*"; npass=$((npass + 1)); }
fail() { echo "FAIL $*"; nfail=$((nfail + 1)); }
skip() { echo "SKIP $*"; nskip=$((nskip + 1)); }
finish() {
    echo "$TEST_NAME tests took $(( $(date +%s) - START )) s"
    echo "$npass passed, $nfail failed, $nskip skipped"
    [ "$nfail" -eq 0 ]
    exit $?
}
export OMP_WAIT_POLICY=passive
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

# need_trainer: BIN built by make where it is missing
need_trainer() {
    [ -x "$BIN" ] && return 0
    make -s train_moe >"$W/make.log" 2>&1 || { fail "build: make train_moe failed: $(tail -n 3 "$W/make.log" | tr '\n' ' ')"; finish; }
}
# need_plot_python: PY has numpy and matplotlib (the study scripts' plots and fits)
need_plot_python() {
    "$PY" -c 'import numpy, matplotlib' 2>/dev/null && return 0
    fail "python: $PY needs numpy and matplotlib (apt-get install python3-numpy python3-matplotlib)"
    finish
}
# py_check NAME PYTHON: runs the snippet with scripts/ importable; it prints "ok ..." last, or raises / prints "bad ..."
py_check() {
    local name=$1 code=$2 out
    out=$(cd "$ROOT/scripts" && "$PY" -c "$code" 2>&1)
    if [ $? -eq 0 ] && echo "$out" | tail -n 1 | grep -q '^ok'; then
        pass "$name: $(echo "$out" | tail -n 1 | cut -c4-)"
    else
        fail "$name: $(echo "$out" | tail -n 4 | tr '\n' ' ')"
    fi
}
