#!/usr/bin/env bash
# dev/cuda/fetch_debs.sh: run HERE (a machine with network and apt), before a device session, when the lent GPU
# machine lacks OpenBLAS (its image has CUDA and PyTorch, and no package registry is reachable from it). Downloads
# the Debian packages the CPU side of the build links (OpenBLAS, OpenMP build, and its Fortran runtime) into .debs/
# and keeps that folder out of git; dev/cuda/check.sh unpacks them into a private root (never into /) when the
# system has no cblas.h. Pass `carry: [".debs"]` to the device run.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .debs
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.debs/' "$exclude" 2>/dev/null || echo '/.debs/' >> "$exclude"
cd .debs
apt-get download libopenblas0-openmp libopenblas-openmp-dev libgfortran5 libquadmath0
ls -l
