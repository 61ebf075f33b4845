#!/usr/bin/python3
"""Instability study (issue 14): learning-rate sensitivity and the edge of stability, natural loss spikes.

    scripts/instability.py lr --quick           # part 1 in ~5 min on 2 cores: k2-l1, a factor-4 lr grid
    scripts/instability.py lr                   # part 1: k2-l1 and k2-l3, factor-2 grid 2^-11..2^1, ~70 min
    scripts/instability.py spikes               # part 2: the spikes of part 1's runs, replayed and explained
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
scored by the training tokens' frequencies) while the training loss (8-step average) had been more than the margin
lower: the model learned, then lost its context. That is what divergence looks like at this scale with gradient
clipping (the loss settles near 6.6 with attention logits past 1e5) far more often than a NaN. A run that never
got below the unigram level (too low an lr) did not learn, which is not divergence.
lr sensitivity (Wortsman's definition): the mean over the grid of min(L(lr), L_cap) - min over lr of L(lr), with
L_cap the unigram cross-entropy (a diverged run counts as L_cap): how much loss a setting gives up over the whole
lr range, so a wider stable range scores lower.

Part 2 reads part 1's runs (or --from DIR): every spike the detector logged in a run that did not diverge is a
candidate; the strongest (by loss z) of up to --max-spikes runs are replayed from the initial weights with full
telemetry (the trainer's --replay 0:S), and each telemetry series (each head's max logit, each layer's expert
load imbalance, each tensor's update RMS, the gradient norm) is scored against its own recent history: the report
says which moved first, where, and how many steps before the loss. Then the same run is trained again with one
change at a time (QK-Clip on, half the lr, --skip-spikes) and the report says whether the spike is still there.

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
import signal
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
        todo = []
        for m in self.model_list():
            for s in self.settings():
                for k in self.ks():
                    if self.read_result(os.path.join(self.dir, self.run_name(m, s, self.lr_of(k)))) is None:
                        todo.append((m, s))
        return todo

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
    step's loss; or ended within `margin` of the unigram cross-entropy after its training loss (8-step average) had
    been more than `margin` lower. A run that never got below the unigram level (too low an lr, too few steps) did
    not learn, which is not divergence."""
    for r in rows:
        vl = r.get("val_loss")
        ok = r.get("status") == "ok" and vl is not None and math.isfinite(vl)
        first, lo, last = (r.get(k, float("nan")) for k in ("train_loss_first", "train_loss_min_avg",
                                                             "train_loss_last_avg"))
        r["diverged"] = (not ok) or vl > first or (vl > l_cap - margin and last - lo > margin)
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
    """Every spike record of every part-1 run, with its run's verdict; non-diverged runs first, then by loss z."""
    cands = []
    for r in rows:
        train_dir = os.path.join(study.dir, study.run_name(r["model"], r["setting"], float(r["lr"])), "train")
        for rec in ss.read_jsonl(os.path.join(train_dir, "log.jsonl")):
            if rec.get("type") == "spike":
                cands.append(dict(model=r["model"], setting=r["setting"], lr=r["lr"], steps=r["steps"],
                                  run_diverged=r["diverged"], run_val_loss=r.get("val_loss"), step=rec["step"],
                                  loss=rec.get("loss"), loss_z=rec.get("loss_z"), grad_norm=rec.get("grad_norm"),
                                  norm_z=rec.get("norm_z"), train_dir=train_dir))
    cands.sort(key=lambda c: (c["run_diverged"], -(c["loss_z"] or 0)))
    return cands


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
    # --skip-spikes: a new run of the same settings
    skip_dir = os.path.join(study.dir, study.run_name(m, s, lr) + "-skipspikes", "train")
    if study.finished(skip_dir, cfg["steps"]) is None:
        os.makedirs(skip_dir, exist_ok=True)
        argv = study.trainer_argv(cfg, skip_dir) + ["--skip-spikes"]
        log("  --skip-spikes run of %s" % study.run_name(m, s, lr))
        rc = run_plain(argv, os.path.join(os.path.dirname(skip_dir), "stdout.log"))
        if rc != 0:
            log("  (the --skip-spikes run exited %d)" % rc)
    val = study.finished(skip_dir, cfg["steps"])
    skipped = [rec["step"] for rec in ss.read_jsonl(os.path.join(skip_dir, "log.jsonl"))
               if rec.get("type") == "spike" and rec.get("action") == "skipped"]
    cf.append(dict(change="--skip-spikes", val_loss=val.get("val_loss") if val else float("nan"), diverged=None,
                   spikes_near=[x for x in skipped if abs(x - S) <= 5], n_spikes=len(skipped)))
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
    chosen, seen = [], set()
    for c in cands:  # the strongest spike of each run, non-diverged runs first
        key = (c["model"], c["setting"], c["lr"])
        if key in seen:
            continue
        seen.add(key)
        chosen.append(c)
        if len(chosen) >= max_spikes:
            break
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
                x["change"], "%.4f" % vl if vl is not None and math.isfinite(vl) else "-",
                "-" if x["diverged"] is None else ("yes" if x["diverged"] else "no"),
                ", ".join(map(str, x["spikes_near"])) or "none", x["n_spikes"]))
        md.append("")
    with open(os.path.join(out_dir, "spikes.md"), "w") as fh:
        fh.write("\n".join(md) + "\n")
    log("report: %s" % os.path.relpath(os.path.join(out_dir, "spikes.md"), ROOT))


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
    for q in (lp, sp):
        add_run_flags(q)
        q.add_argument("--quick", action="store_true", help="k2-l1 only, factor-4 grid, 2 tokens per parameter")
        q.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated, of: " + ", ".join(SETTINGS))
        q.add_argument("--tokens-per-param", type=float)
        q.add_argument("--steps", type=int, default=0, help="fixed steps per run (overrides --tokens-per-param)")
        q.add_argument("--min-steps", type=int, default=20)
        q.add_argument("--k-min", type=int, help="lowest lr = 2^k-min")
        q.add_argument("--k-max", type=int, help="highest lr = 2^k-max")
        q.add_argument("--k-step", type=int, help="grid spacing in powers of 2")
    lp.add_argument("--dry-run", action="store_true")
    lp.add_argument("--report-only", action="store_true")
    sp.add_argument("--max-spikes", type=int, default=3, help="spikes to replay and explain (one per run) [3]")
    sp.add_argument("--lookback", type=int, default=30, help="steps before a spike searched for what moved [30]")
    a = p.parse_args(argv)

    mode = "quick" if a.quick else "default"
    for k, v in PARTS[mode].items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)
    bad = [s for s in a.settings.split(",") if s.strip() and s.strip() not in SETTINGS]
    if bad:
        sys.exit("error: --settings: unknown %s (known: %s)" % (", ".join(bad), ", ".join(SETTINGS)))
    if a.k_step < 1 or a.k_max < a.k_min:
        sys.exit("error: --k-min <= --k-max and --k-step >= 1")
    for flag, pat in (("--train-data", a.train_data), ("--val-data", a.val_data)):
        if not glob.glob(pat if os.path.isabs(pat) else os.path.join(ROOT, pat)):
            sys.exit("error: %s %s matches no file%s" % (flag, pat, " (run `make data`)" if "data/default" in pat else ""))
    if not os.access(a.trainer, os.X_OK):
        sys.exit("error: %s is not built (make train_moe)" % a.trainer)
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
    if a.report_only and os.path.exists(settings):
        with open(settings) as f:
            saved = json.load(f)
        for k in keys:
            if k in saved:
                setattr(a, k, saved[k])
        study.tps = a.total_batch or a.batch_size * a.seq_len
    elif not a.report_only and not a.dry_run:
        study.save_settings = lambda: ss.write_json(settings, {k: getattr(a, k) for k in keys})

    def on_signal(signum, frame):
        if study.child is not None and study.child.poll() is None:
            study.child.terminate()
            try:
                study.child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                study.child.kill()
        log("interrupted: finished runs are kept; run the same command again to continue")
        sys.exit(130)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    if a.part == "spikes":
        report_spikes(study, out_dir, a.max_spikes, a.lookback)
        return 0
    if not a.report_only:
        study.train_all()
        if a.dry_run:
            return 0
    report_lr(study, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
