// data/tokenizer.h: decoding token ids to text for samples. The file (written by data/prepare.py) follows llm.c's
// tokenizer.bin: 256 int32 header (magic 20240328, version 2, vocab_size, separator token id), then for every id
// a uint8 length and that many bytes, and nothing after the last piece.
#pragma once
#include <stdio.h>

typedef struct {
    int vocab_size;
    int separator;      // the token that starts every document, in [0, vocab_size)
    char** pieces;      // (vocab_size) bytes of each token, NUL-terminated
    unsigned char* len; // (vocab_size)
    int loaded;
} Tokenizer;

// Loads path. A missing file (no such path) returns with loaded = 0: samples then print ids. Anything else that
// is wrong is fatal, naming the file: not a regular file (a FIFO would block the reader), unreadable, a bad magic,
// version, vocab size or separator id, a piece running past the end of the file, or bytes after the last piece.
void tokenizer_init(Tokenizer* t, const char* path);
void tokenizer_free(Tokenizer* t);
// Writes the text of one token to f (the separator is shown as a paragraph break).
void tokenizer_print(const Tokenizer* t, int id, FILE* f);
