#!/usr/bin/python3
"""Write and inspect tiny llm.c token shards (for tests). Standard library only.

Formats (header = 256 little-endian int32, then the tokens):
  version 1: header[0]=20240520, header[1]=1, header[2]=n_tokens, tokens uint16 LE
  version 7: header[0]=20240801, header[1]=7, header[2]=n_tokens, tokens uint32 LE
Other header ints are 0.

  shard_tool.py write OUT.bin [--version 1|7] (--tokens 1,2,3 | --random N --vocab V [--seed S])
                [--bad-magic] [--bad-version] [--header-count N]
                [--token-max | --inject-token VALUE] [--inject-at POS]
                [--truncate K] [--append K]
  shard_tool.py info FILE [--vocab V]

Corruptions for negative tests (applied in this order):
  --bad-magic        header[0] = 12345678
  --bad-version      header[1] = 99
  --header-count N   header[2] = N (instead of the real count)
  --token-max        set one token to an out-of-range id: V when --vocab V is
                     given, else the largest value the format holds (65535 / 4294967295)
  --inject-token X   set one token to X (must fit the format's dtype)
  --inject-at POS    which token --token-max/--inject-token replace (default: last)
  --truncate K       drop the last K bytes of the file
  --append K         append K zero bytes to the file

  shard_tool.py tokenizer OUT.bin --vocab V [--separator S] [--header-vocab N]
                [--piece-len I:N] [--truncate K] [--append K] [--header-only]

`tokenizer` writes an llm.c tokenizer.bin (int32 header[256] = {20240328, 2,
vocab, separator}, then per id a uint8 length and the bytes): piece i is
"t<i>" (id 0, the separator by default, is empty). For negative tests:
  --separator S      header[3] = S (default 0)
  --header-vocab N   header[2] = N, while V pieces are written
  --piece-len I:N    piece I's length byte says N (its bytes are unchanged)
  --truncate/--append K  as for shards; --header-only  only the 1024-byte header

`info` prints the header, the token count, the size check and min/max token;
it exits 1 if the file is not a valid shard (or has a token >= --vocab).
"""

import argparse
import random
import struct
import sys

FORMATS = {
    1: {"magic": 20240520, "code": "H", "width": 2, "max": 0xFFFF},
    7: {"magic": 20240801, "code": "I", "width": 4, "max": 0xFFFFFFFF},
}
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4


def build(args):
    fmt = FORMATS[args.version]
    if args.tokens is not None:
        toks = [int(t) for t in args.tokens.split(",") if t.strip() != ""]
    else:
        if args.vocab is None:
            sys.exit("error: --random needs --vocab")
        rng = random.Random(args.seed)
        toks = [rng.randrange(args.vocab) for _ in range(args.random)]
    for t in toks:
        if not 0 <= t <= fmt["max"]:
            sys.exit(f"error: token {t} does not fit version {args.version} tokens")
    if args.token_max or args.inject_token is not None:
        if not toks:
            sys.exit("error: no token to replace")
        pos = args.inject_at if args.inject_at is not None else len(toks) - 1
        if not -len(toks) <= pos < len(toks):
            sys.exit(f"error: --inject-at {pos} outside 0..{len(toks) - 1}")
        if args.inject_token is not None:
            value = args.inject_token
        else:
            value = args.vocab if args.vocab is not None else fmt["max"]
        if not 0 <= value <= fmt["max"]:
            sys.exit(f"error: value {value} does not fit version {args.version} tokens")
        toks[pos] = value

    header = [0] * HEADER_INTS
    header[0] = 12345678 if args.bad_magic else fmt["magic"]
    header[1] = 99 if args.bad_version else args.version
    header[2] = args.header_count if args.header_count is not None else len(toks)
    data = struct.pack(f"<{HEADER_INTS}i", *header) + struct.pack(f"<{len(toks)}{fmt['code']}", *toks)
    data = save(args, data)
    print(f"wrote {args.out}: version {args.version}, {len(toks)} tokens, {len(data)} bytes")


def save(args, data):
    """--truncate / --append damage, then the file; returns what was written"""
    if args.truncate:
        data = data[: max(0, len(data) - args.truncate)]
    if args.append:
        data += b"\0" * args.append
    with open(args.out, "wb") as f:
        f.write(data)
    return data


def tokenizer(args):
    header = [0] * HEADER_INTS
    header[0], header[1] = 20240328, 2
    header[2] = args.header_vocab if args.header_vocab is not None else args.vocab
    header[3] = args.separator
    data = struct.pack(f"<{HEADER_INTS}i", *header)
    if not args.header_only:
        lengths = {}
        for spec in args.piece_len:
            i, n = (int(x) for x in spec.split(":"))
            lengths[i] = n
        for i in range(args.vocab):
            piece = b"" if i == 0 else f"t{i}".encode()
            data += bytes([lengths.get(i, len(piece))]) + piece
    data = save(args, data)
    print(f"wrote {args.out}: tokenizer, {args.vocab} pieces, {len(data)} bytes")


def info(args):
    with open(args.file, "rb") as f:
        data = f.read()
    problems = []
    print(f"file: {args.file} ({len(data)} bytes)")
    if len(data) < HEADER_BYTES:
        print(f"INVALID: shorter than the {HEADER_BYTES}-byte header")
        return 1
    header = struct.unpack(f"<{HEADER_INTS}i", data[:HEADER_BYTES])
    magic, version, count = int(header[0]), int(header[1]), int(header[2])
    print(f"header: magic {magic} version {version} count {count}")
    fmt = FORMATS.get(version)
    if fmt is None:
        print(f"INVALID: unknown version {version} (expected 1 or 7)")
        return 1
    if magic != fmt["magic"]:
        problems.append(f"magic {magic} != {fmt['magic']} for version {version}")
    width = fmt["width"]
    expect = HEADER_BYTES + width * count
    print(f"token dtype: {'uint16' if width == 2 else 'uint32'}; expected size {expect} bytes")
    if count < 0 or len(data) != expect:
        problems.append(f"size {len(data)} != expected {expect}")
    n_avail = (len(data) - HEADER_BYTES) // width
    toks = struct.unpack(f"<{n_avail}{fmt['code']}", data[HEADER_BYTES: HEADER_BYTES + n_avail * width])
    if toks:
        print(f"tokens read: {len(toks)}  min {min(toks)}  max {max(toks)}")
        if args.vocab is not None:
            bad = [k for k, t in enumerate(toks) if t >= args.vocab]
            if bad:
                problems.append(f"{len(bad)} token(s) >= vocab {args.vocab} (first at index {bad[0]})")
    else:
        print("tokens read: 0")
    if problems:
        for p in problems:
            print(f"INVALID: {p}")
        return 1
    print("OK")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="write a shard")
    w.add_argument("out")
    w.add_argument("--version", type=int, choices=(1, 7), default=1)
    src = w.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokens", help="comma-separated token ids")
    src.add_argument("--random", type=int, metavar="N", help="N uniform random tokens in [0, vocab)")
    w.add_argument("--vocab", type=int)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--bad-magic", action="store_true")
    w.add_argument("--bad-version", action="store_true")
    w.add_argument("--header-count", type=int)
    inj = w.add_mutually_exclusive_group()
    inj.add_argument("--token-max", action="store_true")
    inj.add_argument("--inject-token", type=int)
    w.add_argument("--inject-at", type=int)
    w.add_argument("--truncate", type=int, default=0, metavar="K")
    w.add_argument("--append", type=int, default=0, metavar="K")
    t = sub.add_parser("tokenizer", help="write a tokenizer.bin")
    t.add_argument("out")
    t.add_argument("--vocab", type=int, required=True)
    t.add_argument("--separator", type=int, default=0)
    t.add_argument("--header-vocab", type=int)
    t.add_argument("--piece-len", action="append", default=[], metavar="I:N")
    t.add_argument("--truncate", type=int, default=0, metavar="K")
    t.add_argument("--append", type=int, default=0, metavar="K")
    t.add_argument("--header-only", action="store_true")
    i = sub.add_parser("info", help="print header, count, min/max token; exit 1 if invalid")
    i.add_argument("file")
    i.add_argument("--vocab", type=int)
    args = ap.parse_args()
    if args.cmd == "write":
        build(args)
        return 0
    if args.cmd == "tokenizer":
        tokenizer(args)
        return 0
    return info(args)


if __name__ == "__main__":
    sys.exit(main())
