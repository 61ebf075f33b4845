// train/crc32c.c: see crc32c.h. Reflected polynomial 0x82F63B78; eight tables so the inner loop takes 8 bytes
// per step (table[k][b] is the CRC of byte b followed by k zero bytes).
#include "crc32c.h"
#include <string.h>

static uint32_t crc_table[8][256];
static int crc_table_ready;

static void crc_table_build(void) {
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t c = b;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][b] = c;
    }
    for (uint32_t b = 0; b < 256; b++)
        for (int k = 1; k < 8; k++) crc_table[k][b] = (crc_table[k - 1][b] >> 8) ^ crc_table[0][crc_table[k - 1][b] & 0xff];
    crc_table_ready = 1;  // the tables are the same whoever builds them, so a race here is harmless
}

uint32_t crc32c_update(uint32_t crc, const void* data, size_t bytes) {
    if (!crc_table_ready) crc_table_build();
    const uint8_t* p = (const uint8_t*)data;
    crc = ~crc;
    for (; bytes >= 8; bytes -= 8, p += 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);  // little-endian hosts only, like the rest of the file formats
        memcpy(&hi, p + 4, 4);
        lo ^= crc;
        crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^ crc_table[5][(lo >> 16) & 0xff] ^
              crc_table[4][lo >> 24] ^ crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
              crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
    }
    for (; bytes; bytes--, p++) crc = (crc >> 8) ^ crc_table[0][(crc ^ *p) & 0xff];
    return ~crc;
}
