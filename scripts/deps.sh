#!/usr/bin/env bash
# scripts/deps.sh build|test|mpi: makes sure the Debian packages a target needs are installed. As root it installs
# what is missing with apt-get; otherwise it prints the exact command to run and fails.
# This is the one list: `make test`, `make test-asan`, `make fuzz` and CI (.ci/run) all install through it, so a
# test dependency missing here is a test that FAILs, never one that SKIPs.
# (The default corpus has its own check in data/prepare_default.sh.)
set -euo pipefail
what=${1:-build}
# the trainer: C compiler (gcc's AddressSanitizer/UBSan runtimes come with it), OpenBLAS (OpenMP build)
build="gcc make libc6-dev libopenblas-openmp-dev libopenblas-dev"
mpi="openmpi-bin libopenmpi-dev"
# the tests: Debian's PyTorch + numpy for the float64 reference, matplotlib for the plots, g++ for the CUDA
# emulator, MPI for the multi-process tests, clang with its runtimes (sanitizers, libFuzzer) and OpenMP (libomp)
# for `make test-asan` and `make fuzz`, iproute2 for the two-host test (network namespaces)
test="$build $mpi g++ python3 python3-numpy python3-torch python3-matplotlib clang libclang-rt-dev libomp-dev iproute2"
case "$what" in
    build) pkgs=$build ;;
    test)  pkgs=$test ;;
    mpi)   pkgs=$mpi ;;
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
