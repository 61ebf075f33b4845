#!/usr/bin/env bash
# tests/test_instability.sh: scripts/instability.py (issue 14's study) on tiny synthetic shards (no data/default).
#
#   bash tests/test_instability.sh [WORKDIR]
#
# 1. the analysis on made-up numbers: robust z flags a jump and not noise; first_movers finds the series that moved
#    10 steps before the spike and ranks it before one that moved at the spike; a series that never moved is not
#    listed as a mover; classify tells divergence (learned, then lost it; at the unigram level above the best lr;
#    NaN; above the first loss) from a run below the best lr that never learned; lr sensitivity and the best lr of a known grid.
# 2. part 1 end to end (`instability.py lr`): k2-l1, 2 settings x 3 lrs, 40 steps, a spike injected at step 30
#    through --trainer-args (the only way to have a spike in 40 steps): every run finished, results.csv /
#    summary.csv / report.md / lr_k2-l1.png exist and agree (6 rows, the injected spike counted in every run);
#    a second invocation trains nothing.
# 3. part 2 end to end (`instability.py spikes`): the spike is replayed from the initial weights and the replayed
#    losses equal the logged ones exactly; the report names the injection (it must not call it natural); the
#    counterfactual table has the other setting, half the lr and a --skip-spikes run whose log skipped step 30;
#    a second invocation replays and trains nothing.
# 4. part 3 end to end (`instability.py muon-lr`): 2 seeds, 2 lrs per optimizer, two runs at a time: the grid, Muon
#    at AdamW's best lr and the halves all ran; the best lrs, means and standard errors in summary.json equal those
#    recomputed from results.csv; a second invocation trains nothing.
# Each check prints one PASS/FAIL/SKIP line; the last line is "N passed, N failed, N skipped".
. "$(dirname "$0")/lib.sh" instability "$@"

need_plot_python
need_trainer


# ---------------------------------------------------------------------------------------------------------------
# 1. the analysis

py_check "robust z: a jump scores, noise does not" '
import numpy as np, instability as ins
rng = np.random.default_rng(3)
x = 1.0 + 0.01 * rng.standard_normal(100); x[70] += 0.5
z = ins.robust_z(x)
assert np.isnan(z[:16]).all() and np.isfinite(z[16:]).all()
assert z[70] > 20, z[70]
quiet = np.delete(np.abs(z[16:]), 70 - 16)
assert quiet.max() < 6, quiet.max()
print("ok jump z %.1f, largest |z| elsewhere %.1f" % (z[70], quiet.max()))'

py_check "first movers: the early mover first, the still series last" '
import numpy as np, instability as ins
rng = np.random.default_rng(4)
steps = np.arange(1, 121)
early = 0.01 * rng.standard_normal(120); early[89:] += 1.0          # moves at step 90
late = 0.01 * rng.standard_normal(120); late[99:] += 1.0            # moves at the spike, step 100
still = 0.01 * rng.standard_normal(120)
ser = {"late": (steps, late, "lin"), "still": (steps, still, "lin"), "early": (steps, early, "lin")}
rows = ins.first_movers(ser, 100, lookback=30)
assert [r["series"] for r in rows] == ["early", "late", "still"], rows
assert rows[0]["first_step"] == 90 and rows[0]["lead"] == 10 and rows[1]["lead"] == 0, rows
assert rows[2]["first_step"] is None, rows[2]
print("ok early at step 90 (10 before), late at the spike, still never")'

py_check "classify: diverged vs never learned" '
import math, instability as ins
nan = float("nan")
mk = lambda lr, **kw: dict(model="m", setting="s", lr="%g" % lr, status="ok", train_loss_first=8.3, **kw)
rows = [
  mk(0.01, val_loss=4.2, train_loss_min_avg=4.1, train_loss_last_avg=4.2),    # the best lr
  mk(0.02, val_loss=6.55, train_loss_min_avg=5.0, train_loss_last_avg=6.6),   # learned, then lost it
  mk(0.001, val_loss=6.60, train_loss_min_avg=6.6, train_loss_last_avg=6.6),  # too low an lr: never learned
  mk(0.04, val_loss=6.60, train_loss_min_avg=6.6, train_loss_last_avg=6.6),   # above the best lr, at the unigram level
  mk(0.08, val_loss=9.10, train_loss_min_avg=8.0, train_loss_last_avg=9.0),   # above its first loss
  dict(model="m", setting="s", lr="0.16", status="failed", val_loss=nan),      # stopped on NaN
]
ins.classify(rows, 6.62, 0.25)
got = [r["diverged"] for r in rows]
assert got == [False, True, False, True, True, True], got
assert [r["loss_capped"] for r in rows] == [4.2, 6.55, 6.60, 6.60, 6.62, 6.62]
print("ok", got)'

py_check "summary: best lr, lr sensitivity, first unstable and diverged lr" '
import instability as ins
mk = lambda lr, vl, div, sp=0: dict(model="m", setting="adamw", lr="%g" % lr, val_loss=vl, diverged=div,
                                   loss_capped=min(vl, 6.0), n_spikes=sp, peak_max_logit=1.0)
rows = [mk(0.01, 5.0, False), mk(0.02, 4.0, False), mk(0.04, 4.05, False, 1), mk(0.08, 6.5, True)]
s = ins.setting_summary(rows, 6.0)[0]
assert s["best_lr"] == 0.02 and s["best_loss"] == 4.0, s
assert abs(s["lr_sensitivity"] - (1.0 + 0 + 0.05 + 2.0) / 4) < 1e-12, s["lr_sensitivity"]
assert s["first_unstable_lr"] == 0.04 and s["first_diverged_lr"] == 0.08 and s["near_best_lrs"] == "0.02..0.04", s
assert s["spikes_total"] == 1
print("ok sensitivity %.4f" % s["lr_sensitivity"])'

py_check "part 3: variant names, the best lr within one SE, cell statistics" '
import math, instability as ins
for args in (("adamw", 1, 1.0), ("muon", 3, 0.25), ("muon", 12, 1.414)):
    v = ins.variant_name(args[0], args[1], args[2])
    assert ins.parse_variant(v) == (args[0], args[2], args[1]), (v, ins.parse_variant(v))
assert ins.variant_name("muon", 2) == "muon-s2" and ins.variant_name("muon", 2, 0.5) == "muon-a0.5-s2"
curve = {0.01: (5.0, 0.1, 3), 0.02: (4.9, 0.05, 3), 0.04: (4.94, 0.02, 3), 0.08: (4.96, 0.02, 3)}
lr, m, se, within = ins.best_with_interval(curve)
assert (lr, m, se, within) == (0.02, 4.9, 0.05, [0.02, 0.04]), (lr, m, se, within)
mean, se, n = ins.cell_stats([dict(status="ok", val_loss=x) for x in (4.0, 4.2, 4.4)] + [None, dict(status="failed", val_loss=float("nan"))])
assert n == 3 and abs(mean - 4.2) < 1e-12 and abs(se - 0.2 / math.sqrt(3)) < 1e-12, (mean, se, n)
assert ins.MuonLr.lr_h(-12) == 0.01562 and ins.MuonLr.k_of(0.01562) == -12 and ins.MuonLr.lr_h(-11) == 0.0221
print("ok best 0.02, within 1 SE: 0.02, 0.04")'

# ---------------------------------------------------------------------------------------------------------------
# 2. part 1 end to end

D=$W/data
mkdir -p "$D"
# a cycle of 97 tokens the model learns in a few steps, so that the injected random targets stand out
cycle() { "$PY" -c "print(','.join(str(2 + (i * 7) % 97) for i in range($1, $1 + $2)))"; }
for spec in "train_0.bin 0 40000" "val_0.bin 13 6000"; do
    set -- $spec
    "$PY" data/shard_tool.py write "$D/$1" --tokens "$(cycle "$2" "$3")" >/dev/null || { fail "fixture: shard $1"; finish; }
done
IN=(scripts/instability.py --root "$W/sweeps" --name t --results "$W/res" --models k2-l1 --steps 40 --batch-size 2
    --seq-len 64 --val-batches 2 --threads 2 --progress-every 0 --settings adamw,adamw-clip100 --k-min -6 --k-max -4
    --k-step 1 --trainer-args "--inject-spike 30" --train-data "$D/train_*.bin" --val-data "$D/val_*.bin")
S=$W/sweeps/t
"$PY" "${IN[0]}" lr "${IN[@]:1}" > "$W/lr1.log" 2>&1
rc=$?
nrun=$(grep -c '^  \[run\]' "$W/lr1.log")
ndone=$(ls -d "$S"/*/train/DONE_00000040 2>/dev/null | wc -l)
if [ $rc -eq 0 ] && [ "$nrun" -eq 6 ] && [ "$ndone" -eq 6 ]; then
    pass "lr: 2 settings x 3 lrs, 6 runs finished"
else
    fail "lr: exit $rc, $nrun runs, $ndone finished: $(tail -n 4 "$W/lr1.log" | tr '\n' ' ')"
fi
py_check "lr: results.csv, summary.csv, report.md and the figure agree" "
import csv, matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
R = '$W/res'
rows = list(csv.DictReader(open(R + '/results.csv')))
assert len(rows) == 6, len(rows)
assert {r['setting'] for r in rows} == {'adamw', 'adamw-clip100'} and {r['lr'] for r in rows} == {'0.01562', '0.03125', '0.0625'}
assert all(r['status'] == 'ok' and '30' in r['spike_steps'].split() for r in rows), [r['spike_steps'] for r in rows]
assert all(float(r['peak_max_logit']) > 0 for r in rows)
summ = list(csv.DictReader(open(R + '/summary.csv')))
assert len(summ) == 2 and all(s['best_lr'] for s in summ), summ
md = open(R + '/report.md').read()
assert '## k2-l1 (40 steps)' in md and md.count('| 0.0') >= 3, md[:400]
img = plt.imread(R + '/lr_k2-l1.png'); assert img.shape[0] > 300 and img.std() > 0.01
print('ok 6 rows, 2 summaries, the spike at 30 in every run')"
"$PY" "${IN[0]}" lr "${IN[@]:1}" > "$W/lr2.log" 2>&1
rc=$?
if [ $rc -eq 0 ] && [ "$(grep -c '^  \[run\]' "$W/lr2.log")" -eq 0 ] && [ "$(grep -c '^  \[done\]' "$W/lr2.log")" -eq 6 ]; then
    pass "lr again: the 6 finished runs are skipped, nothing trained"
else
    fail "lr again: exit $rc: $(grep -c '^  \[run\]' "$W/lr2.log") runs trained; $(tail -n 2 "$W/lr2.log" | tr '\n' ' ')"
fi

# ---------------------------------------------------------------------------------------------------------------
# 3. part 2 end to end

"$PY" "${IN[0]}" spikes "${IN[@]:1}" --max-spikes 1 > "$W/sp1.log" 2>&1
rc=$?
if [ $rc -eq 0 ] && [ -f "$W/res/spikes.md" ] && [ -f "$W/res/spikes.csv" ]; then
    pass "spikes: ran ($(grep -c 'replay\|skip-spikes run' "$W/sp1.log") replay/counterfactual runs)"
else
    fail "spikes: exit $rc: $(tail -n 4 "$W/sp1.log" | tr '\n' ' ')"
fi
py_check "spikes: replay equals the log, the injection is named, the counterfactuals are there" "
import csv, glob, json
R, S = '$W/res', '$S'
md = open(R + '/spikes.md').read()
assert 'these spikes are injected' in md and 'no --inject-spike anywhere' not in md
assert 'the replayed losses equal the logged ones to 0.' in md, md
assert '| AdamW + QK-Clip 100 instead |' in md or '| AdamW instead |' in md
assert '| half the lr (' in md and '| --skip-spikes |' in md
rp = glob.glob(S + '/*/train/replay_0_35.jsonl'); assert len(rp) == 1, rp
sk = [json.loads(l) for l in open(glob.glob(S + '/*-skipspikes/train/log.jsonl')[0])]
assert any(r.get('type') == 'spike' and r['step'] == 30 and r['action'] == 'skipped' for r in sk)
assert len(list(csv.DictReader(open(R + '/spikes.csv')))) == 6
print('ok replay bit-identical, the skip run skipped step 30')"
"$PY" "${IN[0]}" spikes "${IN[@]:1}" --max-spikes 1 > "$W/sp2.log" 2>&1
rc=$?
if [ $rc -eq 0 ] && ! grep -q 'replay k2\|skip-spikes run' "$W/sp2.log"; then
    pass "spikes again: nothing replayed or trained"
else
    fail "spikes again: exit $rc: $(tail -n 3 "$W/sp2.log" | tr '\n' ' ')"
fi

# ---------------------------------------------------------------------------------------------------------------
# 4. part 3 end to end: 2 seeds, AdamW at 2 lrs, Muon at 2 others, Muon at AdamW's best, the halves

MU=(scripts/instability.py muon-lr --root "$W/sweeps" --name m --results "$W/mres" --models k2-l1 --steps 12
    --batch-size 2 --seq-len 64 --val-batches 2 --progress-every 0 --seeds 2 --adamw-k=-14:-13 --muon-k=-12:-11
    --max-extend 0 --jobs 2 --bootstrap 100 --train-data "$D/train_*.bin" --val-data "$D/val_*.bin")
"$PY" "${MU[@]}" > "$W/mu1.log" 2>&1
rc=$?
nrun=$(grep -c '^  \[run\]' "$W/mu1.log")
nhalf=$(grep -c '^  \[run\] *k2-l1-muon-a' "$W/mu1.log")
if [ $rc -eq 0 ] && [ "$nrun" -eq $((10 + nhalf)) ] && [ "$nhalf" -ge 4 ] && [ -f "$W/mres/report.md" ] \
   && [ -f "$W/mres/muon_lr.png" ]; then
    pass "muon-lr: 8 grid runs + Muon at AdamW's best lr (2) + the halves ($nhalf) = $nrun runs, two at a time"
else
    fail "muon-lr: exit $rc, $nrun runs, $nhalf of the halves (want 10 + the halves, >= 4): $(tail -n 3 "$W/mu1.log" | tr '\n' ' ')"
fi
py_check "muon-lr: the report's numbers are the runs' numbers" "
import csv, json, math, numpy as np
R = '$W/mres'
rows = list(csv.DictReader(open(R + '/results.csv')))
assert len(rows) == $nrun, len(rows)
summ = json.load(open(R + '/summary.json'))
for optim in ('adamw', 'muon'):
    b = summ['best']['k2-l1'][optim]
    plain = [r for r in rows if r['optim'] == optim and float(r['adamw_lr_scale']) == 1.0]
    means = {}
    for r in plain:
        means.setdefault(float(r['lr']), []).append(float(r['val_loss']))
    assert all(len(v) == 2 for v in means.values()), means
    best = min(means, key=lambda lr: np.mean(means[lr]))
    assert b['lr'] == best and abs(b['mean'] - np.mean(means[best])) < 1e-5, (optim, b, means)  # results.csv: 6 digits
    assert abs(b['se'] - np.std(means[best], ddof=1) / math.sqrt(2)) < 1e-5
a_lr = summ['best']['k2-l1']['adamw']['lr']
assert any(r['optim'] == 'muon' and float(r['lr']) == a_lr and float(r['adamw_lr_scale']) == 1.0 for r in rows)
halves = [r for r in rows if float(r['adamw_lr_scale']) != 1.0]
assert len(halves) == $nhalf and all(r['optim'] == 'muon' for r in halves), halves
md = open(R + '/report.md').read()
assert 'the two halves' in md and 'bootstrap' in md
print('ok best lrs and their means/SEs recomputed from results.csv, Muon ran at AdamW best lr %g' % a_lr)"
"$PY" "${MU[@]}" > "$W/mu2.log" 2>&1
if [ $? -eq 0 ] && [ "$(grep -c '^  \[run\]' "$W/mu2.log")" -eq 0 ]; then pass "muon-lr again: nothing trained"
else fail "muon-lr again: $(grep -c '^  \[run\]' "$W/mu2.log") runs trained: $(tail -n 2 "$W/mu2.log" | tr '\n' ' ')"; fi

# SIGTERM while two runs train: both trainers are stopped, exit 130 with the "interrupted" line (the handler is
# scaling_sweep.install_signals, shared with the scaling sweep)
"$PY" "${MU[@]}" --name interrupt --steps 2000 --no-halves > "$W/int.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do [ "$(grep -c '^  \[run\]' "$W/int.log")" -ge 2 ] && break; sleep 0.1; done
sleep 1
kill -TERM $pid
( sleep 60; kill -KILL $pid ) > /dev/null 2>&1 &  # a handler that never exits fails the check instead of hanging the suite
guard=$!
wait $pid
rc=$?
kill $guard 2>/dev/null
sleep 0.5
left=$(pgrep -f -- "$W/sweeps/interrupt/" | wc -l)
if [ $rc -eq 130 ] && grep -q "interrupted: finished runs are kept" "$W/int.log" && [ "$left" -eq 0 ]; then
    pass "muon-lr interrupted with two runs training: exit 130, no trainer left"
else
    fail "muon-lr interrupted: exit $rc (want 130), $left trainers left: $(tail -n 2 "$W/int.log" | tr '\n' ' ')"
fi

"$PY" "${IN[0]}" spikes "${IN[@]:1}" --name nothing > "$W/sp3.log" 2>&1
rc=$?
if [ $rc -ne 0 ] && grep -q "^error: .*study.json does not exist: run .scripts/instability.py lr" "$W/sp3.log"; then
    pass "spikes before part 1: $(head -n 1 "$W/sp3.log" | cut -c1-120)"
else
    fail "spikes before part 1: exit $rc: $(tail -n 2 "$W/sp3.log" | tr '\n' ' ')"
fi
finish
