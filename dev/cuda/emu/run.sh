#!/bin/bash
# Runs tests/test_cuda_attn_moe.c on the CPU against the real kernels of model/cuda/{attention,moe}.cu, emulated:
# one std::thread per CUDA thread (blocks in sequence), std::barrier for __syncthreads/__syncwarp, warp shuffles and
# __match_any_sync through a per-warp exchange, cuBLAS GemmEx / GemmGroupedBatchedEx on the host (column-major, as
# documented, alignment and type table checked). TSAN=1 builds with ThreadSanitizer (finds missing barriers).
# EMU_GROUPED_REFUSE=1 makes grouped GEMM refuse (tests the fallback). Needs the repo's CPU objects (make first).
set -e
cd "$(dirname "$0")"
R=$(cd ../../.. && pwd)
B=${EMU_BUILD:-/tmp/train_moe_emu}
mkdir -p "$B"
OB=/usr/lib/x86_64-linux-gnu/openblas-openmp
SAN=""; [ "${TSAN:-0}" = 1 ] && SAN="-fsanitize=thread -O1" || SAN="-O2"
python3 prep.py $R/model/cuda/attention.cu $B/attention.cpp
python3 prep.py $R/model/cuda/moe.cu $B/moe.cpp
cp emu_runtime.cpp $B/
for f in attention moe emu_runtime; do g++ -std=c++20 $SAN -g -pthread -I$PWD/include -I$R/model/cuda -w -c $B/$f.cpp -o $B/r_$f.o; done
gcc $SAN -g -std=gnu11 -fopenmp -w -I/usr/include/x86_64-linux-gnu/openblas-openmp -c $R/tests/test_cuda_attn_moe.c -o $B/r_test.o
g++ $SAN -fopenmp -pthread $B/r_test.o $B/r_attention.o $B/r_moe.o $B/r_emu_runtime.o $R/build/common.o $R/build/model/cpu/*.o \
    -L$OB -Wl,-rpath,$OB -lopenblas -lm -o $B/r_test
OMP_NUM_THREADS=1 $B/r_test
