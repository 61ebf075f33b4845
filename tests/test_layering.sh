#!/usr/bin/env bash
# tests/test_layering.sh: the source tree keeps the layering and the one-source-per-fact rules of DESIGN.md (no
# build needed; these are facts about the text of the sources).
#   1. comm/ sits below model/: no comm/ file includes a model/ header (comm_cuda.c takes its CUDA stream from
#      comm_set_device's caller).
#   2. the model does not know about ranks: model.h does not include comm.h; model.c calls no comm_* function and
#      reads no rank count (expert parallelism is behind model/experts.c).
#   3. each op is declared once: model/ops_list.h; no backend header spells an op's prototype by hand, and the
#      CUDA backend has one op header. The attention and routing ops take a shape struct (MlaShape, MoeShape).
#   4. one definition each: is_expert_tensor (model/params.h), the AdamW bias correction and the router backward's
#      balance scalars (model/ops.h, not inside a backend); balance_alpha's default only in the flag table.
#   5. no dead comm entry points (comm_device_path, comm_built_with_mpi).
#
#   bash tests/test_layering.sh
. "$(dirname "$0")/lib.sh" layering "$@"

check() {  # check NAME COMMAND...: passes when the command succeeds
    local name=$1; shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}
none() { ! grep -nE "$@" > "$W/hits" 2>/dev/null || { sed 's/^/    /' "$W/hits" | head -n 5 >&2; return 1; }; }
count_is() {  # count_is N PATTERN FILES...: exactly N lines match
    local n=$1 pat=$2; shift 2
    local got; got=$(cat "$@" 2>/dev/null | grep -cE "$pat")
    [ "$got" -eq "$n" ] || { echo "    $got matches of '$pat', expected $n" >&2; return 1; }
}

SRC="model/*.c model/*.h model/cpu/*.c model/cpu/*.h model/cuda/*.cu model/cuda/*.h model/cuda/*.cuh optim/*.c optim/*.h comm/*.c comm/*.h"

# 1
check "comm/ includes no model/ header" none '#include.*model/' comm/*.c comm/*.h
# 2
check "model.h does not include comm.h" none '#include.*comm\.h' model/model.h
check "model.c calls no collective and reads no rank count" none 'comm_[a-z_]+\(|->ep\b|comm->' model/model.c
check "model.c has no expert-parallel branch (ep > 1)" none '\bep *> *1' model/model.c
# 3
check "each op's prototype is generated from model/ops_list.h (none spelled out in a backend header)" \
    none '^(void|double) +(cpu|cuda)_(matmul_forward|attention_forward|moe_router_backward|adamw_update)\(' \
    model/cpu/*.h model/cuda/*.h
check "the Ops struct spells no compute op by hand" none '\(\*(matmul_forward|moe_router_backward|adamw_update)\)' model/ops.h
check "model/ops_list.h declares each op once" count_is 1 '^OP\(void, moe_router_backward,' model/ops_list.h
check "one CUDA op header (model/cuda/ops_cuda.h gone)" test ! -e model/cuda/ops_cuda.h
check "the attention ops take one MlaShape, not a tail of ints" count_is 2 'MlaShape shape\)\)$' model/ops_list.h
check "the routing ops take one MoeShape (router, balance, router backward, dispatch, gather backward, combine x2)" \
    count_is 7 'MoeShape shape' model/ops_list.h
check "no op in model/ops_list.h takes a shape tail of ints (int B, int T / int N, int K)" \
    none 'int B, int T|int N, int K|int nope, int rope' model/ops_list.h
# 4
check "is_expert_tensor defined once (model/params.h)" count_is 1 'int is_expert_tensor\(int' $SRC
check "AdamW's bias correction computed outside the backends" \
    none 'pow\(\(double\)b[12]' model/cpu/*.c model/cuda/*.cu
check "the router backward's balance scalars computed outside the backends" \
    none 'loss_scale \* alpha' model/cpu/*.c model/cuda/*.cu
check "balance_alpha has no default in the model" none 'balance_alpha *= *[0-9]' model/*.c
# 5
check "no dead comm entry points" none 'comm_device_path|comm_built_with_mpi|commcuda_path' comm/*.c comm/*.h
finish
