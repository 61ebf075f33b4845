// train/atomic_file.c: see atomic_file.h.
#include "atomic_file.h"
#include "crc32c.h"
#include "../common.h"
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <string.h>
#include <unistd.h>

void atomic_open(AtomicFile* af, const char* path, const char* who) {
    af->who = who;
    snprintf(af->path, sizeof(af->path), "%s", path);
    snprintf(af->tmp, sizeof(af->tmp), "%s.tmp", path);
    af->f = fopen(af->tmp, "wb");
    af->crc = 0;
    if (!af->f) fatal("%s: cannot write %s: %s", who, af->tmp, strerror(errno));
}

void atomic_write(AtomicFile* af, const void* data, size_t bytes) {
    if (bytes && fwrite(data, 1, bytes, af->f) != bytes)
        fatal("%s: write to %s failed: %s", af->who, af->tmp, strerror(errno));
    af->crc = crc32c_update(af->crc, data, bytes);
}

void atomic_store_crc(AtomicFile* af, int slot) {
    if (fseek(af->f, (long)slot * 4, SEEK_SET) != 0 || fwrite(&af->crc, 4, 1, af->f) != 1)
        fatal("%s: write to %s failed: %s", af->who, af->tmp, strerror(errno));
}

void fsync_dir(const char* dir) {
    int fd = open(dir, O_RDONLY);
    if (fd >= 0) { fsync(fd); close(fd); }
}

void fsync_dir_of(const char* path) {
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s", path);
    char* slash = strrchr(dir, '/');
    if (slash) *slash = 0; else snprintf(dir, sizeof(dir), ".");
    fsync_dir(dir);
}

void atomic_close(AtomicFile* af) {
    if (fflush(af->f) != 0 || fsync(fileno(af->f)) != 0)
        fatal("%s: flushing %s failed: %s", af->who, af->tmp, strerror(errno));
    if (fclose(af->f) != 0) fatal("%s: closing %s failed: %s", af->who, af->tmp, strerror(errno));
    if (rename(af->tmp, af->path) != 0) fatal("%s: rename %s -> %s failed: %s", af->who, af->tmp, af->path, strerror(errno));
    fsync_dir_of(af->path);
}

void mkdir_parents(const char* path) {
    char buf[1024];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char* p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        mkdir(buf, 0755);
        *p = '/';
    }
}
