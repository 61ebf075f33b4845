#!/usr/bin/env bash
# scripts/deps.sh build|test|mpi: makes sure the Debian packages a target needs are installed. As root it installs
# what is missing with apt-get; otherwise it prints the exact command to run and fails.
# (The default corpus has its own check in data/prepare_default.sh.)
set -euo pipefail
what=${1:-build}
case "$what" in
    build) pkgs="gcc make libc6-dev libopenblas-openmp-dev libopenblas-dev" ;;
    test)  pkgs="gcc make libc6-dev libopenblas-openmp-dev libopenblas-dev python3 python3-numpy python3-torch openmpi-bin libopenmpi-dev iproute2" ;;
    mpi)   pkgs="openmpi-bin libopenmpi-dev" ;;
    *) echo "usage: scripts/deps.sh build|test|mpi" >&2; exit 2 ;;
esac
if ! command -v dpkg-query > /dev/null; then
    echo "deps: not a Debian system; make sure these (or equivalents) are installed: $pkgs" >&2
    exit 0
fi
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
    echo "deps: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends $missing
else
    echo "deps: missing Debian packages:$missing" >&2
    echo "deps: install them with: sudo apt-get install -y$missing" >&2
    exit 1
fi
