// fuzz/fuzz_safetensors.c: libFuzzer harness for the Hugging Face readers: every input goes through
//   st_check_bytes (train/safetensors.c): a whole safetensors file's header and its tiling of the data section;
//   json_parse (json.c) on the raw bytes, with a small depth limit;
//   config_from_json_text (model/config_json.c): the bytes as a config.json. An accepted config must pass
//   config_validate and survive config_to_json -> config_from_json_text unchanged (the writer and the reader share
//   one table; a disagreement calls abort()).
// None of them calls fatal() on bad input (they return the reason), so no longjmp is needed.
// Seeds: fuzz/corpus/safetensors/ (a tiny F32+BF16 file with metadata, a sharded index, an exported config.json, and
// a few broken ones), fuzz/safetensors.dict.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "json.h"
#include "model/config_json.h"
#include "train/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    char why[1024];
    st_check_bytes(data, size, why, sizeof(why));

    JsonDoc doc;
    if (json_parse(&doc, (const char*)data, size, 16, why, sizeof(why))) json_free(&doc);

    ModelConfig c;
    if (config_from_json_text(&c, (const char*)data, size, "input", why, sizeof(why))) {
        if (!config_validate(&c, why, sizeof(why))) abort();
        char* text = config_to_json(&c, "float32");
        ModelConfig again;
        if (!config_from_json_text(&again, text, strlen(text), "written", why, sizeof(why))) abort();
        if (!config_equal(&c, &again, why, sizeof(why))) abort();
        free(text);
    }
    return 0;
}
