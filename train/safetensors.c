// train/safetensors.c: see safetensors.h.
#include "safetensors.h"
#include "../common.h"
#include "../json.h"
#include "atomic_file.h"
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c writes and reads the host's floats as little-endian bytes"
#endif

static const struct { const char* name; size_t size; } dtypes[ST_NUM_DTYPES] = {
    [ST_F32] = {"F32", 4}, [ST_BF16] = {"BF16", 2}, [ST_F16] = {"F16", 2}, [ST_F64] = {"F64", 8},
    [ST_I64] = {"I64", 8}, [ST_I32] = {"I32", 4}, [ST_I16] = {"I16", 2}, [ST_I8] = {"I8", 1}, [ST_U8] = {"U8", 1},
    [ST_BOOL] = {"BOOL", 1}, [ST_U16] = {"U16", 2}, [ST_U32] = {"U32", 4}, [ST_U64] = {"U64", 8},
    [ST_F8_E4M3] = {"F8_E4M3", 1}, [ST_F8_E5M2] = {"F8_E5M2", 1},
};

const char* st_dtype_name(StDtype t) { return t < ST_NUM_DTYPES ? dtypes[t].name : "?"; }
size_t st_dtype_size(StDtype t) { return t < ST_NUM_DTYPES ? dtypes[t].size : 0; }

uint16_t st_f32_to_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);  // NaN: keep it one (quiet)
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even (an overflow carries into the exponent: inf)
    return (uint16_t)(u >> 16);
}

// ----------------------------------------------------------------------------
// writing

uint64_t st_tensor_bytes(const StWriteTensor* t) {
    uint64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= (uint64_t)t->shape[i];
    return n * st_dtype_size(t->dtype);
}

// a growing text buffer
typedef struct {
    char* s;
    size_t len, cap;
} Text;

static void text_put(Text* t, const char* s, size_t n) {
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 4096;
        while (cap < t->len + n + 1) cap *= 2;
        char* p = realloc(t->s, cap);
        if (!p) fatal("out of memory building a safetensors header of %zu bytes", cap);
        t->s = p;
        t->cap = cap;
    }
    memcpy(t->s + t->len, s, n);
    t->len += n;
    t->s[t->len] = 0;
}

static void text_printf(Text* t, const char* fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(buf)) fatal("safetensors: a header fragment is longer than %zu bytes", sizeof(buf));
    text_put(t, buf, (size_t)n);
}

static void text_string(Text* t, const char* s) {
    size_t need = json_escape(NULL, 0, s);
    char* buf = xmalloc(need + 1);
    json_escape(buf, need + 1, s);
    text_put(t, buf, need);
    free(buf);
}

void st_write(const char* path, const StWriteTensor* t, int n, const char* const* meta_kv, int n_meta) {
    // the file order: larger dtypes first (each tensor then starts at a multiple of its element size), else as given
    int* order = xmalloc((size_t)(n ? n : 1) * sizeof(int));
    int k = 0;
    for (size_t size = 8; size >= 1; size /= 2)
        for (int i = 0; i < n; i++)
            if (st_dtype_size(t[i].dtype) == size) order[k++] = i;
    if (k != n) fatal("safetensors: %s: a tensor has an unknown dtype", path);

    Text h = {0};
    text_put(&h, "{", 1);
    int first = 1;
    if (n_meta > 0) {
        text_string(&h, "__metadata__");
        text_put(&h, ":{", 2);
        for (int i = 0; i < n_meta; i++) {
            if (i) text_put(&h, ",", 1);
            text_string(&h, meta_kv[2 * i]);
            text_put(&h, ":", 1);
            text_string(&h, meta_kv[2 * i + 1]);
        }
        text_put(&h, "}", 1);
        first = 0;
    }
    uint64_t offset = 0;
    for (int j = 0; j < n; j++) {
        const StWriteTensor* w = &t[order[j]];
        if (w->dtype != ST_F32 && w->dtype != ST_BF16) fatal("safetensors: %s: the writer stores F32 or BF16 only", path);
        if (!first) text_put(&h, ",", 1);
        first = 0;
        text_string(&h, w->name);
        text_printf(&h, ":{\"dtype\":\"%s\",\"shape\":[", st_dtype_name(w->dtype));
        for (int d = 0; d < w->ndim; d++) text_printf(&h, "%s%lld", d ? "," : "", (long long)w->shape[d]);
        uint64_t bytes = st_tensor_bytes(w);
        text_printf(&h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset, (unsigned long long)(offset + bytes));
        offset += bytes;
    }
    text_put(&h, "}", 1);
    while (h.len % 8) text_put(&h, " ", 1);  // the data section starts 8-byte aligned

    AtomicFile af;
    atomic_open(&af, path, "safetensors");
    uint64_t hlen = h.len;
    atomic_write(&af, &hlen, 8);
    atomic_write(&af, h.s, h.len);
    free(h.s);
    enum { CHUNK = 1 << 16 };
    uint16_t* half = xmalloc(CHUNK * sizeof(uint16_t));
    for (int j = 0; j < n; j++) {
        const StWriteTensor* w = &t[order[j]];
        size_t numel = (size_t)(st_tensor_bytes(w) / st_dtype_size(w->dtype));
        if (w->dtype == ST_F32) {
            atomic_write(&af, w->data, numel * sizeof(float));
            continue;
        }
        for (size_t i = 0; i < numel; i += CHUNK) {
            size_t m = numel - i < CHUNK ? numel - i : CHUNK;
            for (size_t q = 0; q < m; q++) half[q] = st_f32_to_bf16(w->data[i + q]);
            atomic_write(&af, half, m * sizeof(uint16_t));
        }
    }
    free(half);
    free(order);
    atomic_close(&af);
}

// ----------------------------------------------------------------------------
// reading

static int cmp_by_offset(const void* a, const void* b) {
    const StEntry* x = a;
    const StEntry* y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_by_name(const void* a, const void* b) {
    return strcmp(((const StEntry*)a)->name, ((const StEntry*)b)->name);
}

// A non-negative integer of the header, or 0 with the reason.
static int header_uint(const JsonValue* v, uint64_t* out) {
    if (!v || v->type != JSON_NUMBER || !v->is_int || v->integer < 0) return 0;
    *out = (uint64_t)v->integer;
    return 1;
}

// One tensor's entry: {"dtype": ..., "shape": [...], "data_offsets": [begin, end]}, nothing else.
static int parse_entry(const char* path, const char* name, const JsonValue* v, uint64_t data_bytes, StEntry* e,
                       char* why, size_t why_n) {
    memset(e, 0, sizeof(*e));
    e->name = name;
    if (v->type != JSON_OBJECT)
        return fail_why(why, why_n, path, "tensor '%s': its header entry is %s, not an object", name, json_type_name(v->type));
    for (int i = 0; i < v->n; i++)
        if (strcmp(v->keys[i], "dtype") && strcmp(v->keys[i], "shape") && strcmp(v->keys[i], "data_offsets"))
            return fail_why(why, why_n, path, "tensor '%s': unknown header field '%s'", name, v->keys[i]);
    const JsonValue* dt = json_get(v, "dtype");
    const JsonValue* sh = json_get(v, "shape");
    const JsonValue* off = json_get(v, "data_offsets");
    if (!dt || !sh || !off)
        return fail_why(why, why_n, path, "tensor '%s': the header entry lacks '%s'", name, !dt ? "dtype" : !sh ? "shape" : "data_offsets");
    if (dt->type != JSON_STRING) return fail_why(why, why_n, path, "tensor '%s': dtype is %s, not a string", name, json_type_name(dt->type));
    int t = 0;
    while (t < ST_NUM_DTYPES && strcmp(dtypes[t].name, dt->str)) t++;
    if (t == ST_NUM_DTYPES) return fail_why(why, why_n, path, "tensor '%s': unknown dtype '%s'", name, dt->str);
    e->dtype = (StDtype)t;
    if (sh->type != JSON_ARRAY) return fail_why(why, why_n, path, "tensor '%s': shape is %s, not an array", name, json_type_name(sh->type));
    if (sh->n > ST_MAX_DIMS) return fail_why(why, why_n, path, "tensor '%s': %d dimensions (at most %d)", name, sh->n, ST_MAX_DIMS);
    e->ndim = sh->n;
    // the byte count in 128 bits: product(shape) x size must not wrap around to a small number
    unsigned __int128 bytes = dtypes[t].size;
    for (int d = 0; d < sh->n; d++) {
        uint64_t dim;
        if (!header_uint(&sh->items[d], &dim))
            return fail_why(why, why_n, path, "tensor '%s': shape[%d] is not a non-negative integer", name, d);
        e->shape[d] = (int64_t)dim;
        bytes *= dim;
        if (bytes > (unsigned __int128)UINT64_MAX) bytes = (unsigned __int128)UINT64_MAX + 1;  // saturate: "too big"
    }
    if (off->type != JSON_ARRAY || off->n != 2 || !header_uint(&off->items[0], &e->begin) || !header_uint(&off->items[1], &e->end))
        return fail_why(why, why_n, path, "tensor '%s': data_offsets must be [begin, end], two non-negative integers", name);
    if (e->begin > e->end)
        return fail_why(why, why_n, path, "tensor '%s': data_offsets [%llu, %llu] end before they begin", name,
                   (unsigned long long)e->begin, (unsigned long long)e->end);
    if (e->end > data_bytes)
        return fail_why(why, why_n, path, "tensor '%s': data_offsets [%llu, %llu] run past the %llu-byte data section "
                   "(a truncated file, or a header that lies)", name, (unsigned long long)e->begin,
                   (unsigned long long)e->end, (unsigned long long)data_bytes);
    if (bytes != (unsigned __int128)(e->end - e->begin)) {
        char shape[160] = "";
        size_t k = 0;
        for (int d = 0; d < e->ndim && k < sizeof(shape) - 24; d++)
            k += (size_t)snprintf(shape + k, sizeof(shape) - k, "%s%lld", d ? ", " : "", (long long)e->shape[d]);
        return fail_why(why, why_n, path, "tensor '%s': shape [%s] of %s needs %s bytes, data_offsets [%llu, %llu] hold %llu",
                   name, shape, dtypes[t].name, bytes > (unsigned __int128)UINT64_MAX ? "more than 2^64" : "other",
                   (unsigned long long)e->begin, (unsigned long long)e->end, (unsigned long long)(e->end - e->begin));
    }
    return 1;
}

// The header's text (n bytes) against a data section of data_bytes: fills f->entries / f->n / f->doc.
static int parse_header(StFile* f, const char* path, const char* text, uint64_t n, uint64_t data_bytes, char* why,
                        size_t why_n) {
    JsonDoc* doc = xmalloc(sizeof(JsonDoc));
    char msg[512];
    if (!json_parse(doc, text, (size_t)n, 16, msg, sizeof(msg))) {
        free(doc);
        return fail_why(why, why_n, path, "header (the %llu bytes after the length): %s", (unsigned long long)n, msg);
    }
    const JsonValue* root = doc->root;
    int ok = 1;
    if (root->type != JSON_OBJECT) ok = fail_why(why, why_n, path, "the header is %s, not an object", json_type_name(root->type));
    StEntry* e = xmalloc((size_t)(ok && root->n ? root->n : 1) * sizeof(StEntry));
    int ne = 0;
    for (int i = 0; ok && i < root->n; i++) {
        const char* key = root->keys[i];
        const JsonValue* v = &root->items[i];
        if (!strcmp(key, "__metadata__")) {
            if (v->type != JSON_OBJECT) { ok = fail_why(why, why_n, path, "__metadata__ is %s, not an object", json_type_name(v->type)); break; }
            for (int j = 0; j < v->n; j++)
                if (v->items[j].type != JSON_STRING) {
                    ok = fail_why(why, why_n, path, "__metadata__ value '%s' is %s, not a string", v->keys[j], json_type_name(v->items[j].type));
                    break;
                }
            continue;
        }
        ok = parse_entry(path, key, v, data_bytes, &e[ne], why, why_n);
        if (ok) ne++;
    }
    if (ok) {
        // the tiling: sorted by offset, each tensor begins where the one before ends
        qsort(e, (size_t)ne, sizeof(StEntry), cmp_by_offset);
        uint64_t at = 0;
        for (int i = 0; ok && i < ne; i++) {
            if (e[i].begin < at)
                ok = fail_why(why, why_n, path, "tensor '%s': data_offsets [%llu, %llu] overlap tensor '%s' [%llu, %llu]",
                         e[i].name, (unsigned long long)e[i].begin, (unsigned long long)e[i].end, e[i - 1].name,
                         (unsigned long long)e[i - 1].begin, (unsigned long long)e[i - 1].end);
            else if (e[i].begin > at)
                ok = fail_why(why, why_n, path, "tensor '%s': a gap of %llu bytes before its data_offsets [%llu, %llu] "
                         "(no tensor covers bytes [%llu, %llu))", e[i].name, (unsigned long long)(e[i].begin - at),
                         (unsigned long long)e[i].begin, (unsigned long long)e[i].end, (unsigned long long)at,
                         (unsigned long long)e[i].begin);
            at = e[i].end > at ? e[i].end : at;
        }
        if (ok && at != data_bytes)
            ok = fail_why(why, why_n, path, "%llu bytes after the last tensor%s%s%s belong to no tensor (the data section "
                     "has %llu bytes)", (unsigned long long)(data_bytes - at), ne ? " '" : "", ne ? e[ne - 1].name : "",
                     ne ? "'" : "", (unsigned long long)data_bytes);
    }
    if (!ok) {
        free(e);
        json_free(doc);
        free(doc);
        return 0;
    }
    qsort(e, (size_t)ne, sizeof(StEntry), cmp_by_name);
    f->entries = e;
    f->n = ne;
    f->doc = doc;
    return 1;
}

// The 8-byte length against the file's size.
static int check_length(const char* path, uint64_t file_size, uint64_t hlen, char* why, size_t why_n) {
    if (hlen > ST_MAX_HEADER)
        return fail_why(why, why_n, path, "header length %llu is over the %u-byte limit (not a safetensors file?)",
                   (unsigned long long)hlen, ST_MAX_HEADER);
    if (hlen > file_size - 8)
        return fail_why(why, why_n, path, "header length %llu runs past the end of the %llu-byte file (truncated?)",
                   (unsigned long long)hlen, (unsigned long long)file_size);
    return 1;
}

static int read_exact(int fd, void* buf, size_t n, uint64_t at) {
    size_t done = 0;
    while (done < n) {
        ssize_t k = pread(fd, (char*)buf + done, n - done, (off_t)(at + done));
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return 0;
        done += (size_t)k;
    }
    return 1;
}

int st_open(StFile* f, const char* path, char* why, size_t why_n) {
    memset(f, 0, sizeof(*f));
    f->fd = -1;
    snprintf(f->path, sizeof(f->path), "%s", path);
    int fd = open(path, O_RDONLY | O_NONBLOCK);  // a FIFO must not hang here
    if (fd < 0) return fail_why(why, why_n, path, "cannot open: %s", strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) { close(fd); return fail_why(why, why_n, path, "not a regular file"); }
    uint64_t size = (uint64_t)sb.st_size, hlen;
    if (size < 8) { close(fd); return fail_why(why, why_n, path, "truncated: %llu bytes, shorter than the 8-byte header length", (unsigned long long)size); }
    if (!read_exact(fd, &hlen, 8, 0)) { close(fd); return fail_why(why, why_n, path, "read failed: %s", strerror(errno)); }
    if (!check_length(path, size, hlen, why, why_n)) { close(fd); return 0; }
    char* text = xmalloc((size_t)hlen + 1);
    if (!read_exact(fd, text, (size_t)hlen, 8)) {
        free(text);
        close(fd);
        return fail_why(why, why_n, path, "read failed: %s", strerror(errno));
    }
    int ok = parse_header(f, path, text, hlen, size - 8 - hlen, why, why_n);
    free(text);
    if (!ok) { close(fd); return 0; }
    f->fd = fd;
    f->data_start = 8 + hlen;
    f->data_bytes = size - 8 - hlen;
    return 1;
}

void st_close(StFile* f) {
    if (f->fd >= 0) close(f->fd);
    free(f->entries);
    if (f->doc) { json_free(f->doc); free(f->doc); }
    memset(f, 0, sizeof(*f));
    f->fd = -1;
}

const StEntry* st_find(const StFile* f, const char* name) {
    int lo = 0, hi = f->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(f->entries[mid].name, name);
        if (!c) return &f->entries[mid];
        if (c < 0) lo = mid + 1; else hi = mid - 1;
    }
    return NULL;
}

int st_read_f32(const StFile* f, const StEntry* e, float* out, char* why, size_t why_n) {
    if (e->dtype != ST_F32 && e->dtype != ST_BF16)
        return fail_why(why, why_n, f->path, "tensor '%s' has dtype %s; only F32 and BF16 are read", e->name, st_dtype_name(e->dtype));
    uint64_t bytes = e->end - e->begin, at = f->data_start + e->begin;
    if (e->dtype == ST_F32) {
        if (!read_exact(f->fd, out, (size_t)bytes, at))
            return fail_why(why, why_n, f->path, "tensor '%s': reading %llu bytes failed (the file shrank?)", e->name, (unsigned long long)bytes);
        return 1;
    }
    enum { CHUNK = 1 << 16 };
    uint16_t* half = xmalloc(CHUNK * sizeof(uint16_t));
    size_t numel = (size_t)(bytes / 2);
    for (size_t i = 0; i < numel; i += CHUNK) {
        size_t m = numel - i < CHUNK ? numel - i : CHUNK;
        if (!read_exact(f->fd, half, m * 2, at + 2 * i)) {
            free(half);
            return fail_why(why, why_n, f->path, "tensor '%s': reading %llu bytes failed (the file shrank?)", e->name, (unsigned long long)bytes);
        }
        for (size_t q = 0; q < m; q++) out[i + q] = st_bf16_to_f32(half[q]);
    }
    free(half);
    return 1;
}

int st_check_bytes(const void* data, size_t len, char* why, size_t why_n) {
    const char* path = "bytes";
    if (len < 8) return fail_why(why, why_n, path, "truncated: %zu bytes, shorter than the 8-byte header length", len);
    uint64_t hlen;
    memcpy(&hlen, data, 8);
    if (!check_length(path, len, hlen, why, why_n)) return 0;
    StFile f;
    memset(&f, 0, sizeof(f));
    if (!parse_header(&f, path, (const char*)data + 8, hlen, len - 8 - hlen, why, why_n)) return 0;
    free(f.entries);
    json_free(f.doc);
    free(f.doc);
    return 1;
}
