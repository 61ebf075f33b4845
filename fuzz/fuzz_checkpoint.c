// fuzz/fuzz_checkpoint.c: libFuzzer harness for the checkpoint readers (train/checkpoint.c): the model file's and
// the state file's bytes go through checkpoint_check_bytes, every check that needs no Model (structure, sizes,
// sections, checksum, finite values, the training state's ranges). Each input is checked twice: as it is, and with
// its CRC32C rewritten to match, so mutations reach the checks behind the checksum instead of all dying there.
// Seeds: fuzz/corpus/checkpoint/ (tiny model and state files written by fuzz/make_checkpoint_seeds.py).
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "train/checkpoint.h"
#include "train/crc32c.h"

static void fix_crc(uint8_t* buf, size_t len) {
    if (len < 4 * STATE_HEADER_INTS) return;
    int32_t magic;
    memcpy(&magic, buf, 4);
    int slot = magic == MODEL_MAGIC ? MODEL_CRC_SLOT : magic == STATE_MAGIC ? STATE_CRC_SLOT : -1;
    if (slot < 0 || len < 4 * (size_t)slot + 4) return;
    memset(buf + 4 * slot, 0, 4);
    uint32_t c = crc32c_update(0, buf, len);
    memcpy(buf + 4 * slot, &c, 4);
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    char why[512];
    checkpoint_check_bytes(data, size, why, sizeof(why));
    uint8_t* copy = malloc(size ? size : 1);
    if (!copy) abort();
    memcpy(copy, data, size);
    fix_crc(copy, size);
    checkpoint_check_bytes(copy, size, why, sizeof(why));
    free(copy);
    return 0;
}
