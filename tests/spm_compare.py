#!/usr/bin/python3
"""data/spm.c's encoder against python3 sentencepiece: the same ids for every text.

    spm_compare.py compare --bin build/tests/spm_encode --model tokenizer.model [--corpus DIR]... [--lines N]
    spm_compare.py train --out DIR --corpus-or-synthetic DIR...   (the variant models the test also checks)
    spm_compare.py unused --model IN --out OUT                    (IN with some pieces marked UNUSED)
    spm_compare.py tokenizer --out DIR [--corpus DIR]...          (tokenizer.model + tokenizer.bin as
                                                                   data/prepare_text.py makes them, small vocab)

compare: the texts are N lines of the corpus .txt files (without a corpus: of synthetic documents) (every file's lines in turn, so both corpora are in),
20 whole documents (newlines, long inputs), random slices of the documents (cut anywhere, also inside a
multi-byte character: bytes that are not UTF-8) and fixed edge cases (empty, spaces, tabs, newlines, é, 中文,
emoji, characters never seen in training, NUL, lone bytes). Each text goes to the C encoder as hex; sentencepiece
encodes the same bytes. Prints one line, "N texts (M ids) encode identically" or the first texts that differ,
and exits 1 when any differs.
"""
import argparse
import os
import random
import subprocess
import sys

import sentencepiece as spm

EDGE = [
    "", " ", "  ", "   ", "a", " a", "a ", "  a  b   c  ", "\t", "a\tb", "\n", "a\nb", "\n\n", " \n ", "\r\n",
    "hello world", "Hello, World!", "é", "café au lait", "naïve résumé", "中文", "中文 text 混合", "日本語のテキスト",
    "😀", "emoji 😀🎉 and 👍🏽", "\u2581", "\u2581\u2581 x", "ＡＢＣ full width", "ﬁ ligature", "Ω≈ç√∫",
    "\u0301 combining", "a\u0000b", "\u00a0non-breaking\u00a0space", "\u200bzero width", "<s>", "</s>", "<unk>",
    "<0x41>", "1234567890", "3.14159", "$1,000,000.00", "e-mail: a@b.c", "CAPITALS AND lower",
    "the the the the the", "    indented line", "trailing spaces    ", "tab\tseparated\tvalues\t",
    "Mr. President, Mr. Speaker", "Call me Ishmael.", "\U0001F600" * 5, "x" * 300, " " * 50, "ab" * 100,
    "\U00010348 gothic", "\uffff", "\ufffd", "mixed\u2028separators\u2029here",
]
# byte strings that are not UTF-8 (sentencepiece turns each bad byte into U+FFFD)
EDGE_BYTES = [b"\xff", b"a\xffb", b"\xc3", b"\xc3(", b"\xe4\xb8", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
              b"\xc0\xaf", b"\x80\x80 x", b"caf\xe9"]


def corpus_docs(dirs):
    docs = []
    for d in dirs:
        for name in sorted(os.listdir(d)):
            if name.endswith(".txt"):
                with open(os.path.join(d, name), "rb") as f:
                    docs.append(f.read())
    return docs


def texts_for(dirs, n_lines, n_docs, seed=1):
    rng = random.Random(seed)
    docs = corpus_docs(dirs)
    if not docs:  # no corpus at hand: synthetic documents (other words, the same kinds of text)
        docs = [synthetic_text(rng, 3000).encode("utf-8") for _ in range(20)]
    texts = [t.encode("utf-8") for t in EDGE] + list(EDGE_BYTES)
    if docs:
        # the lines of every document in turn, so every corpus is in the sample
        lines = [doc.split(b"\n") for doc in docs]
        picked, i = [], 0
        while len(picked) < n_lines and any(lines):
            ls = lines[i % len(lines)]
            if ls:
                picked.append(ls.pop(0))
            i += 1
        texts += picked
        texts += [docs[k] for k in sorted(rng.sample(range(len(docs)), min(n_docs, len(docs))))]
        for _ in range(500):
            doc = docs[rng.randrange(len(docs))]
            a = rng.randrange(len(doc))
            texts.append(doc[a:a + rng.randrange(1, 400)])
    return texts


def compare(args):
    sp = spm.SentencePieceProcessor(model_file=args.model)
    texts = texts_for(args.corpus or [], args.lines, args.docs)
    want = [sp.encode(t) for t in texts]
    inp = "".join(t.hex() + "\n" for t in texts).encode()
    r = subprocess.run([args.bin, args.model], input=inp, capture_output=True)
    if r.returncode != 0:
        print(f"FAIL the C encoder exited {r.returncode}: {r.stderr.decode(errors='replace').strip()}")
        return 1
    got = [[int(x) for x in line.split()] for line in r.stdout.decode().split("\n")[:-1]]
    if len(got) != len(texts):
        print(f"FAIL the C encoder printed {len(got)} lines for {len(texts)} texts")
        return 1
    bad = [i for i in range(len(texts)) if got[i] != want[i]]
    if bad:
        for i in bad[:3]:
            print(f"  text {i} {texts[i][:80]!r}: C {got[i][:20]}, sentencepiece {want[i][:20]}")
        print(f"FAIL {len(bad)} of {len(texts)} texts encode differently")
        return 1
    n_ids = sum(len(w) for w in want)
    n_bytes = sum(len(t) for t in texts)
    print(f"{len(texts)} texts ({n_bytes} bytes, {n_ids} ids) encode identically")
    return 0


def synthetic_text(rng, n_words):
    """Text with enough distinct words for a vocabulary of a thousand pieces, when no corpus is at hand."""
    syllables = ["ka", "to", "re", "mi", "sa", "lu", "ne", "po", "ri", "de", "va", "qu", "ch", "th", "é", "ü",
                 "中", "文", "st", "ng", "ar", "on", "el", "is"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randrange(1, 5))) for _ in range(3000)]
    words += ["the", "of", "and", "to", "1848", "42", "—", "“quoted”", "Ahab,", "Congress."]
    out = []
    for i in range(n_words):
        out.append(words[min(int(rng.paretovariate(1.1)) - 1, len(words) - 1)] if i % 3 else rng.choice(words))
        if i % 13 == 12:
            out.append(".\n")
    return " ".join(out)


def training_lines(dirs):
    rng = random.Random(2)
    docs = [d.decode("utf-8", "replace") for d in corpus_docs(dirs or [])]
    text = "\n".join(d[:20000] for d in docs) if docs else synthetic_text(rng, 60000)
    # sentencepiece skips lines longer than max_sentence_length (some documents are one long line): cut them
    return [l[i:i + 1000] for l in text.split("\n") for i in range(0, len(l), 1000) if l.strip()][:6000]


def tokenizer(args):
    """A pair made the way data/prepare_text.py makes one (its trainer options and tokenizer.bin writer), with a
    small vocabulary."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data"))
    import prepare_text
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "tokenizer.model")
    with open(path, "wb") as f:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(training_lines(args.corpus)), model_writer=f, vocab_size=args.vocab_size,
            input_sentence_size=0, shuffle_input_sentence=False, num_threads=1, unk_id=0, bos_id=1, eos_id=2,
            pad_id=-1, minloglevel=2, **prepare_text.TRAINER_OPTIONS)
    sp = spm.SentencePieceProcessor(model_file=path)
    table = prepare_text.tokenizer_table(sp)
    prepare_text.write_tokenizer_bin(os.path.join(args.out, "tokenizer.bin"), table, sp.bos_id())
    print(f"{args.out}: tokenizer.model and tokenizer.bin, {len(table)} pieces")
    return 0


def train(args):
    """Variant models: the sentencepiece settings the C encoder handles besides the default corpus's."""
    lines = training_lines(args.corpus)
    os.makedirs(args.out, exist_ok=True)
    variants = {
        # sentencepiece's own defaults: a dummy prefix, extra spaces removed; user-defined pieces taken whole
        "dummy_prefix": dict(add_dummy_prefix=True, remove_extra_whitespaces=True, byte_fallback=True,
                             user_defined_symbols=["<mask>", "@@", "the whale"]),
        # no byte fallback (runs of unknown characters: one <unk>), whitespace as a suffix, no escaping
        "suffix_unk": dict(add_dummy_prefix=True, remove_extra_whitespaces=False, byte_fallback=False,
                           treat_whitespace_as_suffix=True, character_coverage=0.98),
        # refused by the C loader: a normalization table; a unigram model
        "nfkc": dict(normalization_rule_name="nmt_nfkc", byte_fallback=True),
        "unigram": dict(model_type="unigram", normalization_rule_name="identity", byte_fallback=True),
    }
    for name, extra in variants.items():
        opts = dict(model_type="bpe", vocab_size=args.vocab_size, normalization_rule_name="identity",
                    character_coverage=1.0, num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,
                    minloglevel=2)
        opts.update(extra)
        with open(os.path.join(args.out, name + ".model"), "wb") as f:
            spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=f, **opts)
    print(f"trained {len(variants)} variant models in {args.out}")
    return 0


# ---- a minimal protobuf rewrite: mark some pieces UNUSED (sentencepiece then splits them back when encoding)

def varint(b, i):
    x = s = 0
    while True:
        c = b[i]
        i += 1
        x |= (c & 0x7F) << s
        s += 7
        if c < 0x80:
            return x, i


def put_varint(x):
    out = bytearray()
    while True:
        c = x & 0x7F
        x >>= 7
        if x:
            out.append(c | 0x80)
        else:
            out.append(c)
            return bytes(out)


def fields(b):
    i, out = 0, []
    while i < len(b):
        start = i
        key, i = varint(b, i)
        wire = key & 7
        if wire == 0:
            _, i = varint(b, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            n, i = varint(b, i)
            i += n
        else:
            raise ValueError(f"wire type {wire}")
        out.append((key >> 3, wire, b[start:i]))
    return out


def unused(args):
    data = open(args.model, "rb").read()
    out, k, marked = bytearray(), 0, 0
    for num, wire, raw in fields(data):
        if num == 1:
            # the piece message: its body after the key and length
            _, j = varint(raw, 0)
            n, j = varint(raw, j)
            body = raw[j:j + n]
            types = [f for f in fields(body) if f[0] == 3]
            if not types and k >= 300 and k % 4 == 0:  # a NORMAL piece (no type field): every 4th from id 300
                body = body + put_varint(3 << 3) + put_varint(5)
                marked += 1
            raw = put_varint((1 << 3) | 2) + put_varint(len(body)) + body
            k += 1
        out += raw
    open(args.out, "wb").write(bytes(out))
    print(f"{args.out}: {marked} of {k} pieces marked UNUSED")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--bin", required=True)
    c.add_argument("--model", required=True)
    c.add_argument("--corpus", action="append", help="a folder of .txt documents (repeatable)")
    c.add_argument("--lines", type=int, default=4000)
    c.add_argument("--docs", type=int, default=20, help="whole documents")
    t = sub.add_parser("train")
    t.add_argument("--out", required=True)
    t.add_argument("--corpus", action="append")
    t.add_argument("--vocab-size", type=int, default=1000)
    u = sub.add_parser("unused")
    u.add_argument("--model", required=True)
    u.add_argument("--out", required=True)
    k = sub.add_parser("tokenizer")
    k.add_argument("--out", required=True)
    k.add_argument("--corpus", action="append")
    k.add_argument("--vocab-size", type=int, default=1000)
    args = ap.parse_args()
    return {"compare": compare, "train": train, "unused": unused, "tokenizer": tokenizer}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
