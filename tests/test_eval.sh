#!/usr/bin/env bash
# tests/test_eval.sh: looking at a model: --eval, --dump-logits, --generate and the prompt encoder (data/spm.c).
#
#   bash tests/test_eval.sh [WORKDIR]
#
# 1. --eval: the loss of a checkpoint equals the val_loss the training run logged at that step (same B, T and
#    batches: the same computation, to the log's 7 digits); --step picks an older checkpoint (another loss); --eval,
#    --dump-logits and --generate leave the run directory exactly as it was (names, sizes, modes, times, contents;
#    no lock file taken or written), work on a read-only run directory, and work while a trainer holds the run and
#    checkpoints into it (pruning the checkpoints --eval picks).
# 2. --dump-logits: the file's size and header; its tokens are the validation shard's first windows; the cross
#    entropy of its logits against the next tokens (numpy, float64) is the eval loss of that one batch.
# 3. --generate: the same seed gives the same text, another seed another text; temperature 0 and --top-k 1 give
#    the greedy text whatever the seed; --max-new-tokens bounds the text (a shorter run is a prefix of a longer
#    one); the text starts with the prompt; an empty prompt is allowed (the model continues the separator); a model
#    that always predicts the separator stops at once.
# 4. the prompt encoder equals python3 sentencepiece: the default tokenizer.model on thousands of lines of the
#    default corpus (data/cache, after `make data`; SKIP without it), tokenizers trained here with other settings
#    (dummy prefix, user-defined pieces, no byte fallback, whitespace as suffix, UNUSED pieces), edge cases.
# 5. bad input: each case exits non-zero with one stderr line "error: ..." that names the file or flag.
# Each check prints one PASS/FAIL/SKIP line; the last line is "N passed, N failed, N skipped".
. "$(dirname "$0")/lib.sh" eval "$@"
need_trainer
SPM_BIN=${SPM_ENCODE_BIN:-$ROOT/build/tests/spm_encode}  # make test-asan: the sanitizer build
if [ ! -x "$SPM_BIN" ]; then
    make -s build/tests/spm_encode >"$W/make2.log" 2>&1 || { fail "build: make build/tests/spm_encode failed"; finish; }
fi
if ! "$PY" -c 'import sentencepiece, numpy' 2>/dev/null; then
    fail "fixtures: /usr/bin/python3 with sentencepiece and numpy is missing (apt-get install python3-sentencepiece python3-numpy)"
    finish
fi

# ---------------------------------------------------------------------------------------------------------------
# fixtures: random shards (vocab 4096, k2-l1's), a small tokenizer pair made like data/prepare.py's, a trained run

D=$W/data
mkdir -p "$D"
"$PY" data/shard_tool.py write "$D/train_0.bin" --random 20000 --vocab 4096 --seed 1 > /dev/null
"$PY" data/shard_tool.py write "$D/val_0.bin" --random 4000 --vocab 4096 --seed 2 > /dev/null
CORPUS=()
for c in data/cache/sotu-*/ data/cache/moby-dick-*/; do [ -d "$c" ] && CORPUS+=(--corpus "$c"); done
"$PY" tests/spm_compare.py tokenizer --out "$D/tok" "${CORPUS[@]}" > "$W/tok.log" 2>&1 \
    || { fail "fixture: a tokenizer pair: $(tail -n 2 "$W/tok.log" | tr '\n' ' ')"; finish; }
"$PY" tests/spm_compare.py tokenizer --out "$D/tok800" --vocab-size 800 "${CORPUS[@]}" > "$W/tok800.log" 2>&1 \
    || { fail "fixture: a second tokenizer pair: $(tail -n 2 "$W/tok800.log" | tr '\n' ' ')"; finish; }
TOK=$D/tok/tokenizer.bin

FAST=(--model k2-l1 --batch-size 2 --seq-len 32 --threads 2 --peak-gflops 100 --tokenizer "$TOK")
VALS=(--val-data "$D/val_*.bin" --val-batches 3)
TRAIN=("${FAST[@]}" --train-data "$D/train_*.bin" "${VALS[@]}" --val-every 5 --sample-every 0 --steps 10
       --ckpt-every 5 --ckpt-keep 0)
# trainer PREFIX ARGS...: runs the trainer (hang guard 120 s); stdout/stderr to PREFIX.out/.err; exit code in RC
trainer() { local p=$1; shift; timeout 120 "$BIN" "$@" > "$p.out" 2> "$p.err" < /dev/null; RC=$?; }
oneline() { head -c 300 "$1" | tr '\n' ' '; }
# a listing of a directory that changes if anything in it does: names, sizes, modes, times, contents
snapshot() { (cd "$1" && find . -printf '%p %s %m %T@\n' | sort && find . -type f -exec sha256sum {} + | sort); }
val_logged() { grep "\"type\":\"val\",\"step\":$2," "$1/log.jsonl" | sed 's/.*"val_loss":\([^,}]*\).*/\1/'; }
eval_loss() { sed -n 's/^val loss \([^ ]*\) perplexity.*/\1/p' "$1.out"; }

R=$W/run
trainer "$W/train" "${TRAIN[@]}" --out "$R"
[ $RC -eq 0 ] || { fail "fixture: training run: exit $RC: $(oneline "$W/train.err")"; finish; }
BEFORE=$(snapshot "$R")

# ---------------------------------------------------------------------------------------------------------------
# 1. --eval

EV=(--eval "${FAST[@]}" "${VALS[@]}")
trainer "$W/e10" "${EV[@]}" --out "$R"
trainer "$W/e5" "${EV[@]}" --out "$R" --step 5
got10=$(eval_loss "$W/e10"); got5=$(eval_loss "$W/e5")
want10=$(val_logged "$R" 10); want5=$(val_logged "$R" 5)
if [ -n "$got10" ] && [ "$got10" = "$want10" ] && grep -q "step 10 " "$W/e10.out"; then
    pass "--eval: the newest checkpoint (step 10) has val loss $got10, what the training run logged at step 10"
else
    fail "--eval newest: got '$got10', the log says '$want10': $(oneline "$W/e10.out") $(oneline "$W/e10.err")"
fi
if [ -n "$got5" ] && [ "$got5" = "$want5" ] && [ "$got5" != "$got10" ]; then
    pass "--eval --step 5: val loss $got5 = the log's at step 5 (and not step 10's $got10)"
else
    fail "--eval --step 5: got '$got5', the log says '$want5' (step 10: '$got10')"
fi
tokens=$(sed -n 's/.* tokens \([0-9]*\) .*/\1/p' "$W/e10.out")
ppl=$(sed -n 's/.* perplexity \([^ ]*\) .*/\1/p' "$W/e10.out")
if [ "$tokens" = "192" ] && "$PY" -c "import math,sys; sys.exit(abs(math.exp($got10) - $ppl) > 1e-3 * $ppl)"; then
    pass "--eval: perplexity $ppl = exp(loss), over 192 tokens (3 batches of 2 x 32)"
else
    fail "--eval: tokens '$tokens' (want 192), perplexity '$ppl' vs exp($got10): $(oneline "$W/e10.out")"
fi
# fewer batches than asked for: the trainer's rule (as many whole batches as the shards hold)
trainer "$W/emany" "${EV[@]}" --out "$R" --val-batches 1000
nb=$(sed -n 's/.*(\([0-9]*\) batches of.*/\1/p' "$W/emany.out")
if [ $RC -eq 0 ] && [ "$nb" = "62" ]; then pass "--eval --val-batches 1000 on 124 windows: 62 batches of 2"
else fail "--eval --val-batches 1000: exit $RC, '$nb' batches (want 62): $(oneline "$W/emany.out") $(oneline "$W/emany.err")"; fi

# another context length than the training run's: runs (--seq-len is the context, the model is the checkpoint's)
trainer "$W/e16" "${EV[@]}" --out "$R" --seq-len 16
if [ $RC -eq 0 ] && grep -q "tokens 96 (3 batches of 2 x 16)" "$W/e16.out" && [ "$(eval_loss "$W/e16")" != "$got10" ]; then
    pass "--eval --seq-len 16: $(grep '^val loss' "$W/e16.out")"
else
    fail "--eval --seq-len 16: exit $RC: $(oneline "$W/e16.out") $(oneline "$W/e16.err")"
fi

# --dump-logits and --generate too, then the directory must be as it was
trainer "$W/edump" "${EV[@]}" --out "$R" --val-batches 1 --dump-logits "$W/logits.bin"
trainer "$W/gen0" --generate "The whale" "${FAST[@]}" --out "$R" --max-new-tokens 5
if [ "$BEFORE" = "$(snapshot "$R")" ]; then
    pass "--eval, --dump-logits and --generate leave the run directory unchanged (names, sizes, modes, times, contents)"
else
    fail "the run directory changed: $(diff <(echo "$BEFORE") <(snapshot "$R") | head -n 4 | tr '\n' ' ')"
fi

# a read-only run directory: a read-only bind mount where root may make one, else another user (root ignores
# mode bits, so chmod alone proves nothing for root), else (not root) chmod
RO=$W/ro
ro_how=""
if [ "$(id -u)" -eq 0 ]; then
    mkdir -p "$RO"
    if mount --bind "$R" "$RO" 2>/dev/null && mount -o remount,ro,bind "$RO" 2>/dev/null; then
        ro_how="a read-only bind mount"
        trap 'umount "$RO" 2>/dev/null; rm -rf "$W"' EXIT
        trainer "$W/ero" "${EV[@]}" --out "$RO"
    else
        umount "$RO" 2>/dev/null
    fi
    if [ -z "$ro_how" ] && command -v runuser > /dev/null && id nobody > /dev/null 2>&1; then
        cp -a "$R" "$W/ro_copy"; chmod -R a-w "$W/ro_copy"; chmod a+rx "$W"
        if runuser -u nobody -- test -r "$W/ro_copy/log.jsonl" -a -x "$BIN" 2>/dev/null; then
            ro_how="user nobody on a chmod a-w copy"
            timeout 120 runuser -u nobody -- "$BIN" "${EV[@]}" --out "$W/ro_copy" > "$W/ero.out" 2> "$W/ero.err" < /dev/null
            RC=$?
        fi
    fi
else
    cp -a "$R" "$W/ro_copy"; chmod -R a-w "$W/ro_copy"
    ro_how="a chmod a-w copy"
    trainer "$W/ero" "${EV[@]}" --out "$W/ro_copy"
fi
if [ -z "$ro_how" ]; then
    skip "--eval on a read-only run directory: as root, neither a read-only bind mount nor user nobody is available"
elif [ $RC -eq 0 ] && [ "$(eval_loss "$W/ero")" = "$got10" ]; then
    pass "--eval on a read-only run directory ($ro_how): exit 0, the same loss $got10"
else
    fail "--eval on a read-only run directory ($ro_how): exit $RC, loss '$(eval_loss "$W/ero")': $(oneline "$W/ero.err")"
fi
[ "$ro_how" = "a read-only bind mount" ] && { umount "$RO"; trap 'rm -rf "$W"' EXIT; }

# while a trainer holds the run: it resumes and checkpoints every 2 steps keeping 1 (each new checkpoint prunes
# the one before, the one --eval may have picked); every --eval meanwhile must read a whole checkpoint
cp -a "$R" "$W/busy"
"$BIN" "${TRAIN[@]}" --out "$W/busy" --resume --steps 2000 --ckpt-every 2 --ckpt-keep 1 --val-every 0 \
    > "$W/busy_train.out" 2> "$W/busy_train.err" < /dev/null &
busy_pid=$!
sleep 1
n_ok=0; n_run=0; n_during=0; busy_err=""
for i in 1 2 3 4 5 6; do
    kill -0 $busy_pid 2>/dev/null && n_during=$((n_during + 1))
    trainer "$W/ebusy" "${EV[@]}" --out "$W/busy"
    n_run=$((n_run + 1))
    if [ $RC -eq 0 ] && [ -n "$(eval_loss "$W/ebusy")" ]; then n_ok=$((n_ok + 1)); else busy_err=$(oneline "$W/ebusy.err"); fi
done
lock_holder=$(cat "$W/busy/train_moe.lock" 2>/dev/null)
kill $busy_pid 2>/dev/null; wait $busy_pid 2>/dev/null
if [ "$n_during" -lt 2 ]; then
    skip "--eval while a trainer writes the run: the trainer ended before the evals ran ($(oneline "$W/busy_train.err"))"
elif [ $n_ok -eq $n_run ] && [ "$lock_holder" = "$busy_pid" ]; then
    pass "--eval while a trainer holds the run (pid $busy_pid in the lock file) and prunes its checkpoints: $n_ok of $n_run evals read a whole checkpoint"
else
    fail "--eval while a trainer writes the run: $n_ok of $n_run succeeded (lock file: '$lock_holder', trainer $busy_pid): $busy_err"
fi

# ---------------------------------------------------------------------------------------------------------------
# 2. --dump-logits

gotd=$(eval_loss "$W/edump")
if "$PY" - "$W/logits.bin" "$D/val_0.bin" "$gotd" > "$W/dump.txt" 2>&1 <<'EOF'
import sys
import numpy as np
path, shard, loss = sys.argv[1], sys.argv[2], float(sys.argv[3])
raw = open(path, "rb").read()
magic, B, T, V = np.frombuffer(raw[:16], dtype="<i4")
assert magic == 20261202, f"magic {magic}"
assert (B, T, V) == (2, 32, 4096), f"header B, T, V = {B}, {T}, {V}"
size = 16 + 4 * B * T + 4 * B * T * V
assert len(raw) == size, f"{len(raw)} bytes, want {size}"
tokens = np.frombuffer(raw[16:16 + 4 * B * T], dtype="<i4")
logits = np.frombuffer(raw[16 + 4 * B * T:], dtype="<f4").reshape(B * T, V).astype(np.float64)
stream = np.frombuffer(open(shard, "rb").read()[1024:], dtype="<u2").astype(np.int64)
# window b of the validation shard starts at b*T: inputs stream[b*T : b*T+T], targets one further
want_in = np.concatenate([stream[b * T:b * T + T] for b in range(B)])
targets = np.concatenate([stream[b * T + 1:b * T + T + 1] for b in range(B)])
assert np.array_equal(tokens, want_in), "the tokens are not the shard's first windows"
m = logits.max(axis=1, keepdims=True)
logp = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
ce = -logp[np.arange(B * T), targets].mean()
assert abs(ce - loss) <= 2e-6 * abs(loss), f"cross entropy of the dumped logits {ce:.9g}, --eval says {loss}"
assert np.isfinite(logits).all() and logits.std() > 0, "logits not finite or constant"
print(f"{len(raw)} bytes, header (20261202, {B}, {T}, {V}); numpy cross entropy {ce:.9g} = eval loss {loss}")
EOF
then pass "--dump-logits: $(cat "$W/dump.txt")"
else fail "--dump-logits: $(tail -n 2 "$W/dump.txt" | tr '\n' ' ') $(oneline "$W/edump.err")"; fi

# ---------------------------------------------------------------------------------------------------------------
# 3. --generate

GEN=(--generate "The whale" "${FAST[@]}" --out "$R")
gen() { local p=$1; shift; trainer "$p" "${GEN[@]}" "$@"; }
gen "$W/g1" --seed 1 --max-new-tokens 20
gen "$W/g1b" --seed 1 --max-new-tokens 20
gen "$W/g2" --seed 2 --max-new-tokens 20
if [ $RC -eq 0 ] && cmp -s "$W/g1.out" "$W/g1b.out" && ! cmp -s "$W/g1.out" "$W/g2.out" && [ -s "$W/g1.out" ]; then
    pass "--generate: seed 1 twice gives the same text, seed 2 another"
else
    fail "--generate seeds: exit $RC; seed 1: '$(oneline "$W/g1.out")' / '$(oneline "$W/g1b.out")', seed 2: '$(oneline "$W/g2.out")' $(oneline "$W/g2.err")"
fi
if [ "$(head -c 9 "$W/g1.out")" = "The whale" ] && [ "$(wc -c < "$W/g1.out")" -gt 10 ]; then
    pass "--generate: the text starts with the prompt and goes on: '$(oneline "$W/g1.out" | cut -c1-60)'"
else
    fail "--generate: the text does not start with the prompt: '$(oneline "$W/g1.out")'"
fi
gen "$W/t0a" --temperature 0 --seed 1 --max-new-tokens 12
gen "$W/t0b" --temperature 0 --seed 99 --max-new-tokens 12
gen "$W/k1" --top-k 1 --seed 7 --max-new-tokens 12
if cmp -s "$W/t0a.out" "$W/t0b.out" && cmp -s "$W/t0a.out" "$W/k1.out" && [ -s "$W/t0a.out" ]; then
    pass "--generate --temperature 0: the same text with seeds 1 and 99, and --top-k 1 (any seed) gives it too"
else
    fail "--generate greedy: '$(oneline "$W/t0a.out")' / '$(oneline "$W/t0b.out")' / top-k 1 '$(oneline "$W/k1.out")'"
fi
gen "$W/k5" --top-k 5 --seed 3 --max-new-tokens 12
gen "$W/k5b" --top-k 5 --seed 3 --max-new-tokens 12
if [ $RC -eq 0 ] && cmp -s "$W/k5.out" "$W/k5b.out"; then pass "--generate --top-k 5: deterministic for a seed"
else fail "--generate --top-k 5: exit $RC: $(oneline "$W/k5.err")"; fi
gen "$W/m5" --seed 1 --max-new-tokens 5
n5=$(sed -n 's/^generate: \([0-9]*\) new tokens.*/\1/p' "$W/m5.err")
n20=$(sed -n 's/^generate: \([0-9]*\) new tokens.*/\1/p' "$W/g1.err")
# compare bytes, not characters: ${#var} counts characters in a UTF-8 locale, and the sampled text may hold 'é'
short_bytes=$(( $(wc -c < "$W/m5.out") - 1 ))  # without the closing newline
if [ "$n5" = "5" ] && [ "$n20" = "20" ] && [ "$short_bytes" -gt 0 ] && cmp -s -n "$short_bytes" "$W/m5.out" "$W/g1.out" \
   && [ "$(wc -c < "$W/m5.out")" -lt "$(wc -c < "$W/g1.out")" ]; then
    pass "--generate --max-new-tokens 5: 5 tokens, the start of the 20-token text of the same seed"
else
    fail "--generate --max-new-tokens: $n5 and $n20 tokens (want 5, 20); '$(oneline "$W/m5.out")' vs '$(oneline "$W/g1.out")'"
fi
trainer "$W/gempty" --generate "" "${FAST[@]}" --out "$R" --max-new-tokens 8 --seed 4
if [ $RC -eq 0 ] && grep -q "prompt of 0 tokens" "$W/gempty.err" && grep -q "^generate: 8 new tokens" "$W/gempty.err"; then
    pass "--generate '': allowed, the model continues the document separator (8 tokens)"
else
    fail "--generate '': exit $RC: $(oneline "$W/gempty.err")"
fi
# a prompt longer than the context (T = 32): the model sees its last 32 tokens
long=$(printf 'the whale and the sea %.0s' $(seq 1 30))
trainer "$W/glong" --generate "$long" "${FAST[@]}" --out "$R" --max-new-tokens 4 --temperature 0
if [ $RC -eq 0 ] && cmp -s -n "${#long}" <(printf '%s' "$long") "$W/glong.out"; then pass "--generate with a prompt longer than the context"
else fail "--generate long prompt: exit $RC: $(oneline "$W/glong.err")"; fi
# a model trained on nothing but separators predicts the separator: generation stops before the first token
"$PY" data/shard_tool.py write "$D/sep_train.bin" --tokens "$(python3 -c 'print(",".join(["1"] * 3000))')" > /dev/null
trainer "$W/septrain" "${FAST[@]}" --train-data "$D/sep_train.bin" --val-data '' --sample-every 0 --steps 30 \
    --lr 0.01 --out "$W/seprun"
trainer "$W/gsep" --generate "The whale" "${FAST[@]}" --out "$W/seprun" --temperature 0 --max-new-tokens 10
if [ $RC -eq 0 ] && grep -q "^generate: 0 new tokens (stopped at the document separator)" "$W/gsep.err" \
   && [ "$(cat "$W/gsep.out")" = "The whale" ]; then
    pass "--generate stops at the document separator (a model trained on separators only: 0 new tokens)"
else
    fail "--generate separator stop: exit $RC (training: $(oneline "$W/septrain.err")): $(oneline "$W/gsep.err") / '$(oneline "$W/gsep.out")'"
fi

# ---------------------------------------------------------------------------------------------------------------
# 4. the prompt encoder vs python3 sentencepiece

if [ -f data/default/tokenizer.model ] && [ ${#CORPUS[@]} -gt 0 ]; then
    if "$PY" tests/spm_compare.py compare --bin "$SPM_BIN" --model data/default/tokenizer.model "${CORPUS[@]}" \
        --lines 4000 > "$W/cmp_default.txt" 2>&1; then
        pass "encoder = sentencepiece, data/default/tokenizer.model: $(tail -n 1 "$W/cmp_default.txt") (default corpus lines, whole documents, slices, edge cases)"
    else
        fail "encoder vs sentencepiece, data/default/tokenizer.model: $(tail -n 4 "$W/cmp_default.txt" | tr '\n' ' ')"
    fi
else
    skip "encoder vs sentencepiece on the default tokenizer and corpus: data/default/tokenizer.model or data/cache missing (make data)"
fi
if "$PY" tests/spm_compare.py compare --bin "$SPM_BIN" --model "$D/tok/tokenizer.model" "${CORPUS[@]}" --lines 2000 --docs 4 > "$W/cmp_tok.txt" 2>&1; then
    pass "encoder = sentencepiece, this test's tokenizer (prepare.py's settings): $(tail -n 1 "$W/cmp_tok.txt")"
else
    fail "encoder vs sentencepiece, this test's tokenizer: $(tail -n 4 "$W/cmp_tok.txt" | tr '\n' ' ')"
fi
V=$W/variants
if "$PY" tests/spm_compare.py train --out "$V" "${CORPUS[@]}" > "$W/variants.log" 2>&1 \
   && "$PY" tests/spm_compare.py unused --model "$D/tok/tokenizer.model" --out "$V/unused.model" >> "$W/variants.log" 2>&1; then
    for v in dummy_prefix suffix_unk unused; do
        if "$PY" tests/spm_compare.py compare --bin "$SPM_BIN" --model "$V/$v.model" "${CORPUS[@]}" --lines 1500 --docs 4 > "$W/cmp_$v.txt" 2>&1; then
            pass "encoder = sentencepiece, variant $v: $(tail -n 1 "$W/cmp_$v.txt")"
        else
            fail "encoder vs sentencepiece, variant $v: $(tail -n 4 "$W/cmp_$v.txt" | tr '\n' ' ')"
        fi
    done
else
    fail "fixture: variant tokenizers: $(tail -n 3 "$W/variants.log" | tr '\n' ' ')"
fi

# ---------------------------------------------------------------------------------------------------------------
# 5. bad input: exit non-zero, one stderr line "error: ..." with the expected words

# refused NAME PATTERN ARGS...: the trainer must fail with exactly one stderr line matching PATTERN
refused() {
    local name=$1 pat=$2; shift 2
    trainer "$W/bad" "$@"
    local n; n=$(grep -c . "$W/bad.err")
    if [ $RC -ne 0 ] && [ $RC -lt 124 ] && [ "$n" -eq 1 ] && grep -qE "^error: .*$pat" "$W/bad.err"; then
        pass "$name: $(cat "$W/bad.err" | cut -c1-200)"
    else
        fail "$name: exit $RC, $n stderr lines (want 1 matching '$pat'): $(oneline "$W/bad.err")"
    fi
}
mkdir -p "$W/empty_run"
refused "--eval on a directory without a checkpoint" "$W/empty_run has no complete checkpoint" "${EV[@]}" --out "$W/empty_run"
refused "--eval --step on a directory without a checkpoint" "--step 3: --out $W/empty_run has no complete checkpoint at all" "${EV[@]}" --out "$W/empty_run" --step 3
refused "--eval on a missing directory" "--out $W/nowhere is not a run directory" "${EV[@]}" --out "$W/nowhere"
refused "--eval --step of no checkpoint" "--step 7.*no complete checkpoint of that step" "${EV[@]}" --out "$R" --step 7
refused "--dump-logits without --eval" "--dump-logits .*needs --eval" "${FAST[@]}" --out "$W/x" --dump-logits "$W/l.bin"
refused "--eval with --generate" "--eval and --generate conflict" "${EV[@]}" --out "$R" --generate hi
for other in --resume --overwrite "--replay 0:2" "--export-hf $W/hf"; do
    # shellcheck disable=SC2086
    refused "--eval with ${other%% *}" "conflicts with ${other%% *}" "${EV[@]}" --out "$R" $other
done
refused "--generate with --resume" "--generate .*conflicts with --resume" --generate hi "${FAST[@]}" --out "$R" --resume
refused "--eval with both --out and --init-from" "either the checkpoint of --out or --init-from" "${EV[@]}" --out "$R" --init-from "$W/hf"
refused "--eval with an empty --val-data" "--eval needs validation shards" --eval "${FAST[@]}" --out "$R" --val-data ''
refused "--dump-logits into a missing folder" "--dump-logits $W/no/dir/l.bin: cannot create" "${EV[@]}" --out "$R" --dump-logits "$W/no/dir/l.bin"
cp -a "$R" "$W/damaged"
printf '\x7f' | dd of="$W/damaged/model_00000010.bin" bs=1 seek=5000 conv=notrunc 2>/dev/null
refused "--eval of a damaged model file" "model_00000010.bin: checksum mismatch" "${EV[@]}" --out "$W/damaged"

# tokenizer files for --generate: a copy of the pair, then one thing wrong at a time
tokdir() { rm -rf "$W/tb"; mkdir -p "$W/tb"; cp "$D/tok/tokenizer.bin" "$D/tok/tokenizer.model" "$W/tb/"; }
GB=(--generate hi "${FAST[@]}" --out "$R" --tokenizer "$W/tb/tokenizer.bin")
tokdir; head -c 3000 "$D/tok/tokenizer.model" > "$W/tb/tokenizer.model"
refused "--generate, truncated tokenizer.model" "tokenizer model $W/tb/tokenizer.model: .*truncated" "${GB[@]}"
tokdir; head -c 20000 /dev/urandom > "$W/tb/tokenizer.model"
refused "--generate, garbage tokenizer.model" "tokenizer model $W/tb/tokenizer.model: " "${GB[@]}"
tokdir; : > "$W/tb/tokenizer.model"
refused "--generate, empty tokenizer.model" "tokenizer model $W/tb/tokenizer.model: it holds no pieces" "${GB[@]}"
tokdir; rm "$W/tb/tokenizer.model"
refused "--generate without tokenizer.model beside --tokenizer" "$W/tb/tokenizer.model is missing" "${GB[@]}"
tokdir; cp "$V/dummy_prefix.model" "$W/tb/tokenizer.model"
refused "--generate, tokenizer.model of another tokenizer" "does not belong to --tokenizer .*: piece 3 is" "${GB[@]}"
tokdir; cp "$D/tok800/tokenizer.model" "$W/tb/tokenizer.model"
refused "--generate, tokenizer.model of another vocabulary size" "it has 800 pieces, the tokenizer.bin has 1000" "${GB[@]}"
tokdir; cp "$V/nfkc.model" "$W/tb/tokenizer.model"
refused "--generate, an NFKC-normalizing tokenizer.model" "only 'identity' normalization is supported" "${GB[@]}"
tokdir; cp "$V/unigram.model" "$W/tb/tokenizer.model"
refused "--generate, a unigram tokenizer.model" "unigram model; only BPE" "${GB[@]}"
refused "--generate without tokenizer.bin" "--generate needs the tokenizer" --generate hi "${FAST[@]}" --out "$R" --tokenizer "$W/none/tokenizer.bin"

# more than one process: refused (under MPI every rank would print the same answer)
if command -v mpirun > /dev/null && grep -q USE_MPI build/.flags 2>/dev/null; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    timeout 60 mpirun --oversubscribe --mca btl self,vader -np 2 "$BIN" "${EV[@]}" --threads 1 --out "$R" \
        > "$W/mpi.out" 2> "$W/mpi.err" < /dev/null
    RC=$?
    if [ $RC -ne 0 ] && [ $RC -lt 124 ] && grep -q "^error: .*--eval runs in one process; it was started as 2 ranks" "$W/mpi.err"; then
        pass "--eval under mpirun -np 2: refused: $(grep -m1 '^error' "$W/mpi.err")"
    else
        fail "--eval under mpirun -np 2: exit $RC: $(oneline "$W/mpi.err")"
    fi
else
    skip "--eval under mpirun: no mpirun, or ./train_moe built without MPI"
fi

# ---------------------------------------------------------------------------------------------------------------
# --init-from (train/hf.c, the Hugging Face import): the exported checkpoint evaluates to the same loss

if [ -f train/hf.c ]; then
    trainer "$W/export" --export-hf "$W/hf10" --out "$R"
    trainer "$W/einit" "${EV[@]}" --init-from "$W/hf10"
    goti=$(eval_loss "$W/einit")
    if [ $RC -eq 0 ] && [ "$goti" = "$got10" ]; then
        pass "--eval --init-from the checkpoint exported by --export-hf: val loss $goti, the checkpoint's"
    else
        fail "--eval --init-from: exit $RC, loss '$goti' (the checkpoint's: $got10): $(oneline "$W/export.err") $(oneline "$W/einit.err")"
    fi
else
    skip "--eval --init-from: the Hugging Face import (train/hf.c) is not in this tree"
fi

finish
