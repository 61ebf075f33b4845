#!/usr/bin/env bash
# tests/test_hf.sh: Hugging Face export (--export-hf) and import (--init-from), and config.json models (--model
# PATH), end to end on the default corpus with k2-l1. tests/hf_tool.py checks the files with its own safetensors
# parser and its own name map (from transformers' DeepseekV3ForCausalLM), against the model file's bytes.
#
#   bash tests/test_hf.sh [WORKDIR]
#
# 1. export: a 60-step run exported as fp32 holds exactly the HF tensor names of its config.json, with their shapes,
#    F32, every tensor equal to its slice of the model file, the tokenizer files beside it
# 2. import: --init-from the export gives the trained run's final validation loss exactly (weights and router bias
#    carried), far below ln(V); two --init-from runs train identically; a checkpoint of the imported weights exports
#    byte-identical safetensors (the round trip), also under mpirun with --ep 2
# 3. bf16 (the bias stays F32) is the round-to-nearest-even of fp32 and loads as its exact widening; a sharded export
#    (index + several files) loads to the same weights
# 4. config.json models: the export's config.json as --model gives the preset's layout; a run of it resumes, and a
#    checkpoint refuses another config (a different preset, or only rope_theta different)
# 5. bad inputs: each a non-zero exit and one error line naming the file and the tensor or field
# 6. ranks: the same --init-from path with other contents on another rank is refused
# Each check prints one PASS/FAIL/SKIP line; the last line is "N passed, N failed, N skipped".
. "$(dirname "$0")/lib.sh" hf "$@"

TOOL=("$PY" tests/hf_tool.py)
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")  # absolute: the ranks of section 6 run in other folders
if [ ! -f data/default/train_000.bin ] || [ ! -f data/default/val_000.bin ] || [ ! -f data/default/tokenizer.model ]; then
    skip "every check: data/default is missing (make data)"
    finish
fi
if ! "$PY" -c 'import numpy' 2> /dev/null; then
    fail "every check: $PY has no numpy (apt-get install python3-numpy)"
    finish
fi
RUN=(--batch-size 4 --seq-len 64 --threads 2 --peak-gflops 100 --sample-every 0 --val-batches 2)
# trainer PREFIX ARGS...: runs the trainer (hang guard 120 s); output in PREFIX.out/.err; exit code in RC
trainer() { local p=$1; shift; timeout 120 "$BIN" "$@" > "$p.out" 2> "$p.err" < /dev/null; RC=$?; }
oneline() { head -c 400 "$1" | tr '\n' ' '; }
# json_val FILE TYPE STEP KEY: KEY of the log record {"type":TYPE,"step":STEP}
json_val() {
    "$PY" -c 'import json,sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    if r.get("type") == sys.argv[2] and r.get("step") == int(sys.argv[3]): v = r[sys.argv[4]]
print(repr(v))' "$@" 2> /dev/null
}

# ---- 1. export
trainer "$W/train" --model k2-l1 "${RUN[@]}" --steps 60 --val-every 30 --ckpt-every 30 --out "$W/run"
[ $RC -eq 0 ] || { fail "training k2-l1 for 60 steps: exit $RC: $(oneline "$W/train.err")"; finish; }
"$BIN" --model k2-l1 --seq-len 64 --print-layout > "$W/layout.json"
MODEL60=$W/run/model_00000060.bin

trainer "$W/exp32" --export-hf "$W/e32" --out "$W/run"
if [ $RC -eq 0 ] && [ ! -s "$W/exp32.err" ] && grep -q "exported step 60 of" "$W/exp32.out"; then
    pass "--export-hf (newest checkpoint, step 60): exit 0, no warning: $(head -n 1 "$W/exp32.out" | cut -c1-150)"
else
    fail "--export-hf: exit $RC: $(oneline "$W/exp32.err") $(oneline "$W/exp32.out")"
fi
if out=$("${TOOL[@]}" check "$W/e32" "$MODEL60" "$W/layout.json" 2>&1); then pass "fp32 export: $out"
else fail "fp32 export: $out"; fi
files_ok=1
for fn in config.json generation_config.json tokenizer.model tokenizer_config.json special_tokens_map.json; do
    [ -s "$W/e32/$fn" ] || files_ok=0
done
if [ $files_ok -eq 1 ] && cmp -s data/default/tokenizer.model "$W/e32/tokenizer.model" && "$PY" - "$W/e32" << 'EOF'
import json, sys
d = sys.argv[1]
c = json.load(open(d + "/config.json"))
want = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "rope_interleave": True, "n_group": 1,
        "topk_group": 1, "norm_topk_prob": True, "scoring_func": "sigmoid", "topk_method": "noaux_tc",
        "tie_word_embeddings": False, "first_k_dense_replace": 1, "n_shared_experts": 1, "max_position_embeddings": 64,
        "rope_theta": 50000.0, "rms_norm_eps": 1e-06, "routed_scaling_factor": 2.827, "hidden_act": "silu",
        "attention_bias": False, "num_key_value_heads": 2, "num_nextn_predict_layers": 0, "rope_scaling": None,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32", "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "q_lora_rank": 16, "kv_lora_rank": 8, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8,
        "v_head_dim": 8, "n_routed_experts": 384, "num_experts_per_tok": 8, "moe_intermediate_size": 8,
        "intermediate_size": 72, "vocab_size": 4096, "initializer_range": 0.02, "use_cache": True}
bad = {k: (c.get(k), v) for k, v in want.items() if c.get(k) != v or type(c.get(k)) != type(v)}
t = json.load(open(d + "/tokenizer_config.json"))
tw = {"tokenizer_class": "LlamaTokenizer", "legacy": True, "add_bos_token": True, "add_eos_token": False,
      "add_prefix_space": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
      "model_max_length": 64, "clean_up_tokenization_spaces": False}
bad.update({k: (t.get(k), v) for k, v in tw.items() if t.get(k, "absent") != v})
g = json.load(open(d + "/generation_config.json"))
if g != {"bos_token_id": 1, "eos_token_id": 2, "do_sample": True}: bad["generation_config"] = g
s = json.load(open(d + "/special_tokens_map.json"))
if s != {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}: bad["special_tokens_map"] = s
if bad: print(bad); sys.exit(1)
EOF
then
    pass "config.json (every DeepseekV3Config field), generation_config.json, tokenizer.model (a copy), tokenizer_config.json, special_tokens_map.json"
else
    fail "the export's json/tokenizer files are missing or differ from what they must say"
fi
# --step: the older checkpoint; a step without a checkpoint is refused
trainer "$W/exp30" --export-hf "$W/e30" --out "$W/run" --step 30
trainer "$W/exp31" --export-hf "$W/e31" --out "$W/run" --step 31
if [ -f "$W/e30/model.safetensors" ] && "${TOOL[@]}" check "$W/e30" "$W/run/model_00000030.bin" "$W/layout.json" > /dev/null \
   && [ $RC -ne 0 ] && grep -q "^error: .*no complete checkpoint of step 31" "$W/exp31.err" && [ ! -e "$W/e31" ]; then
    pass "--step 30 exports checkpoint 30; --step 31 (none): $(cat "$W/exp31.err")"
else
    fail "--step: $(oneline "$W/exp30.err") / exit $RC: $(oneline "$W/exp31.err")"
fi

# ---- 2. import
ln_v=$("$PY" -c 'import math; print(math.log(4096))')
trainer "$W/imp_a" "${RUN[@]}" --steps 3 --val-every 100 --init-from "$W/e32" --out "$W/imp_a"
rc_a=$RC
trainer "$W/imp_b" "${RUN[@]}" --steps 3 --val-every 100 --init-from "$W/e32" --out "$W/imp_b"
val_trained=$(json_val "$W/run/log.jsonl" val 60 val_loss)
val_a=$(json_val "$W/imp_a/log.jsonl" val 0 val_loss)
loss_a=$(json_val "$W/imp_a/log.jsonl" step 1 loss); loss_b=$(json_val "$W/imp_b/log.jsonl" step 1 loss)
loss3_a=$(json_val "$W/imp_a/log.jsonl" step 3 loss); loss3_b=$(json_val "$W/imp_b/log.jsonl" step 3 loss)
first_trained=$(json_val "$W/run/log.jsonl" step 1 loss)
if [ $rc_a -eq 0 ] && [ -n "$val_trained" ] && [ "$val_trained" = "$val_a" ]; then
    pass "--init-from the export: validation loss before step 1 = the trained run's final one exactly ($val_a)"
else
    fail "--init-from: exit $rc_a, val loss $val_a vs the trained run's $val_trained: $(oneline "$W/imp_a.err")"
fi
if [ -n "$loss_a" ] && [ "$loss_a" = "$loss_b" ] && [ "$loss3_a" = "$loss3_b" ] && \
   "$PY" -c "import sys; a, v, f = $loss_a, $ln_v, $first_trained; sys.exit(0 if a < v - 1.0 and a < f - 1.0 else 1)"; then
    pass "two --init-from runs: the same losses (step 1 $loss_a, step 3 $loss3_a), step 1 far below ln(V) = ${ln_v:0:6} and the fresh run's $first_trained"
else
    fail "--init-from determinism / loss: step 1 $loss_a vs $loss_b, step 3 $loss3_a vs $loss3_b, ln(V) $ln_v, fresh $first_trained"
fi
# the round trip: a checkpoint of the imported weights (one step whose NaN gradient is skipped: --inject-nan 1) exports
# the same bytes
trainer "$W/rt" "${RUN[@]}" --steps 1 --val-every 0 --inject-nan 1 --init-from "$W/e32" --out "$W/rt"
trainer "$W/rt_exp" --export-hf "$W/e32_rt" --out "$W/rt"
if [ $RC -eq 0 ] && cmp -s "$W/e32/model.safetensors" "$W/e32_rt/model.safetensors" && cmp -s "$W/e32/config.json" "$W/e32_rt/config.json"; then
    pass "round trip: --init-from, checkpoint at step 1 (update skipped), --export-hf: model.safetensors and config.json byte-identical"
else
    fail "round trip: exit $RC, the re-export differs: $(oneline "$W/rt.err") $(oneline "$W/rt_exp.err")"
fi
# the same under mpirun, experts split over 2 ranks: each rank loads the whole model and keeps its half
if command -v mpirun > /dev/null && grep -q USE_MPI build/.flags 2> /dev/null; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    timeout 120 mpirun --oversubscribe --mca btl self,vader -np 2 "$BIN" "${RUN[@]}" --batch-size 2 --threads 1 --ep 2 \
        --steps 1 --val-every 0 --inject-nan 1 --init-from "$W/e32" --out "$W/rt_ep" > "$W/rt_ep.out" 2> "$W/rt_ep.err" < /dev/null
    rc_ep=$?
    trainer "$W/rt_ep_exp" --export-hf "$W/e32_ep" --out "$W/rt_ep"
    if [ $rc_ep -eq 0 ] && [ $RC -eq 0 ] && cmp -s "$W/e32/model.safetensors" "$W/e32_ep/model.safetensors"; then
        pass "--init-from under mpirun -np 2 --ep 2: the checkpoint (experts gathered from both ranks) exports byte-identical"
    else
        fail "--init-from with --ep 2: exit $rc_ep / $RC: $(oneline "$W/rt_ep.err") $(oneline "$W/rt_ep_exp.err")"
    fi
    # --export-hf is one process
    timeout 60 mpirun --oversubscribe --mca btl self,vader -np 2 "$BIN" --export-hf "$W/e_mpi" --out "$W/run" \
        > "$W/e_mpi.out" 2> "$W/e_mpi.err" < /dev/null
    rc=$?
    if [ $rc -ne 0 ] && [ $rc -lt 124 ] && grep -q "^error: .*--export-hf runs in one process" "$W/e_mpi.err" && [ ! -e "$W/e_mpi" ]; then
        pass "--export-hf under mpirun -np 2: refused ($(grep -m1 '^error' "$W/e_mpi.err" | cut -c1-120))"
    else
        fail "--export-hf under mpirun: exit $rc: $(oneline "$W/e_mpi.err")"
    fi
else
    skip "--init-from with --ep 2 and --export-hf under mpirun: no mpirun or a build without MPI"
fi

# ---- 3. bf16 and shards
trainer "$W/exp16" --export-hf "$W/e16" --out "$W/run" --dtype bf16
if [ $RC -eq 0 ] && out=$("${TOOL[@]}" check "$W/e16" "$MODEL60" "$W/layout.json" --dtype BF16 2>&1) \
   && grep -q '"torch_dtype": "bfloat16"' "$W/e16/config.json"; then
    pass "bf16 export: $out"
else
    fail "bf16 export: exit $RC: $out $(oneline "$W/exp16.err")"
fi
trainer "$W/rt16" "${RUN[@]}" --steps 1 --val-every 0 --inject-nan 1 --init-from "$W/e16" --out "$W/rt16"
trainer "$W/rt16_exp" --export-hf "$W/e16_rt" --out "$W/rt16"
if [ $RC -eq 0 ] && out=$("${TOOL[@]}" widened "$W/e16" "$W/e16_rt" 2>&1); then
    pass "--init-from the bf16 export: $out"
else
    fail "--init-from bf16: exit $RC: $out $(oneline "$W/rt16.err")"
fi
trainer "$W/exp_sh" --export-hf "$W/esh" --out "$W/run" --max-shard-size 600000
nshard=$(ls "$W/esh" 2> /dev/null | grep -c '^model-0000[0-9]-of-0000[0-9].safetensors$')
if [ $RC -eq 0 ] && [ "$nshard" -ge 3 ] && [ ! -e "$W/esh/model.safetensors" ] && out=$("${TOOL[@]}" check "$W/esh" "$MODEL60" "$W/layout.json" 2>&1); then
    pass "--max-shard-size 600000: $nshard files + model.safetensors.index.json; $out"
else
    fail "sharded export: exit $RC, $nshard shard files: $out $(oneline "$W/exp_sh.err")"
fi
trainer "$W/rt_sh" "${RUN[@]}" --steps 1 --val-every 0 --inject-nan 1 --init-from "$W/esh" --out "$W/rt_sh"
trainer "$W/rt_sh_exp" --export-hf "$W/esh_rt" --out "$W/rt_sh"
if [ $RC -eq 0 ] && cmp -s "$W/e32/model.safetensors" "$W/esh_rt/model.safetensors"; then
    pass "--init-from the sharded export, exported again in one file: byte-identical to the single-file export"
else
    fail "--init-from sharded: exit $RC: $(oneline "$W/rt_sh.err") $(oneline "$W/rt_sh_exp.err")"
fi
# an existing export: refused without --overwrite, replaced with it (the shards go, one file comes)
trainer "$W/exp_again" --export-hf "$W/esh" --out "$W/run"
rc1=$RC; err1=$(cat "$W/exp_again.err")
trainer "$W/exp_over" --export-hf "$W/esh" --out "$W/run" --overwrite
if [ $rc1 -ne 0 ] && [[ "$err1" == "error: "*"exists and is not empty"*"--overwrite"* ]] && [ $RC -eq 0 ] \
   && [ -f "$W/esh/model.safetensors" ] && ! ls "$W/esh" | grep -q '^model-' && ! ls "$W" | grep -q 'esh\.\(tmp\|old\)-'; then
    pass "an earlier export: refused ($err1); --overwrite replaces it whole, no temporary folder left"
else
    fail "export over an earlier one: exit $rc1 ($err1), with --overwrite exit $RC: $(oneline "$W/exp_over.err")"
fi
mkdir -p "$W/notempty"; echo hi > "$W/notempty/notes.txt"
trainer "$W/exp_notmine" --export-hf "$W/notempty" --out "$W/run" --overwrite
if [ $RC -ne 0 ] && grep -q "^error: .*notes.txt is not a file an export writes" "$W/exp_notmine.err" && [ -f "$W/notempty/notes.txt" ]; then
    pass "--overwrite refuses a folder that holds other files: $(cut -c1-140 "$W/exp_notmine.err")"
else
    fail "--overwrite of a foreign folder: exit $RC: $(oneline "$W/exp_notmine.err")"
fi

# ---- 4. config.json models
"$BIN" --model "$W/e32/config.json" --print-layout > "$W/layout_file.json" 2> "$W/layout_file.err"
if "$PY" -c 'import json, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
assert a.pop("model") == "e32" and b.pop("model") == "k2-l1", "names"
sys.exit(0 if a == b else 1)' "$W/layout_file.json" "$W/layout.json"; then
    pass "--model EXPORT/config.json (named e32): --print-layout identical to k2-l1 --seq-len 64's"
else
    fail "--model config.json: the layout differs: $(oneline "$W/layout_file.err")"
fi
FM=(--model "$W/e32/config.json" "${RUN[@]}" --val-every 0)
trainer "$W/fm1" "${FM[@]}" --steps 4 --ckpt-every 2 --out "$W/fm_straight"
trainer "$W/fm2" "${FM[@]}" --steps 4 --ckpt-every 2 --out "$W/fm"
rm "$W/fm/DONE_00000004"
trainer "$W/fm3" "${FM[@]}" --steps 4 --ckpt-every 2 --out "$W/fm" --resume
if [ $RC -eq 0 ] && cmp -s "$W/fm_straight/model_00000004.bin" "$W/fm/model_00000004.bin"; then
    pass "a config.json model's run resumes from step 2 and ends byte-identical to the straight run"
else
    fail "resume of a config.json model: exit $RC: $(oneline "$W/fm3.err")"
fi
trainer "$W/fm4" --model k2-l2 "${RUN[@]}" --val-every 0 --steps 4 --out "$W/fm" --resume
rc1=$RC; err1=$(cat "$W/fm4.err")
"${TOOL[@]}" config "$W/e32/config.json" "$W/theta/config.json" rope_theta 10000.0
trainer "$W/fm5" --model "$W/theta/config.json" "${RUN[@]}" --val-every 0 --steps 4 --out "$W/fm" --resume
if [ $rc1 -ne 0 ] && [[ "$err1" == "error: "*"d_model"* ]] && [ $RC -ne 0 ] && grep -q "^error: .*rope_theta" "$W/fm5.err"; then
    pass "its checkpoint refuses --model k2-l2 and a config.json differing only in rope_theta: $(cut -c1-120 "$W/fm5.err")"
else
    fail "checkpoint vs other config: exit $rc1 ($err1), rope_theta: exit $RC: $(oneline "$W/fm5.err")"
fi
# --model a folder, and --model that agrees with --init-from (its --seq-len aside)
trainer "$W/fm6" --model "$W/e32" --print-layout
trainer "$W/fm7" --model k2-l1 "${RUN[@]}" --val-every 0 --steps 1 --init-from "$W/e32" --out "$W/fm7"
if [ $RC -eq 0 ] && grep -q '"model":"e32"' "$W/fm6.out"; then
    pass "--model DIR reads DIR/config.json; --model k2-l1 --init-from the export (same model) trains"
else
    fail "--model DIR / agreeing --model: exit $RC: $(oneline "$W/fm6.err") $(oneline "$W/fm7.err")"
fi
"$BIN" --list-models > "$W/list.out"
if grep -q "config.json" "$W/list.out" && "$BIN" --help | grep -q -- "--model .*config.json"; then
    pass "--list-models and --help say that --model takes a config.json path"
else
    fail "--list-models / --help do not mention config.json"
fi

# ---- 5. bad inputs: one error line naming the file and the tensor or field
# bad_case DESC NEEDLES CMD...: the trainer must exit non-zero (no signal, no hang) with exactly one stderr line,
# "error: ..." containing every '|'-separated needle
bad_case() {
    local desc=$1 needles=$2; shift 2
    local p=$W/bad_$((++nbad)) why="" n first
    timeout 60 "$BIN" "$@" > "$p.out" 2> "$p.err" < /dev/null
    local rc=$?
    [ $rc -eq 0 ] && why+="exit 0; "
    [ $rc -ge 124 ] && why+="exit $rc (hang or signal); "
    n=$(grep -c . "$p.err"); first=$(grep -m1 . "$p.err")
    [ "$n" -eq 1 ] || why+="stderr has $n lines; "
    case "$first" in "error: "*) ;; *) why+="stderr does not start with 'error: '; " ;; esac
    local IFS='|' nd
    for nd in $needles; do grep -qF -- "$nd" "$p.err" || why+="the error does not name '$nd'; "; done
    if [ -z "$why" ]; then pass "$desc: $(cut -c1-170 "$p.err")"; else fail "$desc: $why$(oneline "$p.err")"; fi
}
nbad=0
IMP=("${RUN[@]}" --steps 1 --val-every 0 --out "$W/bad_run" --overwrite)
bad_init() {  # bad_init KIND NEEDLES: --init-from a copy of the export with one defect
    "${TOOL[@]}" bad "$W/e32" "$W/b_$1" "$1" || { fail "hf_tool.py bad $1"; return; }
    bad_case "--init-from, $1" "$W/b_$1${3:+/$3}|$2" "${IMP[@]}" --init-from "$W/b_$1"
}
bad_init missing "tensor 'model.layers.1.mlp.experts.5.up_proj.weight' is missing" model.safetensors
bad_init shape "tensor 'model.layers.0.self_attn.q_a_proj.weight' has shape [32, 16]" model.safetensors
bad_init dtype_f16 "tensor 'model.layers.0.self_attn.q_a_proj.weight' has dtype F16" model.safetensors
bad_init dtype_i64 "tensor 'model.layers.1.mlp.gate.e_score_correction_bias' has dtype I64" model.safetensors
bad_init truncated "lm_head.weight|past the" model.safetensors
bad_init overlap "model.layers.0.self_attn.q_a_proj.weight|overlap" model.safetensors
bad_init past_end "lm_head.weight|past the" model.safetensors
bad_init gap "model.layers.0.self_attn.q_a_proj.weight|gap of 8 bytes" model.safetensors
bad_init duplicate "invalid JSON|duplicate key \"model.embed_tokens.weight\"" model.safetensors
bad_init invalid_json "invalid JSON at byte" model.safetensors
bad_init nan "tensor 'model.layers.0.self_attn.q_a_proj.weight' element 0 is not finite" model.safetensors
bad_init unknown "tensor 'model.layers.2.self_attn.q_a_proj.weight' is not part of the model" model.safetensors
bad_init both_layouts "both model.safetensors and model.safetensors.index.json" ""
bad_init index_escape "../model.safetensors" model.safetensors.index.json
bad_init index_wrong_file "model.layers.1.mlp.experts.5.up_proj.weight" "model-0000"
# config.json fields we do not implement, each through --model FILE (and two through --init-from)
bad_config() {  # bad_config KEY JSON NEEDLE
    local dst=$W/cfg_$1_$((++ncfg))/config.json
    "${TOOL[@]}" config "$W/e32/config.json" "$dst" "$1" "$2"
    bad_case "config.json $1 = $2" "$dst|'$1'|$3" --model "$dst" --print-layout
}
ncfg=0
bad_config n_group 8 "grouped expert routing"
bad_config topk_group - "is missing"
bad_config n_shared_experts 2 "shared experts"
bad_config num_nextn_predict_layers 1 "multi-token-prediction"
bad_config rope_scaling '{"type": "yarn", "factor": 40}' "yarn"
bad_config q_lora_rank null "query latent"
bad_config scoring_func '"softmax"' "scoring function"
bad_config topk_method '"greedy"' "expert selection"
bad_config norm_topk_prob false "unnormalised"
bad_config tie_word_embeddings true "tied"
bad_config hidden_act '"gelu"' "activation"
bad_config attention_bias true "biases"
bad_config num_key_value_heads 1 "grouped-query"
bad_config rope_interleave false "interleaved"
bad_config moe_layer_freq 2 "dense layers between"
bad_config rms_norm_eps 1e-5 "only 1e-6"
bad_config hidden_size - "is missing"
bad_config hidden_size '"32"' "must be an integer"
bad_config rms_norm_eps '"1e-6"' "must be a number"
bad_config qk_rope_head_dim 7 "must be even"
bad_config rope_theta 1e39 "beyond the range of a 32-bit float"   # finite as a double, infinite as a float (found by fuzzing)
bad_config rope_theta -10000.0 "must be a positive float"
bad_config routed_scaling_factor 0 "must be a positive float"
mkdir -p "$W/cfg_json"; printf '{"vocab_size": 4096,}' > "$W/cfg_json/config.json"
bad_case "config.json with a trailing comma" "$W/cfg_json/config.json|invalid JSON at byte 20" --model "$W/cfg_json/config.json" --print-layout
cp -r "$W/e32" "$W/b_cfg"; "${TOOL[@]}" config "$W/e32/config.json" "$W/b_cfg/config.json" rope_interleave false
bad_case "--init-from a folder whose config.json says rope_interleave false" "$W/b_cfg/config.json|'rope_interleave'" \
    "${IMP[@]}" --init-from "$W/b_cfg"
bad_case "--init-from with --resume" "--init-from|--resume" "${RUN[@]}" --steps 1 --init-from "$W/e32" --out "$W/run" --resume
bad_case "--init-from with a --model of another config" "--model k2-l2|$W/e32/config.json|hidden_size" \
    "${IMP[@]}" --init-from "$W/e32" --model k2-l2
mkdir -p "$W/noweights"; cp "$W/e32/config.json" "$W/noweights/"
bad_case "--init-from a folder without weights" "$W/noweights|neither model.safetensors" "${IMP[@]}" --init-from "$W/noweights"
bad_case "--init-from a folder without config.json" "$W/notempty/config.json|cannot open" "${IMP[@]}" --init-from "$W/notempty"
bad_case "--export-hf without --out" "--export-hf needs --out" --export-hf "$W/e_noout"
bad_case "--export-hf of a folder without checkpoints" "no complete checkpoint|$W/notempty" --export-hf "$W/e_none" --out "$W/notempty"

# ---- 6. ranks must agree on the --init-from folder's contents (each rank in its own folder, as on two hosts)
if command -v mpirun > /dev/null && grep -q USE_MPI build/.flags 2> /dev/null; then
    mkdir -p "$W/host_a" "$W/host_b"
    cp -r "$W/e32" "$W/host_a/hf"; cp -r "$W/e16" "$W/host_b/hf"; cp "$W/e32/config.json" "$W/host_b/hf/config.json"
    A=(--train-data "$ROOT/data/default/train_*.bin" --val-data "$ROOT/data/default/val_*.bin" --tokenizer "$ROOT/data/default/tokenizer.bin"
       "${RUN[@]}" --threads 1 --steps 1 --val-every 0 --init-from hf --out "$W/ranks_out")
    timeout 60 mpirun --oversubscribe --mca btl self,vader -np 1 -wdir "$W/host_a" "$BIN" "${A[@]}" \
        : -np 1 -wdir "$W/host_b" "$BIN" "${A[@]}" > "$W/ranks.out" 2> "$W/ranks.err" < /dev/null
    rc=$?
    msg=$(grep -m1 -o "ranks disagree on .*" "$W/ranks.err")
    if [ $rc -ne 0 ] && [ $rc -lt 124 ] && [[ "$msg" == "ranks disagree on --init-from safetensors (rank 0: "*"rank 1: "* ]]; then
        pass "the same --init-from path holding other weights on rank 1: $(echo "$msg" | cut -c1-150)"
    else
        fail "--init-from contents differ between ranks: exit $rc, $(oneline "$W/ranks.err")"
    fi
else
    skip "ranks agree on --init-from: no mpirun or a build without MPI"
fi
finish
