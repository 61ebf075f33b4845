// data/spm.h: text to token ids with a SentencePiece BPE model (the tokenizer.model data/prepare.py writes beside
// tokenizer.bin), the way the sentencepiece library encodes, so --generate's prompt is tokenized exactly as the
// shards were. tests/test_eval.sh compares it with python3 sentencepiece on the corpus and on edge cases.
//
// The file is a protobuf ModelProto:
//   1 pieces (repeated)   SentencePiece { 1 piece: bytes, 2 score: float, 3 type: NORMAL=1 UNKNOWN=2 CONTROL=3
//                         USER_DEFINED=4 UNUSED=5 BYTE=6 (absent: NORMAL) }; the piece's index is its id
//   2 trainer_spec        3 model_type (BPE=2; absent: UNIGRAM), 24 treat_whitespace_as_suffix, 35 byte_fallback,
//                         40..43 unk/bos/eos/pad ids (-1: none)
//   3 normalizer_spec     1 name, 2 precompiled_charsmap (a normalization table: refused, only identity is done
//                         here), 3 add_dummy_prefix, 4 remove_extra_whitespaces, 5 escape_whitespaces
//                         (each of the three absent: true)
// Everything else is skipped by its wire type.
//
// Encoding (what sentencepiece does for a BPE model):
//   1. normalize: with remove_extra_whitespaces, drop leading and trailing spaces and squeeze runs of them; with
//      add_dummy_prefix, one space in front (or behind, with treat_whitespace_as_suffix); with
//      escape_whitespaces, every ' ' becomes U+2581; bytes that are not valid UTF-8 become U+FFFD, one per byte.
//   2. split into Unicode characters (a USER_DEFINED piece found at a position is taken whole and never merged).
//   3. merge: again and again the adjacent pair whose concatenation is a piece (NORMAL, USER_DEFINED or UNUSED)
//      of the highest score, the leftmost on ties, becomes one symbol.
//   4. ids: an UNUSED piece is split back into the pair it was merged from; a symbol that is no piece becomes,
//      with byte_fallback, one <0xAB> piece per UTF-8 byte, else the unknown id (a run of them: one).
#pragma once
#include <stddef.h>
#include "tokenizer.h"

// piece types, numbered as sentencepiece_model.proto numbers them
enum { SPM_NORMAL = 1, SPM_UNKNOWN = 2, SPM_CONTROL = 3, SPM_USER_DEFINED = 4, SPM_UNUSED = 5, SPM_BYTE = 6 };

typedef struct {
    int vocab_size;
    char** pieces;          // (vocab_size) each piece's bytes, NUL-terminated (a piece holds no NUL)
    int* piece_len;         // (vocab_size)
    float* scores;          // (vocab_size) higher merges first
    unsigned char* types;   // (vocab_size) SPM_*
    int* table;             // (table_size) open-addressing hash of every piece's bytes -> id; -1: empty slot
    int table_size;         // a power of two, at least twice vocab_size
    int unk_id;             // the one UNKNOWN piece
    int byte_id[256];       // with byte_fallback: the <0xAB> piece of each byte, else -1
    int* user_defined;      // (n_user_defined) ids of the USER_DEFINED pieces
    int n_user_defined;
    int has_unused;         // some piece is UNUSED (encoding then tracks merges to split them back)
    // the normalizer_spec and trainer_spec fields the encoding depends on
    int add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces, treat_whitespace_as_suffix, byte_fallback;
} SpmModel;

// Loads and checks path; any problem (unreadable, not a regular file, a protobuf that runs past its bounds, a
// malformed varint, a bad piece, type or id, a model that is not BPE, a normalization other than identity) is
// fatal with one line naming the file.
void spm_load(SpmModel* s, const char* path);
// The same checks on bytes in memory: 1, or 0 with "what is wrong" in why and nothing left allocated.
int spm_parse(SpmModel* s, const unsigned char* data, size_t n, char* why, size_t why_n);
void spm_free(SpmModel* s);
// Encodes len bytes of text (any bytes; a NUL is a character like any other); returns the number of ids, which
// are in *ids (malloc'd, the caller frees; NULL when there are none).
int spm_encode(const SpmModel* s, const char* text, size_t len, int** ids);
// Whether tokenizer.bin t decodes every id to what s's piece means (data/prepare.py's table: a normal piece's bytes
// with U+2581 as ' ', a byte piece's byte, nothing for control, unknown and unused pieces) and its separator is a
// control piece: 1, or 0 with the first disagreement in why. Two files from different runs of prepare.py fail.
int spm_matches_tokenizer(const SpmModel* s, const Tokenizer* t, char* why, size_t why_n);
