#!/usr/bin/env bash
# dev/cuda/predict.sh MODEL [BATCH] [predict_step flags...]: the predicted time of one training step of the CUDA
# backend on an H100 SXM and an H200, per kernel and per library call, from the CPU emulator's counts (no GPU
# needed). Builds dev/cuda/emu/predict_step (through dev/cuda/emu/run.sh), runs one warm-up and one counted step
# under EMU_COUNT_ONLY=1 (nothing is computed: k2-small's step is counted in about a minute with 200 MB of memory),
# and prints the table (kernel, unit, count, GFLOP, GB, predicted ms, share), the step time, tokens/s and MFU.
# The roofline and its assumptions are in dev/cuda/emu/emu_cost.cpp's header.
#
#   bash dev/cuda/predict.sh k2-small            # at the trainer's default batch (--batch-size 8)
#   bash dev/cuda/predict.sh k2-nano 8 --optim muon
#   PREDICT_OUT=/tmp/x bash dev/cuda/predict.sh k2-small   # also /tmp/x.tsv (counts per name) and /tmp/x.json
# dev/cuda/predict_results.sh writes both models' tables to dev/results/.
set -euo pipefail
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
    echo "usage: dev/cuda/predict.sh MODEL [BATCH] [--seq-len T] [--optim adamw|muon] [--experts E --top-k K]" >&2
    exit 2
fi
MODEL=$1; shift
BATCH=8  # the trainer's default --batch-size
if [ $# -ge 1 ] && [[ "$1" != -* ]]; then BATCH=$1; shift; fi
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
B=${EMU_BUILD:-$ROOT/build/emu}
command -v g++ > /dev/null || { echo "predict.sh: needs g++ (C++20) for the CPU emulator" >&2; exit 1; }
if [ -z "${PREDICT_NO_BUILD:-}" ] || [ ! -x "$B/predict_step" ]; then  # PREDICT_NO_BUILD=1: already built
    bash "$ROOT/dev/cuda/emu/run.sh" predict_step > "$B.predict_build.log" 2>&1 \
        || { tail -n 20 "$B.predict_build.log" >&2; echo "predict.sh: building predict_step failed" >&2; exit 1; }
fi
OUT_ARGS=()
[ -n "${PREDICT_OUT:-}" ] && OUT_ARGS=(--out "$PREDICT_OUT")
EMU_COUNT_ONLY=1 OMP_NUM_THREADS=1 "$B/predict_step" "$MODEL" "$BATCH" "$@" "${OUT_ARGS[@]}"
