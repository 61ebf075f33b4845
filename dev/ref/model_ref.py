#!/usr/bin/python3
"""Float64 PyTorch reference for tests/test_parity.c, following model/MODEL.md exactly.

An independent implementation of the scaled-down DeepSeek-V3/Kimi-K2 MoE model (MLA attention, dense SwiGLU
layers, sigmoid-routed MoE layers with a shared expert, sequence-wise balance loss, untied LM head), its AdamW
step with global grad-norm clipping, the warmup/cosine LR schedule and the aux-loss-free router-bias update.
Gradients come from torch autograd, so they are independent of the C trainer's hand-written backward.

All parameters live in one flat float64 tensor laid out exactly as MODEL.md's parameter table; every tensor the
model uses is a view into it, so flat.grad is the gradient in the same layout as the C trainer's grad array.

Usage (Debian's python3, torch 1.13 CPU, numpy):
    /usr/bin/python3 dev/ref/model_ref.py --out FILE [--seed S] [--config tiny] [--steps 3] [--E 384 --K 8 ...]
    /usr/bin/python3 dev/ref/model_ref.py --selfcheck [--seed S] [--config tiny] [...]
"""

import argparse
import math
import os
import sys

import numpy as np
import torch

MAGIC = 20261126
VERSION = 1
TIE_MARGIN = 1e-4  # K-th and (K+1)-th biased router scores must differ by more than this in every row
MAX_REDRAWS = 100

# ----------------------------------------------------------------------------------------------------------------
# Config

INT_FIELDS = ["V", "d", "L", "Ld", "H", "q_lora", "kv_lora", "nope", "rope", "dv", "E", "K", "f", "fd", "B", "T",
              "n_steps", "warmup", "total_steps"]
FLOAT_FIELDS = ["routed_scale", "rope_theta", "eps", "alpha", "gamma", "lr", "min_lr", "b1", "b2", "adam_eps",
                "wd", "clip"]
# Reference-only init scales (not in the file): matrices N(0, mat_std), gains 1 + N(0, norm_std),
# router_bias N(0, bias_std).
INIT_FIELDS = ["mat_std", "norm_std", "bias_std"]

CONFIGS = {
    # Default test config: small, non-power-of-two, all-different sizes so layout bugs show up.
    "tiny": dict(V=97, d=32, L=3, Ld=1, H=2, q_lora=16, kv_lora=12, nope=8, rope=4, dv=6, E=12, K=3, f=8, fd=24,
                 B=4, T=16, routed_scale=2.827, rope_theta=50000.0, eps=1e-6, alpha=0.01, gamma=1e-3, lr=1e-2,
                 min_lr=1e-3, b1=0.9, b2=0.95, adam_eps=1e-8, wd=0.1, clip=1.0, warmup=1, total_steps=3,
                 n_steps=3, mat_std=0.1, norm_std=0.1, bias_std=0.05),
}
# K2's routing shape (384 experts, top-8) on the tiny trunk. With 384 sigmoid scores the K-th/(K+1)-th gap is
# ~0.007 on average, so few draws pass the 1e-4 tie guard in every row of every forward; fewer rows and a wider
# router_bias make a tie-free draw likely within a few redraws.
CONFIGS["k2route"] = dict(CONFIGS["tiny"], E=384, K=8, B=1, T=32, bias_std=0.2)


def make_config(args):
    cfg = dict(CONFIGS[args.config])
    for k in INT_FIELDS + FLOAT_FIELDS + INIT_FIELDS:
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


# ----------------------------------------------------------------------------------------------------------------
# Random draw of one test case (params, router_bias, tokens, targets), from torch's generator.

def draw_case(c, layout, seed):
    g = torch.Generator().manual_seed(seed)
    flat = torch.empty(layout.n_params, dtype=torch.float64)
    for name, (off, n, shape, kind) in layout.offsets.items():
        z = torch.randn(n, generator=g, dtype=torch.float64)
        flat[off:off + n] = (1.0 + c["norm_std"] * z) if kind == "norm" else c["mat_std"] * z
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
    steps = []
    for s in range(c["n_steps"]):
        r = forward_backward(c, layout, flat, bias, tokens, targets)
        if r["gap"] <= TIE_MARGIN:
            raise Tie("step %d: top-K gap %.3g" % (s, r["gap"]))
        lr_s, norm, scale = adamw_step(c, s, flat, r["grad"], m, v, decay)
        bias_update(c, bias, r["load"])
        steps.append(dict(loss=float(r["loss"]), ce=float(r["ce"]), aux=float(r["aux"]), lr=lr_s, norm=norm,
                          scale=scale, gap=r["gap"]))
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
             + 2 * S + n_params + Lm * E)
    return 4 * words


def write_state(path, c, layout, res):
    ihdr = np.zeros(64, dtype="<i4")
    ivals = [MAGIC, VERSION, c["V"], c["d"], c["L"], c["Ld"], c["H"], c["q_lora"], c["kv_lora"], c["nope"],
             c["rope"], c["dv"], c["E"], c["K"], c["f"], c["fd"], c["B"], c["T"], c["n_steps"], layout.n_params,
             c["warmup"], c["total_steps"]]
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
                    f32(res["flat"]), f32(res["bias"])]:
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
    print("selfcheck: %s" % ("PASS" if fails == 0 else "FAIL (%d)" % fails))
    return fails == 0


# ----------------------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="debug-state file to write")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    ap.add_argument("--steps", type=int, default=None, help="n_steps (same as --n_steps)")
    ap.add_argument("--selfcheck", action="store_true", help="check autograd against finite differences")
    for k in INT_FIELDS:
        ap.add_argument("--" + k, type=int, default=None)
    for k in FLOAT_FIELDS + INIT_FIELDS:
        ap.add_argument("--" + k, type=float, default=None)
    ap.add_argument("--max_redraws", type=int, default=MAX_REDRAWS)
    args = ap.parse_args()
    if not args.out and not args.selfcheck:
        ap.error("give --out FILE and/or --selfcheck")

    torch.set_num_threads(max(1, torch.get_num_threads()))
    c = make_config(args)
    layout = Layout(c)
    print("config %s: %s" % (args.config, " ".join("%s=%s" % (k, c[k]) for k in INT_FIELDS)))
    print("  %s" % " ".join("%s=%.9g" % (k, c[k]) for k in FLOAT_FIELDS + INIT_FIELDS))
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
        if c["n_steps"] and not any(st["scale"] < 1.0 for st in res["steps"]):
            print("note: the grad-norm clip was not active in any step")
        size = write_state(args.out, c, layout, res)
        print("wrote %s: %d bytes (matches the format)" % (args.out, size))
    if args.selfcheck:
        ok = selfcheck(c, layout, args.seed, args.max_redraws)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
