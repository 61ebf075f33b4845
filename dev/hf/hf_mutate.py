#!/usr/bin/python3
"""dev/hf/hf_mutate.py: a copy of an fp32 Hugging Face export with one convention changed, for the controls of
tests/test_hf_parity.sh (they prove dev/hf/hf_ref.py notices what an exporter could get wrong, and accepts an
equivalent model written in HF's other RoPE convention).

    /usr/bin/python3 dev/hf/hf_mutate.py SRC DST KIND

KIND (what it does; what hf_ref.py must then say against the trainer's logits):
  no-interleave      config.json rope_interleave false, weights unchanged                   -> mismatch
  q-rope-halves      each head's rope rows of every q_b_proj reordered (0,2,4,..,1,3,5,..)   -> mismatch
                     (the query in the halves layout, the key left interleaved)
  halves-convention  the rope rows of q_b_proj (each head) and of kv_a_proj_with_mqa reordered as above, and
                     rope_interleave false: the same model in apply_rotary_pos_emb's layout -> match
  zero-bias          every mlp.gate.e_score_correction_bias set to 0 (refused when all are 0 already) -> mismatch
  swap-gate-up       gate_proj and up_proj of the first layer's MLP swapped                 -> mismatch
  transpose-o        o_proj of layer 0 transposed (square only: the y = x W^T convention)   -> mismatch
DST gets config.json and one model.safetensors (F32). Exit 2 with "error: ..." on bad input.
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_ref import InputError, load_hf_dir, write_safetensors  # noqa: E402

KINDS = ("no-interleave", "q-rope-halves", "halves-convention", "zero-bias", "swap-gate-up", "transpose-o")


def halves_rows(n):
    """Row order that takes n interleaved rope rows (pairs (2i, 2i+1)) to the halves layout (i, i + n/2)."""
    return np.concatenate([np.arange(0, n, 2), np.arange(1, n, 2)])


def reorder_q_rope(w, cfg):
    """q_b_proj (H * qk_head_dim, q_lora): within each head, the rope rows (after the nope ones) in halves order."""
    H, nope, rope = cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"]
    w = w.reshape(H, nope + rope, -1).copy()
    w[:, nope:] = w[:, nope:][:, halves_rows(rope)]
    return w.reshape(H * (nope + rope), -1)


def reorder_k_rope(w, cfg):
    """kv_a_proj_with_mqa (kv_lora + rope, d): the rope rows (after the latent ones) in halves order."""
    kvl = cfg["kv_lora_rank"]
    w = w.copy()
    w[kvl:] = w[kvl:][halves_rows(w.shape[0] - kvl)]
    return w


def main():
    if len(sys.argv) != 4 or sys.argv[3] not in KINDS:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst, kind = sys.argv[1:]
    dtypes = {}
    cfg, w = load_hf_dir(src, dtypes)
    if any(dt != "F32" for dt in dtypes.values()):
        raise InputError(f"{src}: not an fp32 export (the controls start from one)")
    w = {k: v.copy() for k, v in w.items()}
    layers = range(cfg["num_hidden_layers"])
    if kind == "no-interleave":
        cfg["rope_interleave"] = False
    elif kind in ("q-rope-halves", "halves-convention"):
        for l in layers:
            k = f"model.layers.{l}.self_attn.q_b_proj.weight"
            w[k] = reorder_q_rope(w[k], cfg)
            if kind == "halves-convention":
                k = f"model.layers.{l}.self_attn.kv_a_proj_with_mqa.weight"
                w[k] = reorder_k_rope(w[k], cfg)
        if kind == "halves-convention":
            cfg["rope_interleave"] = False
    elif kind == "zero-bias":
        keys = [k for k in w if k.endswith("e_score_correction_bias")]
        biggest = max((float(np.abs(w[k]).max()) for k in keys), default=0.0)
        if biggest == 0.0:
            raise InputError(f"{src}: every e_score_correction_bias is already 0: zero-bias would change nothing")
        print(f"hf_mutate: zeroing {len(keys)} e_score_correction_bias tensors (largest |bias| {biggest:g})")
        for k in keys:
            w[k][:] = 0
    elif kind == "swap-gate-up":
        p = "model.layers.0.mlp."
        if p + "gate_proj.weight" not in w:
            p = "model.layers.0.mlp.shared_experts."
        w[p + "gate_proj.weight"], w[p + "up_proj.weight"] = w[p + "up_proj.weight"], w[p + "gate_proj.weight"]
    elif kind == "transpose-o":
        k = "model.layers.0.self_attn.o_proj.weight"
        if w[k].shape[0] != w[k].shape[1]:
            raise InputError(f"{src}: {k} is {list(w[k].shape)}, not square: transpose-o needs a square one")
        w[k] = np.ascontiguousarray(w[k].T)
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    write_safetensors(os.path.join(dst, "model.safetensors"), w, {k: "F32" for k in w})
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
