// json.h: a small strict JSON parser (RFC 8259) for the files other programs write: safetensors headers and
// Hugging Face config.json / index files. Strict means: no comments, no trailing commas, no NaN/Infinity, no
// leading zeros, no control characters or invalid UTF-8 inside strings, no lone surrogates, no duplicate keys in an
// object, nothing but whitespace after the value. Two limits keep hostile input cheap: the nesting depth and the
// text's size (the caller's buffer; the parser never reads past len). Every error names the byte offset.
//
//   JsonDoc doc;
//   char why[256];
//   if (!json_parse(&doc, text, len, JSON_MAX_DEPTH, why, sizeof(why))) fatal("%s: %s", path, why);
//   const JsonValue* v = json_get(doc.root, "hidden_size");
//   ...
//   json_free(&doc);
#pragma once
#include <stddef.h>
#include <stdint.h>

#define JSON_MAX_DEPTH 64

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } JsonType;

typedef struct JsonValue JsonValue;
struct JsonValue {
    JsonType type;
    size_t offset;       // byte offset of the value's first character in the text
    int boolean;         // JSON_BOOL
    // JSON_NUMBER: the value as a double and as a float (each rounded once from the decimal text), and, for an
    // integer literal (no fraction, no exponent) that fits, exactly as an int64
    double number;
    float number_f;
    int is_int;
    int64_t integer;
    // JSON_STRING: UTF-8, NUL-terminated (a \u0000 escape is refused, so len == strlen(str))
    char* str;
    size_t len;
    // JSON_ARRAY: n items; JSON_OBJECT: n members, keys[i] -> items[i], in the order of the text
    int n;
    JsonValue* items;
    char** keys;
};

typedef struct {
    JsonValue* root;
    void* arena;  // every node and string of the document, freed at once
} JsonDoc;

// Parses text[0, len) into doc; 1 on success, else 0 with "what at byte N" in why and nothing to free.
int json_parse(JsonDoc* doc, const char* text, size_t len, int max_depth, char* why, size_t why_n);
void json_free(JsonDoc* doc);
// The member `key` of an object, or NULL (also when obj is not an object). Linear in the object's size.
const JsonValue* json_get(const JsonValue* obj, const char* key);
// "an object", "a string", ... for error messages
const char* json_type_name(JsonType t);
// Writes s as a JSON string literal (quotes and escapes) into out; returns the length it needs (snprintf-style).
size_t json_escape(char* out, size_t n, const char* s);
