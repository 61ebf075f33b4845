// fuzz/fuzz_flags.c: libFuzzer target for the command line (train/flags.c): flags_init, flags_parse,
// flags_check, then every flag's value as text.
//
// The input is the argument list: its bytes split at NUL bytes give argv[1..] (argv[0] is "train_moe"), so
// "--lr\0" "1e-3\0" "--optim=muon" is three arguments. Bad input must end in fatal(); fatal_exit_hook brings it
// back here with a longjmp instead of exiting. Memory the parser had allocated before a fatal() is not freed
// then (the trainer exits at that point), so run with -detect_leaks=0 (fuzz/run.sh does).
//
// Beyond "no crash": a set of flags that flags_check accepts must obey the table, every numeric flag within its
// [lo, hi] (open ends where the row says so) and every string flag with fixed choices set to one of them; a
// violation aborts, which the fuzzer reports as a crash.
#include <setjmp.h>
#include <stdint.h>
#include "../common.h"
#include "../train/flags.h"

#define MAX_INPUT 4096  // bytes; argument lists longer than any real command line add nothing

static jmp_buf back_to_harness;
static void fatal_returns_to_harness(int code) { longjmp(back_to_harness, 1); }

static double numeric_field(const Flags* f, const FlagSpec* s) {
    const char* p = (const char*)f + s->offset;
    switch (s->type) {
    case F_INT: return *(const int*)p;
    case F_LLONG: return (double)*(const long long*)p;
    case F_FLOAT: return *(const float*)p;
    default: return 0;
    }
}

// "adamw|muon" holds "muon" as a whole choice. Written another way than train/flags.c's check on purpose (an
// oracle that copied the code under test would agree with its bugs): "|muon|" inside "|adamw|muon|".
static int is_choice(const char* choices, const char* v) {
    char hay[256], needle[256];
    if (strchr(v, '|') || snprintf(hay, sizeof(hay), "|%s|", choices) >= (int)sizeof(hay) ||
        snprintf(needle, sizeof(needle), "|%s|", v) >= (int)sizeof(needle))
        return 0;
    return strstr(hay, needle) != NULL;
}

// a checked set of flags obeys its table
static void check_accepted(const Flags* f) {
    for (int i = 0; i < num_flags; i++) {
        const FlagSpec* s = &flag_specs[i];
        if (s->type == F_INT || s->type == F_LLONG || s->type == F_FLOAT) {
            double v = numeric_field(f, s);
            int lo_ok = (s->attrs & FLAG_LO_OPEN) ? v > s->lo : v >= s->lo;
            int hi_ok = (s->attrs & FLAG_HI_OPEN) ? v < s->hi : v <= s->hi;
            if (!lo_ok || !hi_ok) {
                fprintf(stderr, "fuzz_flags: accepted %s = %.17g outside [%g, %g]\n", s->name, v, s->lo, s->hi);
                abort();
            }
        } else if (s->type == F_STR && s->choices) {
            const char* v = *(const char* const*)((const char*)f + s->offset);
            if (!v || !is_choice(s->choices, v)) {
                fprintf(stderr, "fuzz_flags: accepted %s = '%s' not in %s\n", s->name, v ? v : "(null)", s->choices);
                abort();
            }
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size > MAX_INPUT) return 0;
    // the arguments point into a NUL-terminated copy (the parser may keep pointers to them, as to argv)
    char* text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = 0;
    int argc = 2;  // argv[0] and the last piece
    for (size_t i = 0; i < size; i++) argc += text[i] == 0;
    char** argv = malloc((size_t)(argc + 1) * sizeof(char*));
    argv[0] = "train_moe";
    int k = 1;
    argv[k++] = text;
    for (size_t i = 0; i < size; i++)
        if (text[i] == 0) argv[k++] = text + i + 1;
    argv[argc] = NULL;

    static Flags flags;  // static: stays valid across the longjmp
    fatal_exit_hook = fatal_returns_to_harness;
    if (setjmp(back_to_harness) == 0) {
        flags_init(&flags);
        flags_parse(&flags, argc, argv);
        flags_check(&flags);
        check_accepted(&flags);
        char value[512];
        for (int i = 0; i < num_flags; i++) flag_value_text(&flags, &flag_specs[i], value, sizeof(value));
    }
    free(argv);
    free(text);
    return 0;
}
