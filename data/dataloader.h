// data/dataloader.h: llm.c token shards, read by memory map, served as (input, target) windows of T+1 tokens.
//
// Shard format (llm.c): 256 int32 header, then the tokens.
//   magic 20240520, version 1: uint16 tokens (GPT-2 style shards)
//   magic 20240801, version 7: uint32 tokens (llm.c's Llama-3 shards)
//   header[2] = number of tokens; the file is exactly 1024 + n * token_bytes bytes.
//
// Order: the shards' windows (stride T) are numbered across all files. A training loader visits them in a fresh
// random permutation per epoch (from seed and epoch); each step of the whole job takes the next world*B windows
// and rank r takes its B of them, so the ranks read disjoint data and together read what one process would.
// The position (epoch, cursor) is all a checkpoint needs to continue exactly.
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef struct {
    char* path;
    int token_bytes;        // 2 or 4
    size_t n_tokens;
    const uint8_t* tokens;  // n_tokens * token_bytes, inside the mapping
    void* map;
    size_t map_len;         // the file's size when it was opened and checked
    uint64_t dev, ino;      // which file was mapped: a later stat of path that finds this file must find map_len
} Shard;

typedef struct {
    Shard* shards;
    int n_shards;
    int T;                  // window = T + 1 tokens, consecutive windows start T apart
    int vocab_size;         // every token read is checked against it
    size_t* first_window;   // (n_shards + 1) index of each shard's first window; the last entry is the total
    size_t n_windows;
    int shuffle;            // 1: new permutation every epoch; 0: file order (validation)
    uint64_t seed;
    uint64_t* perm;         // (n_windows) this epoch's order, when shuffling
    uint64_t epoch;         // position: epoch and next window within it
    uint64_t cursor;
    char error[512];        // why dataloader_next / dataloader_window last returned -1
} DataLoader;

// Opens every file matching pattern (glob, sorted). Any problem (no match, not a regular file (a FIFO is refused
// without blocking), unreadable, bad magic or version, size that disagrees with the header, too short for one
// window, a token id >= vocab_size) is fatal with the file named, after freeing what was opened. The first call
// installs a SIGBUS handler for reads of a shard that was shortened under its mapping (dataloader.c); a SIGBUS
// from anywhere else goes on to the handler that was there before.
void dataloader_init(DataLoader* dl, const char* pattern, const char* flag_name, int T, int vocab_size,
                     int shuffle, uint64_t seed);
void dataloader_free(DataLoader* dl);
// Next batch for rank `rank` of `world`, B rows each: inputs (B,T) and targets (B,T). Advances by world*B windows
// and returns 0; or returns -1 with dl->error set ("data: PATH changed while training (...)"), the position
// unchanged, when a shard changed under the loader (see dataloader_window).
int dataloader_next(DataLoader* dl, int* inputs, int* targets, int B, int rank, int world);
// Fatal, naming the data, if it cannot fill one batch of B rows on each of `world` ranks.
void dataloader_require(const DataLoader* dl, int B, int world, const char* flag_name);
// Jump to a saved position (recomputes the permutation).
void dataloader_seek(DataLoader* dl, uint64_t epoch, uint64_t cursor);
// The window at index w of the file order (used by validation, which walks windows in order). 0, or -1 with
// dl->error set when the shard changed since it was checked: shortened (a read past its new end raises SIGBUS,
// which a handler turns into this error), another size, or a token id >= vocab_size. A file replaced by rename
// or deleted is no error: the mapping keeps the one that was checked.
int dataloader_window(DataLoader* dl, size_t w, int* inputs, int* targets);
uint64_t dataloader_total_tokens(const DataLoader* dl);
