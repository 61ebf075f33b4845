// json.c: see json.h. A recursive-descent parser over a bounded buffer; every node and string goes into one
// arena of chunks, so a document is freed at once and a failed parse frees everything it built.
#include "json.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

// ---- the arena: chunks of at least 64 KiB, 8-byte aligned allocations

typedef struct Chunk {
    struct Chunk* next;
    size_t used, cap;
    uint64_t data[];  // 8-byte aligned
} Chunk;

static void* arena_alloc(void** arena, size_t bytes) {
    bytes = (bytes + 7) & ~(size_t)7;
    Chunk* c = *arena;
    if (!c || c->cap - c->used < bytes) {
        size_t cap = bytes > 65536 ? bytes : 65536;
        Chunk* n = malloc(sizeof(Chunk) + cap);
        if (!n) return NULL;
        n->next = c;
        n->used = 0;
        n->cap = cap;
        *arena = n;
        c = n;
    }
    void* p = (char*)c->data + c->used;
    c->used += bytes;
    return p;
}

static void arena_free(void* arena) {
    for (Chunk* c = arena; c;) {
        Chunk* next = c->next;
        free(c);
        c = next;
    }
}

// ---- the parser

typedef struct {
    const unsigned char* s;
    size_t len, pos;
    int max_depth;
    void* arena;
    char* why;
    size_t why_n;
    int failed;
} Parser;

static int fail_at(Parser* p, size_t at, const char* fmt, ...) {
    if (p->failed) return 0;
    p->failed = 1;
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(p->why, p->why_n, "invalid JSON at byte %zu: %s", at, msg);
    return 0;
}

static void* palloc(Parser* p, size_t bytes) {
    void* q = arena_alloc(&p->arena, bytes ? bytes : 1);
    if (!q) fail_at(p, p->pos, "out of memory");
    return q;
}

static void skip_ws(Parser* p) {
    while (p->pos < p->len) {
        unsigned char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

// "'x'" for a printable byte, "byte 0x01" otherwise, "the end of the text" past it
static const char* describe_here(Parser* p, char* buf, size_t n) {
    if (p->pos >= p->len) return "the end of the text";
    unsigned char c = p->s[p->pos];
    if (c >= 0x20 && c < 0x7f) snprintf(buf, n, "'%c'", c);
    else snprintf(buf, n, "byte 0x%02x", c);
    return buf;
}

static int parse_value(Parser* p, JsonValue* v, int depth);

static int hex4(Parser* p, size_t at, unsigned* out) {
    if (p->len - at < 4) return fail_at(p, at, "\\u escape cut short");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = p->s[at + i];
        unsigned d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : 16;
        if (d == 16) return fail_at(p, at + i, "\\u escape needs 4 hex digits");
        v = v * 16 + d;
    }
    *out = v;
    return 1;
}

// Length of the UTF-8 sequence starting at s[i] (RFC 3629: no overlongs, no surrogates, <= U+10FFFF), 0 if invalid.
static size_t utf8_seq(const unsigned char* s, size_t i, size_t len) {
    unsigned char c = s[i];
    if (c < 0x80) return 1;
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c == 0xE0) { n = 3; lo = 0xA0; }
    else if (c >= 0xE1 && c <= 0xEC) n = 3;
    else if (c == 0xED) { n = 3; hi = 0x9F; }
    else if (c >= 0xEE && c <= 0xEF) n = 3;
    else if (c == 0xF0) { n = 4; lo = 0x90; }
    else if (c >= 0xF1 && c <= 0xF3) n = 4;
    else if (c == 0xF4) { n = 4; hi = 0x8F; }
    else return 0;
    if (len - i < n) return 0;
    if (s[i + 1] < lo || s[i + 1] > hi) return 0;
    for (size_t k = 2; k < n; k++)
        if (s[i + k] < 0x80 || s[i + k] > 0xBF) return 0;
    return n;
}

static size_t put_utf8(char* out, unsigned cp) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | cp >> 6); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12); out[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18); out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

// p->pos at the opening quote. The decoded text is never longer than the raw one (an escape of 2..12 bytes gives
// 1..4 bytes), so the raw length bounds the allocation.
static int parse_string(Parser* p, char** out, size_t* out_len) {
    size_t start = ++p->pos, end = start;
    while (end < p->len && p->s[end] != '"') end += p->s[end] == '\\' ? 2 : 1;
    if (end >= p->len) return fail_at(p, start - 1, "string not terminated");
    char* buf = palloc(p, end - start + 1);
    if (!buf) return 0;
    size_t n = 0;
    while (p->pos < end) {
        size_t at = p->pos;
        unsigned char c = p->s[at];
        if (c < 0x20) return fail_at(p, at, "control character 0x%02x inside a string (must be escaped)", c);
        if (c != '\\') {
            size_t k = utf8_seq(p->s, at, end);
            if (!k) return fail_at(p, at, "invalid UTF-8 inside a string");
            memcpy(buf + n, p->s + at, k);
            n += k;
            p->pos += k;
            continue;
        }
        unsigned char e = p->s[at + 1];
        p->pos += 2;
        switch (e) {
        case '"': buf[n++] = '"'; break;
        case '\\': buf[n++] = '\\'; break;
        case '/': buf[n++] = '/'; break;
        case 'b': buf[n++] = '\b'; break;
        case 'f': buf[n++] = '\f'; break;
        case 'n': buf[n++] = '\n'; break;
        case 'r': buf[n++] = '\r'; break;
        case 't': buf[n++] = '\t'; break;
        case 'u': {
            unsigned cp;
            if (!hex4(p, p->pos, &cp)) return 0;
            p->pos += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {  // a high surrogate: a low one must follow
                unsigned lo;
                if (p->pos + 6 > end || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u')
                    return fail_at(p, at, "\\u%04X is a high surrogate without its low half", cp);
                if (!hex4(p, p->pos + 2, &lo)) return 0;
                if (lo < 0xDC00 || lo > 0xDFFF) return fail_at(p, at, "\\u%04X is followed by \\u%04X, not a low surrogate", cp, lo);
                p->pos += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return fail_at(p, at, "\\u%04X is a lone low surrogate", cp);
            } else if (cp == 0) {
                return fail_at(p, at, "\\u0000 (NUL inside a string) is not supported");
            }
            n += put_utf8(buf + n, cp);
            break;
        }
        default:
            return fail_at(p, at, "invalid escape '\\%c'", e >= 0x20 && e < 0x7f ? e : '?');
        }
    }
    buf[n] = 0;
    p->pos = end + 1;
    *out = buf;
    *out_len = n;
    return 1;
}

#define MAX_NUMBER_CHARS 256

static int parse_number(Parser* p, JsonValue* v) {
    size_t start = p->pos, i = start;
    const unsigned char* s = p->s;
    int integral = 1;
    if (i < p->len && s[i] == '-') i++;
    if (i >= p->len || !(s[i] >= '0' && s[i] <= '9')) return fail_at(p, i, "a number needs a digit here");
    if (s[i] == '0') {
        i++;
        if (i < p->len && s[i] >= '0' && s[i] <= '9') return fail_at(p, start, "leading zero in a number");
    } else {
        while (i < p->len && s[i] >= '0' && s[i] <= '9') i++;
    }
    if (i < p->len && s[i] == '.') {
        integral = 0;
        i++;
        if (i >= p->len || !(s[i] >= '0' && s[i] <= '9')) return fail_at(p, i, "a digit must follow the decimal point");
        while (i < p->len && s[i] >= '0' && s[i] <= '9') i++;
    }
    if (i < p->len && (s[i] == 'e' || s[i] == 'E')) {
        integral = 0;
        i++;
        if (i < p->len && (s[i] == '+' || s[i] == '-')) i++;
        if (i >= p->len || !(s[i] >= '0' && s[i] <= '9')) return fail_at(p, i, "a digit must follow the exponent");
        while (i < p->len && s[i] >= '0' && s[i] <= '9') i++;
    }
    size_t n = i - start;
    if (n > MAX_NUMBER_CHARS) return fail_at(p, start, "number of %zu characters (at most %d)", n, MAX_NUMBER_CHARS);
    char lit[MAX_NUMBER_CHARS + 1];
    memcpy(lit, s + start, n);
    lit[n] = 0;
    v->type = JSON_NUMBER;
    v->number = strtod(lit, NULL);  // (the process never changes the C locale: '.' is the decimal point)
    v->number_f = strtof(lit, NULL);
    if (!isfinite(v->number)) return fail_at(p, start, "number %s is out of range", lit);
    v->is_int = 0;
    if (integral) {
        int neg = lit[0] == '-';
        uint64_t mag = 0;
        int fits = 1;
        for (const char* d = lit + neg; *d; d++) {
            if (mag > (UINT64_MAX - 9) / 10) { fits = 0; break; }
            mag = mag * 10 + (uint64_t)(*d - '0');
        }
        if (fits && (neg ? mag <= (uint64_t)INT64_MAX + 1 : mag <= (uint64_t)INT64_MAX)) {
            v->is_int = 1;
            v->integer = neg ? (mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag) : (int64_t)mag;
        }
    }
    p->pos = i;
    return 1;
}

static int parse_literal(Parser* p, const char* word, JsonValue* v, JsonType t, int b) {
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0) {
        char buf[16];
        return fail_at(p, p->pos, "unexpected %s", describe_here(p, buf, sizeof(buf)));
    }
    v->type = t;
    v->boolean = b;
    p->pos += n;
    return 1;
}

// A growable array of values (and keys) while an array or object is read; copied into the arena when done.
typedef struct {
    JsonValue* items;
    char** keys;
    size_t* key_at;
    int n, cap;
} Collect;

static int collect_push(Parser* p, Collect* c, const JsonValue* v, char* key, size_t key_at) {
    if (c->n == c->cap) {
        if (c->cap > (1 << 26)) return fail_at(p, p->pos, "more than %d items in one array or object", 1 << 26);
        int cap = c->cap ? c->cap * 2 : 8;
        JsonValue* items = realloc(c->items, (size_t)cap * sizeof(JsonValue));
        if (items) c->items = items;
        char** keys = realloc(c->keys, (size_t)cap * sizeof(char*));
        if (keys) c->keys = keys;
        size_t* at = realloc(c->key_at, (size_t)cap * sizeof(size_t));
        if (at) c->key_at = at;
        if (!items || !keys || !at) return fail_at(p, p->pos, "out of memory");
        c->cap = cap;
    }
    c->items[c->n] = *v;
    c->keys[c->n] = key;
    c->key_at[c->n] = key_at;
    c->n++;
    return 1;
}

static void collect_free(Collect* c) {
    free(c->items);
    free(c->keys);
    free(c->key_at);
}

static const char* const* sort_keys;
static int cmp_key_index(const void* a, const void* b) {
    int i = *(const int*)a, j = *(const int*)b;
    int c = strcmp(sort_keys[i], sort_keys[j]);
    return c ? c : (i > j) - (i < j);
}

// Duplicate keys: sort the member indices by key (ties by position) and compare neighbours, O(n log n).
static int check_duplicates(Parser* p, const Collect* c) {
    if (c->n < 2) return 1;
    int* idx = malloc((size_t)c->n * sizeof(int));
    if (!idx) return fail_at(p, p->pos, "out of memory");
    for (int i = 0; i < c->n; i++) idx[i] = i;
    sort_keys = (const char* const*)c->keys;
    qsort(idx, (size_t)c->n, sizeof(int), cmp_key_index);
    int ok = 1;
    for (int i = 1; i < c->n && ok; i++)
        if (!strcmp(c->keys[idx[i - 1]], c->keys[idx[i]]))
            ok = fail_at(p, c->key_at[idx[i]], "duplicate key \"%.120s\"", c->keys[idx[i]]);
    free(idx);
    return ok;
}

static int finish_container(Parser* p, JsonValue* v, Collect* c, int is_object) {
    if (is_object && !check_duplicates(p, c)) return 0;
    v->n = c->n;
    if (!c->n) return 1;  // an empty container: no items (and no memcpy from the NULL of an unused Collect)
    v->items = palloc(p, (size_t)c->n * sizeof(JsonValue));
    if (!v->items) return 0;
    memcpy(v->items, c->items, (size_t)c->n * sizeof(JsonValue));
    if (is_object) {
        v->keys = palloc(p, (size_t)c->n * sizeof(char*));
        if (!v->keys) return 0;
        memcpy(v->keys, c->keys, (size_t)c->n * sizeof(char*));
    }
    return 1;
}

static int parse_container(Parser* p, JsonValue* v, int depth, int is_object) {
    char close = is_object ? '}' : ']';
    v->type = is_object ? JSON_OBJECT : JSON_ARRAY;
    p->pos++;  // the opening bracket
    Collect c = {0};
    int ok = 1;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == close) {
        p->pos++;
    } else {
        for (;;) {
            char* key = NULL;
            size_t key_len = 0, key_at = 0;
            if (is_object) {
                skip_ws(p);
                char buf[16];
                if (p->pos >= p->len || p->s[p->pos] != '"') {
                    ok = fail_at(p, p->pos, "expected a string key, found %s", describe_here(p, buf, sizeof(buf)));
                    break;
                }
                key_at = p->pos;
                if (!(ok = parse_string(p, &key, &key_len))) break;
                skip_ws(p);
                if (p->pos >= p->len || p->s[p->pos] != ':') {
                    ok = fail_at(p, p->pos, "expected ':' after the key \"%.80s\", found %s", key, describe_here(p, buf, sizeof(buf)));
                    break;
                }
                p->pos++;
            }
            JsonValue item;
            if (!(ok = parse_value(p, &item, depth + 1))) break;
            if (!(ok = collect_push(p, &c, &item, key, key_at))) break;
            skip_ws(p);
            if (p->pos < p->len && p->s[p->pos] == ',') { p->pos++; continue; }
            if (p->pos < p->len && p->s[p->pos] == close) { p->pos++; break; }
            char buf[16];
            ok = fail_at(p, p->pos, "expected ',' or '%c', found %s", close, describe_here(p, buf, sizeof(buf)));
            break;
        }
    }
    if (ok) ok = finish_container(p, v, &c, is_object);
    collect_free(&c);
    return ok;
}

static int parse_value(Parser* p, JsonValue* v, int depth) {
    memset(v, 0, sizeof(*v));
    skip_ws(p);
    v->offset = p->pos;
    if (depth > p->max_depth) return fail_at(p, p->pos, "nested deeper than %d levels", p->max_depth);
    char buf[16];
    if (p->pos >= p->len) return fail_at(p, p->pos, "expected a value, found the end of the text");
    switch (p->s[p->pos]) {
    case '{': return parse_container(p, v, depth, 1);
    case '[': return parse_container(p, v, depth, 0);
    case '"': v->type = JSON_STRING; return parse_string(p, &v->str, &v->len);
    case 't': return parse_literal(p, "true", v, JSON_BOOL, 1);
    case 'f': return parse_literal(p, "false", v, JSON_BOOL, 0);
    case 'n': return parse_literal(p, "null", v, JSON_NULL, 0);
    default:
        if (p->s[p->pos] == '-' || (p->s[p->pos] >= '0' && p->s[p->pos] <= '9')) return parse_number(p, v);
        return fail_at(p, p->pos, "expected a value, found %s", describe_here(p, buf, sizeof(buf)));
    }
}

int json_parse(JsonDoc* doc, const char* text, size_t len, int max_depth, char* why, size_t why_n) {
    memset(doc, 0, sizeof(*doc));
    Parser p = {(const unsigned char*)text, len, 0, max_depth, NULL, why, why_n, 0};
    if (why_n) why[0] = 0;
    JsonValue* root = palloc(&p, sizeof(JsonValue));
    int ok = root && parse_value(&p, root, 0);
    if (ok) {
        skip_ws(&p);
        if (p.pos != len) {
            char buf[16];
            ok = fail_at(&p, p.pos, "%s after the value", describe_here(&p, buf, sizeof(buf)));
        }
    }
    if (!ok) {
        arena_free(p.arena);
        return 0;
    }
    doc->root = root;
    doc->arena = p.arena;
    return 1;
}

void json_free(JsonDoc* doc) {
    arena_free(doc->arena);
    memset(doc, 0, sizeof(*doc));
}

const JsonValue* json_get(const JsonValue* obj, const char* key) {
    if (!obj || obj->type != JSON_OBJECT) return NULL;
    for (int i = 0; i < obj->n; i++)
        if (!strcmp(obj->keys[i], key)) return &obj->items[i];
    return NULL;
}

const char* json_type_name(JsonType t) {
    switch (t) {
    case JSON_NULL: return "null";
    case JSON_BOOL: return "a boolean";
    case JSON_NUMBER: return "a number";
    case JSON_STRING: return "a string";
    case JSON_ARRAY: return "an array";
    case JSON_OBJECT: return "an object";
    }
    return "?";
}

size_t json_escape(char* out, size_t n, const char* s) {
    size_t k = 0;
#define PUT(ch) do { if (k + 1 < n) out[k] = (ch); k++; } while (0)
    PUT('"');
    for (const unsigned char* c = (const unsigned char*)s; *c; c++) {
        if (*c == '"' || *c == '\\') { PUT('\\'); PUT((char)*c); }
        else if (*c == '\n') { PUT('\\'); PUT('n'); }
        else if (*c == '\t') { PUT('\\'); PUT('t'); }
        else if (*c == '\r') { PUT('\\'); PUT('r'); }
        else if (*c < 0x20) {
            char u[8];
            snprintf(u, sizeof(u), "\\u%04x", *c);
            for (int i = 0; u[i]; i++) PUT(u[i]);
        } else {
            PUT((char)*c);
        }
    }
    PUT('"');
#undef PUT
    if (n) out[k < n ? k : n - 1] = 0;
    return k;
}
