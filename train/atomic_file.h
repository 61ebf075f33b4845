// train/atomic_file.h: files written so that a kill at any moment leaves either the old file or the whole new one:
// the bytes go to PATH.tmp, which is flushed, fsync'd and renamed over PATH, then the directory is fsync'd.
// Checkpoints, safetensors and the Hugging Face export's small files are written this way. Every failure is
// fatal, naming the file, with the caller's prefix ("checkpoint", "safetensors", ...).
#pragma once
#include <stdint.h>
#include <stdio.h>

typedef struct {
    FILE* f;
    char path[1024];
    char tmp[1040];
    const char* who;  // prefix of error messages
    uint32_t crc;     // CRC32C of everything written so far (checkpoints store it in their header)
} AtomicFile;

void atomic_open(AtomicFile* af, const char* path, const char* who);
void atomic_write(AtomicFile* af, const void* data, size_t bytes);
// Stores the CRC of the whole file, written so far with a zero in its header's int32 slot `slot`, into that slot.
void atomic_store_crc(AtomicFile* af, int slot);
void atomic_close(AtomicFile* af);
// fsync of a directory (after a rename in it), and of the directory a path is in
void fsync_dir(const char* dir);
void fsync_dir_of(const char* path);
// Creates every directory above path (like mkdir -p of its parent), ignoring those that exist; a failure shows
// when path itself is created or written.
void mkdir_parents(const char* path);
