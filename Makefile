# train_moe: `make` builds the trainer, `make train` prepares the default data and trains k2-nano,
# `make test` runs every test, `make data` prepares the default corpus, `make clean` removes build outputs.

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
CFLAGS += -std=gnu11 -fopenmp -fno-math-errno -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers
LDLIBS = -lm

# OpenBLAS: prefer Debian's OpenMP build, whose sgemm runs single-threaded when called inside our own parallel
# regions (the per-expert and per-head loops) instead of oversubscribing the cores.
OPENBLAS_OMP := /usr/lib/x86_64-linux-gnu/openblas-openmp
ifneq ($(wildcard $(OPENBLAS_OMP)/libopenblas.so),)
  BLAS_LIBS = -L$(OPENBLAS_OMP) -Wl,-rpath,$(OPENBLAS_OMP) -lopenblas
else
  BLAS_LIBS = -lopenblas
endif
CFLAGS += -I/usr/include/x86_64-linux-gnu/openblas-openmp
LDLIBS += $(BLAS_LIBS)

CORE_SRC = common.c model/config.c model/params.c model/model.c \
           model/cpu/ops_cpu.c model/cpu/dense.c model/cpu/attention.c model/cpu/moe.c model/cpu/optim.c \
           model/ops_select.c optim/optimizer.c optim/muon.c optim/qkclip.c optim/schedule.c \
           data/dataloader.c data/tokenizer.c train/checkpoint.c train/dist.c train/spikes.c comm/comm.c
CORE_OBJ = $(CORE_SRC:%.c=build/%.o)
HEADERS = $(wildcard *.h model/*.h model/cpu/*.h optim/*.h data/*.h train/*.h comm/*.h)

TEST_BINS = build/tests/test_gradcheck build/tests/test_parity build/tests/test_muon

.PHONY: all test data train clean
all: train_moe

# the Debian packages the build needs (installed when run as root, else the exact apt-get line is printed)
build/.deps-build: scripts/deps.sh
	@mkdir -p build
	bash scripts/deps.sh build
	@touch $@

# objects are rebuilt when the compiler or flags change (e.g. mpicc appearing after `make test` installed it)
BUILD_FLAGS := $(CC) $(CFLAGS)
build/.flags: FORCE
	@mkdir -p build
	@echo '$(BUILD_FLAGS)' | cmp -s - $@ || echo '$(BUILD_FLAGS)' > $@
.PHONY: FORCE
FORCE:

build/%.o: %.c $(HEADERS) build/.flags | build/.deps-build
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

train_moe: build/train_moe.o $(CORE_OBJ)
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

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

clean:
	rm -rf build train_moe
