#!/usr/bin/python3
"""Compares two train_moe runs: step losses (relative tolerance) and the final model files (max |diff| relative to
the largest weight). Used by tests/test_mpi.sh. Prints one line and exits 0 when within tolerance, 1 otherwise.

    compare_runs.py RUN_A RUN_B STEP [--loss-rtol 1e-5] [--weight-rl2 1e-4] [--weight-atol 1e-4]

Weights: float sums in a different order (ranks) change a few tiny gradients at the rounding level, and AdamW or
Muon turns those into O(lr) moves; so the whole weight vector must agree closely (relative L2) and no element may
differ by more than weight-atol (pass a small multiple of lr).
"""
import argparse
import json
import sys

import numpy as np


def losses(run):
    out = {}
    for line in open(run + "/log.jsonl"):
        r = json.loads(line)
        if r.get("type") == "step":
            out[r["step"]] = r["loss"]
    return out


def model(run, step):
    raw = open("%s/model_%08d.bin" % (run, step), "rb").read()
    header = np.frombuffer(raw[:1024], dtype="<i4")
    n = int(header[20]) | (int(header[21]) << 31)
    return np.frombuffer(raw[1024:1024 + 4 * n], dtype="<f4"), np.frombuffer(raw[1024 + 4 * n:], dtype="<f4")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("step", type=int)
    ap.add_argument("--loss-rtol", type=float, default=1e-5)
    ap.add_argument("--weight-rl2", type=float, default=1e-4)
    ap.add_argument("--weight-atol", type=float, default=1e-4)
    args = ap.parse_args()
    la, lb = losses(args.a), losses(args.b)
    if sorted(la) != sorted(lb) or not la:
        print("steps differ: %s vs %s" % (sorted(la), sorted(lb)))
        return 1
    worst_loss = max(abs(la[s] - lb[s]) / abs(la[s]) for s in la)
    pa, ba = model(args.a, args.step)
    pb, bb = model(args.b, args.step)
    if pa.shape != pb.shape:
        print("model sizes differ: %d vs %d" % (pa.size, pb.size))
        return 1
    worst_w = float(np.max(np.abs(pa - pb)))
    rl2 = float(np.linalg.norm(pa - pb) / np.linalg.norm(pa))
    worst_b = float(np.max(np.abs(ba - bb))) if ba.size else 0.0
    ok = worst_loss <= args.loss_rtol and rl2 <= args.weight_rl2 and worst_w <= args.weight_atol and worst_b <= 1e-6
    print("%d steps: worst relative loss difference %.2e (tol %g); final weights relative L2 %.1e (tol %g), max "
          "|diff| %.1e (tol %g); router bias max |diff| %.1e (tol 1e-6)" % (len(la), worst_loss, args.loss_rtol, rl2,
                                                                          args.weight_rl2, worst_w, args.weight_atol,
                                                                          worst_b))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
