#!/usr/bin/env bash
# scripts/launch_hosts.sh: train on several machines listed in an OpenMPI hostfile.
#
#   scripts/launch_hosts.sh HOSTFILE NP [train_moe flags...]
#   scripts/launch_hosts.sh hosts.txt 16 --model k2-l5 --ep 4 --optim muon --train-data '/data/shards/*_train_*.bin'
#
# HOSTFILE lines look like "node1 slots=4" (one slot per rank). Every machine needs the same train_moe binary and
# the data shards at the same path (or a shared file system); checkpoints go to --out, which must be shared so
# that rank 0's model file and every rank's state file land in one directory. Ranks are numbered node by node;
# with --ep E, each group of E consecutive ranks (keep them on one node: E <= slots per node) exchanges tokens
# by all-to-all, the heaviest traffic of a step (see README, "Multi-process launch").
set -euo pipefail
cd "$(dirname "$0")/.."
HOSTFILE=${1:?usage: scripts/launch_hosts.sh HOSTFILE NP [train_moe flags...]}
NP=${2:?usage: scripts/launch_hosts.sh HOSTFILE NP [train_moe flags...]}
shift 2
[ -f "$HOSTFILE" ] || { echo "launch_hosts: no hostfile $HOSTFILE" >&2; exit 1; }
THREADS=${THREADS:-1}
ROOT_FLAGS=()
[ "$(id -u)" -eq 0 ] && ROOT_FLAGS=(--allow-run-as-root)
exec mpirun "${ROOT_FLAGS[@]}" --hostfile "$HOSTFILE" --map-by slot --bind-to none -np "$NP" \
    -x OMP_NUM_THREADS="$THREADS" ./train_moe --threads "$THREADS" "$@"
