// train/log.c: see log.h.
#include "log.h"
#include "../common.h"
#include <errno.h>
#include <math.h>
#include <sys/types.h>
#include <unistd.h>

static FILE* log_f = NULL;
static char log_name[1024];
static int log_err = 0;  // errno of the first failed write, 0 while all is well

// A record cut short by a kill or a full disk leaves a last line without its newline: drop it, so the file
// holds whole records only (the resumed run writes that step's record again).
static void drop_partial_last_line(const char* path) {
    FILE* f = fopen(path, "r+b");
    if (!f) return;  // no log yet: nothing to repair
    if (fseeko(f, 0, SEEK_END) != 0) { fclose(f); return; }
    off_t end = ftello(f), keep = end;
    char buf[4096];
    while (keep > 0) {
        off_t from = keep > (off_t)sizeof(buf) ? keep - (off_t)sizeof(buf) : 0;
        size_t n = (size_t)(keep - from);
        if (fseeko(f, from, SEEK_SET) != 0 || fread(buf, 1, n, f) != n) { fclose(f); return; }
        size_t i = n;
        while (i > 0 && buf[i - 1] != '\n') i--;
        if (i > 0) { keep = from + (off_t)i; break; }
        keep = from;
    }
    fclose(f);
    if (keep != end) {
        if (truncate(path, keep) != 0) fatal("log: cannot cut the partial last line of %s: %s", path, strerror(errno));
        fprintf(stderr, "warning: log: %s ended in a partial record (%lld bytes); removed it\n", path,
                (long long)(end - keep));
    }
}

void log_open(const char* path, int append, const char* flag_name) {
    log_err = 0;
    if (!path) {
        log_f = fopen("/dev/null", "w");
        snprintf(log_name, sizeof(log_name), "/dev/null");
        if (!log_f) fatal("log: cannot open /dev/null");
        return;
    }
    snprintf(log_name, sizeof(log_name), "%s", path);
    if (append) drop_partial_last_line(path);
    log_f = fopen(path, append ? "a" : "w");
    if (!log_f) fatal("%s: cannot write %s: %s", flag_name, path, strerror(errno));
}

FILE* log_file(void) { return log_f; }
int log_failed(void) { return log_err != 0; }
const char* log_error(void) { return strerror(log_err); }
const char* log_path(void) { return log_name; }

void log_end_record(void) {
    fputc('\n', log_f);
    if (fflush(log_f) != 0 || ferror(log_f)) {
        if (!log_err) log_err = errno ? errno : EIO;
        clearerr(log_f);
    }
}

void log_close(void) {
    if (log_f && fclose(log_f) != 0 && !log_err) log_err = errno ? errno : EIO;
    log_f = NULL;
}

int utf8_sequence_length(const unsigned char* s) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    int n;
    unsigned lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c == 0xE0) { n = 3; lo = 0xA0; }          // no overlong 3-byte forms
    else if (c == 0xED) { n = 3; hi = 0x9F; }          // no UTF-16 surrogates U+D800..U+DFFF
    else if (c >= 0xE1 && c <= 0xEF) n = 3;
    else if (c == 0xF0) { n = 4; lo = 0x90; }          // no overlong 4-byte forms
    else if (c >= 0xF1 && c <= 0xF3) n = 4;
    else if (c == 0xF4) { n = 4; hi = 0x8F; }          // nothing past U+10FFFF
    else return 0;                                     // 0x80..0xC1, 0xF5..0xFF never start a sequence
    if (s[1] < lo || s[1] > hi) return 0;
    for (int i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xBF) return 0;      // also stops at the string's terminating 0
    return n;
}

void json_string(FILE* f, const char* s) {
    fputc('"', f);
    const unsigned char* p = (const unsigned char*)s;
    while (*p) {
        if (*p == '"' || *p == '\\') { fprintf(f, "\\%c", *p); p++; continue; }
        if (*p == '\n') { fputs("\\n", f); p++; continue; }
        if (*p == '\t') { fputs("\\t", f); p++; continue; }
        if (*p < 0x20) { fprintf(f, "\\u%04x", *p); p++; continue; }
        int n = utf8_sequence_length(p);
        if (n == 0) { fputs("\\ufffd", f); p++; continue; }  // a byte that is not UTF-8: the replacement character
        fwrite(p, 1, (size_t)n, f);
        p += n;
    }
    fputc('"', f);
}

void json_num(FILE* f, const char* key, double v) {
    if (isfinite(v)) fprintf(f, ",\"%s\":%.7g", key, v);
    else fprintf(f, ",\"%s\":null", key);
}

void json_float_array(FILE* f, const float* v, int n) {
    fputc('[', f);
    for (int i = 0; i < n; i++) {
        if (isfinite(v[i])) fprintf(f, "%s%.6g", i ? "," : "", v[i]);
        else fprintf(f, "%snull", i ? "," : "");
    }
    fputc(']', f);
}
