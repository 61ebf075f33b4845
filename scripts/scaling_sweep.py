#!/usr/bin/python3
"""Scaling-law sweep: AdamW vs Muon over the k2-l1..k2-l5 ladder, resumable, with fits and SVD entropy.

    scripts/scaling_sweep.py --quick              # ~15 min on 2 cores: 1 token per active parameter
    scripts/scaling_sweep.py                      # the default ladder, ~40-50 min on 2 cores: 4 tokens per active param
    scripts/scaling_sweep.py --report-only        # fits, CSV, plots and report from the runs finished so far
    scripts/scaling_sweep.py --dry-run            # the plan and the estimated time, nothing is run

Protocol (per model size, smallest first; every run is a full-length run at the size's token budget):
  1. AdamW: learning rates on a factor-2 grid (--lr-factor) around a centre, 3 points (--grid); while the best is
     at an edge of the grid, one more point beyond it (at most --max-extend). The centre is --lr-center for the
     first size and the previous size's best AdamW lr after that. AdamW's loss at this size = the best of its grid.
  2. Muon, the same grid rule, centred on AdamW's best lr for the first size and on the previous size's best
     Muon lr after that, plus always a run at this size's best AdamW lr: Moonlight's protocol (Muon reusing
     AdamW's tuned lr and weight decay unchanged, which the update-RMS matching is meant to allow). The best of
     the Muon runs is Muon with its own lr sweep.
Token budget: --tokens-per-param x active parameters per token (Chinchilla's rule is ~20; the CPU ladders use
fewer so that both optimizers' sweeps fit the time budget; see the ladder table in --help's epilog).
Compute: C = flops_per_token (the log's config record) x tokens seen by the final validation (tokens_at_val =
its step x tokens per step). The trainer validates the final weights after the last update (step = steps); builds
before commit 5eda008 validated the last step before its update (step = steps-1), and both are accepted.

Results: sweeps/<name>/<model>-<optim>-lr<lr>/ holds run.json (the settings), stdout.log, train/ (the trainer's
--out: log.jsonl, model_<steps>.bin, DONE_<steps>) and result.json (final val loss, FLOPs, SVD entropies). A run
is finished when train/DONE_<steps> exists and log.jsonl ends with the final val record; a second invocation
skips finished runs and restarts unfinished ones from scratch (--overwrite). A run that failed (e.g. diverged:
the trainer stops after 5 non-finite steps) is recorded as failed and not retried unless --retry-failed; any
other trainer failure is retried once, then stops the sweep (rerun the command to continue).
sweeps/<name>/ gets results.csv (one row per run), series.csv (the points that are fitted), fits.json,
entropy.csv, report.md, scaling.png (loss vs FLOPs, log-log, with the fits) and lr_sweep.png.

Fits: L(C) = a C^b (least squares in log-log), C in PFLOP/s-days (1 PF-day = 8.64e19 FLOP), as Moonlight
(Muon L = 2.506 C^-0.052, AdamW L = 2.608 C^-0.054); and, with >= 4 points, L = E + a C^b (E profiled on a grid).
Compute ratio: the compute Muon needs to reach the loss AdamW's fit reaches at C_ref (the geometric mean of the
AdamW points' C), C_muon / C_ref, with a 95% residual-bootstrap interval (both fits refitted on resampled
log-residuals; Moonlight: ~0.52). Per size, the same ratio read off the AdamW fit at each Muon point.

SVD entropy (REFERENCE.md section 2): H = -(1/log n) sum_i p_i log p_i, p_i = s_i^2 / sum_j s_j^2, n = number of
singular values, for every weight matrix of the final model (each routed/shared expert's W1, W3, W2 and the dense
W1, W3 separately), grouped as attention, experts, router, dense/shared FFN, embedding/head.
"""

import argparse
import csv
import glob
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PF_DAY = 1e15 * 86400.0  # FLOPs in one PFLOP/s-day

# AdamW throughput on the project's 2-core box, 2 threads, batch 8 x 256, and Muon's step time relative to AdamW's:
# k2-l1, k2-l3 and k2-nano measured on a quiet machine after the CPU work of issue 15 (dev/results/
# cpu_speed_2026-12-02.md, ladder_speed.sh: 74.6k / 35.6k / 14.1k tok/s, Muon 1.07 / 1.19 / 1.62x the step), taken
# ~10% lower for validation and start-up; k2-l2, k2-l4 and k2-l5 interpolated. Only used for the time estimates;
# the measured times of finished runs recalibrate them.
TOK_S = {"k2-l1": 67000, "k2-l2": 48000, "k2-l3": 32000, "k2-l4": 26000, "k2-l5": 21000, "k2-nano": 12700}
MUON_SLOWDOWN = {"k2-l1": 1.07, "k2-l2": 1.12, "k2-l3": 1.19, "k2-l4": 1.22, "k2-l5": 1.27, "k2-nano": 1.62}
RUN_OVERHEAD_S = 2.0  # start-up, checkpoint, SVD entropy

LADDERS = {
    # name: settings; every one can be overridden by the flag of the same name
    "quick": dict(models="k2-l1,k2-l2,k2-l3,k2-l4,k2-l5", tokens_per_param=1.0, max_extend=0),
    "default": dict(models="k2-l1,k2-l2,k2-l3,k2-l4,k2-l5", tokens_per_param=4.0, max_extend=1),
    # one GPU (--device cuda) on llm.c's GPT-2-token FineWeb shards (vocab 50304): k2-g1..k2-g5, 16M..90M active
    # parameters, Chinchilla's 20 tokens per active parameter
    "gpu": dict(models="k2-g1,k2-g2,k2-g3,k2-g4,k2-g5", tokens_per_param=20.0, max_extend=1),
}

# run settings added after the first sweeps: their value in a run.json that predates them
ADDED_KEYS = {"device": "cpu"}

GROUPS = ["attention", "experts", "router", "dense_shared_ffn", "embed_head"]


# ---------------------------------------------------------------------------------------------------------------
# small helpers

_log_lock = threading.Lock()


def log(msg):
    # one line at a time: scripts/instability.py runs several trainers from threads, and two print() calls could
    # interleave their text and newlines
    with _log_lock:
        sys.stdout.write(msg + "\n")
        sys.stdout.flush()


def fmt_dur(s):
    s = max(0, int(round(s)))
    if s >= 3600:
        return "%dh%02dm" % (s // 3600, (s % 3600) // 60)
    return "%dm%02ds" % (s // 60, s % 60)


def lr_str(lr):
    return "%.4g" % lr


def read_jsonl(path):
    recs = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    recs.append(json.loads(line))
                except ValueError:
                    pass  # a line being written
    except OSError:
        pass
    return recs


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def list_models(trainer):
    """Preset name -> (active params, total params, MFLOP per token) from ./train_moe --list-models."""
    out = subprocess.run([trainer, "--list-models"], capture_output=True, text=True, check=True).stdout
    models, name = {}, None
    for line in out.splitlines():
        m = re.match(r"model (\S+):", line)
        if m:
            name = m.group(1)
        m = re.search(r"parameters: ([0-9.]+)M total, ([0-9.]+)M active per token; training FLOPs per token "
                      r"([0-9.]+) MFLOP", line)
        if m and name:
            models[name] = dict(total=float(m.group(1)) * 1e6, active=float(m.group(2)) * 1e6,
                                mflop=float(m.group(3)))
    return models


# ---------------------------------------------------------------------------------------------------------------
# model files and SVD entropy

def trainer_layout(argv):
    """The model file layout of the trainer run `argv` (the trainer and its flags: --model, --seq-len, ...): the JSON
    of `argv --print-layout`, the trainer's own account of the file's header slots and its parameter tensors."""
    out = subprocess.run(list(argv) + ["--print-layout"], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError("%s --print-layout: %s" % (argv[0], out.stderr.strip() or "exit %d" % out.returncode))
    return json.loads(out.stdout)


def read_model(path, layout):
    """(config dict, {tensor name: array}, router_bias) from a model_<step>.bin checkpoint, carved by `layout`
    (trainer_layout of the run that wrote it); a file of another model or size is refused."""
    hd = layout["header"]
    ints = hd["ints"]
    raw = np.fromfile(path, dtype="<f4")
    if raw.size < ints:
        raise ValueError("%s: %d floats, shorter than the %d-int header" % (path, raw.size, ints))
    h = raw[:ints].view("<i4")
    if int(h[0]) != hd["magic"]:
        raise ValueError("%s: magic %d, not a model file (%d)" % (path, int(h[0]), hd["magic"]))
    cfg = {k: int(h[slot]) for k, slot in hd["config_slots"].items()}
    cfg["step"] = int(h[hd["step_slot"]])
    lo, hi = hd["num_params_slots"]
    n = int(h[lo]) | (int(h[hi]) << 31)
    for k, v in layout["config"].items():
        if cfg[k] != v:
            raise ValueError("%s: the header has %s %d, the layout of %s %d" % (path, k, cfg[k], layout["model"], v))
    if n != layout["num_params"]:
        raise ValueError("%s: header says %d parameters, the trainer's layout of its config has %d"
                         % (path, n, layout["num_params"]))
    nb = layout["router_bias"]
    if raw.size != ints + n + nb:
        raise ValueError("%s: %d floats, expected %d + %d params + %d router bias" % (path, raw.size, ints, n, nb))
    params = {}
    for t in layout["tensors"]:
        off = ints + t["offset"]
        params[t["name"]] = raw[off:off + t["numel"]].reshape(t["shape"])
    return cfg, params, raw[ints + n:ints + n + nb]


def svd_entropy(mats):
    """Normalised SVD entropy of each matrix of a stack (..., rows, cols); 0 for a zero matrix."""
    mats = np.asarray(mats, dtype=np.float64)
    s = np.linalg.svd(mats, compute_uv=False)
    n = s.shape[-1]
    s2 = s * s
    tot = s2.sum(axis=-1, keepdims=True)
    p = np.divide(s2, tot, out=np.zeros_like(s2), where=tot > 0)
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    if n < 2:
        return np.zeros(s.shape[:-1])
    return -plogp.sum(axis=-1) / math.log(n)


def model_entropies(path, layout):
    """{group: {matrix kind: [entropies]}} for every weight matrix of a model file (read with `layout`)."""
    cfg, p, _ = read_model(path, layout)
    fd, f = cfg["dense_hidden"], cfg["moe_hidden"]
    out = {g: {} for g in GROUPS}
    for name in ["wdq", "wuq", "wdkv", "wukv", "wo"]:
        out["attention"][name] = svd_entropy(p[name]).tolist()
    if cfg["n_dense_layers"] > 0:
        out["dense_shared_ffn"]["dense_w1"] = svd_entropy(p["dense_w13"][:, :fd, :]).tolist()
        out["dense_shared_ffn"]["dense_w3"] = svd_entropy(p["dense_w13"][:, fd:, :]).tolist()
        out["dense_shared_ffn"]["dense_w2"] = svd_entropy(p["dense_w2"]).tolist()
    if cfg["n_layers"] > cfg["n_dense_layers"]:
        out["dense_shared_ffn"]["shared_w1"] = svd_entropy(p["shared_w13"][:, :f, :]).tolist()
        out["dense_shared_ffn"]["shared_w3"] = svd_entropy(p["shared_w13"][:, f:, :]).tolist()
        out["dense_shared_ffn"]["shared_w2"] = svd_entropy(p["shared_w2"]).tolist()
        out["router"]["router"] = svd_entropy(p["router"]).tolist()
        # every routed expert's W1, W3, W2 separately: (Lm, E) stacks, flattened layer-major
        out["experts"]["expert_w1"] = svd_entropy(p["expert_w13"][:, :, :f, :]).ravel().tolist()
        out["experts"]["expert_w3"] = svd_entropy(p["expert_w13"][:, :, f:, :]).ravel().tolist()
        out["experts"]["expert_w2"] = svd_entropy(p["expert_w2"]).ravel().tolist()
    out["embed_head"]["wte"] = svd_entropy(p["wte"][None])[:1].tolist()
    out["embed_head"]["lm_head"] = svd_entropy(p["lm_head"][None])[:1].tolist()
    return out


def group_values(ent, group):
    vals = []
    for kind in sorted(ent.get(group, {})):
        vals.extend(ent[group][kind])
    return np.array(vals, dtype=np.float64)


# ---------------------------------------------------------------------------------------------------------------
# fits

def fit_power(C, L):
    """L = a C^b by least squares on log L vs log C: (a, b)."""
    x, y = np.log(np.asarray(C, float)), np.log(np.asarray(L, float))
    b, loga = np.polyfit(x, y, 1)
    return float(math.exp(loga)), float(b)


def fit_power_irreducible(C, L, n_grid=2000):
    """L = E + a C^b, E profiled on a grid in [0, min L): (E, a, b, sse) minimising the squared error in L."""
    C, L = np.asarray(C, float), np.asarray(L, float)
    best = None
    for E in np.linspace(0.0, L.min() * (1 - 1e-6), n_grid):
        a, b = fit_power(C, L - E)
        sse = float(((E + a * C ** b - L) ** 2).sum())
        if best is None or sse < best[3]:
            best = (float(E), a, b, sse)
    return best


def compute_for_loss(a, b, L):
    """C at which a C^b = L."""
    return (L / a) ** (1.0 / b)


def compute_ratio(fit_adam, fit_muon, C_ref):
    """Compute Muon needs to reach AdamW's fitted loss at C_ref, as a fraction of C_ref."""
    L_ref = fit_adam[0] * C_ref ** fit_adam[1]
    return compute_for_loss(fit_muon[0], fit_muon[1], L_ref) / C_ref


def bootstrap_ratio(Ca, La, Cm, Lm, C_ref, n_boot=2000, seed=0):
    """Residual bootstrap of compute_ratio: each series' log-residuals (scaled by sqrt(n/(n-2))) are resampled
    with replacement onto its fitted line and both are refitted. Returns (2.5%, 50%, 97.5%) percentiles."""
    rng = np.random.default_rng(seed)
    series = []
    for C, L in ((Ca, La), (Cm, Lm)):
        C, L = np.asarray(C, float), np.asarray(L, float)
        a, b = fit_power(C, L)
        pred = np.log(a) + b * np.log(C)
        res = np.log(L) - pred
        n = len(C)
        res = res * math.sqrt(n / max(1, n - 2))
        series.append((C, pred, res))
    ratios = []
    for _ in range(n_boot):
        fits = []
        for C, pred, res in series:
            y = pred + rng.choice(res, size=len(res), replace=True)
            fits.append(fit_power(C, np.exp(y)))
        r = compute_ratio(fits[0], fits[1], C_ref)
        if np.isfinite(r):
            ratios.append(r)
    if not ratios:
        return (float("nan"),) * 3
    return tuple(float(v) for v in np.percentile(ratios, [2.5, 50, 97.5]))


# ---------------------------------------------------------------------------------------------------------------
# runs

class Sweep:
    def __init__(self, args):
        self.args = args
        self.dir = os.path.join(args.root, args.name)
        self.models = list_models(args.trainer)
        self.tps = args.total_batch or args.batch_size * args.seq_len  # tokens per optimizer step
        self.ran = 0          # runs trained by this invocation
        self.skipped = 0      # finished runs found on disk
        self.t_start = time.time()
        self.calib = {}       # optim -> [measured / predicted wall time] of runs trained here
        self.child = None
        self.save_settings = lambda: None  # main() sets it: writes sweeps/<name>/sweep.json
        self.entropy = True   # SVD entropies of each final model in result.json (scripts/instability.py: off)

    # --- plan

    def steps_for(self, model):
        if self.args.steps:
            return self.args.steps
        return max(self.args.min_steps, int(round(self.args.tokens_per_param * self.models[model]["active"] / self.tps)))

    def lr_of(self, k):
        return float(lr_str(self.args.lr_center * self.args.lr_factor ** k))

    def predict_raw_s(self, model, optim):
        """Wall time of one run from the benchmark throughputs (no calibration)."""
        steps = self.steps_for(model)
        mflop = self.models[model]["mflop"]
        tok_s = TOK_S.get(model, 80e9 / (mflop * 1e6))
        t_step = self.tps / tok_s
        if optim == "muon":
            t_step *= MUON_SLOWDOWN.get(model, 1.3)
        t_val = 2 * self.args.val_batches * self.args.batch_size * self.args.seq_len / tok_s / 3.0
        return steps * t_step + t_val + RUN_OVERHEAD_S

    def predict_s(self, model, optim):
        """predict_raw_s scaled by the median measured/predicted ratio of this invocation's runs (per optimizer)."""
        c = self.calib.get(optim) or self.calib.get("adamw" if optim == "muon" else "muon")
        return self.predict_raw_s(model, optim) * (float(np.median(c)) if c else 1.0)

    def nominal_runs(self):
        """(model, optim) of the runs still to do, assuming no grid extensions."""
        remaining = []
        for model in self.model_list():
            for optim in ("adamw", "muon"):
                n_done = len([1 for r in self.load_results(model, optim) if r])
                remaining += [(model, optim)] * max(0, self.args.grid - n_done)
        return remaining

    def model_list(self):
        return [m.strip() for m in self.args.models.split(",") if m.strip()]

    def eta_s(self, extra_current=0.0):
        return extra_current + sum(self.predict_s(m, o) for m, o in self.nominal_runs())

    # --- one run

    def run_name(self, model, optim, lr):
        return "%s-%s-lr%s" % (model, optim, lr_str(lr))

    def run_config(self, model, optim, lr):
        a = self.args
        steps = self.steps_for(model)
        cfg = dict(model=model, optim=optim, lr=lr_str(lr), steps=steps, batch_size=a.batch_size, seq_len=a.seq_len,
                   total_batch=self.tps, val_batches=a.val_batches, seed=a.seed, train_data=a.train_data,
                   val_data=a.val_data, trainer_args=a.trainer_args, device=a.device)
        return cfg

    def trainer_argv(self, cfg, out):
        a = self.args
        steps = cfg["steps"]
        argv = [a.trainer, "--model", cfg["model"], "--device", cfg["device"], "--optim", cfg["optim"], "--lr", cfg["lr"],
                "--steps", str(steps),
                "--batch-size", str(cfg["batch_size"]), "--seq-len", str(cfg["seq_len"]),
                "--total-batch", str(cfg["total_batch"]),
                "--val-every", str(steps), "--val-batches", str(cfg["val_batches"]),
                "--sample-every", "0", "--ckpt-every", "0", "--threads", str(a.threads), "--seed", str(cfg["seed"]),
                "--train-data", cfg["train_data"], "--val-data", cfg["val_data"], "--peak-gflops", str(a.peak_gflops),
                "--out", out, "--overwrite"]
        if a.tokenizer:
            argv += ["--tokenizer", a.tokenizer]
        argv += cfg["trainer_args"].split()
        return argv

    @staticmethod
    def finished(train_dir, steps):
        """A run is finished when DONE_<steps> exists and the log's last val record is the final one: step = steps
        (after the last update; the trainer writes it after the final checkpoint) or, from trainer builds before
        commit 5eda008, steps - 1 (the last step, before its update)."""
        if not os.path.exists(os.path.join(train_dir, "DONE_%08d" % steps)):
            return None
        vals = [r for r in read_jsonl(os.path.join(train_dir, "log.jsonl")) if r.get("type") == "val"]
        if not vals or vals[-1].get("step") not in (steps, steps - 1):
            return None
        return vals[-1]

    def summarize(self, run_dir, cfg, wall_s=None):
        """result.json of a finished run: final val loss, FLOPs, throughput, SVD entropy."""
        train_dir = os.path.join(run_dir, "train")
        recs = read_jsonl(os.path.join(train_dir, "log.jsonl"))
        conf = [r for r in recs if r.get("type") == "config"][-1]
        val = [r for r in recs if r.get("type") == "val"][-1]
        steps_recs = [r for r in recs if r.get("type") == "step"]
        steps = cfg["steps"]
        tps = int(conf["batch"]) * int(conf["seq_len"]) * int(conf["grad_accum"]) * int(conf["world"])
        tokens_at_val = val["step"] * tps
        fpt = float(conf["flops_per_token"])
        vl = val.get("val_loss")
        tok_s = [r["tok_s"] for r in steps_recs if r.get("tok_s")]
        res = dict(cfg, status="ok", val_loss=(float(vl) if vl is not None else float("nan")), val_step=val["step"],
                   tokens_per_step=tps, tokens_trained=steps * tps, tokens_at_val=tokens_at_val,
                   active_params=conf["active_params"], total_params=conf["params_global"], flops_per_token=fpt,
                   flops=fpt * tokens_at_val, pf_days=fpt * tokens_at_val / PF_DAY,
                   tok_s_median=float(np.median(tok_s)) if tok_s else None,
                   train_s=float(sum(r.get("ms", 0) for r in steps_recs) / 1e3),
                   skipped_steps=int(sum(r.get("skipped", 0) for r in steps_recs)),
                   final_train_loss=steps_recs[-1].get("ce") if steps_recs else None,
                   max_logit=steps_recs[-1].get("max_logit") if steps_recs else None)
        if wall_s is not None:
            res["wall_s"] = wall_s
        else:
            old = self.read_result(run_dir)
            if old and "wall_s" in old:
                res["wall_s"] = old["wall_s"]
        mpath = os.path.join(train_dir, "model_%08d.bin" % steps)
        if self.entropy and os.path.exists(mpath):
            ent = model_entropies(mpath, trainer_layout(self.trainer_argv(cfg, train_dir)))
            write_json(os.path.join(run_dir, "entropy.json"), ent)
            res["entropy"] = {g: float(group_values(ent, g).mean()) for g in GROUPS if group_values(ent, g).size}
        if not self.args.keep_state:
            for p in glob.glob(os.path.join(train_dir, "state_*.bin")):
                os.remove(p)
        write_json(os.path.join(run_dir, "result.json"), res)
        return res

    @staticmethod
    def read_result(run_dir):
        try:
            with open(os.path.join(run_dir, "result.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def existing(self, model, optim, lr):
        """The result of a finished (or failed) run with these settings, or None."""
        run_dir = os.path.join(self.dir, self.run_name(model, optim, lr))
        cfg = self.run_config(model, optim, lr)
        if not os.path.isdir(run_dir):
            return None
        try:
            with open(os.path.join(run_dir, "run.json")) as f:
                old = json.load(f)
        except (OSError, ValueError):
            return None
        diff = {k: (old.get(k, ADDED_KEYS.get(k)), v) for k, v in cfg.items() if old.get(k, ADDED_KEYS.get(k)) != v}
        if diff:
            sys.exit("error: %s was made with other settings (%s); use another --name or remove it" % (
                run_dir, ", ".join("%s: %r -> %r" % (k, o, n) for k, (o, n) in sorted(diff.items()))))
        res = self.read_result(run_dir)
        if res and res.get("status") == "failed" and not self.args.retry_failed:
            return res
        if self.finished(os.path.join(run_dir, "train"), cfg["steps"]) is None:
            return None
        if res and res.get("status") == "ok":
            return res
        return self.summarize(run_dir, cfg)

    def run(self, model, optim, lr, label):
        res = self.existing(model, optim, lr)
        name = self.run_name(model, optim, lr)
        if res is not None:
            self.skipped += 1
            log("  [done] %-28s %s  val loss %s" % (name, label, "%.4f" % res["val_loss"] if res["status"] == "ok"
                                                     else "failed (%s)" % res.get("error", "")))
            return res
        if self.args.dry_run:
            log("  [plan] %-28s %s  %d steps x %d tokens; ~%s" % (name, label, self.steps_for(model), self.tps,
                                                                fmt_dur(self.predict_s(model, optim))))
            return None
        run_dir = os.path.join(self.dir, name)
        os.makedirs(run_dir, exist_ok=True)
        self.save_settings()
        cfg = self.run_config(model, optim, lr)
        write_json(os.path.join(run_dir, "run.json"), cfg)
        train_dir = os.path.join(run_dir, "train")
        argv = self.trainer_argv(cfg, train_dir)
        with open(os.path.join(run_dir, "cmd.txt"), "w") as f:
            f.write(" ".join("'%s'" % x if (" " in x or "*" in x or not x) else x for x in argv) + "\n")
        pred = self.predict_s(model, optim)
        elapsed = time.time() - self.t_start
        log("  [run]  %-28s %s  %d steps x %d tokens; ~%s (sweep: %s elapsed, ~%s left)" % (
            name, label, cfg["steps"], self.tps, fmt_dur(pred), fmt_dur(elapsed), fmt_dur(self.eta_s())))
        for attempt in (1, 2):
            rc, wall = self.train_once(argv, run_dir, train_dir, cfg, model, optim)
            if rc == 0 and self.finished(train_dir, cfg["steps"]) is not None:
                self.ran += 1
                self.calib.setdefault(optim, []).append(wall / self.predict_raw_s(model, optim))
                res = self.summarize(run_dir, cfg, wall_s=wall)
                log("         -> val loss %.4f  (%s, %.0f tok/s)" % (res["val_loss"], fmt_dur(wall),
                                                                   res["tok_s_median"] or 0))
                return res
            with open(os.path.join(run_dir, "stdout.log"), errors="replace") as f:
                tail = [l.strip() for l in f.readlines()[-8:]]
            err = next((l for l in reversed(tail) if l.startswith("error")), tail[-1] if tail else "no output")
            if "non-finite" in err:
                # diverged: a result of this lr, recorded so that the grid moves on (and not retried)
                self.ran += 1
                res = dict(cfg, status="failed", returncode=rc, error=err, val_loss=float("nan"), wall_s=wall)
                write_json(os.path.join(run_dir, "result.json"), res)
                log("         -> DIVERGED (exit %d): %s" % (rc, err))
                return res
            if attempt == 1:
                log("         -> trainer failed (exit %d): %s; retrying once in 15 s" % (rc, err))
                time.sleep(15)
        sys.exit("error: %s failed twice (exit %d): %s; see %s/stdout.log. Finished runs are kept; rerun the "
                 "same command to continue" % (name, rc, err, run_dir))

    def train_once(self, argv, run_dir, train_dir, cfg, model, optim):
        """Runs the trainer, printing progress every --progress-every seconds: (exit code, wall seconds)."""
        env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "passive"))
        t0 = time.time()
        last_print = t0
        with open(os.path.join(run_dir, "stdout.log"), "w") as out:
            try:
                self.child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            except OSError as e:
                out.write("error: cannot start %s: %s\n" % (argv[0], e))
                return 127, 0.0
            while True:
                try:
                    rc = self.child.wait(timeout=2.0)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if self.args.progress_every > 0 and time.time() - last_print >= self.args.progress_every:
                    last_print = time.time()
                    recs = [r for r in read_jsonl(os.path.join(train_dir, "log.jsonl")) if r.get("type") == "step"]
                    if recs:
                        s = recs[-1]["step"]
                        dt = time.time() - t0
                        run_left = dt / max(s, 1) * (cfg["steps"] - s)
                        log("         step %d/%d loss %.3f  run ~%s left, sweep ~%s left" % (
                            s, cfg["steps"], recs[-1].get("loss") or float("nan"), fmt_dur(run_left),
                            fmt_dur(self.eta_s(run_left) - self.predict_s(model, optim))))
            self.child = None
        return rc, time.time() - t0

    def load_results(self, model, optim):
        """Results of every finished run of (model, optim) in this sweep directory (no training)."""
        out = []
        for run_dir in sorted(glob.glob(os.path.join(self.dir, "%s-%s-lr*" % (model, optim)))):
            res = self.read_result(run_dir)
            if res is None:
                try:
                    with open(os.path.join(run_dir, "run.json")) as f:
                        cfg = json.load(f)
                except (OSError, ValueError):
                    continue
                if self.finished(os.path.join(run_dir, "train"), cfg["steps"]) is None:
                    continue
                res = self.summarize(run_dir, cfg)
            out.append(res)
        return out

    # --- lr grids

    def grid(self, model, optim, k_center, label, k_reuse=None):
        """Runs --grid lattice points around k_center (plus k_reuse, AdamW's best, for Muon), then while the best
        is at an edge of what ran, one point beyond it (at most --max-extend); returns {k: result}."""
        half = (self.args.grid - 1) // 2
        ks = list(range(k_center - half, k_center - half + self.args.grid))
        if k_reuse is not None and k_reuse not in ks:
            ks.append(k_reuse)
        done = {}
        for k in sorted(ks):
            note = " (AdamW's best lr)" if k == k_reuse else (" (centre)" if k == k_center else "")
            done[k] = self.run(model, optim, self.lr_of(k), label + note)
        for _ in range(self.args.max_extend):
            if any(r is None for r in done.values()):
                break  # dry run
            best = self.best_k(done)
            if best == min(done):
                k = min(done) - 1
            elif best == max(done):
                k = max(done) + 1
            else:
                break
            done[k] = self.run(model, optim, self.lr_of(k), label + " (edge extension)")
        return done

    @staticmethod
    def best_k(done):
        """Lattice index of the lowest finite val loss; all failed: the lowest lr (so the grid extends down)."""
        ok = {k: r["val_loss"] for k, r in done.items() if r and r.get("status") == "ok" and math.isfinite(r["val_loss"])}
        if not ok:
            return min(done)
        return min(ok, key=ok.get)

    def k_of(self, lr):
        return int(round(math.log(float(lr) / self.args.lr_center) / math.log(self.args.lr_factor)))

    def train_all(self):
        models = self.model_list()
        for m in models:
            if m not in self.models:
                sys.exit("error: --models: unknown preset %s (./train_moe --list-models)" % m)
        log("sweep %s: %s, %s, %d tokens per step, lr grid %d points x%g around %s "
            "(extend <= %d)" % (self.dir, ",".join(models), "%g tokens per active parameter" % self.args.tokens_per_param
                                if not self.args.steps else "%d steps per run" % self.args.steps, self.tps, self.args.grid,
                                self.args.lr_factor, lr_str(self.args.lr_center), self.args.max_extend))
        log("estimated time for the runs not yet done: ~%s (no grid extensions; from the CPU benchmark throughputs)"
            % fmt_dur(self.eta_s()))
        k_center = 0   # AdamW: --lr-center for the first size, then the previous size's best
        k_muon = None  # Muon: AdamW's best for the first size, then the previous size's Muon best
        for m in models:
            log("%s: %d steps = %.4gM tokens (%.3gM active params)" % (
                m, self.steps_for(m), self.steps_for(m) * self.tps / 1e6, self.models[m]["active"] / 1e6))
            adam = self.grid(m, "adamw", k_center, "AdamW sweep")
            if any(r is None for r in adam.values()):
                log("  (dry run: the Muon grid depends on AdamW's best lr, unknown yet)")
                continue
            k_adam = self.best_k(adam)
            muon = self.grid(m, "muon", k_adam if k_muon is None else k_muon, "Muon sweep", k_reuse=k_adam)
            k_center, k_muon = k_adam, self.best_k(muon)
        self.save_settings()
        log("sweep done: %d runs trained now, %d found finished, %s" % (self.ran, self.skipped,
                                                                       fmt_dur(time.time() - self.t_start)))


# ---------------------------------------------------------------------------------------------------------------
# report

def collect(sweep):
    """All results and, per model, the three fitted series' points."""
    rows, series = [], {"adamw": [], "muon_reuse": [], "muon_tuned": []}
    per_model = {}
    for m in sweep.model_list():
        adam = [r for r in sweep.load_results(m, "adamw")]
        muon = [r for r in sweep.load_results(m, "muon")]
        rows += adam + muon
        ok = lambda rs: [r for r in rs if r.get("status") == "ok" and math.isfinite(r["val_loss"])]
        if not ok(adam):
            continue
        a_best = min(ok(adam), key=lambda r: r["val_loss"])
        info = dict(adamw=a_best, muon_reuse=None, muon_tuned=None)
        reuse = [r for r in ok(muon) if r["lr"] == a_best["lr"]]
        if reuse:
            info["muon_reuse"] = reuse[0]
        if ok(muon):
            info["muon_tuned"] = min(ok(muon), key=lambda r: r["val_loss"])
        per_model[m] = info
        for k in series:
            if info[k]:
                series[k].append(info[k])
    return rows, series, per_model


def fit_all(series, n_boot, seed=0):
    fits = {}
    for k, pts in series.items():
        if len(pts) < 2:
            continue
        C = np.array([p["pf_days"] for p in pts])
        L = np.array([p["val_loss"] for p in pts])
        if len(set(C.tolist())) < 2:
            continue
        a, b = fit_power(C, L)
        pred = a * C ** b
        f = dict(n=len(pts), a=a, b=b, rmse_log=float(np.sqrt(np.mean((np.log(L) - np.log(pred)) ** 2))),
                 C_min=float(C.min()), C_max=float(C.max()))
        if len(pts) >= 4:
            E, a2, b2, sse = fit_power_irreducible(C, L)
            f["irreducible"] = dict(E=E, a=a2, b=b2, rmse=float(math.sqrt(sse / len(pts))))
        fits[k] = f
    ratios = {}
    if "adamw" in fits:
        A = series["adamw"]
        Ca = np.array([p["pf_days"] for p in A])
        La = np.array([p["val_loss"] for p in A])
        C_ref = float(np.exp(np.log(Ca).mean()))
        for k in ("muon_reuse", "muon_tuned"):
            if k not in fits:
                continue
            Cm = np.array([p["pf_days"] for p in series[k]])
            Lm = np.array([p["val_loss"] for p in series[k]])
            fa, fm = (fits["adamw"]["a"], fits["adamw"]["b"]), (fits[k]["a"], fits[k]["b"])
            if min(len(Ca), len(Cm)) >= 3:
                lo, med, hi = bootstrap_ratio(Ca, La, Cm, Lm, C_ref, n_boot=n_boot, seed=seed)
            else:  # two points fit exactly: no residuals to resample
                lo = med = hi = float("nan")
            per_size = []
            for p in series[k]:
                # AdamW compute (from its fit) that reaches this Muon point's loss
                Ca_eq = compute_for_loss(fa[0], fa[1], p["val_loss"])
                per_size.append(dict(model=p["model"], ratio=p["pf_days"] / Ca_eq,
                                     extrapolated=bool(p["val_loss"] < La.min() or p["val_loss"] > La.max())))
            ratios[k] = dict(C_ref_pf_days=C_ref, C_ref_flops=C_ref * PF_DAY, ratio=compute_ratio(fa, fm, C_ref),
                             ratio_at_C_min=compute_ratio(fa, fm, float(Ca.min())),
                             ratio_at_C_max=compute_ratio(fa, fm, float(Ca.max())),
                             ci95=[lo, hi], boot_median=med, n_boot=n_boot, per_size=per_size)
    return fits, ratios


def write_csvs(sweep, rows, series, per_model):
    cols = ["model", "optim", "lr", "status", "val_loss", "role", "steps", "tokens_per_step", "tokens_trained",
            "tokens_at_val", "active_params", "total_params", "flops_per_token", "flops", "pf_days", "wall_s",
            "tok_s_median", "skipped_steps", "max_logit"] + ["H_" + g for g in GROUPS]
    with open(os.path.join(sweep.dir, "results.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            roles = []
            info = per_model.get(r["model"], {})
            for k in ("adamw", "muon_reuse", "muon_tuned"):
                if info.get(k) is r:
                    roles.append({"adamw": "adamw_best", "muon_reuse": "muon_at_adamw_lr",
                                  "muon_tuned": "muon_best"}[k])
            vals = []
            for c in cols:
                if c == "role":
                    vals.append("+".join(roles))
                elif c.startswith("H_"):
                    v = r.get("entropy", {}).get(c[2:])
                    vals.append("%.5f" % v if v is not None else "")
                else:
                    v = r.get(c, "")
                    vals.append("%.6g" % v if isinstance(v, float) else v)
            w.writerow(vals)
    with open(os.path.join(sweep.dir, "series.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["series", "model", "lr", "flops", "pf_days", "val_loss"])
        for k, pts in series.items():
            for p in pts:
                w.writerow([k, p["model"], p["lr"], "%.6g" % p["flops"], "%.6g" % p["pf_days"], "%.6f" % p["val_loss"]])


def entropy_tables(sweep, per_model):
    """Per model and series: mean SVD entropy per group; and the share of matrices where Muon's is higher."""
    table, share = [], {}
    pairs = {k: {g: [0, 0] for g in GROUPS} for k in ("muon_reuse", "muon_tuned")}
    for m, info in per_model.items():
        ents = {}
        for k in ("adamw", "muon_reuse", "muon_tuned"):
            r = info.get(k)
            if not r:
                continue
            path = os.path.join(sweep.dir, sweep.run_name(m, r["optim"], float(r["lr"])), "entropy.json")
            try:
                with open(path) as f:
                    ents[k] = json.load(f)
            except (OSError, ValueError):
                continue
            row = dict(model=m, series=k, lr=r["lr"])
            for g in GROUPS:
                v = group_values(ents[k], g)
                row[g] = (float(v.mean()), int(v.size)) if v.size else None
            table.append(row)
        if "adamw" in ents:
            for k in ("muon_reuse", "muon_tuned"):
                if k not in ents:
                    continue
                for g in GROUPS:
                    a, b = group_values(ents["adamw"], g), group_values(ents[k], g)
                    if a.size and a.size == b.size:
                        pairs[k][g][0] += int((b > a).sum())
                        pairs[k][g][1] += int(a.size)
    for k in pairs:
        share[k] = {g: (pairs[k][g][0] / pairs[k][g][1] if pairs[k][g][1] else None, pairs[k][g][1]) for g in GROUPS}
        tot = [sum(pairs[k][g][i] for g in GROUPS if g != "embed_head") for i in (0, 1)]
        share[k]["all_hidden"] = (tot[0] / tot[1] if tot[1] else None, tot[1])
    with open(os.path.join(sweep.dir, "entropy.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "series", "lr"] + ["H_%s" % g for g in GROUPS] + ["n_%s" % g for g in GROUPS])
        for row in table:
            w.writerow([row["model"], row["series"], row["lr"]] +
                       ["%.5f" % row[g][0] if row[g] else "" for g in GROUPS] +
                       [row[g][1] if row[g] else 0 for g in GROUPS])
    return table, share


def plot(sweep, rows, series, fits, per_model):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    style = {"adamw": ("tab:blue", "o", "AdamW (best lr)"), "muon_reuse": ("tab:orange", "s", "Muon at AdamW's lr"),
             "muon_tuned": ("tab:red", "^", "Muon (best lr)")}
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    for r in rows:  # every lr of every size, faint
        if r.get("status") == "ok" and math.isfinite(r["val_loss"]):
            c = "tab:blue" if r["optim"] == "adamw" else "tab:red"
            ax.scatter(r["pf_days"], r["val_loss"], s=10, color=c, alpha=0.18, zorder=1)
    allC = [p["pf_days"] for pts in series.values() for p in pts]
    for k, pts in series.items():
        if not pts:
            continue
        color, marker, label = style[k]
        C = np.array([p["pf_days"] for p in pts])
        L = np.array([p["val_loss"] for p in pts])
        if k in fits:
            label += ": L = %.3f C^%.4f" % (fits[k]["a"], fits[k]["b"])
        ax.scatter(C, L, color=color, marker=marker, s=40, zorder=3, label=label)
        if k in fits and allC:
            xs = np.exp(np.linspace(math.log(min(allC)) - 0.1, math.log(max(allC)) + 0.1, 100))
            ax.plot(xs, fits[k]["a"] * xs ** fits[k]["b"], color=color, lw=1.3, zorder=2)
            if "irreducible" in fits[k]:
                ir = fits[k]["irreducible"]
                ax.plot(xs, ir["E"] + ir["a"] * xs ** ir["b"], color=color, lw=0.8, ls=":", zorder=2)
    for m, info in per_model.items():
        p = info["adamw"]
        ax.annotate(m, (p["pf_days"], p["val_loss"]), textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
    ax.set_xlabel("training compute C (PFLOP/s-days; 1 = 8.64e19 FLOP)")
    ax.set_ylabel("final validation loss (nats)")
    ax.set_title("%s: loss vs compute (solid: a C^b; dotted: E + a C^b)" % sweep.args.name, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(sweep.dir, "scaling.png"), dpi=120)
    plt.close(fig)

    models = sweep.model_list()
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    cmap = plt.get_cmap("viridis")
    for i, m in enumerate(models):
        color = cmap(i / max(1, len(models) - 1))
        for optim, ls, mk in (("adamw", "-", "o"), ("muon", "--", "^")):
            pts = sorted((float(r["lr"]), r["val_loss"]) for r in rows if r["model"] == m and r["optim"] == optim
                         and r.get("status") == "ok" and math.isfinite(r["val_loss"]))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], ls=ls, marker=mk, color=color, ms=4,
                        label="%s %s" % (m, optim))
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("final validation loss")
    ax.set_title("lr sweeps (solid AdamW, dashed Muon)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(sweep.dir, "lr_sweep.png"), dpi=110)
    plt.close(fig)


def report(sweep):
    rows, series, per_model = collect(sweep)
    if not rows:
        log("no finished runs in %s yet" % sweep.dir)
        return None
    fits, ratios = fit_all(series, sweep.args.bootstrap)
    write_csvs(sweep, rows, series, per_model)
    ent_table, ent_share = entropy_tables(sweep, per_model)
    write_json(os.path.join(sweep.dir, "fits.json"), dict(fits=fits, compute_ratio=ratios, units="C in PFLOP/s-days",
                                                          moonlight=dict(adamw=[2.608, -0.054], muon=[2.506, -0.052],
                                                                         ratio=0.52)))
    plot(sweep, rows, series, fits, per_model)

    a = sweep.args
    md = ["# Scaling sweep `%s`: AdamW vs Muon" % a.name, ""]
    md.append("Ladder: %s; %s; %d tokens per step (batch %d x seq %d); lr grid of %d points, factor %g, centre %s "
              "for the first size, edge extensions <= %d; val loss on %d x %d x %d tokens. Generated by "
              "`scripts/scaling_sweep.py` (the flags are in each run's cmd.txt)." % (
                  a.models, ("%g tokens per active parameter" % a.tokens_per_param) if not a.steps else
                  "%d steps per run" % a.steps, sweep.tps, a.batch_size, a.seq_len, a.grid, a.lr_factor,
                  lr_str(a.lr_center), a.max_extend, a.val_batches, a.batch_size, a.seq_len))
    md += ["", "## Per size", "",
           "| model | active | tokens (at val) | C (PF-days) | AdamW lr* | AdamW loss | Muon @ AdamW lr | Muon lr* | "
           "Muon best loss | gap reuse | gap tuned |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    def lr_mark(r):  # the best lr, with "(edge)" when it is the lowest or highest lr tried for that size/optim
        tried = [float(o["lr"]) for o in rows if o["model"] == r["model"] and o["optim"] == r["optim"]]
        edge = len(tried) > 1 and float(r["lr"]) in (min(tried), max(tried))
        return r["lr"] + (" (edge)" if edge else "")
    for m, info in per_model.items():
        A, R, T = info["adamw"], info["muon_reuse"], info["muon_tuned"]
        md.append("| %s | %.3gM | %.3gM | %.3e | %s | %.4f | %s | %s | %s | %s | %s |" % (
            m, A["active_params"] / 1e6, A["tokens_at_val"] / 1e6, A["pf_days"], lr_mark(A), A["val_loss"],
            "%.4f" % R["val_loss"] if R else "-", lr_mark(T) if T else "-", "%.4f" % T["val_loss"] if T else "-",
            "%+.4f" % (R["val_loss"] - A["val_loss"]) if R else "-",
            "%+.4f" % (T["val_loss"] - A["val_loss"]) if T else "-"))
    md += ["", "(edge): the best lr is the lowest or highest one tried for that size and optimizer, so the optimum "
           "may lie beyond the grid.", "", "## Every run (final val loss)", "", "| model | optim | " + " | ".join(
        "lr %s" % l for l in sorted({r["lr"] for r in rows}, key=float)) + " |",
           "|---|---|" + "---:|" * len({r["lr"] for r in rows})]
    lrs = sorted({r["lr"] for r in rows}, key=float)
    for m in sweep.model_list():
        for optim in ("adamw", "muon"):
            got = {r["lr"]: r for r in rows if r["model"] == m and r["optim"] == optim}
            if not got:
                continue
            cells = []
            for l in lrs:
                r = got.get(l)
                if r is None:
                    cells.append("")
                elif r.get("status") != "ok" or not math.isfinite(r["val_loss"]):
                    cells.append("failed")
                else:
                    best = all(r["val_loss"] <= o["val_loss"] for o in got.values()
                               if o.get("status") == "ok" and math.isfinite(o["val_loss"]))
                    cells.append(("**%.4f**" if best else "%.4f") % r["val_loss"])
            md.append("| %s | %s | %s |" % (m, optim, " | ".join(cells)))
    md += ["", "## Fits: L = a C^b (C in PFLOP/s-days)", "",
           "| series | points | a | b | rms log-residual | E + a C^b (E, a, b) |", "|---|---:|---:|---:|---:|---|"]
    names = {"adamw": "AdamW (best lr)", "muon_reuse": "Muon at AdamW's lr", "muon_tuned": "Muon (best lr)"}
    for k in ("adamw", "muon_reuse", "muon_tuned"):
        if k in fits:
            f = fits[k]
            ir = f.get("irreducible")
            md.append("| %s | %d | %.4f | %.4f | %.4f | %s |" % (
                names[k], f["n"], f["a"], f["b"], f["rmse_log"],
                "%.3f, %.4f, %.4f" % (ir["E"], ir["a"], ir["b"]) if ir else "-"))
    md.append("| Moonlight (dense, 399M-1.5B) AdamW / Muon | | 2.608 / 2.506 | -0.054 / -0.052 | | |")
    md += ["", "## Compute Muon needs to reach AdamW's loss", ""]
    for k in ("muon_reuse", "muon_tuned"):
        if k in ratios:
            r = ratios[k]
            md.append("- **%s**: %.3f of AdamW's compute at C_ref = %.3e PF-days (%.3e FLOP), 95%% bootstrap CI "
                      "[%.3f, %.3f] (%d residual resamples); %.3f at the smallest C, %.3f at the largest. "
                      "Per size (AdamW fit inverted at each Muon point): %s." % (
                          names[k], r["ratio"], r["C_ref_pf_days"], r["C_ref_flops"], r["ci95"][0], r["ci95"][1],
                          r["n_boot"], r["ratio_at_C_min"], r["ratio_at_C_max"],
                          ", ".join("%s %.3f%s" % (p["model"], p["ratio"], "*" if p["extrapolated"] else "")
                                    for p in r["per_size"])))
    md.append("- Moonlight: ~0.52. (* = the Muon loss lies outside the AdamW points' loss range: extrapolated.)")
    if "muon_reuse" in ratios and "muon_tuned" in ratios:
        rr, rt = ratios["muon_reuse"]["ratio"], ratios["muon_tuned"]["ratio"]
        md.append("- Reusing AdamW's lr (Moonlight's protocol) vs Muon's own sweep: %.3f vs %.3f; Muon's best lr "
                  "equals AdamW's at %d of %d sizes." % (rr, rt, sum(1 for i in per_model.values() if i["muon_tuned"]
                  and i["muon_tuned"]["lr"] == i["adamw"]["lr"]), len(per_model)))
    md += ["", "## SVD entropy of the final weights (mean per group)", "",
           "| model | series | lr | " + " | ".join(GROUPS) + " |", "|---|---|---|" + "---:|" * len(GROUPS)]
    for row in ent_table:
        md.append("| %s | %s | %s | %s |" % (row["model"], names[row["series"]], row["lr"], " | ".join(
            "%.4f (%d)" % row[g] if row[g] else "-" for g in GROUPS)))
    md += ["", "Share of matrices (paired by position, all sizes) whose entropy is higher under Muon than under "
           "AdamW (Moonlight: > 90%):", "", "| series | " + " | ".join(GROUPS + ["all hidden"]) + " |",
           "|---|" + "---:|" * (len(GROUPS) + 1)]
    for k in ("muon_reuse", "muon_tuned"):
        if k in ent_share:
            md.append("| %s | %s |" % (names[k], " | ".join(
                "%.1f%% of %d" % (100 * v[0], v[1]) if v[0] is not None else "-"
                for v in [ent_share[k][g] for g in GROUPS] + [ent_share[k]["all_hidden"]])))
    md += ["", "Files: results.csv (every run), series.csv (fitted points), fits.json, entropy.csv, scaling.png, "
           "lr_sweep.png; per run: run.json, cmd.txt, stdout.log, train/log.jsonl, train/model_*.bin, result.json, "
           "entropy.json.", "",
           "C counts the tokens seen by the final validation (its step x tokens per step: steps after the last "
           "update; steps-1 from trainer builds before 5eda008) times the config record's flops_per_token "
           "(6 x active + attention; "
           "Newton-Schulz is not counted). The bootstrap interval covers the fits' residual noise only, not seed "
           "noise or the lr grid's resolution (factor %g)." % a.lr_factor]
    with open(os.path.join(sweep.dir, "report.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    log("\n".join(md))
    log("\nwrote %s/{report.md,results.csv,series.csv,fits.json,entropy.csv,scaling.png,lr_sweep.png}" % sweep.dir)
    return fits, ratios


# ---------------------------------------------------------------------------------------------------------------

def install_signals(sweeps):
    """SIGINT/SIGTERM stop the trainers that sweeps() (called at the signal: a study's workers come later) lists
    (objects with .child, a Popen or None) and exit 130:
    finished runs are kept, the same command continues. os._exit, because worker threads may be waiting on their
    children. SIGPIPE ends the output quietly (`| head`)."""
    def on_signal(signum, frame):
        for w in sweeps():
            if w.child is not None and w.child.poll() is None:
                w.child.terminate()
                try:
                    w.child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    w.child.kill()
        log("interrupted: finished runs are kept; run the same command again to continue")
        sys.stdout.flush()
        os._exit(130)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)



def load_or_save_settings(a, study, settings, keys):
    """--report-only describes a study as it was run (the settings file it saved: these keys of the flags); a run
    saves them, before each new run and at the end (not before a settings conflict is found)."""
    if a.report_only and os.path.exists(settings):
        with open(settings) as f:
            saved = json.load(f)
        for k in keys:
            if k in saved:
                setattr(a, k, saved[k])
        study.tps = a.total_batch or a.batch_size * a.seq_len
    elif not a.report_only and not a.dry_run:
        study.save_settings = lambda: write_json(settings, {k: getattr(a, k) for k in keys})

def main(argv=None):
    p = argparse.ArgumentParser(
        prog="scaling_sweep.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1] + """
Ladders (any setting can be overridden by its flag):
  --quick    k2-l1..k2-l5, 1 token per active parameter (79..354 steps of 2048 tokens), 3 lrs per optimizer,
             no extensions: 30 runs; estimate ~10 min with the trainer after issue 15's CPU work (13.5 min
             estimated and 16 min measured before it).
  default    k2-l1..k2-l5, 4 tokens per active parameter (316..1414 steps), 3 lrs per optimizer + at most one
             edge extension each: 30-40 runs; estimate ~36 min without extensions, ~45 min with all 10 (before
             issue 15: 49 / 66 min estimated, 72 min measured).
  --gpu      k2-g1..k2-g5 on one GPU (--device cuda, batch 16 x 1024, lr grid centred on 3e-3, MFU against
             989 TFLOP/s), 20 tokens per active parameter (314M..1.8B tokens per run): needs --train-data and
             --val-data with GPT-2-token shards (llm.c's FineWeb, vocab 50304; the default corpus is far too
             small). The CUDA backend has not yet run on a GPU (README, "CUDA backend").
Fewer than Chinchilla's ~20 tokens per active parameter: at 20 the AdamW + Muon grids would take ~4-5.5 h on
2 cores; the ladder still spans 4.5x in active parameters and ~20x in compute. --dry-run prints the plan and
the estimate for any setting.
""")
    p.add_argument("--quick", action="store_true", help="the ~15-minute CPU ladder")
    p.add_argument("--gpu", action="store_true", help="the GPU ladder k2-g1..k2-g5 (needs --train-data/--val-data FineWeb shards)")
    p.add_argument("--name", help="sweep directory name under --root (default: the ladder's name)")
    p.add_argument("--root", default=os.path.join(ROOT, "sweeps"), help="where sweeps live [sweeps/]")
    p.add_argument("--models", help="comma-separated presets, smallest first")
    p.add_argument("--tokens-per-param", type=float, help="token budget per active parameter")
    p.add_argument("--steps", type=int, default=0, help="fixed steps for every size (overrides --tokens-per-param)")
    p.add_argument("--min-steps", type=int, default=20, help="at least this many steps per run [20]")
    p.add_argument("--batch-size", type=int, default=8, help="micro-batch sequences [8]")
    p.add_argument("--seq-len", type=int, default=256, help="sequence length [256]")
    p.add_argument("--total-batch", type=int, default=0, help="tokens per step (default batch x seq)")
    p.add_argument("--lr-center", type=float, default=8e-3, help="AdamW grid centre for the first size [8e-3]")
    p.add_argument("--lr-factor", type=float, default=2.0, help="grid spacing (multiplicative) [2]")
    p.add_argument("--grid", type=int, default=3, help="lr points per optimizer and size [3]")
    p.add_argument("--max-extend", type=int, help="extra points beyond a grid edge that holds the best loss")
    p.add_argument("--val-batches", type=int, default=16, help="validation micro-batches [16]")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="cpu", help="trainer --device (the CPU ladders: cpu) [cpu]")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="trainer threads [all cores]")
    p.add_argument("--train-data", default="data/default/train_*.bin")
    p.add_argument("--val-data", default="data/default/val_*.bin")
    p.add_argument("--tokenizer", default="/nonexistent", help="tokenizer.bin (samples are off; unused)")
    p.add_argument("--peak-gflops", type=float, default=150.0,
                   help="MFU peak passed to the trainer (skips its sgemm measurement) [150]")
    p.add_argument("--trainer", default=os.path.join(ROOT, "train_moe"))
    p.add_argument("--trainer-args", default="", help="extra trainer flags for every run (part of the run's config)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples [2000]")
    p.add_argument("--progress-every", type=float, default=60.0, help="seconds between progress lines [60]")
    p.add_argument("--keep-state", action="store_true", help="keep the optimizer state files (deleted by default)")
    p.add_argument("--retry-failed", action="store_true", help="rerun runs recorded as failed")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the time estimate, run nothing")
    p.add_argument("--report-only", action="store_true", help="fits, CSV, plots and report from finished runs")
    a = p.parse_args(argv)

    ladder = "gpu" if a.gpu else ("quick" if a.quick else "default")
    if a.gpu:
        # the GPU ladder's own defaults, where the flags were left at the CPU ladders' values
        if a.train_data == "data/default/train_*.bin" or a.val_data == "data/default/val_*.bin":
            sys.exit("error: --gpu needs --train-data and --val-data with GPT-2-token shards (llm.c's FineWeb, vocab "
                     "50304): the default corpus (2.8M tokens, vocab 4096) is far too small for 314M..1.8B-token runs")
        if a.device == "cpu":
            a.device = "cuda"
        if a.batch_size == 8 and a.seq_len == 256:
            a.batch_size, a.seq_len = 16, 1024
        if a.lr_center == 8e-3:
            a.lr_center = 3e-3
        if a.peak_gflops == 150.0:
            a.peak_gflops = 989000.0
    for k, v in LADDERS[ladder].items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.name = a.name or ladder
    if a.grid < 1 or a.lr_factor <= 1 or a.max_extend < 0:
        sys.exit("error: --grid >= 1, --lr-factor > 1, --max-extend >= 0")
    for flag, pat in (("--train-data", a.train_data), ("--val-data", a.val_data)):
        if not glob.glob(pat if os.path.isabs(pat) else os.path.join(ROOT, pat)):
            sys.exit("error: %s %s matches no file%s" % (flag, pat, " (run `make data`)" if "data/default" in pat else ""))
    if not os.access(a.trainer, os.X_OK):
        sys.exit("error: %s is not built (make train_moe)" % a.trainer)

    sweep = Sweep(a)
    os.makedirs(sweep.dir, exist_ok=True)

    install_signals(lambda: [sweep])

    settings = os.path.join(sweep.dir, "sweep.json")
    keys = ["models", "tokens_per_param", "steps", "min_steps", "batch_size", "seq_len", "total_batch", "lr_center",
            "lr_factor", "grid", "max_extend", "val_batches", "seed", "train_data", "val_data", "trainer_args"]
    load_or_save_settings(a, sweep, settings, keys)
    if not a.report_only:
        sweep.train_all()
        if a.dry_run:
            return 0
    report(sweep)
    log("summary: %d runs trained now, %d found finished" % (sweep.ran, sweep.skipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
