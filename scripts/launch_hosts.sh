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
# A host that drops off the network (link down, power loss, frozen kernel) sends no reset: TCP retransmits for
# ~15 minutes and OpenMPI's daemons probe an idle link only after 300 s + 9 x 20 s, so every rank would wait in
# its collective for many minutes. TCP keepalive on the daemons' links (answered by the peer's kernel, so a busy
# host never trips it) finds a silent host after at most 10 + 4 x 5 = 30 s of silence; mpirun then ends the job
# with "ORTE has lost communication with a remote daemon" and a non-zero exit, and the cut-off host's daemon kills
# its own ranks. Resume from the last checkpoint (tests/test_hosts.sh cuts a link mid-run). Override by setting
# these variables before launching; exported, they reach every host's daemon.
export OMPI_MCA_oob_tcp_keepalive_time=${OMPI_MCA_oob_tcp_keepalive_time:-10}
export OMPI_MCA_oob_tcp_keepalive_intvl=${OMPI_MCA_oob_tcp_keepalive_intvl:-5}
export OMPI_MCA_oob_tcp_keepalive_probes=${OMPI_MCA_oob_tcp_keepalive_probes:-4}
ROOT_FLAGS=()
[ "$(id -u)" -eq 0 ] && ROOT_FLAGS=(--allow-run-as-root)
# OpenMPI carries only -x variables to other hosts: pass the OpenBLAS settings (OPENBLAS_CORETYPE picks the matmul
# kernels, whose rounding differs between kernel types), so every rank computes like a rank on this machine
ENV_FLAGS=(-x OMP_NUM_THREADS="$THREADS")
for v in $(compgen -e | grep '^OPENBLAS_' || true); do ENV_FLAGS+=(-x "$v"); done
exec mpirun "${ROOT_FLAGS[@]}" --hostfile "$HOSTFILE" --map-by slot --bind-to none -np "$NP" \
    "${ENV_FLAGS[@]}" ./train_moe --threads "$THREADS" "$@"
