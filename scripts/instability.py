#!/usr/bin/python3
"""Instability study (issue 14): learning-rate sensitivity and the edge of stability, natural loss spikes.

    scripts/instability.py lr --quick           # part 1 in ~5 min on 2 cores: k2-l1, a factor-4 lr grid
    scripts/instability.py lr                   # part 1: k2-l1 and k2-l3, factor-2 grid 2^-11..2^1, ~70 min
    scripts/instability.py spikes               # part 2: the spikes of part 1's runs, replayed and explained
    scripts/instability.py muon-lr              # part 3: AdamW's and Muon's best lr with seed error bars, ~35 min
    scripts/instability.py muon-lr --tokens-per-param 20 --models k2-l1   # part 3 at 20 tokens per parameter
    scripts/instability.py lr --report-only     # tables, CSV and figures from the runs finished so far
    scripts/instability.py lr --dry-run         # the plan and the time estimate

Part 1 (after Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training instabilities",
arXiv 2309.14322): for each ladder size, every optimizer setting below trains at every lr of the grid (lr = 2^k),
each run a full cosine schedule of --tokens-per-param x active parameters tokens. Settings:
    adamw          AdamW, QK-Clip off            adamw-clip100  AdamW with QK-Clip tau 100
    muon           Muon, QK-Clip off             muonclip100    MuonClip tau 100       muonclip30  MuonClip tau 30
Per run: final validation loss, whether it diverged, the peak of the attention max logit over the run, the spikes
the trainer's detector logged (train/spikes.h), the heads QK-Clip rescaled.
Diverged: the trainer stopped on non-finite steps; or the final validation loss is above the run's first training
loss; or it is within --diverge-margin (0.25) nats of the unigram cross-entropy of the data (the validation tokens
scored by the training tokens' frequencies) while the run's lr is above its setting's best lr or its training loss
(8-step average) had been more than the margin lower: the model lost its context. That is what divergence looks like
at this scale with gradient clipping (the loss settles near 6.6 with attention logits past 1e5, after excursions to
30-70) far more often than a NaN. A run below the best lr that never got under the unigram level did not learn,
which is not divergence.
lr sensitivity (Wortsman's definition): the mean over the grid of min(L(lr), L_cap) - min over lr of L(lr), with
L_cap the unigram cross-entropy (a diverged run counts as L_cap): how much loss a setting gives up over the whole
lr range, so a wider stable range scores lower.

Part 2 reads part 1's runs (or --from DIR): every spike the detector logged in a run that did not diverge is a
candidate; the strongest (by loss z) of up to --max-spikes runs are replayed from the initial weights with full
telemetry (the trainer's --replay 0:S), and each telemetry series (each head's max logit, the LM head's output
logits and log Z, each layer's expert load imbalance and experts in use, each tensor's update RMS, the gradient
norm) is scored against its own recent history: the report
says which moved first, where, and how many steps before the loss. Then the same run is trained again with one
change at a time (QK-Clip on, half the lr, --skip-spikes) and the report says whether the spike is still there.

Part 3 (muon-lr): at each size (default k2-l1 and k2-l2), AdamW and Muon each on an lr grid of 2^(k/2) (a sqrt(2)
grid; --adamw-k and --muon-k give the k ranges), every point with seeds 1..--seeds (a seed fixes the initial weights
and the data order), one more lr past an edge that holds the best mean; Muon also at AdamW's best lr (Moonlight's
protocol); then the two halves of Muon apart (--adamw-lr-scale): (i) the Muon matrices' lr swept while the AdamW
side (embedding, head, gains) stays at AdamW's best lr, (ii) the AdamW side swept while the matrices stay at
Muon's best lr. Report: each best lr with the lrs whose mean lies within one standard error of the best mean and a
bootstrap over seeds; the compute Muon needs for AdamW's loss (AdamW's power law through the sizes' best means)
with a seed bootstrap; the halves' curves. Runs go --jobs at a time (default 2, one thread each: at these sizes
two one-thread runs do more per second than one two-thread run).

Results: sweeps/<name>/ holds one directory per run (run.json, cmd.txt, stdout.log, train/, result.json; finished
runs are skipped on a second invocation, as in scaling_sweep.py, whose run machinery this script shares).
--results DIR (default dev/results/instability[_quick]) gets results.csv, summary.csv, report.md and lr_<model>.png
(part 1), spikes.csv, spikes.md and spike_<run>.png (part 2).
"""

import argparse
import csv
import glob
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scaling_sweep as ss  # noqa: E402  (the shared run machinery: Sweep, read_jsonl, write_json, log)

ROOT = ss.ROOT
log = ss.log

# name: (label, --optim, --qk-clip-tau, plot colour, line style)
SETTINGS = {
    "adamw": ("AdamW", "adamw", 0, "tab:blue", "-"),
    "adamw-clip100": ("AdamW + QK-Clip 100", "adamw", 100, "tab:cyan", "--"),
    "muon": ("Muon, no clip", "muon", 0, "tab:red", "-"),
    "muonclip100": ("MuonClip tau 100", "muon", 100, "tab:orange", "--"),
    "muonclip30": ("MuonClip tau 30", "muon", 30, "tab:purple", ":"),
}

PARTS = {
    # part 1's defaults per mode; any can be overridden by its flag
    "quick": dict(models="k2-l1", tokens_per_param=2.0, k_min=-11, k_max=1, k_step=2, name="instability_quick"),
    "default": dict(models="k2-l1,k2-l3", tokens_per_param=4.0, k_min=-11, k_max=1, k_step=1, name="instability"),
}


# ---------------------------------------------------------------------------------------------------------------
# the data's unigram cross-entropy (the loss of a model that ignores its context)

def read_shard(path):
    """Tokens of an llm.c shard (header of 256 int32: magic, version 1 = uint16 / 7 = uint32, count)."""
    head = np.fromfile(path, dtype="<i4", count=256)
    if head.size < 3 or head[1] not in (1, 7):
        raise ValueError("%s is not an llm.c token shard" % path)
    dt = "<u2" if head[1] == 1 else "<u4"
    return np.fromfile(path, dtype=dt, offset=1024)[:int(head[2])]


def unigram_ce(train_glob, val_glob):
    """Cross-entropy of the validation tokens under the training tokens' frequencies (add-1/2 smoothing)."""
    paths = lambda g: sorted(glob.glob(g if os.path.isabs(g) else os.path.join(ROOT, g)))
    train = np.concatenate([read_shard(p) for p in paths(train_glob)])
    val = np.concatenate([read_shard(p) for p in paths(val_glob)])
    V = int(max(train.max(), val.max())) + 1
    counts = np.bincount(train, minlength=V).astype(np.float64) + 0.5
    return float(-np.log(counts[val] / counts.sum()).mean())


# ---------------------------------------------------------------------------------------------------------------
# part 1: the lr grid

class LrStudy(ss.Sweep):
    """scaling_sweep's Sweep with a setting name where it has the optimizer: run names <model>-<setting>-lr<lr>,
    the setting's --optim and --qk-clip-tau in the run's config, no SVD entropies."""

    def __init__(self, args):
        super().__init__(args)
        self.entropy = False

    def lr_of(self, k):
        return float(ss.lr_str(2.0 ** k))

    def ks(self):
        a = self.args
        return list(range(a.k_min, a.k_max + 1, a.k_step))

    def run_config(self, model, setting, lr):
        cfg = super().run_config(model, SETTINGS[setting][1], lr)
        cfg.update(setting=setting, qk_clip_tau=SETTINGS[setting][2])
        return cfg

    def trainer_argv(self, cfg, out):
        return super().trainer_argv(cfg, out) + ["--qk-clip-tau", str(cfg["qk_clip_tau"])]

    def predict_raw_s(self, model, setting):
        return super().predict_raw_s(model, SETTINGS.get(setting, (0, setting))[1])

    def nominal_runs(self):
        remaining = []  # (model, setting) of every run not finished yet (the time estimate)
        for m in self.model_list():
            for s in self.settings():
                for k in self.ks():
                    if self.read_result(os.path.join(self.dir, self.run_name(m, s, self.lr_of(k)))) is None:
                        remaining.append((m, s))
        return remaining

    def settings(self):
        return [s.strip() for s in self.args.settings.split(",") if s.strip()]

    def summarize(self, run_dir, cfg, wall_s=None):
        res = super().summarize(run_dir, cfg, wall_s)
        res.update(run_telemetry(os.path.join(run_dir, "train")))
        ss.write_json(os.path.join(run_dir, "result.json"), res)
        return res

    def train_all(self):
        for m in self.model_list():
            if m not in self.models:
                sys.exit("error: --models: unknown preset %s (./train_moe --list-models)" % m)
        log("study %s: %s; settings %s; lr = 2^k, k = %d..%d step %d (%d lrs); %g tokens per active parameter" % (
            self.dir, self.args.models, self.args.settings, self.args.k_min, self.args.k_max, self.args.k_step,
            len(self.ks()), self.args.tokens_per_param))
        log("estimated time for the runs not yet done: ~%s" % ss.fmt_dur(self.eta_s()))
        for m in self.model_list():
            log("%s: %d steps = %.4gM tokens" % (m, self.steps_for(m), self.steps_for(m) * self.tps / 1e6))
            # lowest lr first for every setting, then the next lr: a stopped study has whole lr columns
            for k in self.ks():
                for s in self.settings():
                    self.run(m, s, self.lr_of(k), SETTINGS[s][0])
        self.save_settings()
        log("study done: %d runs trained now, %d found finished, %s" % (self.ran, self.skipped,
                                                                       ss.fmt_dur(time.time() - self.t_start)))

    def results(self):
        rows = []
        for m in self.model_list():
            for s in self.settings():
                for k in self.ks():
                    r = self.read_result(os.path.join(self.dir, self.run_name(m, s, self.lr_of(k))))
                    if r is not None:
                        if "train_loss_min_avg" not in r and r.get("status") == "ok":
                            r.update(run_telemetry(os.path.join(self.dir, self.run_name(m, s, self.lr_of(k)), "train")))
                        r.setdefault("setting", s)
                        rows.append(r)
        return rows


def run_telemetry(train_dir):
    """What part 1 records of a run beyond its final loss, from its log.jsonl."""
    recs = ss.read_jsonl(os.path.join(train_dir, "log.jsonl"))
    steps = [r for r in recs if r.get("type") == "step"]
    logits = [r["max_logit"] for r in steps if r.get("max_logit") is not None]
    spikes = [r for r in recs if r.get("type") == "spike"]
    return dict(peak_max_logit=float(max(logits)) if logits else float("nan"),
                final_max_logit=float(logits[-1]) if logits else float("nan"),
                n_spikes=len(spikes), spike_steps=[r["step"] for r in spikes],
                spike_loss_z=[r.get("loss_z") for r in spikes],
                nonfinite_steps=len([r for r in recs if r.get("type") == "nonfinite"]),
                heads_clipped=int(sum(r.get("heads_clipped", 0) for r in steps)),
                **train_loss_shape([r["ce"] for r in steps if r.get("ce") is not None]))


def train_loss_shape(ce, w=8):
    """First step's loss, and the lowest and the last of the w-step moving average of the training loss."""
    ce = np.array([c for c in ce if c is not None and math.isfinite(c)], dtype=np.float64)
    if ce.size < w:
        return dict(train_loss_first=float("nan"), train_loss_min_avg=float("nan"), train_loss_last_avg=float("nan"))
    avg = np.convolve(ce, np.ones(w) / w, mode="valid")
    return dict(train_loss_first=float(ce[0]), train_loss_min_avg=float(avg.min()), train_loss_last_avg=float(avg[-1]))


def classify(rows, l_cap, margin):
    """Adds diverged and loss_capped to each row. Diverged: stopped on non-finite steps; or ended above its first
    step's loss; or ended within `margin` of the unigram cross-entropy while its lr is above the best lr of its
    (model, setting) or its training loss (8-step average) had been more than `margin` lower. A run below the best lr
    that never got under the unigram level (too low an lr, too few steps) did not learn, which is not divergence."""
    best = {}
    for r in rows:
        vl = r.get("val_loss")
        if r.get("status") == "ok" and vl is not None and math.isfinite(vl):
            key = (r.get("model"), r.get("setting"))
            if key not in best or vl < best[key][0]:
                best[key] = (vl, float(r.get("lr", "nan")))
    for r in rows:
        vl = r.get("val_loss")
        ok = r.get("status") == "ok" and vl is not None and math.isfinite(vl)
        first, lo, last = (r.get(k, float("nan")) for k in ("train_loss_first", "train_loss_min_avg",
                                                             "train_loss_last_avg"))
        above_best = float(r.get("lr", "nan")) > best.get((r.get("model"), r.get("setting")), (0, float("inf")))[1]
        r["diverged"] = (not ok) or vl > first or (vl > l_cap - margin and (above_best or last - lo > margin))
        r["loss_capped"] = min(vl, l_cap) if ok else l_cap
    return rows


def setting_summary(rows, l_cap):
    """Per (model, setting): best lr and loss, lr sensitivity, the first lr with a spike and the first diverged."""
    out = []
    keys = sorted({(r["model"], r["setting"]) for r in rows}, key=lambda t: (t[0], list(SETTINGS).index(t[1])))
    for m, s in keys:
        rs = sorted([r for r in rows if r["model"] == m and r["setting"] == s], key=lambda r: float(r["lr"]))
        fine = [r for r in rs if not r["diverged"]]
        best = min(fine, key=lambda r: r["val_loss"]) if fine else None
        l_best = min(r["loss_capped"] for r in rs)
        sens = float(np.mean([r["loss_capped"] - l_best for r in rs]))
        best_lr = float(best["lr"]) if best else float("nan")
        above = [r for r in rs if float(r["lr"]) > best_lr] if best else []
        first_spike = next((float(r["lr"]) for r in rs if r.get("n_spikes", 0) > 0 or r["diverged"]), float("nan"))
        first_div = next((float(r["lr"]) for r in rs if r["diverged"]), float("nan"))
        # the stable range: lrs within 0.1 nats of the best loss
        near = [float(r["lr"]) for r in fine if r["val_loss"] <= best["val_loss"] + 0.1] if best else []
        out.append(dict(model=m, setting=s, label=SETTINGS[s][0], runs=len(rs), best_lr=best_lr,
                        best_loss=best["val_loss"] if best else float("nan"), lr_sensitivity=sens,
                        first_unstable_lr=first_spike, first_diverged_lr=first_div,
                        near_best_lrs="%s..%s" % (ss.lr_str(min(near)), ss.lr_str(max(near))) if near else "",
                        peak_max_logit_at_best=best["peak_max_logit"] if best else float("nan"),
                        peak_max_logit_above_best=max([r.get("peak_max_logit", float("nan")) for r in above],
                                                      default=float("nan")),
                        spikes_total=int(sum(r.get("n_spikes", 0) for r in rs if not r["diverged"]))))
    return out


def write_csv(path, rows, cols):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            vals = []
            for c in cols:
                v = r.get(c, "")
                if isinstance(v, bool):
                    v = int(v)
                elif isinstance(v, float):
                    v = "" if not math.isfinite(v) else "%.6g" % v
                elif isinstance(v, list):
                    v = " ".join(str(x) for x in v)
                vals.append(v)
            w.writerow(vals)


def plot_lr(path, model, rows, l_cap, margin):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8))
    for s, (label, _, _, color, ls) in SETTINGS.items():
        rs = sorted([r for r in rows if r["model"] == model and r["setting"] == s], key=lambda r: float(r["lr"]))
        if not rs:
            continue
        lrs = [float(r["lr"]) for r in rs]
        ax.plot(lrs, [r["loss_capped"] for r in rs], color=color, ls=ls, lw=1.4, label=label)
        fine = [r for r in rs if not r["diverged"]]
        ax.scatter([float(r["lr"]) for r in fine], [r["val_loss"] for r in fine], color=color, s=16, zorder=3)
        spiky = [r for r in fine if r.get("n_spikes", 0) > 0]
        ax.scatter([float(r["lr"]) for r in spiky], [r["val_loss"] for r in spiky], facecolor="none",
                   edgecolor=color, s=80, zorder=3)
        div = [r for r in rs if r["diverged"]]
        ax.scatter([float(r["lr"]) for r in div], [r["loss_capped"] for r in div], color=color, marker="x", s=60,
                   zorder=4)
        bx.plot(lrs, [r.get("peak_max_logit", float("nan")) for r in rs], color=color, ls=ls, lw=1.4, label=label)
        bx.scatter([float(r["lr"]) for r in div], [r.get("peak_max_logit", float("nan")) for r in div], color=color,
                   marker="x", s=60, zorder=4)
    ax.axhline(l_cap, color="grey", lw=0.8, ls=":")
    ax.axhline(l_cap - margin, color="grey", lw=0.6, ls="--")
    ax.text(ax.get_xlim()[0] if False else min(float(r["lr"]) for r in rows if r["model"] == model), l_cap + 0.03,
            "unigram cross-entropy %.3f (x: diverged, at this cap)" % l_cap, fontsize=7, color="grey")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("final validation loss")
    ax.set_title("%s: final loss vs lr (o: detector logged a spike)" % model)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    bx.set_xscale("log", base=2)
    bx.set_yscale("log")
    bx.axhline(100, color="grey", lw=0.6, ls="--")
    bx.axhline(30, color="grey", lw=0.6, ls=":")
    bx.set_xlabel("peak learning rate")
    bx.set_ylabel("peak attention max logit over the run")
    bx.set_title("%s: attention logit growth" % model)
    bx.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_lr(study, out_dir):
    a = study.args
    l_cap = unigram_ce(a.train_data, a.val_data)
    rows = classify(study.results(), l_cap, a.diverge_margin)
    if not rows:
        log("no finished runs yet")
        return
    os.makedirs(out_dir, exist_ok=True)
    cols = ["model", "setting", "optim", "qk_clip_tau", "lr", "steps", "status", "val_loss", "diverged",
            "loss_capped", "peak_max_logit", "final_max_logit", "n_spikes", "spike_steps", "nonfinite_steps",
            "heads_clipped", "train_loss_first", "train_loss_min_avg", "train_loss_last_avg", "wall_s", "seed"]
    write_csv(os.path.join(out_dir, "results.csv"), rows, cols)
    summ = setting_summary(rows, l_cap)
    scols = ["model", "setting", "label", "runs", "best_lr", "best_loss", "lr_sensitivity", "near_best_lrs",
             "first_unstable_lr", "first_diverged_lr", "peak_max_logit_at_best", "peak_max_logit_above_best",
             "spikes_total"]
    write_csv(os.path.join(out_dir, "summary.csv"), summ, scols)
    md = ["# Instability study, part 1: lr sensitivity (%s)" % time.strftime("%Y-%m-%d"), "",
          "Made by `scripts/instability.py lr%s` (sweep directory `%s`): %s, %g tokens per active parameter, "
          "batch %d x %d, cosine schedule, seed %d, lr = 2^k for k = %d..%d step %d. Unigram cross-entropy of the "
          "data (the diverged cap): %.4f; diverged = stopped on non-finite steps or final val loss above %.4f." % (
              " --quick" if a.quick else "", os.path.relpath(study.dir, ROOT), a.models, a.tokens_per_param,
              a.batch_size, a.seq_len, a.seed, a.k_min, a.k_max, a.k_step, l_cap, l_cap - a.diverge_margin), ""]
    for m in study.model_list():
        mrows = [r for r in rows if r["model"] == m]
        if not mrows:
            continue
        plot_lr(os.path.join(out_dir, "lr_%s.png" % m), m, rows, l_cap, a.diverge_margin)
        lrs = sorted({float(r["lr"]) for r in mrows})
        md += ["## %s (%d steps)" % (m, study.steps_for(m)), "", "![](lr_%s.png)" % m, "",
               "Final validation loss (D: diverged, its loss in brackets; *: the detector logged a spike; peak "
               "attention max logit after the slash):", "",
               "| lr | " + " | ".join(SETTINGS[s][0] for s in study.settings()) + " |",
               "|---:|" + "---:|" * len(study.settings())]
        for lr in lrs:
            cells = []
            for s in study.settings():
                r = next((r for r in mrows if r["setting"] == s and float(r["lr"]) == lr), None)
                if r is None:
                    cells.append("")
                    continue
                vl = r.get("val_loss")
                loss = ("%.3f" % vl) if vl is not None and math.isfinite(vl) else "NaN"
                cell = ("D (%s)" % loss) if r["diverged"] else loss
                cell += "*" * min(3, r.get("n_spikes", 0))
                pl = r.get("peak_max_logit", float("nan"))
                cells.append(cell + " / %s" % (("%.3g" % pl) if math.isfinite(pl) else "-"))
            md.append("| %s | %s |" % (ss.lr_str(lr), " | ".join(cells)))
        md += ["", "| setting | best lr | best loss | lr sensitivity | lrs within 0.1 of best | first lr with a "
               "spike or divergence | first diverged lr | peak max logit at best lr | spikes (non-diverged runs) |",
               "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
        for x in summ:
            if x["model"] != m:
                continue
            f = lambda v, fmt="%.4g": (fmt % v) if isinstance(v, (int, float)) and math.isfinite(v) else "-"
            md.append("| %s | %s | %s | %s | %s | %s | %s | %s | %d |" % (
                x["label"], f(x["best_lr"]), f(x["best_loss"], "%.4f"), f(x["lr_sensitivity"], "%.4f"),
                x["near_best_lrs"], f(x["first_unstable_lr"]), f(x["first_diverged_lr"]),
                f(x["peak_max_logit_at_best"], "%.3g"), x["spikes_total"]))
        md.append("")
    with open(os.path.join(out_dir, "report.md"), "w") as fh:
        fh.write("\n".join(md) + "\n")
    log("report: %s (results.csv, summary.csv, lr_*.png)" % os.path.relpath(os.path.join(out_dir, "report.md"), ROOT))


# ---------------------------------------------------------------------------------------------------------------
# part 2: natural spikes, replayed and explained

def robust_z(x, window=32, min_window=16):
    """z of each x[t] against x[t-window:t]: (x - median) / (1.4826 MAD), the MAD floored at 1e-3 of |median| (a
    series that sat still must move by more than rounding to score). NaN where fewer than min_window values
    precede t."""
    x = np.asarray(x, dtype=np.float64)
    z = np.full(x.size, np.nan)
    for t in range(min_window, x.size):
        ref = x[max(0, t - window):t]
        ref = ref[np.isfinite(ref)]
        if ref.size < min_window or not np.isfinite(x[t]):
            continue
        med = np.median(ref)
        mad = 1.4826 * np.median(np.abs(ref - med))
        z[t] = (x[t] - med) / max(mad, 1e-3 * abs(med), 1e-12)
    return z


def signed_log(x):
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.log1p(np.abs(x))


def replay_series(recs):
    """{name: (steps, values, transform)} of every telemetry series in a replay log's step records. Positive scales
    (norms, RMS, imbalance) are compared in log; max logits (which can be negative) in signed log."""
    recs = [r for r in recs if r.get("type") == "step"]
    steps = np.array([r["step"] for r in recs])
    out = {}

    def add(name, vals, kind):
        v = np.array([np.nan if x is None else x for x in vals], dtype=np.float64)
        if kind == "log":
            v = np.log(np.where(v > 0, v, np.nan))
        elif kind == "slog":
            v = signed_log(v)
        out[name] = (steps, v, kind)

    add("grad norm", [r.get("grad_norm") for r in recs], "log")
    if any("out_logits" in r for r in recs):  # the LM head's output: Wortsman's output-logit divergence
        add("output log Z (mean)", [(r.get("out_logits") or {}).get("lse_mean") for r in recs], "lin")
        add("output log Z (max)", [(r.get("out_logits") or {}).get("lse_max") for r in recs], "lin")
        add("output max logit", [(r.get("out_logits") or {}).get("max") for r in recs], "slog")
    if any("muon_update_rms" in r for r in recs):
        add("Muon update RMS", [r.get("muon_update_rms") for r in recs], "log")
    nh = max((len(r.get("max_logit_head", [])) for r in recs), default=0)
    nl = max((len(r.get("max_logit_layer", [])) for r in recs), default=0)
    per = nh // nl if nl else 0
    for i in range(nh):
        add("max logit L%d H%d" % (i // per, i % per) if per else "max logit head %d" % i,
            [(r.get("max_logit_head") or [None] * nh)[i] for r in recs], "slog")
    nm = max((len(r.get("load_imbalance", [])) for r in recs), default=0)
    for i in range(nm):
        add("load max/mean MoE layer %d" % i, [(r.get("load_imbalance") or [None] * nm)[i] for r in recs], "log")
        loads = [r.get("expert_load") for r in recs]
        if all(l for l in loads):
            E = len(loads[0]) // nm
            add("experts with tokens, MoE layer %d" % i,
                [int(np.count_nonzero(np.array(l[i * E:(i + 1) * E]))) for l in loads], "lin")
    names = sorted({k for r in recs for k in (r.get("update_rms") or {})})
    for n in names:
        g = max(len((r.get("update_rms") or {}).get(n, [])) for r in recs)
        for j in range(g):
            add("update RMS %s%s" % (n, "[%d]" % j if g > 1 else ""),
                [((r.get("update_rms") or {}).get(n) or [None] * g)[j] for r in recs], "log")
    return out


def first_movers(series, spike_step, lookback=30, z_thr=6.0, window=32):
    """Each series' first step in [spike_step - lookback, spike_step] with |robust z| > z_thr: rows sorted by that
    step (earliest first), then by |z|; with the value's ratio to its median over the window before lookback."""
    rows = []
    for name, (steps, v, kind) in series.items():
        z = robust_z(v, window)
        idx = np.where((steps >= spike_step - lookback) & (steps <= spike_step) & (np.abs(np.nan_to_num(z)) > z_thr))[0]
        at = np.where(steps == spike_step)[0]
        z_at = float(z[at[0]]) if at.size else float("nan")
        base = v[(steps < spike_step - lookback) & (steps >= spike_step - lookback - window)]
        base = base[np.isfinite(base)]
        vs = v[at[0]] if at.size else np.nan
        if kind == "log":
            ratio = float(np.exp(vs - np.median(base))) if base.size else float("nan")
        elif kind == "slog":
            lin = lambda y: np.sign(y) * np.expm1(np.abs(y))
            ratio = float(lin(vs) / lin(np.median(base))) if base.size and np.median(base) != 0 else float("nan")
        else:
            ratio = float(vs / np.median(base)) if base.size and np.median(base) != 0 else float("nan")
        if idx.size:
            t = int(steps[idx[0]])
            rows.append(dict(series=name, first_step=t, lead=spike_step - t, z_first=float(z[idx[0]]), z_at_spike=z_at,
                             ratio=ratio))
        else:
            rows.append(dict(series=name, first_step=None, lead=None, z_first=float("nan"), z_at_spike=z_at,
                             ratio=ratio))
    moved = sorted([r for r in rows if r["first_step"] is not None], key=lambda r: (r["first_step"], -abs(r["z_first"])))
    still = sorted([r for r in rows if r["first_step"] is None], key=lambda r: -abs(np.nan_to_num(r["z_at_spike"])))
    return moved + still


def spike_candidates(study, rows):
    """Every spike record of every part-1 run, with its run's verdict: runs that did not diverge first, by loss z,
    then diverged runs by step."""
    cands = []
    for r in rows:
        train_dir = os.path.join(study.dir, study.run_name(r["model"], r["setting"], float(r["lr"])), "train")
        for rec in ss.read_jsonl(os.path.join(train_dir, "log.jsonl")):
            if rec.get("type") == "spike":
                cands.append(dict(model=r["model"], setting=r["setting"], lr=r["lr"], steps=r["steps"],
                                  run_diverged=r["diverged"], run_val_loss=r.get("val_loss"), step=rec["step"],
                                  loss=rec.get("loss"), loss_z=rec.get("loss_z"), grad_norm=rec.get("grad_norm"),
                                  norm_z=rec.get("norm_z"), train_dir=train_dir))
    # runs that recovered: the strongest spike first; diverged runs: the first spike (the onset)
    cands.sort(key=lambda c: (c["run_diverged"], c["step"] if c["run_diverged"] else -(c["loss_z"] or 0)))
    return cands


def choose_spikes(cands, max_spikes):
    """The first candidate of each run (the strongest spike, or a diverged run's onset), runs that did not diverge
    first, taking turns between (model, optimizer)
    pairs so that both optimizers and both sizes get explained; a run that is bit for bit another (QK-Clip never
    fired: the same optimizer, lr and final loss), or whose spike is another's (same step and loss: the runs parted
    after it), counts once."""
    firsts, seen_run, seen_same = [], set(), set()
    for c in cands:  # cands: non-diverged first, then by loss z
        run = (c["model"], c["setting"], c["lr"])
        same = (c["model"], SETTINGS[c["setting"]][1], c["lr"], c["run_val_loss"])
        event = (c["model"], SETTINGS[c["setting"]][1], c["lr"], c["step"], c["loss"])
        if run in seen_run or same in seen_same or event in seen_same:
            continue
        seen_run.add(run)
        seen_same.update((same, event))
        firsts.append(c)
    chosen, pairs = [], set()
    for diverged in (False, True):  # spikes that the run recovered from first; divergence onsets if slots remain
        for pass_ in (0, 1):        # one per (model, optimizer), then the rest in order
            for c in firsts:
                pair = (c["model"], SETTINGS[c["setting"]][1], diverged)
                if c["run_diverged"] != diverged or c in chosen or (pass_ == 0 and pair in pairs):
                    continue
                pairs.add(pair)
                chosen.append(c)
                if len(chosen) >= max_spikes:
                    return chosen
    return chosen


def nearby_spikes(train_dir, step, within=5):
    return [rec["step"] for rec in ss.read_jsonl(os.path.join(train_dir, "log.jsonl"))
            if rec.get("type") == "spike" and abs(rec["step"] - step) <= within]


def run_plain(argv, log_path):
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "passive"))
    with open(log_path, "w") as out:
        return subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode


def explain_spike(study, c, rows, out_dir, lookback):
    """Replays the run up to a few steps past the spike, ranks what moved first, and reads the counterfactuals."""
    m, s, lr, S = c["model"], c["setting"], float(c["lr"]), c["step"]
    cfg = study.run_config(m, s, lr)
    train_dir = c["train_dir"]
    end = min(S + 5, cfg["steps"])
    replay = os.path.join(train_dir, "replay_0_%d.jsonl" % end)
    if not os.path.exists(replay):
        argv = [x for x in study.trainer_argv(cfg, train_dir) if x != "--overwrite"] + ["--replay", "0:%d" % end]
        log("  replay %s steps 1..%d" % (study.run_name(m, s, lr), end))
        rc = run_plain(argv, os.path.join(os.path.dirname(train_dir), "replay_0_%d.log" % end))
        if rc != 0:
            sys.exit("error: the replay of %s failed (exit %d); see %s" % (train_dir, rc, os.path.dirname(train_dir)))
    recs = [r for r in ss.read_jsonl(replay) if r.get("type") == "step"]
    logged = {r["step"]: r.get("loss") for r in ss.read_jsonl(os.path.join(train_dir, "log.jsonl"))
              if r.get("type") == "step"}
    same = [abs((r.get("loss") or 0) - (logged.get(r["step"]) or 0)) for r in recs if r["step"] in logged]
    series = replay_series(recs)
    movers = first_movers(series, S, lookback)
    # counterfactuals: part 1 already trained the same seed and data with the other settings and at lr/2
    cf = []
    for s2 in SETTINGS:
        if s2 == s or SETTINGS[s2][1] != SETTINGS[s][1]:
            continue
        r2 = next((r for r in rows if r["model"] == m and r["setting"] == s2 and float(r["lr"]) == lr), None)
        if r2:
            d2 = os.path.join(study.dir, study.run_name(m, s2, lr), "train")
            cf.append(dict(change="%s instead" % SETTINGS[s2][0], val_loss=r2.get("val_loss"), diverged=r2["diverged"],
                           spikes_near=nearby_spikes(d2, S), n_spikes=r2.get("n_spikes", 0)))
    half = float(ss.lr_str(lr / 2))
    r2 = next((r for r in rows if r["model"] == m and r["setting"] == s and float(r["lr"]) == half), None)
    if r2:
        d2 = os.path.join(study.dir, study.run_name(m, s, half), "train")
        cf.append(dict(change="half the lr (%s)" % ss.lr_str(half), val_loss=r2.get("val_loss"),
                       diverged=r2["diverged"], spikes_near=nearby_spikes(d2, S), n_spikes=r2.get("n_spikes", 0)))
    # --skip-spikes: a new run of the same settings; it may stop early (spikes skipped in a row count toward
    # --max-bad-steps: a loss that stays at spike level is not one bad batch)
    skip_run = os.path.join(study.dir, study.run_name(m, s, lr) + "-skipspikes")
    skip_dir = os.path.join(skip_run, "train")
    done = os.path.join(skip_run, "result.json")
    if not os.path.exists(done):
        os.makedirs(skip_dir, exist_ok=True)
        argv = study.trainer_argv(cfg, skip_dir) + ["--skip-spikes"]
        log("  --skip-spikes run of %s" % study.run_name(m, s, lr))
        rc = run_plain(argv, os.path.join(skip_run, "stdout.log"))
        with open(os.path.join(skip_run, "stdout.log"), errors="replace") as fh:
            err = next((l.strip() for l in reversed(fh.readlines()) if l.startswith("error")), "")
        if rc != 0 and "skipped as spikes" not in err and "non-finite" not in err:
            sys.exit("error: the --skip-spikes run of %s failed (exit %d): %s" % (study.run_name(m, s, lr), rc, err))
        val = study.finished(skip_dir, cfg["steps"])
        ss.write_json(done, dict(returncode=rc, error=err, val_loss=val.get("val_loss") if val else None))
    with open(done) as fh:
        sk = json.load(fh)
    skipped = [rec["step"] for rec in ss.read_jsonl(os.path.join(skip_dir, "log.jsonl"))
               if rec.get("type") == "spike" and rec.get("action") == "skipped"]
    vl = sk.get("val_loss")
    cf.append(dict(change="--skip-spikes", val_loss=vl if vl is not None else float("nan"), diverged=None,
                   spikes_near=[x for x in skipped if abs(x - S) <= 5], n_spikes=len(skipped),
                   note=sk["error"][len("error: "):] if sk.get("error") else ""))
    fig = "spike_%s_s%d.png" % (study.run_name(m, s, lr), S)
    plot_spike(os.path.join(out_dir, fig), c, recs, series, movers, lookback)
    return dict(c, replay=os.path.relpath(replay, ROOT), replay_max_loss_diff=max(same) if same else float("nan"),
                movers=movers, counterfactuals=cf, figure=fig)


def plot_spike(path, c, recs, series, movers, lookback):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    S = c["step"]
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(9, 6.4), sharex=True)
    st = np.array([r["step"] for r in recs])
    ax.plot(st, [r.get("ce") for r in recs], color="k", lw=1)
    ax.axvline(S, color="red", lw=0.8, ls="--")
    ax.set_ylabel("training loss")
    ax.set_title("%s %s lr %s: spike at step %d (loss z %.1f), replayed" % (c["model"], SETTINGS[c["setting"]][0],
                                                                          c["lr"], S, c["loss_z"] or float("nan")))
    top = [mv for mv in movers if mv["first_step"] is not None][:6]
    for mv in top:
        steps, v, _ = series[mv["series"]]
        z = robust_z(v)
        bx.plot(steps, np.clip(z, -60, 60), lw=1.1, label="%s (first |z|>6 at %d)" % (mv["series"], mv["first_step"]))
    bx.axhline(6, color="grey", lw=0.6, ls=":")
    bx.axhline(-6, color="grey", lw=0.6, ls=":")
    bx.axvline(S, color="red", lw=0.8, ls="--")
    bx.set_ylabel("robust z vs the previous 32 steps (clipped at 60)")
    bx.set_xlabel("step")
    bx.set_xlim(max(0, S - lookback - 30), S + 6)
    if top:
        bx.legend(fontsize=7)
    for a_ in (ax, bx):
        a_.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_spikes(study, out_dir, max_spikes, lookback):
    a = study.args
    l_cap = unigram_ce(a.train_data, a.val_data)
    rows = classify(study.results(), l_cap, a.diverge_margin)
    if not rows:
        sys.exit("error: no finished runs in %s: run `scripts/instability.py lr%s` first" % (
            study.dir, " --quick" if a.quick else ""))
    os.makedirs(out_dir, exist_ok=True)
    cands = spike_candidates(study, rows)
    write_csv(os.path.join(out_dir, "spikes.csv"), cands, ["model", "setting", "lr", "step", "loss", "loss_z",
                                                          "grad_norm", "norm_z", "run_diverged", "run_val_loss"])
    runs_with = sorted({(c["model"], c["setting"], c["lr"]) for c in cands})
    md = ["# Instability study, part 2: natural spikes (%s)" % time.strftime("%Y-%m-%d"), "",
          "Made by `scripts/instability.py spikes%s` from the runs of part 1 (`%s`; %s). "
          "%d runs, %d of them diverged; the trainer's detector (robust loss z >= 6) logged %d spikes in %d runs "
          "(spikes.csv), %d of them in runs that did not diverge." % (
              " --quick" if a.quick else "", os.path.relpath(study.dir, ROOT),
              "their trainer flags hold --inject-spike: these spikes are injected" if "--inject-spike" in a.trainer_args
              else "no --inject-spike anywhere", len(rows),
              sum(r["diverged"] for r in rows), len(cands), len(runs_with),
              len([c for c in cands if not c["run_diverged"]])), ""]
    chosen = choose_spikes(cands, max_spikes)
    for c in chosen:
        e = explain_spike(study, c, rows, out_dir, lookback)
        md += ["## %s, %s, lr %s: step %d" % (c["model"], SETTINGS[c["setting"]][0], c["lr"], c["step"]), "",
               "Loss %.4f (z %.1f), grad norm %.3f (z %.1f); the run %s (final val loss %s). Replayed from the initial "
               "weights into `%s`: the replayed losses equal the logged ones to %.2g." % (
                   c["loss"], c["loss_z"] or float("nan"), c["grad_norm"] or float("nan"), c["norm_z"] or float("nan"),
                   "diverged" if c["run_diverged"] else "recovered and finished",
                   "%.4f" % c["run_val_loss"] if c["run_val_loss"] is not None else "-", e["replay"],
                   e["replay_max_loss_diff"]), "", "![](%s)" % e["figure"], "",
               "What moved first (robust z against the previous 32 steps, |z| > 6, within %d steps before the "
               "spike; ratio: the value at the spike over its median before that):" % lookback, "",
               "| series | first step | steps before the loss | z then | z at the spike | ratio |",
               "|---|---:|---:|---:|---:|---:|"]
        for mv in e["movers"][:10]:
            f = lambda v, fmt: (fmt % v) if v is not None and isinstance(v, (int, float)) and math.isfinite(v) else "-"
            md.append("| %s | %s | %s | %s | %s | %s |" % (mv["series"], f(mv["first_step"], "%d"), f(mv["lead"], "%d"),
                                                           f(mv["z_first"], "%.1f"), f(mv["z_at_spike"], "%.1f"),
                                                           f(mv["ratio"], "%.3g")))
        md += ["", "Same seed and data, one change (part 1's runs; --skip-spikes trained here):", "",
               "| change | final val loss | diverged | spikes within 5 steps of %d | spikes in the run |" % c["step"],
               "|---|---:|---|---|---:|"]
        for x in e["counterfactuals"]:
            vl = x["val_loss"]
            md.append("| %s | %s | %s | %s | %d |" % (
                x["change"], "%.4f" % vl if vl is not None and math.isfinite(vl) else "- (stopped)",
                "-" if x["diverged"] is None else ("yes" if x["diverged"] else "no"),
                ", ".join(map(str, x["spikes_near"])) or "none", x["n_spikes"]))
        notes = [x["note"] for x in e["counterfactuals"] if x.get("note")]
        if notes:
            md += ["", "The --skip-spikes run: `%s`" % notes[0][:300]]
        md.append("")
    with open(os.path.join(out_dir, "spikes.md"), "w") as fh:
        fh.write("\n".join(md) + "\n")
    log("report: %s" % os.path.relpath(os.path.join(out_dir, "spikes.md"), ROOT))


# ---------------------------------------------------------------------------------------------------------------
# part 3: what Muon's best learning rate depends on (seeds, the two halves of the optimizer, the token budget)

def variant_name(optim, seed, scale=1.0):
    return "%s%s-s%d" % (optim, "" if scale == 1.0 else "-a%s" % ss.lr_str(scale), seed)


def parse_variant(v):
    """'muon-a0.25-s3' -> ('muon', 0.25, 3)."""
    parts = v.split("-")
    optim, scale, seed = parts[0], 1.0, None
    for x in parts[1:]:
        if x.startswith("a"):
            scale = float(x[1:])
        elif x.startswith("s"):
            seed = int(x[1:])
    if optim not in ("adamw", "muon") or seed is None:
        raise ValueError("bad variant %r" % v)
    return optim, scale, seed


class SeedStudy(LrStudy):
    """Runs named <model>-<optim>[-a<adamw-lr-scale>]-s<seed>-lr<lr>: the trainer's defaults (QK-Clip tau 100 with
    either optimizer, as in the scaling sweep) but for the seed and, under Muon, --adamw-lr-scale."""

    def run_config(self, model, variant, lr):
        optim, scale, seed = parse_variant(variant)
        cfg = ss.Sweep.run_config(self, model, optim, lr)
        cfg.update(variant=variant, seed=seed, adamw_lr_scale=scale)
        return cfg

    def trainer_argv(self, cfg, out):
        argv = ss.Sweep.trainer_argv(self, cfg, out)
        if cfg["adamw_lr_scale"] != 1.0:
            argv += ["--adamw-lr-scale", ss.lr_str(cfg["adamw_lr_scale"])]
        return argv

    def predict_raw_s(self, model, variant):
        return ss.Sweep.predict_raw_s(self, model, parse_variant(variant)[0])

    def nominal_runs(self):
        return self.pending

    def result_of(self, model, variant, lr):
        r = self.read_result(os.path.join(self.dir, self.run_name(model, variant, lr)))
        if r is not None:
            r.setdefault("variant", variant)
        return r


def run_parallel(study, tasks, jobs):
    """Runs (model, variant, lr) tasks on `jobs` workers (each a shallow copy of the study with its own child
    process); returns {task: result}. Finished runs are read, not rerun (Sweep.run)."""
    import copy
    import queue
    import threading
    study.pending = [(m, v) for m, v, lr in tasks if study.result_of(m, v, lr) is None]
    q = queue.Queue()
    for t in tasks:
        q.put(t)
    out, lock, errors = {}, threading.Lock(), []
    workers = [copy.copy(study) for _ in range(max(1, jobs))]
    for w in workers:
        w.ran = w.skipped = 0
        w.child = None
        w.save_settings = lambda: None  # written once here: two threads would race on its temporary file
    study.workers = workers
    if not study.args.dry_run and any(study.result_of(*t) is None for t in tasks):
        study.save_settings()

    def work(w):
        while not errors:
            try:
                t = q.get_nowait()
            except queue.Empty:
                return
            try:
                res = w.run(t[0], t[1], t[2], t[1])
            except SystemExit as e:  # a trainer failed twice: stop taking tasks
                errors.append(str(e))
                return
            except Exception as e:  # anything else stops the study too, loudly
                errors.append("error: %s %s: %s: %s" % (t[0], t[1], type(e).__name__, e))
                return
            with lock:
                out[t] = res
                if (t[0], t[1]) in study.pending:
                    study.pending.remove((t[0], t[1]))
                study.ran, study.skipped = study.ran + w.ran, study.skipped + w.skipped
                w.ran = w.skipped = 0

    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in workers]
    for th in threads:
        th.start()
    for th in threads:
        while th.is_alive():
            th.join(0.5)
    if errors:
        sys.exit(errors[0])
    return out


def cell_stats(results):
    """[result] of one (model, variant family, lr) cell over seeds -> (mean, standard error, n)."""
    v = np.array([r["val_loss"] for r in results if r and r.get("status") == "ok" and math.isfinite(r["val_loss"])])
    if v.size == 0:
        return float("nan"), float("nan"), 0
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")
    return float(v.mean()), se, int(v.size)


def best_with_interval(curve):
    """curve: {lr: (mean, se, n)} -> (best lr, its mean, its se, [lrs whose mean is within one SE of the best])."""
    ok = {lr: c for lr, c in curve.items() if c[2] > 0 and math.isfinite(c[0])}
    if not ok:
        return float("nan"), float("nan"), float("nan"), []
    lr_b = min(ok, key=lambda lr: ok[lr][0])
    m_b, se_b = ok[lr_b][0], ok[lr_b][1]
    tol = se_b if math.isfinite(se_b) else 0.0
    return lr_b, m_b, se_b, sorted(lr for lr, c in ok.items() if c[0] <= m_b + tol)


class MuonLr:
    """Part 3's plan and analysis on a SeedStudy."""

    def __init__(self, study, a):
        self.s, self.a = study, a
        self.seeds = list(range(1, a.seeds + 1))

    @staticmethod
    def lr_h(k):
        """The grid's lr for half-exponent k: 2^(k/2), rounded as run names print it."""
        return float(ss.lr_str(2.0 ** (k / 2.0)))

    @staticmethod
    def k_of(lr):
        return int(round(2 * math.log2(lr)))

    def ks(self, k_range):
        lo, hi = (int(x) for x in k_range.split(":"))
        return list(range(lo, hi + 1, self.a.half_steps))

    def curve(self, m, family, ks):
        """family(lr, seed) -> variant; {lr: (mean, se, n)} over the seeds."""
        return {self.lr_h(k): cell_stats([self.s.result_of(m, family(self.lr_h(k), sd), self.lr_h(k))
                                          for sd in self.seeds]) for k in ks}

    def best_k(self, m, optim, ks):
        lr = best_with_interval(self.curve(m, lambda lr, sd: variant_name(optim, sd), ks))[0]
        return self.k_of(lr) if math.isfinite(lr) else None

    def grid_stage(self, m, optim, ks):
        """Every seed at every lr, then while the best mean is at an edge one lr beyond it (<= --max-extend);
        returns the half-exponents that ran."""
        ks = list(ks)
        for ext in range(self.a.max_extend + 1):
            run_parallel(self.s, [(m, variant_name(optim, sd), self.lr_h(k)) for k in ks for sd in self.seeds],
                         self.a.jobs)
            if self.a.dry_run or ext == self.a.max_extend:
                break
            best = self.best_k(m, optim, ks)
            if best == ks[0]:
                ks.insert(0, ks[0] - self.a.half_steps)
            elif best == ks[-1]:
                ks.append(ks[-1] + self.a.half_steps)
            else:
                break
        return ks

    def halves_tasks(self, m, k_adam, k_muon):
        """(i) the Muon matrices' lr swept (every second lr of Muon's grid), the AdamW side held at AdamW's best lr
        (--adamw-lr-scale = AdamW's best / the lr); (ii) the AdamW side swept over every second lr of AdamW's grid,
        continued to twice Muon's best lr, the Muon matrices held at Muon's best lr."""
        tasks = []
        for k in self.ks(self.a.muon_k)[::2]:
            sc = float(ss.lr_str(2.0 ** ((k_adam - k) / 2.0)))
            tasks += [(m, variant_name("muon", sd, sc), self.lr_h(k)) for sd in self.seeds]
        lo_a, hi_a = (int(x) for x in self.a.adamw_k.split(":"))
        for j in range(lo_a, max(hi_a, k_muon + 2 * self.a.half_steps) + 1, 2 * self.a.half_steps):
            sc = float(ss.lr_str(2.0 ** ((j - k_muon) / 2.0)))
            tasks += [(m, variant_name("muon", sd, sc), self.lr_h(k_muon)) for sd in self.seeds]
        return tasks

    def run_all(self):
        self.s.pending = []
        for m in self.s.model_list():
            if m not in self.s.models:
                sys.exit("error: --models: unknown preset %s (./train_moe --list-models)" % m)
        log("part 3 %s: %s, %g tokens per active parameter, seeds %s, AdamW lrs 2^(k/2) k in %s, Muon k in %s, %d "
            "jobs x %d threads" % (self.s.dir, self.a.models, self.a.tokens_per_param, self.seeds, self.a.adamw_k,
                                   self.a.muon_k, self.a.jobs, self.a.threads))
        for m in self.s.model_list():
            log("%s: %d steps = %.4gM tokens" % (m, self.s.steps_for(m), self.s.steps_for(m) * self.s.tps / 1e6))
            ka = self.grid_stage(m, "adamw", self.ks(self.a.adamw_k))
            km = self.grid_stage(m, "muon", self.ks(self.a.muon_k))
            if self.a.dry_run:
                continue
            k_a = self.best_k(m, "adamw", ka)
            if k_a is not None and k_a not in km:  # Moonlight's protocol: Muon at AdamW's tuned lr, always measured
                run_parallel(self.s, [(m, variant_name("muon", sd), self.lr_h(k_a)) for sd in self.seeds], self.a.jobs)
                km = sorted(km + [k_a])
            k_m = self.best_k(m, "muon", km)
            if self.a.halves and k_a is not None and k_m is not None:
                run_parallel(self.s, self.halves_tasks(m, k_a, k_m), self.a.jobs)
        self.s.save_settings()
        log("part 3 done: %d runs trained now, %d found finished, %s" % (
            self.s.ran, self.s.skipped, ss.fmt_dur(time.time() - self.s.t_start)))

    # --- analysis

    def all_results(self):
        rows = []
        for d in sorted(glob.glob(os.path.join(self.s.dir, "*", "result.json"))):
            try:
                with open(d) as f:
                    r = json.load(f)
            except (OSError, ValueError):
                continue
            if "variant" in r:
                rows.append(r)
        return rows

    def table(self, rows, m, optim):
        """{lr: [results over seeds]} of plain runs (scale 1) of an optimizer at one size."""
        out = {}
        for r in rows:
            o, sc, sd = parse_variant(r["variant"])
            if r["model"] == m and o == optim and sc == 1.0 and sd in self.seeds:
                out.setdefault(float(r["lr"]), {})[sd] = r
        return out

    def analyse(self, rows, seeds_pick=None):
        """Per size: each optimizer's curve, best lr and its interval, and Muon at AdamW's best lr; computed on the
        seeds `seeds_pick` (a bootstrap resample, with repeats) or all."""
        pick = seeds_pick or self.seeds
        out = {}
        for m in self.s.model_list():
            info = {}
            for optim in ("adamw", "muon"):
                tab = self.table(rows, m, optim)
                curve = {lr: cell_stats([by.get(sd) for sd in pick]) for lr, by in tab.items()}
                best = best_with_interval(curve)
                flops = next((r["flops"] for by in tab.values() for r in by.values()), float("nan"))
                info[optim] = dict(curve=curve, best_lr=best[0], best_mean=best[1], best_se=best[2], within=best[3],
                                   flops=flops)
            c = info["muon"]["curve"].get(info["adamw"]["best_lr"])
            info["muon_at_adamw_lr"] = c[0] if c else float("nan")
            out[m] = info
        return out

    def ratios(self, an):
        """Compute Muon needs for AdamW's loss: the AdamW power law through every size's best mean (L = a C^b),
        inverted at Muon's loss, over Muon's compute; per size, for Muon's best lr and for Muon at AdamW's lr."""
        ms = [m for m in an if math.isfinite(an[m]["adamw"]["best_mean"]) and math.isfinite(an[m]["adamw"]["flops"])]
        if len(ms) < 2:
            return {}
        C = [an[m]["adamw"]["flops"] for m in ms]
        L = [an[m]["adamw"]["best_mean"] for m in ms]
        a, b = ss.fit_power(C, L)
        out = {}
        for m in ms:
            # Muon's compute over what AdamW's fit needs for Muon's loss (the scaling sweep's per-size ratio)
            Cm = an[m]["muon"]["flops"]
            out[m] = dict(tuned=Cm / ss.compute_for_loss(a, b, an[m]["muon"]["best_mean"]),
                          reuse=Cm / ss.compute_for_loss(a, b, an[m]["muon_at_adamw_lr"]))
        return out

    def bootstrap(self, rows, n_boot):
        """Seeds resampled with replacement (the same draw for every lr and both optimizers: a seed fixes the
        initial weights and the data order of all of them): percentiles of each best lr and compute ratio."""
        rng = np.random.default_rng(0)
        draws = {}
        for _ in range(n_boot):
            pick = list(rng.choice(self.seeds, size=len(self.seeds), replace=True))
            an = self.analyse(rows, pick)
            for m, info in an.items():
                for optim in ("adamw", "muon"):
                    draws.setdefault((m, optim, "best_lr"), []).append(info[optim]["best_lr"])
                draws.setdefault((m, "diff_best"), []).append(info["muon"]["best_mean"] - info["adamw"]["best_mean"])
            for m, r in self.ratios(an).items():
                draws.setdefault((m, "ratio_tuned"), []).append(r["tuned"])
                draws.setdefault((m, "ratio_reuse"), []).append(r["reuse"])
        pct = lambda v: tuple(float(x) for x in np.nanpercentile(np.array(v, float), [2.5, 50, 97.5]))
        return {k: pct(v) for k, v in draws.items()}, draws

    def halves(self, rows, m, an):
        """(i) Muon-side lr swept with the AdamW side at AdamW's best lr; (ii) the AdamW side swept with the Muon
        matrices at Muon's best lr (scale 1 included from the grid): {lr: (mean, se, n)} each."""
        lr_a, lr_m = an[m]["adamw"]["best_lr"], an[m]["muon"]["best_lr"]
        i_curve, ii_curve = {}, {}
        by_cell = {}
        for r in rows:
            o, sc, sd = parse_variant(r["variant"])
            if r["model"] != m or o != "muon" or sd not in self.seeds:
                continue
            lr = float(r["lr"])
            by_cell.setdefault((lr, sc), []).append(r)
        for (lr, sc), rs in by_cell.items():
            if abs(lr * sc - lr_a) <= 1e-3 * lr_a:  # the scale is rounded to 4 digits
                i_curve[lr] = cell_stats(rs)
            if lr == lr_m:
                ii_curve[MuonLr.lr_h(MuonLr.k_of(lr * sc))] = cell_stats(rs)
        return i_curve, ii_curve


def report_muon_lr(ml, out_dir):
    a = ml.a
    rows = ml.all_results()
    if not rows:
        log("no finished runs yet")
        return
    os.makedirs(out_dir, exist_ok=True)
    write_csv(os.path.join(out_dir, "results.csv"), rows,
              ["model", "variant", "optim", "seed", "adamw_lr_scale", "lr", "steps", "status", "val_loss", "flops",
               "wall_s"])
    an = ml.analyse(rows)
    boot, _ = ml.bootstrap(rows, a.bootstrap)
    ratios = ml.ratios(an)
    cells = []
    for m, info in an.items():
        for optim in ("adamw", "muon"):
            for lr, (mean, se, n) in sorted(info[optim]["curve"].items()):
                cells.append(dict(model=m, optim=optim, lr=lr, mean=mean, se=se, n=n))
    write_csv(os.path.join(out_dir, "cells.csv"), cells, ["model", "optim", "lr", "mean", "se", "n"])
    f = lambda v, fmt="%.4g": (fmt % v) if isinstance(v, (int, float)) and math.isfinite(v) else "-"
    md = ["# Instability study, part 3: what Muon's best lr depends on (%s)" % time.strftime("%Y-%m-%d"), "",
          "Made by `scripts/instability.py muon-lr %s` (`%s`): %s, seeds %s, batch %d x %d, cosine "
          "schedule, QK-Clip tau 100 (the trainer's default, as in the scaling sweep), lr grid in steps of 2^(%d/2). "
          "Mean final validation loss over the seeds +- its standard error; best lr's interval: every lr whose mean "
          "is within one standard error of the best mean; bootstrap: %d resamples of the seeds (the same draw for "
          "every lr and both optimizers), 95%% percentile intervals." % (
              ("--steps %d" % a.steps) if a.steps else "--tokens-per-param %g" % a.tokens_per_param,
              os.path.relpath(ml.s.dir, ROOT), a.models, ml.seeds, a.batch_size, a.seq_len,
              a.half_steps, a.bootstrap), ""]
    md += ["| model | optimizer | best lr | mean loss +- SE | lrs within 1 SE | best lr, bootstrap 95% | "
           "Muon at AdamW's best lr |", "|---|---|---:|---|---|---|---:|"]
    for m, info in an.items():
        for optim in ("adamw", "muon"):
            x = info[optim]
            bl = boot.get((m, optim, "best_lr"), (float("nan"),) * 3)
            md.append("| %s | %s | %s | %s +- %s | %s | %s..%s | %s |" % (
                m, optim, f(x["best_lr"]), f(x["best_mean"], "%.4f"), f(x["best_se"], "%.4f"),
                ", ".join(ss.lr_str(v) for v in x["within"]), f(bl[0]), f(bl[2]),
                f(info["muon_at_adamw_lr"], "%.4f") if optim == "muon" else ""))
    md += ["", "Muon's best lr over AdamW's: " + "; ".join(
        "%s %.2gx" % (m, info["muon"]["best_lr"] / info["adamw"]["best_lr"]) for m, info in an.items()
        if math.isfinite(info["muon"]["best_lr"] / info["adamw"]["best_lr"])) + ".", ""]
    if ratios:
        md += ["Compute Muon needs for AdamW's loss, as a fraction of AdamW's (Muon's compute over the compute at "
               "which AdamW's power law through the sizes' best means reaches Muon's mean loss; below 1: Muon needs "
               "less; bootstrap over seeds):", "",
               "| model | Muon at its best lr | 95% | Muon at AdamW's best lr | 95% |", "|---|---:|---|---:|---|"]
        for m, r in ratios.items():
            bt, br = boot.get((m, "ratio_tuned"), (float("nan"),) * 3), boot.get((m, "ratio_reuse"), (float("nan"),) * 3)
            md.append("| %s | %s | %s..%s | %s | %s..%s |" % (m, f(r["tuned"], "%.3f"), f(bt[0], "%.3f"),
                                                             f(bt[2], "%.3f"), f(r["reuse"], "%.3f"), f(br[0], "%.3f"),
                                                             f(br[2], "%.3f")))
        md.append("")
    halves_out = {}
    for m in an:
        i_c, ii_c = ml.halves(rows, m, an)
        if len(i_c) > 1 or len(ii_c) > 1:
            halves_out[m] = (i_c, ii_c)
            md += ["### %s: the two halves" % m, "",
                   "(i) Muon matrices' lr swept, AdamW side held at AdamW's best lr %s: best %s (within 1 SE: %s). "
                   "(ii) AdamW side swept, Muon matrices held at Muon's best lr %s: best %s (within 1 SE: %s)." % (
                       f(an[m]["adamw"]["best_lr"]), f(best_with_interval(i_c)[0]),
                       ", ".join(ss.lr_str(v) for v in best_with_interval(i_c)[3]), f(an[m]["muon"]["best_lr"]),
                       f(best_with_interval(ii_c)[0]), ", ".join(ss.lr_str(v) for v in best_with_interval(ii_c)[3])),
                   "", "| lr | (i) Muon-side lr: mean +- SE | (ii) AdamW-side lr: mean +- SE |", "|---:|---|---|"]
            for lr in sorted(set(i_c) | set(ii_c)):
                cell = lambda c: ("%.4f +- %.4f (%d)" % c) if c and c[2] > 0 else ""
                md.append("| %s | %s | %s |" % (ss.lr_str(lr), cell(i_c.get(lr)), cell(ii_c.get(lr))))
            md.append("")
    md += ["Every cell (mean +- SE, seeds): `cells.csv`; every run: `results.csv`.", ""]
    plot_muon_lr(os.path.join(out_dir, "muon_lr.png"), an, halves_out, a.tokens_per_param)
    md.insert(2, "![](muon_lr.png)\n")
    with open(os.path.join(out_dir, "report.md"), "w") as fh:
        fh.write("\n".join(md) + "\n")
    ss.write_json(os.path.join(out_dir, "summary.json"), dict(
        best={m: {o: dict(lr=an[m][o]["best_lr"], mean=an[m][o]["best_mean"], se=an[m][o]["best_se"],
                          within=an[m][o]["within"]) for o in ("adamw", "muon")} for m in an},
        ratios=ratios, bootstrap={"|".join(k): v for k, v in boot.items()}))
    log("report: %s" % os.path.relpath(os.path.join(out_dir, "report.md"), ROOT))


def plot_muon_lr(path, an, halves_out, tpp):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ms = list(an)
    fig, axes = plt.subplots(1, len(ms), figsize=(6 * len(ms), 4.6), squeeze=False)
    for ax, m in zip(axes[0], ms):
        for optim, color in (("adamw", "tab:blue"), ("muon", "tab:red")):
            cur = sorted(an[m][optim]["curve"].items())
            if not cur:
                continue
            lrs = [lr for lr, _ in cur]
            mean = np.array([c[0] for _, c in cur])
            se = np.array([c[1] if math.isfinite(c[1]) else 0 for _, c in cur])
            ax.errorbar(lrs, mean, yerr=se, color=color, marker="o", ms=3, capsize=3, label=optim)
            ax.axvline(an[m][optim]["best_lr"], color=color, lw=0.6, ls=":")
        if m in halves_out:
            for curve, color, label in ((halves_out[m][0], "tab:orange", "Muon-side lr (AdamW side at AdamW's best)"),
                                        (halves_out[m][1], "tab:green", "AdamW-side lr (Muon side at Muon's best)")):
                cur = sorted(curve.items())
                if len(cur) > 1:
                    ax.errorbar([lr for lr, _ in cur], [c[0] for _, c in cur],
                                yerr=[c[1] if math.isfinite(c[1]) else 0 for _, c in cur], color=color, marker="s",
                                ms=3, capsize=2, ls="--", lw=1, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("final val loss (mean +- SE over seeds)")
        ax.set_title("%s, %g tokens per active parameter" % (m, tpp))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# the command line

def add_run_flags(p):
    p.add_argument("--root", default=os.path.join(ROOT, "sweeps"), help="where the runs live [sweeps/]")
    p.add_argument("--name", help="sweep directory under --root (default: instability or instability_quick)")
    p.add_argument("--results", help="where tables and figures go (default dev/results/<name>)")
    p.add_argument("--models", help="comma-separated presets")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--total-batch", type=int, default=0)
    p.add_argument("--val-batches", type=int, default=16)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--train-data", default="data/default/train_*.bin")
    p.add_argument("--val-data", default="data/default/val_*.bin")
    p.add_argument("--tokenizer", default="/nonexistent")
    p.add_argument("--peak-gflops", type=float, default=150.0)
    p.add_argument("--trainer", default=os.path.join(ROOT, "train_moe"))
    p.add_argument("--trainer-args", default="", help="extra trainer flags for every run")
    p.add_argument("--progress-every", type=float, default=60.0)
    p.add_argument("--keep-state", action="store_true")
    p.add_argument("--retry-failed", action="store_true")
    p.add_argument("--diverge-margin", type=float, default=0.25,
                   help="diverged: final val loss above the unigram cross-entropy minus this [0.25]")


def main(argv=None):
    p = argparse.ArgumentParser(prog="instability.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="part", required=True)
    lp = sub.add_parser("lr", help="part 1: the lr grid of every setting")
    sp = sub.add_parser("spikes", help="part 2: part 1's spikes, replayed and explained (part 1's settings)")
    mp = sub.add_parser("muon-lr", help="part 3: AdamW's and Muon's best lr with seed error bars, the two halves")
    for q in (lp, sp, mp):
        add_run_flags(q)
        q.add_argument("--tokens-per-param", type=float)
        q.add_argument("--steps", type=int, default=0, help="fixed steps per run (overrides --tokens-per-param)")
        q.add_argument("--min-steps", type=int, default=20)
    for q in (lp, sp):
        q.add_argument("--quick", action="store_true", help="k2-l1 only, factor-4 grid, 2 tokens per parameter")
        q.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated, of: " + ", ".join(SETTINGS))
        q.add_argument("--k-min", type=int, help="lowest lr = 2^k-min")
        q.add_argument("--k-max", type=int, help="highest lr = 2^k-max")
        q.add_argument("--k-step", type=int, help="grid spacing in powers of 2")
    for q in (lp, mp):
        q.add_argument("--dry-run", action="store_true")
        q.add_argument("--report-only", action="store_true")
    sp.add_argument("--max-spikes", type=int, default=5, help="spikes to replay and explain (one per run) [5]")
    sp.add_argument("--lookback", type=int, default=30, help="steps before a spike searched for what moved [30]")
    mp.add_argument("--quick", action="store_true", help="k2-l1, 2 tokens per parameter, 3 lrs per optimizer")
    mp.add_argument("--seeds", type=int, default=3, help="seeds 1..N per point [3]")
    mp.add_argument("--adamw-k", help="AdamW's lrs 2^(k/2) for k in LO:HI [-17:-11, i.e. 0.0028..0.022]")
    mp.add_argument("--muon-k", help="Muon's lrs 2^(k/2) for k in LO:HI [-13:-7, i.e. 0.011..0.088]")
    mp.add_argument("--half-steps", type=int, help="grid spacing in half powers of 2 [1: sqrt(2)]")
    mp.add_argument("--max-extend", type=int, default=1, help="lrs added beyond a grid edge holding the best mean [1]")
    mp.add_argument("--no-halves", dest="halves", action="store_false",
                    help="skip the sweeps of one half of the optimizer with the other held")
    mp.add_argument("--jobs", type=int, default=2, help="runs at once (each with --threads) [2]")
    mp.add_argument("--bootstrap", type=int, default=2000, help="seed resamples [2000]")
    a = p.parse_args(argv)

    if a.part == "muon-lr":
        return main_muon_lr(a)
    mode = "quick" if a.quick else "default"
    for k, v in PARTS[mode].items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)
    bad = [s for s in a.settings.split(",") if s.strip() and s.strip() not in SETTINGS]
    if bad:
        sys.exit("error: --settings: unknown %s (known: %s)" % (", ".join(bad), ", ".join(SETTINGS)))
    if a.k_step < 1 or a.k_max < a.k_min:
        sys.exit("error: --k-min <= --k-max and --k-step >= 1")
    check_inputs(a)
    # what Sweep reads but this study does not vary
    a.lr_center, a.lr_factor, a.grid, a.max_extend, a.bootstrap = 1.0, 2.0, 1, 0, 0
    out_dir = a.results or os.path.join(ROOT, "dev", "results", a.name)

    study = LrStudy(a)
    os.makedirs(study.dir, exist_ok=True)
    keys = ["models", "settings", "tokens_per_param", "steps", "min_steps", "batch_size", "seq_len", "total_batch",
            "k_min", "k_max", "k_step", "val_batches", "seed", "train_data", "val_data", "trainer_args"]
    settings = os.path.join(study.dir, "study.json")
    if a.part == "spikes":
        a.report_only, a.dry_run = True, False
        if not os.path.exists(settings):
            sys.exit("error: %s does not exist: run `scripts/instability.py lr%s` first" % (
                settings, " --quick" if a.quick else ""))
    ss.load_or_save_settings(a, study, settings, keys)
    ss.install_signals(lambda: [study] + getattr(study, "workers", []))
    if a.part == "spikes":
        report_spikes(study, out_dir, a.max_spikes, a.lookback)
        return 0
    if not a.report_only:
        study.train_all()
        if a.dry_run:
            return 0
    report_lr(study, out_dir)
    return 0


def check_inputs(a):
    for flag, pat in (("--train-data", a.train_data), ("--val-data", a.val_data)):
        if not glob.glob(pat if os.path.isabs(pat) else os.path.join(ROOT, pat)):
            sys.exit("error: %s %s matches no file%s" % (flag, pat, " (run `make data`)" if "data/default" in pat else ""))
    if not os.access(a.trainer, os.X_OK):
        sys.exit("error: %s is not built (make train_moe)" % a.trainer)


MUON_LR = {
    "quick": dict(models="k2-l1", tokens_per_param=2.0, adamw_k="-16:-12", muon_k="-14:-10", half_steps=2),
    # 7 sqrt(2)-spaced lrs per optimizer around the best lrs of the scaling sweep and part 1 at 4 tokens per
    # parameter (AdamW 0.008 = 2^(-14/2), Muon 0.031 = 2^(-10/2)); an edge that holds the best mean adds an lr
    "default": dict(models="k2-l1,k2-l2", tokens_per_param=4.0, adamw_k="-17:-11", muon_k="-13:-7", half_steps=1),
}


def main_muon_lr(a):
    for k, v in MUON_LR["quick" if a.quick else "default"].items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)
    for flag, v in (("--adamw-k", a.adamw_k), ("--muon-k", a.muon_k)):
        try:
            lo, hi = (int(x) for x in v.split(":"))
            assert lo <= hi
        except (ValueError, AssertionError):
            sys.exit("error: %s = %r must be LO:HI (integers, LO <= HI)" % (flag, v))
    if a.seeds < 2 or a.jobs < 1 or a.half_steps < 1 or a.max_extend < 0:
        sys.exit("error: --seeds >= 2 (error bars), --jobs >= 1, --half-steps >= 1, --max-extend >= 0")
    check_inputs(a)
    if a.name is None:
        a.name = "muonlr_quick" if a.quick else "muonlr_tpp%g" % a.tokens_per_param
    if a.threads == (os.cpu_count() or 2):  # the default: the cores split between the jobs
        a.threads = max(1, a.threads // a.jobs)
    a.lr_center, a.lr_factor, a.grid, a.seed = 1.0, 2.0, 1, 0
    out_dir = a.results or os.path.join(ROOT, "dev", "results", a.name)
    study = SeedStudy(a)
    os.makedirs(study.dir, exist_ok=True)
    keys = ["models", "tokens_per_param", "steps", "min_steps", "batch_size", "seq_len", "total_batch", "seeds",
            "adamw_k", "muon_k", "half_steps", "max_extend", "halves", "val_batches", "train_data", "val_data",
            "trainer_args"]
    ss.load_or_save_settings(a, study, os.path.join(study.dir, "study.json"), keys)
    ss.install_signals(lambda: [study] + getattr(study, "workers", []))
    ml = MuonLr(study, a)
    if not a.report_only:
        ml.run_all()
        if a.dry_run:
            return 0
    report_muon_lr(ml, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
