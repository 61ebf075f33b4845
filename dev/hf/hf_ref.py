#!/usr/bin/python3
"""dev/hf/hf_ref.py: an independent float64 forward of Hugging Face's DeepseekV3ForCausalLM, read from nothing but
an exported Hugging Face directory, to check ./train_moe --export-hf.

It follows the conventions of transformers' own code (src/transformers/models/deepseek_v3/modeling_deepseek_v3.py
and configuration_deepseek_v3.py): HF parameter names, HF's RoPE (DeepseekV3RotaryEmbedding with
apply_rotary_pos_emb_interleave when config rope_interleave is true, apply_rotary_pos_emb otherwise), HF's router
(DeepseekV3TopkRouter) and MoE (DeepseekV3MoE). It shares no code and no convention with our trainer or with
dev/ref/model_ref.py (our own reference, in our own layout): a convention the exporter gets wrong (the RoPE row
order, the gate/up split, the bias, a transposed matrix, a config field) changes these logits and the check fails.
Every number is float64 (numpy); the tensors are read with the small safetensors reader below (F32 and BF16).

    /usr/bin/python3 dev/hf/hf_ref.py DIR --logits FILE [--tol 1e-4] [--tie-tol 1e-5] [--max-excluded 0.01]
    /usr/bin/python3 dev/hf/hf_ref.py DIR16 --bf16-of DIR32 [--logits FILE --tol 1e-1]
    /usr/bin/python3 dev/hf/hf_ref.py DIR --tokens 1,2,3 [--print-top 5]   (the logits of one sequence)
    /usr/bin/python3 dev/hf/hf_ref.py --self-test

DIR holds config.json and model.safetensors, or model-0000k-of-0000n.safetensors + model.safetensors.index.json.
FILE is what `./train_moe --eval --dump-logits FILE` writes: int32 header {20261202, B, T, V}, int32 tokens[B*T]
(row n = b*T + t), float32 logits[B*T][V]. The reference runs the B sequences (positions 0..T-1) and compares row
by row: row error = max_v |ref - trainer| / max_v |ref|; every row must be <= --tol.
--bf16-of: DIR16's tensors must be DIR32's rounded to the nearest bfloat16, bit for bit (and the configs equal).

Routing near-ties: where the K-th and (K+1)-th largest biased scores of a token (HF's scores_for_choice) are within
--tie-tol (relative), the trainer's fp32 and this float64 may choose different experts, and a different expert
changes that token's output and, through attention in later layers, the later tokens of its sequence ("tainted"
rows). When rows differ and all of them are tainted, the reference is run again with the other outcome of those
near-ties (subsets of the 6 nearest, smallest first) and the variant with the fewest differing rows is kept: a
trainer that took the other expert at a true near-tie is then matched exactly, nothing left out (this happens: a
gap of 1.2e-7 in a 3-step k2-nano run). Tainted rows that still differ are excluded and counted; more than
--max-excluded of all rows fails the check. Every other row must match.

Prints PASS/FAIL lines; exits 0 when everything passed, 1 on a mismatch, 2 on unreadable input ("error: ...").
"""

import argparse
import json
import math
import os
import struct
import sys

import numpy as np

DUMP_MAGIC = 20261202


class InputError(Exception):
    """A file or config that cannot be read or is not what DeepseekV3ForCausalLM needs: one line, exit 2."""


# ============================================================================ safetensors (our own reader)
# The format: u64 little-endian N, then N bytes of JSON {name: {"dtype", "shape", "data_offsets": [begin, end]},
# optional "__metadata__"}, then the data section; offsets count from the data section's first byte.
ST_DTYPES = {"F32": 4, "BF16": 2}


def bf16_to_f32(raw):
    """bfloat16 bits are the high 16 bits of a float32: shift them up (exact)."""
    u16 = np.frombuffer(raw, dtype="<u2")
    return (u16.astype(np.uint32) << 16).view(np.float32)


def read_bytes(path):
    """The whole file; a file that cannot be read is an InputError naming it."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}")


def read_safetensors(path, dtypes=None):
    """{name: float32 ndarray} of one .safetensors file; every structural problem is an InputError naming path.
    dtypes, if given, receives {name: 'F32' | 'BF16'}."""
    blob = read_bytes(path)
    if len(blob) < 8:
        raise InputError(f"{path}: {len(blob)} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack_from("<Q", blob, 0)
    if n > len(blob) - 8:
        raise InputError(f"{path}: header length {n} runs past the end of the {len(blob)}-byte file")
    try:
        header = json.loads(blob[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: header is not JSON: {e}")
    if not isinstance(header, dict):
        raise InputError(f"{path}: header is not a JSON object")
    data = memoryview(blob)[8 + n:]
    out, spans = {}, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise InputError(f"{path}: tensor {name}: entry needs dtype, shape and data_offsets")
        dt, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if dt not in ST_DTYPES:
            raise InputError(f"{path}: tensor {name}: dtype {dt} (this reader knows F32 and BF16)")
        if (not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape)
                or not isinstance(offs, list) or len(offs) != 2 or not all(isinstance(o, int) for o in offs)):
            raise InputError(f"{path}: tensor {name}: bad shape {shape} or data_offsets {offs}")
        b, e = offs
        want = int(np.prod(shape, dtype=np.int64)) * ST_DTYPES[dt]
        if not 0 <= b <= e <= len(data) or e - b != want:
            raise InputError(f"{path}: tensor {name}: data_offsets {offs} (data section {len(data)} bytes) do not "
                             f"hold {dt} {shape} ({want} bytes)")
        spans.append((b, e, name))
        raw = data[b:e]
        arr = np.frombuffer(raw, dtype="<f4") if dt == "F32" else bf16_to_f32(raw)
        out[name] = arr.reshape(shape)
        if dtypes is not None:
            dtypes[name] = dt
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise InputError(f"{path}: tensors {n0} and {n1} overlap in the data section")
    return out


def load_hf_dir(d, dtypes=None):
    """(config dict, {name: float32 ndarray}) of an exported directory, single file or sharded with an index
    (dtypes, if given, receives each tensor's stored dtype)."""
    cfg_path = os.path.join(d, "config.json")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except OSError as e:
        raise InputError(f"{cfg_path}: cannot read: {e.strerror}")
    except json.JSONDecodeError as e:
        raise InputError(f"{cfg_path}: not JSON: {e}")
    index = os.path.join(d, "model.safetensors.index.json")
    single = os.path.join(d, "model.safetensors")
    tensors = {}
    if os.path.exists(index):
        try:
            with open(index) as f:
                wmap = json.load(f)["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise InputError(f"{index}: no readable weight_map: {e}")
        for fn in sorted(set(wmap.values())):
            if os.path.basename(fn) != fn:
                raise InputError(f"{index}: shard name {fn} is not a plain file name")
            part = read_safetensors(os.path.join(d, fn), dtypes)
            for name, arr in part.items():
                if name in tensors:
                    raise InputError(f"{d}: tensor {name} is in more than one shard")
                if wmap.get(name) != fn:
                    raise InputError(f"{index}: tensor {name} is in {fn} but the weight_map says {wmap.get(name)}")
                tensors[name] = arr
        missing = sorted(set(wmap) - set(tensors))
        if missing:
            raise InputError(f"{index}: {len(missing)} tensors of the weight_map are in no shard, e.g. {missing[0]}")
    elif os.path.exists(single):
        tensors = read_safetensors(single, dtypes)
    else:
        raise InputError(f"{d}: neither model.safetensors nor model.safetensors.index.json")
    return cfg, tensors


# ============================================================================ the config
class Config:
    """The DeepseekV3Config fields the forward reads (names as in configuration_deepseek_v3.py)."""

    def __init__(self, c, where="config.json"):
        def need(key, kind=int):
            if key not in c:
                raise InputError(f"{where}: {key} is missing")
            v = c[key]
            if kind is int and not (isinstance(v, int) and not isinstance(v, bool)):
                raise InputError(f"{where}: {key} = {v!r}, not an integer")
            if kind is float and not (isinstance(v, (int, float)) and not isinstance(v, bool)):
                raise InputError(f"{where}: {key} = {v!r}, not a number")
            if kind is bool and not isinstance(v, bool):
                raise InputError(f"{where}: {key} = {v!r}, not true/false")
            return v

        if c.get("model_type") != "deepseek_v3":
            raise InputError(f"{where}: model_type {c.get('model_type')!r}, not 'deepseek_v3'")
        self.vocab_size = need("vocab_size")
        self.hidden_size = need("hidden_size")
        self.intermediate_size = need("intermediate_size")
        self.moe_intermediate_size = need("moe_intermediate_size")
        self.num_hidden_layers = need("num_hidden_layers")
        self.num_attention_heads = need("num_attention_heads")
        self.num_key_value_heads = c.get("num_key_value_heads", self.num_attention_heads)
        self.n_shared_experts = need("n_shared_experts")
        self.n_routed_experts = need("n_routed_experts")
        self.routed_scaling_factor = float(need("routed_scaling_factor", float))
        self.kv_lora_rank = need("kv_lora_rank")
        self.q_lora_rank = c.get("q_lora_rank")  # null: DeepseekV3Attention uses one q_proj instead
        if self.q_lora_rank is not None and not (isinstance(self.q_lora_rank, int) and self.q_lora_rank > 0):
            raise InputError(f"{where}: q_lora_rank = {self.q_lora_rank!r}, not a positive integer or null")
        self.qk_rope_head_dim = need("qk_rope_head_dim")
        self.v_head_dim = need("v_head_dim")
        self.qk_nope_head_dim = need("qk_nope_head_dim")
        self.qk_head_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
        self.n_group = need("n_group")
        self.topk_group = need("topk_group")
        self.num_experts_per_tok = need("num_experts_per_tok")
        self.first_k_dense_replace = need("first_k_dense_replace")
        self.norm_topk_prob = need("norm_topk_prob", bool)
        self.rms_norm_eps = float(need("rms_norm_eps", float))
        self.rope_interleave = c.get("rope_interleave", True)  # the config class's default is True
        self.tie_word_embeddings = c.get("tie_word_embeddings", False)
        # rope_theta: a top-level field (older transformers) or inside rope_parameters (newer ones)
        rp = c.get("rope_parameters") or {}
        theta = c.get("rope_theta", rp.get("rope_theta"))
        if not isinstance(theta, (int, float)) or isinstance(theta, bool) or not theta > 0:
            raise InputError(f"{where}: rope_theta = {theta!r}, not a positive number")
        self.rope_theta = float(theta)

        # What this reference does not implement: refuse rather than compute something else than HF would.
        if c.get("rope_scaling") is not None:
            raise InputError(f"{where}: rope_scaling {c['rope_scaling']!r}: only null (the default RoPE, no YaRN) "
                             f"is implemented")
        if rp.get("rope_type", "default") != "default":
            raise InputError(f"{where}: rope_parameters.rope_type {rp.get('rope_type')!r}: only 'default' is implemented")
        if c.get("hidden_act", "silu") != "silu":
            raise InputError(f"{where}: hidden_act {c.get('hidden_act')!r}: only 'silu' is implemented")
        if c.get("attention_bias", False) is not False:
            raise InputError(f"{where}: attention_bias must be false (no biases are implemented)")
        if self.tie_word_embeddings is not False:
            raise InputError(f"{where}: tie_word_embeddings must be false (an untied lm_head.weight is expected)")
        if not isinstance(self.rope_interleave, bool):
            raise InputError(f"{where}: rope_interleave = {self.rope_interleave!r}, not true/false")
        # DeepseekV3TopkRouter always takes the sigmoid; a config that says otherwise means something HF does not do
        if c.get("scoring_func", "sigmoid") != "sigmoid":
            raise InputError(f"{where}: scoring_func {c.get('scoring_func')!r}: HF's DeepseekV3TopkRouter is sigmoid")
        # eager_attention_forward's repeat_kv repeats the H heads kv_b_proj already made: only kv heads == heads works
        if self.num_key_value_heads != self.num_attention_heads:
            raise InputError(f"{where}: num_key_value_heads {self.num_key_value_heads} != num_attention_heads "
                             f"{self.num_attention_heads}")
        E = self.n_routed_experts
        if self.n_group < 1 or E % self.n_group or not 1 <= self.topk_group <= self.n_group:
            raise InputError(f"{where}: n_group {self.n_group} / topk_group {self.topk_group} do not split "
                             f"{E} experts")
        if E // self.n_group < 2:
            raise InputError(f"{where}: groups of {E // self.n_group} expert: HF scores a group by its top 2")
        if not 1 <= self.num_experts_per_tok <= E:
            raise InputError(f"{where}: num_experts_per_tok {self.num_experts_per_tok} with {E} experts")
        if self.qk_rope_head_dim % 2:
            raise InputError(f"{where}: qk_rope_head_dim {self.qk_rope_head_dim} is odd")


# ============================================================================ the model's tensors
def expected_shapes(c):
    """{HF name: shape} of every tensor DeepseekV3ForCausalLM holds (nn.Linear weights are (out, in))."""
    d, H = c.hidden_size, c.num_attention_heads
    s = {"model.embed_tokens.weight": (c.vocab_size, d), "model.norm.weight": (d,),
         "lm_head.weight": (c.vocab_size, d)}
    for l in range(c.num_hidden_layers):
        p = f"model.layers.{l}."
        s[p + "input_layernorm.weight"] = (d,)
        s[p + "post_attention_layernorm.weight"] = (d,)
        a = p + "self_attn."
        if c.q_lora_rank is None:
            s[a + "q_proj.weight"] = (H * c.qk_head_dim, d)
        else:
            s[a + "q_a_proj.weight"] = (c.q_lora_rank, d)
            s[a + "q_a_layernorm.weight"] = (c.q_lora_rank,)
            s[a + "q_b_proj.weight"] = (H * c.qk_head_dim, c.q_lora_rank)
        s[a + "kv_a_proj_with_mqa.weight"] = (c.kv_lora_rank + c.qk_rope_head_dim, d)
        s[a + "kv_a_layernorm.weight"] = (c.kv_lora_rank,)
        s[a + "kv_b_proj.weight"] = (H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank)
        s[a + "o_proj.weight"] = (d, H * c.v_head_dim)
        m = p + "mlp."
        if l < c.first_k_dense_replace:  # DeepseekV3DecoderLayer: dense DeepseekV3MLP below first_k_dense_replace
            f = c.intermediate_size
            s.update({m + "gate_proj.weight": (f, d), m + "up_proj.weight": (f, d), m + "down_proj.weight": (d, f)})
        else:
            f = c.moe_intermediate_size
            s[m + "gate.weight"] = (c.n_routed_experts, d)
            s[m + "gate.e_score_correction_bias"] = (c.n_routed_experts,)
            for e in range(c.n_routed_experts):
                x = f"{m}experts.{e}."
                s.update({x + "gate_proj.weight": (f, d), x + "up_proj.weight": (f, d), x + "down_proj.weight": (d, f)})
            fs = f * c.n_shared_experts  # DeepseekV3MoE: one MLP of width moe_intermediate_size * n_shared_experts
            x = m + "shared_experts."
            s.update({x + "gate_proj.weight": (fs, d), x + "up_proj.weight": (fs, d), x + "down_proj.weight": (d, fs)})
    return s


class Model:
    """The config and every tensor as float64, checked name by name and shape by shape."""

    def __init__(self, d):
        raw_cfg, tensors = load_hf_dir(d)
        self.cfg = Config(raw_cfg, os.path.join(d, "config.json"))
        want = expected_shapes(self.cfg)
        missing = sorted(set(want) - set(tensors))
        extra = sorted(set(tensors) - set(want))
        if missing:
            raise InputError(f"{d}: {len(missing)} tensors missing, e.g. {missing[:3]}")
        if extra:
            raise InputError(f"{d}: {len(extra)} tensors DeepseekV3ForCausalLM does not have, e.g. {extra[:3]}")
        for name, shape in want.items():
            if tuple(tensors[name].shape) != shape:
                raise InputError(f"{d}: {name} has shape {list(tensors[name].shape)}, expected {list(shape)}")
        self.w = {k: v.astype(np.float64) for k, v in tensors.items()}
        bad = [k for k, v in self.w.items() if not np.all(np.isfinite(v))]
        if bad:
            raise InputError(f"{d}: {bad[0]} has non-finite values")


# ============================================================================ the forward, after HF's modules
def linear(x, w):
    """nn.Linear(bias=False): y = x W^T, W stored (out_features, in_features)."""
    return x @ w.T


def rms_norm(x, weight, eps):
    """DeepseekV3RMSNorm.forward: x * rsqrt(mean(x^2, -1) + eps), then weight * that (the gain multiplies last)."""
    return weight * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def silu(x):
    """ACT2FN['silu'] = torch.nn.SiLU: x * sigmoid(x)."""
    return x / (1.0 + np.exp(-x))


def mlp(x, w, prefix):
    """DeepseekV3MLP.forward: down_proj(act_fn(gate_proj(x)) * up_proj(x))."""
    g = linear(x, w[prefix + "gate_proj.weight"])
    u = linear(x, w[prefix + "up_proj.weight"])
    return linear(silu(g) * u, w[prefix + "down_proj.weight"])


def rope_cos_sin(positions, dim, theta):
    """DeepseekV3RotaryEmbedding (rope_type 'default', attention_scaling 1): inv_freq = 1 / theta^(arange(0, dim, 2)
    / dim); freqs = position * inv_freq; emb = cat(freqs, freqs) (the same frequency for index i and i + dim/2);
    returns cos(emb), sin(emb), each (len(positions), dim)."""
    inv_freq = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    freqs = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb), np.sin(emb)


def rotate_half(x):
    """rotate_half: cat(-x2, x1) with x1, x2 the first and second halves of the last dim."""
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def deinterleave(x):
    """The reorder inside apply_rotary_pos_emb_interleave: view (.., d/2, 2), transpose(4, 3), reshape (.., d):
    (x0, x1, x2, x3, ...) -> (x0, x2, x4, ..., x1, x3, x5, ...)."""
    d = x.shape[-1]
    return x.reshape(*x.shape[:-1], d // 2, 2).swapaxes(-1, -2).reshape(*x.shape[:-1], d)


def apply_rope(x, cos, sin, interleave):
    """apply_rotary_pos_emb_interleave (config rope_interleave true) or apply_rotary_pos_emb (false):
    x * cos + rotate_half(x) * sin, after the interleave reorder when interleaved. x (..., T, dim); cos/sin (T, dim)
    broadcast over the leading (batch, head) dims as unsqueeze_dim=1 does. The interleaved form's output is in the
    reordered (halves) layout; q and k both are, so q.k is what rotating each pair (x[2i], x[2i+1]) gives."""
    if interleave:
        x = deinterleave(x)
    return x * cos + rotate_half(x) * sin


# DeepseekV3Attention builds q_a_layernorm and kv_a_layernorm as DeepseekV3RMSNorm(rank): the class default eps,
# not config.rms_norm_eps (which only the decoder layers' two norms and the final norm get)
LATENT_NORM_EPS = 1e-6


def attention(x, w, prefix, c, cos, sin):
    """DeepseekV3Attention.forward with eager_attention_forward, no cache, no padding mask. x (B, T, d)."""
    B, T, _ = x.shape
    H, nope, rope, dv = c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
    # q_states = q_b_proj(q_a_layernorm(q_a_proj(h))) (or q_proj(h) without a q LoRA), view (B, T, H, qk_head_dim),
    # transpose(1, 2), split [qk_nope_head_dim, qk_rope_head_dim]
    if c.q_lora_rank is None:
        q = linear(x, w[prefix + "q_proj.weight"])
    else:
        cq = rms_norm(linear(x, w[prefix + "q_a_proj.weight"]), w[prefix + "q_a_layernorm.weight"], LATENT_NORM_EPS)
        q = linear(cq, w[prefix + "q_b_proj.weight"])
    q = q.reshape(B, T, H, c.qk_head_dim).transpose(0, 2, 1, 3)
    q_pass, q_rot = q[..., :nope], q[..., nope:]
    # compressed_kv = kv_a_proj_with_mqa(h), split [kv_lora_rank, qk_rope_head_dim]: the latent and the rope key
    ckv = linear(x, w[prefix + "kv_a_proj_with_mqa.weight"])
    k_pass, k_rot = ckv[..., :c.kv_lora_rank], ckv[..., c.kv_lora_rank:]
    # k_pass = kv_b_proj(kv_a_layernorm(k_pass)) view (B, T, H, nope + v_head_dim), transpose(1, 2), split
    kv = linear(rms_norm(k_pass, w[prefix + "kv_a_layernorm.weight"], LATENT_NORM_EPS), w[prefix + "kv_b_proj.weight"])
    kv = kv.reshape(B, T, H, nope + dv).transpose(0, 2, 1, 3)
    k_pass, v = kv[..., :nope], kv[..., nope:]
    # k_rot view (B, 1, T, rope): one rope key for all heads (expanded after the rotation)
    k_rot = k_rot.reshape(B, 1, T, rope)
    q_rot = apply_rope(q_rot, cos, sin, c.rope_interleave)
    k_rot = apply_rope(k_rot, cos, sin, c.rope_interleave)
    k_rot = np.broadcast_to(k_rot, (B, H, T, rope))
    query = np.concatenate([q_pass, q_rot], axis=-1)
    key = np.concatenate([k_pass, k_rot], axis=-1)
    # eager_attention_forward: softmax(q k^T * scaling + causal mask) v; scaling = qk_head_dim ** -0.5 (no YaRN mscale:
    # rope_scaling is null); create_causal_mask lets position i see j <= i
    s = query @ key.swapaxes(-1, -2) * c.qk_head_dim ** -0.5
    s = np.where(np.tril(np.ones((T, T), dtype=bool)), s, -np.inf)
    s = s - s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    o = (p @ v).transpose(0, 2, 1, 3).reshape(B, T, H * dv)  # transpose(1, 2), reshape (B, T, H * v_head_dim)
    return linear(o, w[prefix + "o_proj.weight"])


def topk_set(v, k):
    """Indices of the k largest entries of each row (torch.topk(sorted=False): the set is what matters)."""
    return np.argpartition(-v, k - 1, axis=-1)[..., :k]


def kth_gap(v, k):
    """Per row: (k-th largest - (k+1)-th largest) / max(|k-th largest|, 1e-30): how near the choice of the top k is
    to a tie (inf when there is no (k+1)-th)."""
    if k >= v.shape[-1]:
        return np.full(v.shape[:-1], np.inf)
    s = -np.sort(-v, axis=-1)
    return (s[..., k - 1] - s[..., k]) / np.maximum(np.abs(s[..., k - 1]), 1e-30)


def route(h, gate_w, bias, c, flip_rows=()):
    """DeepseekV3TopkRouter.forward on rows h (N, d): (topk_indices (N, K), topk_weights (N, K), expert gap (N),
    group gap (N)).
    scores = sigmoid(h W_gate^T); get_topk_indices: scores_for_choice = scores + e_score_correction_bias; each of
    n_group groups (consecutive E / n_group experts) scores the sum of its top 2; the topk_group best groups stay,
    the others' experts are masked_fill'ed with 0.0 (zero, as HF does, not -inf); topk of that. The weights gather
    the UNBIASED scores; norm_topk_prob divides them by their sum + 1e-20; then times routed_scaling_factor.
    The gaps say how near a tie each row's choice was: the K-th vs the (K+1)-th masked choice score, and (with
    groups) the topk_group-th vs the next group score, relative. flip_rows: rows that take the (K+1)-th expert
    instead of the K-th (the other outcome of a near-tie, for the comparison with an fp32 trainer; never in HF)."""
    N, E, K = h.shape[0], c.n_routed_experts, c.num_experts_per_tok
    scores = 1.0 / (1.0 + np.exp(-linear(h, gate_w)))
    choice = scores + bias[None, :]
    gs = E // c.n_group
    grouped = choice.reshape(N, c.n_group, gs)
    group_scores = -np.sort(-grouped, axis=-1)[..., :2].sum(axis=-1)
    group_idx = topk_set(group_scores, c.topk_group)
    group_mask = np.zeros((N, c.n_group), dtype=bool)
    np.put_along_axis(group_mask, group_idx, True, axis=-1)
    score_mask = np.repeat(group_mask, gs, axis=-1)
    masked = np.where(score_mask, choice, 0.0)
    idx = topk_set(masked, K)
    for n in flip_rows:
        if K < E:
            order = np.argsort(-masked[n], kind="stable")
            idx[n] = np.concatenate([order[:K - 1], order[K:K + 1]])
    weights = np.take_along_axis(scores, idx, axis=-1)
    if c.norm_topk_prob:
        weights = weights / (weights.sum(axis=-1, keepdims=True) + 1e-20)
    weights = weights * c.routed_scaling_factor
    group_gap = kth_gap(group_scores, c.topk_group) if c.n_group > 1 else np.full(N, np.inf)
    return idx, weights, kth_gap(masked, K), group_gap


def moe(x, w, prefix, c, flip_rows=()):
    """DeepseekV3MoE.forward: sum over the chosen experts of weight * expert(x), plus shared_experts(x).
    x (N, d); returns (output (N, d), expert gap (N), group gap (N)) (route() says what the gaps are)."""
    idx, weights, gap, group_gap = route(x, w[prefix + "gate.weight"], w[prefix + "gate.e_score_correction_bias"],
                                         c, flip_rows)
    out = np.zeros_like(x)
    for e in np.unique(idx):
        rows, slot = np.nonzero(idx == e)
        out[rows] += mlp(x[rows], w, f"{prefix}experts.{e}.") * weights[rows, slot][:, None]
    return out + mlp(x, w, prefix + "shared_experts."), gap, group_gap


def forward(model, tokens, flips=()):
    """DeepseekV3ForCausalLM.forward on tokens (B, T), positions 0..T-1: logits (B, T, V) and, per MoE layer, the
    routing gaps of each row: a list of (layer index, expert gap (B, T), group gap (B, T)). flips: (layer, b, t)
    whose router takes its (K+1)-th expert instead of its K-th (see route())."""
    c, w = model.cfg, model.w
    tokens = np.asarray(tokens)
    B, T = tokens.shape
    if tokens.min() < 0 or tokens.max() >= c.vocab_size:
        raise InputError(f"token ids outside [0, {c.vocab_size})")
    cos, sin = rope_cos_sin(np.arange(T), c.qk_rope_head_dim, c.rope_theta)
    x = w["model.embed_tokens.weight"][tokens]  # nn.Embedding
    gaps = []
    for l in range(c.num_hidden_layers):
        p = f"model.layers.{l}."
        # DeepseekV3DecoderLayer.forward: pre-norm residual blocks
        x = x + attention(rms_norm(x, w[p + "input_layernorm.weight"], c.rms_norm_eps), w, p + "self_attn.", c, cos, sin)
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], c.rms_norm_eps)
        if l < c.first_k_dense_replace:
            x = x + mlp(h, w, p + "mlp.")
        else:
            flip_rows = [b * T + t for (fl, b, t) in flips if fl == l]
            y, gap, group_gap = moe(h.reshape(B * T, -1), w, p + "mlp.", c, flip_rows)
            x = x + y.reshape(B, T, -1)
            gaps.append((l, gap.reshape(B, T), group_gap.reshape(B, T)))
    # DeepseekV3Model: final norm; DeepseekV3ForCausalLM: lm_head (untied)
    x = rms_norm(x, w["model.norm.weight"], c.rms_norm_eps)
    return linear(x, w["lm_head.weight"]), gaps


# ============================================================================ the trainer's dump and the comparison
def read_dump(path):
    """(tokens (B, T) int, logits (B, T, V) float64) of a --dump-logits file."""
    blob = read_bytes(path)
    if len(blob) < 16:
        raise InputError(f"{path}: {len(blob)} bytes, shorter than the 16-byte header")
    magic, B, T, V = struct.unpack_from("<4i", blob, 0)
    if magic != DUMP_MAGIC:
        raise InputError(f"{path}: magic {magic}, not {DUMP_MAGIC} (not a --dump-logits file)")
    if B < 1 or T < 1 or V < 1:
        raise InputError(f"{path}: header B={B} T={T} V={V}")
    want = 16 + 4 * B * T + 4 * B * T * V
    if len(blob) != want:
        raise InputError(f"{path}: {len(blob)} bytes; B={B} T={T} V={V} needs {want}")
    tokens = np.frombuffer(blob, dtype="<i4", count=B * T, offset=16).reshape(B, T)
    logits = np.frombuffer(blob, dtype="<f4", count=B * T * V, offset=16 + 4 * B * T).reshape(B, T, V)
    return tokens.astype(np.int64), logits.astype(np.float64)


def near_ties(gaps, tie_tol):
    """[(gap, layer, b, t)] of every expert choice within tie_tol (relative) of a tie, nearest first."""
    out = []
    for l, gap, _ in gaps:
        for b, t in zip(*np.nonzero(gap < tie_tol)):
            out.append((float(gap[b, t]), l, int(b), int(t)))
    return sorted(out)


def tainted_rows(gaps, tie_tol, n_layers):
    """(B, T) bool: rows whose output may differ between fp32 and float64 because of a routing near-tie (of the
    experts or of the groups): the row of the tie and, when a later layer has attention, every later row of its
    sequence."""
    B, T = gaps[0][1].shape if gaps else (0, 0)
    taint = np.zeros((B, T), dtype=bool)
    for l, gap, group_gap in gaps:
        near = (gap < tie_tol) | (group_gap < tie_tol)
        taint |= near
        if l < n_layers - 1:  # a later layer attends: the rows after the tie see it
            taint |= np.cumsum(near, axis=1) > 0
    return taint


def row_errors(ref, got):
    """Per row (B, T): max_v |ref - got| / max_v |ref|."""
    return np.abs(ref - got).max(axis=-1) / np.maximum(np.abs(ref).max(axis=-1), 1e-30)


def compare(model, dump_path, tol, tie_tol, max_excluded):
    """Runs the reference on the dump's tokens and compares; returns the number of failed checks."""
    tokens, got = read_dump(dump_path)
    if got.shape[-1] != model.cfg.vocab_size:
        print(f"FAIL {dump_path}: V={got.shape[-1]} but config.json vocab_size is {model.cfg.vocab_size}")
        return 1
    return compare_logits(lambda flips: forward(model, tokens, flips), got, model.cfg.num_hidden_layers, tol,
                          tie_tol, max_excluded)


def compare_logits(run, got, n_layers, tol, tie_tol, max_excluded, max_flips=6):
    """Compares run(flips) -> (logits (B, T, V), gaps as forward() returns them) with got (B, T, V), the trainer's;
    prints PASS/FAIL lines and returns the number of failed checks (hf_transformers_check.py runs HF through it).

    Routing near-ties: when some rows differ, all of them tainted by expert choices within tie_tol of a tie, run
    also goes with the other outcome of those ties (each subset of the max_flips nearest, smallest first) and the
    variant with the fewest differing rows is kept: an fp32 trainer that took the other expert at a true near-tie
    is then matched exactly, with nothing left out. Rows that still differ and are tainted by a near-tie are
    excluded and counted; more than max_excluded of the rows fails."""
    from itertools import combinations
    B, T, V = got.shape
    if not np.all(np.isfinite(got)):
        print("FAIL the trainer's logits hold non-finite values")
        return 1
    ref, gaps = run(())
    err = row_errors(ref, got)
    ties = near_ties(gaps, tie_tol)
    n_rows = B * T
    print(f"rows {n_rows} (B={B} T={T} V={V}); {len(ties)} expert choices within {tie_tol:g} (relative) of a tie"
          + "".join(f"; layer {l} b={b} t={t} gap {g:.1e}" for g, l, b, t in ties[:5]))
    flips = ()
    nbad = nbad0 = int((err > tol).sum())
    # a flip changes only the rows it taints: worth trying only when every differing row is tainted
    if nbad and ties and not ((err > tol) & ~tainted_rows(gaps, tie_tol, n_layers)).any():
        cands = [(l, b, t) for _, l, b, t in ties[:max_flips]]
        done = False
        for size in range(1, len(cands) + 1):
            for subset in combinations(cands, size):
                r2, g2 = run(subset)
                e2 = row_errors(r2, got)
                nb2 = int((e2 > tol).sum())
                if nb2 < nbad:
                    flips, ref, gaps, err, nbad = subset, r2, g2, e2, nb2
                done = nbad == 0
                if done:
                    break
            if done:
                break
        if flips:
            print(f"     with the other expert at {', '.join(f'layer {l} b={b} t={t}' for l, b, t in flips)} (the "
                  f"trainer's fp32 choice at a near-tie) the differing rows go from {nbad0} to {nbad}")
    taint = tainted_rows(gaps, tie_tol, n_layers)
    bad = err > tol
    excluded = bad & taint
    counted = ~excluded
    worst = np.unravel_index(np.argmax(np.where(counted, err, -1)), err.shape)
    w_err = float(err[worst])
    b, t = int(worst[0]), int(worst[1])
    detail = (f"worst row b={b} t={t}: max|diff| {np.abs(ref[b, t] - got[b, t]).max():.3e} over max|ref| "
              f"{np.abs(ref[b, t]).max():.3e}; median row error {float(np.median(err[counted])):.2e}")
    nfail = 0
    if not bad[counted].any():
        print(f"PASS logits match to {tol:g} relative on {int(counted.sum())} of {n_rows} rows (worst {w_err:.2e}; "
              f"{detail})")
    else:
        print(f"FAIL logits: {int((bad & counted).sum())} of {int(counted.sum())} rows differ by more than {tol:g} "
              f"relative (worst {w_err:.2e}; {detail})")
        nfail += 1
    frac = excluded.sum() / n_rows
    if excluded.any():
        print(f"{'FAIL' if frac > max_excluded else '    '} {int(excluded.sum())} rows ({100 * frac:.1f}%) differ "
              f"after a routing near-tie and are excluded (at most {100 * max_excluded:g}% may be)")
        nfail += int(frac > max_excluded)
    # the argmax agrees too (a coarse, readable summary of the same thing)
    agree = (ref.argmax(-1) == got.argmax(-1))[counted].mean()
    print(f"     argmax agrees on {100 * agree:.1f}% of the compared rows")
    return nfail


def bf16_round(x):
    """float32 -> the bfloat16 nearest (ties to even), as float32: what torch's .to(torch.bfloat16) gives."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32)


def check_bf16_of(d16, d32):
    """A bf16 export against the fp32 export of the same checkpoint: the same config (but torch_dtype), the same
    tensor names and shapes, every weight stored BF16 and equal to the fp32 value rounded to the nearest bfloat16
    (ties to even), any tensor stored F32 equal to the fp32 export's. Returns the number of failed checks."""
    t16, t32 = {}, {}
    c16, w16 = load_hf_dir(d16, t16)
    c32, w32 = load_hf_dir(d32, t32)
    nfail = 0
    strip = lambda c: {k: v for k, v in c.items() if k not in ("torch_dtype", "dtype")}
    if strip(c16) != strip(c32):
        diff = sorted(k for k in set(c16) | set(c32) if k not in ("torch_dtype", "dtype") and c16.get(k) != c32.get(k))
        print(f"FAIL bf16 export: config.json differs from the fp32 export's in {diff}")
        nfail += 1
    if c16.get("torch_dtype", c16.get("dtype")) != "bfloat16":
        print(f"FAIL bf16 export: config.json torch_dtype {c16.get('torch_dtype')!r}, not 'bfloat16'")
        nfail += 1
    if set(w16) != set(w32):
        print(f"FAIL bf16 export: tensor names differ from the fp32 export's "
              f"(only bf16: {sorted(set(w16) - set(w32))[:3]}, only fp32: {sorted(set(w32) - set(w16))[:3]})")
        return nfail + 1
    not_bf16 = sorted(k for k in w16 if k.endswith(".weight") and t16[k] != "BF16")
    if not_bf16:
        print(f"FAIL bf16 export: {len(not_bf16)} weights not stored as BF16, e.g. {not_bf16[0]} ({t16[not_bf16[0]]})")
        nfail += 1
    wrong = []
    for k in sorted(w16):
        if w16[k].shape != w32[k].shape:
            wrong.append(f"{k}: shape {list(w16[k].shape)} vs {list(w32[k].shape)}")
            continue
        want = bf16_round(w32[k]) if t16[k] == "BF16" else w32[k]
        nbad = int(np.sum(w16[k].view(np.uint32) != want.view(np.uint32)))
        if nbad:
            i = int(np.argmax(w16[k].ravel().view(np.uint32) != want.ravel().view(np.uint32)))
            wrong.append(f"{k} ({t16[k]}): {nbad} values, e.g. [{i}] {w16[k].ravel()[i]!r} vs "
                         f"{want.ravel()[i]!r} (fp32 {w32[k].ravel()[i]!r})")
    if wrong:
        print(f"FAIL bf16 export: {len(wrong)} tensors are not the fp32 export rounded to nearest bf16: {wrong[0]}")
        nfail += 1
    else:
        nb = sum(1 for k in w16 if t16[k] == "BF16")
        print(f"PASS bf16 export: {nb} BF16 tensors are the fp32 export's rounded to the nearest bfloat16 (ties to "
              f"even), {len(w16) - nb} F32 tensors equal; same names, shapes and config")
    return nfail


# ============================================================================ self-test of the conventions
def write_safetensors(path, tensors, dtypes):
    """A minimal writer for the self-test (F32 from float32 arrays, BF16 by truncating float32 bits)."""
    header, chunks, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, arr in tensors.items():
        a = np.ascontiguousarray(arr, dtype="<f4")
        raw = a.tobytes() if dtypes[name] == "F32" else (a.view("<u4") >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": dtypes[name], "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        chunks.append(raw)
        off += len(raw)
    js = json.dumps(header).encode()
    js += b" " * (-len(js) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(js)) + js + b"".join(chunks))


def tiny_config(**over):
    c = {"model_type": "deepseek_v3", "vocab_size": 50, "hidden_size": 16, "intermediate_size": 24,
         "moe_intermediate_size": 8, "num_hidden_layers": 3, "num_attention_heads": 2, "num_key_value_heads": 2,
         "n_shared_experts": 1, "n_routed_experts": 8, "routed_scaling_factor": 2.5, "kv_lora_rank": 6,
         "q_lora_rank": 10, "qk_rope_head_dim": 4, "v_head_dim": 5, "qk_nope_head_dim": 3, "n_group": 1,
         "topk_group": 1, "num_experts_per_tok": 3, "first_k_dense_replace": 1, "norm_topk_prob": True,
         "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "rope_scaling": None, "rope_interleave": True,
         "tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False}
    c.update(over)
    return c


def self_test():
    import tempfile
    rng = np.random.default_rng(7)
    results = []

    def check(ok, what):
        results.append(bool(ok))
        print(f"{'PASS' if ok else 'FAIL'} {what}")

    # 1. interleaved RoPE (apply_rotary_pos_emb_interleave) rotates the pairs (x[2i], x[2i+1]) by t * theta^(-2i/d),
    # its output in the halves layout (first components, then second components), and keeps the norm
    d, theta, T = 8, 50000.0, 5
    x = rng.standard_normal((1, 1, T, d))
    cos, sin = rope_cos_sin(np.arange(T), d, theta)
    y = apply_rope(x, cos, sin, True)
    want = np.empty_like(x)
    for t in range(T):
        for i in range(d // 2):
            a = t * theta ** (-2 * i / d)
            x0, x1 = x[0, 0, t, 2 * i], x[0, 0, t, 2 * i + 1]
            want[0, 0, t, i] = x0 * math.cos(a) - x1 * math.sin(a)
            want[0, 0, t, d // 2 + i] = x0 * math.sin(a) + x1 * math.cos(a)
    check(np.abs(y - want).max() < 1e-12, "interleaved RoPE = rotating pairs (x[2i], x[2i+1]) by t theta^(-2i/d) "
          f"(max err {np.abs(y - want).max():.1e})")
    check(np.abs(np.linalg.norm(y, axis=-1) - np.linalg.norm(x, axis=-1)).max() < 1e-12, "interleaved RoPE keeps norms")
    # q.k after RoPE depends only on the position difference
    q, k = rng.standard_normal(d), rng.standard_normal(d)
    P = np.arange(12)
    cs, sn = rope_cos_sin(P, d, theta)
    rq = apply_rope(np.broadcast_to(q, (12, d)), cs, sn, True)
    rk = apply_rope(np.broadcast_to(k, (12, d)), cs, sn, True)
    check(abs(rq[7] @ rk[3] - rq[9] @ rk[5]) < 1e-12 and abs(rq[4] @ rk[4] - q @ k) < 1e-12,
          "interleaved RoPE: q.k depends on the position difference only")
    # 2. non-interleaved (apply_rotary_pos_emb) rotates (x[i], x[i + d/2]) in place
    y2 = apply_rope(x, cos, sin, False)
    want2 = np.empty_like(x)
    for t in range(T):
        for i in range(d // 2):
            a = t * theta ** (-2 * i / d)
            x0, x1 = x[0, 0, t, i], x[0, 0, t, d // 2 + i]
            want2[0, 0, t, i] = x0 * math.cos(a) - x1 * math.sin(a)
            want2[0, 0, t, d // 2 + i] = x0 * math.sin(a) + x1 * math.cos(a)
    check(np.abs(y2 - want2).max() < 1e-12, "halves RoPE = rotating (x[i], x[i + d/2]) by t theta^(-2i/d)")
    check(np.abs(y2 - y).max() > 1e-3, "the two RoPE conventions differ on the same input")

    # 3. the router: n_group 1 is a plain top-k of scores + bias; the weights are the unbiased scores, normalised,
    # times routed_scaling_factor
    cfg = Config(tiny_config(n_routed_experts=16, num_experts_per_tok=4))
    h = rng.standard_normal((40, cfg.hidden_size))
    gw = rng.standard_normal((16, cfg.hidden_size)) * 0.3
    bias = rng.standard_normal(16) * 0.05
    idx, wts, _, _ = route(h, gw, bias, cfg)
    s = 1 / (1 + np.exp(-(h @ gw.T)))
    plain = np.argsort(-(s + bias), axis=-1)[:, :4]
    check(all(set(a) == set(b) for a, b in zip(idx, plain)), "router, n_group 1: top-k of sigmoid scores + bias")
    check(np.allclose(wts, np.take_along_axis(s, idx, -1) / np.take_along_axis(s, idx, -1).sum(-1, keepdims=True) * 2.5),
          "router: weights = unbiased scores / their sum * routed_scaling_factor")
    unbiased = np.argsort(-s, axis=-1)[:, :4]
    check(any(set(a) != set(b) for a, b in zip(idx, unbiased)), "router: the bias changes some choices (test is live)")
    # groups: 4 groups of 4, the best 2 by top-2 sum; experts of other groups masked to 0.0 before the top-k
    cfg_g = Config(tiny_config(n_routed_experts=16, num_experts_per_tok=3, n_group=4, topk_group=2))
    idx_g, _, _, _ = route(h, gw, bias, cfg_g)
    ok = True
    for r in range(h.shape[0]):
        ch = s[r] + bias
        gsc = [sorted(ch[4 * g:4 * g + 4])[-2:] for g in range(4)]
        best = sorted(range(4), key=lambda g: -sum(gsc[g]))[:2]
        m = np.array([ch[e] if e // 4 in best else 0.0 for e in range(16)])
        ok &= set(idx_g[r]) == set(np.argsort(-m)[:3])
    check(ok, "router, n_group 4 topk_group 2: top-k within the 2 groups of best top-2 sums (others 0.0)")
    check(any(set(a) != set(b) for a, b in zip(idx_g, idx)), "router: the group restriction changes some choices")

    # 4. RMSNorm: x / sqrt(mean(x^2) + eps) * weight
    v = np.array([[3.0, 4.0]])
    check(np.allclose(rms_norm(v, np.array([1.0, 2.0]), 0.0), [[3 / math.sqrt(12.5), 8 / math.sqrt(12.5)]]),
          "RMSNorm on a known vector")

    # 5. safetensors: F32 exact, BF16 = the high 16 bits; a sharded directory reads the same as one file;
    # damaged files are refused
    with tempfile.TemporaryDirectory() as tmp:
        a = rng.standard_normal((3, 5)).astype(np.float32)
        b = np.array([1.0, -2.0, 0.15625, 3.0e38, -1.5e-38], dtype=np.float32)
        p = os.path.join(tmp, "t.safetensors")
        write_safetensors(p, {"a": a, "b": b}, {"a": "F32", "b": "BF16"})
        r = read_safetensors(p)
        check(np.array_equal(r["a"], a), "safetensors F32 round trip")
        bb = (b.view("<u4") & 0xFFFF0000).view(np.float32)
        check(np.array_equal(r["b"], bb) and r["b"][0] == 1.0 and r["b"][1] == -2.0 and r["b"][2] == 0.15625,
              "safetensors BF16: bits << 16")
        blob = open(p, "rb").read()
        bad = 0
        for cut in (4, len(blob) - 3):
            open(p + ".bad", "wb").write(blob[:cut])
            try:
                read_safetensors(p + ".bad")
            except InputError:
                bad += 1
        check(bad == 2, "safetensors: truncated files are refused")
        # round to nearest even: 1 + 2^-8 is a tie between 1 and 1 + 2^-7 (goes to the even 1); just above goes up
        v = np.array([1 + 2 ** -8, 1 + 2 ** -8 + 2 ** -20, 1 + 3 * 2 ** -8, -(1 + 2 ** -9)], dtype=np.float32)
        check(np.array_equal(bf16_round(v), np.array([1, 1 + 2 ** -7, 1 + 2 ** -6, -1], dtype=np.float32)),
              "bf16 rounding: to nearest, ties to even")

        # 6. a whole tiny model: causal (the last token changes only its own row), batch rows independent,
        # sharded == single file, and a model with random weights gives distinct logits per position
        c = tiny_config(num_hidden_layers=3, first_k_dense_replace=1)
        cf = Config(c)
        w = {}
        for name, shape in expected_shapes(cf).items():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                w[name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
            elif name.endswith("e_score_correction_bias"):
                w[name] = (0.05 * rng.standard_normal(shape)).astype(np.float32)
            else:
                w[name] = (0.3 * rng.standard_normal(shape)).astype(np.float32)
        d1, d2 = os.path.join(tmp, "one"), os.path.join(tmp, "sharded")
        os.makedirs(d1)
        os.makedirs(d2)
        for dd in (d1, d2):
            json.dump(c, open(os.path.join(dd, "config.json"), "w"))
        write_safetensors(os.path.join(d1, "model.safetensors"), w, {k: "F32" for k in w})
        names = list(w)
        parts = [names[:len(names) // 2], names[len(names) // 2:]]
        wmap = {}
        for i, part in enumerate(parts):
            fn = f"model-{i + 1:05d}-of-00002.safetensors"
            write_safetensors(os.path.join(d2, fn), {k: w[k] for k in part}, {k: "F32" for k in part})
            wmap.update({k: fn for k in part})
        json.dump({"metadata": {}, "weight_map": wmap}, open(os.path.join(d2, "model.safetensors.index.json"), "w"))
        m1, m2 = Model(d1), Model(d2)
        toks = rng.integers(0, 50, size=(2, 7))
        l1, _ = forward(m1, toks)
        l2, _ = forward(m2, toks)
        check(np.array_equal(l1, l2), "sharded directory gives the same logits as one file")
        t2 = toks.copy()
        t2[0, -1] = (t2[0, -1] + 1) % 50
        l3, _ = forward(m1, t2)
        # (1e-12, not 0: the experts' GEMMs see other row subsets, so BLAS may round differently)
        check(np.abs(l3[0, :-1] - l1[0, :-1]).max() < 1e-12 and np.abs(l3[0, -1] - l1[0, -1]).max() > 1e-6
              and np.abs(l3[1] - l1[1]).max() < 1e-12, "causal: changing the last token changes only its own row")
        one, _ = forward(m1, toks[1:2])
        check(np.abs(one[0] - l1[1]).max() < 1e-12, "sequences of a batch are independent")
        # the other outcome of a near-tie (route's flip_rows): layer 1 at b=0 t=2 takes its (K+1)-th expert; that
        # changes the row and, through layer 2's attention, the later rows of its sequence, and nothing else
        _, g0 = forward(m1, toks)
        l5, g5 = forward(m1, toks, [(1, 0, 2)])
        ch = np.abs(l5 - l1).max(axis=-1) > 1e-9
        check(ch[0, 2] and not ch[0, :2].any() and not ch[1].any() and len(g0) == 2 and g0[0][0] == 1,
              f"a flipped choice changes its row and later ones only (changed rows of sequence 0: {np.nonzero(ch[0])[0].tolist()})")
        # every tensor matters: zeroing the bias changes the logits
        m1.w["model.layers.2.mlp.gate.e_score_correction_bias"][:] = 0
        l4, _ = forward(m1, toks)
        check(np.abs(l4 - l1).max() > 1e-6, "the e_score_correction_bias changes the logits")
        # a wrong config is refused, not computed
        refused = 0
        for bad_cfg in ({"rope_scaling": {"type": "yarn", "factor": 4}}, {"tie_word_embeddings": True},
                        {"num_key_value_heads": 1}, {"n_group": 3}):
            json.dump(dict(c, **bad_cfg), open(os.path.join(d1, "config.json"), "w"))
            try:
                Model(d1)
            except InputError:
                refused += 1
        check(refused == 4, "unsupported configs (YaRN, tied embeddings, GQA, bad groups) are refused")

    n_ok = sum(results)
    print(f"hf_ref self-test: {n_ok} passed, {len(results) - n_ok} failed")
    return 0 if all(results) else 1


# ============================================================================ main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", nargs="?", help="exported Hugging Face directory")
    ap.add_argument("--logits", help="the trainer's --dump-logits file to compare with")
    ap.add_argument("--tokens", help="comma-separated token ids: print this sequence's logits summary")
    ap.add_argument("--print-top", type=int, default=5, help="with --tokens: top entries of the last row")
    ap.add_argument("--tol", type=float, default=1e-4, help="row error bound: max|diff| / max|ref| (1e-4)")
    ap.add_argument("--tie-tol", type=float, default=1e-5, help="relative gap that counts as a routing near-tie")
    ap.add_argument("--max-excluded", type=float, default=0.01, help="largest fraction of rows excluded for ties")
    ap.add_argument("--bf16-of", metavar="DIR32", help="check DIR (a bf16 export) is DIR32 (the fp32 export of the "
                    "same checkpoint) rounded to nearest bfloat16; with --logits, also compare DIR's logits")
    ap.add_argument("--self-test", action="store_true", help="unit checks of the conventions on tiny inputs")
    args = ap.parse_args()
    try:
        if args.self_test:
            return self_test()
        if not args.dir or not (args.logits or args.tokens or args.bf16_of):
            ap.error("give DIR and --logits FILE (or --tokens, --bf16-of DIR32), or --self-test")
        nfail = 0
        if args.bf16_of:
            nfail += check_bf16_of(args.dir, args.bf16_of)
            if not args.logits:
                print(f"hf_ref: {'PASS' if nfail == 0 else 'FAIL'} {args.dir} is {args.bf16_of} in bfloat16")
                return 1 if nfail else 0
        model = Model(args.dir)
        if args.tokens:
            toks = np.array([[int(t) for t in args.tokens.split(",")]])
            logits, _ = forward(model, toks)
            last = logits[0, -1]
            top = np.argsort(-last)[:args.print_top]
            print("last row top:", ", ".join(f"{int(i)}:{last[i]:.6f}" for i in top))
            return 0
        nfail += compare(model, args.logits, args.tol, args.tie_tol, args.max_excluded)
        print(f"hf_ref: {'PASS' if nfail == 0 else 'FAIL'} {args.dir} vs {args.logits}")
        return 1 if nfail else 0
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
