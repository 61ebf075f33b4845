#!/usr/bin/env bash
# tests/test_sweep.sh: scripts/scaling_sweep.py end to end on tiny synthetic shards (no dependence on data/default).
#
#   bash tests/test_sweep.sh [WORKDIR]
#
# 1. fits: L = a C^b recovered from exact points and from points with 0.2% noise; E + a C^b recovered; the
#    compute ratio of two power laws with a known ratio, and its bootstrap interval covers it.
# 2. SVD entropy: identity -> 1, rank one -> 0, a known spectrum -> its formula; a model file written by the
#    trainer parses with the layout the trainer prints (--print-layout), and a layout of another model is refused.
# 3. the sweep: k2-l1 and k2-l2, seq 64, a few steps, 3-point lr grids with one extension, both optimizers: every
#    run finished, results.csv / series.csv / fits.json / entropy.csv / report.md / scaling.png / lr_sweep.png exist
#    and parse; a second invocation trains nothing; a run whose DONE marker is removed is the only one rerun.
# Each check prints one PASS/FAIL/SKIP line; the last line is "N passed, N failed, N skipped".
. "$(dirname "$0")/lib.sh" sweep "$@"

need_plot_python
need_trainer


# ---------------------------------------------------------------------------------------------------------------
# 1. fits

py_check "fit: exact power law" '
import numpy as np, scaling_sweep as s
C = np.logspace(-6, -3, 5); L = 2.6 * C ** -0.054
a, b = s.fit_power(C, L)
assert abs(a - 2.6) < 1e-9 and abs(b + 0.054) < 1e-12, (a, b)
print("ok a=%.6f b=%.6f" % (a, b))'

py_check "fit: power law + 0.2% noise" '
import numpy as np, scaling_sweep as s
rng = np.random.default_rng(1)
C = np.logspace(-6, -3, 8); L = 2.5 * C ** -0.05 * np.exp(0.002 * rng.standard_normal(8))
a, b = s.fit_power(C, L)
assert abs(a / 2.5 - 1) < 0.03 and abs(b + 0.05) < 0.003, (a, b)
print("ok a=%.4f (2.5) b=%.5f (-0.05)" % (a, b))'

py_check "fit: E + a C^b" '
import numpy as np, scaling_sweep as s
C = np.logspace(-6, -2, 7); L = 1.5 + 0.8 * C ** -0.1
E, a, b, sse = s.fit_power_irreducible(C, L, n_grid=4000)
assert abs(E - 1.5) < 0.02 and abs(b + 0.1) < 0.005, (E, a, b)
print("ok E=%.4f a=%.4f b=%.4f" % (E, a, b))'

py_check "fit: compute ratio + bootstrap" '
import numpy as np, scaling_sweep as s
rng = np.random.default_rng(2)
C = np.logspace(-6, -3, 5); aA, b = 2.608, -0.054
aM = aA * (1 / 0.52) ** b      # Muon at C reaches AdamW at C / 0.52: ratio 0.52 everywhere
LA = aA * C ** b * np.exp(0.001 * rng.standard_normal(5)); LM = aM * C ** b * np.exp(0.001 * rng.standard_normal(5))
exact = s.compute_ratio((aA, b), (aM, b), 1e-4)
assert abs(exact - 0.52) < 1e-9, exact
fa, fm = s.fit_power(C, LA), s.fit_power(C, LM)
r = s.compute_ratio(fa, fm, float(np.exp(np.log(C).mean())))
lo, med, hi = s.bootstrap_ratio(C, LA, C, LM, float(np.exp(np.log(C).mean())), n_boot=500)
assert lo <= 0.52 <= hi and lo < r < hi and abs(r - 0.52) < 0.1, (r, lo, hi)
print("ok ratio %.3f, 95%% CI [%.3f, %.3f] (true 0.52)" % (r, lo, hi))'

# ---------------------------------------------------------------------------------------------------------------
# 2. SVD entropy

py_check "svd entropy: identity, rank one, known spectrum" '
import numpy as np, math, scaling_sweep as s
rng = np.random.default_rng(3)
assert abs(s.svd_entropy(np.eye(6)[None])[0] - 1) < 1e-12
u = rng.standard_normal((7, 1)); v = rng.standard_normal((1, 5))
assert abs(s.svd_entropy((u @ v)[None])[0]) < 1e-6
sig = np.array([3.0, 2.0, 1.0, 0.5])
Q1, _ = np.linalg.qr(rng.standard_normal((9, 4))); Q2, _ = np.linalg.qr(rng.standard_normal((4, 4)))
M = Q1 @ np.diag(sig) @ Q2.T
p = sig ** 2 / (sig ** 2).sum(); want = -(p * np.log(p)).sum() / math.log(4)
got = s.svd_entropy(np.stack([M, 5 * M, -M]))
assert np.allclose(s.svd_entropy(M.T[None]), want, atol=1e-10)
assert np.allclose(got, want, atol=1e-10), (got, want)
print("ok H = %.6f for spectrum 3,2,1,0.5" % want)'

# ---------------------------------------------------------------------------------------------------------------
# 3. the sweep end to end

D=$W/data
mkdir -p "$D"
for spec in "train_0.bin 40000 1" "val_0.bin 6000 2"; do
    set -- $spec
    "$PY" data/shard_tool.py write "$D/$1" --random "$2" --vocab 4096 --seed "$3" >/dev/null || { fail "fixture: shard $1"; finish; }
done
SW=(scripts/scaling_sweep.py --root "$W/sweeps" --name t --models k2-l1,k2-l2 --steps 6 --batch-size 2 --seq-len 64
    --val-batches 2 --threads 2 --max-extend 1 --lr-center 1e-2 --lr-factor 4 --bootstrap 200 --progress-every 0
    --train-data "$D/train_*.bin" --val-data "$D/val_*.bin")
S=$W/sweeps/t

t0=$(date +%s)
"$PY" "${SW[@]}" > "$W/sweep1.log" 2>&1
rc=$?
t1=$(date +%s)
nrun=$(grep -c '^  \[run\]' "$W/sweep1.log")
next=$(grep -c '^  \[run\].*(edge extension)' "$W/sweep1.log")
if [ $rc -eq 0 ] && [ "$nrun" -ge 12 ] && [ "$nrun" -le 16 ] && [ "$next" -ge 1 ]; then
    pass "sweep: 2 sizes x (AdamW + Muon) x 3 lrs + $next edge extension(s): $nrun runs in $((t1 - t0)) s"
else
    fail "sweep: exit $rc, $nrun runs: $(tail -n 5 "$W/sweep1.log" | tr '\n' ' ')"
fi

ndone=$(ls -d "$S"/*/train/DONE_00000006 2>/dev/null | wc -l)
nres=$(ls "$S"/*/result.json 2>/dev/null | wc -l)
nfiles=$(ls "$S"/*/run.json "$S"/*/cmd.txt "$S"/*/stdout.log "$S"/*/train/log.jsonl 2>/dev/null | wc -l)
[ "$ndone" -eq "$nrun" ] && [ "$nres" -eq "$nrun" ] && [ "$nfiles" -eq $((4 * nrun)) ] && \
    pass "runs: $ndone DONE markers and result.json files, each with run.json, cmd.txt, stdout.log, log.jsonl" || \
    fail "runs: $ndone DONE markers, $nres result.json, $nfiles of the other files for $nrun runs"
[ -z "$(ls "$S"/*/train/state_*.bin 2>/dev/null)" ] && [ "$(ls "$S"/*/train/model_00000006.bin | wc -l)" -eq "$nrun" ] \
    && pass "runs: final models kept, optimizer state files removed" || fail "runs: model/state files"

py_check "outputs: results.csv, series.csv, fits.json, entropy.csv, report.md, PNGs parse" "
import csv, json, math, os
import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
S = '$S'
rows = list(csv.DictReader(open(os.path.join(S, 'results.csv'))))
assert len(rows) == $nrun, len(rows)
assert all(r['status'] == 'ok' and math.isfinite(float(r['val_loss'])) for r in rows), rows
for r in rows:
    assert int(r['tokens_at_val']) == 6 * 2 * 64 and abs(float(r['flops']) / (float(r['flops_per_token']) * 768) - 1) < 1e-5, r
    for g in ('attention', 'experts', 'router', 'dense_shared_ffn'):
        assert 0 < float(r['H_' + g]) <= 1, (g, r)
roles = [x for r in rows for x in r['role'].split('+') if x]
assert sorted(set(roles)) == ['adamw_best', 'muon_at_adamw_lr', 'muon_best'] and len(roles) == 6, roles
ser = list(csv.DictReader(open(os.path.join(S, 'series.csv'))))
assert len(ser) == 6, ser
fits = json.load(open(os.path.join(S, 'fits.json')))
for k in ('adamw', 'muon_reuse', 'muon_tuned'):
    f = fits['fits'][k]; assert f['n'] == 2 and math.isfinite(f['a']) and math.isfinite(f['b']), f
for k in ('muon_reuse', 'muon_tuned'):
    r = fits['compute_ratio'][k]; assert r['ratio'] > 0 and len(r['ci95']) == 2, r
ent = list(csv.DictReader(open(os.path.join(S, 'entropy.csv'))))
assert len(ent) == 6 and int(ent[0]['n_experts']) == 384 * 3 and int(ent[0]['n_router']) == 1, ent[0]
rep = open(os.path.join(S, 'report.md')).read()
assert 'Compute Muon needs' in rep and 'SVD entropy' in rep
for png in ('scaling.png', 'lr_sweep.png'):
    img = plt.imread(os.path.join(S, png)); assert img.ndim == 3 and img.shape[0] > 200, img.shape
print('ok %d rows, fits for 3 series, ratio %.3g, two PNGs' % (len(rows), fits['compute_ratio']['muon_tuned']['ratio']))
"

py_check "model file: the trainer's --print-layout carves it, matching its header" "
import glob, scaling_sweep as s
p = sorted(glob.glob('$S/k2-l2-adamw-*/train/model_00000006.bin'))[0]
lay = s.trainer_layout(['$BIN', '--model', 'k2-l2', '--seq-len', '64'])
cfg, params, bias = s.read_model(p, lay)
assert cfg['d_model'] == 48 and cfg['n_experts'] == 384 and cfg['step'] == 6, cfg
assert params['expert_w13'].shape == (1, 384, 24, 48) and params['wte'].shape == (4096, 48), cfg
assert params['final_norm'].shape == (48,) and params['dense_w2'].shape == (1, 48, 108), cfg
assert bias.shape == (384,)
# the carving is the file's bytes: the last tensor ends where the router bias begins
raw = open(p, 'rb').read()
assert params['lm_head'].tobytes() == raw[1024 + 4 * lay['tensors'][-1]['offset']:][:4 * params['lm_head'].size]
print('ok %s: %d tensors, %d router biases' % (p.split('/')[-3], len(params), bias.size))
"

py_check "model file: a layout of another model is refused, naming the field" "
import glob, scaling_sweep as s
p = sorted(glob.glob('$S/k2-l2-adamw-*/train/model_00000006.bin'))[0]
lay = s.trainer_layout(['$BIN', '--model', 'k2-l1', '--seq-len', '64'])
try:
    s.read_model(p, lay); print('bad: read with the k2-l1 layout')
except ValueError as e:
    assert 'd_model' in str(e), e; print('ok ' + str(e).split(': ', 1)[1])
"

# resumability: nothing new the second time
"$PY" "${SW[@]}" > "$W/sweep2.log" 2>&1
rc=$?
nrun2=$(grep -c '^  \[run\]' "$W/sweep2.log")
ndone2=$(grep -c '^  \[done\]' "$W/sweep2.log")
if [ $rc -eq 0 ] && [ "$nrun2" -eq 0 ] && [ "$ndone2" -eq "$nrun" ] && grep -q "0 runs trained now, $nrun found finished" "$W/sweep2.log"; then
    pass "resume: the second invocation trains nothing ($ndone2 runs found finished)"
else
    fail "resume: exit $rc, $nrun2 runs trained, $ndone2 found: $(tail -n 3 "$W/sweep2.log" | tr '\n' ' ')"
fi

# unfinished runs are the only ones rerun: one without its DONE marker, one without the final val record (killed
# between the final checkpoint and the final validation)
victim=$(ls -d "$S"/k2-l2-muon-*/ | head -n 1)
victim2=$(ls -d "$S"/k2-l1-adamw-*/ | head -n 1)
rm -f "$victim"/train/DONE_* "$victim"/result.json "$victim2"/result.json
grep -v '"type":"val","step":6' "$victim2/train/log.jsonl" > "$W/log.tmp" && mv "$W/log.tmp" "$victim2/train/log.jsonl"
"$PY" "${SW[@]}" > "$W/sweep3.log" 2>&1
rc=$?
nrun3=$(grep -c '^  \[run\]' "$W/sweep3.log")
if [ $rc -eq 0 ] && [ "$nrun3" -eq 2 ] && grep -q "\[run\]  $(basename "$victim")" "$W/sweep3.log" \
    && grep -q "\[run\]  $(basename "$victim2")" "$W/sweep3.log" && [ -f "$victim/train/DONE_00000006" ] \
    && grep -q '"type":"val","step":6' "$victim2/train/log.jsonl"; then
    pass "resume: a run without its DONE marker and one without its final val record are rerun, alone"
else
    fail "resume: exit $rc, $nrun3 runs trained: $(grep '\[run\]' "$W/sweep3.log" | tr '\n' ' ')"
fi

# changed settings under the same name are refused, not mixed
"$PY" "${SW[@]}" --val-batches 3 > "$W/sweep4.log" 2>&1
rc=$?
if [ $rc -ne 0 ] && grep -q "other settings" "$W/sweep4.log"; then
    pass "settings: another --val-batches under the same --name is refused"
else
    fail "settings: exit $rc: $(tail -n 2 "$W/sweep4.log" | tr '\n' ' ')"
fi

# a diverging run (the trainer stops after 5 non-finite steps) is recorded as failed, not retried, reported
DV=(scripts/scaling_sweep.py --root "$W/sweeps" --name div --models k2-l1 --steps 8 --batch-size 2 --seq-len 64
    --val-batches 2 --threads 2 --grid 1 --max-extend 0 --lr-center 1e6 --progress-every 0
    --train-data "$D/train_*.bin" --val-data "$D/val_*.bin")
"$PY" "${DV[@]}" > "$W/div1.log" 2>&1; rc1=$?
"$PY" "${DV[@]}" > "$W/div2.log" 2>&1; rc2=$?
if [ $rc1 -eq 0 ] && grep -q DIVERGED "$W/div1.log" && [ $rc2 -eq 0 ] && grep -q '0 runs trained now, 2 found finished' "$W/div2.log" \
    && grep -q 'k2-l1,adamw,1e+06,failed' "$W/sweeps/div/results.csv" && grep -q 'k2-l1,muon,1e+06,failed' "$W/sweeps/div/results.csv"; then
    pass "divergence: AdamW and Muon at lr 1e6 recorded as failed in results.csv, skipped by the next invocation"
else
    fail "divergence: exit $rc1/$rc2: $(tail -n 3 "$W/div1.log" | tr '\n' ' ') / $(tail -n 2 "$W/div2.log" | tr '\n' ' ')"
fi

# the GPU ladder: refuses the default corpus; with GPT-2-token shards it plans k2-g1..k2-g5 on the GPU
"$PY" scripts/scaling_sweep.py --gpu > "$W/gpu.log" 2>&1
[ $? -ne 0 ] && grep -q -- "--train-data" "$W/gpu.log" && pass "--gpu without FineWeb-style shards: refused, naming --train-data" \
    || fail "--gpu: $(cat "$W/gpu.log")"
"$PY" data/shard_tool.py write "$W/gpt2_train.bin" --random 30000 --vocab 50304 --seed 3 > /dev/null
"$PY" data/shard_tool.py write "$W/gpt2_val.bin" --random 5000 --vocab 50304 --seed 4 > /dev/null
"$PY" scripts/scaling_sweep.py --gpu --dry-run --root "$W/sweeps" --train-data "$W/gpt2_train.bin" --val-data "$W/gpt2_val.bin" > "$W/gpu2.log" 2>&1
rc=$?
if [ $rc -eq 0 ] && grep -q "k2-g1-adamw" "$W/gpu2.log" && grep -q "k2-g5" "$W/gpu2.log"; then
    pass "--gpu --dry-run plans the k2-g1..k2-g5 ladder: $(grep -m1 'k2-g1:' "$W/gpu2.log")"
else
    fail "--gpu --dry-run: exit $rc: $(tail -n 3 "$W/gpu2.log" | tr '\n' ' ')"
fi

finish
