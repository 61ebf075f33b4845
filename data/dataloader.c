// data/dataloader.c: see dataloader.h.
#include "dataloader.h"
#include "../common.h"
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define SHARD_HEADER_INTS 256
#define SHARD_MAGIC_U16 20240520
#define SHARD_MAGIC_U32 20240801

// ----------------------------------------------------------------------------
// A shard shortened while it is mapped: reading a page past its new end raises SIGBUS. Every read of the mapping
// runs with a jump buffer armed on its own thread; the handler jumps back there, and the reader reports the file
// instead of the process dying. A SIGBUS on a thread with nothing armed is not ours: the handler puts the
// previous action back and returns, the access faults again and takes that action (default: a core dump).

static __thread sigjmp_buf* volatile bus_jump;  // armed around every read of a mapping, per thread
static struct sigaction bus_previous;

static void bus_handler(int sig, siginfo_t* info, void* context) {
    if (bus_jump) siglongjmp(*bus_jump, 1);
    sigaction(SIGBUS, &bus_previous, NULL);
}

static void bus_handler_install(void) {
    static int installed = 0;
    if (installed) return;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = bus_handler;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, &bus_previous) != 0) fatal("data: cannot install the SIGBUS handler: %s", strerror(errno));
    installed = 1;
}

static inline uint32_t shard_token(const Shard* s, size_t i) {
    return s->token_bytes == 2 ? ((const uint16_t*)s->tokens)[i] : ((const uint32_t*)s->tokens)[i];
}

// The first position in [lo, hi) whose id is >= vocab, or SIZE_MAX. Faults if the file shrank under the mapping.
static size_t first_bad_token(const Shard* s, size_t lo, size_t hi, uint32_t vocab) {
    for (size_t i = lo; i < hi; i++)
        if (shard_token(s, i) >= vocab) return i;
    return SIZE_MAX;
}

// ----------------------------------------------------------------------------
// opening and checking the shards

// Fails the shard being opened: the message goes to why; the caller frees everything and calls fatal().
__attribute__((format(printf, 4, 5))) static int shard_fail(int fd, char* why, size_t n, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, n, fmt, ap);
    va_end(ap);
    if (fd >= 0) close(fd);
    return 0;
}

// Opens, checks and maps one shard. 0 with the reason in why on any problem; what was set up stays in s for
// dataloader_free (nothing leaks: the fuzz harness returns from the fatal() that follows and opens millions).
static int shard_open(Shard* s, const char* path, int T, int vocab_size, char* why, size_t n) {
    memset(s, 0, sizeof(*s));
    s->path = strdup(path);
    if (!s->path) fatal("out of memory");
    // O_NONBLOCK: opening a FIFO would otherwise wait for a writer; fstat of what was opened decides
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0) return shard_fail(-1, why, n, "data: cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) return shard_fail(fd, why, n, "data: cannot stat %s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return shard_fail(fd, why, n, "data: %s is not a regular file", path);
    size_t size = (size_t)st.st_size;
    int32_t header[SHARD_HEADER_INTS];
    if (size < sizeof(header))
        return shard_fail(fd, why, n, "data: %s is truncated: %zu bytes, shorter than the 1024-byte header", path, size);
    if (pread(fd, header, sizeof(header), 0) != (ssize_t)sizeof(header))
        return shard_fail(fd, why, n, "data: cannot read the header of %s", path);
    if (header[0] == SHARD_MAGIC_U16 && header[1] == 1) s->token_bytes = 2;
    else if (header[0] == SHARD_MAGIC_U32 && header[1] == 7) s->token_bytes = 4;
    else return shard_fail(fd, why, n, "data: %s is not an llm.c token shard (magic %d version %d; expected %d v1 or %d v7)",
                           path, header[0], header[1], SHARD_MAGIC_U16, SHARD_MAGIC_U32);
    if (header[2] < 0) return shard_fail(fd, why, n, "data: %s has a negative token count %d in its header", path, header[2]);
    s->n_tokens = (size_t)(uint32_t)header[2];
    size_t expect = sizeof(header) + s->n_tokens * s->token_bytes;
    if (size < expect)
        return shard_fail(fd, why, n, "data: %s is truncated: header says %zu tokens (%zu bytes) but the file has %zu bytes",
                          path, s->n_tokens, expect, size);
    if (size > expect)
        return shard_fail(fd, why, n, "data: %s is %zu bytes, more than the %zu its header's %zu tokens need", path, size,
                          expect, s->n_tokens);
    if (s->n_tokens < (size_t)T + 1)
        return shard_fail(fd, why, n, "data: %s has %zu tokens, fewer than one window of seq_len+1 = %d", path,
                          s->n_tokens, T + 1);
    void* map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) return shard_fail(fd, why, n, "data: cannot map %s: %s", path, strerror(errno));
    close(fd);
    s->map = map;
    s->map_len = size;
    s->dev = (uint64_t)st.st_dev;
    s->ino = (uint64_t)st.st_ino;
    s->tokens = (const uint8_t*)s->map + sizeof(header);

    // Every token id must be < vocab_size. Checked once at open, for the whole file, so a bad id fails the run
    // before it writes anything rather than when (or if) training reaches it. Each thread checks its own slice
    // with its own jump buffer: a fault can only jump back within the thread that took it.
    if (s->token_bytes == 2 && vocab_size >= 65536) return 1;  // a uint16 cannot exceed it
    size_t bad_pos = SIZE_MAX;
    int faulted = 0;
    #pragma omp parallel reduction(min : bad_pos) reduction(| : faulted)
    {
        int nt = 1, id = 0;
#ifdef _OPENMP
        nt = omp_get_num_threads();
        id = omp_get_thread_num();
#endif
        sigjmp_buf jump;
        if (sigsetjmp(jump, 1) == 0) {
            bus_jump = &jump;
            __atomic_signal_fence(__ATOMIC_SEQ_CST);  // the reads stay between arming and disarming
            bad_pos = first_bad_token(s, s->n_tokens * id / nt, s->n_tokens * (id + 1) / nt, (uint32_t)vocab_size);
            __atomic_signal_fence(__ATOMIC_SEQ_CST);
        } else {
            faulted = 1;
        }
        bus_jump = NULL;
    }
    if (faulted) return shard_fail(-1, why, n, "data: %s shrank while its tokens were being checked", path);
    if (bad_pos != SIZE_MAX)
        return shard_fail(-1, why, n, "data: %s has token id %u at position %zu, outside the model's vocab_size %d", path,
                          shard_token(s, bad_pos), bad_pos, vocab_size);
    return 1;
}

void dataloader_init(DataLoader* dl, const char* pattern, const char* flag_name, int T, int vocab_size,
                     int shuffle, uint64_t seed) {
    memset(dl, 0, sizeof(*dl));
    bus_handler_install();
    glob_t g;
    int rc = glob(pattern, 0, NULL, &g);
    if (rc == GLOB_NOMATCH || (rc == 0 && g.gl_pathc == 0)) {
        if (rc == 0) globfree(&g);
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
        char why[sizeof(dl->error)];
        if (!shard_open(&dl->shards[i], g.gl_pathv[i], T, vocab_size, why, sizeof(why))) {
            dataloader_free(dl);
            globfree(&g);
            fatal("%s", why);
        }
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
        if (dl->shards[i].map) munmap(dl->shards[i].map, dl->shards[i].map_len);
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

// ----------------------------------------------------------------------------
// reading windows

// Records why the window could not be read (with the file's size now and at start) and returns -1.
__attribute__((format(printf, 3, 4))) static int window_fail(DataLoader* dl, const Shard* sh, const char* fmt, ...) {
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    struct stat st;
    char now[96];
    if (stat(sh->path, &st) != 0) snprintf(now, sizeof(now), "now %s", strerror(errno));
    else snprintf(now, sizeof(now), "now %lld bytes", (long long)st.st_size);
    snprintf(dl->error, sizeof(dl->error), "data: %s changed while training (%s; %zu bytes at start, %s)", sh->path,
             what, sh->map_len, now);
    return -1;
}

int dataloader_window(DataLoader* dl, size_t w, int* inputs, int* targets) {
    if (w >= dl->n_windows) fatal("data: window %zu out of range (%zu windows)", w, dl->n_windows);
    int s = 0;
    while (w >= dl->first_window[s + 1]) s++;  // few shards; a linear walk is fine
    const Shard* sh = &dl->shards[s];
    size_t start = (w - dl->first_window[s]) * (size_t)dl->T;
    int T = dl->T;
    uint32_t vocab = (uint32_t)dl->vocab_size;
    sigjmp_buf jump;
    if (sigsetjmp(jump, 1) != 0) {
        bus_jump = NULL;
        return window_fail(dl, sh, "reading window %zu ran past its end", w);
    }
    bus_jump = &jump;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);  // the reads stay between arming and disarming
    size_t bad = SIZE_MAX;
    for (int t = 0; t <= T; t++) {
        uint32_t tok = shard_token(sh, start + t);
        if (tok >= vocab && bad == SIZE_MAX) bad = start + t;  // checked at open: here only if the file changed
        if (t < T) inputs[t] = (int)tok;
        if (t > 0) targets[t - 1] = (int)tok;
    }
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    bus_jump = NULL;
    if (bad != SIZE_MAX)
        return window_fail(dl, sh, "token id %u at position %zu is outside vocab_size %d", shard_token(sh, bad), bad,
                           dl->vocab_size);
    // Shortened within the last page, the mapping reads zeros instead of faulting. Checked after the copy, so a
    // change that lands after this stat came after the copy too. A path that now names another file (replaced by
    // rename, or deleted) is harmless: the mapping keeps the file that was checked.
    struct stat st;
    if (stat(sh->path, &st) == 0 && (uint64_t)st.st_dev == sh->dev && (uint64_t)st.st_ino == sh->ino &&
        (size_t)st.st_size != sh->map_len)
        return window_fail(dl, sh, "its size changed");
    return 0;
}

void dataloader_require(const DataLoader* dl, int B, int world, const char* flag_name) {
    uint64_t need = (uint64_t)B * world;
    if (need > dl->n_windows)
        fatal("data: %s '%s' has %zu windows of seq_len+1 = %d tokens; one batch needs %llu (batch-size x ranks)",
              flag_name, dl->shards[0].path, dl->n_windows, dl->T + 1, (unsigned long long)need);
}

int dataloader_next(DataLoader* dl, int* inputs, int* targets, int B, int rank, int world) {
    uint64_t need = (uint64_t)B * world;
    dataloader_require(dl, B, world, "the training data");
    if (dl->cursor + need > dl->n_windows) dataloader_seek(dl, dl->epoch + 1, 0);  // drop the ragged tail
    for (int b = 0; b < B; b++) {
        uint64_t i = dl->cursor + (uint64_t)rank * B + b;
        size_t w = dl->shuffle ? dl->perm[i] : i;
        if (dataloader_window(dl, w, inputs + (size_t)b * dl->T, targets + (size_t)b * dl->T) != 0) return -1;
    }
    dl->cursor += need;
    return 0;
}

uint64_t dataloader_total_tokens(const DataLoader* dl) {
    uint64_t n = 0;
    for (int i = 0; i < dl->n_shards; i++) n += dl->shards[i].n_tokens;
    return n;
}
