#!/usr/bin/env bash
# scripts/netns_agent.sh: an ssh stand-in that "logs in" to a Linux network namespace, so that one machine can play
# several hosts for OpenMPI (tests/test_hosts.sh). Needs root (ip netns exec).
#
#   mpirun --mca plm_rsh_agent scripts/netns_agent.sh --hostfile HOSTFILE ...   (HOSTFILE names namespaces)
#   scripts/netns_agent.sh NAMESPACE CMD...
#
# OpenMPI's rsh launcher calls its agent like ssh: "AGENT HOST CMD...", where CMD is one shell command line split
# into words (OpenMPI 4.1: "orted -mca ess env -mca ess_base_jobid ... -mca orte_hnp_uri ..."; with --prefix, a
# "PATH=...; export PATH; ..." preamble). Like sshd, this runs the words joined by spaces with sh -c, in the
# foreground (mpirun watches the agent: its exit means the daemon on that host ended), and with a fresh
# environment holding only PATH and HOME, so that nothing reaches the other "host" that ssh would not carry
# (what mpirun must forward it forwards on the orted command line or with -x).
# Options before HOST (ssh's "-x" style) are ignored.
set -euo pipefail
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done
if [ $# -lt 2 ]; then
    echo "netns_agent: usage: scripts/netns_agent.sh NAMESPACE CMD..." >&2
    exit 2
fi
NS=$1
shift
if ! ip netns list 2>/dev/null | grep -q "^$NS\( \|$\)"; then
    echo "netns_agent: no network namespace '$NS' (ip netns list)" >&2
    exit 255    # what ssh returns when it cannot reach the host
fi
exec ip netns exec "$NS" env -i PATH="$PATH" HOME="${HOME:-/}" sh -c "$*"
