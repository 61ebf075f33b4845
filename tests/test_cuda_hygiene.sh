#!/bin/bash
# tests/test_cuda_hygiene.sh: the CUDA backend and the tests keep one source per fact (issue 11, items 4 and 5), read
# from the source (no build, no GPU):
#   - every cuBLAS GEMM of dense.cu and moe.cu goes through the one row-major helper, gemm_bf16 (cuda_common.cuh);
#   - every grid-stride loop is GRID_STRIDE_LOOP; the SwiGLU kernels exist once (dense.cu; the experts call them);
#   - no cuBLASLt (its handle was created and never used);
#   - the tests take Newton-Schulz's coefficients from newton_schulz_table() (optim/muon.c), and the random stream,
#     its non-zero draw and the seed from tests/test_util.h;
#   - no function over 150 lines in model/cuda/ or tests/.
#
#   bash tests/test_cuda_hygiene.sh
. "$(dirname "$0")/lib.sh" cuda_hygiene "$@"

CU="model/cuda/*.cu model/cuda/*.cuh"
# count_in FILES... PATTERN: lines matching the extended regex PATTERN over the files
count_in() { local pat=${*: -1}; cat "${@:1:$#-1}" | grep -cE "$pat"; }

n_gemm_cu=$(count_in model/cuda/*.cu 'cublasGemmEx\(')
n_gemm_helper=$(count_in model/cuda/cuda_common.cuh 'cublasGemmEx\(')
[ "$n_gemm_cu" -eq 0 ] && [ "$n_gemm_helper" -eq 1 ] \
    && pass "cublasGemmEx: called once, in gemm_bf16 (cuda_common.cuh); none in model/cuda/*.cu" \
    || fail "cublasGemmEx: $n_gemm_cu call(s) in model/cuda/*.cu, $n_gemm_helper in cuda_common.cuh (want 0 and 1)"

n_stride=$(count_in $CU 'gridDim\.x \*')
[ "$n_stride" -eq 1 ] && pass "grid-stride loops: only GRID_STRIDE_LOOP's definition multiplies by gridDim.x" \
    || fail "grid-stride loops: $n_stride lines multiply by gridDim.x (want 1: GRID_STRIDE_LOOP itself)"

n_swiglu=$(count_in $CU '__global__.*swiglu')
n_swiglu_dense=$(count_in model/cuda/dense.cu '__global__.*swiglu')
[ "$n_swiglu" -eq 2 ] && [ "$n_swiglu_dense" -eq 2 ] \
    && pass "SwiGLU kernels: forward and backward once, in dense.cu" \
    || fail "SwiGLU kernels: $n_swiglu defined, $n_swiglu_dense of them in dense.cu (want 2 and 2)"

n_lt=$(count_in $CU Makefile 'cublasLt|cuBLASLt')
[ "$n_lt" -eq 0 ] && pass "cuBLASLt: not used, not linked" || fail "cuBLASLt: $n_lt mention(s) in model/cuda or the Makefile"

n_ns=$(count_in tests/*.c tests/*.h '3\.4445f|8\.1565545')
[ "$n_ns" -eq 0 ] && pass "Newton-Schulz coefficients: none copied into tests/ (newton_schulz_table)" \
    || fail "Newton-Schulz coefficients: $n_ns line(s) in tests/ copy optim/muon.c's tables"

n_rn=$(count_in tests/*.c tests/*.h '^static float rn\(void\)')
n_rng=$(count_in tests/*.c tests/*.h '^(__attribute__\(\(unused\)\) )?static Rng rng;')
n_seed=$(count_in tests/*.c tests/*.h 'getenv\("[A-Z_]*SEED"\)')
n_seed_util=$(count_in tests/test_util.h 'getenv\(')
[ "$n_rn" -eq 1 ] && [ "$n_rng" -eq 1 ] && [ "$n_seed" -eq 0 ] && [ "$n_seed_util" -eq 1 ] \
    && pass "test random stream: rng, rn() and the seed (test_seed) defined once, in test_util.h" \
    || fail "test random stream: rn() $n_rn, rng $n_rng definitions, $n_seed seed look-ups outside test_util.h (want 1, 1, 0)"

# functions (a line at column 0 ending in '{' with a parameter list, up to the next '}' at column 0) over 150 lines
long=$($PY - model/cuda/*.cu model/cuda/*.cuh tests/*.c tests/*.h <<'EOF'
import re, sys
for path in sys.argv[1:]:
    start = None
    for i, line in enumerate(open(path).read().split("\n")):
        if start is None and re.match(r"^[A-Za-z_].*\)\s*\{\s*$", line) and not line.startswith(("typedef", "struct", "enum")):
            start, head = i, line
        elif start is not None and line.startswith("}"):
            if i - start + 1 > 150:
                print(f"{path}: {i - start + 1} lines: {head[:60]}")
            start = None
EOF
)
[ -z "$long" ] && pass "no function over 150 lines in model/cuda/ and tests/" \
    || fail "functions over 150 lines: $(echo "$long" | tr '\n' ';')"

finish
