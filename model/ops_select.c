// model/ops_select.c: which backends this binary has. The CUDA backend lands with its own issue; until then
// --device cuda answers that it is not built.
#include "ops.h"
#include <stddef.h>

const Ops* ops_cuda_get(void) { return NULL; }
