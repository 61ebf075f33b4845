// train/log.h: the run's machine-readable log, log.jsonl: one JSON object per line, strict JSON in strict UTF-8.
//
// Records are written with fprintf on log_file() and ended with log_end_record(), which flushes and checks: a
// failed write (a full disk) is remembered, never ignored, and the training loop stops with a checkpoint when
// log_failed() says so. A log reopened to append (--resume) first loses a partial last line (a record cut by a
// kill or a full disk), so every line of the file stays a whole record.
#pragma once
#include <stdio.h>

// Opens path to write ("w") or to append ("a"); NULL path: a sink that discards (ranks other than 0). Fatal,
// naming path and flag_name, if it cannot be opened.
void log_open(const char* path, int append, const char* flag_name);
FILE* log_file(void);
// Ends a record: newline, flush, error check.
void log_end_record(void);
// Nonzero once a write to the log has failed; log_error() says why ("No space left on device").
int log_failed(void);
const char* log_error(void);
const char* log_path(void);
void log_close(void);

// JSON values: a string with every byte that is not valid UTF-8 replaced by U+FFFD and control characters
// escaped; numbers as ,"key":value with non-finite values as null (JSON has no NaN); float arrays likewise.
void json_string(FILE* f, const char* s);
void json_num(FILE* f, const char* key, double v);
void json_float_array(FILE* f, const float* v, int n);
// Length of the valid UTF-8 sequence at s (1-4), or 0 if the bytes there are not one (overlong forms, UTF-16
// surrogates, code points past U+10FFFF, a cut sequence).
int utf8_sequence_length(const unsigned char* s);
