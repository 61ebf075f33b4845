// data/tokenizer.c: see tokenizer.h.
#include "tokenizer.h"
#include "../common.h"
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#define TOK_HEADER_INTS 256
#define TOK_MAGIC 20240328
#define TOK_VERSION 2
#define TOK_MAX_VOCAB (1 << 24)  // far above any real vocabulary; bounds what a corrupt header can make us allocate

// Reads exactly `bytes` at `offset`; 0 if the file ended first.
static int read_at(int fd, void* dst, size_t bytes, off_t offset) {
    uint8_t* p = dst;
    while (bytes > 0) {
        ssize_t k = pread(fd, p, bytes, offset);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return 0;
        p += k;
        bytes -= (size_t)k;
        offset += k;
    }
    return 1;
}

// Closes and frees what the reader holds, then fatal(). The trainer would not care, but the fuzz harness
// (fuzz/fuzz_tokenizer.c) returns from fatal() and reads millions of files: a failure must not leak.
__attribute__((noreturn, format(printf, 3, 4))) static void tokenizer_fail(int fd, void* bytes, const char* fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (fd >= 0) close(fd);
    free(bytes);
    fatal("tokenizer: %s", msg);
}

void tokenizer_init(Tokenizer* t, const char* path) {
    memset(t, 0, sizeof(*t));
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer; fstat below refuses it
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0) {
        if (errno == ENOENT || errno == ENOTDIR) return;  // no tokenizer: samples print ids
        tokenizer_fail(-1, NULL, "cannot open %s: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) tokenizer_fail(fd, NULL, "cannot stat %s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) tokenizer_fail(fd, NULL, "%s is not a regular file", path);
    size_t size = (size_t)st.st_size;
    int32_t header[TOK_HEADER_INTS];
    if (size < sizeof(header) || !read_at(fd, header, sizeof(header), 0))
        tokenizer_fail(fd, NULL, "%s is truncated: %zu bytes, shorter than the 1024-byte header", path, size);
    if (header[0] != TOK_MAGIC || header[1] != TOK_VERSION)
        tokenizer_fail(fd, NULL, "%s has magic %d version %d, expected %d version %d", path, header[0], header[1],
                       TOK_MAGIC, TOK_VERSION);
    int vocab = header[2];
    if (vocab <= 0 || vocab > TOK_MAX_VOCAB)
        tokenizer_fail(fd, NULL, "%s has a bad vocab size %d (expected 1 to %d)", path, vocab, TOK_MAX_VOCAB);
    // the sampler starts every sample with the separator, so it must be a real token (prepare.py writes <s>, llm.c
    // its end-of-text token; neither writes a "no separator" value)
    if (header[3] < 0 || header[3] >= vocab)
        tokenizer_fail(fd, NULL, "%s has separator id %d, outside its vocab of %d tokens", path, header[3], vocab);
    // a piece takes 1 to 256 bytes: the file size bounds the body before anything is allocated
    size_t body = size - sizeof(header);
    if (body < (size_t)vocab)
        tokenizer_fail(fd, NULL, "%s is truncated: %zu bytes after the header cannot hold %d pieces", path, body, vocab);
    if (body > (size_t)vocab * 256)
        tokenizer_fail(fd, NULL, "%s is %zu bytes, more than %d pieces of at most 255 bytes fill: trailing bytes", path,
                       size, vocab);
    uint8_t* bytes = xmalloc(body);
    if (!read_at(fd, bytes, body, sizeof(header))) tokenizer_fail(fd, bytes, "%s shrank while being read", path);
    close(fd);

    // every length must fit the file and the last piece must end where the file does; checked before allocating
    size_t pos = 0;
    for (int i = 0; i < vocab; i++) {
        if (pos >= body)
            tokenizer_fail(-1, bytes, "%s is truncated: it ends before the length byte of piece %d of %d", path, i, vocab);
        size_t n = bytes[pos++];
        if (n > body - pos)
            tokenizer_fail(-1, bytes, "%s is truncated: piece %d has length %zu but only %zu bytes remain", path, i, n,
                           body - pos);
        pos += n;
    }
    if (pos != body)
        tokenizer_fail(-1, bytes, "%s has %zu bytes after its last piece (%d pieces end at byte %zu of %zu)", path,
                       body - pos, vocab, sizeof(header) + pos, size);

    t->vocab_size = vocab;
    t->separator = header[3];
    t->pieces = xcalloc(vocab, sizeof(char*));
    t->len = xcalloc(vocab, 1);
    pos = 0;
    for (int i = 0; i < vocab; i++) {
        size_t n = bytes[pos++];
        t->pieces[i] = xmalloc(n + 1);
        memcpy(t->pieces[i], bytes + pos, n);
        t->pieces[i][n] = 0;
        t->len[i] = (unsigned char)n;
        pos += n;
    }
    free(bytes);
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
