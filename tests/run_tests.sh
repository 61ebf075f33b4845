#!/usr/bin/env bash
# tests/run_tests.sh: every test, in order; each prints PASS/FAIL/SKIP lines and its own "N passed, N failed, N
# skipped" line; this script adds them up and ends with the total "N passed, N failed" (the line CI reads).
set -u
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
TMP=$(mktemp -d /tmp/train_moe_tests.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
. tests/suite.sh  # run NAME CMD...: one suite, added up; suite_end: the total line

# the tree's layering and single sources (comm below model, each op declared once, no rank branches in model.c)
run layering bash tests/test_layering.sh
# the CUDA backend's hygiene: one GEMM call site, GRID_STRIDE_LOOP, SwiGLU once, no copied tables, short functions
run "cuda hygiene" bash tests/test_cuda_hygiene.sh

# finite-difference checks of every op's backward
run gradcheck ./build/tests/test_gradcheck

# the CUDA ops vs their CPU twins (SKIP without a GPU or without the CUDA backend)
run cuda ./build/tests/test_cuda
run "cuda attention+moe" ./build/tests/test_cuda_attn_moe
run "cuda cuDNN attention path" ./build/tests/test_cuda_sdpa
run "cuda whole model" ./build/tests/test_cuda_model
# the same three CUDA tests against the backend's own code (model/cuda/*.cu), run on the CPU by an emulator
# (fibers for CUDA threads, host cuBLAS): checks the kernels' and the bf16 model path's logic where no GPU is present
if command -v g++ > /dev/null; then
    run "cuda kernels and whole model, CPU emulation" bash dev/cuda/emu/run.sh
else
    echo "SKIP cuda emulation: g++ is not installed"; skipped=$((skipped + 1))
fi

# Muon's Newton-Schulz (spectrum, singular vectors, batching) and QK-Clip
run muon ./build/tests/test_muon

# the cuDNN attention path's plan (tensors, strides, uids, refusals), its descriptors on the host where libcudnn
# is linked (else SKIP), and the CPU twin's exact max logit and its log-sum-exp bound
run "cuDNN attention plan" ./build/tests/test_sdpa_plan

# the CPU backend's exp (scalar and AVX2, against exp over its whole range) and softmax row kernels (model/cpu/vec.h)
run "vector math" ./build/tests/test_vec

# whole model vs the float64 PyTorch reference: the default small config, and K2's routing shape (384 experts, top-8)
if $PY -c 'import torch, numpy' 2>/dev/null; then
    # parity NAME REFERENCE_ARGS...: the reference writes a debug state, the C model must match it
    parity() {
        local name=$1; shift
        if $PY dev/ref/model_ref.py "$@" --out "$TMP/ref_$name.bin" > "$TMP/ref_$name.log" 2>&1; then
            run "parity ($name)" ./build/tests/test_parity "$TMP/ref_$name.bin"
        else
            echo "==== parity ($name)"; cat "$TMP/ref_$name.log"
            echo "FAIL parity ($name): dev/ref/model_ref.py $* failed"; failed=$((failed + 1))
        fi
    }
    parity adamw                                   # small config, 3 AdamW steps
    parity k2-routing --config k2route             # K2's routing shape: 384 experts, top-8
    parity muonclip --config tiny_muon             # 3 Muon steps with QK-Clip clipping some heads
    parity muonclip-polar --config tiny_muon_polar # Polar Express table, router on AdamW
    parity k2-routing-muon --config k2route --optim muon --ns polar --muon_router 0 --qk_clip_tau 0.6
else
    echo "==== parity"
    echo "FAIL parity: /usr/bin/python3 with torch and numpy is missing (apt-get install python3-torch python3-numpy)"
    failed=$((failed + 1))
fi

# ./train_moe --export-hf against an independent float64 forward of Hugging Face's DeepseekV3ForCausalLM
# (dev/hf/hf_ref.py) on the trainer's own --eval --dump-logits; bf16 and sharded exports; controls that must fail
run "hf export parity" bash tests/test_hf_parity.sh "$TMP/hf_parity"

# the trainer end to end: resume determinism, bad input
run "trainer cli" bash tests/test_cli.sh "$TMP/cli"

# untrusted data files: bad tokenizer.bin, FIFOs, shards changed while training (1 and 2 ranks)
run "data trust" bash tests/test_data_trust.sh "$TMP/data_trust"

# your own text as data: data/prepare_text.py on generated corpora (round trip, determinism, uint32, the trainer on
# its output, every bad input); prepare.py's default corpus byte-identical where data/default was made by this code
run "prepare text" bash tests/test_prepare_text.sh "$TMP/prepare_text"

# the loss-spike lab: detection, skip, replay, NaN policy
run "spikes" bash tests/test_spikes.sh "$TMP/spikes"

# the Adam-vs-Muon scaling sweep end to end on a 2-size, few-step ladder; the power-law fit
run "scaling sweep" bash tests/test_sweep.sh "$TMP/sweep"

# the instability study (issue 14): its analysis on made-up numbers, both parts end to end on a tiny grid
run "instability" bash tests/test_instability.sh "$TMP/instability"

# the run plots and the QK-Clip ablation command
run "plots" bash tests/test_plots.sh "$TMP/plots"

# several processes under mpirun: equal to one process, ZeRO-1 split, resume, failures
run "mpi" bash tests/test_mpi.sh "$TMP/mpi"

# ranks started with different flags or data are refused at start, one MPMD run per flag
run "ranks agree" bash tests/test_ranks.sh "$TMP/ranks"

# damaged checkpoints: checksum and range checks, fallback to the previous checkpoint, refusal when none is left
run "checkpoint trust" bash tests/test_ckpt_trust.sh "$TMP/ckpt_trust"

# scripts/launch_hosts.sh on two hosts made of network namespaces (veth, OpenMPI over TCP): equal to one host; a cut
# link ends every rank within 60 s; resume continues bit-identically (SKIP without root / ip netns)
run "two hosts" bash tests/test_hosts.sh "$TMP/hosts"

# Hugging Face export and import: the safetensors files against the model file, the round trip, bf16, shards,
# config.json models, every kind of bad input, ranks that disagree on the --init-from folder
run "hugging face" bash tests/test_hf.sh "$TMP/hf"

# the run directory and its log: a failed log write, a full disk, non-UTF-8 samples, a long --out, a second
# trainer on one --out, orphan checkpoint files
run "run directory" bash tests/test_run_dir.sh "$TMP/run_dir"

# looking at a model: --eval (= the trainer's validation loss), --dump-logits, --generate, the prompt encoder vs
# python3 sentencepiece; nothing written into the run directory
run "eval and generate" bash tests/test_eval.sh "$TMP/eval"

# every log the tests above wrote is strict JSON lines in strict UTF-8 (but the plot test's hand-made log, broken
# on purpose)
run "logs are strict JSON" $PY tests/check_logs.py --exclude /plots/handmade/ "$TMP"

suite_end
