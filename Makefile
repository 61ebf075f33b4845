# train_moe: `make` builds the trainer, `make train` prepares the default data and trains k2-nano,
# `make test` runs every test, `make test-cuda` builds and runs the CUDA op tests (they SKIP without a GPU),
# `make test-asan` runs the C tests and the trainer's CLI tests under AddressSanitizer + UBSan (build-asan/),
# `make fuzz` runs every libFuzzer target in fuzz/ for FUZZ_SECONDS each (build-fuzz/),
# `make data` prepares the default corpus, `make clean` removes build outputs.

# MPI: with Debian's OpenMPI (mpicc) the binary runs under mpirun; without it (or with `make MPI=0`),
# single-process only
MPI ?= 1
ifeq ($(MPI),1)
  ifneq ($(shell command -v mpicc 2> /dev/null),)
    CC = mpicc
    MPI_FLAGS = -DUSE_MPI
  endif
endif
CC ?= gcc
CFLAGS ?= -O3 -march=native
CFLAGS += $(MPI_FLAGS)
# the language and warnings every build shares (the normal, the sanitizer and the fuzzing builds)
STD_WARN = -std=gnu11 -fno-math-errno -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers
CFLAGS += -fopenmp $(STD_WARN)
LDLIBS = -lm

# OpenBLAS: prefer Debian's OpenMP build, whose sgemm runs single-threaded when called inside our own parallel
# regions (the per-expert and per-head loops) instead of oversubscribing the cores.
# (OPENBLAS_OMP / OPENBLAS_INC may point at an unpacked copy where the system has none, e.g. dev/cuda/check.sh)
OPENBLAS_OMP ?= /usr/lib/x86_64-linux-gnu/openblas-openmp
OPENBLAS_INC ?= /usr/include/x86_64-linux-gnu/openblas-openmp
ifneq ($(wildcard $(OPENBLAS_OMP)/libopenblas.so),)
  BLAS_LIBS = -L$(OPENBLAS_OMP) -Wl,-rpath,$(OPENBLAS_OMP) -lopenblas
else
  BLAS_LIBS = -lopenblas
endif
CFLAGS += -I$(OPENBLAS_INC)
LDLIBS += $(BLAS_LIBS)

# CUDA: when nvcc is found (on the PATH or at /usr/local/cuda/bin/nvcc) the CUDA backend (model/cuda/*.cu) is built
# in and --device cuda/auto can use a GPU; without it (or with `make CUDA=0`) the build is CPU-only and
# model/ops_select.c stands in for the backend's entry points. Building needs no GPU, only the toolkit.
CUDA ?= 1
NVCC :=
ifeq ($(CUDA),1)
  NVCC := $(shell command -v nvcc 2> /dev/null || { test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc; })
endif
ifneq ($(NVCC),)
  CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
  # sm_90 machine code for Hopper (H100/H200), plus compute_80 PTX that the driver compiles for any other GPU of
  # compute capability >= 8.0. No --use_fast_math: softmax and norm statistics use the accurate expf/logf/sqrtf.
  NVCC_FLAGS ?= -O3 -std=c++17 -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=compute_80 \
                -Xcompiler -Wall
  CUDA_SRC = $(wildcard model/cuda/*.cu)
  CUDA_OBJ = $(CUDA_SRC:%.cu=build/%.o)
  CUDA_LIBS = -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -lcublas -lstdc++
  SELECT_SRC =
  # the cuDNN attention path (model/cuda/sdpa_cudnn.c, C on cuDNN's backend graph API; --attention): with cuDNN
  # when cudnn_graph.h and libcudnn are found (cuDNN 9 ships with the toolkit's lib64, or as Debian's
  # libcudnn9-dev-cuda-*); without them (or with `make CUDNN=0`) the file reports the path absent and --attention
  # auto runs our kernels
  CUDNN_SRC = model/cuda/sdpa_cudnn.c
  CUDNN ?= 1
  ifeq ($(CUDNN),1)
    CUDNN_H := $(firstword $(wildcard $(CUDA_HOME)/include/cudnn_graph.h /usr/include/cudnn_graph.h \
                 /usr/include/x86_64-linux-gnu/cudnn_graph.h))
    CUDNN_LIB := $(firstword $(wildcard $(CUDA_HOME)/lib64/libcudnn.so /usr/lib/x86_64-linux-gnu/libcudnn.so))
    ifneq ($(and $(CUDNN_H),$(CUDNN_LIB)),)
      CUDNN_FLAGS = -DUSE_CUDNN -I$(patsubst %/,%,$(dir $(CUDNN_H)))
      CUDA_LIBS += -L$(patsubst %/,%,$(dir $(CUDNN_LIB))) -Wl,-rpath,$(patsubst %/,%,$(dir $(CUDNN_LIB))) -lcudnn
    endif
  endif
  # the collectives on GPU buffers (comm/comm_cuda.c, C on the CUDA runtime's C API): over NCCL when nccl.h and
  # libnccl are found (in the toolkit or the system; `make NCCL=0` leaves it out), else staged through host memory
  COMM_SRC = comm/comm_cuda.c
  COMM_FLAGS = -DCOMM_CUDA
  NCCL ?= 1
  ifeq ($(NCCL),1)
    NCCL_H := $(firstword $(wildcard $(CUDA_HOME)/include/nccl.h /usr/include/nccl.h /usr/local/include/nccl.h))
    NCCL_LIB := $(firstword $(wildcard $(CUDA_HOME)/lib64/libnccl.so /usr/lib/x86_64-linux-gnu/libnccl.so \
                  /usr/local/lib/libnccl.so))
    ifneq ($(and $(NCCL_H),$(NCCL_LIB)),)
      COMM_FLAGS += -DUSE_NCCL
      COMM_INC = $(filter-out -I$(CUDA_HOME)/include,-I$(patsubst %/,%,$(dir $(NCCL_H))))
      CUDA_LIBS += -L$(patsubst %/,%,$(dir $(NCCL_LIB))) -Wl,-rpath,$(patsubst %/,%,$(dir $(NCCL_LIB))) -lnccl
    endif
  endif
else
  CUDA_OBJ =
  CUDA_LIBS =
  SELECT_SRC = model/ops_select.c
  CUDNN_SRC =
  COMM_SRC =
  COMM_FLAGS =
endif
CFLAGS += $(COMM_FLAGS)
# comm_cuda.c alone sees the toolkit's (and NCCL's) headers
build/comm/comm_cuda.o: CFLAGS += -I$(CUDA_HOME)/include $(COMM_INC)
# and sdpa_cudnn.c the toolkit's and cuDNN's
build/model/cuda/sdpa_cudnn.o: CFLAGS += -I$(CUDA_HOME)/include $(CUDNN_FLAGS)

CORE_SRC = common.c json.c model/config.c model/config_json.c model/params.c model/model.c model/experts.c \
           model/cuda/sdpa_plan.c model/cpu/ops_cpu.c model/cpu/dense.c model/cpu/attention.c model/cpu/moe.c model/cpu/optim.c \
           $(SELECT_SRC) optim/optimizer.c optim/muon.c optim/qkclip.c optim/schedule.c \
           data/dataloader.c data/tokenizer.c data/spm.c train/checkpoint.c train/crc32c.c train/dist.c train/spikes.c \
           train/flags.c train/settings.c train/log.c train/setup.c train/loop.c train/report.c train/eval.c \
           train/safetensors.c train/hf.c train/atomic_file.c \
           comm/comm.c $(COMM_SRC) $(CUDNN_SRC)
CORE_OBJ = $(CORE_SRC:%.c=build/%.o) $(CUDA_OBJ)
HEADERS = $(wildcard *.h model/*.h model/cpu/*.h model/cuda/*.h optim/*.h data/*.h train/*.h comm/*.h)
CUDA_HEADERS = $(HEADERS) $(wildcard model/cuda/*.cuh)
LDLIBS += $(CUDA_LIBS)

# the CUDA tests: the dense/optimizer ops, the attention/MoE ops, and the whole model vs the CPU backend
# and the cuDNN attention path's kernels and (on a GPU) the path itself vs ours and the CPU twin
CUDA_TEST_BINS = build/tests/test_cuda build/tests/test_cuda_attn_moe build/tests/test_cuda_model build/tests/test_cuda_sdpa

TEST_BINS = build/tests/test_gradcheck build/tests/test_parity build/tests/test_muon build/tests/test_vec build/tests/spm_encode \
            build/tests/test_sdpa_plan $(CUDA_TEST_BINS)

.PHONY: all test test-cuda test-asan asan fuzz fuzz-build data train clean
all: train_moe

# the Debian packages the build needs (installed when run as root, else the exact apt-get line is printed)
build/.deps-build: scripts/deps.sh
	@mkdir -p build
	bash scripts/deps.sh build
	@touch $@

# objects are rebuilt when the compiler or flags change (e.g. mpicc appearing after `make test` installed it)
BUILD_FLAGS := $(CC) $(CFLAGS) | $(NVCC) $(NVCC_FLAGS)
build/.flags: FORCE
	@mkdir -p build
	@echo '$(BUILD_FLAGS)' | cmp -s - $@ || echo '$(BUILD_FLAGS)' > $@
.PHONY: FORCE
FORCE:

build/%.o: %.c $(HEADERS) build/.flags | build/.deps-build
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

build/model/cuda/%.o: model/cuda/%.cu $(CUDA_HEADERS) build/.flags | build/.deps-build
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCC_FLAGS) -c $< -o $@

train_moe: build/train_moe.o $(CORE_OBJ)
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

# the tests' own headers (test_util.h, cuda_test_util.h)
$(TEST_BINS:%=%.o): $(wildcard tests/*.h)

build/tests/%: build/tests/%.o $(CORE_OBJ)
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

data:
	bash data/prepare_default.sh

train: train_moe
	bash data/prepare_default.sh
	./train_moe --model k2-nano --overwrite

test:
	bash scripts/deps.sh test
	$(MAKE) train_moe $(TEST_BINS)
	bash tests/run_tests.sh

# builds and runs the CUDA tests (the CUDA ops vs their CPU twins, the whole model vs the CPU backend; without a
# GPU, or in a CPU-only build, they print SKIP lines and pass)
test-cuda:
	$(MAKE) $(CUDA_TEST_BINS)
	@rc=0; for t in $(CUDA_TEST_BINS); do echo "==== $$t"; ./$$t || rc=1; done; exit $$rc

# ----------------------------------------------------------------------------
# Sanitizers: the CPU trainer and the C tests with AddressSanitizer and UndefinedBehaviorSanitizer, objects in
# build-asan/ (never mixed with build/), CPU only (no CUDA backend), with MPI when mpicc is there. -O1 keeps the
# runs affordable; any UB report ends the process (-fno-sanitize-recover), so a finding is a failed test.
# tests/run_asan.sh runs the C tests and the trainer's shell tests against build-asan/train_moe (TRAIN_MOE_BIN).
SAN_FLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
# clang, not gcc: gcc puts UBSan in a runtime of its own (libubsan) whose reports ignore log_path, the option
# tests/run_asan.sh collects every report through; clang's one runtime honours it for both. With MPI, OpenMPI's
# wrapper runs clang (OMPI_CC).
ASAN_CC = $(if $(MPI_FLAGS),OMPI_CC=clang mpicc,clang)
ASAN_CFLAGS = -O1 -g $(SAN_FLAGS) $(MPI_FLAGS) -fopenmp $(STD_WARN) -Wno-pass-failed -I$(OPENBLAS_INC)
ASAN_LDLIBS = -lm $(BLAS_LIBS)
# the core without the CUDA backend: model/ops_select.c stands in for it (as in a CUDA=0 build)
CPU_CORE_SRC = $(filter-out $(COMM_SRC) $(CUDNN_SRC) model/ops_select.c,$(CORE_SRC)) model/ops_select.c
ASAN_OBJ = $(CPU_CORE_SRC:%.c=build-asan/%.o)
ASAN_TEST_BINS = build-asan/tests/test_gradcheck build-asan/tests/test_parity build-asan/tests/test_muon build-asan/tests/spm_encode
# a planted heap overflow and signed overflow: run_asan.sh checks that each is reported (the sanitizers are live)
ASAN_CANARY = build-asan/tests/asan_canary

build-asan/.flags: FORCE
	@mkdir -p build-asan
	@echo '$(ASAN_CC) $(ASAN_CFLAGS)' | cmp -s - $@ || echo '$(ASAN_CC) $(ASAN_CFLAGS)' > $@

build-asan/%.o: %.c $(HEADERS) build-asan/.flags | build/.deps-build
	@mkdir -p $(dir $@)
	$(ASAN_CC) $(ASAN_CFLAGS) -c $< -o $@

$(ASAN_TEST_BINS:%=%.o): $(wildcard tests/*.h)

build-asan/train_moe: build-asan/train_moe.o $(ASAN_OBJ)
	$(ASAN_CC) $(ASAN_CFLAGS) $^ -o $@ $(ASAN_LDLIBS)

build-asan/tests/%: build-asan/tests/%.o $(ASAN_OBJ)
	$(ASAN_CC) $(ASAN_CFLAGS) $^ -o $@ $(ASAN_LDLIBS)

asan: build-asan/train_moe $(ASAN_TEST_BINS) $(ASAN_CANARY)

$(ASAN_CANARY): build-asan/tests/asan_canary.o
	$(ASAN_CC) $(ASAN_CFLAGS) $^ -o $@

test-asan:
	bash scripts/deps.sh test
	$(MAKE) asan
	bash tests/run_asan.sh

# ----------------------------------------------------------------------------
# Fuzzing: every fuzz/fuzz_NAME.c is a libFuzzer target (LLVMFuzzerTestOneInput), built with Debian's clang into
# build-fuzz/fuzz_NAME against the CPU core built with clang's fuzzer instrumentation (no MPI, no CUDA, no OpenMP:
# one thread is what the fuzzer wants). fuzz/run.sh replays fuzz/regressions/NAME/ and then fuzzes from
# fuzz/corpus/NAME/ for FUZZ_SECONDS; a crash is copied into fuzz/regressions/NAME/ and fails the run.
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 60
FUZZ_CFLAGS = -g -O1 -fsanitize=fuzzer-no-link $(SAN_FLAGS) $(STD_WARN) -Wno-unknown-pragmas -Wno-pass-failed -I. -I$(OPENBLAS_INC)
FUZZ_SRC = $(wildcard fuzz/fuzz_*.c)
FUZZ_BINS = $(FUZZ_SRC:fuzz/%.c=build-fuzz/%)
FUZZ_OBJ = $(CPU_CORE_SRC:%.c=build-fuzz/%.o)

build-fuzz/.flags: FORCE
	@mkdir -p build-fuzz
	@echo '$(FUZZ_CC) $(FUZZ_CFLAGS)' | cmp -s - $@ || echo '$(FUZZ_CC) $(FUZZ_CFLAGS)' > $@

build-fuzz/%.o: %.c $(HEADERS) build-fuzz/.flags | build/.deps-build
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@

build-fuzz/fuzz_%: build-fuzz/fuzz/fuzz_%.o $(FUZZ_OBJ)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $^ -o $@ $(ASAN_LDLIBS)

fuzz-build: $(FUZZ_BINS)
# kept between builds (make deletes the objects that only pattern rules name)
.SECONDARY: $(FUZZ_OBJ) $(FUZZ_SRC:%.c=build-fuzz/%.o)

# each target in turn; the closing line counts the targets (and their regression inputs) that passed and failed
fuzz:
	bash scripts/deps.sh test
	$(MAKE) fuzz-build
	bash fuzz/run.sh all $(FUZZ_SECONDS)

clean:
	rm -rf build build-asan build-fuzz train_moe
