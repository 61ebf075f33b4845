#!/usr/bin/env python3
"""tests/hf_tool.py: the Hugging Face export's checks and bad inputs for tests/test_hf.sh, written independently of
train/hf.c and train/safetensors.c: a tiny safetensors parser (struct + json), the DeepseekV3ForCausalLM tensor names
built from config.json, and our tensors read from a train_moe model file (layout from --print-layout, row meanings
from model/MODEL.md).

  hf_tool.py check DIR MODEL_FILE LAYOUT_JSON [--dtype F32|BF16]
        the safetensors files of DIR (single or sharded) hold exactly the HF names of DIR/config.json, with their
        shapes and dtypes, tiling each data section; every tensor equals its slice of MODEL_FILE (fp32, or its bf16
        rounding to nearest even); the router bias is F32 and non-zero
  hf_tool.py same DIR_A DIR_B          the two directories hold the same tensors (names, dtypes, shapes, bytes)
  hf_tool.py widened DIR_BF16 DIR_F32  DIR_F32's F32 tensors are DIR_BF16's BF16 ones widened exactly (bias: equal)
  hf_tool.py bad SRC_DIR DST_DIR KIND  DST_DIR = SRC_DIR's files with one defect (KIND: see BAD below)
  hf_tool.py config SRC DST KEY JSON   DST = config.json SRC with KEY set to the JSON value (or deleted: JSON '-')
"""
import json
import os
import shutil
import struct
import sys

import numpy as np

SIZES = {"F32": 4, "BF16": 2, "F16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def die(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def read_st(path):
    """(header dict without __metadata__, metadata, data bytes, raw header text) with every structural check."""
    raw = open(path, "rb").read()
    if len(raw) < 8:
        die(f"{path}: shorter than 8 bytes")
    (n,) = struct.unpack("<Q", raw[:8])
    text = raw[8:8 + n]
    if len(text) != n:
        die(f"{path}: header length {n} past the end")
    if (8 + n) % 8:
        die(f"{path}: the data section starts at {8 + n}, not 8-byte aligned")
    stripped = text.rstrip(b" ")
    if text[len(stripped):] != b" " * (len(text) - len(stripped)):
        die(f"{path}: header padding is not spaces")
    hdr = json.loads(text.decode("utf-8"))
    meta = hdr.pop("__metadata__", None)
    data = raw[8 + n:]
    spans = []
    for name, e in hdr.items():
        if set(e) != {"dtype", "shape", "data_offsets"}:
            die(f"{path}: {name}: fields {sorted(e)}")
        b, end = e["data_offsets"]
        numel = int(np.prod(e["shape"])) if e["shape"] else 1
        if end - b != numel * SIZES[e["dtype"]]:
            die(f"{path}: {name}: {end - b} bytes for shape {e['shape']} {e['dtype']}")
        if b % SIZES[e["dtype"]]:
            die(f"{path}: {name}: offset {b} not aligned to its dtype")
        spans.append((b, end, name))
    spans.sort()
    at = 0
    for b, end, name in spans:
        if b != at:
            die(f"{path}: {name} begins at {b}, the previous tensor ends at {at}")
        at = end
    if at != len(data):
        die(f"{path}: tensors end at {at}, the data section has {len(data)} bytes")
    return hdr, meta, data, text


def load_dir(d):
    """{name: (dtype, shape, bytes)} of the directory's safetensors, single file or index + shards."""
    out = {}
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        index = json.load(open(idx))
        wm = index["weight_map"]
        files = sorted(set(wm.values()))
        if len(files) < 2:
            die(f"{idx}: {len(files)} shard file(s)")
        total = 0
        for fn in files:
            hdr, meta, data, _ = read_st(os.path.join(d, fn))
            if meta != {"format": "pt"}:
                die(f"{fn}: metadata {meta}")
            for name, e in hdr.items():
                if wm.get(name) != fn:
                    die(f"{fn}: {name} is here, the index says {wm.get(name)}")
                b, end = e["data_offsets"]
                out[name] = (e["dtype"], tuple(e["shape"]), data[b:end])
                total += end - b
        if set(wm) != set(out):
            die(f"{idx}: the weight_map names {len(wm)} tensors, the shards hold {len(out)}")
        if index["metadata"]["total_size"] != total:
            die(f"{idx}: total_size {index['metadata']['total_size']}, the tensors take {total} bytes")
        return out
    hdr, meta, data, _ = read_st(os.path.join(d, "model.safetensors"))
    if meta != {"format": "pt"}:
        die(f"model.safetensors: metadata {meta}")
    for name, e in hdr.items():
        b, end = e["data_offsets"]
        out[name] = (e["dtype"], tuple(e["shape"]), data[b:end])
    return out


def hf_names(cfg):
    """The DeepseekV3ForCausalLM state dict of config cfg: {name: shape} (transformers' modeling_deepseek_v3.py)."""
    V, d, L = cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"]
    Ld, H, E = cfg["first_k_dense_replace"], cfg["num_attention_heads"], cfg["n_routed_experts"]
    ql, kvl, nope, rope, dv = cfg["q_lora_rank"], cfg["kv_lora_rank"], cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    f, fd = cfg["moe_intermediate_size"], cfg["intermediate_size"]
    s = {"model.embed_tokens.weight": (V, d), "model.norm.weight": (d,), "lm_head.weight": (V, d)}
    for l in range(L):
        p = f"model.layers.{l}."
        s[p + "input_layernorm.weight"] = (d,)
        s[p + "post_attention_layernorm.weight"] = (d,)
        s[p + "self_attn.q_a_proj.weight"] = (ql, d)
        s[p + "self_attn.q_a_layernorm.weight"] = (ql,)
        s[p + "self_attn.q_b_proj.weight"] = (H * (nope + rope), ql)
        s[p + "self_attn.kv_a_proj_with_mqa.weight"] = (kvl + rope, d)
        s[p + "self_attn.kv_a_layernorm.weight"] = (kvl,)
        s[p + "self_attn.kv_b_proj.weight"] = (H * (nope + dv), kvl)
        s[p + "self_attn.o_proj.weight"] = (d, H * dv)
        mlps = []
        if l < Ld:
            mlps.append((p + "mlp.", fd))
        else:
            s[p + "mlp.gate.weight"] = (E, d)
            s[p + "mlp.gate.e_score_correction_bias"] = (E,)
            mlps.append((p + "mlp.shared_experts.", f))
            mlps += [(p + f"mlp.experts.{e}.", f) for e in range(E)]
        for q, w in mlps:
            s[q + "gate_proj.weight"] = (w, d)
            s[q + "up_proj.weight"] = (w, d)
            s[q + "down_proj.weight"] = (d, w)
    return s


def ours(model_file, layout_json):
    """{HF name: fp32 array} from a train_moe model file: the row meanings of model/MODEL.md."""
    lay = json.load(open(layout_json))
    c = lay["config"]
    raw = open(model_file, "rb").read()
    hb = lay["header"]["bytes"]
    n = lay["num_params"]
    params = np.frombuffer(raw, dtype="<f4", count=n, offset=hb)
    bias = np.frombuffer(raw, dtype="<f4", count=lay["router_bias"], offset=hb + 4 * n)
    t = {x["name"]: params[x["offset"]:x["offset"] + x["numel"]].reshape(x["shape"]) for x in lay["tensors"]}
    L, Ld, E, f, fd = c["n_layers"], c["n_dense_layers"], c["n_experts"], c["moe_hidden"], c["dense_hidden"]
    o = {"model.embed_tokens.weight": t["wte"], "model.norm.weight": t["final_norm"], "lm_head.weight": t["lm_head"]}
    for l in range(L):
        p = f"model.layers.{l}."
        o[p + "input_layernorm.weight"] = t["attn_norm"][l]
        o[p + "self_attn.q_a_proj.weight"] = t["wdq"][l]
        o[p + "self_attn.q_a_layernorm.weight"] = t["q_norm"][l]
        o[p + "self_attn.q_b_proj.weight"] = t["wuq"][l]
        o[p + "self_attn.kv_a_proj_with_mqa.weight"] = t["wdkv"][l]
        o[p + "self_attn.kv_a_layernorm.weight"] = t["kv_norm"][l]
        o[p + "self_attn.kv_b_proj.weight"] = t["wukv"][l]
        o[p + "self_attn.o_proj.weight"] = t["wo"][l]
        o[p + "post_attention_layernorm.weight"] = t["ffn_norm"][l]
        if l < Ld:
            o[p + "mlp.gate_proj.weight"] = t["dense_w13"][l][:fd]
            o[p + "mlp.up_proj.weight"] = t["dense_w13"][l][fd:]
            o[p + "mlp.down_proj.weight"] = t["dense_w2"][l]
            continue
        m = l - Ld
        o[p + "mlp.gate.weight"] = t["router"][m]
        o[p + "mlp.gate.e_score_correction_bias"] = bias[m * E:(m + 1) * E]
        o[p + "mlp.shared_experts.gate_proj.weight"] = t["shared_w13"][m][:f]
        o[p + "mlp.shared_experts.up_proj.weight"] = t["shared_w13"][m][f:]
        o[p + "mlp.shared_experts.down_proj.weight"] = t["shared_w2"][m]
        for e in range(E):
            q = p + f"mlp.experts.{e}."
            o[q + "gate_proj.weight"] = t["expert_w13"][m][e][:f]
            o[q + "up_proj.weight"] = t["expert_w13"][m][e][f:]
            o[q + "down_proj.weight"] = t["expert_w2"][m][e]
    return o


def bf16_round(x):
    """fp32 -> bf16 bits, round to nearest even (numpy on the bits; the inputs here are finite)."""
    u = np.ascontiguousarray(x, dtype="<f4").view("<u4").astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")


def cmd_check(d, model_file, layout_json, dtype):
    cfg = json.load(open(os.path.join(d, "config.json")))
    want = hf_names(cfg)
    got = load_dir(d)
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        die(f"names: {len(missing)} missing (e.g. {missing[:2]}), {len(extra)} extra (e.g. {extra[:2]})")
    ref = ours(model_file, layout_json)
    nbias = 0
    for name, shape in want.items():
        dt, sh, data = got[name]
        if sh != shape:
            die(f"{name}: shape {sh}, want {shape}")
        is_bias = name.endswith("e_score_correction_bias")
        want_dt = "F32" if is_bias or dtype == "F32" else "BF16"
        if dt != want_dt:
            die(f"{name}: dtype {dt}, want {want_dt}")
        r = np.ascontiguousarray(ref[name], dtype="<f4")
        if r.shape != shape:
            die(f"{name}: our slice has shape {r.shape}")
        expect = r.tobytes() if want_dt == "F32" else bf16_round(r).tobytes()
        if data != expect:
            die(f"{name}: the bytes differ from the model file's slice")
        if is_bias:
            nbias += int(np.count_nonzero(r))
    if nbias == 0:
        die("every router-bias entry is 0: the check cannot tell a missing bias from a present one")
    print(f"ok: {len(want)} tensors, names and shapes of config.json, {dtype}, equal to the model file "
          f"({nbias} non-zero router-bias entries)")


def cmd_same(a, b):
    ta, tb = load_dir(a), load_dir(b)
    if ta.keys() != tb.keys():
        die(f"names differ: {len(ta)} vs {len(tb)}")
    for k in ta:
        if ta[k] != tb[k]:
            die(f"{k}: differs")
    print(f"ok: {len(ta)} tensors identical")


def cmd_widened(d16, d32):
    t16, t32 = load_dir(d16), load_dir(d32)
    if t16.keys() != t32.keys():
        die("names differ")
    n = 0
    for k, (dt, sh, data) in t16.items():
        dt32, sh32, data32 = t32[k]
        if dt32 != "F32" or sh32 != sh:
            die(f"{k}: {dt32} {sh32}")
        if dt == "F32":
            ok = data == data32
        else:
            wide = (np.frombuffer(data, "<u2").astype("<u4") << 16).astype("<u4").tobytes()
            ok = wide == data32
            n += 1
        if not ok:
            die(f"{k}: the fp32 values are not the bf16 ones widened")
    print(f"ok: {n} BF16 tensors loaded as their exact fp32 widening, the F32 bias unchanged")


# ---- bad inputs: each a copy of a good directory with one defect

def write_st(path, tensors, meta={"format": "pt"}, header_override=None, tail=b""):
    """tensors: list of (name, dtype, shape, bytes) in file order."""
    hdr, data, at = {}, b"", 0
    if meta is not None:
        hdr["__metadata__"] = meta
    for name, dt, shape, b in tensors:
        hdr[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [at, at + len(b)]}
        data += b
        at += len(b)
    text = header_override(hdr) if header_override else json.dumps(hdr, separators=(",", ":"))
    text = text.encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data + tail)


def cmd_bad(src, dst, kind):
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    path = os.path.join(dst, "model.safetensors")
    hdr, meta, data, text = read_st(path)
    items = sorted(hdr.items(), key=lambda kv: kv[1]["data_offsets"][0])
    tensors = [(k, e["dtype"], e["shape"], data[e["data_offsets"][0]:e["data_offsets"][1]]) for k, e in items]
    names = [t[0] for t in tensors]
    MISSING = "model.layers.1.mlp.experts.5.up_proj.weight"
    Q = "model.layers.0.self_attn.q_a_proj.weight"
    BIAS = "model.layers.1.mlp.gate.e_score_correction_bias"
    if kind == "missing":
        write_st(path, [t for t in tensors if t[0] != MISSING])
    elif kind == "shape":
        write_st(path, [(k, dt, list(reversed(sh)) if k == Q else sh, b) for k, dt, sh, b in tensors])
    elif kind == "dtype_f16":
        write_st(path, [(k, "F16", sh, np.frombuffer(b, "<f4").astype("<f2").tobytes()) if k == Q else (k, dt, sh, b)
                        for k, dt, sh, b in tensors])
    elif kind == "dtype_i64":
        write_st(path, [(k, "I64", sh, np.frombuffer(b, "<f4").astype("<i8").tobytes()) if k == BIAS else (k, dt, sh, b)
                        for k, dt, sh, b in tensors])
    elif kind == "truncated":
        raw = open(path, "rb").read()
        open(path, "wb").write(raw[:-100])
    elif kind in ("overlap", "past_end", "gap", "duplicate", "invalid_json"):
        def lie(hdr):
            if kind == "overlap":  # the q_a_proj entry points 8 bytes back, into the tensor before it
                b, e = hdr[Q]["data_offsets"]
                hdr[Q]["data_offsets"] = [b - 8, e - 8]
            elif kind == "past_end":  # the last tensor's offsets point past the data section
                last = names[-1]
                b, e = hdr[last]["data_offsets"]
                hdr[last]["data_offsets"] = [b + 4096, e + 4096]
            elif kind == "gap":  # every tensor after q_a_proj moves 8 bytes on, and 8 bytes pad the end
                b0 = hdr[Q]["data_offsets"][0]
                for k in hdr:
                    if k != "__metadata__" and hdr[k]["data_offsets"][0] >= b0:
                        hdr[k]["data_offsets"] = [x + 8 for x in hdr[k]["data_offsets"]]
            t = json.dumps(hdr, separators=(",", ":"))
            if kind == "duplicate":  # the first tensor's entry written twice
                first = names[0]
                entry = json.dumps({first: hdr[first]}, separators=(",", ":"))[1:-1]
                t = t[:-1] + "," + entry + "}"
            if kind == "invalid_json":  # a trailing comma
                t = t[:-1] + ",}"
            return t
        write_st(path, tensors, header_override=lie, tail=b"\0" * 8 if kind == "gap" else b"")
    elif kind == "nan":
        write_st(path, [(k, dt, sh, (np.frombuffer(b, "<f4").copy() * 0 + np.float32("nan")).astype("<f4").tobytes())
                        if k == Q else (k, dt, sh, b) for k, dt, sh, b in tensors])
    elif kind == "unknown":  # a tensor of a third layer (what an MTP layer would add)
        write_st(path, tensors + [("model.layers.2.self_attn.q_a_proj.weight", "F32", [2], b"\0" * 8)])
    elif kind == "both_layouts":  # an index beside model.safetensors
        open(os.path.join(dst, "model.safetensors.index.json"), "w").write('{"weight_map": {}}')
    elif kind == "index_escape":  # a weight_map file name that reaches outside the directory
        os.rename(path, os.path.join(dst, "model-00001-of-00002.safetensors"))
        wm = {k: "model-00001-of-00002.safetensors" for k in names}
        wm[names[0]] = "../model.safetensors"
        json.dump({"metadata": {"total_size": 0}, "weight_map": wm}, open(os.path.join(dst, "model.safetensors.index.json"), "w"))
    elif kind == "index_wrong_file":  # two shards; the index puts one tensor in the other one
        half = len(tensors) // 2
        os.remove(path)
        f1, f2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
        write_st(os.path.join(dst, f1), tensors[:half])
        write_st(os.path.join(dst, f2), tensors[half:])
        wm = {k: (f1 if i < half else f2) for i, (k, _, _, _) in enumerate(tensors)}
        wm[MISSING] = f1 if wm[MISSING] == f2 else f2
        json.dump({"metadata": {"total_size": 0}, "weight_map": wm}, open(os.path.join(dst, "model.safetensors.index.json"), "w"))
    else:
        die(f"unknown defect {kind}")


def cmd_config(src, dst, key, value):
    cfg = json.load(open(src))
    if value == "-":
        cfg.pop(key, None)
    else:
        cfg[key] = json.loads(value)
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    json.dump(cfg, open(dst, "w"), indent=2)


if __name__ == "__main__":
    a = sys.argv[1:]
    if a and a[0] == "check":
        cmd_check(a[1], a[2], a[3], a[5] if len(a) > 5 and a[4] == "--dtype" else "F32")
    elif a and a[0] == "same":
        cmd_same(a[1], a[2])
    elif a and a[0] == "widened":
        cmd_widened(a[1], a[2])
    elif a and a[0] == "bad":
        cmd_bad(a[1], a[2], a[3])
    elif a and a[0] == "config":
        cmd_config(a[1], a[2], a[3], a[4])
    else:
        print(__doc__)
        sys.exit(2)
