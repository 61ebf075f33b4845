// fuzz/fuzz_tokenizer.c: libFuzzer harness for the tokenizer.bin reader (data/tokenizer.c). The input is a whole
// file: it is written to a memfd and loaded by path with tokenizer_init; an accepted one must hold a separator
// inside its vocab and decode every id. A rejected file ends in fatal(); fatal_exit_hook jumps back here
// instead of exiting (the reader frees what it holds before it calls fatal(), so nothing leaks;
// -close_fd_mask=2 silences the "error:" lines).
//
// Build (Debian's clang), from the repository root:
//   mkdir -p build/fuzz && clang -g -O1 -fsanitize=fuzzer,address,undefined -I. fuzz/fuzz_tokenizer.c \
//       data/tokenizer.c common.c -lm -o build/fuzz/fuzz_tokenizer
// Run:
//   build/fuzz/fuzz_tokenizer -max_len=4096 -close_fd_mask=2 -max_total_time=60 fuzz/corpus/tokenizer
// A crash input found goes to fuzz/regressions/tokenizer/; replay all of them with
//   build/fuzz/fuzz_tokenizer -close_fd_mask=2 fuzz/regressions/tokenizer/*
// (separator_out_of_range.bin: found in 20 s by this harness against the reader before the separator check)
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
#include "data/tokenizer.h"
#include "common.h"

static jmp_buf on_fatal;
static void fatal_jumps_back(int code) { longjmp(on_fatal, 1); }

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static int fd = -1;
    static char path[64];
    static FILE* sink;
    if (fd < 0) {
        fd = memfd_create("fuzz_tokenizer", 0);
        sink = fopen("/dev/null", "w");
        if (fd < 0 || !sink) { perror("memfd_create or /dev/null"); abort(); }
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        fatal_exit_hook = fatal_jumps_back;
    }
    if (ftruncate(fd, 0) != 0 || (size && pwrite(fd, data, size, 0) != (ssize_t)size)) { perror("memfd"); abort(); }

    static Tokenizer tok;  // static: longjmp leaves locals of this frame indeterminate
    if (setjmp(on_fatal) != 0) return 0;  // rejected with an error: fine
    tokenizer_init(&tok, path);
    if (!tok.loaded) abort();  // the file exists: "missing" is not an answer
    if (tok.separator < 0 || tok.separator >= tok.vocab_size) abort();
    for (int id = -1; id <= tok.vocab_size; id++) tokenizer_print(&tok, id, sink);
    tokenizer_free(&tok);
    return 0;
}
