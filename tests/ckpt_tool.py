#!/usr/bin/env python3
"""tests/ckpt_tool.py: reads and edits train_moe checkpoint files (train/checkpoint.c's layout), for the tests.

    ckpt_tool.py info FILE                    the header and (state files) the training state's fields
    ckpt_tool.py crc FILE                     stored and recomputed CRC32C; exit 1 if they differ
    ckpt_tool.py set FILE FIELD VALUE         sets a field and, in a version 2 file, rewrites a correct checksum
    ckpt_tool.py flip FILE FIELD BIT          flips one bit of a field's value, checksum left as it was (damage)
    ckpt_tool.py flipbyte FILE OFFSET         inverts the byte at OFFSET, checksum left as it was
    ckpt_tool.py truncate FILE BYTES          drops the last BYTES bytes
    ckpt_tool.py downgrade FILE               makes a version 2 file a version 1 file (no checksum), as older builds wrote

FIELD: model files: weight[I], bias[I]; state files: step, data_epoch, data_cursor, bad_in_row, micro_batch,
spikes.window, spikes.count, spikes.head, opt_t, adamw_m[I], adamw_v[I], muon_m[I].
Version 2 files hold a CRC32C of the whole file (with its own header slot taken as zero) in int32 slot 22 (model)
or 5 (state). Files are little-endian.
"""
import ctypes
import re
import struct
import sys

MODEL_MAGIC, STATE_MAGIC = 20261127, 20261128
MODEL_HEADER, STATE_HEADER = 1024, 256
MODEL_CRC_SLOT, STATE_CRC_SLOT = 22, 5
SPIKE_MAX_WINDOW = 1024


# ---- CRC32C (Castagnoli, reflected 0x82F63B78), written out here so the tool depends on nothing
def _table():
    t = []
    for b in range(256):
        c = b
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_T = _table()


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    t = _T
    for b in data:
        crc = (crc >> 8) ^ t[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283


# ---- the C structs (ctypes lays them out as the C compiler does on x86-64 / aarch64)
class Rng(ctypes.Structure):
    _fields_ = [("s", ctypes.c_uint64 * 4)]


class SpikeStats(ctypes.Structure):
    _fields_ = [("window", ctypes.c_int), ("count", ctypes.c_int), ("head", ctypes.c_int),
                ("loss", ctypes.c_double * SPIKE_MAX_WINDOW), ("norm", ctypes.c_double * SPIKE_MAX_WINDOW)]


class TrainState(ctypes.Structure):
    _fields_ = [("step", ctypes.c_int), ("data_epoch", ctypes.c_uint64), ("data_cursor", ctypes.c_uint64),
                ("sample_rng", Rng), ("micro_batch", ctypes.c_int), ("seq_len", ctypes.c_int),
                ("grad_accum", ctypes.c_int), ("world", ctypes.c_int), ("ep", ctypes.c_int),
                ("seed", ctypes.c_uint64), ("optimizer", ctypes.c_char * 16), ("spikes", SpikeStats),
                ("bad_in_row", ctypes.c_int)]


def die(msg):
    print(f"ckpt_tool: {msg}", file=sys.stderr)
    sys.exit(2)


def kind_of(buf):
    magic, version = struct.unpack_from("<ii", buf, 0)
    if magic == MODEL_MAGIC:
        return "model", version
    if magic == STATE_MAGIC:
        return "state", version
    die(f"not a train_moe checkpoint file (magic {magic})")


def crc_slot(kind):
    return MODEL_CRC_SLOT if kind == "model" else STATE_CRC_SLOT


def compute_crc(buf, kind):
    off = 4 * crc_slot(kind)
    return crc32c(bytes(buf[:off]) + b"\0\0\0\0" + bytes(buf[off + 4:]))


def sections(buf):
    """state file: {name: (offset of the data, bytes)}"""
    nsec = struct.unpack_from("<i", buf, 16)[0]
    pos, out = STATE_HEADER, {}
    for _ in range(nsec):
        name = bytes(buf[pos:pos + 32]).split(b"\0")[0].decode()
        size = struct.unpack_from("<Q", buf, pos + 32)[0]
        out[name] = (pos + 40, size)
        pos += 40 + size
    return out


def train_state_offset(buf):
    off, size = sections(buf)["train_state"]
    if size != ctypes.sizeof(TrainState):
        die(f"train_state section has {size} bytes, this tool's TrainState {ctypes.sizeof(TrainState)}: "
            "update tests/ckpt_tool.py to train/checkpoint.h")
    ts = TrainState.from_buffer_copy(bytes(buf[off:off + size]))
    # the layout check: fields the tests know must read back sensibly
    if ts.step != struct.unpack_from("<i", buf, 8)[0] or not (1 <= ts.micro_batch <= 1 << 20) or \
            ts.optimizer not in (b"adamw", b"muon"):
        die("the training state does not read back sensibly: update tests/ckpt_tool.py to train/checkpoint.h")
    return off


def field_location(buf, kind, field):
    """(byte offset, struct format) of a field"""
    m = re.fullmatch(r"(\w+)\[(\d+)\]", field)
    if kind == "model":
        n = struct.unpack_from("<I", buf, 80)[0] | (struct.unpack_from("<I", buf, 84)[0] << 31)
        if m and m.group(1) == "weight":
            return MODEL_HEADER + 4 * int(m.group(2)), "<f"
        if m and m.group(1) == "bias":
            return MODEL_HEADER + 4 * n + 4 * int(m.group(2)), "<f"
        die(f"model files have weight[I] and bias[I], not {field}")
    if m:
        off, size = sections(buf)[m.group(1)]
        if 4 * int(m.group(2)) >= size:
            die(f"{field}: the section has {size // 4} values")
        return off + 4 * int(m.group(2)), "<f"
    if field == "opt_t":
        return sections(buf)["opt_t"][0], "<i"
    base = train_state_offset(buf)
    if field.startswith("spikes."):
        sub = field.split(".", 1)[1]
        f = getattr(SpikeStats, sub, None)
        return base + TrainState.spikes.offset + f.offset, "<i"
    f = getattr(TrainState, field, None)
    if f is None:
        die(f"unknown field {field}")
    return base + f.offset, "<Q" if f.size == 8 else "<i"


def load(path):
    with open(path, "rb") as fh:
        return bytearray(fh.read())


def save(path, buf, kind, version, fix_crc):
    if fix_crc and version >= 2:
        struct.pack_into("<I", buf, 4 * crc_slot(kind), compute_crc(buf, kind))
    with open(path, "wb") as fh:
        fh.write(buf)


def main(argv):
    if len(argv) < 3:
        die(__doc__)
    cmd, path = argv[1], argv[2]
    buf = load(path)
    kind, version = kind_of(buf)
    if cmd == "info":
        print(f"{kind} file, version {version}, step {struct.unpack_from('<i', buf, 8)[0]}, {len(buf)} bytes")
        if kind == "state":
            ts = TrainState.from_buffer_copy(bytes(buf[train_state_offset(buf):][:ctypes.sizeof(TrainState)]))
            for name in ("step", "data_epoch", "data_cursor", "micro_batch", "seq_len", "grad_accum", "world", "ep"):
                print(f"  {name} {getattr(ts, name)}")
            print(f"  spikes window {ts.spikes.window} count {ts.spikes.count} head {ts.spikes.head}")
    elif cmd == "crc":
        stored = struct.unpack_from("<I", buf, 4 * crc_slot(kind))[0]
        computed = compute_crc(buf, kind)
        print(f"stored {stored:08x} computed {computed:08x}")
        return 0 if stored == computed else 1
    elif cmd == "set":
        off, fmt = field_location(buf, kind, argv[3])
        value = float(argv[4]) if fmt == "<f" else int(argv[4])
        if fmt == "<Q":
            value &= (1 << 64) - 1
        struct.pack_into(fmt, buf, off, value)
        save(path, buf, kind, version, True)
    elif cmd == "flip":
        off, fmt = field_location(buf, kind, argv[3])
        bit = int(argv[4])
        buf[off + bit // 8] ^= 1 << (bit % 8)
        save(path, buf, kind, version, False)
    elif cmd == "flipbyte":
        buf[int(argv[3])] ^= 0xFF
        save(path, buf, kind, version, False)
    elif cmd == "truncate":
        del buf[len(buf) - int(argv[3]):]
        save(path, buf, kind, version, False)
    elif cmd == "downgrade":
        struct.pack_into("<i", buf, 4, 1)
        struct.pack_into("<I", buf, 4 * crc_slot(kind), 0)
        save(path, buf, kind, 1, False)
    else:
        die(f"unknown command {cmd}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
