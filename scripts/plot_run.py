#!/usr/bin/python3
"""Plot a train_moe run from its log: scripts/plot_run.py RUN_DIR [--out DIR]

RUN_DIR is a run directory holding log.jsonl, or the path of a log file itself (e.g. a --replay's
replay_S0_S1.jsonl). Writes PNGs (matplotlib, Agg) to --out (default RUN_DIR/plots, or plots_<log name> next to a
log that is not log.jsonl) and prints the path of every PNG written, one per line:

  loss.png             train loss (and cross-entropy), validation loss; spikes, skipped and non-finite steps marked
  grad_norm.png        gradient norm before clipping (log scale); spikes and skipped steps marked
  max_logit.png        largest scaled attention logit per layer and overall; the QK-Clip tau (config qk_clip_tau
                       when > 0) and the steps where heads were clipped
  max_logit_heads.png  per-head max logit as a heatmap, steps x heads, one panel per layer; clipped heads marked
                       (only steps whose record carries max_logit_head: every step in newer logs, validation
                       steps in older ones)
  load_imbalance.png   each MoE layer's expert load, max/mean (1 = perfect balance, E/K = total collapse)
  lr.png               learning rate
  overview.png         all of the above but the heatmap in one figure
  spike_z.png          (when the log has loss_z / norm_z) the spike detector's z-scores, spikes marked
  update_rms.png       (a --replay log's update_rms) each tensor's update RMS per step and layer
  expert_load.png      (a --replay log's expert_load) every expert's load per step, one heatmap per MoE layer

The log is JSON lines (README.md, "What a run prints"). Records after {"type":"resume","step":S} supersede earlier
ones: step records with step > S and validation records with step >= S from before the marker are dropped (the
resumed run redoes them), and otherwise the last record for a step wins. Spike and non-finite events are kept
across a resume (the spike that made someone replay is the interesting one; the last event per type and step wins)
and are drawn at the loss / gradient norm they logged. null (a non-finite number) becomes NaN; missing fields and
records are skipped, so logs from older trainers plot too. Malformed lines (a partly written last line) are skipped
with a warning on stderr.

Importable: load_run(path) returns a Run with the parsed series (used by scripts/qk_ablation.py).
"""

import argparse
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

EVENT_TYPES = ("spike", "nonfinite")


def _num(x):
    """A JSON value as a float: null, strings, booleans and missing values become NaN."""
    if isinstance(x, bool) or x is None:
        return math.nan
    if isinstance(x, (int, float)):
        return float(x)
    return math.nan


def _arr(x):
    """A JSON array of numbers (nulls allowed) as a float list, or None."""
    if not isinstance(x, list):
        return None
    return [_num(v) for v in x]


def _int_step(rec):
    s = rec.get("step")
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
        return None
    return int(s)


class Run:
    """The parsed log. steps: sorted step numbers; series(name) gives the field per step (NaN where missing)."""

    def __init__(self, path):
        self.path = path
        self.config = {}
        self.step_recs = {}   # step -> record
        self.val = {}         # step -> val_loss
        self.events = {}      # (type, step) -> record
        self.resumes = []     # resume steps, in order
        self.bad_lines = 0
        self._parse()
        self.steps = sorted(self.step_recs)

    def _parse(self):
        with open(self.path, "r", encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    self.bad_lines += 1
                    print(f"warning: {self.path}:{lineno}: not JSON, skipped", file=sys.stderr)
                    continue
                if not isinstance(rec, dict):
                    self.bad_lines += 1
                    continue
                kind = rec.get("type")
                if kind == "config":
                    # a resumed run writes its config again; the later one describes the rest of the run
                    self.config.update(rec)
                    continue
                step = _int_step(rec)
                if step is None:
                    continue
                if kind == "resume":
                    self.resumes.append(step)
                    self.step_recs = {s: r for s, r in self.step_recs.items() if s <= step}
                    self.val = {s: v for s, v in self.val.items() if s < step}
                    # events stay: a spike that made the trainer replay from S happened, even though its step was
                    # redone (a later event for the same step replaces it)
                elif kind == "step":
                    self.step_recs[step] = rec
                elif kind == "val":
                    self.val[step] = _num(rec.get("val_loss"))
                elif kind in EVENT_TYPES:
                    self.events[(kind, step)] = rec

    # --- series
    def x(self):
        return np.array(self.steps, dtype=float)

    def series(self, name):
        return np.array([_num(self.step_recs[s].get(name)) for s in self.steps], dtype=float)

    def has(self, name):
        return any(name in self.step_recs[s] for s in self.steps)

    def matrix(self, name, width=None):
        """(steps, width) array of a per-step array field, NaN rows where missing; width from the config or the
        widest record."""
        rows = [_arr(self.step_recs[s].get(name)) for s in self.steps]
        if width is None:
            width = max((len(r) for r in rows if r is not None), default=0)
        m = np.full((len(rows), width), np.nan)
        for i, r in enumerate(rows):
            if r is not None:
                n = min(width, len(r))
                m[i, :n] = r[:n]
        return m

    def val_series(self):
        s = sorted(self.val)
        return np.array(s, dtype=float), np.array([self.val[k] for k in s], dtype=float)

    def event_steps(self, kind, action=None):
        out = []
        for (k, s), r in sorted(self.events.items(), key=lambda kv: kv[0][1]):
            if k == kind and (action is None or r.get("action") == action):
                out.append(s)
        return out

    def spike_steps(self):
        """Steps flagged as spikes: spike events, or step records with spike = 1."""
        s = set(self.event_steps("spike"))
        s.update(st for st in self.steps if _num(self.step_recs[st].get("spike")) == 1)
        return sorted(s)

    def skipped_steps(self):
        s = {st for st in self.steps if _num(self.step_recs[st].get("skipped")) == 1}
        s.update(self.event_steps("spike", "skipped"))
        return sorted(s)

    def nonfinite_steps(self):
        s = set(self.event_steps("nonfinite"))
        for st in self.steps:
            r = self.step_recs[st]
            if not math.isfinite(_num(r.get("loss"))) or not math.isfinite(_num(r.get("grad_norm"))):
                s.add(st)
        return sorted(s)

    def clip_steps(self):
        """(steps where heads were clipped, heads clipped at each)."""
        hc = self.series("heads_clipped")
        sel = np.nan_to_num(hc) > 0
        return self.x()[sel], hc[sel]

    def clipped_heads(self):
        """[(step, flat head index l*H+h)] from the clipped_heads arrays."""
        out = []
        for s in self.steps:
            ch = self.step_recs[s].get("clipped_heads")
            if isinstance(ch, list):
                out.extend((s, int(i)) for i in ch if isinstance(i, (int, float)) and not isinstance(i, bool))
        return out

    def n_layers(self):
        L = self.config.get("n_layers")
        if isinstance(L, int) and L > 0:
            return L
        m = self.matrix("max_logit_layer")
        return m.shape[1] if m.size else 0

    def n_heads(self):
        H = self.config.get("n_heads")
        if isinstance(H, int) and H > 0:
            return H
        L = self.n_layers()
        m = self.matrix("max_logit_head")
        return m.shape[1] // L if (L and m.size) else 0

    def tau(self):
        t = _num(self.config.get("qk_clip_tau"))
        return t if math.isfinite(t) and t > 0 else None

    def label(self):
        c = self.config
        parts = [str(c.get("model", "?"))]
        if c.get("optim"):
            parts.append(str(c["optim"]))
        if "lr" in c:
            parts.append(f"lr {c['lr']:g}" if isinstance(c["lr"], (int, float)) else "lr ?")
        t = self.tau()
        parts.append(f"tau {t:g}" if t else "QK-Clip off" if "qk_clip_tau" in c else "tau ?")
        return ", ".join(parts)


def load_run(path):
    if os.path.isdir(path):
        path = os.path.join(path, "log.jsonl")
    return Run(path)


# ----------------------------------------------------------------------------------------------- plotting helpers

def _finite_plot(ax, x, y, *args, **kw):
    """Plot y over x; NaNs break the line (matplotlib does that), all-NaN plots nothing. Returns True if drawn."""
    if len(y) == 0 or not np.isfinite(y).any():
        return False
    if not args and "marker" not in kw and len(y) <= 60:
        kw["marker"] = "."  # short logs: isolated finite points between nulls stay visible
        kw.setdefault("ms", 4)
    ax.plot(x, y, *args, **kw)
    return True


def _ema(y, alpha):
    out = np.full_like(y, np.nan)
    m = math.nan
    for i, v in enumerate(y):
        if math.isfinite(v):
            m = v if not math.isfinite(m) else alpha * m + (1 - alpha) * v
        out[i] = m
    return out


def _mark_steps(ax, steps, color, label, style="--"):
    for i, s in enumerate(steps):
        ax.axvline(s, color=color, ls=style, lw=0.8, alpha=0.6, label=label if i == 0 else None)


def _mark_points(ax, run, steps, y, marker, color, label, field=None, hollow=False):
    """Markers at the given steps: at the value an event record logged for field (spike, nonfinite), else on the
    curve y, else (non-finite or no record) at the top edge of the axes."""
    if not steps:
        return
    idx = {s: i for i, s in enumerate(run.steps)}
    xs, ys, xt = [], [], []
    for s in steps:
        v = math.nan
        if field:
            for kind in EVENT_TYPES:
                rec = run.events.get((kind, s))
                if rec is not None and math.isfinite(_num(rec.get(field))):
                    v = _num(rec.get(field))
                    break
        i = idx.get(s)
        if not math.isfinite(v) and i is not None:
            v = y[i]
        if math.isfinite(v):
            xs.append(s)
            ys.append(v)
        else:
            xt.append(s)
    kw = dict(facecolors="none", edgecolors=color) if hollow else dict(color=color)
    if xs:
        ax.scatter(xs, ys, marker=marker, s=40, zorder=5, label=label, **kw)
    if xt:  # non-finite values or no record: a marker at the top edge
        ax.scatter(xt, [1.0] * len(xt), marker="v", s=40, color=color, zorder=5,
                   transform=ax.get_xaxis_transform(), clip_on=False, label=None if xs else label)


def _positive_log(ax, ys):
    v = np.concatenate([y[np.isfinite(y)] for y in ys]) if ys else np.array([])
    if v.size and (v > 0).all():
        ax.set_yscale("log")


def plot_loss(ax, run):
    x = run.x()
    loss = run.series("loss")
    smooth = len(x) > 50
    drawn = _finite_plot(ax, x, loss, color="C0", lw=0.6 if smooth else 1.2, alpha=0.5 if smooth else 1.0,
                         label="train loss")
    if drawn and smooth:
        _finite_plot(ax, x, _ema(loss, 0.95), color="C0", lw=1.4, label="train loss (EMA 0.95)")
    if run.has("ce") and run.has("aux"):
        aux = run.series("aux")
        if np.nanmax(np.abs(aux), initial=0) > 1e-3:  # the cross-entropy alone only when the aux loss shows
            _finite_plot(ax, x, run.series("ce"), color="C2", lw=0.6, alpha=0.6, label="cross-entropy")
    vx, vy = run.val_series()
    if _finite_plot(ax, vx, vy, "o-", color="C1", ms=3, lw=1.2, label="val loss"):
        drawn = True
    _mark_points(ax, run, run.spike_steps(), loss, "x", "red", "spike", field="loss")
    _mark_points(ax, run, run.skipped_steps(), loss, "s", "black", "skipped step", field="loss", hollow=True)
    _mark_points(ax, run, [s for s in run.nonfinite_steps() if s not in run.skipped_steps()], loss, "v", "purple",
                 "non-finite", field="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats)")
    ax.set_title("loss")
    return drawn


def plot_grad_norm(ax, run):
    x = run.x()
    g = run.series("grad_norm")
    drawn = _finite_plot(ax, x, g, color="C3", lw=0.8, label="grad norm (before clip)")
    if drawn:
        _positive_log(ax, [g])
    clip = _num(run.config.get("grad_clip"))
    if math.isfinite(clip) and clip > 0:
        ax.axhline(clip, color="gray", ls=":", lw=1, label=f"clip {clip:g}")
    _mark_points(ax, run, run.spike_steps(), g, "x", "red", "spike", field="grad_norm")
    _mark_points(ax, run, run.skipped_steps(), g, "s", "black", "skipped step", field="grad_norm", hollow=True)
    ax.set_xlabel("step")
    ax.set_ylabel("gradient norm")
    ax.set_title("gradient norm")
    return drawn


def plot_max_logit(ax, run):
    x = run.x()
    drawn = False
    ml = run.matrix("max_logit_layer", run.n_layers() or None)
    for l in range(ml.shape[1]):
        drawn |= _finite_plot(ax, x, ml[:, l], lw=0.9, label=f"layer {l}")
    overall = run.series("max_logit")
    if ml.shape[1] != 1:
        drawn |= _finite_plot(ax, x, overall, color="black", lw=0.6, ls=":", label="max over layers")
    tau = run.tau()
    if tau:
        ax.axhline(tau, color="red", ls="--", lw=1, label=f"QK-Clip tau {tau:g}")
    cx, ch = run.clip_steps()
    if len(cx):
        ymark = overall[np.isin(x, cx)]
        ax.scatter(cx, ymark, marker="|", s=60, color="red", zorder=5,
                   label=f"heads clipped ({len(cx)} steps, {int(np.nansum(ch))} heads)")
    if drawn:
        _positive_log(ax, [ml, overall])
    ax.set_xlabel("step")
    ax.set_ylabel("max scaled logit q.k/sqrt(d)")
    ax.set_title("max attention logit per layer")
    return drawn


def plot_load(ax, run):
    x = run.x()
    li = run.matrix("load_imbalance")
    drawn = False
    for m in range(li.shape[1]):
        drawn |= _finite_plot(ax, x, li[:, m], lw=0.9, label=f"MoE layer {m}")
    if drawn:
        _positive_log(ax, [li])
        E, K = run.config.get("n_experts"), run.config.get("top_k")
        if isinstance(E, int) and isinstance(K, int) and K > 0:
            ax.axhline(E / K, color="gray", ls=":", lw=1, label=f"E/K = {E / K:g} (collapse)")
        ax.axhline(1.0, color="gray", ls="--", lw=0.8, label="1 (balanced)")
    ax.set_xlabel("step")
    ax.set_ylabel("expert load max/mean")
    ax.set_title("expert-load imbalance")
    return drawn


def plot_lr(ax, run):
    drawn = _finite_plot(ax, run.x(), run.series("lr"), color="C4", lw=1.2, label="lr")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title("learning rate")
    return drawn


def _legend(ax):
    h, _ = ax.get_legend_handles_labels()
    if h:
        ax.legend(fontsize=7, loc="best")


def _empty(ax, what):
    ax.text(0.5, 0.5, f"no {what} in the log", ha="center", va="center", transform=ax.transAxes, color="gray")


def plot_heads(run, path, title):
    """Heatmap of max_logit_head: rows = heads (per layer panel), columns = the steps that have it."""
    L, H = run.n_layers(), run.n_heads()
    m = run.matrix("max_logit_head", L * H if L and H else None)
    have = np.isfinite(m).any(axis=1) if m.size else np.zeros(0, bool)
    if not L or not H or not have.any():
        fig, ax = plt.subplots(figsize=(8, 3))
        _empty(ax, "max_logit_head records")
        fig.suptitle(title, fontsize=9)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return
    steps = run.x()[have]
    m = m[have]
    # column edges halfway between recorded steps, so sparse (validation-only) records still show as blocks
    if len(steps) > 1:
        mid = (steps[1:] + steps[:-1]) / 2
        edges = np.concatenate([[steps[0] - (mid[0] - steps[0])], mid, [steps[-1] + (steps[-1] - mid[-1])]])
    else:
        edges = np.array([steps[0] - 0.5, steps[0] + 0.5])
    finite = m[np.isfinite(m)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    use_log = finite.size and vmin > 0 and vmax / vmin > 20
    norm = matplotlib.colors.LogNorm(vmin, vmax) if use_log else matplotlib.colors.Normalize(vmin, vmax)
    fig, axes = plt.subplots(L, 1, figsize=(10, 1.0 + 0.45 * H * L + 0.4 * L), sharex=True, squeeze=False)
    clipped = run.clipped_heads()
    tau = run.tau()
    mesh = None
    for l in range(L):
        ax = axes[l, 0]
        block = np.ma.masked_invalid(m[:, l * H:(l + 1) * H].T)
        mesh = ax.pcolormesh(edges, np.arange(H + 1) - 0.5, block, cmap="viridis", norm=norm, shading="flat")
        ax.set_ylabel(f"layer {l}\nhead", fontsize=8)
        ax.set_yticks(range(H))
        ax.tick_params(labelsize=7)
        pts = [(s, i - l * H) for s, i in clipped if l * H <= i < (l + 1) * H]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker="x", s=18, color="red", lw=0.8,
                       label="clipped")
            if l == 0 or not any(l2 * H <= i < (l2 + 1) * H for l2 in range(l) for _, i in clipped):
                ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("step")
    cb = fig.colorbar(mesh, ax=axes[:, 0].tolist(), fraction=0.03, pad=0.01)
    cb.set_label("max scaled logit" + (f" (tau {tau:g})" if tau else ""), fontsize=8)
    if tau and vmin <= tau <= vmax:
        cb.ax.axhline(tau, color="red", lw=1.5)
    sparse = len(steps) < len(run.steps)
    fig.suptitle(title + ("\nper-head max logit (steps with a per-head record only)" if sparse else
                          "\nper-head max logit"), fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_zscores(ax, run):
    """The spike detector's z-scores (loss_z, norm_z), its threshold when the config carries spike_z."""
    x = run.x()
    drawn = _finite_plot(ax, x, run.series("loss_z"), color="C0", lw=0.8, label="loss z")
    drawn |= _finite_plot(ax, x, run.series("norm_z"), color="C3", lw=0.8, label="grad-norm z")
    zt = _num(run.config.get("spike_z"))
    if drawn and math.isfinite(zt) and zt > 0:
        ax.axhline(zt, color="red", ls="--", lw=1, label=f"spike threshold {zt:g} (loss z)")
    if drawn:  # a spike at its loss z: the loss alone decides (train/spikes.c); the grad-norm z is only shown
        _mark_points(ax, run, run.spike_steps(), run.series("loss_z"), "x", "red", "spike")
    ax.set_xlabel("step")
    ax.set_ylabel("z-score (rolling window)")
    ax.set_title("spike detector z-scores")
    return drawn


def plot_update_rms(run, path, title):
    """--replay telemetry: each parameter tensor's update RMS per step, one panel per tensor, a line per layer."""
    names = []
    for s in run.steps:
        u = run.step_recs[s].get("update_rms")
        if isinstance(u, dict):
            names.extend(k for k in u if k not in names)
    if not names:
        return False
    cols = 4
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False, sharex=True)
    x = run.x()
    for ax, name in zip(axes.flat, names):
        per = [(_arr(run.step_recs[s].get("update_rms", {}).get(name))
                if isinstance(run.step_recs[s].get("update_rms"), dict) else None) for s in run.steps]
        width = max((len(v) for v in per if v), default=0)
        m = np.full((len(per), width), np.nan)
        for i, v in enumerate(per):
            if v:
                m[i, :len(v)] = v
        for g in range(width):
            _finite_plot(ax, x, m[:, g], lw=0.9, label=f"{g}" if width > 1 else None)
        if np.isfinite(m).any() and (m[np.isfinite(m)] > 0).all():
            ax.set_yscale("log")
        _mark_steps(ax, run.spike_steps(), "red", None, ":")
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if width > 1:
            ax.legend(fontsize=6, title="layer", title_fontsize=6)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title + "\nupdate RMS per tensor and layer (dotted: spikes)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_expert_load(run, path, title):
    """--replay telemetry: every expert's load per step, a heatmap per MoE layer (steps x experts)."""
    m = run.matrix("expert_load")
    have = np.isfinite(m).any(axis=1) if m.size else np.zeros(0, bool)
    Lm = run.matrix("load_imbalance").shape[1]
    if not have.any() or not Lm or m.shape[1] % Lm:
        return False
    E = m.shape[1] // Lm
    steps = run.x()[have]
    m = m[have]
    fig, axes = plt.subplots(Lm, 1, figsize=(10, 1.2 + 2.2 * Lm), squeeze=False, sharex=True)
    edges = np.concatenate([steps - 0.5, [steps[-1] + 0.5]]) if len(steps) else steps
    mesh = None
    for l in range(Lm):
        ax = axes[l, 0]
        block = m[:, l * E:(l + 1) * E].T
        mesh = ax.pcolormesh(edges, np.arange(E + 1), np.ma.masked_invalid(block), cmap="magma", shading="flat")
        ax.set_ylabel(f"MoE layer {l}\nexpert", fontsize=8)
        ax.tick_params(labelsize=7)
        fig.colorbar(mesh, ax=ax, fraction=0.03, pad=0.01).set_label("tokens", fontsize=7)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(title + "\nexpert load per step", fontsize=9)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


PANELS = [("loss", plot_loss, "loss"), ("grad_norm", plot_grad_norm, "gradient norms"),
          ("max_logit", plot_max_logit, "max logits"), ("load_imbalance", plot_load, "expert loads"),
          ("lr", plot_lr, "learning rates")]


def plot_run(run_path, out_dir=None):
    """Write every PNG for one run; returns their paths."""
    run = load_run(run_path)
    if out_dir is None:
        if os.path.isdir(run_path) or os.path.basename(run_path) == "log.jsonl":
            out_dir = os.path.join(os.path.dirname(os.path.abspath(run.path)), "plots")
        else:  # another log in a run directory (a --replay's replay_S0_S1.jsonl): its own folder
            stem = os.path.splitext(os.path.basename(run_path))[0]
            out_dir = os.path.join(os.path.dirname(os.path.abspath(run_path)), "plots_" + stem)
    os.makedirs(out_dir, exist_ok=True)
    title = f"{os.path.basename(os.path.dirname(os.path.abspath(run.path)))}: {run.label()}"
    written = []
    for name, fn, what in PANELS:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        if not fn(ax, run):
            _empty(ax, what)
        _legend(ax)
        ax.grid(alpha=0.3)
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        p = os.path.join(out_dir, name + ".png")
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p)
    p = os.path.join(out_dir, "max_logit_heads.png")
    plot_heads(run, p, title)
    written.append(p)
    # optional, when the log has the fields: spike z-scores; --replay's full telemetry
    if run.has("loss_z") or run.has("norm_z"):
        fig, ax = plt.subplots(figsize=(8, 4.5))
        if plot_zscores(ax, run):
            _legend(ax)
            ax.grid(alpha=0.3)
            fig.suptitle(title, fontsize=9)
            fig.tight_layout()
            p = os.path.join(out_dir, "spike_z.png")
            fig.savefig(p, dpi=100)
            written.append(p)
        plt.close(fig)
    p = os.path.join(out_dir, "update_rms.png")
    if plot_update_rms(run, p, title):
        written.append(p)
    p = os.path.join(out_dir, "expert_load.png")
    if plot_expert_load(run, p, title):
        written.append(p)
    fig, axes = plt.subplots(3, 2, figsize=(14, 12))
    for ax, (name, fn, what) in zip(axes.flat, PANELS):
        if not fn(ax, run):
            _empty(ax, what)
        _legend(ax)
        ax.grid(alpha=0.3)
    ax = axes.flat[5]
    ax.axis("off")
    ax.text(0.0, 1.0, _summary_text(run), va="top", ha="left", family="monospace", fontsize=8,
            transform=ax.transAxes)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    p = os.path.join(out_dir, "overview.png")
    fig.savefig(p, dpi=90)
    plt.close(fig)
    written.append(p)
    return written, run


def _fmt(v, spec=".4g"):
    return format(v, spec) if isinstance(v, float) and math.isfinite(v) else "n/a"


def _summary_text(run):
    loss = run.series("loss")
    ml = run.series("max_logit")
    vx, vy = run.val_series()
    cx, ch = run.clip_steps()
    lines = [
        f"log: {run.path}",
        f"steps logged: {len(run.steps)}" + (f" ({run.steps[0]}..{run.steps[-1]})" if run.steps else ""),
        f"resumes: {run.resumes if run.resumes else 'none'}",
        f"final train loss: {_fmt(float(loss[-1])) if len(loss) else 'n/a'}",
        f"final val loss: {_fmt(float(vy[-1])) if len(vy) else 'n/a'}",
        f"peak max logit: {_fmt(float(np.nanmax(ml))) if np.isfinite(ml).any() else 'n/a'}",
        f"QK-Clip: tau {run.tau():g}" if run.tau() else "QK-Clip: off",
        f"clip events: {len(cx)} steps, {int(np.nansum(ch)) if len(ch) else 0} head clips",
        f"spikes: {len(run.spike_steps())}, skipped: {len(run.skipped_steps())}, "
        f"non-finite: {len(run.nonfinite_steps())}",
    ]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Plot a train_moe run's log.jsonl as PNGs.")
    ap.add_argument("run", help="run directory (holding log.jsonl) or a log file")
    ap.add_argument("--out", help="directory for the PNGs (default RUN/plots)")
    args = ap.parse_args(argv)
    log = os.path.join(args.run, "log.jsonl") if os.path.isdir(args.run) else args.run
    if not os.path.isfile(log):
        print(f"error: no log at {log}", file=sys.stderr)
        return 2
    written, run = plot_run(args.run, args.out)
    if not run.steps:
        print(f"warning: {log} has no step records; the plots are empty", file=sys.stderr)
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
