// model/ops_select.c: the CUDA backend's entry points in a build without it (compiled only when nvcc is not
// found, or with `make CUDA=0`; with nvcc, model/cuda/ops_cuda.cu defines them). --device cuda then answers
// that the CUDA backend is not built.
#include "ops.h"
#include <stddef.h>

const Ops* ops_cuda_get(void) { return NULL; }
int ops_cuda_built(void) { return 0; }
void* ops_cuda_stream(void) { return NULL; }
const char* ops_cuda_unavailable_reason(void) { return "this binary was built without the CUDA backend (no nvcc at build time, or make CUDA=0)"; }
