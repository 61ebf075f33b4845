// data/dataloader.c: see dataloader.h.
#include "dataloader.h"
#include "../common.h"
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define SHARD_HEADER_INTS 256
#define SHARD_MAGIC_U16 20240520
#define SHARD_MAGIC_U32 20240801

static void shard_open(Shard* s, const char* path, int T) {
    memset(s, 0, sizeof(*s));
    s->path = strdup(path);
    int fd = open(path, O_RDONLY);
    if (fd < 0) fatal("data: cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) fatal("data: cannot stat %s: %s", path, strerror(errno));
    size_t size = (size_t)st.st_size;
    int32_t header[SHARD_HEADER_INTS];
    if (size < sizeof(header)) fatal("data: %s is truncated: %zu bytes, shorter than the 1024-byte header", path, size);
    if (pread(fd, header, sizeof(header), 0) != (ssize_t)sizeof(header)) fatal("data: cannot read the header of %s", path);
    if (header[0] == SHARD_MAGIC_U16 && header[1] == 1) s->token_bytes = 2;
    else if (header[0] == SHARD_MAGIC_U32 && header[1] == 7) s->token_bytes = 4;
    else fatal("data: %s is not an llm.c token shard (magic %d version %d; expected %d v1 or %d v7)", path,
               header[0], header[1], SHARD_MAGIC_U16, SHARD_MAGIC_U32);
    if (header[2] < 0) fatal("data: %s has a negative token count %d in its header", path, header[2]);
    s->n_tokens = (size_t)(uint32_t)header[2];
    size_t expect = sizeof(header) + s->n_tokens * s->token_bytes;
    if (size < expect)
        fatal("data: %s is truncated: header says %zu tokens (%zu bytes) but the file has %zu bytes", path,
              s->n_tokens, expect, size);
    if (size > expect)
        fatal("data: %s is %zu bytes, more than the %zu its header's %zu tokens need", path, size, expect, s->n_tokens);
    if (s->n_tokens < (size_t)T + 1)
        fatal("data: %s has %zu tokens, fewer than one window of seq_len+1 = %d", path, s->n_tokens, T + 1);
    s->map_len = size;
    s->map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (s->map == MAP_FAILED) fatal("data: cannot map %s: %s", path, strerror(errno));
    close(fd);
    s->tokens = (const uint8_t*)s->map + sizeof(header);
}

// Every token id must be < vocab_size. Checked once at open, for the whole file, so a bad id fails the run
// before it writes anything rather than when (or if) training reaches it.
static void shard_check_tokens(const Shard* s, int vocab_size) {
    if (s->token_bytes == 2 && vocab_size >= 65536) return;  // a uint16 cannot exceed it
    size_t bad_pos = SIZE_MAX;
    #pragma omp parallel for reduction(min : bad_pos)
    for (size_t i = 0; i < s->n_tokens; i++) {
        uint32_t t = s->token_bytes == 2 ? ((const uint16_t*)s->tokens)[i] : ((const uint32_t*)s->tokens)[i];
        if (t >= (uint32_t)vocab_size && i < bad_pos) bad_pos = i;
    }
    if (bad_pos != SIZE_MAX) {
        uint32_t t = s->token_bytes == 2 ? ((const uint16_t*)s->tokens)[bad_pos] : ((const uint32_t*)s->tokens)[bad_pos];
        fatal("data: %s has token id %u at position %zu, outside the model's vocab_size %d", s->path, t, bad_pos,
              vocab_size);
    }
}

void dataloader_init(DataLoader* dl, const char* pattern, const char* flag_name, int T, int vocab_size,
                     int shuffle, uint64_t seed) {
    memset(dl, 0, sizeof(*dl));
    glob_t g;
    int rc = glob(pattern, 0, NULL, &g);
    if (rc == GLOB_NOMATCH || (rc == 0 && g.gl_pathc == 0)) {
        fatal("data: no file matches %s '%s'%s", flag_name, pattern,
              strstr(pattern, "data/default") ? " (run `make data` to prepare the default corpus)" : "");
    }
    if (rc != 0) fatal("data: cannot expand %s '%s'", flag_name, pattern);
    dl->n_shards = (int)g.gl_pathc;
    dl->shards = xcalloc(dl->n_shards, sizeof(Shard));
    dl->first_window = xcalloc(dl->n_shards + 1, sizeof(size_t));
    dl->T = T;
    dl->vocab_size = vocab_size;
    for (int i = 0; i < dl->n_shards; i++) {
        shard_open(&dl->shards[i], g.gl_pathv[i], T);
        shard_check_tokens(&dl->shards[i], vocab_size);
        dl->first_window[i + 1] = dl->first_window[i] + (dl->shards[i].n_tokens - 1) / T;
    }
    globfree(&g);
    dl->n_windows = dl->first_window[dl->n_shards];
    dl->shuffle = shuffle;
    dl->seed = seed;
    if (shuffle) dl->perm = xmalloc(dl->n_windows * sizeof(uint64_t));
    dataloader_seek(dl, 0, 0);
}

void dataloader_free(DataLoader* dl) {
    for (int i = 0; i < dl->n_shards; i++) {
        munmap(dl->shards[i].map, dl->shards[i].map_len);
        free(dl->shards[i].path);
    }
    free(dl->shards);
    free(dl->first_window);
    free(dl->perm);
    memset(dl, 0, sizeof(*dl));
}

void dataloader_seek(DataLoader* dl, uint64_t epoch, uint64_t cursor) {
    dl->epoch = epoch;
    dl->cursor = cursor;
    if (!dl->shuffle) return;
    // Fisher-Yates with a generator seeded from (seed, epoch): every rank computes the same order
    Rng rng;
    rng_seed(&rng, dl->seed * 0x9E3779B97F4A7C15ULL + epoch + 1);
    for (size_t i = 0; i < dl->n_windows; i++) dl->perm[i] = i;
    for (size_t i = dl->n_windows; i > 1; i--) {
        size_t j = (size_t)rng_below(&rng, i);
        uint64_t t = dl->perm[i - 1];
        dl->perm[i - 1] = dl->perm[j];
        dl->perm[j] = t;
    }
}

void dataloader_window(const DataLoader* dl, size_t w, int* inputs, int* targets) {
    if (w >= dl->n_windows) fatal("data: window %zu out of range (%zu windows)", w, dl->n_windows);
    int s = 0;
    while (w >= dl->first_window[s + 1]) s++;  // few shards; a linear walk is fine
    const Shard* sh = &dl->shards[s];
    size_t start = (w - dl->first_window[s]) * (size_t)dl->T;
    for (int t = 0; t <= dl->T; t++) {
        size_t pos = start + t;
        uint32_t tok = sh->token_bytes == 2 ? ((const uint16_t*)sh->tokens)[pos] : ((const uint32_t*)sh->tokens)[pos];
        if (t < dl->T) inputs[t] = (int)tok;  // ids were checked against vocab_size when the shard was opened
        if (t > 0) targets[t - 1] = (int)tok;
    }
}

void dataloader_require(const DataLoader* dl, int B, int world, const char* flag_name) {
    uint64_t need = (uint64_t)B * world;
    if (need > dl->n_windows)
        fatal("data: %s '%s' has %zu windows of seq_len+1 = %d tokens; one batch needs %llu (batch-size x ranks)",
              flag_name, dl->shards[0].path, dl->n_windows, dl->T + 1, (unsigned long long)need);
}

void dataloader_next(DataLoader* dl, int* inputs, int* targets, int B, int rank, int world) {
    uint64_t need = (uint64_t)B * world;
    dataloader_require(dl, B, world, "the training data");
    if (dl->cursor + need > dl->n_windows) dataloader_seek(dl, dl->epoch + 1, 0);  // drop the ragged tail
    for (int b = 0; b < B; b++) {
        uint64_t i = dl->cursor + (uint64_t)rank * B + b;
        size_t w = dl->shuffle ? dl->perm[i] : i;
        dataloader_window(dl, w, inputs + (size_t)b * dl->T, targets + (size_t)b * dl->T);
    }
    dl->cursor += need;
}

uint64_t dataloader_total_tokens(const DataLoader* dl) {
    uint64_t n = 0;
    for (int i = 0; i < dl->n_shards; i++) n += dl->shards[i].n_tokens;
    return n;
}
