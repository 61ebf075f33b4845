#!/usr/bin/python3
"""QK-Clip ablation: train one model with QK-Clip off, at tau = 100 and at a tighter tau, then compare.

  scripts/qk_ablation.py [--model k2-nano] [--optim muon] [--lr 0.1] [--steps 300] [--taus 0,100,30]
                         [--auto-frac 0.5] [--threads 2] [--runs-dir runs/qk_ablation]
                         [--results dev/results/qk_ablation] [--tag NAME] [--ref-seeds S,...] [--force]
                         [--no-train] [--keep-checkpoints] [-- extra train_moe flags]

Every run is `train_moe --model M --optim O --lr LR --steps N --qk-clip-tau TAU` with the same seed and data, so the
runs differ only in the clip. A tau of 0 is "off"; `auto` (only after a 0) is the unclipped run's peak max logit
times --auto-frac, rounded to two significant digits: it clips by construction (the clipped run follows the
unclipped one exactly until its first clip). The defaults (k2-nano, Muon, lr 0.1: 33x the trainer's default,
where the unclipped max logit runs away past 100 within ~50 steps; tau 30 as in K2's small-model experiment) take
about 5 minutes on 2 idle cores for the three runs.

Runs go to RUNS_DIR/<model>-<optim>-lr<lr>-s<steps>-<off|tauX>/ (trainer output in the .out file next to it). A run
whose marker RUNS_DIR/<name>.json records the same command and whose log reaches the last step is skipped; a run
stopped with a checkpoint is continued with --resume; --force retrains. Checkpoints of finished runs are deleted
unless --keep-checkpoints (the logs are all the comparison needs).

Writes RESULTS/<tag>.png (two panels: max logit and loss over steps, one curve per run, tau lines, clip events),
RESULTS/<tag>.md and RESULTS/<tag>.csv (per run: tau, peak/final max logit, final train and val loss, clip events),
and prints the summary table. In the .md, everything from the line
"<!-- notes: kept when the summary is regenerated -->" on is hand-written and kept when the file is rewritten. --ref-seeds adds unclipped runs with other seeds (gray in the figure): the
seed-to-seed spread that the loss differences between the clipped and unclipped runs should be judged against.
Extra trainer flags after `--` go last (so they override, e.g. --train-data).

The recorded result (dev/results/qk_ablation/k2-nano-muon.*): scripts/qk_ablation.py --ref-seeds 7
"""

import argparse
import csv
import glob
import json
import math
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plot_run import load_run, _ema  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sig2(x):
    """x rounded to two significant digits."""
    if x <= 0 or not math.isfinite(x):
        return x
    return float(f"{x:.2g}")


def git_rev():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev or "?") + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def shortpath(p):
    """p relative to the repository when inside it."""
    r = os.path.relpath(p, ROOT)
    return p if r.startswith("..") else r


def tau_tag(tau):
    return "off" if tau == 0 else f"tau{tau:g}"


def tau_label(tau):
    return "QK-Clip off" if tau == 0 else f"tau = {tau:g}"


def log_complete(run_dir, steps):
    log = os.path.join(run_dir, "log.jsonl")
    if not os.path.isfile(log):
        return False
    run = load_run(run_dir)
    return bool(run.steps) and run.steps[-1] >= steps


def has_checkpoint(run_dir):
    return bool(glob.glob(os.path.join(run_dir, "DONE_*")))


def prune_checkpoints(run_dir):
    for pat in ("model_*.bin", "state_*.bin", "DONE_*", "*.tmp"):
        for p in glob.glob(os.path.join(run_dir, pat)):
            os.remove(p)


def train(args, tau, seed, name, extra):
    run_dir = os.path.join(args.runs_dir, name)
    marker = os.path.join(args.runs_dir, name + ".json")
    out_path = os.path.join(args.runs_dir, name + ".out")
    cmd = [args.bin, "--model", args.model, "--optim", args.optim, "--lr", f"{args.lr:g}", "--steps", str(args.steps),
           "--qk-clip-tau", f"{tau:g}", "--threads", str(args.threads), "--seed", str(seed),
           "--val-every", str(args.val_every), "--val-batches", str(args.val_batches), "--sample-every", "0",
           "--ckpt-every", str(max(args.steps // 4, 1)), "--ckpt-keep", "1", "--out", run_dir] + extra
    prev = None
    if os.path.isfile(marker):
        try:
            with open(marker) as f:
                prev = json.load(f)
        except ValueError:
            prev = None
    same = prev is not None and prev.get("cmd") == cmd
    if same and prev.get("finished") and log_complete(run_dir, args.steps) and not args.force:
        print(f"skip {name}: finished run in {run_dir}", flush=True)
        return run_dir
    if args.no_train:
        sys.exit(f"error: --no-train, but {run_dir} holds no finished run of this command")
    mode = "fresh"
    if same and not args.force and has_checkpoint(run_dir):
        mode = "resume"
        full = cmd + ["--resume"]
    elif os.path.exists(run_dir):
        mode = "overwrite"
        full = cmd + ["--overwrite"]
    else:
        full = cmd
    os.makedirs(args.runs_dir, exist_ok=True)
    with open(marker, "w") as f:
        json.dump({"cmd": cmd, "finished": False}, f)
    print(f"train {name} ({mode}): {' '.join(full)}", flush=True)
    env = dict(os.environ, OMP_WAIT_POLICY="passive")  # a loaded machine: sleeping, not spinning, OpenMP waits
    t0 = time.time()
    every = max(args.steps // 10, 1)
    with open(out_path, "a" if mode == "resume" else "w") as out:
        p = subprocess.Popen(full, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             bufsize=1)
        for line in p.stdout:
            out.write(line)
            s = line.split()
            if line.startswith("error") or (len(s) > 1 and s[0] == "step" and s[1].split("/")[0].isdigit()
                                             and "/" in s[1] and int(s[1].split("/")[0]) % every == 0):
                print("  " + line.rstrip()[:160], flush=True)
        rc = p.wait()
    if rc != 0:
        sys.exit(f"error: {name}: train_moe exited {rc}; see {out_path}")
    if not args.keep_checkpoints:
        prune_checkpoints(run_dir)
    with open(marker, "w") as f:
        json.dump({"cmd": cmd, "finished": True, "seconds": round(time.time() - t0, 1)}, f)
    print(f"  {name}: {time.time() - t0:.0f} s", flush=True)
    return run_dir


def summarize(e):
    run, tau = e["run"], e["tau"]
    x = run.x()
    ml = run.series("max_logit")
    loss = run.series("loss")
    vx, vy = run.val_series()
    cx, ch = run.clip_steps()
    fin = np.isfinite(ml)
    peak_i = int(np.nanargmax(ml)) if fin.any() else None
    tail = loss[-max(len(loss) // 10, 1):] if len(loss) else loss
    ms = run.series("ms")
    return {
        "run": e["key"],
        "tau": tau,
        "seed": e["seed"],
        "steps": run.steps[-1] if run.steps else 0,
        "peak_max_logit": float(ml[peak_i]) if peak_i is not None else math.nan,
        "peak_step": int(x[peak_i]) if peak_i is not None else -1,
        "final_max_logit": float(ml[-1]) if len(ml) else math.nan,
        "final_loss": float(loss[-1]) if len(loss) else math.nan,
        "loss_last10pct": float(np.nanmean(tail)) if np.isfinite(tail).any() else math.nan,
        "final_val_loss": float(vy[-1]) if len(vy) else math.nan,
        "val_step": int(vx[-1]) if len(vx) else -1,
        "clip_steps": int(len(cx)),
        "head_clips": int(np.nansum(ch)) if len(ch) else 0,
        "first_clip_step": int(cx[0]) if len(cx) else -1,
        "skipped_steps": len(run.skipped_steps()),
        "train_s": round(float(np.nansum(ms)) / 1000, 1) if len(ms) else math.nan,
        "peak_per_layer": [float(v) for v in np.nanmax(run.matrix("max_logit_layer"), axis=0)]
        if run.steps and np.isfinite(run.matrix("max_logit_layer")).any() else [],
    }


NOTES_MARKER = "<!-- notes: kept when the summary is regenerated -->"

COLUMNS = ["run", "tau", "seed", "steps", "peak_max_logit", "peak_step", "final_max_logit", "final_loss", "loss_last10pct",
           "final_val_loss", "val_step", "clip_steps", "head_clips", "first_clip_step", "skipped_steps", "train_s"]


def fmt(v):
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def fl(v):
    """a loss: 4 decimals"""
    return f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else "n/a"


def table(rows):
    head = ["run", "tau", "peak max logit (step)", "final max logit", "final loss", "loss, last 10%",
            "final val loss", "clip steps", "head clips", "first clip"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["run"], "off" if r["tau"] == 0 else fmt(float(r["tau"])),
            f"{fmt(r['peak_max_logit'])} ({r['peak_step']})", fmt(r["final_max_logit"]), fl(r["final_loss"]),
            fl(r["loss_last10pct"]), fl(r["final_val_loss"]), str(r["clip_steps"]), str(r["head_clips"]),
            str(r["first_clip_step"]) if r["first_clip_step"] >= 0 else "-"]) + " |")
    return "\n".join(lines)


def figure(entries, path, title):
    runs = [e["run"] for e in entries]
    taus = [e["tau"] for e in entries]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(14, 5.2))
    styles = ["-", "--", "-.", ":"]
    i_main = 0
    for e in entries:
        run, tau = e["run"], e["tau"]
        if e["ref"]:
            c, ls, lw = "gray", "-", 0.7
        else:
            c, ls, lw = f"C{i_main}", styles[i_main % len(styles)], 1.3
            i_main += 1
        x = run.x()
        ml = run.series("max_logit")
        a1.plot(x, ml, color=c, lw=0.8 if e["ref"] else 1.0, label=e["label"])
        if tau > 0:
            a1.axhline(tau, color=c, ls="--", lw=0.9, alpha=0.8)
            cx, _ = run.clip_steps()
            if len(cx):
                a1.scatter(cx, ml[np.isin(x, cx)], marker="|", s=25, color=c, alpha=0.6, lw=0.8,
                           label=f"  clipped: {len(cx)} steps")
            else:
                a1.plot([], [], " ", label="  never clipped")
        loss = run.series("loss")
        if e is entries[0]:
            a2.plot(x, loss, color=c, lw=0.5, alpha=0.25)  # one raw curve for the noise level
        smooth = len(x) > 50
        a2.plot(x, _ema(loss, 0.95) if smooth else loss, color=c, ls=ls, lw=lw,
                label=e["label"] + (" (train, EMA 0.95)" if smooth else " (train)"))
        vx, vy = run.val_series()
        if len(vx):
            a2.plot(vx, vy, "o", color=c, ms=4, ls=ls, lw=0.8, label=e["label"] + " (val)")
    vals = np.concatenate([r.series("max_logit") for r in runs] + [np.array([t for t in taus if t > 0])])
    vals = vals[np.isfinite(vals)]
    if vals.size and (vals > 0).all():
        a1.set_yscale("log")
    a1.set_xlabel("step")
    a1.set_ylabel("max scaled attention logit (all layers, heads)")
    a1.set_title("max logit (dashed: tau; ticks: steps with clipped heads)")
    a1.grid(alpha=0.3, which="both")
    a1.legend(fontsize=8)
    a2.set_xlabel("step")
    a2.set_ylabel("loss (nats)")
    a2.set_title("loss")
    a2.grid(alpha=0.3)
    # the interesting range: past the first steps' drop from ln(V)
    parts = []
    for r in runs:
        parts.append(r.series("loss")[len(r.steps) // 10:])
        vx, vy = r.val_series()
        if len(r.steps):
            parts.append(vy[vx >= r.steps[len(r.steps) // 10] - 1])
    allv = np.concatenate(parts) if parts else np.array([])
    allv = allv[np.isfinite(allv)]
    if allv.size:
        lo, hi = float(np.percentile(allv, 0.5)), float(np.percentile(allv, 99.5))
        a2.set_ylim(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo))
    a2.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    class Fmt(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
        pass

    ap = argparse.ArgumentParser(usage="%(prog)s [flags] [-- train_moe flags]", description=__doc__, formatter_class=Fmt)
    ap.add_argument("--model", default="k2-nano", help="preset")
    ap.add_argument("--optim", default="muon", choices=["muon", "adamw"], help="optimizer")
    ap.add_argument("--lr", type=float, default=1e-1, help="peak learning rate (cosine schedule, default warmup)")
    ap.add_argument("--steps", type=int, default=300, help="steps per run")
    ap.add_argument("--taus", default="0,100,30", help="comma-separated; 0 = off; auto = --auto-frac x the off run's peak")
    ap.add_argument("--auto-frac", type=float, default=0.5, help="auto tau = this x the unclipped peak")
    ap.add_argument("--threads", type=int, default=2, help="trainer threads")
    ap.add_argument("--seed", type=int, default=1337, help="seed of every run")
    ap.add_argument("--val-every", type=int, default=0, help="validation every N steps (0: steps/6; the last step always)")
    ap.add_argument("--val-batches", type=int, default=8, help="micro-batches per validation")
    ap.add_argument("--bin", default=os.path.join(ROOT, "train_moe"), help="the trainer")
    ap.add_argument("--runs-dir", default=os.path.join(ROOT, "runs", "qk_ablation"), help="run directories")
    ap.add_argument("--results", default=os.path.join(ROOT, "dev", "results", "qk_ablation"),
                    help="figure and summaries")
    ap.add_argument("--tag", default=None, help="file name stem for the figure and summaries (default MODEL-OPTIM)")
    ap.add_argument("--force", action="store_true", help="retrain even finished runs")
    ap.add_argument("--no-train", action="store_true", help="only summarize runs that exist")
    ap.add_argument("--keep-checkpoints", action="store_true",
                    help="keep the runs' checkpoints (e.g. for --replay of a spike); by default they are deleted")
    ap.add_argument("--ref-seeds", default="", help="comma-separated seeds of extra unclipped runs: the seed-to-seed "
                    "spread, to judge the loss differences against")
    args = ap.parse_args(argv)
    try:
        args.ref_seeds = [int(v) for v in args.ref_seeds.split(",") if v.strip()]
    except ValueError:
        sys.exit(f"error: --ref-seeds '{args.ref_seeds}' must be comma-separated integers")
    if args.val_every <= 0:
        args.val_every = max(args.steps // 6, 1)
    args.runs_dir = os.path.abspath(args.runs_dir)
    tag = args.tag or f"{args.model}-{args.optim}"
    if not os.path.isfile(args.bin):
        sys.exit(f"error: no trainer at {args.bin} (make train_moe)")

    specs = [s.strip() for s in args.taus.split(",") if s.strip()]
    entries = []
    t_start = time.time()

    def add(tau, seed, ref):
        key = tau_tag(tau) + (f"-seed{seed}" if ref else "")
        name = f"{args.model}-{args.optim}-lr{args.lr:g}-s{args.steps}-{key}"
        run_dir = train(args, tau, seed, name, extra)
        entries.append({"tau": tau, "seed": seed, "ref": ref, "key": key, "name": name, "run": load_run(run_dir),
                        "label": tau_label(tau) + (f", seed {seed}" if ref else "")})

    for s in specs:
        taus = [e["tau"] for e in entries]
        if s == "auto":
            if 0.0 not in taus:
                sys.exit("error: --taus: auto needs a 0 (off) run before it")
            off = entries[taus.index(0.0)]["run"]
            peak = float(np.nanmax(off.series("max_logit")))
            tau = sig2(args.auto_frac * peak)
            print(f"auto tau: {args.auto_frac:g} x the unclipped peak {peak:.3g} = {tau:g}", flush=True)
        else:
            try:
                tau = float(s)
            except ValueError:
                sys.exit(f"error: --taus: '{s}' is not a number or auto")
            if tau < 0:
                sys.exit(f"error: --taus: {tau:g} < 0")
        if tau in taus:
            print(f"note: tau {tau:g} appears twice; one run", flush=True)
            continue
        add(tau, args.seed, False)
    for seed in args.ref_seeds:
        if seed != args.seed:
            add(0.0, seed, True)
    rows = [summarize(e) for e in entries]

    os.makedirs(args.results, exist_ok=True)
    png = os.path.join(args.results, tag + ".png")
    title = (f"QK-Clip ablation: {args.model}, {args.optim}, lr {args.lr:g}, {args.steps} steps"
             + (f", extra flags: {' '.join(extra)}"[:120] if extra else ""))
    figure(entries, png, title)
    with open(os.path.join(args.results, tag + ".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})

    tbl = table(rows)
    cfg = entries[0]["run"].config if entries else {}
    notes = []
    main_rows = [r for r, e in zip(rows, entries) if not e["ref"]]
    ref_rows = [r for r, e in zip(rows, entries) if e["ref"]]
    off = next((r for r in main_rows if r["tau"] == 0), None)
    for r in main_rows:
        t = r["tau"]
        if t > 0 and r["clip_steps"] == 0:
            notes.append(f"- tau {t:g} never clipped: the max logit stayed below it (peak {fmt(r['peak_max_logit'])}).")
        if t > 0 and off and math.isfinite(off["final_loss"]):
            notes.append(f"- tau {t:g}: final val loss {fl(r['final_val_loss'])} vs {fl(off['final_val_loss'])} "
                         f"unclipped ({r['final_val_loss'] - off['final_val_loss']:+.4f}); mean train loss over the last "
                         f"10% {r['loss_last10pct'] - off['loss_last10pct']:+.4f}; peak max logit "
                         f"{fmt(r['peak_max_logit'])} vs {fmt(off['peak_max_logit'])}; "
                         f"{r['head_clips'] / max(r['steps'], 1):.1f} head clips per step of "
                         f"{(cfg.get('n_layers') or 0) * (cfg.get('n_heads') or 0) or '?'} heads.")
    for r in ref_rows:
        if off:
            notes.append(f"- noise reference: the unclipped run with seed {r['seed']} (other initial weights and data "
                         f"order) ends at val loss {fl(r['final_val_loss'])} vs {fl(off['final_val_loss'])} "
                         f"({r['final_val_loss'] - off['final_val_loss']:+.4f}); last-10% train loss "
                         f"{r['loss_last10pct'] - off['loss_last10pct']:+.4f}; peak max logit "
                         f"{fmt(r['peak_max_logit'])}.")
    for r in rows:
        if r["peak_per_layer"]:
            notes.append(f"- {r['run']}: peak max logit per layer " +
                         ", ".join(fmt(v) for v in r["peak_per_layer"]) + ".")
    cmdline = "scripts/qk_ablation.py " + " ".join(sys.argv[1:])
    md = [f"# QK-Clip ablation: {args.model}, {args.optim}, lr {args.lr:g}",
          "",
          f"`{cmdline}` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, {platform.machine()}, "
          f"--threads {args.threads}, trainer at commit {git_rev()}). Same seed ({args.seed}), data and schedule "
          f"({cfg.get('schedule', '?')}, warmup default) for every run; only `--qk-clip-tau` differs. "
          f"Model: {cfg.get('params', '?')} parameters, {cfg.get('n_layers', '?')} layers x {cfg.get('n_heads', '?')} "
          f"heads, {cfg.get('batch', '?')} x {cfg.get('seq_len', '?')} tokens per step. Max logit = the largest "
          f"scaled logit q.k/sqrt(d) over all layers and heads in a step's forward (before its update); clip steps = "
          f"steps where at least one head was clipped (the logged max logit is the forward's before that step's "
          f"clip, so a clipped run can log values above its tau); final val loss at step "
          f"{rows[0]['val_step'] if rows else '?'}.",
          "",
          tbl,
          "",
          *notes,
          "",
          f"Figure: `{os.path.basename(png)}`. Runs: " + ", ".join(f"`{shortpath(os.path.join(args.runs_dir, e['name']))}`" for e in entries) + ".",
          ""]
    md_path = os.path.join(args.results, tag + ".md")
    kept = ""
    if os.path.isfile(md_path):  # hand-written notes after the marker survive a regeneration
        with open(md_path) as f:
            old = f.read()
        if NOTES_MARKER in old:
            kept = old[old.index(NOTES_MARKER):]
    with open(md_path, "w") as f:
        f.write("\n".join(md) + ("\n" + kept if kept else ""))
    print()
    print(f"QK-Clip ablation: {args.model} {args.optim} lr {args.lr:g}, {args.steps} steps ({time.time() - t_start:.0f} s)")
    print(tbl)
    for n in notes:
        print(n)
    print(f"figure:  {png}")
    print(f"summary: {os.path.join(args.results, tag + '.md')}, {os.path.join(args.results, tag + '.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
