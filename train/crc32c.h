// train/crc32c.h: CRC32C (Castagnoli), the checksum of checkpoint files. Chosen over zlib's CRC32 for its better
// error detection on long messages; a table-driven software version (slicing by 8) runs at ~1-2 GB/s, well below
// the cost of writing the file.
#pragma once
#include <stddef.h>
#include <stdint.h>

// Running CRC32C: start with crc = 0; crc32c_update(crc32c_update(0, a), b) equals the CRC of a followed by b.
// crc32c_update(0, "123456789", 9) == 0xE3069283.
uint32_t crc32c_update(uint32_t crc, const void* data, size_t bytes);
