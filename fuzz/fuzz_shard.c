// fuzz/fuzz_shard.c: libFuzzer harness for the token shard reader (data/dataloader.c). The input is a whole shard
// file: it is written to a memfd and opened by path with dataloader_init, and every window is read back.
// A rejected file ends in fatal(); fatal_exit_hook jumps back here instead of exiting (the reader frees what it
// opened before it calls fatal(), so nothing leaks; -close_fd_mask=2 silences the "error:" lines).
//
// Build (Debian's clang), from the repository root:
//   mkdir -p build/fuzz && clang -g -O1 -fsanitize=fuzzer,address,undefined -I. fuzz/fuzz_shard.c \
//       data/dataloader.c common.c -lm -o build/fuzz/fuzz_shard
// Run:
//   build/fuzz/fuzz_shard -max_len=4096 -close_fd_mask=2 -max_total_time=60 fuzz/corpus/shard
// A crash input found goes to fuzz/regressions/shard/; replay all of them with
//   build/fuzz/fuzz_shard -close_fd_mask=2 fuzz/regressions/shard/*
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
#include "data/dataloader.h"
#include "common.h"

#define FUZZ_T 4        // window = 5 tokens: a handful of tokens already makes windows
#define FUZZ_VOCAB 300  // small, so both uint16 and uint32 ids can fall outside it

static jmp_buf on_fatal;
static void fatal_jumps_back(int code) { longjmp(on_fatal, 1); }

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("fuzz_shard", 0);
        if (fd < 0) { perror("memfd_create"); abort(); }
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        fatal_exit_hook = fatal_jumps_back;
    }
    if (ftruncate(fd, 0) != 0 || (size && pwrite(fd, data, size, 0) != (ssize_t)size)) { perror("memfd"); abort(); }

    static DataLoader dl;  // static: longjmp leaves locals of this frame indeterminate
    if (setjmp(on_fatal) != 0) return 0;  // rejected with an error: fine
    dataloader_init(&dl, path, "--fuzz", FUZZ_T, FUZZ_VOCAB, 1, 7);
    // accepted: every window reads, and every id is < vocab
    int inputs[2 * FUZZ_T], targets[2 * FUZZ_T];
    for (size_t w = 0; w < dl.n_windows; w++) {
        if (dataloader_window(&dl, w, inputs, targets) != 0) abort();
        for (int t = 0; t < FUZZ_T; t++)
            if (inputs[t] < 0 || inputs[t] >= FUZZ_VOCAB || targets[t] < 0 || targets[t] >= FUZZ_VOCAB) abort();
    }
    // and the shuffled batches of two epochs, when a batch of 2 fits
    if (dl.n_windows >= 2)
        for (size_t i = 0; i < dl.n_windows + 1; i++)
            if (dataloader_next(&dl, inputs, targets, 2, 0, 1) != 0) abort();
    dataloader_free(&dl);
    return 0;
}
