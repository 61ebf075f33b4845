#!/usr/bin/python3
"""Every log the trainer wrote under the given folders (log.jsonl, replay_S0_S1.jsonl) parses as strict JSON in
strict UTF-8. Other .jsonl files (a test's input corpora, some deliberately broken) are not logs and are left out.

    check_logs.py [--exclude SUBSTRING]... DIR [DIR...]

(--exclude: leave out files whose path contains SUBSTRING, e.g. a test's deliberately broken hand-made log)

Strict: the bytes decode as UTF-8 with no invalid sequence (Python's decoder refuses overlong forms, surrogates
and code points past U+10FFFF); each line is one JSON object; no NaN/Infinity constants (JSON has none); the file
ends with a newline (no record cut short). Prints a FAIL line per bad file, a PASS line for the rest and the usual summary line (one check per file); exits
non-zero if any file fails or none is found.
"""
import json
import os
import sys


def refuse_constant(name):
    raise ValueError("non-JSON constant " + name)


def check(path):
    data = open(path, "rb").read()
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as e:
        return f"not UTF-8 at byte {e.start}: {data[max(0, e.start - 20):e.start + 20]!r}"
    if data and not data.endswith(b"\n"):
        return "the last line has no newline (a record cut short)"
    for i, line in enumerate(text.split("\n")[:-1] if text else [], 1):
        try:
            rec = json.loads(line, parse_constant=refuse_constant)
        except ValueError as e:
            return f"line {i}: {e}: {line[:160]}"
        if not isinstance(rec, dict):
            return f"line {i}: not a JSON object: {line[:160]}"
    return None


def main():
    args, exclude, dirs = sys.argv[1:], [], []
    while args:
        a = args.pop(0)
        if a == "--exclude" and args:
            exclude.append(args.pop(0))
        else:
            dirs.append(a)
    files = []
    for d in dirs:
        for root, _, names in os.walk(d):
            files += [os.path.join(root, n) for n in names
                      if n == "log.jsonl" or (n.startswith("replay_") and n.endswith(".jsonl"))]
    files = [f for f in files if not any(x in f for x in exclude)]
    passed = failed = 0
    for f in sorted(files):
        why = check(f)
        if why:
            print(f"FAIL {f}: {why}")
            failed += 1
        else:
            passed += 1
    if not files:
        print(f"FAIL no .jsonl log under {' '.join(dirs)}")
        failed += 1
    else:
        print(f"PASS {passed} of {len(files)} logs are strict JSON lines in strict UTF-8")
    print(f"{passed} passed, {failed} failed, 0 skipped")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
