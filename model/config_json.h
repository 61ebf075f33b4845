// model/config_json.h: a ModelConfig <-> a Hugging Face DeepSeek-V3 config.json (DeepseekV3Config), both ways from
// one field table (model/config_json.c), so what --export-hf writes is exactly what --init-from and --model read.
#pragma once
#include "config.h"

// Parses config.json text (len bytes) into *c; src names it in messages. Every field this trainer reads must be
// there with the right JSON type; every field that selects behaviour we do not implement (grouped routing, yarn RoPE,
// several shared experts, MTP layers, ...) must be absent or hold the one value we implement. On a problem writes
// "SRC: field 'NAME': why" into why and returns 0. The name of *c is left empty (the caller chooses it).
int config_from_json_text(ModelConfig* c, const char* text, size_t len, const char* src, char* why, size_t why_n);
// The same, reading the file at path.
int config_from_json_file(ModelConfig* c, const char* path, char* why, size_t why_n);
// config.json text for c (malloc'd, NUL-terminated; the caller frees it). torch_dtype: "float32" or "bfloat16".
char* config_to_json(const ModelConfig* c, const char* torch_dtype);
// --model's value: a preset name, or a path to a config.json (the value contains '/', ends in ".json", or names an
// existing file). Fills *c (a file model is named after its folder, or after the file when it is not called
// config.json); 0 with the reason in why when neither works.
int config_from_model_arg(ModelConfig* c, const char* arg, char* why, size_t why_n);
// A short name for a model read from a file or folder path: the last path component that is not "config.json",
// without ".json", cut to fit ModelConfig.name, characters other than [A-Za-z0-9._-] replaced by '_' (it is written
// into JSON logs and run directory names).
void config_name_from_path(char* name, size_t n, const char* path);
// Compares two configs field by field (names aside): 1 if equal, else 0 with "FIELD: A vs B" in why.
int config_equal(const ModelConfig* a, const ModelConfig* b, char* why, size_t why_n);
