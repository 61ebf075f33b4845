#!/usr/bin/python3
"""PyTorch baseline for the throughput benchmark: the k2-nano model of model/MODEL.md, written the way a PyTorch
user would write it for speed (fp32, nn.Module / nn.Linear, tokens grouped by expert, torch.optim.AdamW), trained
on the same batch shape (B x T) with the same number of threads as ./train_moe.

Same math as model/MODEL.md and dev/ref/model_ref.py: MLA attention with a shared RoPE key, first layer dense
SwiGLU, then MoE layers with a sigmoid router, bias-adjusted top-K selection (bias not in the gates), gates
normalised over the K chosen and scaled by routed_scale, one shared expert, the sequence-wise balance loss
(alpha), the aux-loss-free router-bias update (gamma), untied LM head, AdamW (wd on matrices only), global grad
clip, warmup + cosine LR schedule with the trainer's defaults.

Usage (Debian's python3, torch 1.13 CPU):
    /usr/bin/python3 dev/bench/torch_k2.py [--threads 2] [--steps 20] [--skip 2] [--data FILE | --data random]
                                          [--moe auto|loop|bmm] [--model k2-nano] [--lr 3e-3]
                                          [--malloc tuned|default] [--blas openmp|system]
    /usr/bin/python3 dev/bench/torch_k2.py --check-ref   # vs dev/ref/model_ref.py: loss, maxlogit, expert choice
                                                         # and every gradient (float64, tiny and k2route configs),
                                                         # and 3 AdamW steps with clip and bias update
Prints per-step lines, then `RESULT tok_s=... ms_step=... params=...` (median over the steps after --skip).
--malloc tuned / --blas openmp (the defaults) re-run the script once with the environment they need; the timing
is from fetching the batch to the router-bias update, as train_moe's.
"""

import argparse
import math
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# the presets of model/config.c that fit a CPU benchmark
PRESETS = {
    #          V     d    L  Ld H  q_lora kv_lora nope rope dv  E    K  f   fd   T
    "k2-nano": (4096, 128, 4, 1, 4, 64, 32, 32, 16, 32, 384, 8, 32, 288, 256),
    "k2-l1": (4096, 64, 2, 1, 2, 32, 16, 16, 8, 16, 384, 8, 16, 144, 256),
    "k2-l2": (4096, 96, 3, 1, 3, 48, 24, 24, 12, 24, 384, 8, 24, 216, 256),
    "k2-l3": (4096, 128, 4, 1, 4, 64, 32, 32, 16, 32, 384, 8, 32, 288, 256),
    "k2-l4": (4096, 160, 5, 1, 5, 80, 40, 32, 16, 32, 384, 8, 40, 360, 256),
    "k2-l5": (4096, 192, 6, 1, 6, 96, 48, 32, 16, 32, 384, 8, 48, 432, 256),
}
OPENBLAS_OMP = "/usr/lib/x86_64-linux-gnu/openblas-openmp"
FIELDS = ["V", "d", "L", "Ld", "H", "q_lora", "kv_lora", "nope", "rope", "dv", "E", "K", "f", "fd", "T"]


def preset(name):
    c = dict(zip(FIELDS, PRESETS[name]))
    c.update(routed_scale=2.827, rope_theta=50000.0, eps=1e-6, alpha=1e-4, gamma=1e-3)
    return c


# ----------------------------------------------------------------------------------------------------------------
# Model

class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_cache(T, rope, theta, dtype):
    i = torch.arange(rope // 2, dtype=torch.float64)
    a = torch.arange(T, dtype=torch.float64)[:, None] * theta ** (-2.0 * i / rope)   # (T, rope/2)
    return torch.cos(a).to(dtype), torch.sin(a).to(dtype)


def apply_rope(x, cos, sin):
    # x (B, T, ..., rope), adjacent pairs (2i, 2i+1); cos/sin (T, rope/2) already shaped to broadcast
    x0, x1 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


class MLA(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, H = c["d"], c["H"]
        self.c = c
        self.dqk = c["nope"] + c["rope"]
        self.wdq = nn.Linear(d, c["q_lora"], bias=False)
        self.q_norm = RMSNorm(c["q_lora"], c["eps"])
        self.wuq = nn.Linear(c["q_lora"], H * self.dqk, bias=False)
        self.wdkv = nn.Linear(d, c["kv_lora"] + c["rope"], bias=False)
        self.kv_norm = RMSNorm(c["kv_lora"], c["eps"])
        self.wukv = nn.Linear(c["kv_lora"], H * (c["nope"] + c["dv"]), bias=False)
        self.wo = nn.Linear(H * c["dv"], d, bias=False)

    def forward(self, h, cos, sin, mask):
        # h (B, T, d) normed input
        c = self.c
        B, T, _ = h.shape
        H, nope, rope, dv, kvl = c["H"], c["nope"], c["rope"], c["dv"], c["kv_lora"]
        q = self.wuq(self.q_norm(self.wdq(h))).view(B, T, H, self.dqk)
        q_nope, q_rope = q.split((nope, rope), dim=-1)
        q_rope = apply_rope(q_rope, cos[:, None], sin[:, None])
        a = self.wdkv(h)
        ckv, kr = a.split((kvl, rope), dim=-1)
        kr = apply_rope(kr, cos, sin)                                     # (B, T, rope), shared by the heads
        kv = self.wukv(self.kv_norm(ckv)).view(B, T, H, nope + dv)
        k_nope, v = kv.split((nope, dv), dim=-1)
        q = torch.cat((q_nope, q_rope), dim=-1).transpose(1, 2)           # (B, H, T, dqk)
        k = torch.cat((k_nope, kr[:, :, None, :].expand(B, T, H, rope)), dim=-1).transpose(1, 2)
        s = torch.matmul(q, k.transpose(-1, -2)).mul_(1.0 / math.sqrt(self.dqk))   # (B, H, T, T)
        s = s.masked_fill(mask, float("-inf"))
        maxlogit = s.detach().amax(dim=(0, 2, 3))                         # (H,), recorded only
        p = torch.softmax(s, dim=-1)
        o = torch.matmul(p, v.transpose(1, 2)).transpose(1, 2).reshape(B, T, H * dv)
        return self.wo(o), maxlogit


class SwiGLU(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.hidden = hidden
        self.w13 = nn.Linear(d, 2 * hidden, bias=False)   # rows [0,hidden) W1 (gate), [hidden,2 hidden) W3 (up)
        self.w2 = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        u1, u3 = self.w13(x).split(self.hidden, dim=-1)
        return self.w2(F.silu(u1) * u3)


class MoE(nn.Module):
    def __init__(self, c, mode):
        super().__init__()
        d, E, f = c["d"], c["E"], c["f"]
        self.c, self.mode = c, mode
        self.router = nn.Linear(d, E, bias=False)
        self.shared = SwiGLU(d, f)
        self.w13 = nn.Parameter(torch.empty(E, 2 * f, d))   # routed experts, stacked: W1 then W3 rows
        self.w2 = nn.Parameter(torch.empty(E, d, f))
        self.register_buffer("bias", torch.zeros(E))         # router bias: selection only, no gradient

    def experts_loop(self, xs, counts):
        # one pair of matmuls per expert that got rows (the usual DeepSeek/HF way)
        f = self.c["f"]
        w13s, w2s = self.w13.unbind(0), self.w2.unbind(0)    # unbind: one stacked grad, not E full-size ones
        outs = []
        for e, (chunk, n) in enumerate(zip(xs.split(counts), counts)):
            if n == 0:
                continue
            u1, u3 = F.linear(chunk, w13s[e]).split(f, dim=-1)
            outs.append(F.linear(F.silu(u1) * u3, w2s[e]))
        return torch.cat(outs)

    def experts_bmm(self, xs, counts, e_sorted):
        # pad every expert to the largest count and run two batched matmuls over all E experts
        E, f, d = self.c["E"], self.c["f"], self.c["d"]
        cap = max(counts)
        starts = torch.tensor([0] + counts[:-1]).cumsum(0)
        pos = torch.arange(xs.shape[0]) - starts[e_sorted]
        flat = e_sorted * cap + pos
        xp = xs.new_zeros(E * cap, d).index_copy(0, flat, xs).view(E, cap, d)
        u1, u3 = torch.bmm(xp, self.w13.transpose(1, 2)).split(f, dim=-1)
        y = torch.bmm(F.silu(u1) * u3, self.w2.transpose(1, 2))          # (E, cap, d)
        return y.view(E * cap, d).index_select(0, flat)

    def forward(self, h2):
        c = self.c
        B, T, d = h2.shape
        N, E, K = B * T, c["E"], c["K"]
        x = h2.reshape(N, d)
        s = torch.sigmoid(self.router(x))                                # (N, E)
        sel = torch.topk(s.detach() + self.bias, K, dim=-1).indices      # (N, K), no gradient
        sg = s.gather(1, sel)
        gates = sg * (c["routed_scale"] / sg.sum(-1, keepdim=True))      # (N, K)

        # group the N*K choices by expert
        flat_sel = sel.reshape(-1)
        e_sorted, order = torch.sort(flat_sel, stable=True)
        counts_t = torch.bincount(flat_sel, minlength=E)
        counts = counts_t.tolist()
        xs = x.index_select(0, order // K)                                # (N*K, d) rows grouped by expert
        mode = self.mode
        if mode == "auto":   # padding wastes FLOPs when the load is uneven; then loop
            mode = "bmm" if E * max(counts) <= 2 * N * K else "loop"
        ys = self.experts_loop(xs, counts) if mode == "loop" else self.experts_bmm(xs, counts, e_sorted)
        ys = ys * gates.reshape(-1).index_select(0, order)[:, None]
        inv = torch.empty_like(order)
        inv[order] = torch.arange(N * K)
        routed = ys.index_select(0, inv).view(N, K, d).sum(1)

        # sequence-wise balance loss
        cnt = torch.zeros(B, E, dtype=x.dtype).scatter_add_(1, sel.view(B, T * K),
                                                            torch.ones(B, T * K, dtype=x.dtype))
        fi = cnt * (E / (K * T))
        Pi = (s / s.sum(-1, keepdim=True)).view(B, T, E).mean(1)
        bal = c["alpha"] * (fi * Pi).sum(-1).mean()
        out = self.shared(x) + routed
        return out.view(B, T, d), bal, counts_t, sel


class Block(nn.Module):
    def __init__(self, c, dense, mode):
        super().__init__()
        self.attn_norm = RMSNorm(c["d"], c["eps"])
        self.attn = MLA(c)
        self.ffn_norm = RMSNorm(c["d"], c["eps"])
        self.dense = dense
        self.ffn = SwiGLU(c["d"], c["fd"]) if dense else MoE(c, mode)

    def forward(self, x, cos, sin, mask):
        a, maxlogit = self.attn(self.attn_norm(x), cos, sin, mask)
        x = x + a
        h2 = self.ffn_norm(x)
        if self.dense:
            return x + self.ffn(h2), None, None, maxlogit, None
        y, bal, load, sel = self.ffn(h2)
        return x + y, bal, load, maxlogit, sel


class K2(nn.Module):
    def __init__(self, c, mode="auto"):
        super().__init__()
        self.c = c
        self.wte = nn.Embedding(c["V"], c["d"])
        self.blocks = nn.ModuleList([Block(c, l < c["Ld"], mode) for l in range(c["L"])])
        self.final_norm = RMSNorm(c["d"], c["eps"])
        self.lm_head = nn.Linear(c["d"], c["V"], bias=False)
        cos, sin = rope_cache(c["T"], c["rope"], c["rope_theta"], torch.float64)   # cast per forward
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.register_buffer("mask", torch.ones(c["T"], c["T"], dtype=torch.bool).triu(1), persistent=False)
        self.reset_parameters()

    def reset_parameters(self):
        # MODEL.md: matrices N(0, 0.02); wo and every *_w2 N(0, 0.02/sqrt(2L)); RMSNorm gains 1
        out_std = 0.02 / math.sqrt(2 * self.c["L"])
        for name, p in self.named_parameters():
            if p.dim() < 2:
                nn.init.ones_(p)
            elif name.endswith("wo.weight") or name.endswith("w2.weight") or name.endswith(".w2"):
                nn.init.normal_(p, 0.0, out_std)
            else:
                nn.init.normal_(p, 0.0, 0.02)

    def forward(self, idx, targets):
        B, T = idx.shape
        x = self.wte(idx)
        cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)
        mask = self.mask[:T, :T]
        aux = x.new_zeros(())
        loads, maxlogits, sels = [], [], []
        for blk in self.blocks:
            x, bal, load, ml, sel = blk(x, cos, sin, mask)
            maxlogits.append(ml)
            if bal is not None:
                aux = aux + bal
                loads.append(load)
                sels.append(sel)
        logits = self.lm_head(self.final_norm(x))
        ce = F.cross_entropy(logits.view(B * T, -1), targets.reshape(-1))
        return dict(loss=ce + aux, ce=ce, aux=aux, logits=logits, loads=loads, sels=sels,
                    maxlogit=torch.stack(maxlogits))

    @torch.no_grad()
    def update_router_bias(self, loads, n_rows):
        c = self.c
        mean_load = n_rows * c["K"] / c["E"]
        moes = [b.ffn for b in self.blocks if not b.dense]
        for moe, load in zip(moes, loads):
            moe.bias.add_(c["gamma"] * torch.sign(mean_load - load.to(moe.bias.dtype)))


# ----------------------------------------------------------------------------------------------------------------
# Data: llm.c shards (256 int32 header, then uint16 tokens), non-overlapping windows of T+1 in shuffled order,
# as data/dataloader.c does

class Batches:
    def __init__(self, path, B, T, V, seed):
        self.B, self.T, self.V = B, T, V
        self.g = torch.Generator().manual_seed(seed)
        if path == "random":
            self.tokens = None
            return
        hdr = np.fromfile(path, dtype="<i4", count=256)
        n = int(hdr[2])
        self.tokens = np.memmap(path, dtype="<u2", mode="r", offset=256 * 4, shape=(n,))
        self.n_windows = (n - 1) // T
        self.perm = np.random.default_rng(seed).permutation(self.n_windows)
        self.cursor = 0
        if int(self.tokens.max()) >= V:
            sys.exit("data: token id %d >= vocab %d" % (int(self.tokens.max()), V))

    def next(self):
        B, T = self.B, self.T
        if self.tokens is None:
            buf = torch.randint(0, self.V, (B, T + 1), generator=self.g)
            return buf[:, :T].contiguous(), buf[:, 1:].contiguous()
        rows = []
        for _ in range(B):
            if self.cursor == self.n_windows:
                self.cursor = 0
            w = int(self.perm[self.cursor])
            self.cursor += 1
            rows.append(np.asarray(self.tokens[w * T: w * T + T + 1], dtype=np.int64))
        buf = torch.from_numpy(np.stack(rows))
        return buf[:, :T].contiguous(), buf[:, 1:].contiguous()


def lr_at(step, steps, lr, warmup, min_lr):
    if step < warmup:
        return lr * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, steps - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * p))


def make_optimizer(model, lr, b1, b2, eps, wd):
    # weight decay on every matrix (2+ dims: embedding, LM head, router, attention, FFN, experts), not the gains
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([dict(params=decay, weight_decay=wd), dict(params=no_decay, weight_decay=0.0)],
                             lr=lr, betas=(b1, b2), eps=eps)


def set_lr(opt, lr):
    for group in opt.param_groups:
        group["lr"] = lr


def blas_in_use():
    """'<directory of the loaded OpenBLAS>, core <kernel set>' (OpenBLAS picks its kernels at load time)."""
    import ctypes
    libs = sorted({l.split()[-1] for l in open("/proc/self/maps") if "libopenblas" in l or "libblas.so" in l})
    for path in libs:
        try:
            f = ctypes.CDLL(path).openblas_get_corename
        except (OSError, AttributeError):
            continue
        f.restype = ctypes.c_char_p
        return "%s, core %s" % (os.path.dirname(path), f().decode())
    return ", ".join(libs) or "?"


def sgemm_gflops(n=1024):
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b.t())
    best = 1e30
    for _ in range(3):
        t0 = time.perf_counter()
        torch.mm(a, b.t())
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best / 1e9


# ----------------------------------------------------------------------------------------------------------------
# Training benchmark

def train(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    c = preset(args.model)
    B, T = args.batch_size, c["T"]
    model = K2(c, args.moe)
    n_params = sum(p.numel() for p in model.parameters())
    opt = make_optimizer(model, args.lr, 0.9, 0.95, 1e-8, 0.1)
    warmup = args.steps // 10 if args.steps // 10 < 100 else 100
    data = Batches(args.data, B, T, c["V"], args.seed)
    peak = sgemm_gflops()
    print("torch %s, %d threads (intra-op %d), malloc %s, BLAS %s (%s), torch.mm 1024^3: %.1f GFLOP/s" %
          (torch.__version__, args.threads, torch.get_num_threads(), args.malloc, args.blas, blas_in_use(), peak))
    print("model %s: %s" % (args.model, " ".join("%s=%s" % (k, c[k]) for k in FIELDS)))
    print("parameters: %.3fM total (%d); batch %d x %d = %d tokens/step; moe %s; data %s" %
          (n_params / 1e6, n_params, B, T, B * T, args.moe, args.data))
    times = []
    for step in range(args.steps):
        t0 = time.perf_counter()   # as train_moe's step time: from fetching the batch to the bias update
        idx, tgt = data.next()
        lr = lr_at(step, args.steps, args.lr, warmup, args.lr * 0.1)
        set_lr(opt, lr)
        opt.zero_grad(set_to_none=True)
        r = model(idx, tgt)
        r["loss"].backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        model.update_router_bias(r["loads"], B * T)
        dt = time.perf_counter() - t0
        times.append(dt)
        loads = torch.stack(r["loads"]).float()
        imb = float((loads.max(1).values / loads.mean(1)).max())
        print("step %3d/%d | loss %.4f (aux %.4f) | lr %.2e | norm %.3f | %7.1f ms | %7.1f tok/s | "
              "maxlogit %.2f | load max/mean %.2f" %
              (step + 1, args.steps, float(r["loss"]), float(r["aux"]), lr, float(norm), dt * 1e3,
               B * T / dt, float(r["maxlogit"].max()), imb), flush=True)
    kept = times[args.skip:] if len(times) > args.skip else times
    med = statistics.median(kept)
    print("RESULT tok_s=%.1f ms_step=%.1f params=%d steps_timed=%d threads=%d sgemm_gflops=%.1f malloc=%s blas=%s" %
          (B * T / med, med * 1e3, n_params, len(kept), args.threads, peak, args.malloc, args.blas))


# ----------------------------------------------------------------------------------------------------------------
# Same model as dev/ref/model_ref.py: load its float64 draw into this module and compare loss and gradients

def table_tensors(model):
    """MODEL.md name -> list of this model's parameter tensors that make up that table entry, in stacking order
    (one per layer, per dense layer or per MoE layer; a single tensor for wte, final_norm, lm_head)."""
    blocks = list(model.blocks)
    dense = [b.ffn for b in blocks if b.dense]
    moes = [b.ffn for b in blocks if not b.dense]
    return {
        "wte": [model.wte.weight],
        "attn_norm": [b.attn_norm.weight for b in blocks], "wdq": [b.attn.wdq.weight for b in blocks],
        "q_norm": [b.attn.q_norm.weight for b in blocks], "wuq": [b.attn.wuq.weight for b in blocks],
        "wdkv": [b.attn.wdkv.weight for b in blocks], "kv_norm": [b.attn.kv_norm.weight for b in blocks],
        "wukv": [b.attn.wukv.weight for b in blocks], "wo": [b.attn.wo.weight for b in blocks],
        "ffn_norm": [b.ffn_norm.weight for b in blocks],
        "dense_w13": [m.w13.weight for m in dense], "dense_w2": [m.w2.weight for m in dense],
        "router": [m.router.weight for m in moes], "shared_w13": [m.shared.w13.weight for m in moes],
        "shared_w2": [m.shared.w2.weight for m in moes], "expert_w13": [m.w13 for m in moes],
        "expert_w2": [m.w2 for m in moes],
        "final_norm": [model.final_norm.weight], "lm_head": [model.lm_head.weight],
    }


def model_from_flat(c, mode, layout, flat, bias):
    """A float64 K2 holding the reference's flat parameters (MODEL.md layout) and router bias (Lm, E)."""
    model = K2(c, mode).double()
    P = layout.views(flat)
    with torch.no_grad():
        for name, ts in table_tensors(model).items():
            src = P[name]
            for i, t in enumerate(ts):
                t.copy_(src if t.shape == src.shape else src[i])
        for m, moe in enumerate(b.ffn for b in model.blocks if not b.dense):
            moe.bias.copy_(bias[m])
    return model


def flat_of(model, layout, grad=False):
    """The model's parameters (or their gradients) as one flat tensor in MODEL.md's layout."""
    tt = table_tensors(model)
    return torch.cat([(t.grad if grad else t).detach().reshape(-1) for name, _, _ in layout.specs for t in tt[name]])


def check_ref(args):
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "..", "ref"))
    import model_ref as ref
    torch.set_num_threads(args.threads)
    worst_all = 0.0
    for cfg_name in ["tiny", "k2route"]:
        rc = dict(ref.CONFIGS[cfg_name])
        for k in ref.FLOAT_FIELDS:
            rc[k] = float(np.float32(rc[k]))
        rc["Lm"], rc["dqk"], rc["N"] = rc["L"] - rc["Ld"], rc["nope"] + rc["rope"], rc["B"] * rc["T"]
        layout = ref.Layout(rc)
        flat, bias, tokens, targets = ref.draw_case(rc, layout, args.seed)
        for mode in ["loop", "bmm"]:
            r0 = ref.forward_backward(rc, layout, flat, bias, tokens, targets)
            c = {k: rc[k] for k in FIELDS + ["routed_scale", "rope_theta", "eps", "alpha", "gamma"]}
            model = model_from_flat(c, mode, layout, flat, bias)
            r = model(tokens, targets)
            r["loss"].backward()
            mine = flat_of(model, layout, grad=True)
            gdiff = float((mine - r0["grad"]).abs().max() / r0["grad"].abs().max())
            ldiff = max(abs(float(r["ce"]) - float(r0["ce"])), abs(float(r["aux"]) - float(r0["aux"])))
            mdiff = float((r["maxlogit"] - r0["maxlogit"]).abs().max())
            ssel = torch.stack([s.sort(-1).values for s in r["sels"]])
            same = torch.equal(ssel, r0["sel"])
            n_mine = sum(p.numel() for p in model.parameters())
            ok = gdiff < 1e-10 and ldiff < 1e-12 and mdiff < 1e-12 and same and n_mine == layout.n_params
            worst_all = max(worst_all, gdiff) if ok else math.inf
            print("check-ref %-7s moe=%-4s: params %d vs %d, loss %.10f vs %.10f (|d ce|,|d aux| <= %.1e), "
                  "maxlogit diff %.1e, sel %s, max grad diff / max |grad| %.1e: %s"
                  % (cfg_name, mode, n_mine, layout.n_params, float(r["loss"]), float(r0["loss"]), ldiff, mdiff,
                     "same" if same else "DIFFERENT", gdiff, "ok" if ok else "FAIL"))

    # training steps: torch.optim.AdamW + clip_grad_norm_ + the bias update vs the reference's own AdamW
    rc = ref.make_config(argparse.Namespace(config="tiny", steps=None, **{k: None for k in ref.INT_FIELDS +
                                                                            ref.FLOAT_FIELDS + ref.INIT_FIELDS}))
    layout = ref.Layout(rc)
    res = ref.run_with_guard(rc, layout, args.seed, ref.MAX_REDRAWS)
    c = {k: rc[k] for k in FIELDS + ["routed_scale", "rope_theta", "eps", "alpha", "gamma"]}
    model = model_from_flat(c, "loop", layout, res["flat0"], res["bias0"])
    opt = make_optimizer(model, rc["lr"], rc["b1"], rc["b2"], rc["adam_eps"], rc["wd"])
    losses = []
    for step in range(rc["n_steps"]):
        set_lr(opt, lr_at(step, rc["total_steps"], rc["lr"], rc["warmup"], rc["min_lr"]))
        opt.zero_grad(set_to_none=True)
        r = model(res["tokens"], res["targets"])
        r["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), rc["clip"])
        opt.step()
        model.update_router_bias(r["loads"], rc["N"])
        losses.append(float(r["loss"]))
    ref_losses = [st["loss"] for st in res["steps"]]
    ldiff = max(abs(a - b) for a, b in zip(losses, ref_losses))
    pdiff = float((flat_of(model, layout) - res["flat"]).abs().max())
    bdiff = float((torch.stack([b.ffn.bias for b in model.blocks if not b.dense]) - res["bias"]).abs().max())
    ok = ldiff < 1e-10 and pdiff < 1e-10 and bdiff == 0.0
    worst_all = worst_all if ok else math.inf
    print("check-ref tiny    %d AdamW steps: losses %s vs %s (max diff %.1e), params max diff %.1e, router bias "
          "max diff %.1e: %s" % (rc["n_steps"], " ".join("%.8f" % v for v in losses),
                                 " ".join("%.8f" % v for v in ref_losses), ldiff, pdiff, bdiff, "ok" if ok else "FAIL"))
    print("check-ref: %s" % ("PASS" if math.isfinite(worst_all) else "FAIL"))
    return math.isfinite(worst_all)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="k2-nano", choices=sorted(PRESETS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--skip", type=int, default=2, help="steps left out of the median (warmup)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--data", default="data/default/train_000.bin", help="llm.c shard, or 'random'")
    ap.add_argument("--moe", default="auto", choices=["auto", "loop", "bmm"],
                    help="expert compute: loop = a matmul pair per expert; bmm = padded batched matmuls; "
                         "auto = bmm when padding costs <= 2x, else loop")
    ap.add_argument("--malloc", default="tuned", choices=["tuned", "default"],
                    help="tuned: glibc malloc keeps freed memory (MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_), the "
                         "usual CPU-PyTorch advice (like jemalloc/tcmalloc); default: every large temporary is a "
                         "fresh mmap whose pages fault in again")
    ap.add_argument("--blas", default="openmp", choices=["openmp", "system"],
                    help="openmp: load Debian's OpenMP build of OpenBLAS (%s), which shares torch's OpenMP threads, "
                         "as ./train_moe does; system: the libblas.so.3 alternative as installed (the pthreads "
                         "build here, whose own threads fight torch's)" % OPENBLAS_OMP)
    ap.add_argument("--check-ref", action="store_true", help="compare with dev/ref/model_ref.py and exit")
    args = ap.parse_args()
    # both settings act at process start: re-run this script once with the environment they need
    if os.environ.get("TORCH_K2_ENV") is None:
        env = dict(os.environ, TORCH_K2_ENV="%s,%s" % (args.malloc, args.blas))
        if args.malloc == "tuned":
            env.update(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_="68719476736")
        if args.blas == "openmp":
            if os.path.exists(os.path.join(OPENBLAS_OMP, "libblas.so.3")):
                env["LD_LIBRARY_PATH"] = OPENBLAS_OMP + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
            else:
                print("note: %s not found; using the system BLAS" % OPENBLAS_OMP)
        os.execve(sys.executable, [sys.executable] + sys.argv, env)
    if args.check_ref:
        sys.exit(0 if check_ref(args) else 1)
    if args.data != "random" and not os.path.exists(args.data):
        sys.exit("no data file %s (give --data random, or run `make data`)" % args.data)
    train(args)


if __name__ == "__main__":
    main()
