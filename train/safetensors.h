// train/safetensors.h: reading and writing safetensors files (the Hugging Face weight format).
//
// A file is: uint64 little-endian N, then N bytes of a JSON header, then the data section. The header is one object:
//   {"__metadata__": {"format": "pt"},            (optional; string values only)
//    "name": {"dtype": "F32", "shape": [rows, cols], "data_offsets": [begin, end]}, ...}
// Offsets are bytes relative to the data section's start; data is little-endian and row-major. As the reference
// implementation requires, the tensors tile the data section exactly: sorted by offset, each begins where the
// previous one ends, the first at 0 and the last ends at the end of the file (no gap, no overlap, no trailing
// bytes), and end - begin = product(shape) x the dtype's size.
//
// The writer pads the header with spaces to a multiple of 8 bytes (as the reference does, so the data section is
// aligned), places tensors of larger dtypes first (every tensor stays aligned to its element size) and otherwise
// in the order given, and writes atomically (temporary name, fsync, rename).
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef enum { ST_F32, ST_BF16, ST_F16, ST_F64, ST_I64, ST_I32, ST_I16, ST_I8, ST_U8, ST_BOOL, ST_U16, ST_U32,
               ST_U64, ST_F8_E4M3, ST_F8_E5M2, ST_NUM_DTYPES } StDtype;

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER (100u << 20)  // 100 MiB, the reference implementation's limit

// A tensor the writer writes: fp32 source values, stored as dtype (F32, or BF16 rounded to nearest even).
typedef struct {
    const char* name;
    StDtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const float* data;  // product(shape) values
} StWriteTensor;

// One tensor of a file's header.
typedef struct {
    const char* name;  // points into the parsed header
    StDtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t begin, end;  // byte range in the data section
} StEntry;

typedef struct {
    char path[1024];
    int fd;
    uint64_t data_start;   // 8 + N
    uint64_t data_bytes;   // size of the data section
    StEntry* entries;      // sorted by name (st_find uses a binary search)
    int n;
    void* doc;             // the parsed header (owns the names)
} StFile;

const char* st_dtype_name(StDtype t);
size_t st_dtype_size(StDtype t);

// fp32 -> bf16, rounded to nearest even; a NaN stays a NaN (quiet, same sign).
uint16_t st_f32_to_bf16(float x);
static inline float st_bf16_to_f32(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
}

// Writes the tensors and metadata pairs (meta_kv: key, value, key, value, ...; n_meta pairs) to path. Fatal on an
// I/O error, naming the file.
void st_write(const char* path, const StWriteTensor* t, int n, const char* const* meta_kv, int n_meta);
// Bytes the tensor takes in the data section.
uint64_t st_tensor_bytes(const StWriteTensor* t);

// Opens path and checks its header completely (sizes, JSON, every entry, the tiling of the data section): 1 on
// success, else 0 with "PATH: what is wrong (tensor 'NAME')" in why.
int st_open(StFile* f, const char* path, char* why, size_t why_n);
void st_close(StFile* f);
// The entry named `name`, or NULL.
const StEntry* st_find(const StFile* f, const char* name);
// Reads an F32 or BF16 entry into out (numel fp32 values; BF16 is widened exactly): 1, or 0 with the reason.
int st_read_f32(const StFile* f, const StEntry* e, float* out, char* why, size_t why_n);
// Checks a whole file's bytes as st_open does (the header and the tiling against len): the entry point for
// fuzzing. 1 if they pass, else 0 with the reason.
int st_check_bytes(const void* data, size_t len, char* why, size_t why_n);
