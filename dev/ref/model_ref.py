#!/usr/bin/python3
"""Float64 PyTorch reference for tests/test_parity.c, following model/MODEL.md exactly.

An independent implementation of the scaled-down DeepSeek-V3/Kimi-K2 MoE model (MLA attention, dense SwiGLU
layers, sigmoid-routed MoE layers with a shared expert, sequence-wise balance loss, untied LM head), its AdamW
step with global grad-norm clipping, the warmup/cosine LR schedule and the aux-loss-free router-bias update;
or (--optim muon) the Muon step (Nesterov momentum, Newton-Schulz orthogonalisation per hidden matrix, AdamW for
wte / lm_head / RMSNorm gains), and QK-Clip (--qk_clip_tau > 0, applied after either optimizer's step).
Gradients come from torch autograd, so they are independent of the C trainer's hand-written backward.

All parameters live in one flat float64 tensor laid out exactly as MODEL.md's parameter table; every tensor the
model uses is a view into it, so flat.grad is the gradient in the same layout as the C trainer's grad array.

Usage (Debian's python3, torch 1.13 CPU, numpy):
    /usr/bin/python3 dev/ref/model_ref.py --out FILE [--seed S] [--config tiny] [--steps 3] [--E 384 --K 8 ...]
    /usr/bin/python3 dev/ref/model_ref.py --out FILE --config tiny_muon        (Muon + QK-Clip, some heads clipped)
    /usr/bin/python3 dev/ref/model_ref.py --out FILE --config tiny_muon_polar  (Polar Express table, AdamW router)
    /usr/bin/python3 dev/ref/model_ref.py --selfcheck [--seed S] [--config tiny] [...]
Optimizer options: --optim adamw|muon, --muon_router 0|1, --ns default|polar, --mu 0.95, --qk_clip_tau T (0 = off);
the spellings --muon-router / --qk-clip-tau work too.
"""

import argparse
import math
import os
import sys

import numpy as np
import torch

MAGIC = 20261126
VERSION = 2
TIE_MARGIN = 1e-4  # K-th and (K+1)-th biased router scores must differ by more than this in every row
# QK-Clip decisions must not hinge on rounding either: every head's maxlogit must differ from tau by more than
# this fraction of tau in every step's forward, or the case is redrawn like a top-K tie.
CLIP_MARGIN = 1e-3
MAX_REDRAWS = 100

# ----------------------------------------------------------------------------------------------------------------
# Config

INT_FIELDS = ["V", "d", "L", "Ld", "H", "q_lora", "kv_lora", "nope", "rope", "dv", "E", "K", "f", "fd", "B", "T",
              "n_steps", "warmup", "total_steps"]
FLOAT_FIELDS = ["routed_scale", "rope_theta", "eps", "alpha", "gamma", "lr", "min_lr", "b1", "b2", "adam_eps",
                "wd", "clip", "mu", "qk_clip_tau"]   # in this order fhdr[0..13]
# Optimizer choices, in the file as ihdr[22] optimizer, ihdr[23] muon_router, ihdr[24] NS table.
OPTIMS = ["adamw", "muon"]          # ihdr[22]: index
NS_TABLES = {                        # ihdr[24]: 0 default, 1 polar
    "default": [(3.4445, -4.7750, 2.0315)] * 5,
    "polar": [(8.156554524902461, -22.48329292557795, 15.878769915207462),
              (4.042929935166739, -2.808917465908714, 0.5000178451051316),
              (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
              (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
              (2.3465413258596377, -1.7097828382687081, 0.42323551169305323)],
}
NS_NAMES = ["default", "polar"]
# Reference-only init scales (not in the file): matrices N(0, mat_std), gains 1 + N(0, norm_std),
# router_bias N(0, bias_std); qk_std > 0 replaces mat_std for wuq and wukv only (larger attention logits, so
# QK-Clip has realistic work to do); qk_std = 0 means mat_std.
INIT_FIELDS = ["mat_std", "norm_std", "bias_std", "qk_std"]

CONFIGS = {
    # Default test config: small, non-power-of-two, all-different sizes so layout bugs show up.
    "tiny": dict(V=97, d=32, L=3, Ld=1, H=2, q_lora=16, kv_lora=12, nope=8, rope=4, dv=6, E=12, K=3, f=8, fd=24,
                 B=4, T=16, routed_scale=2.827, rope_theta=50000.0, eps=1e-6, alpha=0.01, gamma=1e-3, lr=1e-2,
                 min_lr=1e-3, b1=0.9, b2=0.95, adam_eps=1e-8, wd=0.1, clip=1.0, warmup=1, total_steps=3,
                 n_steps=3, mat_std=0.1, norm_std=0.1, bias_std=0.05, qk_std=0.0,
                 optim="adamw", muon_router=1, ns="default", mu=0.95, qk_clip_tau=0.0),
}
# Muon + QK-Clip on the tiny trunk. wuq/wukv drawn with std 0.5 instead of 0.1 so the first forward's per-head
# maxlogits spread over ~5-11 (seed 1337) instead of ~0.5-0.75 (more realistic, and gamma well below 1); tau = 8.5
# sits between them, so some heads (not all) are clipped in every step: 4, 2, 2 of 6 (default table), 4, 2, 3
# (polar), every maxlogit at least 1.6% away from tau.
CONFIGS["tiny_muon"] = dict(CONFIGS["tiny"], optim="muon", muon_router=1, ns="default", n_steps=3,
                            qk_std=0.5, qk_clip_tau=8.5)
# The Polar Express table, router left to AdamW.
CONFIGS["tiny_muon_polar"] = dict(CONFIGS["tiny_muon"], ns="polar", muon_router=0)
# K2's routing shape (384 experts, top-8) on the tiny trunk. With 384 sigmoid scores the K-th/(K+1)-th gap is
# ~0.007 on average, so few draws pass the 1e-4 tie guard in every row of every forward; fewer rows and a wider
# router_bias make a tie-free draw likely within a few redraws.
CONFIGS["k2route"] = dict(CONFIGS["tiny"], E=384, K=8, B=1, T=32, bias_std=0.2)


def make_config(args):
    cfg = dict(CONFIGS[args.config])
    for k in INT_FIELDS + FLOAT_FIELDS + INIT_FIELDS + ["optim", "muon_router", "ns"]:
        v = getattr(args, k)
        if v is not None:
            cfg[k] = v
    if args.steps is not None:
        cfg["n_steps"] = args.steps
    # The C side reads the float header as float32; compute with exactly those values.
    for k in FLOAT_FIELDS:
        cfg[k] = float(np.float32(cfg[k]))
    c = cfg
    assert 0 <= c["Ld"] <= c["L"], "need 0 <= Ld <= L"
    assert c["rope"] % 2 == 0, "rope must be even (adjacent pairs)"
    assert 1 <= c["K"] <= c["E"], "need 1 <= K <= E"
    assert c["optim"] in OPTIMS and c["ns"] in NS_TABLES and c["muon_router"] in (0, 1)
    assert c["qk_clip_tau"] >= 0.0, "qk_clip_tau must be >= 0 (0 = off)"
    c["Lm"] = c["L"] - c["Ld"]
    c["dqk"] = c["nope"] + c["rope"]
    c["N"] = c["B"] * c["T"]
    return cfg


# ----------------------------------------------------------------------------------------------------------------
# Parameter layout (MODEL.md table, in order). decay: AdamW weight decay applies (by role: all matrices,
# stacked or not; never the RMSNorm gains, even the stacked (L, d) ones).

def param_specs(c):
    V, d, L, Ld, Lm, H = c["V"], c["d"], c["L"], c["Ld"], c["Lm"], c["H"]
    ql, kvl, nope, rope, dv, dqk = c["q_lora"], c["kv_lora"], c["nope"], c["rope"], c["dv"], c["dqk"]
    E, f, fd = c["E"], c["f"], c["fd"]
    # (name, shape, kind) kind: "mat" (matrix / stack of matrices, decayed) or "norm" (RMSNorm gain, no decay)
    return [
        ("wte", (V, d), "mat"),
        ("attn_norm", (L, d), "norm"),
        ("wdq", (L, ql, d), "mat"),
        ("q_norm", (L, ql), "norm"),
        ("wuq", (L, H * dqk, ql), "mat"),
        ("wdkv", (L, kvl + rope, d), "mat"),
        ("kv_norm", (L, kvl), "norm"),
        ("wukv", (L, H * (nope + dv), kvl), "mat"),
        ("wo", (L, d, H * dv), "mat"),
        ("ffn_norm", (L, d), "norm"),
        ("dense_w13", (Ld, 2 * fd, d), "mat"),
        ("dense_w2", (Ld, d, fd), "mat"),
        ("router", (Lm, E, d), "mat"),
        ("shared_w13", (Lm, 2 * f, d), "mat"),
        ("shared_w2", (Lm, d, f), "mat"),
        ("expert_w13", (Lm, E, 2 * f, d), "mat"),
        ("expert_w2", (Lm, E, d, f), "mat"),
        ("final_norm", (d,), "norm"),
        ("lm_head", (V, d), "mat"),
    ]


class Layout:
    def __init__(self, c):
        self.specs = param_specs(c)
        self.offsets = {}
        off = 0
        for name, shape, kind in self.specs:
            n = int(np.prod(shape))
            self.offsets[name] = (off, n, shape, kind)
            off += n
        self.n_params = off

    def views(self, flat):
        """Dict name -> view of flat with the table's shape (autograd flows back into flat)."""
        return {name: flat[off:off + n].view(shape) for name, (off, n, shape, _) in self.offsets.items()}

    def decay_mask(self):
        """(n_params,) float64: 1 where weight decay applies."""
        m = torch.zeros(self.n_params, dtype=torch.float64)
        for name, (off, n, shape, kind) in self.offsets.items():
            if kind == "mat":
                m[off:off + n] = 1.0
        return m


def muon_matrices(c, layout, muon_router):
    """MODEL.md's Muon list: (name, off, A, B) per matrix, each a contiguous (A, B) row-major block of flat.
    Fused w13 blocks split into W1 (first hid rows) and W3 (next hid rows); every layer / expert separately."""
    L, Ld, Lm, E, f, fd = c["L"], c["Ld"], c["Lm"], c["E"], c["f"], c["fd"]
    out = []
    for name in ("wdq", "wuq", "wdkv", "wukv", "wo"):
        off0, n, shape, _ = layout.offsets[name]
        A, B = shape[1], shape[2]
        for l in range(L):
            out.append(("%s[%d]" % (name, l), off0 + l * A * B, A, B))
    off_w13, off_w2 = layout.offsets["dense_w13"][0], layout.offsets["dense_w2"][0]
    for l in range(Ld):
        base = off_w13 + l * 2 * fd * c["d"]
        out.append(("dense_w13[%d].W1" % l, base, fd, c["d"]))
        out.append(("dense_w13[%d].W3" % l, base + fd * c["d"], fd, c["d"]))
        out.append(("dense_w2[%d]" % l, off_w2 + l * c["d"] * fd, c["d"], fd))
    for m in range(Lm):
        if muon_router:
            out.append(("router[%d]" % m, layout.offsets["router"][0] + m * E * c["d"], E, c["d"]))
        base = layout.offsets["shared_w13"][0] + m * 2 * f * c["d"]
        out.append(("shared_w13[%d].W1" % m, base, f, c["d"]))
        out.append(("shared_w13[%d].W3" % m, base + f * c["d"], f, c["d"]))
        out.append(("shared_w2[%d]" % m, layout.offsets["shared_w2"][0] + m * c["d"] * f, c["d"], f))
        for e in range(E):
            base = layout.offsets["expert_w13"][0] + (m * E + e) * 2 * f * c["d"]
            out.append(("expert_w13[%d,%d].W1" % (m, e), base, f, c["d"]))
            out.append(("expert_w13[%d,%d].W3" % (m, e), base + f * c["d"], f, c["d"]))
            out.append(("expert_w2[%d,%d]" % (m, e), layout.offsets["expert_w2"][0] + (m * E + e) * c["d"] * f,
                        c["d"], f))
    return out


def adamw_set(layout, muon_router):
    """Names of the tensors AdamW keeps under --optim muon."""
    names = ["wte", "lm_head"] + [n for n, (_, _, _, kind) in layout.offsets.items() if kind == "norm"]
    if not muon_router:
        names.append("router")
    return names


def group_coverage(c, layout, muon_router):
    """(n_params,) int counts: how many optimizer groups (Muon matrices + AdamW tensors) hold each parameter."""
    cov = torch.zeros(layout.n_params, dtype=torch.long)
    for _, off, A, B in muon_matrices(c, layout, muon_router):
        cov[off:off + A * B] += 1
    for name in adamw_set(layout, muon_router):
        off, n, _, _ = layout.offsets[name]
        cov[off:off + n] += 1
    return cov


# ----------------------------------------------------------------------------------------------------------------
# Random draw of one test case (params, router_bias, tokens, targets), from torch's generator.

def draw_case(c, layout, seed):
    g = torch.Generator().manual_seed(seed)
    flat = torch.empty(layout.n_params, dtype=torch.float64)
    for name, (off, n, shape, kind) in layout.offsets.items():
        z = torch.randn(n, generator=g, dtype=torch.float64)
        std = c["qk_std"] if name in ("wuq", "wukv") and c["qk_std"] > 0 else c["mat_std"]
        flat[off:off + n] = (1.0 + c["norm_std"] * z) if kind == "norm" else std * z
    bias = c["bias_std"] * torch.randn(c["Lm"] * c["E"], generator=g, dtype=torch.float64)  # (Lm*E,)
    tokens = torch.randint(0, c["V"], (c["B"], c["T"]), generator=g)
    targets = torch.randint(0, c["V"], (c["B"], c["T"]), generator=g)
    # The file stores float32; start from exactly those values so the C run starts from the same point.
    flat = flat.float().double()
    bias = bias.float().double().view(c["Lm"], c["E"])
    return flat, bias, tokens, targets


# ----------------------------------------------------------------------------------------------------------------
# Model pieces

def rmsnorm(x, g, eps):
    # x (..., n), g (n,)
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * g


def rope_tables(c, T):
    # cos/sin (T, rope/2): angle t * theta^(-2i/rope)
    half = c["rope"] // 2
    i = torch.arange(half, dtype=torch.float64)
    w = c["rope_theta"] ** (-2.0 * i / c["rope"])               # (rope/2,)
    a = torch.arange(T, dtype=torch.float64)[:, None] * w[None]  # (T, rope/2)
    return torch.cos(a), torch.sin(a)


def apply_rope(x, cos, sin):
    # x (B, T, ..., rope) with pairs (2i, 2i+1); cos/sin (T, rope/2), broadcast over the dims between T and rope.
    shp = x.shape
    xp = x.reshape(*shp[:-1], shp[-1] // 2, 2)
    x0, x1 = xp[..., 0], xp[..., 1]                 # (B, T, ..., rope/2)
    extra = x.dim() - 3                             # dims between T and the last one
    cs = cos.view(cos.shape[0], *([1] * extra), cos.shape[1])
    sn = sin.view(sin.shape[0], *([1] * extra), sin.shape[1])
    y0 = x0 * cs - x1 * sn
    y1 = x0 * sn + x1 * cs
    return torch.stack([y0, y1], dim=-1).reshape(shp)


def swiglu(h, w13, w2):
    # h (n, d), w13 (2*hid, d), w2 (d, hid) -> (n, d)
    hid = w2.shape[1]
    u = h @ w13.t()                                  # (n, 2*hid)
    return (torch.nn.functional.silu(u[:, :hid]) * u[:, hid:]) @ w2.t()


def attention(c, p, l, h, cos, sin):
    """MLA for layer l. h (N, d) normed input. Returns out (N, d) and maxlogit (H,) (detached)."""
    B, T, N, H = c["B"], c["T"], c["N"], c["H"]
    nope, rope, dv, dqk, kvl = c["nope"], c["rope"], c["dv"], c["dqk"], c["kv_lora"]
    cq = rmsnorm(h @ p["wdq"][l].t(), p["q_norm"][l], c["eps"])          # (N, q_lora)
    q = (cq @ p["wuq"][l].t()).view(B, T, H, dqk)                        # (B, T, H, dqk)
    q = torch.cat([q[..., :nope], apply_rope(q[..., nope:], cos, sin)], dim=-1)
    a = h @ p["wdkv"][l].t()                                             # (N, kv_lora + rope)
    kr = apply_rope(a[:, kvl:].view(B, T, rope), cos, sin)               # (B, T, rope) shared by all heads
    ckv = rmsnorm(a[:, :kvl], p["kv_norm"][l], c["eps"])                 # (N, kv_lora)
    kv = (ckv @ p["wukv"][l].t()).view(B, T, H, nope + dv)               # (B, T, H, nope + dv)
    k = torch.cat([kv[..., :nope], kr[:, :, None, :].expand(B, T, H, rope)], dim=-1)  # (B, T, H, dqk)
    v = kv[..., nope:]                                                   # (B, T, H, dv)
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, *)
    S = (qh @ kh.transpose(-1, -2)) / math.sqrt(dqk)                     # (B, H, T, T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()                  # j <= i
    maxlogit = S.detach().masked_fill(~causal, -math.inf).amax(dim=(0, 2, 3))  # (H,)
    P = torch.softmax(S.masked_fill(~causal, -math.inf), dim=-1)         # (B, H, T, T)
    o = (P @ vh).transpose(1, 2).reshape(N, H * dv)                      # (N, H*dv), head h at h*dv
    return o @ p["wo"][l].t(), maxlogit


def moe(c, p, m, h2, bias_m):
    """MoE layer with MoE index m. h2 (N, d); bias_m (E,). Returns out (N, d), balance loss, sel (N, K) ascending,
    load (E,), min top-K gap (float)."""
    B, T, N, E, K = c["B"], c["T"], c["N"], c["E"], c["K"]
    s = torch.sigmoid(h2 @ p["router"][m].t())                           # (N, E)
    biased = (s + bias_m).detach()                                       # selection only, no gradient
    top = torch.topk(biased, K, dim=-1)
    idx = top.indices                                                    # (N, K)
    if K < E:
        srt = torch.sort(biased, dim=-1, descending=True).values
        gap = float((srt[:, K - 1] - srt[:, K]).min())
    else:
        gap = math.inf
    sg = torch.gather(s, 1, idx)                                         # (N, K) unbiased scores
    gates = c["routed_scale"] * sg / sg.sum(-1, keepdim=True)           # (N, K)

    out = swiglu(h2, p["shared_w13"][m], p["shared_w2"][m])             # shared expert
    routed = torch.zeros_like(h2)
    for e in range(E):
        rows, slot = (idx == e).nonzero(as_tuple=True)
        if rows.numel() == 0:
            continue
        y = swiglu(h2[rows], p["expert_w13"][m, e], p["expert_w2"][m, e])  # (n_e, d)
        routed = routed.index_add(0, rows, gates[rows, slot][:, None] * y)
    out = out + routed

    onehot = torch.zeros(N, E, dtype=torch.float64).scatter_(1, idx, 1.0)  # (N, E), no gradient
    cnt = onehot.view(B, T, E).sum(1)                                    # (B, E)
    fi = E / (K * T) * cnt                                               # (B, E)
    Pi = (s / s.sum(-1, keepdim=True)).view(B, T, E).mean(1)             # (B, E)
    bal = c["alpha"] * (fi * Pi).sum(-1).mean()                          # mean over sequences
    load = onehot.sum(0)                                                 # (E,)
    sel = torch.sort(idx, dim=-1).values                                 # (N, K) ascending
    return out, bal, sel, load, gap


def forward(c, layout, flat, bias, tokens, targets):
    """Returns dict: loss, ce, aux (tensors), logits (N, V), maxlogit (L, H), sel (Lm, N, K), load (Lm, E),
    gap (min top-K gap over MoE layers and rows)."""
    p = layout.views(flat)
    T, N, L, Ld = c["T"], c["N"], c["L"], c["Ld"]
    cos, sin = rope_tables(c, T)
    x = p["wte"][tokens.reshape(-1)]                                     # (N, d)
    maxlogit, sels, loads, aux, gap = [], [], [], x.new_zeros(()), math.inf
    for l in range(L):
        h = rmsnorm(x, p["attn_norm"][l], c["eps"])
        att, ml = attention(c, p, l, h, cos, sin)
        maxlogit.append(ml)
        x = x + att
        h2 = rmsnorm(x, p["ffn_norm"][l], c["eps"])
        if l < Ld:
            x = x + swiglu(h2, p["dense_w13"][l], p["dense_w2"][l])
        else:
            m = l - Ld
            y, bal, sel, load, gp = moe(c, p, m, h2, bias[m])
            x = x + y
            aux = aux + bal
            sels.append(sel)
            loads.append(load)
            gap = min(gap, gp)
    logits = rmsnorm(x, p["final_norm"], c["eps"]) @ p["lm_head"].t()    # (N, V)
    ce = torch.nn.functional.cross_entropy(logits, targets.reshape(-1))  # mean over N rows
    loss = ce + aux
    K, E = c["K"], c["E"]
    return dict(loss=loss, ce=ce, aux=aux, logits=logits,
                maxlogit=torch.stack(maxlogit),                                               # (L, H)
                sel=torch.stack(sels) if sels else torch.zeros(0, N, K, dtype=torch.long),  # (Lm, N, K)
                load=torch.stack(loads) if loads else torch.zeros(0, E),                    # (Lm, E)
                gap=gap)


def forward_backward(c, layout, flat, bias, tokens, targets):
    w = flat.detach().clone().requires_grad_(True)
    r = forward(c, layout, w, bias, tokens, targets)
    r["loss"].backward()
    r["grad"] = w.grad.detach()                                          # (n_params,)
    return r


# ----------------------------------------------------------------------------------------------------------------
# Optimizer

def lr_at(c, s):
    lr, min_lr, warmup, total = c["lr"], c["min_lr"], c["warmup"], c["total_steps"]
    if s < warmup:
        return lr * (s + 1) / warmup
    pr = (s - warmup) / max(1, total - warmup)
    pr = min(pr, 1.0)  # past total_steps: stay at min_lr (MODEL.md does not say what happens there)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * pr))


def clip_scale(c, norm):
    if c["clip"] <= 0.0:
        return 1.0
    return min(1.0, c["clip"] / (norm + 1e-6))


def adamw_step(c, s, flat, grad, m, v, decay):
    """One AdamW step (s 0-based) in place on flat/m/v. Returns (lr_s, norm, scale)."""
    lr_s = lr_at(c, s)
    norm = float(torch.sqrt((grad * grad).sum()))
    scale = clip_scale(c, norm)
    g = grad * scale
    m.mul_(c["b1"]).add_((1.0 - c["b1"]) * g)
    v.mul_(c["b2"]).add_((1.0 - c["b2"]) * g * g)
    mhat = m / (1.0 - c["b1"] ** (s + 1))
    vhat = v / (1.0 - c["b2"] ** (s + 1))
    flat.sub_(lr_s * (mhat / (torch.sqrt(vhat) + c["adam_eps"]) + c["wd"] * decay * flat))
    return lr_s, norm, scale


def newton_schulz(U, table):
    """MODEL.md's NS: Frobenius-normalise, work on the short side first, X = a X + (b P + c P P) X, P = X X^T."""
    A, B = U.shape
    X = U / (math.sqrt(float((U * U).sum())) + 1e-7)
    if A > B:
        X = X.t()
    for a, b, cc in table:
        P = X @ X.t()
        Q = b * P + cc * (P @ P)
        X = a * X + Q @ X
    if A > B:
        X = X.t()
    return X.contiguous()


def muon_step(c, s, flat, grad, st):
    """One Muon step (s 0-based) in place on flat and the state st (mom, m, v, mats, adam_mask, decay).
    Clip scale over all gradients; Muon for st["mats"], AdamW (same formulas as adamw_step) for st["adam_mask"].
    Returns (lr_s, norm, scale)."""
    lr_s = lr_at(c, s)
    norm = float(torch.sqrt((grad * grad).sum()))
    scale = clip_scale(c, norm)
    g = grad * scale
    # AdamW part (wte, lm_head, RMSNorm gains, and the router if muon_router = 0)
    a = st["adam_mask"]
    m, v = st["m"], st["v"]
    m[a] = c["b1"] * m[a] + (1.0 - c["b1"]) * g[a]
    v[a] = c["b2"] * v[a] + (1.0 - c["b2"]) * g[a] * g[a]
    mhat = m[a] / (1.0 - c["b1"] ** (s + 1))
    vhat = v[a] / (1.0 - c["b2"] ** (s + 1))
    flat[a] = flat[a] - lr_s * (mhat / (torch.sqrt(vhat) + c["adam_eps"]) + c["wd"] * st["decay"][a] * flat[a])
    # Muon part, matrix by matrix
    table, mu = NS_TABLES[c["ns"]], c["mu"]
    for _, off, A, B in st["mats"]:
        G = g[off:off + A * B].view(A, B)
        M = st["mom"][off:off + A * B].view(A, B)
        M.mul_(mu).add_(G)                               # M = mu M + G
        U = G + mu * M                                   # Nesterov
        O = newton_schulz(U, table)
        W = flat[off:off + A * B].view(A, B)
        W.sub_(lr_s * (0.2 * math.sqrt(max(A, B)) * O + c["wd"] * W))
    return lr_s, norm, scale


def qk_clip(c, layout, flat, maxlogit, tau, only_layer=None):
    """QK-Clip in place on flat: for every (l, h) with maxlogit[l, h] > tau scale that head's q-nope rows of wuq by
    sqrt(gamma), q-rope rows by gamma, k-nope rows of wukv by sqrt(gamma), gamma = tau / maxlogit.
    Returns the list of (l, h, maxlogit, gamma) clipped."""
    if tau <= 0.0:
        return []
    p = layout.views(flat)
    H, nope, rope, dv, dqk = c["H"], c["nope"], c["rope"], c["dv"], c["dqk"]
    clipped = []
    for l in range(c["L"]):
        if only_layer is not None and l != only_layer:
            continue
        for h in range(H):
            ml = float(maxlogit[l, h])
            if ml > tau:
                gm = tau / ml
                p["wuq"][l, h * dqk: h * dqk + nope] *= math.sqrt(gm)
                p["wuq"][l, h * dqk + nope: h * dqk + nope + rope] *= gm
                p["wukv"][l, h * (nope + dv): h * (nope + dv) + nope] *= math.sqrt(gm)
                clipped.append((l, h, ml, gm))
    return clipped


def bias_update(c, bias, load):
    # bias (Lm, E), load (Lm, E) counts over the N rows of the (global) batch
    mean_load = c["N"] * c["K"] / c["E"]
    bias.add_(c["gamma"] * torch.sign(mean_load - load))


# ----------------------------------------------------------------------------------------------------------------
# The full run: first forward/backward + n_steps optimizer steps, with the tie guard.

class Tie(Exception):
    pass


def run_case(c, layout, seed):
    flat, bias, tokens, targets = draw_case(c, layout, seed)
    init_flat, init_bias = flat.clone(), bias.clone()

    first = forward_backward(c, layout, flat, bias, tokens, targets)
    if first["gap"] <= TIE_MARGIN:
        raise Tie("first forward: top-K gap %.3g" % first["gap"])
    first["norm"] = float(torch.sqrt((first["grad"] ** 2).sum()))

    decay = layout.decay_mask()
    m = torch.zeros_like(flat)
    v = torch.zeros_like(flat)
    tau = c["qk_clip_tau"]
    if c["optim"] == "muon":
        mats = muon_matrices(c, layout, c["muon_router"])
        adam_mask = torch.zeros(layout.n_params, dtype=torch.bool)
        for name in adamw_set(layout, c["muon_router"]):
            off, n, _, _ = layout.offsets[name]
            adam_mask[off:off + n] = True
        st = dict(mom=torch.zeros_like(flat), m=m, v=v, mats=mats, adam_mask=adam_mask, decay=decay)
    steps = []
    for s in range(c["n_steps"]):
        r = forward_backward(c, layout, flat, bias, tokens, targets)
        if r["gap"] <= TIE_MARGIN:
            raise Tie("step %d: top-K gap %.3g" % (s, r["gap"]))
        clip_gap = math.inf
        if tau > 0.0:
            clip_gap = float((r["maxlogit"] - tau).abs().min()) / tau
            if clip_gap <= CLIP_MARGIN:
                raise Tie("step %d: a head's maxlogit is within %.3g*tau of tau" % (s, clip_gap))
        if c["optim"] == "muon":
            lr_s, norm, scale = muon_step(c, s, flat, r["grad"], st)
        else:
            lr_s, norm, scale = adamw_step(c, s, flat, r["grad"], m, v, decay)
        bias_update(c, bias, r["load"])
        clipped = qk_clip(c, layout, flat, r["maxlogit"], tau)
        steps.append(dict(loss=float(r["loss"]), ce=float(r["ce"]), aux=float(r["aux"]), lr=lr_s, norm=norm,
                          scale=scale, gap=r["gap"], maxlogit=r["maxlogit"].clone(), clipped=clipped,
                          clip_gap=clip_gap))
    return dict(seed=seed, flat0=init_flat, bias0=init_bias, tokens=tokens, targets=targets, first=first,
                steps=steps, flat=flat, bias=bias)


def run_with_guard(c, layout, seed, max_redraws):
    for attempt in range(max_redraws):
        sd = seed + 1000 * attempt
        try:
            return run_case(c, layout, sd)
        except Tie as t:
            print("tie guard: seed %d: %s <= %g; redrawing with seed %d"
                  % (sd, t, TIE_MARGIN, seed + 1000 * (attempt + 1)))
    sys.exit("tie guard: no tie-free draw in %d attempts" % max_redraws)


# ----------------------------------------------------------------------------------------------------------------
# Debug-state file

def expected_size(c, n_params):
    N, V, L, H, Lm, E, K, S = c["N"], c["V"], c["L"], c["H"], c["Lm"], c["E"], c["K"], c["n_steps"]
    words = (64 + 64 + 2 * N + n_params + Lm * E
             + N * V + 3 + L * H + Lm * N * K + n_params + 1
             + 2 * S + n_params + Lm * E
             + S * L * H + S)                       # version 2: step_maxlogit, step_clipped
    return 4 * words


def write_state(path, c, layout, res):
    ihdr = np.zeros(64, dtype="<i4")
    ivals = [MAGIC, VERSION, c["V"], c["d"], c["L"], c["Ld"], c["H"], c["q_lora"], c["kv_lora"], c["nope"],
             c["rope"], c["dv"], c["E"], c["K"], c["f"], c["fd"], c["B"], c["T"], c["n_steps"], layout.n_params,
             c["warmup"], c["total_steps"],
             OPTIMS.index(c["optim"]), c["muon_router"], NS_NAMES.index(c["ns"])]   # [22], [23], [24]
    ihdr[:len(ivals)] = ivals
    fhdr = np.zeros(64, dtype="<f4")
    fhdr[:len(FLOAT_FIELDS)] = [c[k] for k in FLOAT_FIELDS]
    f1 = res["first"]

    def f32(t):
        return np.asarray(t.detach().numpy() if torch.is_tensor(t) else t, dtype=np.float64).astype("<f4").ravel()

    def i32(t):
        return np.asarray(t.numpy() if torch.is_tensor(t) else t).astype("<i4").ravel()

    with open(path, "wb") as fp:
        for arr in [ihdr, fhdr,
                    i32(res["tokens"]), i32(res["targets"]),
                    f32(res["flat0"]), f32(res["bias0"]),
                    f32(f1["logits"]), f32([float(f1["ce"]), float(f1["aux"]), float(f1["loss"])]),
                    f32(f1["maxlogit"]), i32(f1["sel"]), f32(f1["grad"]), f32([f1["norm"]]),
                    f32([s["loss"] for s in res["steps"]]), f32([s["lr"] for s in res["steps"]]),
                    f32(res["flat"]), f32(res["bias"]),
                    f32(np.stack([s["maxlogit"].numpy() for s in res["steps"]]) if res["steps"] else []),
                    i32([len(s["clipped"]) for s in res["steps"]])]:
            arr.tofile(fp)
    size = os.path.getsize(path)
    want = expected_size(c, layout.n_params)
    if size != want:
        sys.exit("internal error: wrote %d bytes, format predicts %d" % (size, want))
    return size


# ----------------------------------------------------------------------------------------------------------------
# Self-check part 1: a second forward, numpy with explicit loops, transcribed line by line from MODEL.md's
# pseudo-code (per row, per head, per expert), to catch vectorisation/layout slips in the torch forward.

def naive_forward(c, layout, flat, bias, tokens, targets):
    P = {name: flat[off:off + n].reshape(shape) for name, (off, n, shape, _) in layout.offsets.items()}
    B, T, N, L, Ld, H, E, K = c["B"], c["T"], c["N"], c["L"], c["Ld"], c["H"], c["E"], c["K"]
    nope, rope, dv, dqk, kvl, eps = c["nope"], c["rope"], c["dv"], c["dqk"], c["kv_lora"], c["eps"]

    def rms(x, g):
        return x / np.sqrt(np.mean(x * x) + eps) * g

    def rot(x, t):
        y = x.copy()
        for i in range(rope // 2):
            a = t * c["rope_theta"] ** (-2.0 * i / rope)
            y[2 * i] = x[2 * i] * math.cos(a) - x[2 * i + 1] * math.sin(a)
            y[2 * i + 1] = x[2 * i] * math.sin(a) + x[2 * i + 1] * math.cos(a)
        return y

    def ffn(hh, w13, w2):
        hid = w2.shape[1]
        z1, z3 = w13[:hid] @ hh, w13[hid:] @ hh
        return w2 @ (z1 / (1.0 + np.exp(-z1)) * z3)

    x = np.stack([P["wte"][tokens.reshape(-1)[n]] for n in range(N)])
    maxlogit = np.full((L, H), -np.inf)
    sels, aux = [], 0.0
    for l in range(L):
        q = np.zeros((N, H, dqk)); k = np.zeros((N, H, dqk)); v = np.zeros((N, H, dv))
        for n in range(N):
            t = n % T
            hh = rms(x[n], P["attn_norm"][l])
            cq = rms(P["wdq"][l] @ hh, P["q_norm"][l])
            qq = P["wuq"][l] @ cq
            a = P["wdkv"][l] @ hh
            kr = rot(a[kvl:], t)
            kv = P["wukv"][l] @ rms(a[:kvl], P["kv_norm"][l])
            for h in range(H):
                q[n, h, :nope] = qq[h * dqk: h * dqk + nope]
                q[n, h, nope:] = rot(qq[h * dqk + nope: (h + 1) * dqk], t)
                k[n, h, :nope] = kv[h * (nope + dv): h * (nope + dv) + nope]
                k[n, h, nope:] = kr
                v[n, h] = kv[h * (nope + dv) + nope: (h + 1) * (nope + dv)]
        o = np.zeros((N, H * dv))
        for b in range(B):
            for h in range(H):
                for i in range(T):
                    S = np.array([q[b * T + i, h] @ k[b * T + j, h] for j in range(i + 1)]) / math.sqrt(dqk)
                    maxlogit[l, h] = max(maxlogit[l, h], S.max())
                    w = np.exp(S - S.max()); w /= w.sum()
                    o[b * T + i, h * dv:(h + 1) * dv] = sum(w[j] * v[b * T + j, h] for j in range(i + 1))
        x = x + o @ P["wo"][l].T
        if l < Ld:
            x = x + np.stack([ffn(rms(x[n], P["ffn_norm"][l]), P["dense_w13"][l], P["dense_w2"][l])
                              for n in range(N)])
        else:
            m = l - Ld
            sel = np.zeros((N, K), dtype=np.int64)
            xn = x.copy()
            for b in range(B):
                cnt = np.zeros(E); Pi = np.zeros(E)
                for t in range(T):
                    n = b * T + t
                    h2 = rms(x[n], P["ffn_norm"][l])
                    s = 1.0 / (1.0 + np.exp(-(P["router"][m] @ h2)))
                    chosen = sorted(np.argsort(-(s + bias[m]), kind="stable")[:K])
                    sel[n] = chosen
                    y = ffn(h2, P["shared_w13"][m], P["shared_w2"][m])
                    for e in chosen:
                        y = y + c["routed_scale"] * s[e] / s[chosen].sum() * ffn(h2, P["expert_w13"][m, e],
                                                                                 P["expert_w2"][m, e])
                    xn[n] = x[n] + y
                    cnt[chosen] += 1
                    Pi += s / s.sum() / T
                aux += c["alpha"] * np.sum(E / (K * T) * cnt * Pi) / B
            x = xn
            sels.append(sel)
    logits = np.stack([P["lm_head"] @ rms(x[n], P["final_norm"]) for n in range(N)])
    tg = targets.reshape(-1)
    ce = np.mean([np.log(np.sum(np.exp(logits[n] - logits[n].max()))) + logits[n].max() - logits[n, tg[n]]
                  for n in range(N)])
    sel = np.array(sels) if sels else np.zeros((0, N, K), dtype=np.int64)
    return dict(ce=ce, aux=aux, loss=ce + aux, logits=logits, maxlogit=maxlogit, sel=sel)


# ----------------------------------------------------------------------------------------------------------------
# Self-check part 2: autograd vs central finite differences, float64.

def selfcheck(c, layout, seed, max_redraws, per_tensor=3, h=1e-5):
    for attempt in range(max_redraws):
        sd = seed + 1000 * attempt
        flat, bias, tokens, targets = draw_case(c, layout, sd)
        r = forward_backward(c, layout, flat, bias, tokens, targets)
        if r["gap"] > TIE_MARGIN:
            break
        print("tie guard: seed %d: top-K gap %.3g <= %g; redrawing" % (sd, r["gap"], TIE_MARGIN))
    else:
        sys.exit("tie guard: no tie-free draw in %d attempts" % max_redraws)
    fails = 0

    # 1. torch forward vs the loop-based numpy transcription of MODEL.md
    work = c["N"] * (c["T"] * c["H"] + c["d"] * 8) * c["L"]
    if work > 2_000_000:
        print("selfcheck: naive forward skipped (config too large for the loop version)")
    else:
        nv = naive_forward(c, layout, flat.numpy(), bias.numpy(), tokens.numpy(), targets.numpy())
        diffs = dict(ce=abs(nv["ce"] - float(r["ce"])), aux=abs(nv["aux"] - float(r["aux"])),
                     logits=float(np.abs(nv["logits"] - r["logits"].detach().numpy()).max()),
                     maxlogit=float(np.abs(nv["maxlogit"] - r["maxlogit"].numpy()).max()))
        same_sel = np.array_equal(nv["sel"], r["sel"].numpy())
        ok = max(diffs.values()) < 1e-10 and same_sel
        fails += not ok
        print("selfcheck: torch forward vs naive loops: max abs diff %s, sel %s: %s"
              % (" ".join("%s %.1e" % kv for kv in diffs.items()), "same" if same_sel else "DIFFERENT",
                 "ok" if ok else "FAIL"))

    # 2. autograd vs central differences, on the loss and (router only) on aux alone
    def value_at(w, key):
        with torch.no_grad():
            rr = forward(c, layout, w, bias, tokens, targets)
        if not torch.equal(rr["sel"], r["sel"]):
            raise RuntimeError("expert selection changed under the FD perturbation")
        return float(rr[key])

    w = flat.clone().requires_grad_(True)
    aux = forward(c, layout, w, bias, tokens, targets)["aux"]
    grads = dict(loss=r["grad"], aux=torch.autograd.grad(aux, w)[0] if aux.requires_grad else torch.zeros_like(w))

    g = torch.Generator().manual_seed(seed + 7)
    worst, n = 0.0, 0
    print("selfcheck: autograd vs central differences (h=%g), %d entries per tensor" % (h, per_tensor))
    for name, (off, cnt, shape, kind) in layout.offsets.items():
        if cnt == 0:
            continue
        # mostly entries with a non-zero gradient (e.g. experts that were selected), plus one arbitrary entry
        nz = torch.nonzero(r["grad"][off:off + cnt]).view(-1)
        picks = []
        if nz.numel() > 0:
            picks += [int(nz[i]) for i in torch.randint(0, nz.numel(), (per_tensor - 1,), generator=g)]
        picks += [int(i) for i in torch.randint(0, cnt, (per_tensor - len(picks),), generator=g)]
        for key in (["loss", "aux"] if name == "router" else ["loss"]):
            for j in picks:
                i = off + j
                wp, wm = flat.clone(), flat.clone()
                wp[i] += h
                wm[i] -= h
                num = (value_at(wp, key) - value_at(wm, key)) / (2 * h)
                ana = float(grads[key][i])
                err = abs(num - ana) / max(1e-3 if key == "loss" else 1e-6, abs(num), abs(ana))
                ok = err < 1e-5
                worst = max(worst, err)
                fails += not ok
                n += 1
                print("  %-11s %-4s [%7d] autograd % .10e  fd % .10e  rel %.2e %s"
                      % (name, key, j, ana, num, err, "ok" if ok else "FAIL"))
    print("selfcheck: %d FD entries, worst rel err %.2e (tol 1e-5)" % (n, worst))

    fails += optimizer_selfcheck(c, layout, flat, bias, tokens, targets, seed)
    print("selfcheck: %s" % ("PASS" if fails == 0 else "FAIL (%d)" % fails))
    return fails == 0


# ----------------------------------------------------------------------------------------------------------------
# Self-check part 3: Muon's parameter groups, Newton-Schulz against an SVD, QK-Clip against a re-run forward.

def optimizer_selfcheck(c, layout, flat, bias, tokens, targets, seed):
    fails = 0

    def report(ok, msg):
        nonlocal fails
        fails += not ok
        print("selfcheck: %s: %s" % (msg, "ok" if ok else "FAIL"))

    # 3a. the optimizer groups: every parameter in exactly one Muon matrix or one AdamW tensor
    L, Ld, Lm, E = c["L"], c["Ld"], c["Lm"], c["E"]
    for mr in (1, 0):
        cov = group_coverage(c, layout, mr)
        mats = muon_matrices(c, layout, mr)
        want = 5 * L + 3 * Ld + Lm * (mr + 3 + 3 * E)
        muon_n = sum(A * B for _, _, A, B in mats)
        ok = bool((cov == 1).all()) and len(mats) == want
        report(ok, "muon_router %d: %d Muon matrices (%d params; MODEL.md list predicts %d matrices) + AdamW %s "
               "(%d params) cover all %d params exactly once (min/max count %d/%d)"
               % (mr, len(mats), muon_n, want, ",".join(adamw_set(layout, mr)), layout.n_params - muon_n,
                  layout.n_params, int(cov.min()), int(cov.max())))

    # 3b. Newton-Schulz against an SVD. U = P diag(s) Q^T; NS is an odd matrix polynomial, so NS(U) must be
    # P diag(p(s / (|U|_F + 1e-7))) Q^T with p the scalar recursion x <- a x + b x^3 + c x^5 over the table.
    g = torch.Generator().manual_seed(seed + 11)

    def orth(n, r):
        qq, _ = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))
        return qq

    def scalar_ns(x, table):
        for a, b, cc in table:
            x = a * x + b * x ** 3 + cc * x ** 5
        return x

    for A, B in ((24, 16), (12, 20), (16, 16), (8, 32)):
        r = min(A, B)
        P, Q = orth(A, r), orth(B, r)
        sv = torch.logspace(0, -4, r, dtype=torch.float64) * 3.7       # spread over 4 decades
        U = P @ torch.diag(sv) @ Q.t()
        fro = math.sqrt(float((sv * sv).sum()))
        for tname in NS_NAMES:
            O = newton_schulz(U, NS_TABLES[tname])
            o = torch.diag(P.t() @ O @ Q)                              # singular values along P, Q
            resid = float((O - P @ torch.diag(o) @ Q.t()).abs().max())
            pred = scalar_ns(sv / (fro + 1e-7), NS_TABLES[tname])
            err = float((o - pred).abs().max())
            ok = resid < 1e-12 and err < 1e-12
            report(ok, "NS %-7s (%2d,%2d): O = P diag(o) Q^T to %.1e, o vs scalar recursion %.1e; o for s/|U|_F "
                   ">= 1e-2: [%.4f, %.4f]" % (tname, A, B, resid, err,
                                              float(o[sv / fro >= 1e-2].min()), float(o[sv / fro >= 1e-2].max())))
        # many iterations of the default table: singular values settle in about [0.68, 1.21]
        O = newton_schulz(U, NS_TABLES["default"] * 3)
        o = torch.diag(P.t() @ O @ Q)
        resid = float((O - P @ torch.diag(o) @ Q.t()).abs().max())
        big = sv / fro >= 1e-3
        lo, hi = float(o[big].min()), float(o[big].max())
        ok = resid < 1e-12 and 0.68 <= lo and hi <= 1.21
        report(ok, "NS default x15 (%2d,%2d): singular vectors P, Q to %.1e; singular values for s/|U|_F >= 1e-3 "
               "in [%.4f, %.4f] (want within [0.68, 1.21])" % (A, B, resid, lo, hi))

    # 3c. QK-Clip: clip one layer's heads with a tau between its smallest and largest maxlogit, run the same batch
    # again: clipped heads read tau, the layer's other heads and all earlier layers are unchanged (later layers see
    # a changed input and may move), and only the clipped heads' q-nope/q-rope/k-nope rows changed, by the factors.
    with torch.no_grad():
        ml0 = forward(c, layout, flat, bias, tokens, targets)["maxlogit"]
    H, nope, dv, dqk = c["H"], c["nope"], c["dv"], c["dqk"]
    for l in range(L):
        row = ml0[l]
        tau = 0.5 * (float(row.min()) + float(row.max())) if H > 1 else 0.8 * float(row.max())
        w = flat.clone()
        clipped = qk_clip(c, layout, w, ml0, tau, only_layer=l)
        with torch.no_grad():
            ml1 = forward(c, layout, w, bias, tokens, targets)["maxlogit"]
        chosen = {h for _, h, _, _ in clipped}
        err_clip = max([abs(float(ml1[l, h]) - tau) / tau for h in chosen] or [0.0])
        err_same = max([abs(float(ml1[l, h] - ml0[l, h])) for h in range(H) if h not in chosen] +
                       [float((ml1[:l] - ml0[:l]).abs().max()) if l > 0 else 0.0])
        # which entries moved, and by what factor
        expect = torch.ones(layout.n_params, dtype=torch.float64)
        pv = layout.views(expect)
        for _, h, _, gm in clipped:
            pv["wuq"][l, h * dqk: h * dqk + nope] = math.sqrt(gm)
            pv["wuq"][l, h * dqk + nope: h * dqk + dqk] = gm
            pv["wukv"][l, h * (nope + dv): h * (nope + dv) + nope] = math.sqrt(gm)
        err_rows = float((w - flat * expect).abs().max())
        ok = 0 < len(chosen) and (len(chosen) < H or H == 1) and err_clip < 1e-12 and err_same == 0.0 \
            and err_rows == 0.0
        report(ok, "QK-Clip layer %d tau %.6g: clipped heads %s (gamma %s) re-run maxlogit = tau to %.1e rel; "
               "unclipped heads and earlier layers moved %.1e; only the q-nope/q-rope/k-nope rows scaled (%.1e)"
               % (l, tau, sorted(chosen), ",".join("%.4f" % cl[3] for cl in clipped), err_clip, err_same, err_rows))
    # and the whole model at once (one tau): the first layer with a clipped head reads tau exactly
    tau = float(ml0.median())
    w = flat.clone()
    clipped = qk_clip(c, layout, w, ml0, tau)
    with torch.no_grad():
        ml1 = forward(c, layout, w, bias, tokens, targets)["maxlogit"]
    l0 = min(l for l, _, _, _ in clipped)
    heads0 = {h for l, h, _, _ in clipped if l == l0}
    err_clip = max(abs(float(ml1[l0, h]) - tau) / tau for h in heads0)
    err_same = max([abs(float(ml1[l0, h] - ml0[l0, h])) for h in range(H) if h not in heads0] +
                   [float((ml1[:l0] - ml0[:l0]).abs().max()) if l0 > 0 else 0.0])
    ok = err_clip < 1e-12 and err_same == 0.0 and 0 < len(clipped) < L * H
    report(ok, "QK-Clip all layers, tau %.6g (median): %d of %d heads clipped; first clipped layer %d reads tau to "
           "%.1e rel, its other heads and earlier layers unchanged (%.1e)"
           % (tau, len(clipped), L * H, l0, err_clip, err_same))
    return fails


# ----------------------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="debug-state file to write")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    ap.add_argument("--steps", type=int, default=None, help="n_steps (same as --n_steps)")
    ap.add_argument("--selfcheck", action="store_true", help="check autograd against finite differences")
    def opt(k, **kw):
        names = ["--" + k] + (["--" + k.replace("_", "-")] if "_" in k else [])
        ap.add_argument(*names, dest=k, default=None, **kw)
    for k in INT_FIELDS:
        opt(k, type=int)
    for k in FLOAT_FIELDS + INIT_FIELDS:
        opt(k, type=float)
    opt("optim", choices=OPTIMS, help="optimizer (default adamw; the muon presets set muon)")
    opt("muon_router", type=int, choices=[0, 1], help="1: the router matrices go to Muon (default), 0: AdamW")
    opt("ns", choices=NS_NAMES, help="Newton-Schulz coefficient table (default 'default')")
    ap.add_argument("--max_redraws", type=int, default=MAX_REDRAWS)
    args = ap.parse_args()
    if not args.out and not args.selfcheck:
        ap.error("give --out FILE and/or --selfcheck")

    torch.set_num_threads(max(1, torch.get_num_threads()))
    c = make_config(args)
    layout = Layout(c)
    print("config %s: %s" % (args.config, " ".join("%s=%s" % (k, c[k]) for k in INT_FIELDS)))
    print("  %s" % " ".join("%s=%.9g" % (k, c[k]) for k in FLOAT_FIELDS + INIT_FIELDS))
    print("  optim=%s muon_router=%d ns=%s" % (c["optim"], c["muon_router"], c["ns"]))
    print("n_params %d, Lm %d, N %d" % (layout.n_params, c["Lm"], c["N"]))

    ok = True
    if args.out:
        res = run_with_guard(c, layout, args.seed, args.max_redraws)
        f1 = res["first"]
        print("seed used %d" % res["seed"])
        print("first forward: ce %.6f  aux %.6f  loss %.6f  grad_norm %.6f  clip scale %.6f  min top-K gap %.3g"
              % (float(f1["ce"]), float(f1["aux"]), float(f1["loss"]), f1["norm"], clip_scale(c, f1["norm"]),
                 f1["gap"]))
        print("maxlogit (L, H): %s" % np.array2string(f1["maxlogit"].numpy(), precision=4))
        for s, st in enumerate(res["steps"]):
            print("step %d: loss %.6f (ce %.6f aux %.6f)  lr %.6g  grad_norm %.6f  clip scale %.6f%s  gap %.3g"
                  % (s, st["loss"], st["ce"], st["aux"], st["lr"], st["norm"], st["scale"],
                     " (clipped)" if st["scale"] < 1.0 else "", st["gap"]))
            if c["qk_clip_tau"] > 0.0:
                print("  maxlogit %s  (min |maxlogit - tau| / tau %.3g)"
                      % (np.array2string(st["maxlogit"].numpy().ravel(), precision=4), st["clip_gap"]))
                print("  qk-clip tau %.6g: %d of %d heads clipped%s" % (
                    c["qk_clip_tau"], len(st["clipped"]), c["L"] * c["H"],
                    "".join("  (l%d h%d maxlogit %.6f gamma %.6f)" % cl for cl in st["clipped"])))
        if c["n_steps"] and not any(st["scale"] < 1.0 for st in res["steps"]):
            print("note: the grad-norm clip was not active in any step")
        if c["qk_clip_tau"] > 0.0 and not any(0 < len(st["clipped"]) < c["L"] * c["H"] for st in res["steps"]):
            print("note: no step clipped some but not all heads")
        size = write_state(args.out, c, layout, res)
        print("wrote %s: %d bytes (matches the format)" % (args.out, size))
    if args.selfcheck:
        ok = selfcheck(c, layout, args.seed, args.max_redraws)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
