// train/report.h: what a run tells its user. Each event goes to both places at once: a human line on stdout and
// a record in log.jsonl (train/log.h writes the file; the record types are listed in README.md). Only rank 0
// prints or logs (the other ranks' stdout and log are sinks), but report_banner holds collectives: every rank
// calls it.
#pragma once
#include "run.h"

// The model, the batch layout, memory, the optimizer, the data and the MFU peak; the resume record and the config
// record.
void report_banner(Run* r);
// One step: the step line and the step record (with --replay the full telemetry: every expert's load, each
// tensor's update RMS per layer); accumulates the --profile times.
void report_step(Run* r, const StepStats* s);
// The per-head max-logit table of the step (printed only).
void report_head_table(const Run* r, const StepStats* s);
void report_nonfinite(const StepStats* s, int in_a_row);
void report_spike(const StepStats* s, int replay_from);
void report_val(int step, float val_loss);
void report_sample(int step, const char* text);
void report_checkpoint(const char* out_dir, int step);
// The --profile means over the steps run.
void report_profile(const Run* r);
