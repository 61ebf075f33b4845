// fuzz/fuzz_spm.c: libFuzzer harness for the SentencePiece model reader and encoder (data/spm.c), which read the
// tokenizer.model beside --tokenizer for --generate. The input is a whole model file, given to spm_parse (a
// function over memory: no fatal(), no file); an accepted model must hold its own rules (one unknown piece, a
// full byte table with byte fallback, every user-defined id a user-defined piece) and encode texts (fixed ones,
// and the input's own last bytes as text) to ids inside its vocabulary.
//
// Run:  make fuzz-build && bash fuzz/run.sh spm 60
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "data/spm.h"
#include "common.h"

static void encode_checked(const SpmModel* s, const char* text, size_t len) {
    int* ids = NULL;
    int n = spm_encode(s, text, len, &ids);
    if (n < 0 || (n > 0 && !ids)) abort();
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= s->vocab_size) abort();
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    SpmModel s;
    char why[512];
    if (!spm_parse(&s, data, size, why, sizeof(why))) {
        if (!why[0]) abort();  // a refusal says why
        return 0;
    }
    if (s.vocab_size <= 0 || s.unk_id < 0 || s.unk_id >= s.vocab_size || s.types[s.unk_id] != SPM_UNKNOWN) abort();
    for (int v = 0; v < 256; v++)
        if (s.byte_fallback && (s.byte_id[v] < 0 || s.types[s.byte_id[v]] != SPM_BYTE)) abort();
    for (int i = 0; i < s.n_user_defined; i++)
        if (s.types[s.user_defined[i]] != SPM_USER_DEFINED) abort();
    static const char* const texts[] = {"", " ", "hello world", "  two  spaces  ", "caf\xc3\xa9 \xe4\xb8\xad",
                                        "\xff\xfe bad", "\xe2\x96\x81 x", "<s> <unk> <0x41>"};
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) encode_checked(&s, texts[i], strlen(texts[i]));
    size_t tail = size < 64 ? size : 64;
    encode_checked(&s, (const char*)data + size - tail, tail);
    spm_free(&s);
    return 0;
}
