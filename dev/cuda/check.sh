#!/usr/bin/env bash
# dev/cuda/check.sh: the one script a session with a lent GPU runs (device tool, 15 minutes of device time in all).
# Builds, shows the GPU, runs the CUDA op tests, checks the trainer's first losses on the GPU against the CPU, checks
# an --export-hf directory in Hugging Face transformers (where the machine has it), and times the trainer on the
# GPU; prints a short table last and writes it to dev/results/cuda_<date>.md (and, on the
# device machine, to $OUT so it comes back). Every stage has a timeout and the whole script a deadline
# (DEADLINE_S, default 450 s), so it ends in under 8 minutes; stages that no longer fit are skipped and say so.
# Safe to rerun: make is incremental, the runs go to a fresh temporary folder, and the results file is new.
#
#   bash dev/cuda/check.sh                       # everything
#   STAGES="build test" bash dev/cuda/check.sh   # a subset: build test sdpa parity trainer hf nano small
#
# On the device machine (see /work/.library/device/README.md), from this repo's root here:
#   bash dev/cuda/fetch_debs.sh     # once: OpenBLAS .debs, in case the GPU image has no OpenBLAS (no network there)
#   run(command="bash dev/cuda/check.sh", carry=[".debs", "data/default"], timeout_s=560)
# (data/default, 6 MB, is for the hf stage's tokenizer check; without it that stage trains on a synthetic shard.)
# then copy the returned cuda_<date>.md into dev/results/.
set -u
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
START=$(date +%s)
DEADLINE=$((START + ${DEADLINE_S:-450}))
STAGES=${STAGES:-build test sdpa parity trainer hf nano small}  # small needs ~3-4 minutes of the deadline: drop it to save time
STAMP=$(date -u +%Y-%m-%d_%H%M)
W=$(mktemp -d /tmp/train_moe_cuda.XXXXXX)
trap 'rm -rf "$W"' EXIT
LOGS=${OUT:-$W}  # on the device machine, logs under $OUT come back
mkdir -p "$LOGS" dev/results
RES=dev/results/cuda_$STAMP.md
ROWS=()   # table rows: | stage | result | detail |

say() { echo "[check $(( $(date +%s) - START ))s] $*"; }
left() { echo $((DEADLINE - $(date +%s))); }
want() { case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
row() { ROWS+=("| $1 | $2 | $3 |"); }
# limit NEED SECONDS: the timeout for a stage (at most SECONDS, within the deadline); empty if under NEED remain
limit() {
    local l; l=$(left)
    if [ "$l" -lt "$1" ]; then echo ""; else echo $(( l - 5 < $2 ? l - 5 : $2 )); fi
}

# ---------------------------------------------------------------------------- GPU
say "GPU"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi 2>&1 | head -n 20
    GPU=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1)
else
    GPU="(no nvidia-smi)"
fi
say "GPU: $GPU"
# bf16 dense peak for MFU: H100 SXM and H200 989 TFLOP/s; H100 PCIe 756
PEAK_GFLOPS=989000
case "$GPU" in *PCIe*) PEAK_GFLOPS=756000 ;; esac

# ---------------------------------------------------------------------------- build
MAKEVARS=()
if want build || want test || want parity || want trainer || want hf || want nano || want small; then
    # OpenBLAS for the CPU side: the system's, else the carried .debs unpacked into a private root
    if [ ! -f /usr/include/x86_64-linux-gnu/openblas-openmp/cblas.h ]; then
        if ls .debs/*.deb >/dev/null 2>&1; then
            R=/tmp/train_moe_debroot
            mkdir -p "$R"
            for f in .debs/*.deb; do
                if command -v dpkg-deb >/dev/null 2>&1; then dpkg-deb -x "$f" "$R"
                else (d=$(mktemp -d) && cd "$d" && ar x "$ROOT/$f" && tar xf data.tar.* -C "$R"; rm -rf "$d"); fi
            done
            export LD_LIBRARY_PATH=$R/usr/lib/x86_64-linux-gnu:$R/usr/lib/x86_64-linux-gnu/openblas-openmp:${LD_LIBRARY_PATH:-}
            MAKEVARS=(OPENBLAS_OMP=$R/usr/lib/x86_64-linux-gnu/openblas-openmp
                      OPENBLAS_INC=$R/usr/include/x86_64-linux-gnu/openblas-openmp)
            say "OpenBLAS from .debs unpacked in $R"
        else
            say "no system OpenBLAS and no .debs/ (run dev/cuda/fetch_debs.sh here and carry .debs); trying anyway"
        fi
    fi
    # scripts/deps.sh would try apt-get (no registry is reachable from the device machine): the check above stands in
    mkdir -p build && touch build/.deps-build
fi
BUILD_OK=1
if want build; then
    T=$(limit 30 240)
    say "build (timeout ${T:-0}s)"
    if [ -n "$T" ] && timeout "$T" make -j"$(nproc)" "${MAKEVARS[@]}" train_moe > "$LOGS/build.log" 2>&1 \
       && T2=$(limit 5 120) && timeout "${T2:-1}" make -j"$(nproc)" "${MAKEVARS[@]}" build/tests/test_cuda build/tests/test_cuda_model \
          $( [ -f tests/test_cuda_attn_moe.c ] && echo build/tests/test_cuda_attn_moe ) >> "$LOGS/build.log" 2>&1; then
        if grep -q nvcc "$LOGS/build.log" || [ -f build/model/cuda/ops_cuda.o ]; then
            row build ok "nvcc $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo '?'); $(grep -c 'warning' "$LOGS/build.log") warnings"
        else
            row build FAIL "built without nvcc: no CUDA backend"; BUILD_OK=0
        fi
    else
        BUILD_OK=0
        tail -n 30 "$LOGS/build.log"
        row build FAIL "make failed or timed out (see build.log)"
    fi
    say "build: $([ $BUILD_OK = 1 ] && echo ok || echo FAILED)"
fi

# ---------------------------------------------------------------------------- op tests
if want test && [ $BUILD_OK = 1 ]; then
    for t in test_cuda test_cuda_attn_moe test_cuda_model; do
        [ -x build/tests/$t ] || continue
        T=$(limit 20 150)
        if [ -z "$T" ]; then row "$t" SKIP "no time left"; continue; fi
        say "$t (timeout ${T}s)"
        timeout "$T" ./build/tests/$t > "$LOGS/$t.log" 2>&1
        rc=$?
        grep -E '^(FAIL|SKIP)' "$LOGS/$t.log" | head -n 40
        summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$LOGS/$t.log" | tail -n 1)
        grep -E '^(FAIL|SKIP)' -q "$LOGS/$t.log" || tail -n 3 "$LOGS/$t.log"
        if [ $rc -eq 0 ] && [ -n "$summary" ]; then row "$t" ok "$summary"
        else row "$t" FAIL "exit $rc; ${summary:-no summary line} (see $t.log)"; fi
    done
fi

# ---------------------------------------------------------------------------- cuDNN attention
# tests/test_cuda_sdpa: our max-logit / K / dK kernels; cuDNN's SDPA (non-causal plumbing: out, Stats = lse, dq, dkv,
# da vs float64); causal cuDNN vs ours vs the CPU twin where --attention cudnn can be chosen; fwd+bwd timing, ours
# and cuDNN's (TIME lines; TEST_CUDA_SDPA_TIME_SHAPE="B T H nope rope dv" changes the shape)
if want sdpa && [ $BUILD_OK = 1 ]; then
    T=$(limit 30 150)
    if [ -z "$T" ]; then row sdpa SKIP "no time left"
    elif ! timeout "$T" make -j"$(nproc)" "${MAKEVARS[@]}" build/tests/test_cuda_sdpa >> "$LOGS/build.log" 2>&1; then
        row sdpa FAIL "make build/tests/test_cuda_sdpa failed (see build.log)"
    else
        T=$(limit 20 150)
        say "test_cuda_sdpa (timeout ${T:-0}s)"
        timeout "${T:-1}" ./build/tests/test_cuda_sdpa > "$LOGS/test_cuda_sdpa.log" 2>&1
        rc=$?
        grep -E '^(FAIL|SKIP|TIME|cuDNN)' "$LOGS/test_cuda_sdpa.log" | head -n 40
        summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$LOGS/test_cuda_sdpa.log" | tail -n 1)
        times=$(grep -E '^TIME' "$LOGS/test_cuda_sdpa.log" | sed 's/^TIME attention fwd+bwd //' | tr '\n' ';')
        if [ $rc -eq 0 ] && [ -n "$summary" ]; then row sdpa ok "$summary; $times"
        else row sdpa FAIL "exit $rc; ${summary:-no summary line}; $times (see test_cuda_sdpa.log)"; fi
    fi
fi

# ---------------------------------------------------------------------------- trainer runs
# median tok/s, MFU, ms of the step records after the first SKIP, from a run's log.jsonl
stats() {  # stats LOG SKIP -> "tok/s mfu% ms first_loss last_loss steps"
    python3 - "$1" "$2" <<'PY'
import json, sys, statistics
recs = []
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except Exception:
        continue
    if r.get("type") == "step":
        recs.append(r)
skip = int(sys.argv[2])
if not recs:
    print("- - - - - 0"); sys.exit()
num = lambda v: v if isinstance(v, (int, float)) else float("nan")  # non-finite values are logged as null
t = recs[skip:] if len(recs) > skip else recs[-1:]
med = lambda k: statistics.median([num(r.get(k)) for r in t])
print("%.0f %.1f %.1f %.4f %.4f %d" % (med("tok_s"), 100 * med("mfu"), med("ms"), num(recs[0].get("loss")),
                                      num(recs[-1].get("loss")), len(recs)))
PY
}

make_shard() {  # make_shard FILE TOKENS VOCAB
    [ -f "$1" ] || python3 data/shard_tool.py write "$1" --random "$2" --vocab "$3" --seed 7 > /dev/null
}

# run NAME DEVICE TIMEOUT ARGS...: one trainer run into $W/NAME; its output in $LOGS/NAME.log
run_trainer() {
    local name=$1 dev=$2 t=$3; shift 3
    timeout "$t" ./train_moe --device "$dev" --val-data '' --tokenizer "$W/none.bin" --sample-every 0 \
        --ckpt-every 0 --val-every 0 --out "$W/$name" --overwrite --seed 1 "$@" > "$LOGS/$name.log" 2>&1
}

COMMON_NANO=(--model k2-nano --train-data "$W/nano.bin" --lr 1e-3 --warmup 2)
if { want parity || want nano; } && [ $BUILD_OK = 1 ]; then make_shard "$W/nano.bin" 1000000 4096; fi

if want parity && [ $BUILD_OK = 1 ]; then
    # the same 3 steps (same seed, data, batch) on the CPU and on the GPU: the losses must agree to bf16 precision
    T=$(limit 30 60)
    if [ -z "$T" ]; then row "cpu vs cuda losses" SKIP "no time left"
    else
        say "parity: k2-nano 3 steps on cpu and cuda"
        run_trainer par_cpu cpu "$T" "${COMMON_NANO[@]}" --steps 3 --batch-size 8 --peak-gflops 1000
        rc_c=$?
        run_trainer par_gpu cuda "$(limit 10 60)" "${COMMON_NANO[@]}" --steps 3 --batch-size 8 --peak-gflops $PEAK_GFLOPS
        rc_g=$?
        if [ $rc_c -eq 0 ] && [ $rc_g -eq 0 ]; then
            detail=$(python3 - "$W/par_cpu/log.jsonl" "$W/par_gpu/log.jsonl" <<'PY'
import json, sys
def losses(p):
    v = [json.loads(l).get("loss") for l in open(p) if '"type":"step"' in l]
    return [x if isinstance(x, (int, float)) else float("nan") for x in v]
c, g = losses(sys.argv[1]), losses(sys.argv[2])
worst = max(abs(a - b) / abs(a) for a, b in zip(c, g)) if c and len(c) == len(g) else float("inf")
worst = worst if worst == worst else float("inf")  # NaN fails
print("%s %s" % ("ok" if worst < 2e-2 else "FAIL",
      "losses cpu " + " ".join("%.4f" % x for x in c) + " / cuda " + " ".join("%.4f" % x for x in g) +
      " (worst rel diff %.1e, tol 2e-2 for bf16)" % worst))
PY
)
            row "cpu vs cuda losses (k2-nano, 3 steps)" "${detail%% *}" "${detail#* }"
        else
            tail -n 5 "$LOGS/par_cpu.log" "$LOGS/par_gpu.log"
            row "cpu vs cuda losses (k2-nano, 3 steps)" FAIL "exit cpu $rc_c, cuda $rc_g (see par_*.log)"
        fi
    fi
fi

if want trainer && [ $BUILD_OK = 1 ]; then
    # the trainer end to end on the GPU vs the CPU (AdamW and Muon, validation), and resume on the GPU
    T=$(limit 30 120)
    if [ -z "$T" ]; then row "trainer cuda vs cpu, resume" SKIP "no time left"
    else
        say "trainer_check (timeout ${T}s)"
        # 2 ranks sharing the GPU as well, when the binary has MPI and mpirun is there
        MPI_ARG=""
        grep -q USE_MPI build/.flags 2>/dev/null && command -v mpirun > /dev/null && MPI_ARG=--mpi
        timeout "$T" bash dev/cuda/trainer_check.sh ./train_moe $MPI_ARG > "$LOGS/trainer_check.log" 2>&1
        rc=$?
        grep -E '^FAIL' "$LOGS/trainer_check.log" | head -n 10
        summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$LOGS/trainer_check.log" | tail -n 1)
        if [ $rc -eq 0 ]; then row "trainer cuda vs cpu, resume (k2-l1)" ok "$summary"
        else row "trainer cuda vs cpu, resume (k2-l1)" FAIL "exit $rc; ${summary:-no summary} (see trainer_check.log)"; fi
    fi
fi

# ---------------------------------------------------------------------------- HF export vs transformers
# Optional, where python3 has transformers: a tiny k2-nano run on the CPU (3 steps), exported with --export-hf, is
# loaded by transformers' AutoModelForCausalLM (float32, eager attention) and AutoTokenizer
# (dev/hf/hf_transformers_check.py): its logits vs the trainer's --eval --dump-logits (CPU, fp32) to 1e-4 relative
# per row, and the tokenizer vs sentencepiece on the exported tokenizer.model. Where transformers is missing: SKIP.
if want hf && [ $BUILD_OK = 1 ]; then
    if ! python3 -c "import transformers, torch" > /dev/null 2>&1; then
        row "hf export vs transformers" SKIP "python3 has no transformers (or torch): not installed on this machine"
    elif T=$(limit 40 180) && [ -z "$T" ]; then
        row "hf export vs transformers" SKIP "no time left"
    else
        say "hf: a tiny run exported and loaded by transformers (timeout ${T}s)"
        hf_end=$(( $(date +%s) + T ))
        hf_left() { local l=$(( hf_end - $(date +%s) )); echo $(( l > 1 ? l : 1 )); }
        if [ -f data/default/tokenizer.model ] && [ -f data/default/tokenizer.bin ] && ls data/default/val_*.bin > /dev/null 2>&1; then
            HF_DATA=(--train-data 'data/default/train_*.bin' --val-data 'data/default/val_*.bin')
            HF_TOK=data/default/tokenizer.bin; hf_src="data/default"
        else
            make_shard "$W/hf_train.bin" 40000 4096
            HF_DATA=(--train-data "$W/hf_train.bin" --val-data "$W/hf_train.bin")
            HF_TOK=$W/none.bin; hf_src="a synthetic shard (no data/default: no tokenizer check)"
        fi
        HF_SHAPE=(--batch-size 2 --seq-len 64 --device cpu --threads "$(nproc)" --tokenizer "$HF_TOK")
        step=""
        if ! timeout "$(hf_left)" ./train_moe --model k2-nano --steps 3 --ckpt-every 3 --val-every 0 --sample-every 0 \
                --out "$W/hfrun" --overwrite "${HF_DATA[@]}" "${HF_SHAPE[@]}" > "$LOGS/hf_train.log" 2>&1; then step=train
        elif ! timeout "$(hf_left)" ./train_moe --export-hf "$W/hf" --out "$W/hfrun" --tokenizer "$HF_TOK" \
                > "$LOGS/hf_export.log" 2>&1; then step=export
        elif ! timeout "$(hf_left)" ./train_moe --eval --out "$W/hfrun" --val-batches 1 --dump-logits "$W/hf_logits.bin" \
                "${HF_DATA[@]}" "${HF_SHAPE[@]}" > "$LOGS/hf_eval.log" 2>&1; then step=eval
        fi
        if [ -n "$step" ]; then
            tail -n 5 "$LOGS/hf_$step.log"
            row "hf export vs transformers" FAIL "train_moe $step failed (see hf_$step.log)"
        else
            timeout "$(hf_left)" python3 dev/hf/hf_transformers_check.py "$W/hf" --logits "$W/hf_logits.bin" \
                > "$LOGS/hf_check.log" 2>&1
            rc=$?
            cat "$LOGS/hf_check.log"
            summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$LOGS/hf_check.log" | tail -n 1)
            fails=$(grep -E '^FAIL' "$LOGS/hf_check.log" | head -n 2 | cut -c1-160 | tr '\n' ' ')
            worst=$(grep -m1 -oE 'worst [0-9.e+-]+' "$LOGS/hf_check.log")
            ver=$(grep -m1 -oE '^transformers [^,]+' "$LOGS/hf_check.log")
            if [ $rc -eq 0 ] && [ -n "$summary" ]; then
                row "hf export vs transformers" ok "$ver; k2-nano on $hf_src: $summary; logits $worst (tol 1e-4)"
            else
                row "hf export vs transformers" FAIL "exit $rc; ${summary:-no summary}; $fails(see hf_check.log)"
            fi
        fi
    fi
fi

# bench ID LABEL TIMEOUT_MAX SKIP ARGS...: a timed run on the GPU (log $LOGS/ID.log), summarised as one table row
# (medians over the steps after the first SKIP). A run stopped by its timeout after logging steps counts as
# time-boxed, not failed: k2-small runs with --steps far beyond what fits and is stopped, so that no 30 GB final
# checkpoint is written.
bench() {
    local id=$1 name=$2 tmax=$3 skip=$4; shift 4
    local T; T=$(limit 60 "$tmax")
    if [ -z "$T" ]; then row "$name" SKIP "no time left"; return; fi
    say "bench $name (timeout ${T}s): $*"
    run_trainer "$id" cuda "$T" --peak-gflops $PEAK_GFLOPS "$@"
    local rc=$?
    grep -E '^(memory|device|error)' "$LOGS/$id.log" | head -n 3
    tail -n 2 "$LOGS/$id.log"
    local s; s=$(stats "$W/$id/log.jsonl" "$skip" 2>/dev/null || echo "- - - - - 0")
    read -r toks mfu ms l0 l1 n <<< "$s"
    if [ "${n:-0}" -gt 0 ]; then
        local res="exit $rc"
        [ $rc -eq 0 ] && res=ok
        [ $rc -eq 124 ] && res="ok (time-boxed at ${T}s)"
        row "$name" "$res" "$toks tok/s, MFU $mfu%, $ms ms/step (medians after step $skip of $n), loss $l0 -> $l1"
        # the per-op breakdown (--profile): median ms per category and its share of the step
        local p; p=$(python3 - "$W/$id/log.jsonl" "$skip" <<'PY'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if '"type":"step"' in l][int(sys.argv[2]):]
recs = [r for r in recs if isinstance(r.get("prof_ms"), dict)]
if recs:
    ms = statistics.median(r["ms"] for r in recs)
    keys = list(recs[0]["prof_ms"])
    print(", ".join("%s %.1f ms (%.0f%%)" % (k, statistics.median(r["prof_ms"][k] for r in recs),
                                             100 * statistics.median(r["prof_ms"][k] for r in recs) / ms) for k in keys))
PY
)
        [ -n "$p" ] && row "$name: time per step" "-" "$p"
    else
        row "$name" FAIL "exit $rc, no step logged: $(grep -m1 -E 'error' "$LOGS/$id.log" | cut -c1-160)"
    fi
}

if want nano && [ $BUILD_OK = 1 ]; then
    bench bench_nano "k2-nano B=32 T=256 (20 steps)" 90 5 "${COMMON_NANO[@]}" --steps 20 --batch-size 32 --profile
    bench bench_nano_muon "k2-nano B=32 T=256 Muon (20 steps)" 90 5 "${COMMON_NANO[@]}" --steps 20 --batch-size 32 \
        --optim muon --profile
    # the experts' weight gradients: the default WMMA kernel (first row) against the ~2 x 384 per-expert cuBLAS
    # calls per MoE layer it replaced (model/cuda/moe.cu); expert_gemms_bwd in --profile shows the difference
    export TRAIN_MOE_EXPERT_DW=loop
    bench bench_nano_dwl "k2-nano B=32 T=256, TRAIN_MOE_EXPERT_DW=loop" 90 5 "${COMMON_NANO[@]}" --steps 20 \
        --batch-size 32 --profile
    unset TRAIN_MOE_EXPERT_DW
    # Newton-Schulz in fp32 against the default bf16 (the Muon row above): newton_schulz in --profile
    bench bench_nano_nsf "k2-nano B=32 T=256 Muon, --muon-ns fp32" 90 5 "${COMMON_NANO[@]}" --steps 20 \
        --batch-size 32 --optim muon --muon-ns fp32 --profile
fi
if want small && [ $BUILD_OK = 1 ]; then
    # 2.52B parameters: the host draws the initial weights single-threaded (~1-2 minutes) before the first step;
    # 45 GB of GPU memory for weights, gradients and AdamW state, a few GB of activations at B=4
    make_shard "$W/small.bin" 2000000 50304
    bench bench_small "k2-small B=4 T=2048 (time-boxed)" 260 2 --model k2-small --train-data "$W/small.bin" \
        --steps 1000 --batch-size 4 --lr 3e-4 --warmup 2 --profile
fi

# ---------------------------------------------------------------------------- predicted vs measured
# The roofline prediction for the same shapes (the newest dev/results/cuda_predict_*.json, written without a GPU by
# dev/cuda/predict_results.sh from the CPU emulator's counts, dev/cuda/emu/emu_cost.cpp) beside what the bench runs
# measured: the step and each --profile part, so the first GPU run shows where the model is wrong.
PRED_JSON=$(ls -t dev/results/cuda_predict_*.json 2>/dev/null | head -n 1)
if [ -n "$PRED_JSON" ]; then
    for spec in "bench_nano k2-nano 32 adamw" "bench_nano_muon k2-nano 32 muon" "bench_small k2-small 4 adamw"; do
        set -- $spec
        [ -f "$W/$1/log.jsonl" ] || continue
        cmp_line=$(python3 - "$PRED_JSON" "$W/$1/log.jsonl" "$2" "$3" "$4" "$GPU" <<'PY'
import json, statistics, sys
pred_file, log, model, batch, optim, gpu = sys.argv[1:7]
col = "H200" if "H200" in gpu else "H100"
bench = [b for b in json.load(open(pred_file)).get("bench", [])
         if b["model"] == model and b["batch"] == int(batch) and b["optim"] == optim]
recs = [json.loads(l) for l in open(log) if '"type":"step"' in l]
recs = recs[len(recs) // 2:]  # the second half: past the warm-up
if not bench or not recs:
    print("no prediction for this shape in %s" % pred_file if not bench else "no steps logged"); sys.exit()
b, i = bench[0], 0 if col == "H100" else 1
num = lambda v: v if isinstance(v, (int, float)) else float("nan")
ms = statistics.median(num(r.get("ms")) for r in recs)
out = "%s (%s): step predicted %.1f ms, measured %.1f ms (x%.2f)" % (col, pred_file.split("/")[-1], b["step_ms"][col], ms,
                                                                     ms / b["step_ms"][col])
prof = [r["prof_ms"] for r in recs if isinstance(r.get("prof_ms"), dict)]
if prof:
    parts = b.get("profile_parts_ms", {})
    meas = {k: statistics.median(p.get(k, 0) for p in prof) for k in prof[0]}
    keys = sorted(set(meas) | set(parts), key=lambda k: -max(meas.get(k, 0), parts.get(k, [0, 0])[i]))
    out += "; per part predicted/measured ms: " + ", ".join(
        "%s %.2f/%s" % (k, parts.get(k, [0, 0])[i], "%.2f" % meas[k] if k in meas else "-") for k in keys[:10])
print(out)
PY
)
        say "predicted vs measured, $2 B=$3 $4: $cmp_line"
        row "$2 B=$3 $4: predicted vs measured" "-" "$cmp_line"
    done
fi

# ---------------------------------------------------------------------------- table
{
    echo "# CUDA check ($STAMP UTC)"
    echo
    echo "GPU: $GPU. Commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' + local changes')."
    echo "Command: \`bash dev/cuda/check.sh\` (STAGES=\"$STAGES\"), $(( $(date +%s) - START )) s. MFU against ${PEAK_GFLOPS%000} TFLOP/s"
    echo "(bf16 dense peak), flops per token from the trainer's own count; throughput: medians over the steps after the warm-up ones."
    echo
    echo "| stage | result | detail |"
    echo "|---|---|---|"
    for r in "${ROWS[@]}"; do echo "$r"; done
} > "$RES"
[ -n "${OUT:-}" ] && cp "$RES" "$OUT/"
echo
cat "$RES"
echo
say "results in $RES$([ -n "${OUT:-}" ] && echo " and \$OUT/$(basename "$RES")"); logs in $LOGS"
