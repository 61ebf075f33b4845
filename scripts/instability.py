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
    add_run_flags(lp)
    lp.add_argument("--quick", action="store_true", help="k2-l1 only, factor-4 grid, 2 tokens per parameter")
    lp.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated, of: " + ", ".join(SETTINGS))
    lp.add_argument("--tokens-per-param", type=float)
    lp.add_argument("--steps", type=int, default=0, help="fixed steps per run (overrides --tokens-per-param)")
    lp.add_argument("--min-steps", type=int, default=20)
    lp.add_argument("--k-min", type=int, help="lowest lr = 2^k-min")
    lp.add_argument("--k-max", type=int, help="highest lr = 2^k-max")
    lp.add_argument("--k-step", type=int, help="grid spacing in powers of 2")
    lp.add_argument("--dry-run", action="store_true")
    lp.add_argument("--report-only", action="store_true")
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

    if not a.report_only:
        study.train_all()
        if a.dry_run:
            return 0
    report_lr(study, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
