// train/eval.h: looking at a trained model without training it: its validation loss (--eval) and text it
// continues (--generate). The weights are whatever setup_model_read_only loaded: a checkpoint of --out, or
// --init-from's directory. Nothing is written into the run directory (train/setup.h).
//
//   ./train_moe --eval --out RUN [--step S] [--val-data GLOB] [--val-batches N] [--batch-size B --seq-len T]
//   ./train_moe --eval --out RUN --dump-logits FILE
//   ./train_moe --generate "prompt" --out RUN [--step S] [--temperature T] [--top-k K] [--max-new-tokens N] [--seed S]
//
// --dump-logits FILE: the first validation batch, as little-endian binary:
//   int32   header[4] = {20261202, B, T, V}
//   int32   tokens[B*T]      the batch's input tokens; row n = b*T + t
//   float32 logits[B*T][V]   the model's logits at every input position (row n predicts the token after tokens[n])
// and nothing else: 16 + 4*B*T + 4*B*T*V bytes.
#pragma once
#include "run.h"

#define DUMP_LOGITS_MAGIC 20261202

// The mean cross-entropy over --val-batches batches of --val-data from its start: the computation the trainer's
// validation logs as val_loss (train/loop.c), for the same B, T and batches; prints it, its perplexity and the
// token count on stdout. With --dump-logits, also writes that file.
void eval_validation(Run* r);
// Encodes the prompt with the SentencePiece model beside --tokenizer (data/spm.h), after the document separator,
// and samples up to --max-new-tokens tokens (stopping at the separator) at --temperature (0: the most likely)
// among the --top-k most likely (0: all), from a generator seeded by --seed; prints the prompt and the
// continuation on stdout.
void eval_generate(Run* r);
// Frees what the two modes set up.
void eval_free(Run* r);
