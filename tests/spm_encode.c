// tests/spm_encode.c: data/spm.c's encoder as a filter, for tests/test_eval.sh to compare with python3
// sentencepiece.
//
//   build/tests/spm_encode tokenizer.model < lines
//
// Each input line is one text as hex (its bytes, two hex digits each; an empty line is the empty text), so any
// bytes (newlines, NUL, bytes that are not UTF-8) travel; each output line is that text's ids, space-separated.
// A model the loader refuses ends the program with its one-line error.
#include "../common.h"
#include "../data/spm.h"

static int hex_digit(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int main(int argc, char** argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s tokenizer.model < hex lines\n", argv[0]);
        return 2;
    }
    SpmModel s;
    spm_load(&s, argv[1]);
    size_t cap = 0;
    char* line = NULL;
    ssize_t n;
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) n--;
        if (n % 2) fatal("spm_encode: a line of odd length %zd is not hex", n);
        char* text = xmalloc((size_t)n / 2 + 1);
        for (ssize_t i = 0; i < n / 2; i++) {
            int hi = hex_digit(line[2 * i]), lo = hex_digit(line[2 * i + 1]);
            if (hi < 0 || lo < 0) fatal("spm_encode: '%c%c' is not a hex byte", line[2 * i], line[2 * i + 1]);
            text[i] = (char)(hi * 16 + lo);
        }
        int* ids;
        int k = spm_encode(&s, text, (size_t)n / 2, &ids);
        for (int i = 0; i < k; i++) printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
        free(ids);
        free(text);
    }
    free(line);
    spm_free(&s);
    return 0;
}
