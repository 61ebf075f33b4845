#!/usr/bin/python3
"""Update RMS relative to the learning rate, per weight group, from replay logs (train_moe --replay 0:STEPS writes
each step's per-tensor update RMS): median over the steps after warm-up of RMS(W_t - W_{t-1}) / lr_t.
Moonlight's RMS matching scales Muon's update to 0.2 x lr, taking AdamW's typical update RMS to be 0.2-0.4 x lr.

    update_rms.py LABEL=RUN_DIR/replay_0_N.jsonl [...]
"""
import json
import statistics
import sys

GROUPS = {"attention": ["wdq", "wuq", "wdkv", "wukv", "wo"], "experts": ["expert_w13", "expert_w2"],
          "router": ["router"], "dense/shared FFN": ["dense_w13", "dense_w2", "shared_w13", "shared_w2"],
          "embed/head": ["wte", "lm_head"]}
rows = []
for arg in sys.argv[1:]:
    label, path = arg.split("=", 1)
    recs = [json.loads(l) for l in open(path)]
    cfg = next(r for r in recs if r.get("type") == "config")
    steps = [r for r in recs if r.get("type") == "step" and "update_rms" in r and r["step"] > cfg["warmup"]]
    out = [label]
    for g, names in GROUPS.items():
        vals = [v / r["lr"] for r in steps for n in names for v in r["update_rms"].get(n, [])]
        out.append("%.3f" % statistics.median(vals) if vals else "-")
    rows.append(out)
print("| run | " + " | ".join(GROUPS) + " |")
print("|---|" + "---:|" * len(GROUPS))
for r in rows:
    print("| " + " | ".join(r) + " |")
