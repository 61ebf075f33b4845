// comm/comm_cuda.c (its host-staged path; no NCCL) compiled as C++ against the emulator's runtime, so the
// emulated trainer (run.sh's train_moe) moves device buffers through the same code as on a GPU.
#include "cuda_runtime.h"
extern "C" {
#include "common.h"
#include "comm/comm_cuda.h"
}
#include "comm/comm_cuda.c"
