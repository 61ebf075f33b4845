// data/tokenizer.c: see tokenizer.h.
#include "tokenizer.h"
#include "../common.h"
#include <stdint.h>

void tokenizer_init(Tokenizer* t, const char* path) {
    memset(t, 0, sizeof(*t));
    FILE* f = fopen(path, "rb");
    if (!f) return;
    int32_t header[256];
    if (fread(header, sizeof(int32_t), 256, f) != 256) fatal("tokenizer: %s is truncated (no 1024-byte header)", path);
    if (header[0] != 20240328 || header[1] != 2)
        fatal("tokenizer: %s has magic %d version %d, expected 20240328 version 2", path, header[0], header[1]);
    if (header[2] <= 0 || header[2] > (1 << 24)) fatal("tokenizer: %s has a bad vocab size %d", path, header[2]);
    t->vocab_size = header[2];
    t->separator = header[3];
    t->pieces = xcalloc(t->vocab_size, sizeof(char*));
    t->len = xcalloc(t->vocab_size, 1);
    for (int i = 0; i < t->vocab_size; i++) {
        unsigned char n;
        if (fread(&n, 1, 1, f) != 1) fatal("tokenizer: %s is truncated at token %d", path, i);
        t->pieces[i] = xmalloc((size_t)n + 1);
        if (n && fread(t->pieces[i], 1, n, f) != n) fatal("tokenizer: %s is truncated at token %d", path, i);
        t->pieces[i][n] = 0;
        t->len[i] = n;
    }
    fclose(f);
    t->loaded = 1;
}

void tokenizer_free(Tokenizer* t) {
    for (int i = 0; i < t->vocab_size; i++) free(t->pieces[i]);
    free(t->pieces);
    free(t->len);
    memset(t, 0, sizeof(*t));
}

void tokenizer_print(const Tokenizer* t, int id, FILE* f) {
    if (!t->loaded || id < 0 || id >= t->vocab_size) {
        fprintf(f, "<%d>", id);
        return;
    }
    if (id == t->separator) {
        fputs("\n\n", f);
        return;
    }
    fwrite(t->pieces[id], 1, t->len[id], f);
}
