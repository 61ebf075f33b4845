#!/bin/bash
# Runs the CUDA tests (tests/test_cuda.c, test_cuda_attn_moe.c, test_cuda_model.c) and the whole trainer
# (train_moe.c, with comm/comm_cuda.c's host-staged path; checked by dev/cuda/trainer_check.sh: --device cuda vs
# --device cpu, and resume on the device) on the CPU, against the real kernels and op table of model/cuda/*.cu,
# emulated: blocks in sequence, a block's threads as fibers switched at every barrier (include/cuda_runtime.h says
# how missing barriers are caught), warp shuffles, __match_any_sync and the
# warp matrix API (nvcuda::wmma, include/mma.h; checked first by wmma_test.cpp) through a per-warp exchange, cuBLAS GemmEx /
# GemmGroupedBatchedEx / SgemmStridedBatched and CUB's radix sort on the host (column-major, as documented;
# alignment and type table checked). This verifies the kernels' logic (indexing, barriers, reductions, the op
# table, model.c's bf16 path), not the GPU's arithmetic, memory model or speed.
#
#   bash dev/cuda/emu/run.sh                 # all: wmma cost test_cuda test_cuda_attn_moe test_cuda_sdpa test_cuda_model trainer
#   bash dev/cuda/emu/run.sh test_cuda       # one of them
#   bash dev/cuda/emu/run.sh cost            # the cost counter's test (emu_cost.cpp; dev/cuda/predict.sh uses it)
#
# EMU_GROUPED_REFUSE=1 makes grouped GEMM refuse (tests the fallback). EMU_BUILD=<dir> (default build/emu) keeps
# the objects; the .cu objects are rebuilt when their source or a header changes. Needs g++ (C++20), python3 and
# OpenBLAS (for the CPU backend the tests compare against).
set -e
cd "$(dirname "$0")"
R=$(cd ../../.. && pwd)
B=${EMU_BUILD:-$R/build/emu}
mkdir -p "$B"
OB=/usr/lib/x86_64-linux-gnu/openblas-openmp
OBI=/usr/include/x86_64-linux-gnu/openblas-openmp
SAN="-O2"  # optimisation (and any sanitizer flags) for every object
TESTS=${*:-wmma cost test_cuda test_cuda_attn_moe test_cuda_sdpa test_cuda_model trainer}
# the backend's .cu files as host C++ (launch syntax and dynamic shared memory rewritten), compiled when changed
CU_OBJ=()
# (attention_aux: the cuDNN path's own kernels; the cuDNN calls, model/cuda/sdpa_cudnn.c, are replaced by
# sdpa_cudnn_stub.c below: cuDNN cannot be emulated)
for f in ops_cuda dense attention attention_aux moe optim; do
    python3 prep.py $R/model/cuda/$f.cu $B/$f.cpp > /dev/null
    if [ ! -f $B/r_$f.o ] || ! cmp -s $B/$f.cpp $B/$f.cpp.built || [ include -nt $B/r_$f.o ] \
       || [ -n "$(find include emu_runtime.cpp $R/model/cuda $R/model/ops.h $R/common.h -newer $B/r_$f.o 2>/dev/null)" ]; then
        g++ -std=c++20 $SAN -g -I$PWD/include -I$R/model/cuda -w -c $B/$f.cpp -o $B/r_$f.o
        cp $B/$f.cpp $B/$f.cpp.built
    fi
    CU_OBJ+=($B/r_$f.o)
done
g++ -std=c++20 $SAN -g -I$PWD/include -I$OBI -w -c emu_runtime.cpp -o $B/r_emu_runtime.o
g++ -std=c++20 $SAN -g -I$PWD/include -w -c emu_cost.cpp -o $B/r_emu_cost.o
g++ -std=c++20 $SAN -g -fpermissive -I$PWD/include -I$R -w -DCOMM_CUDA -c comm_cuda_emu.cpp -o $B/r_comm_cuda.o
gcc $SAN -g -std=gnu11 -w -c sdpa_cudnn_stub.c -o $B/r_sdpa_cudnn_stub.o
CU_OBJ+=($B/r_emu_runtime.o $B/r_emu_cost.o $B/r_comm_cuda.o $B/r_sdpa_cudnn_stub.o)
# the CPU side, one process (no MPI; device buffers through comm_cuda.c's host-staged path, as a build without
# NCCL): built here so the build/ flags do not matter
C_SRC="common.c json.c model/config.c model/config_json.c model/params.c model/model.c model/experts.c model/cuda/sdpa_plan.c model/cpu/ops_cpu.c model/cpu/dense.c model/cpu/attention.c
       model/cpu/moe.c model/cpu/optim.c optim/optimizer.c optim/muon.c optim/qkclip.c optim/schedule.c comm/comm.c"
C_OBJ=()
for f in $C_SRC; do
    o=$B/c_$(echo $f | tr / _ | sed 's/\.c$/.o/')
    gcc $SAN -g -std=gnu11 -fopenmp -w -I$OBI -DCOMM_CUDA -c $R/$f -o $o
    C_OBJ+=($o)
done
link() { g++ $SAN -fopenmp "$@" "${CU_OBJ[@]}" "${C_OBJ[@]}" -L$OB -Wl,-rpath,$OB -lopenblas -lm; }
rc=0
for t in $TESTS; do
    if [ $t = wmma ]; then
        # the emulated warp matrix API itself (include/mma.h), before any kernel is checked with it
        python3 prep.py wmma_test.cpp $B/wmma_test.cpp > /dev/null
        g++ -std=c++20 $SAN -g -I$PWD/include -w $B/wmma_test.cpp $B/r_emu_runtime.o $B/r_emu_cost.o -L$OB -Wl,-rpath,$OB -lopenblas -lm -o $B/wmma_test
        echo "==== wmma (the emulator's nvcuda::wmma)"
        $B/wmma_test 2>&1 | tee $B/out_$t.log
        [ ${PIPESTATUS[0]} -eq 0 ] || rc=1
        continue
    fi
    if [ $t = trainer ]; then
        # with Open MPI's compilers (as make builds it): the trainer also runs on 2 ranks sharing the emulated GPU
        CC_T=gcc; CXX_T=g++; MPI_DEF=""; MPI_ARG=""
        if command -v mpicc > /dev/null && command -v mpicxx > /dev/null && command -v mpirun > /dev/null; then
            CC_T=mpicc; CXX_T=mpicxx; MPI_DEF=-DUSE_MPI; MPI_ARG=--mpi
        fi
        T_OBJ=()
        for f in $C_SRC train_moe.c $(cd $R && ls data/*.c train/*.c); do  # every data/ and train/ source
            o=$B/t_$(echo $f | tr / _ | sed 's/\.c$/.o/')
            $CC_T $SAN -g -std=gnu11 -fopenmp -w -I$OBI -DCOMM_CUDA $MPI_DEF -c $R/$f -o $o
            T_OBJ+=($o)
        done
        $CXX_T $SAN -fopenmp "${T_OBJ[@]}" "${CU_OBJ[@]}" -L$OB -Wl,-rpath,$OB -lopenblas -lm -o $B/train_moe
        echo "==== trainer (train_moe on the CPU emulation of the CUDA backend${MPI_ARG:+, 1 and 2 ranks})"
        OMP_NUM_THREADS=1 bash $R/dev/cuda/trainer_check.sh $B/train_moe $MPI_ARG 2>&1 | tee $B/out_$t.log
        [ ${PIPESTATUS[0]} -eq 0 ] || rc=1
        continue
    fi
    # cost counting (emu_cost.cpp): predict_step is built for dev/cuda/predict.sh (not run here); cost is its fast
    # test (hand-counted FLOPs and bytes of a GEMM and a kernel, count-only vs computed, a kernel without a formula)
    if [ $t = predict_step ]; then
        gcc $SAN -g -std=gnu11 -fopenmp -w -I$OBI -c predict_step.c -o $B/predict_step.o
        link $B/predict_step.o -o $B/predict_step
        continue
    fi
    if [ $t = cost ]; then
        g++ -std=c++20 $SAN -g -I$PWD/include -I$R -w -c test_cost.cpp -o $B/test_cost.o
        link $B/test_cost.o -o $B/test_cost
        echo "==== cost (FLOP/byte counting and the roofline prediction, emu_cost.cpp)"
        OMP_NUM_THREADS=1 $B/test_cost 2>&1 | tee $B/out_$t.log
        [ ${PIPESTATUS[0]} -eq 0 ] || rc=1
        continue
    fi
    [ -f $R/tests/$t.c ] || { echo "emu: no tests/$t.c"; exit 2; }
    gcc $SAN -g -std=gnu11 -fopenmp -w -I$OBI -c $R/tests/$t.c -o $B/t_$t.o
    link $B/t_$t.o -o $B/$t
    echo "==== $t (CPU emulation of the CUDA backend)"
    # the whole-model test at an emulation-sized batch (its defaults are for a GPU): ~2 minutes on 2 cores
    TEST_CUDA_MODEL_B=${TEST_CUDA_MODEL_B:-2} TEST_CUDA_MODEL_T=${TEST_CUDA_MODEL_T:-32} \
    TEST_CUDA_MODEL_STEPS=${TEST_CUDA_MODEL_STEPS:-6} OMP_NUM_THREADS=1 $B/$t 2>&1 | tee $B/out_$t.log
    [ ${PIPESTATUS[0]} -eq 0 ] || rc=1
done
# the total over the parts (tests/run_tests.sh reads this last summary line)
P=0; F=0; S=0
for t in $TESTS; do
    [ $t = predict_step ] && continue
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' $B/out_$t.log 2>/dev/null | tail -n 1 || true)
    if [ -z "$line" ]; then echo "FAIL emu $t: no summary line"; F=$((F + 1)); rc=1; continue; fi
    P=$((P + $(echo "$line" | sed -E 's/^([0-9]+) passed.*/\1/')))
    F=$((F + $(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')))
    S=$((S + $(echo "$line" | grep -oE '[0-9]+ skipped' | grep -oE '[0-9]+' || echo 0)))
done
echo "$P passed, $F failed, $S skipped"
exit $rc
