#!/usr/bin/env bash
# scripts/launch_local.sh: train on one machine with N processes (mpirun), T threads each.
#
#   scripts/launch_local.sh NP [train_moe flags...]
#   scripts/launch_local.sh 4 --model k2-nano --ep 2 --optim muon --batch-size 2
#
# Each rank reads its own slice of every global batch (global batch = NP x --batch-size x --seq-len tokens per
# micro-batch); --ep E splits every MoE layer's 384 experts over groups of E ranks. THREADS (default: cores / NP)
# sets the threads per rank. Ranks beyond the core count are allowed (--oversubscribe) but slow.
set -euo pipefail
cd "$(dirname "$0")/.."
NP=${1:?usage: scripts/launch_local.sh NP [train_moe flags...]}
shift
CORES=$(nproc)
THREADS=${THREADS:-$(( CORES / NP > 0 ? CORES / NP : 1 ))}
[ -x ./train_moe ] || make train_moe
ROOT_FLAGS=()
[ "$(id -u)" -eq 0 ] && ROOT_FLAGS=(--allow-run-as-root)   # OpenMPI refuses root otherwise
exec mpirun "${ROOT_FLAGS[@]}" --oversubscribe --bind-to none -np "$NP" -x OMP_NUM_THREADS="$THREADS" \
    ./train_moe --threads "$THREADS" "$@"
