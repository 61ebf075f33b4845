#!/usr/bin/env bash
# tests/test_plots.sh: scripts/plot_run.py and scripts/qk_ablation.py on tiny inputs (no dependence on data/default).
#
#   bash tests/test_plots.sh [WORKDIR]
#
# 1. a real run: a 6-step k2-l1 MuonClip run on a synthetic shard with a tau low enough to clip every step;
#    plot_run.py writes every PNG (valid PNG signature, IHDR, non-trivial size) and parses the clip events; a
#    --replay of its last 3 steps plots with the replay telemetry (update RMS, expert loads).
# 2. a hand-made log: nulls (scalars and inside arrays), a resume marker that supersedes later steps, spike and
#    non-finite events, clipped_heads, per-head max logits on some steps only, old records without the new fields,
#    a partly written last line: plots written, and the parsed series obey the resume rule.
# 3. edge cases: a log with only a config record, a missing log (non-zero exit, one error line), the default
#    --out (RUN/plots).
# 4. qk_ablation.py end to end on the synthetic shard (3 tiny runs: off, tau 100, an automatic tight tau that must
#    clip): the figure, the .md and .csv summaries; a second call skips the finished runs.
# Each check prints one PASS/FAIL/SKIP line; the last line is "N passed, N failed, N skipped".
. "$(dirname "$0")/lib.sh" plot "$@"
oneline() { tail -n 3 "$1" 2>/dev/null | tr '\n' ' ' | cut -c1-300; }

export MPLBACKEND=Agg
# a missing test dependency is a failure, not a skip: `make test` installs it (scripts/deps.sh test)
if ! "$PY" -c 'import matplotlib, numpy' 2>/dev/null; then
    fail "plots: $PY has no matplotlib/numpy (apt-get install python3-matplotlib python3-numpy)"
    finish
fi
need_trainer

# check_pngs LIST_FILE MIN_COUNT NAME: every path listed exists and is a PNG (signature, IHDR chunk, > 2 KB)
check_pngs() {
    local list=$1 min=$2 name=$3
    local msg
    msg=$("$PY" - "$list" "$min" <<'EOF'
import os, struct, sys
paths = [l.strip() for l in open(sys.argv[1]) if l.strip()]
bad = []
for p in paths:
    if not p.endswith(".png"):
        bad.append(f"{p}: not a .png path"); continue
    if not os.path.isfile(p):
        bad.append(f"{p}: missing"); continue
    b = open(p, "rb").read()
    if b[:8] != b"\x89PNG\r\n\x1a\n" or b[12:16] != b"IHDR":
        bad.append(f"{p}: bad PNG signature"); continue
    w, h = struct.unpack(">II", b[16:24])
    if len(b) < 2048 or w < 200 or h < 150:
        bad.append(f"{p}: too small ({len(b)} bytes, {w}x{h})")
if len(paths) < int(sys.argv[2]):
    bad.append(f"only {len(paths)} PNG paths printed, expected >= {sys.argv[2]}")
print("; ".join(bad) if bad else f"{len(paths)} PNGs, " + ", ".join(sorted(os.path.basename(p) for p in paths)))
sys.exit(1 if bad else 0)
EOF
)
    if [ $? -eq 0 ]; then pass "$name: $msg"; else fail "$name: $msg"; fi
}

EXPECTED="loss.png grad_norm.png max_logit.png max_logit_heads.png load_imbalance.png lr.png overview.png"
OPTIONAL="spike_z.png update_rms.png expert_load.png"
check_names() {  # check_names LIST_FILE NAME [MUST...]: every always-written PNG, MUST ones, nothing unknown
    local list=$1 name=$2; shift 2
    local got missing="" unknown="" f
    got=$(xargs -n1 basename < "$list" | sort | tr '\n' ' ')
    for f in $EXPECTED "$@"; do case " $got " in *" $f "*) ;; *) missing="$missing $f";; esac; done
    for f in $got; do case " $EXPECTED $OPTIONAL " in *" $f "*) ;; *) unknown="$unknown $f";; esac; done
    if [ -z "$missing$unknown" ]; then pass "$name: the expected PNGs ($got)"
    else fail "$name: printed '$got'; missing:${missing:- none}; unknown:${unknown:- none}"; fi
}

# ---------------------------------------------------------------------------------------------------------------
# 1. a real tiny run

D=$W/data
mkdir -p "$D"
"$PY" data/shard_tool.py write "$D/train_0.bin" --random 20000 --vocab 4096 --seed 1 >/dev/null &&
"$PY" data/shard_tool.py write "$D/val_0.bin" --random 4000 --vocab 4096 --seed 2 >/dev/null ||
    { fail "fixture: shard_tool.py write"; finish; }
TINY=(--model k2-l1 --seq-len 32 --batch-size 2 --sample-every 0 --tokenizer /nonexistent --threads 2
      --train-data "$D/train_0.bin")

R=$W/run
RUNFLAGS=("${TINY[@]}" --steps 6 --val-every 3 --qk-clip-tau 0.01 --optim muon --val-data "$D/val_0.bin"
          --ckpt-every 3 --out "$R")
"$BIN" "${RUNFLAGS[@]}" >"$W/run.out" 2>"$W/run.err"
rc=$?
if [ $rc -eq 0 ] && [ -s "$R/log.jsonl" ]; then
    pass "tiny run: 6 MuonClip steps, tau 0.01, log.jsonl written"
else
    fail "tiny run: exit $rc; $(oneline "$W/run.err")"; finish
fi

"$PY" scripts/plot_run.py "$R" --out "$W/plots_run" >"$W/plot_run.list" 2>"$W/plot_run.err"
rc=$?
if [ $rc -eq 0 ]; then pass "plot_run.py on the tiny run: exit 0"; else fail "plot_run.py on the tiny run: exit $rc; $(oneline "$W/plot_run.err")"; fi
check_pngs "$W/plot_run.list" 7 "tiny run PNGs"
check_names "$W/plot_run.list" "tiny run"

msg=$(cd scripts && "$PY" - "$R" <<'EOF'
import sys
from plot_run import load_run
r = load_run(sys.argv[1])
cx, ch = r.clip_steps()
vx, vy = r.val_series()
errs = []
if r.steps != list(range(1, 7)): errs.append(f"steps {r.steps}")
if r.tau() != 0.01: errs.append(f"tau {r.tau()}")
if len(cx) == 0: errs.append("no clip events parsed (tau 0.01 should clip every step)")
if list(vx) != [0, 3, 6]: errs.append(f"val steps {list(vx)} (0, 3, and 6 after the last update)")
if r.n_layers() != 2 or r.n_heads() != 2: errs.append(f"L={r.n_layers()} H={r.n_heads()}")
print("; ".join(errs) if errs else f"{len(cx)} clip steps, {int(ch.sum())} head clips, val at {[int(v) for v in vx]}")
sys.exit(1 if errs else 0)
EOF
)
if [ $? -eq 0 ]; then pass "tiny run parsed: $msg"; else fail "tiny run parsed: $msg"; fi

# a --replay of steps 4..6 (full telemetry: expert_load, update_rms) into replay_3_6.jsonl; its plots go to
# RUN/plots_replay_3_6 and include the telemetry PNGs
if "$BIN" --help 2>&1 | grep -q -- "--replay"; then
    "$BIN" "${RUNFLAGS[@]}" --replay 3:6 >"$W/replay.out" 2>"$W/replay.err"
    rc=$?
    if [ $rc -eq 0 ] && [ -s "$R/replay_3_6.jsonl" ]; then
        "$PY" scripts/plot_run.py "$R/replay_3_6.jsonl" >"$W/replay.list" 2>"$W/replay.perr"
        rc=$?
        if [ $rc -eq 0 ] && [ "$(dirname "$(head -n 1 "$W/replay.list")")" = "$R/plots_replay_3_6" ]; then
            pass "plot_run.py on a --replay log: exit 0, PNGs in RUN/plots_replay_3_6"
        else
            fail "plot_run.py on a --replay log: exit $rc, first path '$(head -n 1 "$W/replay.list")'; $(oneline "$W/replay.perr")"
        fi
        check_pngs "$W/replay.list" 9 "replay PNGs"
        check_names "$W/replay.list" "replay" update_rms.png expert_load.png
    else
        fail "train_moe --replay 3:6: exit $rc; $(oneline "$W/replay.err")"
    fi
else
    skip "plot_run.py on a --replay log: this train_moe has no --replay"
fi

# ---------------------------------------------------------------------------------------------------------------
# 2. a hand-made log with everything awkward in it

H=$W/handmade
mkdir -p "$H"
cat >"$H/log.jsonl" <<'EOF'
{"type":"config","model":"k2-l1","n_layers":2,"n_heads":2,"n_experts":384,"top_k":8,"optim":"muon","qk_clip_tau":5,"lr":0.01,"steps":8,"grad_clip":1}
{"type":"val","step":0,"val_loss":8.3}
{"type":"step","step":1,"loss":8.3,"ce":8.29,"aux":0.01,"lr":0.001,"grad_norm":0.9,"max_logit":1.0,"heads_clipped":0,"skipped":0,"max_logit_layer":[1.0,0.5],"load_imbalance":[4.5]}
{"type":"step","step":2,"loss":8.0,"ce":7.99,"aux":0.01,"lr":0.002,"grad_norm":1.2,"max_logit":6.0,"heads_clipped":1,"skipped":0,"max_logit_layer":[6.0,2.0],"load_imbalance":[5.0],"max_logit_head":[6.0,1.0,2.0,1.5],"clipped_heads":[0],"loss_z":null,"norm_z":null,"spike":0}
{"type":"step","step":3,"loss":null,"ce":null,"aux":0.01,"lr":0.003,"grad_norm":null,"max_logit":null,"heads_clipped":0,"skipped":1,"max_logit_layer":[null,2.0],"load_imbalance":[null],"max_logit_head":[null,1.0,2.0,null],"spike":0}
{"type":"nonfinite","step":3,"loss":null,"grad_norm":null}
{"type":"val","step":3,"val_loss":7.5}
{"type":"step","step":4,"loss":12.0,"ce":11.99,"aux":0.01,"lr":0.004,"grad_norm":40.0,"max_logit":4.0,"heads_clipped":0,"skipped":0,"max_logit_layer":[4.0,3.0],"load_imbalance":[6.0],"max_logit_head":[4.0,1.0,3.0,2.0],"loss_z":9.1,"norm_z":12.5,"spike":1}
{"type":"spike","step":4,"loss":12.0,"loss_z":9.1,"grad_norm":40.0,"norm_z":12.5,"action":"logged"}
{"type":"step","step":5,"loss":99.0,"lr":0.005,"grad_norm":1.0,"max_logit":4.0,"heads_clipped":0,"skipped":0,"max_logit_layer":[4.0,3.0],"load_imbalance":[6.0]}
{"type":"step","step":6,"loss":98.0,"lr":0.006,"grad_norm":1.0,"max_logit":4.0,"heads_clipped":0,"skipped":0,"max_logit_layer":[4.0,3.0],"load_imbalance":[6.0]}
{"type":"spike","step":6,"loss":98.0,"loss_z":20,"grad_norm":1.0,"norm_z":0.1,"action":"skipped","replay_from":4}
{"type":"val","step":6,"val_loss":50.0}
{"type":"resume","step":4}
{"type":"config","model":"k2-l1","n_layers":2,"n_heads":2,"n_experts":384,"top_k":8,"optim":"muon","qk_clip_tau":5,"lr":0.01,"steps":8,"grad_clip":1,"resumed_from":4}
{"type":"step","step":5,"loss":7.0,"ce":6.99,"aux":0.01,"lr":0.005,"grad_norm":0.8,"max_logit":7.0,"heads_clipped":2,"skipped":0,"max_logit_layer":[7.0,5.5],"load_imbalance":[3.0],"max_logit_head":[7.0,1.0,5.5,2.0],"clipped_heads":[0,2],"spike":0}
{"type":"step","step":6,"loss":6.9,"ce":6.89,"aux":0.01,"lr":0.006,"grad_norm":0.7,"max_logit":4.5,"heads_clipped":0,"skipped":0,"max_logit_layer":[4.5,3.0],"load_imbalance":[2.5],"max_logit_head":[4.5,1.0,3.0,2.0],"spike":0}
{"type":"sample","step":6,"text":"hello"}
{"type":"step","step":7,"loss":6.8,"ce":6.79,"aux":0.01,"lr":0.007,"grad_norm":0.7,"max_logit":4.0,"heads_clipped":0,"skipped":0,"max_logit_layer":[4.0,3.0],"load_imbalance":[2.0,1.0],"max_logit_head":[4.0,1.0,3.0],"spike":0}
{"type":"step","step":8,"loss":6.7,"ce":6.69,"aux":"oops","lr":0.008,"grad_no
EOF
"$PY" scripts/plot_run.py "$H" >"$H.list" 2>"$H.err"
rc=$?
if [ $rc -eq 0 ] && [ "$(dirname "$(head -n 1 "$H.list")")" = "$H/plots" ]; then
    pass "plot_run.py on a hand-made log (nulls, resume, spikes, a torn last line): exit 0, default --out RUN/plots"
else
    fail "plot_run.py on a hand-made log: exit $rc, first path '$(head -n 1 "$H.list")'; $(oneline "$H.err")"
fi
check_pngs "$H.list" 7 "hand-made log PNGs"
if grep -q "not JSON" "$H.err"; then pass "hand-made log: the torn last line is reported on stderr"; else fail "hand-made log: no warning for the torn last line"; fi

msg=$(cd scripts && "$PY" - "$H" 2>/dev/null <<'EOF'
import math, sys
from plot_run import load_run
r = load_run(sys.argv[1])
errs = []
if r.steps != [1, 2, 3, 4, 5, 6, 7]: errs.append(f"steps {r.steps}")
loss = list(r.series("loss"))
if loss[4] != 7.0 or loss[5] != 6.9: errs.append(f"resume did not supersede steps 5, 6: {loss}")
if not math.isnan(loss[2]): errs.append("null loss is not NaN")
vx, vy = r.val_series()
if list(vx) != [0, 3] : errs.append(f"val steps {list(vx)} (val 6 before the resume at 4 must go)")
if r.spike_steps() != [4, 6]: errs.append(f"spike steps {r.spike_steps()} (events survive the resume)")
if r.skipped_steps() != [3, 6]: errs.append(f"skipped steps {r.skipped_steps()}")
if r.nonfinite_steps() != [3]: errs.append(f"non-finite steps {r.nonfinite_steps()}")
cx, ch = r.clip_steps()
if list(cx) != [2, 5] or list(ch) != [1, 2]: errs.append(f"clip steps {list(cx)} {list(ch)}")
if r.clipped_heads() != [(2, 0), (5, 0), (5, 2)]: errs.append(f"clipped heads {r.clipped_heads()}")
m = r.matrix("max_logit_head", 4)
if m.shape != (7, 4) or not math.isnan(m[0, 0]) or not math.isnan(m[6, 3]) or m[4, 2] != 5.5:
    errs.append(f"max_logit_head matrix {m.tolist()}")
if r.tau() != 5 or r.resumes != [4]: errs.append(f"tau {r.tau()} resumes {r.resumes}")
if r.bad_lines != 1: errs.append(f"bad lines {r.bad_lines}")
print("; ".join(errs) if errs else "steps 1..7, resume supersedes steps 5-6 and val 6, spikes [4, 6] (6 skipped, "
      "replayed from 4), non-finite [3], clips at [2, 5]")
sys.exit(1 if errs else 0)
EOF
)
if [ $? -eq 0 ]; then pass "hand-made log parsed: $msg"; else fail "hand-made log parsed: $msg"; fi

# ---------------------------------------------------------------------------------------------------------------
# 3. edge cases

E=$W/config_only
mkdir -p "$E"
echo '{"type":"config","model":"k2-l1","lr":0.003}' >"$E/log.jsonl"
"$PY" scripts/plot_run.py "$E/log.jsonl" --out "$E/p" >"$E.list" 2>"$E.err"
rc=$?
if [ $rc -eq 0 ]; then pass "a log with only a config record: exit 0 (empty panels), a warning: $(oneline "$E.err")"; else fail "config-only log: exit $rc; $(oneline "$E.err")"; fi
check_pngs "$E.list" 7 "config-only log PNGs"

"$PY" scripts/plot_run.py "$W/nowhere" >"$W/nowhere.out" 2>"$W/nowhere.err"
rc=$?
if [ $rc -ne 0 ] && [ "$(wc -l <"$W/nowhere.err")" -eq 1 ] && grep -q "nowhere" "$W/nowhere.err" && [ ! -s "$W/nowhere.out" ]; then
    pass "a missing log: exit $rc, '$(cat "$W/nowhere.err")'"
else
    fail "a missing log: exit $rc; $(oneline "$W/nowhere.err")"
fi

# ---------------------------------------------------------------------------------------------------------------
# 4. qk_ablation.py end to end (tiny)

A=$W/ablation
ABL=("$PY" scripts/qk_ablation.py --model k2-l1 --optim muon --lr 0.03 --steps 6 --taus 0,100,auto --threads 2
     --runs-dir "$A/runs" --results "$A/results" --val-every 3 --
     --seq-len 32 --batch-size 2 --train-data "$D/train_0.bin" --val-data "$D/val_0.bin" --tokenizer /nonexistent)
"${ABL[@]}" >"$A.out" 2>"$A.err"
rc=$?
T=$A/results/k2-l1-muon
if [ $rc -eq 0 ] && [ -s "$T.png" ] && [ -s "$T.md" ] && [ -s "$T.csv" ]; then
    pass "qk_ablation.py: 3 runs, k2-l1-muon.png, .md, .csv"
else
    fail "qk_ablation.py: exit $rc; $(oneline "$A.err") $(oneline "$A.out")"
fi
echo "$T.png" >"$A.list"
check_pngs "$A.list" 1 "ablation figure"
msg=$("$PY" - "$T.csv" <<'EOF'
import csv, sys
try:
    rows = list(csv.DictReader(open(sys.argv[1])))
except OSError as e:
    print(e); sys.exit(1)
errs = []
if [r["run"] for r in rows[:2]] != ["off", "tau100"] or len(rows) != 3: errs.append(f"runs {[r['run'] for r in rows]}")
elif int(rows[0]["clip_steps"]) != 0: errs.append("the unclipped run has clip events")
elif int(rows[2]["clip_steps"]) < 1: errs.append(f"the auto tau {rows[2]['tau']} never clipped")
elif any(int(r["steps"]) != 6 for r in rows): errs.append(f"steps {[r['steps'] for r in rows]}")
print("; ".join(errs) if errs else f"runs off, tau100, {rows[2]['run']} (auto) with {rows[2]['clip_steps']} clip steps")
sys.exit(1 if errs else 0)
EOF
)
if [ $? -eq 0 ] && grep -q "^| off | off |" "$A.out"; then
    pass "ablation summary: $msg; the table is printed"
else
    fail "ablation summary: $msg; stdout: $(oneline "$A.out")"
fi
"${ABL[@]}" >"$A.again" 2>&1
rc=$?
nskip_runs=$(grep -c "^skip" "$A.again")
if [ $rc -eq 0 ] && [ "$nskip_runs" -eq 3 ]; then
    pass "qk_ablation.py again: the 3 finished runs are skipped"
else
    fail "qk_ablation.py again: exit $rc, $nskip_runs runs skipped; $(oneline "$A.again")"
fi

finish
