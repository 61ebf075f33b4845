#!/usr/bin/python3
"""Writes fuzz/corpus/checkpoint/: a tiny valid model file and state file (version 2, correct CRC32C) and a
version 1 copy of each, in train/checkpoint.c's layout (tests/ckpt_tool.py describes it), small enough for a fuzzer.

    fuzz/make_checkpoint_seeds.py [DIR]
"""
import ctypes
import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import ckpt_tool as ck  # noqa: E402


def model_file(version):
    n, n_layers, n_dense, n_experts = 16, 2, 1, 4
    h = [0] * 256
    h[0:3] = [ck.MODEL_MAGIC, version, 3]
    h[3:18] = [64, 8, n_layers, n_dense, 2, 4, 4, 2, 2, 2, n_experts, 2, 4, 8, 16]  # config_to_header's order
    h[20], h[21] = n & 0x7FFFFFFF, n >> 31
    buf = bytearray(struct.pack("<256i", *h))
    buf += struct.pack(f"<{n + (n_layers - n_dense) * n_experts}f", *[0.01 * (i + 1) for i in range(n + 4)])
    return buf


def state_file(version):
    ts = ck.TrainState()
    ts.step, ts.data_epoch, ts.data_cursor = 3, 0, 6
    ts.micro_batch, ts.seq_len, ts.grad_accum, ts.world, ts.ep, ts.seed = 2, 16, 1, 1, 1, 1337
    ts.optimizer = b"adamw"
    ts.spikes.window, ts.spikes.count, ts.spikes.head = 8, 3, 3
    for i in range(3):
        ts.spikes.loss[i], ts.spikes.norm[i] = 5.0 - i, 1.0
    sections = [("train_state", bytes(ts)), ("opt_t", struct.pack("<i", 3)),
                ("adamw_m", struct.pack("<8f", *[0.1] * 8)), ("adamw_v", struct.pack("<8f", *[0.01] * 8)),
                ("muon_m", b"")]
    buf = bytearray(struct.pack("<64i", ck.STATE_MAGIC, version, 3, 0, len(sections), *([0] * 59)))
    for name, data in sections:
        buf += name.encode().ljust(32, b"\0") + struct.pack("<Q", len(data)) + data
    return buf


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "checkpoint")
    os.makedirs(out, exist_ok=True)
    for kind, make in (("model", model_file), ("state", state_file)):
        for version in (1, 2):
            buf = make(version)
            if version == 2:
                struct.pack_into("<I", buf, 4 * ck.crc_slot(kind), ck.compute_crc(buf, kind))
            with open(os.path.join(out, f"{kind}_v{version}.bin"), "wb") as f:
                f.write(buf)


if __name__ == "__main__":
    main()
