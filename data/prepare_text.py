#!/usr/bin/python3
"""Your own text as train_moe data: documents -> SentencePiece BPE -> llm.c shards.

  python3 data/prepare_text.py --input PATH [PATH ...] --out DIR
          [--vocab-size N | --tokenizer tokenizer.model] [--val-fraction F]
          [--shard-tokens N] [--text-field NAME] [--jobs J] [--overwrite]

Inputs (--input, repeatable, several paths each):
  FILE.txt     one document: the whole file
  FILE.jsonl   one document per line: the string in field "text" (--text-field);
               blank lines are skipped
  DIR          every .txt and .jsonl below it, recursively, in natural order of
               their paths (chapter_2 before chapter_10); other files and
               hidden entries are skipped with a note
Files must be UTF-8. Empty documents (an empty .txt, an empty string in a .jsonl
line) are skipped with a warning: a folder of files may well hold a stray empty
one, and an empty document would only add a separator token.

Tokenizer: a SentencePiece BPE model trained on the training documents with the
default corpus's options (data/prepare.py uses this file's code), or with
--tokenizer an existing SentencePiece model, copied into DIR.

Split: with N documents in input order, n_val = round(N * F) of them, at least
1 when N >= 2 and F > 0, at most N - 1, go to val: document
floor((2k + 1) * N / (2 n_val)) for k = 0 .. n_val-1 (evenly spread over the
inputs). A single document goes to train and no val shard is written.

Outputs in --out (a new or empty directory; --overwrite replaces an earlier
output of this tool, never other files):
  train_000.bin ...   llm.c token shards: int32 header[256] = {magic, version,
  val_000.bin ...     n_tokens, 0...}, then the tokens; version 1 (magic
                      20240520, uint16) when every id fits 16 bits, else
                      version 7 (magic 20240801, uint32). Each document is
                      preceded by the separator <s> (id 1). Shards hold at most
                      --shard-tokens tokens, split evenly; a document may
                      continue into the next shard.
  tokenizer.bin       the C decoder's byte table (see write_tokenizer_bin)
  tokenizer.model     the SentencePiece model
  meta.json           sizes, counts, inputs with sha256, options, versions;
                      written last (a directory without it is unfinished)
  spm_train.log       SentencePiece's training log (trained tokenizer only)

Deterministic: the same inputs and options give the same bytes, whatever --jobs.
"""

import argparse
import concurrent.futures
import hashlib
import io
import json
import math
import multiprocessing
import os
import re
import sys
import time

import numpy as np
import sentencepiece as spm

SHARD_FORMATS = {  # llm.c token shard versions the C loader (data/dataloader.c) reads
    1: {"magic": 20240520, "dtype": "<u2", "name": "uint16le"},
    7: {"magic": 20240801, "dtype": "<u4", "name": "uint32le"},
}
SHARD_MAGIC = SHARD_FORMATS[1]["magic"]  # the default corpus's format: version 1, uint16 tokens
SHARD_VERSION = 1
TOK_MAGIC = 20240328  # llm.c tokenizer.bin, version 2 (header[3] = separator id)
TOK_VERSION = 2
TOK_MAX_VOCAB = 1 << 24  # what data/tokenizer.c accepts
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

# 256 byte-fallback pieces + <unk>, <s>, </s>, and at least one character
MIN_VOCAB = 260
DEFAULT_VOCAB = 4096  # the k2-l* presets' vocab_size
DEFAULT_SPM_THREADS = 2  # fixed, not the core count: it is recorded in tokenizer.model

# Encoding: a document longer than this is encoded in pieces (see encode_spans),
# so that one huge file neither needs SentencePiece's ~200 bytes of memory per
# character at once nor keeps the other workers idle.
ENCODE_CHUNK_CHARS = 1 << 20
ENCODE_EXTS = (".txt", ".jsonl")


class InputError(Exception):
    """Bad input or options: main() prints `error: <message>` and exits 1."""


def natural_key(name):
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_bar_drawn = [False]  # a progress line is on the terminal: a message first clears it (the bar redraws after)


def stderr_line(msg):
    if _bar_drawn[0]:
        sys.stderr.write("\r\033[K")
        _bar_drawn[0] = False
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


class Progress:
    """A progress line on stderr: redrawn in place (\\r) on a terminal, else one line every few seconds."""

    def __init__(self, label, total, unit="B", enabled=True):
        self.label, self.total, self.unit = label, max(1, total), unit
        self.scale, self.prefix = (1e6, "M") if total >= 1e6 else (1e3, "k")
        self.done, self.t0, self.enabled = 0, time.time(), enabled
        self.tty = enabled and sys.stderr.isatty()
        self.last = 0.0

    def _text(self):
        dt = max(1e-9, time.time() - self.t0)
        pct = 100.0 * self.done / self.total
        u = f"{self.prefix}{self.unit}"
        return (f"{self.label}: {pct:5.1f}% ({self.done / self.scale:,.1f} of {self.total / self.scale:,.1f} {u}, "
                f"{self.done / self.scale / dt:,.1f} {u}/s, {dt:.0f} s)")

    def add(self, n):
        self.done += n
        if not self.enabled:
            return
        now = time.time()
        if self.tty and (now - self.last >= 0.1 or not _bar_drawn[0]):
            sys.stderr.write("\r" + self._text() + "\033[K")
            sys.stderr.flush()
            self.last = now
            _bar_drawn[0] = True
        elif not self.tty and now - self.last >= 5.0 and now - self.t0 >= 5.0:
            stderr_line(self._text())
            self.last = now

    def finish(self):
        if not self.enabled:
            return
        self.done = self.total if self.done < self.total else self.done
        if self.tty:
            sys.stderr.write("\r" + self._text() + "\033[K\n")
            sys.stderr.flush()
            _bar_drawn[0] = False
        else:
            stderr_line(self._text())


# ----------------------------------------------------------------------------
# inputs


def gather_files(paths, note):
    """The input files, in order: each --input path as given; a directory's .txt/.jsonl files recursively, sorted
    by natural order of their path components. Returns [(path, kind)], kind "txt" or "jsonl"."""
    files, seen = [], {}

    def add(path, kind, origin):
        real = os.path.realpath(path)
        if real in seen:
            raise InputError(f"{path} is given twice (also as {seen[real]}); each file may be read once")
        seen[real] = path if origin is None else f"{path} under {origin}"
        files.append((path, kind))

    for p in paths:
        if not os.path.lexists(p):
            raise InputError(f"--input {p}: no such file or directory")
        if os.path.isdir(p):
            found, other, hidden, special = [], [], 0, []
            for root, dirs, names in os.walk(p):
                hidden += sum(d.startswith(".") for d in dirs) + sum(n.startswith(".") for n in names)
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                for d in dirs:
                    if os.path.islink(os.path.join(root, d)):
                        special.append(os.path.join(root, d) + " (a link to a directory: not followed)")
                for n in names:
                    if n.startswith("."):
                        continue
                    full = os.path.join(root, n)
                    ext = os.path.splitext(n)[1].lower()
                    if ext not in ENCODE_EXTS:
                        other.append(full)
                    elif not os.path.isfile(full):
                        special.append(full + " (not a regular file)")
                    else:
                        found.append(full)
            found.sort(key=lambda f: tuple(natural_key(c) for c in os.path.relpath(f, p).split(os.sep)))
            for f in found:
                add(f, os.path.splitext(f)[1].lower()[1:], p)
            if other:
                other.sort(key=natural_key)
                more = f" and {len(other) - 5} more" if len(other) > 5 else ""
                note(f"note: skipped {len(other)} file(s) under {p} that are not .txt or .jsonl: "
                     f"{', '.join(other[:5])}{more}")
            if hidden:
                note(f"note: skipped {hidden} hidden file(s)/folder(s) (names starting with '.') under {p}")
            for s in special:
                note(f"note: skipped {s}")
            if not found:
                note(f"note: {p} holds no .txt or .jsonl files")
        else:
            ext = os.path.splitext(p)[1].lower()
            if ext not in ENCODE_EXTS:
                raise InputError(f"--input {p}: unknown file type '{ext or '(none)'}'; expected .txt (one document) "
                                 f"or .jsonl (one document per line), or a directory of them")
            if not os.path.isfile(p):
                raise InputError(f"--input {p}: not a regular file")
            add(p, ext[1:], None)
    return files


def utf8_error(path, raw, e, lineno=None):
    """One message for invalid UTF-8 at byte e.start of raw (a whole file, or its line lineno): file:line, the
    column and the byte."""
    line = lineno or raw.count(b"\n", 0, e.start) + 1
    col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
    return InputError(f"{path}:{line}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {col})")


JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
              type(None): "null"}


def jsonl_documents(path, raw, text_field):
    """The documents of one .jsonl file: [(line number, text)], empty texts included. Blank lines are skipped."""
    out = []
    for lineno, line in enumerate(raw.split(b"\n"), 1):
        if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]  # a byte order mark opens the file, not the first document
        if not line.strip():
            continue
        try:
            s = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise utf8_error(path, line, e, lineno)
        try:
            obj = json.loads(s)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{lineno}: not valid JSON ({e.msg}: column {e.colno})")
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{lineno}: a JSON {JSON_TYPES.get(type(obj), '?')}, expected an object with a "
                             f"\"{text_field}\" string")
        if text_field not in obj:
            keys = ", ".join(list(obj)[:5])
            raise InputError(f"{path}:{lineno}: no field \"{text_field}\" (fields: {keys or 'none'}; "
                             f"choose one with --text-field)")
        text = obj[text_field]
        if not isinstance(text, str):
            raise InputError(f"{path}:{lineno}: field \"{text_field}\" is a JSON "
                             f"{JSON_TYPES.get(type(text), '?')}, not a string")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InputError(f"{path}:{lineno}: field \"{text_field}\" holds an unpaired surrogate "
                             f"(\\u{ord(text[e.start]):04x}), which is not text")
        out.append((lineno, text))
    return out


def read_documents(files, text_field, note, progress=True):
    """Reads every document. Returns (docs, file_info): docs = [{"name", "text"}] in input order; file_info = one
    dict per file (path, kind, bytes, sha256, documents, skipped_empty)."""
    docs, info = [], []
    total = 0
    for path, _ in files:
        try:
            total += os.path.getsize(path)
        except OSError as e:
            raise InputError(f"cannot read {path}: {e.strerror}")
    bar = Progress("read", total, enabled=progress)
    for path, kind in files:
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise InputError(f"cannot read {path}: {e.strerror}")
        if kind == "txt":
            try:
                found = [(None, raw.decode("utf-8"))]
            except UnicodeDecodeError as e:
                raise utf8_error(path, raw, e)
        else:
            found = jsonl_documents(path, raw, text_field)
        n_before = len(docs)
        docs.extend({"name": path if line is None else f"{path}:{line}", "text": t} for line, t in found if t)
        n_docs = len(docs) - n_before
        if n_docs == 0:
            note(f"warning: skipping empty file {path}")
        elif n_docs < len(found):
            note(f"warning: skipping {len(found) - n_docs} empty document(s) in {path}")
        info.append({"path": path, "kind": kind, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
                     "documents": n_docs, "skipped_empty": len(found) - n_docs})
        bar.add(len(raw))
    bar.finish()
    return docs, info


def split_fraction(docs, fraction):
    """The fixed split rule (see the module doc). Returns (train, val, val_indices)."""
    n = len(docs)
    n_val = 0
    if n >= 2 and fraction > 0:
        n_val = min(n - 1, max(1, int(math.floor(n * fraction + 0.5))))
    val_idx = {((2 * k + 1) * n) // (2 * n_val) for k in range(n_val)}
    train = [d for j, d in enumerate(docs) if j not in val_idx]
    val = [d for j, d in enumerate(docs) if j in val_idx]
    return train, val, sorted(val_idx)


# ----------------------------------------------------------------------------
# tokenizer


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


TRAINER_OPTIONS = {
    "model_type": "bpe",
    # 1.0: every character seen in train gets its own piece. The default
    # corpus has ~106 distinct characters, so this costs ~100 of 4096 slots.
    # 0.9995 would drop every character rarer than ~0.05% of 12M characters --
    # that includes Q, K, V, (, ), [, ] -- pushing common ASCII onto byte fallback.
    "character_coverage": 1.0,
    "byte_fallback": True,
    "normalization_rule_name": "identity",
    "remove_extra_whitespaces": False,
    "add_dummy_prefix": ADD_DUMMY_PREFIX,
    "split_digits": True,
}


def train_tokenizer(train_docs, vocab_size, num_threads, log_path):
    buf = io.BytesIO()
    with redirect_fd2(log_path):
        spm.SentencePieceTrainer.train(
            sentence_iterator=training_sentences(train_docs),
            model_writer=buf,
            vocab_size=vocab_size,
            max_sentence_length=MAX_SENTENCE_BYTES,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            num_threads=num_threads,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            **TRAINER_OPTIONS,
        )
    return buf.getvalue()


def explain_training_error(e, vocab_size):
    """SentencePiece's own words for a vocabulary the text cannot fill, as advice; None for other errors."""
    msg = str(e)
    m = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", msg)
    if m:
        return (f"the training text supports at most {m.group(2)} tokens, fewer than --vocab-size {vocab_size}: "
                f"pass --vocab-size {m.group(2)} or less, or give more text")
    m = re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", msg)
    if m:
        return (f"--vocab-size {vocab_size} is too small for this text: it needs at least {m.group(2)} "
                f"(256 byte pieces + 3 special tokens + one piece per distinct character); pass --vocab-size "
                f"{m.group(2)} or more")
    return None


def _varint(buf, pos):
    v, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, pos


def _proto_fields(buf):
    """The top-level fields of one protobuf message: (number, value), value an int (varint) or bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
        elif wire == 2:
            n, pos = _varint(buf, pos)
            val = buf[pos : pos + n]
            pos += n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            val = buf[pos : pos + n]
            pos += n
        else:
            raise ValueError(f"wire type {wire}")
        yield num, val


def normalizer_spec(model_bytes):
    """The model's text normalization (ModelProto field 3, NormalizerSpec): what decides whether the decoded pieces
    give back the text's exact bytes. Read directly: this python3-sentencepiece has no protobuf module."""
    spec = {"name": None, "add_dummy_prefix": True, "remove_extra_whitespaces": True, "escape_whitespaces": True}
    try:
        for num, val in _proto_fields(model_bytes):
            if num != 3 or not isinstance(val, bytes):
                continue
            for n2, v2 in _proto_fields(val):
                if n2 == 1 and isinstance(v2, bytes):
                    spec["name"] = v2.decode("utf-8", "replace")
                elif n2 in (3, 4, 5) and isinstance(v2, int):
                    spec[{3: "add_dummy_prefix", 4: "remove_extra_whitespaces", 5: "escape_whitespaces"}[n2]] = bool(v2)
    except ValueError:
        pass
    return spec


def load_tokenizer(path):
    """A given --tokenizer: (model bytes, processor). InputError unless it is a SentencePiece model with <s>."""
    if not os.path.isfile(path):
        raise InputError(f"--tokenizer {path}: no such file")
    with open(path, "rb") as f:
        model_bytes = f.read()
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(model_bytes)
        ok = sp.GetPieceSize() > 0
    except Exception:
        ok = False
    if not ok:
        raise InputError(f"--tokenizer {path} is not a SentencePiece model (cannot be loaded as one; "
                         f"give the tokenizer.model file, not tokenizer.bin or a Hugging Face tokenizer.json)")
    bos = sp.bos_id()
    if bos < 0 or not sp.IsControl(bos):
        raise InputError(f"--tokenizer {path} has no <s> control token (bos_id {bos}); the shards need it as the "
                         f"document separator")
    if sp.GetPieceSize() > TOK_MAX_VOCAB:
        raise InputError(f"--tokenizer {path} has {sp.GetPieceSize()} pieces, more than the {TOK_MAX_VOCAB} "
                         f"tokenizer.bin allows")
    return model_bytes, sp


def piece_bytes(sp, i):
    """Bytes the C decoder emits for token i."""
    if sp.IsControl(i) or sp.IsUnknown(i) or sp.IsUnused(i):
        return b""
    piece = sp.IdToPiece(i)
    if sp.IsByte(i):
        m = re.fullmatch(r"<0x([0-9A-F]{2})>", piece)
        if not m:
            raise InputError(f"unexpected byte piece {piece!r} for id {i}")
        return bytes([int(m.group(1), 16)])
    return piece.replace("\u2581", " ").encode("utf-8")


def tokenizer_table(sp):
    table = [piece_bytes(sp, i) for i in range(sp.GetPieceSize())]
    for i, b in enumerate(table):
        if len(b) > 255:
            raise InputError(f"token {i} is {len(b)} bytes; tokenizer.bin allows at most 255")
    return table


def write_tokenizer_bin(path, table, sep_id):
    """int32 header[256] = {20240328, 2, vocab_size, sep_id, 0, ...}, then for id = 0..vocab_size-1: uint8 len, len
    bytes. Normal piece: its UTF-8 with U+2581 replaced by ' '. Byte-fallback piece <0xAB>: the single raw byte
    0xAB. Control/unknown pieces (<unk>=0, <s>=1, </s>=2): len 0. The separator therefore decodes to nothing; a C
    decoder that wants a visible document break checks id == sep_id (header[3]); llm.c's tokenizer.h asserts
    len > 0, so this format needs that assert removed. Under a tokenizer trained here, concatenating the bytes of a
    document's tokens gives the document's original bytes exactly (add_dummy_prefix is off, normalization is
    identity; the one exception is text holding U+2581 itself)."""
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


# ----------------------------------------------------------------------------
# shards


def shard_version_for(vocab_size, forced=None):
    """1 (uint16) when every id fits 16 bits, else 7 (uint32); forced = "uint16"/"uint32" overrides."""
    if forced == "uint32":
        return 7
    if forced == "uint16":
        if vocab_size > 65536:
            raise InputError(f"--shard-dtype uint16 cannot hold ids of a {vocab_size}-token vocabulary")
        return 1
    return 1 if vocab_size <= 65536 else 7


def write_shard(path, tokens, version=SHARD_VERSION):
    """llm.c shard: 256 x int32 LE header [magic, version, n_tokens, 0...], then the tokens (uint16 LE for version
    1, uint32 LE for version 7)."""
    fmt = SHARD_FORMATS[version]
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or int(tokens.max()) > np.iinfo(fmt["dtype"]).max):
        raise ValueError(f"{path}: token ids do not fit {fmt['name']}")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0] = fmt["magic"]
    header[1] = version
    header[2] = len(tokens)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(fmt["dtype"]).tobytes())


def read_shard(path):
    """The tokens of a version 1 or 7 shard; AssertionError on anything else."""
    with open(path, "rb") as f:
        data = f.read()
    header = np.frombuffer(data[:HEADER_BYTES], dtype="<i4")
    fmt = SHARD_FORMATS.get(int(header[1]))
    assert fmt is not None and header[0] == fmt["magic"], f"bad header in {path}"
    n = int(header[2])
    width = np.dtype(fmt["dtype"]).itemsize
    assert len(data) == HEADER_BYTES + width * n, f"size mismatch in {path}"
    return np.frombuffer(data[HEADER_BYTES:], dtype=fmt["dtype"])


def write_split(out_dir, split, tokens, shard_size, version=SHARD_VERSION, even=False):
    """Write tokens as split_000.bin, split_001.bin, ... each with at most shard_size tokens: filled in turn
    (even=False: the last one takes the rest) or split evenly (sizes differ by at most one token, so no short last
    shard falls below the trainer's seq_len+1)."""
    paths = []
    n_shards = max(1, -(-len(tokens) // shard_size))
    for s in range(n_shards):
        if even:
            lo, hi = s * len(tokens) // n_shards, (s + 1) * len(tokens) // n_shards
        else:
            lo, hi = s * shard_size, (s + 1) * shard_size
        path = os.path.join(out_dir, f"{split}_{s:03d}.bin")
        write_shard(path, tokens[lo:hi], version)
        paths.append(path)
    return paths


OUTPUT_RE = re.compile(r"(train|val)_\d{3,}\.bin|tokenizer\.bin|tokenizer\.model|meta\.json|spm_train\.log|\.stamp")


def remove_stale_outputs(out_dir):
    """Shards of an earlier run (a different count would leave old ones behind) and the completion markers."""
    for name in os.listdir(out_dir):
        if re.fullmatch(r"(train|val)_\d{3,}\.bin", name) or name in (".stamp", "meta.json"):
            os.remove(os.path.join(out_dir, name))


# ----------------------------------------------------------------------------
# encoding (in parallel; the result does not depend on the number of processes)


def encode_spans(text, limit):
    """Cuts a document into spans of about `limit` characters whose encodings, concatenated, equal the whole
    document's encoding under a tokenizer trained here: a cut goes right after a newline (training sentences are
    split at newlines, so no piece contains one) or right before a space (split_by_whitespace: a piece holds a space
    only at its start). Where neither comes near, the span runs on to the next one; never a cut inside a word."""
    spans, start, n = [], 0, len(text)
    while n - start > limit:
        end = start + limit
        cut = max(text.rfind("\n", start, end) + 1, text.rfind(" ", start + 1, end + 1))
        if cut <= start:  # no boundary within the limit: the first one after it
            nl, sp_ = text.find("\n", end), text.find(" ", end)
            cands = [c for c in (nl + 1 if nl >= 0 else -1, sp_) if c > start]
            if not cands:
                break
            cut = min(cands)
        spans.append((start, cut))
        start = cut
    spans.append((start, n))
    return spans


_worker = {}


def _worker_init(model_bytes, table, docs):
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(model_bytes)
    _worker.update(sp=sp, table=table, docs=docs)


def _encode_task(task):
    """task = [(doc index, start, end)]: the ids of each span and whether its tokens' bytes give back its text."""
    sp, table, docs = _worker["sp"], _worker["table"], _worker["docs"]
    texts = [docs[d]["text"][a:b] for d, a, b in task]
    out = []
    for t, ids in zip(texts, sp.EncodeAsIds(texts, num_threads=1)):
        exact = b"".join([table[i] for i in ids]) == t.encode("utf-8")
        out.append((np.asarray(ids, dtype=np.uint32), exact))
    return out


def encode_documents(model_bytes, table, docs, jobs, chunk_chars, progress=True):
    """Encodes every document; returns (ids per document, exact round trip per document). chunk_chars None: each
    document whole (a tokenizer not trained here: spans are only safe under our trainer options)."""
    spans = []
    for k, d in enumerate(docs):
        if chunk_chars:
            spans.extend((k, a, b) for a, b in encode_spans(d["text"], chunk_chars))
        else:
            spans.append((k, 0, len(d["text"])))
    total = sum(b - a for _, a, b in spans)
    # tasks of consecutive spans: small enough to spread over the workers, large enough to be cheap to send
    target = min(max(total // (jobs * 16), 1 << 16), 1 << 22)
    tasks, cur, size = [], [], 0
    for s in spans:
        cur.append(s)
        size += s[2] - s[1]
        if size >= target:
            tasks.append(cur)
            cur, size = [], 0
    if cur:
        tasks.append(cur)

    bar = Progress("encode", total, unit=" chars", enabled=progress)
    results = []
    if jobs == 1 or len(tasks) == 1:
        _worker_init(model_bytes, table, docs)
        for t in tasks:
            results.extend(_encode_task(t))
            bar.add(sum(b - a for _, a, b in t))
        _worker.clear()
    else:
        # fork: the workers inherit docs instead of receiving them pickled. An executor, not multiprocessing.Pool:
        # a worker that dies (the kernel's OOM killer) fails the run instead of hanging it.
        ctx = multiprocessing.get_context("fork")
        pool = concurrent.futures.ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=ctx,
                                                      initializer=_worker_init, initargs=(model_bytes, table, docs))
        try:
            for t, r in zip(tasks, pool.map(_encode_task, tasks)):  # map keeps the order of the tasks
                results.extend(r)
                bar.add(sum(b - a for _, a, b in t))
        except concurrent.futures.process.BrokenProcessPool:
            raise InputError(f"an encoding process died (out of memory?); try fewer --jobs than {jobs}")
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # on an error: the tasks not started are dropped
    bar.finish()

    ids = [[] for _ in docs]
    exact = [True] * len(docs)
    for (k, _, _), (arr, ok) in zip(spans, results):
        ids[k].append(arr)
        exact[k] = exact[k] and ok
    ids = [a[0] if len(a) == 1 else np.concatenate(a) for a in ids]
    return ids, exact


# ----------------------------------------------------------------------------
# the pipeline: used by this tool and by data/prepare.py (the default corpus)


def default_jobs():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def build_dataset(out, train_docs, val_docs, log, vocab_size=DEFAULT_VOCAB, model_bytes=None,
                  num_threads=DEFAULT_SPM_THREADS, shard_tokens=100_000_000, even_shards=True, shard_dtype=None,
                  jobs=None, strict=False, progress=True, chunk_chars=ENCODE_CHUNK_CHARS, write_empty_val=True,
                  doc_label=lambda d: d["name"]):
    """Tokenizer (trained on train_docs, or model_bytes), tokenizer.model/.bin, encoded shards, checks from the
    files on disk. Writes into the existing directory `out`. strict: a document whose tokens do not give back its
    bytes, or an <unk> token, is an error (else a warning). Returns a dict of what it made (for meta.json)."""
    jobs = jobs or default_jobs()
    trained = model_bytes is None
    log_path = os.path.join(out, "spm_train.log")
    if trained:
        n_chars = sum(len(d["text"]) for d in train_docs)
        log(f"training the tokenizer: SentencePiece BPE, vocab {vocab_size}, on {len(train_docs)} train documents "
            f"({n_chars:,} characters)")
        t0 = time.time()
        try:
            model_bytes = train_tokenizer(train_docs, vocab_size, num_threads, log_path)
        except Exception as e:
            advice = explain_training_error(e, vocab_size)
            if advice:
                raise InputError(advice)
            with open(log_path, "rb") as f:
                sys.stderr.write(f.read()[-4000:].decode("utf-8", "replace"))
            raise InputError(f"SentencePiece training failed: {str(e).splitlines()[0] if str(e) else e!r} "
                             f"(the end of its log is above)")
    elif os.path.exists(log_path):
        os.remove(log_path)  # an earlier run's log would describe another tokenizer
    with open(os.path.join(out, "tokenizer.model"), "wb") as f:
        f.write(model_bytes)
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(model_bytes)
    V = sp.GetPieceSize()
    if trained and V != vocab_size:
        raise InputError(f"trained vocab has {V} pieces, wanted {vocab_size}")
    sep_id = sp.bos_id()
    assert sp.IdToPiece(sep_id) == "<s>" or not trained
    assert sp.IsControl(sep_id)
    if trained:
        log(f"tokenizer: BPE vocab {V}, trained in {time.time() - t0:.1f}s (log: {log_path})")
    version = shard_version_for(V, shard_dtype)
    table = tokenizer_table(sp)
    tok_bin = os.path.join(out, "tokenizer.bin")
    write_tokenizer_bin(tok_bin, table, sep_id)

    # --- encode ----------------------------------------------------------
    t0 = time.time()
    docs = train_docs + val_docs
    ids, exact = encode_documents(model_bytes, table, docs, jobs, chunk_chars if trained else None, progress)
    sep = np.asarray([sep_id], dtype=np.uint32)
    streams, split_docs = {}, {"train": train_docs, "val": val_docs}
    k = 0
    for split, sdocs in split_docs.items():
        parts = []
        for _ in sdocs:
            parts.append(sep)  # separator BEFORE every document (llm.c style)
            parts.append(ids[k])
            k += 1
        streams[split] = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)
    log(f"encoded in {time.time() - t0:.1f}s with {jobs} process(es): train {len(streams['train']):,} tokens, "
        f"val {len(streams['val']):,} tokens")

    # --- checks on the token streams ---------------------------------------
    lossy = [doc_label(d) for d, ok in zip(docs, exact) if not ok]
    n_unk = {}
    for split, arr in streams.items():
        if arr.size and int(arr.max()) >= V:
            raise InputError(f"{split} has token ids outside [0, {V})")
        n_unk[split] = int((arr == sp.unk_id()).sum()) if sp.unk_id() >= 0 else 0
        if int((arr == sep_id).sum()) != len(split_docs[split]):
            raise InputError(f"{split}: separator id appears inside a document")
    if strict and any(n_unk.values()):
        raise InputError(f"the token streams contain {sum(n_unk.values())} <unk> tokens despite byte fallback")
    if strict and lossy:
        raise InputError(f"round trip via tokenizer.bin failed for document {lossy[0]}")

    # --- write shards ----------------------------------------------------
    shard_files = {}
    for split in ("train", "val"):
        if split == "val" and not val_docs and not write_empty_val:
            shard_files[split] = []
            continue
        shard_files[split] = write_split(out, split, streams[split], shard_tokens, version, even_shards)

    # --- verify from the files on disk -----------------------------------
    t0 = time.time()
    table_r, sep_r = read_tokenizer_bin(tok_bin)
    if table_r != table or sep_r != sep_id:
        raise InputError(f"{tok_bin} does not read back identically")
    for split, sdocs in split_docs.items():
        if not shard_files[split]:
            continue
        arr = np.concatenate([read_shard(p) for p in shard_files[split]])
        if not np.array_equal(arr, streams[split]):
            raise InputError(f"{split} shards do not read back identically")
        starts = np.flatnonzero(arr == sep_id)
        if len(starts) != len(sdocs) or (len(sdocs) and starts[0] != 0):
            raise InputError(f"{split}: expected a separator before each of {len(sdocs)} documents")
    if val_docs and exact[len(train_docs)]:
        first = val_docs[0]
        if sp.DecodeIds(ids[len(train_docs)].tolist()) != first["text"]:
            raise InputError("SentencePiece decode of the first val document differs")
        log(f"round trip OK: first val document {doc_label(first)} ({len(first['text'].encode('utf-8')):,} bytes, "
            f"{len(ids[len(train_docs)]):,} tokens) decodes byte-exactly via tokenizer.bin")
    if lossy:
        norm = normalizer_spec(model_bytes)
        if any("\u2581" in d["text"] for d, ok in zip(docs, exact) if not ok):
            why = "the text holds U+2581 (SentencePiece's space mark '\u2581'), which decodes as a space"
        else:
            why = (f"the tokenizer's normalization is '{norm['name']}', add_dummy_prefix "
                   f"{'on' if norm['add_dummy_prefix'] else 'off'}, remove_extra_whitespaces "
                   f"{'on' if norm['remove_extra_whitespaces'] else 'off'}")
        stderr_line(f"warning: {len(lossy)} of {len(docs)} documents do not decode to their exact bytes via "
                    f"tokenizer.bin (first: {lossy[0]}); {why}. The shards are valid; decoded samples differ "
                    f"from the text there.")
    if any(n_unk.values()):
        stderr_line(f"warning: {sum(n_unk.values())} <unk> tokens (id {sp.unk_id()}): this tokenizer has no byte "
                    f"fallback for some characters of the text")
    log(f"verified {len(docs)} documents: {len(docs) - len(lossy)} decode to their exact bytes via tokenizer.bin, "
        f"the shards read back identically, all ids < {V}, in {time.time() - t0:.1f}s")

    n_bytes = {s: sum(len(d["text"].encode("utf-8")) for d in sdocs) for s, sdocs in split_docs.items()}
    byte_ids = [i for i in range(V) if sp.IsByte(i)]
    return {
        "sp": sp,
        "model_bytes": model_bytes,
        "trained": trained,
        "vocab_size": V,
        "separator_id": sep_id,
        "separator_piece": sp.IdToPiece(sep_id),
        "special_ids": {"unk": sp.unk_id(), "bos": sp.bos_id(), "eos": sp.eos_id(), "pad": sp.pad_id()},
        "byte_fallback_ids": [min(byte_ids), max(byte_ids)] if byte_ids else None,
        "shard_version": version,
        "streams": streams,
        "tokens": {s: int(len(streams[s])) for s in streams},
        "shard_files": shard_files,
        "tokenizer_bin": tok_bin,
        "tokenizer_model": os.path.join(out, "tokenizer.model"),
        "text_bytes": n_bytes,
        "bytes_per_token": {s: round(n_bytes[s] / max(1, len(streams[s])), 3) for s in streams},
        "lossy_documents": lossy,
        "unk_tokens": n_unk,
        "normalizer": normalizer_spec(model_bytes),
    }


# ----------------------------------------------------------------------------
# the command


def check_out_dir(out, overwrite):
    """A new or empty directory, or (with --overwrite) one holding only this tool's outputs. Checked before the
    inputs are read; created after (a bad input leaves nothing behind)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"--out {out} exists and is not a directory")
    if os.path.isdir(out):
        names = sorted(os.listdir(out))
        foreign = [n for n in names if not OUTPUT_RE.fullmatch(n)]
        if foreign:
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            raise InputError(f"--out {out} holds files this tool does not write ({', '.join(foreign[:3])}{more}); "
                             f"choose a new or empty directory")
        if names and not overwrite:
            raise InputError(f"--out {out} already holds a prepared dataset ({', '.join(names[:3])}...); "
                             f"pass --overwrite to replace it")


class OneLineParser(argparse.ArgumentParser):
    """Flag errors as one `error:` line and exit 1, like every other bad input (argparse: usage + exit 2)."""

    def error(self, message):
        raise InputError(f"{message} (see --help)")


def parse_args(argv):
    ap = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", nargs="+", action="extend", required=True, metavar="PATH",
                    help=".txt files, .jsonl files, or directories of them (repeatable)")
    ap.add_argument("--out", required=True, metavar="DIR", help="output directory (new or empty; see --overwrite)")
    tok = ap.add_mutually_exclusive_group()
    tok.add_argument("--vocab-size", type=int, metavar="N", help=f"train a BPE tokenizer of this many tokens "
                     f"(default {DEFAULT_VOCAB}; at least {MIN_VOCAB})")
    tok.add_argument("--tokenizer", metavar="tokenizer.model",
                     help="use this SentencePiece model instead of training one")
    ap.add_argument("--val-fraction", type=float, default=0.05, metavar="F",
                    help="fraction of documents for validation, evenly spread (default 0.05; 0: no val)")
    ap.add_argument("--shard-tokens", type=int, default=100_000_000, metavar="N",
                    help="max tokens per shard file (default 1e8)")
    ap.add_argument("--text-field", default="text", metavar="NAME",
                    help="the .jsonl field holding the text (default text)")
    ap.add_argument("--jobs", type=int, default=None, metavar="J",
                    help="encoding processes (default: the cores; the output is the same)")
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier output of this tool in --out")
    ap.add_argument("--shard-dtype", choices=("auto", "uint16", "uint32"), default="auto",
                    help="token width in the shards: auto = uint16 (version 1) when the vocab fits, else uint32 "
                         "(version 7); uint32 forces version 7")
    ap.add_argument("--num-threads", type=int, default=DEFAULT_SPM_THREADS, metavar="N",
                    help=f"SentencePiece trainer threads (default {DEFAULT_SPM_THREADS}; fixed rather than the core "
                         f"count because it is recorded in tokenizer.model)")
    ap.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    ap.add_argument("--encode-chunk-chars", type=int, default=ENCODE_CHUNK_CHARS, help=argparse.SUPPRESS)  # tests
    args = ap.parse_args(argv)
    if args.tokenizer is None and args.vocab_size is None:
        args.vocab_size = DEFAULT_VOCAB
    if args.vocab_size is not None and not MIN_VOCAB <= args.vocab_size <= TOK_MAX_VOCAB:
        raise InputError(f"--vocab-size {args.vocab_size}: must be at least {MIN_VOCAB} (256 byte-fallback pieces + "
                         f"<unk>, <s>, </s> + at least one character) and at most {TOK_MAX_VOCAB}")
    if not 0 <= args.val_fraction < 1:
        raise InputError(f"--val-fraction {args.val_fraction}: must be in [0, 1)")
    if args.shard_tokens < 1:
        raise InputError(f"--shard-tokens {args.shard_tokens}: must be at least 1")
    if args.jobs is not None and args.jobs < 1:
        raise InputError(f"--jobs {args.jobs}: must be at least 1")
    if args.num_threads < 1:
        raise InputError(f"--num-threads {args.num_threads}: must be at least 1")
    if args.encode_chunk_chars < 1:
        raise InputError("--encode-chunk-chars must be at least 1")
    if not args.text_field:
        raise InputError("--text-field must not be empty")
    return args


def log(msg):
    print(f"[prepare_text] {msg}", flush=True)


def run(argv):
    args = parse_args(argv)
    t_start = time.time()
    check_out_dir(args.out, args.overwrite)
    given = load_tokenizer(args.tokenizer) if args.tokenizer else None
    files = gather_files(args.input, stderr_line)
    progress = not args.no_progress
    docs, file_info = read_documents(files, args.text_field, stderr_line, progress)
    if not docs:
        raise InputError(f"no documents in {' '.join(args.input)} (need .txt files or .jsonl lines with a non-empty "
                         f"\"{args.text_field}\")")
    train_docs, val_docs, val_idx = split_fraction(docs, args.val_fraction)
    n_chars = sum(len(d["text"]) for d in docs)
    log(f"documents: {len(docs)} from {len(files)} file(s) -> train {len(train_docs)}, val {len(val_docs)} "
        f"({n_chars:,} characters)")
    if len(docs) == 1 and args.val_fraction > 0:
        stderr_line("warning: only one document: it goes to train and no val shard is written; split the text into "
                    "several files or .jsonl lines for a validation set, or train with --val-data ''")
    created = not os.path.exists(args.out)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {args.out}: cannot create it: {e.strerror}")
    try:
        write_outputs(args, docs, train_docs, val_docs, file_info, given)
    except BaseException:  # a failed or interrupted run leaves no partial dataset (and no folder it made)
        for name in os.listdir(args.out):
            if OUTPUT_RE.fullmatch(name):
                os.remove(os.path.join(args.out, name))
        if created and not os.listdir(args.out):
            os.rmdir(args.out)
        raise
    log(f"done in {time.time() - t_start:.1f}s")


def write_outputs(args, docs, train_docs, val_docs, file_info, given):
    """The tokenizer, shards and meta.json (last) into the existing args.out."""
    progress = not args.no_progress
    remove_stale_outputs(args.out)
    res = build_dataset(args.out, train_docs, val_docs, log, vocab_size=args.vocab_size,
                        model_bytes=given[0] if given else None, num_threads=args.num_threads,
                        shard_tokens=args.shard_tokens, even_shards=True,
                        shard_dtype=None if args.shard_dtype == "auto" else args.shard_dtype, jobs=args.jobs,
                        strict=False, progress=progress, chunk_chars=args.encode_chunk_chars, write_empty_val=False)

    V = res["vocab_size"]
    version = res["shard_version"]
    shards = {s: [{"file": os.path.basename(p), "tokens": int(read_shard_count(p))} for p in res["shard_files"][s]]
              for s in ("train", "val")}
    all_files = res["shard_files"]["train"] + res["shard_files"]["val"] + [res["tokenizer_bin"], res["tokenizer_model"]]
    meta = {
        "tool": "data/prepare_text.py",
        "format": {
            "shard": {"magic": SHARD_FORMATS[version]["magic"], "version": version, "header_int32": HEADER_INTS,
                      "token_dtype": SHARD_FORMATS[version]["name"], "max_tokens_per_shard": args.shard_tokens,
                      "layout": "split evenly; a document may continue into the next shard"},
            "tokenizer_bin": {"magic": TOK_MAGIC, "version": TOK_VERSION,
                              "header": "[magic, version, vocab_size, separator_id]",
                              "entry": "uint8 length + bytes; control/unknown ids have length 0"},
        },
        "vocab_size": V,
        "separator_id": res["separator_id"],
        "separator_piece": res["separator_piece"],
        "separator_placement": "before every document",
        "special_ids": res["special_ids"],
        "byte_fallback_ids": res["byte_fallback_ids"],
        "tokens": res["tokens"],
        "shards": shards,
        "documents": {"train": len(train_docs), "val": len(val_docs),
                      "skipped_empty": sum(f["skipped_empty"] for f in file_info)},
        "val_documents": [d["name"] for d in val_docs[:1000]],  # the first 1000
        "val_documents_listed": min(1000, len(val_docs)),
        "split_rule": (f"documents in input order; n_val = round(N * {args.val_fraction}) clipped to [1, N-1] "
                       f"(0 for N = 1 or fraction 0); document floor((2k+1) N / (2 n_val)) -> val"),
        "text_bytes": res["text_bytes"],
        "bytes_per_token": res["bytes_per_token"],
        "round_trip": {"exact_documents": len(docs) - len(res["lossy_documents"]),
                       "lossy_documents": len(res["lossy_documents"]),
                       "first_lossy": res["lossy_documents"][0] if res["lossy_documents"] else None,
                       "unk_tokens": res["unk_tokens"]},
        "inputs": {"arguments": args.input, "text_field": args.text_field, "files": file_info},
        "options": {"vocab_size": args.vocab_size, "tokenizer": args.tokenizer, "val_fraction": args.val_fraction,
                    "shard_tokens": args.shard_tokens, "shard_dtype": args.shard_dtype,
                    "num_threads": args.num_threads},
        "tokenizer": {"source": "trained on the train documents" if res["trained"] else "given",
                      "given": ({"path": args.tokenizer, "sha256": hashlib.sha256(res["model_bytes"]).hexdigest()}
                                if not res["trained"] else None),
                      "normalizer": res["normalizer"],
                      "trainer": ({**TRAINER_OPTIONS, "num_threads": args.num_threads,
                                   "trained_on": "train documents only"} if res["trained"] else None)},
        "versions": {"prepare_text.py_sha256": sha256_file(os.path.abspath(__file__)),
                     "sentencepiece": spm.__version__, "numpy": np.__version__,
                     "python": ".".join(map(str, sys.version_info[:3]))},
        "files": {os.path.basename(p): sha256_file(p) for p in all_files},
    }
    with open(os.path.join(args.out, "meta.json"), "w") as f:  # last: marks the output complete
        json.dump(meta, f, indent=2, ensure_ascii=False)
        f.write("\n")

    small = min([s["tokens"] for s in shards["train"] + shards["val"]])
    log(f"wrote {len(shards['train'])} train and {len(shards['val'])} val shard(s) (uint{16 if version == 1 else 32}, "
        f"version {version}), tokenizer.bin, tokenizer.model, meta.json to {args.out}")
    log(f"tokens: train {res['tokens']['train']:,}  val {res['tokens']['val']:,}  "
        f"(bytes/token {res['bytes_per_token']['train']}); the smallest shard has {small:,} tokens (the trainer "
        f"needs seq_len+1 per shard)")
    val = f"--val-data '{args.out}/val_*.bin'" if shards["val"] else "--val-data ''"
    log(f"train with: ./train_moe --model k2-l1 --train-data '{args.out}/train_*.bin' {val} "
        f"--tokenizer {args.out}/tokenizer.bin --vocab-size {V}")


def read_shard_count(path):
    with open(path, "rb") as f:
        return int(np.frombuffer(f.read(12), dtype="<i4")[2])


def main(argv=None):
    try:
        run(sys.argv[1:] if argv is None else argv)
    except InputError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
