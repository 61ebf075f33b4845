# tests/lib.sh: the shell tests' common start, sourced as the first command of each:
#     . "$(dirname "$0")/lib.sh" NAME "$@"
# Goes to the repository root (ROOT) and sets START, the work folder W (the script's first argument, kept; else a
# temporary folder removed at exit), PY, quiet OpenMP waiting (threads sleep instead of spinning: on a loaded
# 2-core machine spinning slows a 2-thread run ~10x; results do not depend on it), BIN, the trainer under test
# ($TRAIN_MOE_BIN, else ./train_moe; `make test-asan` points it at the sanitizer build), and pass / fail / skip /
# finish, which count the checks and end with "N passed, N failed, N skipped" (what tests/run_tests.sh adds up).
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
