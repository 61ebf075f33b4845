// train/settings.h: the settings every rank of a run must share, compared once at start.
//
// Ranks started with different flags (an MPMD line, a host with another data directory) would hang in a
// collective, die in a size mismatch, or worse, train on silently: different seeds, taus or learning rates give
// different weights on each rank. So each rank writes a canonical record of its settings -- every flag that is
// not marked per-rank in the flag table, and the size and a header hash of every data and tokenizer file its
// globs match -- and the ranks compare a hash of it before any other collective. On a mismatch every rank ends
// with one line: `error: ranks disagree on --FLAG (rank 0: X, rank R: Y)`.
#pragma once
#include "flags.h"
#include "../comm/comm.h"

void settings_agree(Comm* c, const Flags* f);
