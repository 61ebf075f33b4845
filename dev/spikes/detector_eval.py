#!/usr/bin/env python3
"""The spike detector's false alarms and misses on a fixed set of runs (issue 14, part 2b).

Clean runs (no injection: every spike record is a false alarm) and runs with --inject-spike N (the injected step
is ground truth: a spike record at N is a hit, none is a miss). The trainer writes `{"type":"spike"}` records into
log.jsonl; this script runs the trainer and counts them.

    dev/spikes/detector_eval.py --trainer ./train_moe --root /tmp/spike_eval/after   # train + count (resumable)
    dev/spikes/detector_eval.py --root /tmp/spike_eval/after --count-only             # count finished runs only
    dev/spikes/detector_eval.py --root /tmp/spike_eval/before --replay
        # no training: feed each finished run's logged (loss, grad norm) sequence through this checkout's
        # detector (train/spikes.c, built into ROOT/spike_replay with dev/spikes/spike_replay.c) and count its
        # verdicts instead of the log's spike records

The detector never changes training unless --skip-spikes (not used here), so the runs' losses do not depend on
which detector the trainer had; --replay uses that to score a new detector on the runs an old one trained.
The runs: k2-nano's default settings (`make train`) for its first 300 steps with the default run's warm-up of
100 steps, and the ladder k2-l1..k2-l5 with the scaling sweep's settings (batch 8 x 256, lr 8e-3 and 1.6e-2,
AdamW and Muon; l1 and l2 at their sweep length, l3..l5 their first 300 steps with their sweep warm-up).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# the scaling sweep's run settings (scripts/scaling_sweep.py: batch 8, seq 256, validation off here)
SWEEP = ["--batch-size", "8", "--seq-len", "256"]
QUIET = ["--val-every", "0", "--sample-every", "0", "--ckpt-every", "0"]


def ladder(model, steps, warmup, optim="adamw", lr="8e-3", seed=None):
    a = ["--model", model, "--optim", optim, "--lr", lr, "--steps", str(steps), "--warmup", str(warmup)] + SWEEP
    return a + (["--seed", str(seed)] if seed else [])


# name: (trainer flags, injected step or 0)
RUNS = {}
NANO = ["--model", "k2-nano", "--steps", "300", "--warmup", "100"]  # `make train`: 1000 steps, warm-up 100
RUNS["nano-default-300"] = (NANO, 0)
# sweep lengths (4 tokens per active parameter): l1 316, l2 502, l3 818, l4 1096, l5 1414; warm-up steps/10 <= 100
RUNS["l1-adamw-8e-3"] = (ladder("k2-l1", 316, 31), 0)
RUNS["l1-adamw-8e-3-seed2"] = (ladder("k2-l1", 316, 31, seed=2), 0)
RUNS["l1-adamw-1.6e-2"] = (ladder("k2-l1", 316, 31, lr="1.6e-2"), 0)
RUNS["l1-muon-1.6e-2"] = (ladder("k2-l1", 316, 31, optim="muon", lr="1.6e-2"), 0)
RUNS["l2-adamw-8e-3"] = (ladder("k2-l2", 502, 50), 0)
RUNS["l2-muon-1.6e-2"] = (ladder("k2-l2", 502, 50, optim="muon", lr="1.6e-2"), 0)
RUNS["l3-adamw-8e-3"] = (ladder("k2-l3", 300, 81), 0)
RUNS["l4-adamw-8e-3"] = (ladder("k2-l4", 300, 100), 0)
RUNS["l5-adamw-8e-3"] = (ladder("k2-l5", 300, 100), 0)
# injected spikes: during warm-up (the loss still falling fast), just after it, mid-run and late
for n in (20, 60, 150, 300):
    RUNS["l1-adamw-8e-3-inject%d" % n] = (ladder("k2-l1", 316, 31), n)
for n in (100, 400):
    RUNS["l2-muon-1.6e-2-inject%d" % n] = (ladder("k2-l2", 502, 50, optim="muon", lr="1.6e-2"), n)
RUNS["l3-adamw-8e-3-inject200"] = (ladder("k2-l3", 300, 81), 200)
RUNS["nano-default-inject75"] = (["--model", "k2-nano", "--steps", "120", "--warmup", "100"], 75)

AFTERMATH = 5  # alarms at N+1..N+5 after an injection at N: the damaged model's loss, not a false alarm


def argv_of(args, name):
    flags, inject = RUNS[name]
    out = os.path.join(args.root, name)
    a = [args.trainer] + flags + QUIET + ["--threads", str(args.threads), "--out", out, "--overwrite"]
    return a + (["--inject-spike", str(inject)] if inject else [])


def steps_of(name):
    f = RUNS[name][0]
    return int(f[f.index("--steps") + 1])


def finished(args, name):
    return os.path.exists(os.path.join(args.root, name, "DONE_%08d" % steps_of(name)))


def train(args, name):
    if finished(args, name):
        return name, "found"
    os.makedirs(args.root, exist_ok=True)
    t0 = time.time()
    with open(os.path.join(args.root, name + ".out"), "w") as out:
        rc = subprocess.call(argv_of(args, name), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if rc != 0:
        return name, "FAILED (exit %d, see %s.out)" % (rc, os.path.join(args.root, name))
    return name, "trained in %.0f s" % (time.time() - t0)


def log_records(args, name):
    with open(os.path.join(args.root, name, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def alarms_from_log(args, name):
    return [r["step"] for r in log_records(args, name) if r["type"] == "spike"]


def alarms_from_replay(args, name):
    """The steps the detector of args.replay flags on this run's logged (loss, grad norm) sequence. The replay
    gets the trainer's flags that matter (--spike-z, --spike-window; the defaults here) and pushes every step
    (no --skip-spikes), as the trainer did."""
    steps = [r for r in log_records(args, name) if r["type"] == "step"]
    text = "".join("%d %.9g %.9g\n" % (r["step"], r["loss"], r["grad_norm"]) for r in steps)
    res = subprocess.run([args.replay_bin, "6", "128"], input=text, capture_output=True, text=True, check=True)
    return [int(line.split()[0]) for line in res.stdout.splitlines() if line.strip()]


def score(name, alarms):
    inject = RUNS[name][1]
    hit = inject in alarms if inject else None
    after = [s for s in alarms if inject and inject < s <= inject + AFTERMATH]
    false = [s for s in alarms if s != inject and s not in after]
    return hit, after, false


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="where the runs live (one directory per run)")
    p.add_argument("--trainer", default=os.path.join(ROOT, "train_moe"))
    p.add_argument("--threads", type=int, default=1, help="trainer threads per run [1]")
    p.add_argument("--jobs", type=int, default=2, help="runs at once [2]")
    p.add_argument("--only", help="comma-separated run names (default: all)")
    p.add_argument("--count-only", action="store_true", help="train nothing; count the finished runs")
    p.add_argument("--replay", action="store_true",
                   help="train nothing; score this checkout's detector on the logged losses of the finished runs")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = p.parse_args()
    args.root = os.path.abspath(args.root)
    names = args.only.split(",") if args.only else list(RUNS)
    for n in names:
        if n not in RUNS:
            sys.exit("error: --only: no run named %s (runs: %s)" % (n, ", ".join(RUNS)))
    if args.replay:
        args.replay_bin = os.path.join(args.root, "spike_replay")
        subprocess.run(["cc", "-O2", "-std=gnu11", "-I" + os.path.join(ROOT, "train"),
                        os.path.join(ROOT, "dev/spikes/spike_replay.c"), os.path.join(ROOT, "train/spikes.c"), "-lm",
                        "-o", args.replay_bin], check=True)
    if not args.count_only and not args.replay:
        with ThreadPoolExecutor(args.jobs) as ex:
            for name, what in ex.map(lambda n: train(args, n), names):
                print("%-28s %s" % (name, what), flush=True)
    rows, fa_clean, fa_inj, hits, n_inj = [], 0, 0, 0, 0
    for n in names:
        if not finished(args, n):
            rows.append((n, "not finished", "", "", ""))
            continue
        alarms = alarms_from_replay(args, n) if args.replay else alarms_from_log(args, n)
        hit, after, false = score(n, alarms)
        inject = RUNS[n][1]
        if inject:
            n_inj += 1
            hits += hit
            fa_inj += len(false)
        else:
            fa_clean += len(false)
        rows.append((n, str(inject or "-"), {True: "hit", False: "MISS", None: "-"}[hit],
                     " ".join(map(str, false)) or "0", " ".join(map(str, after)) or "-"))
    head = ("run", "injected at", "injected spike", "false alarms (steps)", "alarms N+1..N+%d" % AFTERMATH)
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        for r in [head] + rows:
            print("%-28s %-12s %-15s %-22s %s" % r)
    print("total: %d false alarm(s) on %d clean runs, %d on the injected runs outside N..N+%d; %d of %d injected "
          "spikes caught" % (fa_clean, sum(1 for n in names if not RUNS[n][1]), fa_inj, AFTERMATH, hits, n_inj))


if __name__ == "__main__":
    main()
