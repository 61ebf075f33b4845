// data/spm.c: see spm.h.
#include "spm.h"
#include "../common.h"
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#define SPM_MAX_VOCAB (1 << 24)    // far above any real vocabulary (tokenizer.bin's limit too)
#define SPM_MAX_PIECE 1024         // bytes; sentencepiece's own pieces are at most 16 characters
#define SPM_MAX_FILE (1ULL << 31)  // a model file is kilobytes to a few megabytes

// ----------------------------------------------------------------------------
// UTF-8 as sentencepiece reads it

static int is_trail(uint8_t c) { return (c & 0xC0) == 0x80; }
static int valid_codepoint(uint32_t c) { return c < 0xD800 || (c >= 0xE000 && c <= 0x10FFFF); }

// Length of the valid UTF-8 character at p (n > 0 bytes there), or 0 when the bytes are not one: a stray trail
// byte, a cut sequence, an overlong form, a UTF-16 surrogate, a code point past U+10FFFF.
static int utf8_char_len(const uint8_t* p, size_t n) {
    uint8_t c = p[0];
    if (c < 0x80) return 1;
    if (n >= 2 && (c & 0xE0) == 0xC0 && is_trail(p[1])) {
        uint32_t cp = ((uint32_t)(c & 0x1F) << 6) | (p[1] & 0x3F);
        return cp >= 0x80 ? 2 : 0;
    }
    if (n >= 3 && (c & 0xF0) == 0xE0 && is_trail(p[1]) && is_trail(p[2])) {
        uint32_t cp = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
        return cp >= 0x800 && valid_codepoint(cp) ? 3 : 0;
    }
    if (n >= 4 && (c & 0xF8) == 0xF0 && is_trail(p[1]) && is_trail(p[2]) && is_trail(p[3])) {
        uint32_t cp = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(p[1] & 0x3F) << 12) | ((uint32_t)(p[2] & 0x3F) << 6) |
                      (p[3] & 0x3F);
        return cp >= 0x10000 && valid_codepoint(cp) ? 4 : 0;
    }
    return 0;
}

static int utf8_valid(const uint8_t* p, size_t n) {
    for (size_t i = 0; i < n;) {
        int k = utf8_char_len(p + i, n - i);
        if (!k) return 0;
        i += (size_t)k;
    }
    return 1;
}

// ----------------------------------------------------------------------------
// the piece table: bytes -> id

static uint64_t hash_bytes(const uint8_t* p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 0x100000001b3ULL; }
    return h;
}

// The id of the piece with these bytes, or -1.
static int find_piece(const SpmModel* s, const uint8_t* p, size_t n) {
    size_t mask = (size_t)s->table_size - 1;
    for (size_t slot = hash_bytes(p, n) & mask;; slot = (slot + 1) & mask) {
        int id = s->table[slot];
        if (id < 0) return -1;
        if ((size_t)s->piece_len[id] == n && !memcmp(s->pieces[id], p, n)) return id;
    }
}

// ----------------------------------------------------------------------------
// reading the protobuf: every read is bounded by the message it is in

typedef struct {
    const uint8_t* start;  // the whole file (offsets in messages are from here)
    const uint8_t* p;      // next byte of the current message
    const uint8_t* end;    // end of the current message
} Pb;

typedef struct {
    uint32_t field;
    int wire;              // 0 varint, 1 fixed 64, 2 length-delimited, 5 fixed 32
    uint64_t varint;       // wire 0
    const uint8_t* data;   // wire 1, 2, 5: the bytes
    size_t len;
} PbField;

static int fail(char* why, size_t why_n, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, why_n, fmt, ap);
    va_end(ap);
    return 0;
}

static int pb_varint(Pb* b, uint64_t* v, char* why, size_t why_n) {
    const uint8_t* at = b->p;
    uint64_t x = 0;
    for (int i = 0; i < 10; i++) {
        if (b->p >= b->end)
            return fail(why, why_n, "a varint at byte %td runs past the end of its message", at - b->start);
        uint8_t c = *b->p++;
        if (i == 9 && c > 1) return fail(why, why_n, "a varint at byte %td does not fit 64 bits", at - b->start);
        x |= (uint64_t)(c & 0x7F) << (7 * i);
        if (c < 0x80) { *v = x; return 1; }
    }
    return fail(why, why_n, "a varint at byte %td is longer than 10 bytes", at - b->start);
}

// The next field of the message; 0 at its end (why empty) or on a malformed field (why says what).
static int pb_next(Pb* b, PbField* f, char* why, size_t why_n) {
    why[0] = 0;
    if (b->p >= b->end) return 0;
    const uint8_t* at = b->p;
    uint64_t key;
    if (!pb_varint(b, &key, why, why_n)) return 0;
    f->field = (uint32_t)(key >> 3);
    f->wire = (int)(key & 7);
    if ((key >> 3) == 0 || (key >> 3) > 0x1FFFFFFF)
        return fail(why, why_n, "field number %llu at byte %td is not a protobuf field number",
                    (unsigned long long)(key >> 3), at - b->start);
    size_t left;
    switch (f->wire) {
    case 0: return pb_varint(b, &f->varint, why, why_n);
    case 1: f->len = 8; break;
    case 5: f->len = 4; break;
    case 2: {
        uint64_t n;
        if (!pb_varint(b, &n, why, why_n)) return 0;
        f->len = (size_t)n;
        if (n > (uint64_t)(b->end - b->p))
            return fail(why, why_n, "field %u at byte %td claims %llu bytes, its message has %td left (a truncated "
                        "file?)", f->field, at - b->start, (unsigned long long)n, b->end - b->p);
        break;
    }
    default:
        return fail(why, why_n, "field %u at byte %td has wire type %d (groups and unknown types are not read)",
                    f->field, at - b->start, f->wire);
    }
    left = (size_t)(b->end - b->p);
    if (f->len > left)
        return fail(why, why_n, "field %u at byte %td runs past the end of its message", f->field, at - b->start);
    f->data = b->p;
    b->p += f->len;
    return 1;
}

static int want_wire(const PbField* f, int wire, const char* what, const Pb* b, char* why, size_t why_n) {
    if (f->wire == wire) return 1;
    return fail(why, why_n, "%s (field %u, ending at byte %td) has wire type %d, expected %d", what, f->field,
                b->p - b->start, f->wire, wire);
}

static Pb pb_sub(const Pb* b, const PbField* f) { return (Pb){b->start, f->data, f->data + f->len}; }

// a proto int32 field: negative values travel as 64-bit two's complement
static int64_t as_int64(uint64_t v) { return (int64_t)v; }

// ----------------------------------------------------------------------------
// the three parts of the model

static int parse_piece(SpmModel* s, int id, Pb* b, char* why, size_t why_n) {
    PbField f;
    const uint8_t* piece = NULL;
    size_t len = 0;
    float score = 0.0f;
    uint64_t type = SPM_NORMAL;
    while (pb_next(b, &f, why, why_n)) {
        if (f.field == 1) {
            if (!want_wire(&f, 2, "a piece's text", b, why, why_n)) return 0;
            piece = f.data;
            len = f.len;
        } else if (f.field == 2) {
            if (!want_wire(&f, 5, "a piece's score", b, why, why_n)) return 0;
            memcpy(&score, f.data, 4);
        } else if (f.field == 3) {
            if (!want_wire(&f, 0, "a piece's type", b, why, why_n)) return 0;
            type = f.varint;
        }
    }
    if (why[0]) return 0;
    if (!piece) return fail(why, why_n, "piece %d has no text", id);
    if (len == 0) return fail(why, why_n, "piece %d is empty", id);
    if (len > SPM_MAX_PIECE) return fail(why, why_n, "piece %d is %zu bytes long (at most %d)", id, len, SPM_MAX_PIECE);
    if (memchr(piece, 0, len)) return fail(why, why_n, "piece %d holds a NUL byte", id);
    if (!utf8_valid(piece, len)) return fail(why, why_n, "piece %d is not valid UTF-8", id);
    if (!isfinite(score)) return fail(why, why_n, "piece %d has a score that is not finite", id);
    if (type < SPM_NORMAL || type > SPM_BYTE)
        return fail(why, why_n, "piece %d has type %llu (sentencepiece's are 1 to 6)", id, (unsigned long long)type);
    s->pieces[id] = xmalloc(len + 1);
    memcpy(s->pieces[id], piece, len);
    s->pieces[id][len] = 0;
    s->piece_len[id] = (int)len;
    s->scores[id] = score;
    s->types[id] = (unsigned char)type;
    return 1;
}

// trainer_spec: the model type and the fields the encoding depends on; the ids it names must be pieces
static int parse_trainer_spec(SpmModel* s, Pb* b, int* model_type, char* why, size_t why_n) {
    PbField f;
    *model_type = 1;  // proto default: UNIGRAM
    while (pb_next(b, &f, why, why_n)) {
        if (f.field == 3 || f.field == 24 || f.field == 35 || (f.field >= 40 && f.field <= 43)) {
            if (!want_wire(&f, 0, "a trainer_spec setting", b, why, why_n)) return 0;
        }
        if (f.field == 3) *model_type = (int)(f.varint > 100 ? 100 : f.varint);
        else if (f.field == 24) s->treat_whitespace_as_suffix = f.varint != 0;
        else if (f.field == 35) s->byte_fallback = f.varint != 0;
        else if (f.field >= 40 && f.field <= 43) {
            static const char* const names[] = {"unk_id", "bos_id", "eos_id", "pad_id"};
            int64_t v = as_int64(f.varint);
            if (v < -1 || v >= s->vocab_size)
                return fail(why, why_n, "trainer_spec.%s = %lld is outside the %d pieces", names[f.field - 40],
                            (long long)v, s->vocab_size);
        }
    }
    return why[0] == 0;
}

static int parse_normalizer_spec(SpmModel* s, Pb* b, char* why, size_t why_n) {
    PbField f;
    char name[64] = "(unnamed)";
    size_t charsmap = 0;
    while (pb_next(b, &f, why, why_n)) {
        if (f.field == 1 || f.field == 2) {
            if (!want_wire(&f, 2, "a normalizer_spec string", b, why, why_n)) return 0;
        } else if (f.field >= 3 && f.field <= 5) {
            if (!want_wire(&f, 0, "a normalizer_spec setting", b, why, why_n)) return 0;
        }
        if (f.field == 1) snprintf(name, sizeof(name), "%.*s", (int)(f.len < 60 ? f.len : 60), (const char*)f.data);
        else if (f.field == 2) charsmap = f.len;
        else if (f.field == 3) s->add_dummy_prefix = f.varint != 0;
        else if (f.field == 4) s->remove_extra_whitespaces = f.varint != 0;
        else if (f.field == 5) s->escape_whitespaces = f.varint != 0;
    }
    if (why[0]) return 0;
    // the normalization table maps characters to others (NFKC and the like); the shards of data/prepare.py are
    // written with identity, and reading the table is not done here
    if (charsmap)
        return fail(why, why_n, "its normalizer '%s' has a %zu-byte normalization table; only 'identity' "
                    "normalization is supported (train the tokenizer with normalization_rule_name=identity)",
                    name, charsmap);
    return 1;
}

// Piece types and the byte-fallback table: what sentencepiece itself refuses to load, and what the encoder needs.
static int check_pieces(SpmModel* s, char* why, size_t why_n) {
    int n_unk = 0, n_user = 0;
    for (int i = 0; i < 256; i++) s->byte_id[i] = -1;
    for (int id = 0; id < s->vocab_size; id++) {
        int t = s->types[id];
        if (t == SPM_UNKNOWN) { n_unk++; s->unk_id = id; }
        if (t == SPM_USER_DEFINED) n_user++;
        if (t == SPM_UNUSED) s->has_unused = 1;
        if (t == SPM_BYTE) {
            const char* p = s->pieces[id];
            unsigned v;
            char tail;
            if (!s->byte_fallback)
                return fail(why, why_n, "piece %d '%s' is a byte piece, but byte_fallback is off", id, p);
            if (s->piece_len[id] != 6 || sscanf(p, "<0x%2X%c", &v, &tail) != 2 || tail != '>' ||
                strspn(p + 3, "0123456789ABCDEF") != 2)
                return fail(why, why_n, "byte piece %d is '%s', not <0xHH> (two upper-case hex digits)", id, p);
            s->byte_id[v] = id;  // a second piece of the same byte would be a duplicate piece (checked after)
        }
    }
    if (n_unk != 1) return fail(why, why_n, "it has %d unknown (<unk>) pieces, sentencepiece needs exactly one", n_unk);
    if (s->byte_fallback)
        for (int v = 0; v < 256; v++)
            if (s->byte_id[v] < 0) return fail(why, why_n, "byte_fallback is on, but the byte piece <0x%02X> is missing", v);
    s->n_user_defined = n_user;
    s->user_defined = xmalloc((size_t)(n_user ? n_user : 1) * sizeof(int));
    n_user = 0;
    for (int id = 0; id < s->vocab_size; id++)
        if (s->types[id] == SPM_USER_DEFINED) s->user_defined[n_user++] = id;
    // the hash of all pieces; each piece once
    s->table_size = 16;
    while (s->table_size < 2 * s->vocab_size) s->table_size *= 2;
    s->table = xmalloc((size_t)s->table_size * sizeof(int));
    for (int i = 0; i < s->table_size; i++) s->table[i] = -1;
    size_t mask = (size_t)s->table_size - 1;
    for (int id = 0; id < s->vocab_size; id++) {
        int other = find_piece(s, (const uint8_t*)s->pieces[id], (size_t)s->piece_len[id]);
        if (other >= 0) return fail(why, why_n, "pieces %d and %d are both '%s'", other, id, s->pieces[id]);
        size_t slot = hash_bytes((const uint8_t*)s->pieces[id], (size_t)s->piece_len[id]) & mask;
        while (s->table[slot] >= 0) slot = (slot + 1) & mask;
        s->table[slot] = id;
    }
    return 1;
}

int spm_parse(SpmModel* s, const unsigned char* data, size_t n, char* why, size_t why_n) {
    memset(s, 0, sizeof(*s));
    s->add_dummy_prefix = s->remove_extra_whitespaces = s->escape_whitespaces = 1;  // the proto's defaults
    Pb top = {data, data, data + n};
    PbField f;
    // first pass: count the pieces and check the top-level structure
    long long count = 0;
    while (pb_next(&top, &f, why, why_n)) {
        if (f.field == 1 && !want_wire(&f, 2, "a piece", &top, why, why_n)) return 0;
        if ((f.field == 2 || f.field == 3) && !want_wire(&f, 2, "a spec", &top, why, why_n)) return 0;
        if (f.field == 1) count++;
    }
    if (why[0]) return 0;
    if (count == 0) return fail(why, why_n, "it holds no pieces (not a SentencePiece model?)");
    if (count > SPM_MAX_VOCAB) return fail(why, why_n, "it holds %lld pieces, more than %d", count, SPM_MAX_VOCAB);
    s->vocab_size = (int)count;
    s->pieces = xcalloc((size_t)count, sizeof(char*));
    s->piece_len = xcalloc((size_t)count, sizeof(int));
    s->scores = xcalloc((size_t)count, sizeof(float));
    s->types = xcalloc((size_t)count, 1);
    // second pass: the pieces, then the specs (whose ids are checked against the piece count)
    int id = 0, model_type = 1, ok = 1;
    top.p = data;
    while (ok && pb_next(&top, &f, why, why_n)) {
        Pb sub = pb_sub(&top, &f);
        if (f.field == 1) ok = parse_piece(s, id++, &sub, why, why_n);
        else if (f.field == 2) ok = parse_trainer_spec(s, &sub, &model_type, why, why_n);
        else if (f.field == 3) ok = parse_normalizer_spec(s, &sub, why, why_n);
    }
    if (ok && !why[0] && model_type != 2)
        ok = fail(why, why_n, "it is a %s model; only BPE models (model_type=bpe) are supported",
                  model_type == 1 ? "unigram" : model_type == 3 ? "word" : model_type == 4 ? "char" : "unknown-type");
    if (ok && !why[0]) ok = check_pieces(s, why, why_n);
    if (!ok || why[0]) {
        spm_free(s);
        return 0;
    }
    return 1;
}

void spm_load(SpmModel* s, const char* path) {
    char why[512] = "";
    // O_NONBLOCK: a FIFO would otherwise block the open; fstat below refuses it
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0) fatal("tokenizer model %s: cannot open it: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) { close(fd); fatal("tokenizer model %s is not a regular file", path); }
    if ((unsigned long long)st.st_size > SPM_MAX_FILE) {
        close(fd);
        fatal("tokenizer model %s is %lld bytes, too large for a SentencePiece model", path, (long long)st.st_size);
    }
    size_t n = (size_t)st.st_size, got = 0;
    uint8_t* buf = xmalloc(n);
    while (got < n) {
        ssize_t k = read(fd, buf + got, n - got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) { close(fd); free(buf); fatal("tokenizer model %s: read failed after %zu of %zu bytes", path, got, n); }
        got += (size_t)k;
    }
    close(fd);
    int ok = spm_parse(s, buf, n, why, sizeof(why));
    free(buf);
    if (!ok) fatal("tokenizer model %s: %s", path, why);
}

void spm_free(SpmModel* s) {
    for (int i = 0; s->pieces && i < s->vocab_size; i++) free(s->pieces[i]);
    free(s->pieces);
    free(s->piece_len);
    free(s->scores);
    free(s->types);
    free(s->table);
    free(s->user_defined);
    memset(s, 0, sizeof(*s));
}

// ----------------------------------------------------------------------------
// encoding

// A growing byte or int buffer.
typedef struct { uint8_t* p; size_t n, cap; } Bytes;
typedef struct { int* p; int n, cap; } Ints;

static void bytes_add(Bytes* b, const void* src, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = 2 * (b->n + n) + 16;
        b->p = realloc(b->p, b->cap);
        if (!b->p) fatal("out of memory encoding a prompt");
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void ints_add(Ints* v, int x) {
    if (v->n == v->cap) {
        v->cap = 2 * v->cap + 16;
        v->p = realloc(v->p, (size_t)v->cap * sizeof(int));
        if (!v->p) fatal("out of memory encoding a prompt");
    }
    v->p[v->n++] = x;
}

// The longest USER_DEFINED piece at p (n bytes there), or 0.
static size_t user_defined_at(const SpmModel* s, const uint8_t* p, size_t n) {
    size_t best = 0;
    for (int i = 0; i < s->n_user_defined; i++) {
        int id = s->user_defined[i];
        size_t k = (size_t)s->piece_len[id];
        if (k > best && k <= n && !memcmp(s->pieces[id], p, k)) best = k;
    }
    return best;
}

static const uint8_t SPACE_SYMBOL[3] = {0xE2, 0x96, 0x81};  // U+2581, what an escaped ' ' becomes
static const uint8_t REPLACEMENT[3] = {0xEF, 0xBF, 0xBD};   // U+FFFD, what a byte that is not UTF-8 becomes

// One step of the normalizer over the input at p (n > 0 bytes there): the text it puts out and the input bytes
// it takes. Identity normalization: a user-defined piece whole, else one character as it is, else (a byte that is
// not UTF-8) U+FFFD for that one byte.
typedef struct { const uint8_t* text; size_t len, used; } Prefix;

static Prefix next_prefix(const SpmModel* s, const uint8_t* p, size_t n) {
    size_t u = user_defined_at(s, p, n);
    if (u) return (Prefix){p, u, u};
    int k = utf8_char_len(p, n);
    if (k) return (Prefix){p, (size_t)k, (size_t)k};
    return (Prefix){REPLACEMENT, 3, 1};
}

// Step 1 of spm.h: the normalized text.
static void normalize(const SpmModel* s, const uint8_t* in, size_t n, Bytes* out) {
    out->n = 0;
    size_t pos = 0;
    if (s->remove_extra_whitespaces) {
        while (pos < n) {
            Prefix x = next_prefix(s, in + pos, n - pos);
            if (!(x.len == 1 && x.text[0] == ' ')) break;
            pos += x.used;
        }
    }
    if (pos == n) return;  // empty, or nothing but spaces
    const uint8_t* ws = s->escape_whitespaces ? SPACE_SYMBOL : (const uint8_t*)" ";
    size_t ws_len = s->escape_whitespaces ? 3 : 1;
    if (!s->treat_whitespace_as_suffix && s->add_dummy_prefix) bytes_add(out, ws, ws_len);
    int prev_space = s->remove_extra_whitespaces;
    while (pos < n) {
        Prefix x = next_prefix(s, in + pos, n - pos);
        // a prefix's leading spaces go when the text before it ended in one
        while (prev_space && x.len > 0 && x.text[0] == ' ') { x.text++; x.len--; }
        if (x.len > 0) {
            for (size_t i = 0; i < x.len; i++) {
                if (s->escape_whitespaces && x.text[i] == ' ') bytes_add(out, SPACE_SYMBOL, 3);
                else bytes_add(out, x.text + i, 1);
            }
            prev_space = x.text[x.len - 1] == ' ';
        }
        pos += x.used;
        if (!s->remove_extra_whitespaces) prev_space = 0;
    }
    if (s->remove_extra_whitespaces)
        while (out->n >= ws_len && !memcmp(out->p + out->n - ws_len, ws, ws_len)) out->n -= ws_len;
    if (s->treat_whitespace_as_suffix && s->add_dummy_prefix) bytes_add(out, ws, ws_len);
}

// The symbols of step 2 and 3: a linked list over the normalized text; a merged-away symbol has len 0.
typedef struct {
    size_t start, len;  // bytes of the normalized text
    int prev, next;     // -1: none
    int frozen;         // a user-defined piece: never merged
} Symbol;

// A candidate merge of adjacent symbols left and right into one piece of `size` bytes.
typedef struct {
    float score;
    int left, right;
    size_t size;
} Pair;

// a max-heap of pairs: higher score first, then the leftmost
typedef struct { Pair* p; size_t n, cap; } Heap;

static int pair_before(const Pair* a, const Pair* b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void heap_push(Heap* h, Pair x) {
    if (h->n == h->cap) {
        h->cap = 2 * h->cap + 64;
        h->p = realloc(h->p, h->cap * sizeof(Pair));
        if (!h->p) fatal("out of memory encoding a prompt");
    }
    size_t i = h->n++;
    while (i > 0 && pair_before(&x, &h->p[(i - 1) / 2])) { h->p[i] = h->p[(i - 1) / 2]; i = (i - 1) / 2; }
    h->p[i] = x;
}

static Pair heap_pop(Heap* h) {
    Pair top = h->p[0], x = h->p[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && pair_before(&h->p[c + 1], &h->p[c])) c++;
        if (!pair_before(&h->p[c], &x)) break;
        h->p[i] = h->p[c];
        i = c;
    }
    if (h->n) h->p[i] = x;
    return top;
}

// Can merge: a NORMAL, USER_DEFINED or UNUSED piece (never a control, unknown or byte piece).
static int mergeable_piece(const SpmModel* s, const uint8_t* p, size_t n) {
    int id = find_piece(s, p, n);
    if (id < 0) return -1;
    int t = s->types[id];
    return t == SPM_NORMAL || t == SPM_USER_DEFINED || t == SPM_UNUSED ? id : -1;
}

typedef struct {
    const SpmModel* s;
    const uint8_t* text;  // the normalized text
    Symbol* sym;
    Heap heap;
    int* split;           // (vocab_size) when the model has UNUSED pieces: the left part's length of the last
                          // pair proposed for each UNUSED piece (how sentencepiece splits it back), else NULL
} Merger;

static void propose(Merger* m, int left, int right) {
    if (left < 0 || right < 0 || m->sym[left].frozen || m->sym[right].frozen) return;
    size_t size = m->sym[left].len + m->sym[right].len;
    int id = mergeable_piece(m->s, m->text + m->sym[left].start, size);
    if (id < 0) return;
    heap_push(&m->heap, (Pair){m->s->scores[id], left, right, size});
    if (m->split && m->s->types[id] == SPM_UNUSED) m->split[id] = (int)m->sym[left].len;
}

// Step 4 for one symbol's bytes: its id, or (UNUSED pieces) the ids of the parts it was merged from.
static void emit_piece(const Merger* m, const uint8_t* p, size_t n, Ints* out, int* prev_unk) {
    const SpmModel* s = m->s;
    int id = find_piece(s, p, n);
    if (id >= 0 && s->types[id] == SPM_UNUSED && m->split && m->split[id] > 0) {
        size_t k = (size_t)m->split[id];
        emit_piece(m, p, k, out, prev_unk);
        emit_piece(m, p + k, n - k, out, prev_unk);
        return;
    }
    int unk = id < 0 || s->types[id] == SPM_UNKNOWN;
    if (unk && s->byte_fallback) {
        for (size_t i = 0; i < n; i++) ints_add(out, s->byte_id[p[i]]);
    } else if (unk) {
        if (!*prev_unk) ints_add(out, s->unk_id);  // a run of unknown symbols is one unknown id
    } else {
        ints_add(out, id);
    }
    *prev_unk = unk;
}

int spm_encode(const SpmModel* s, const char* text, size_t len, int** ids) {
    Bytes norm = {0};
    normalize(s, (const uint8_t*)text, len, &norm);
    Ints out = {0};
    Merger m = {s, norm.p, NULL, {0}, NULL};
    // step 2: characters (and whole user-defined pieces)
    int n_sym = 0;
    m.sym = xmalloc((norm.n ? norm.n : 1) * sizeof(Symbol));
    for (size_t pos = 0; pos < norm.n;) {
        size_t u = user_defined_at(s, norm.p + pos, norm.n - pos);
        int k = utf8_char_len(norm.p + pos, norm.n - pos);  // normalized text is valid UTF-8: k > 0
        size_t step = u ? u : (size_t)(k ? k : 1);
        m.sym[n_sym] = (Symbol){pos, step, n_sym - 1, pos + step < norm.n ? n_sym + 1 : -1, u > 0};
        n_sym++;
        pos += step;
    }
    if (s->has_unused) {
        m.split = xmalloc((size_t)s->vocab_size * sizeof(int));
        for (int i = 0; i < s->vocab_size; i++) m.split[i] = 0;
    }
    // step 3: merge the best pair until none is left; a pair whose symbols changed since it was proposed is stale
    for (int i = 1; i < n_sym; i++) propose(&m, i - 1, i);
    while (m.heap.n > 0) {
        Pair top = heap_pop(&m.heap);
        Symbol* l = &m.sym[top.left];
        Symbol* r = &m.sym[top.right];
        if (l->len == 0 || r->len == 0 || l->len + r->len != top.size) continue;
        l->len += r->len;
        l->next = r->next;
        if (r->next >= 0) m.sym[r->next].prev = top.left;
        r->len = 0;
        propose(&m, l->prev, top.left);
        propose(&m, top.left, l->next);
    }
    // step 4
    int prev_unk = 0;
    for (int i = n_sym > 0 ? 0 : -1; i >= 0; i = m.sym[i].next)
        emit_piece(&m, norm.p + m.sym[i].start, m.sym[i].len, &out, &prev_unk);
    free(m.sym);
    free(m.heap.p);
    free(m.split);
    free(norm.p);
    *ids = out.p;
    return out.n;
}

// ----------------------------------------------------------------------------

int spm_matches_tokenizer(const SpmModel* s, const Tokenizer* t, char* why, size_t why_n) {
    if (s->vocab_size != t->vocab_size)
        return fail(why, why_n, "it has %d pieces, the tokenizer.bin has %d", s->vocab_size, t->vocab_size);
    if (s->types[t->separator] != SPM_CONTROL)
        return fail(why, why_n, "the tokenizer.bin's separator id %d is '%s' here, not a control piece like <s>",
                    t->separator, s->pieces[t->separator]);
    Bytes want = {0};
    int ok = 1;
    for (int id = 0; id < s->vocab_size && ok; id++) {
        want.n = 0;
        int type = s->types[id];
        const uint8_t* p = (const uint8_t*)s->pieces[id];
        if (type == SPM_BYTE) {
            for (int v = 0; v < 256; v++)
                if (s->byte_id[v] == id) { uint8_t b = (uint8_t)v; bytes_add(&want, &b, 1); }
        } else if (type == SPM_NORMAL || type == SPM_USER_DEFINED) {
            for (int i = 0; i < s->piece_len[id];) {
                if (i + 3 <= s->piece_len[id] && !memcmp(p + i, SPACE_SYMBOL, 3)) { bytes_add(&want, " ", 1); i += 3; }
                else { bytes_add(&want, p + i, 1); i++; }
            }
        }
        if (want.n != t->len[id] || (want.n && memcmp(want.p, t->pieces[id], want.n)))
            ok = fail(why, why_n, "piece %d is '%s' here but decodes to %u other bytes in the tokenizer.bin (the two "
                      "files are not from the same tokenizer)", id, s->pieces[id], (unsigned)t->len[id]);
    }
    free(want.p);
    return ok;
}
