#!/usr/bin/env python3
"""dev/hf/hf_transformers_check.py: an exported directory loaded by Hugging Face transformers itself, against the
trainer. The optional step "hf" of dev/cuda/check.sh (transformers is no dependency of this project: where it is not
installed this prints SKIP and exits 0).

    python3 dev/hf/hf_transformers_check.py DIR --logits FILE [--tol 1e-4] [--tie-tol 1e-5] [--max-excluded 0.01]

1. AutoModelForCausalLM.from_pretrained(DIR, torch_dtype=torch.float32, attn_implementation="eager") loads with no
   missing, unexpected or mismatched keys, as DeepseekV3ForCausalLM.
2. Its logits on the tokens of FILE (what `./train_moe --eval --dump-logits FILE` writes) equal the trainer's to
   --tol relative per row (max|diff| / max|HF|). Routing near-ties are handled as in dev/hf/hf_ref.py (whose
   comparison this uses): the router inputs are caught with forward hooks on each TopkRouter, their choice gaps
   computed in float64; where rows differ after a near-tie, HF is run again with the other expert chosen there
   (a hook changes the router's output) and the variant with the fewest differing rows is kept.
3. Where DIR holds tokenizer.model: AutoTokenizer.from_pretrained(DIR) encodes sample sentences to the same ids as
   sentencepiece with that tokenizer.model (special tokens off), and its bos/eos ids are config.json's.
Prints PASS/FAIL/SKIP lines and "N passed, N failed, N skipped"; exit 0 when nothing failed, 1 otherwise.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_ref  # noqa: E402  (the dump reader, the router gaps and the comparison)

SAMPLES = [
    "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse,",
    "Mr. Speaker, Mr. Vice President, Members of Congress, my fellow Americans:",
    " a leading space, two  spaces, digits 1234567 and 3.14159, a tab\there, a line\nbreak",
    "Unicode: café, naïve, Ærøskøbing, — “quotes” … 東京",
]


class Results:
    def __init__(self):
        self.n = {"PASS": 0, "FAIL": 0, "SKIP": 0}

    def say(self, kind, what):
        self.n[kind] += 1
        print(f"{kind} {what}")

    def check(self, ok, what):
        self.say("PASS" if ok else "FAIL", what)

    def end(self):
        print(f"{self.n['PASS']} passed, {self.n['FAIL']} failed, {self.n['SKIP']} skipped")
        return 1 if self.n["FAIL"] else 0


def router_hooks(model, cfg, state):
    """Forward hooks on every TopkRouter (mlp.gate of each MoE layer): each records its input rows (float64) in
    state["inputs"][layer] and, for the rows in state["flips"][layer], swaps the near-tie pair (the K-th and
    (K+1)-th experts of the float64 order, hf_ref.route) in HF's own choice: whichever of the two HF chose leaves,
    the other comes in (HF's fp32 may already disagree with float64 at a near-tie; the flip is relative to what it
    chose). transformers 4.x routers return (topk_indices, topk_weights): those rows get the swapped indices and
    HF's own weights for them (the sigmoid scores gathered, normalised, scaled); 5.x routers return the router
    logits: the leaving expert gets a logit of -1e4, so the selection that follows takes the other one.
    Returns {layer: router module}."""
    import torch
    import torch.nn.functional as F
    routers = {}
    for name, mod in model.named_modules():
        if type(mod).__name__.endswith("TopkRouter") and ".layers." in name:
            layer = int(name.split(".layers.")[1].split(".")[0])
            routers[layer] = mod

    def make_hook(layer):
        def hook(module, inputs, output):
            h = inputs[0].detach().reshape(-1, inputs[0].shape[-1])
            h64 = h.double().cpu().numpy()
            state["inputs"][layer] = h64
            rows = state["flips"].get(layer)
            if not rows:
                return None
            W = module.weight.detach().double().cpu().numpy()
            bias = module.e_score_correction_bias.detach().double().cpu().numpy()
            base, _, _, _ = hf_ref.route(h64[rows], W, bias, cfg)
            flipped, _, _, _ = hf_ref.route(h64[rows], W, bias, cfg, flip_rows=range(len(rows)))
            pairs = [(int(np.setdiff1d(base[j], flipped[j])[0]), int(np.setdiff1d(flipped[j], base[j])[0]))
                     for j in range(len(rows))]
            if isinstance(output, tuple):  # 4.x: (topk_indices (N, K), topk_weights (N, K))
                idx, wts = output[0].clone(), output[1].clone()
                scores = torch.sigmoid(F.linear(h.float(), module.weight.float()))
                for n, (x, y) in zip(rows, pairs):
                    chosen = idx[n].tolist()
                    if (x in chosen) == (y in chosen):
                        continue
                    old, new = (x, y) if x in chosen else (y, x)
                    sel = torch.as_tensor([new if e == old else e for e in chosen], dtype=idx.dtype, device=idx.device)
                    wv = scores[n, sel]
                    if cfg.norm_topk_prob:
                        wv = wv / (wv.sum() + 1e-20)
                    idx[n] = sel
                    wts[n] = (wv * cfg.routed_scaling_factor).to(wts.dtype)
                return (idx, wts) + tuple(output[2:])
            logits = output.clone()  # 5.x: router logits (N, E); HF's choice recomputed as HF makes it (fp32)
            b32 = module.e_score_correction_bias.detach().float()
            for n, (x, y) in zip(rows, pairs):
                chosen = torch.topk(logits[n].float().sigmoid() + b32, cfg.num_experts_per_tok)[1].tolist()
                if (x in chosen) != (y in chosen):
                    logits[n, x if x in chosen else y] = -1e4
            return logits
        return hook

    for layer, mod in routers.items():
        mod.register_forward_hook(make_hook(layer))
    return routers


def check_model(r, d, dump, tol, tie_tol, max_excluded):
    import torch
    from transformers import AutoModelForCausalLM
    try:
        model, info = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager",
                                                           output_loading_info=True)
    except Exception as e:  # whatever transformers raises, it is this check's answer
        r.check(False, f"AutoModelForCausalLM.from_pretrained({d}): {type(e).__name__}: {str(e)[:300]}")
        return
    model.eval()
    problems = {k: list(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys",
                                                     "error_msgs")}
    bad = {k: v[:3] for k, v in problems.items() if v}
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    r.check(not bad and type(model).__name__ == "DeepseekV3ForCausalLM" and dtypes == ["torch.float32"],
            f"from_pretrained: {type(model).__name__}, parameters {dtypes}, "
            + (f"loading problems {bad}" if bad else "no missing, unexpected or mismatched keys"))

    cfg = hf_ref.Config(json.load(open(os.path.join(d, "config.json"))))
    tokens, got = hf_ref.read_dump(dump)
    B, T, V = got.shape
    state = {"inputs": {}, "flips": {}}
    routers = router_hooks(model, cfg, state)
    moe_layers = list(range(cfg.first_k_dense_replace, cfg.num_hidden_layers))
    if sorted(routers) != moe_layers:
        r.check(False, f"TopkRouter modules found in layers {sorted(routers)}, expected {moe_layers}")
        return

    def run(flips):
        state["flips"] = {}
        for l, b, t in flips:
            state["flips"].setdefault(l, []).append(b * T + t)
        state["inputs"] = {}
        with torch.no_grad():
            out = model(input_ids=torch.as_tensor(tokens, dtype=torch.long), use_cache=False)
        logits = out.logits.double().cpu().numpy()
        gaps = []
        for l in moe_layers:
            mod = routers[l]
            _, _, gap, group_gap = hf_ref.route(state["inputs"][l], mod.weight.detach().double().cpu().numpy(),
                                                mod.e_score_correction_bias.detach().double().cpu().numpy(), cfg)
            gaps.append((l, gap.reshape(B, T), group_gap.reshape(B, T)))
        return logits, gaps

    print(f"transformers' logits (float32, eager attention) on {dump}:")
    nfail = hf_ref.compare_logits(run, got, cfg.num_hidden_layers, tol, tie_tol, max_excluded)
    r.check(nfail == 0, f"transformers' logits vs the trainer's --dump-logits, {tol:g} relative per row "
            f"(details above)")


def check_tokenizer(r, d, cfg_json):
    spm_path = os.path.join(d, "tokenizer.model")
    if not os.path.exists(spm_path):
        r.say("SKIP", f"tokenizer: {d} has no tokenizer.model (the export writes one when tokenizer.model sits "
                      f"beside --tokenizer)")
        return
    try:
        import sentencepiece
    except ImportError:
        r.say("SKIP", "tokenizer: python3 has no sentencepiece to compare with")
        return
    from transformers import AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(d)
    except Exception as e:
        r.check(False, f"AutoTokenizer.from_pretrained({d}): {type(e).__name__}: {str(e)[:300]}")
        return
    sp = sentencepiece.SentencePieceProcessor(model_file=spm_path)
    wrong = []
    for s in SAMPLES:
        a = list(tok(s, add_special_tokens=False)["input_ids"])
        b = sp.encode(s)
        if a != b:
            wrong.append(f"{s[:30]!r}: HF {a[:12]}... vs sentencepiece {b[:12]}...")
    r.check(not wrong, f"AutoTokenizer ({type(tok).__name__}) encodes {len(SAMPLES)} samples as sentencepiece does"
            + (f": {len(wrong)} differ, e.g. {wrong[0]}" if wrong else f" ({sum(len(sp.encode(s)) for s in SAMPLES)} ids)"))
    ids = {"bos": (tok.bos_token_id, cfg_json.get("bos_token_id")), "eos": (tok.eos_token_id, cfg_json.get("eos_token_id"))}
    r.check(all(a == b for a, b in ids.values()),
            "tokenizer bos/eos ids " + ", ".join(f"{k} {a} (config.json {b})" for k, (a, b) in ids.items()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="exported Hugging Face directory")
    ap.add_argument("--logits", required=True, help="the trainer's --dump-logits file")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--tie-tol", type=float, default=1e-5)
    ap.add_argument("--max-excluded", type=float, default=0.01)
    args = ap.parse_args()
    r = Results()
    try:
        import torch
        import transformers
    except ImportError as e:
        r.say("SKIP", f"transformers check: {e}")
        return r.end()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    try:
        check_model(r, args.dir, args.logits, args.tol, args.tie_tol, args.max_excluded)
        check_tokenizer(r, args.dir, json.load(open(os.path.join(args.dir, "config.json"))))
    except hf_ref.InputError as e:
        r.check(False, f"error: {e}")
    return r.end()


if __name__ == "__main__":
    sys.exit(main())
