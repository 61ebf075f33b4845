// train/hf.h: Hugging Face interop. Our parameters <-> a DeepseekV3ForCausalLM directory (config.json +
// safetensors), both ways through one name map (train/hf.c has it, with the conventions it relies on).
//
//   ./train_moe --export-hf DIR --out RUN [--step S] [--dtype fp32|bf16] [--max-shard-size BYTES] [--overwrite]
//   ./train_moe --init-from DIR [--model PRESET|config.json] ...       (a run starting from DIR's weights)
#pragma once
#include "../model/config.h"
#include "../comm/comm.h"
#include "flags.h"

// --export-hf: writes the checkpoint of --out (the newest complete one, or --step) as an HF directory, then returns
// (the caller exits). One process only; fatal with one line on any problem, leaving no directory that looks
// complete.
void hf_export(const Flags* f, Comm* comm);
// DIR/config.json into *cfg (named after DIR); fatal on a problem, naming the file and field.
void hf_read_config(const char* dir, ModelConfig* cfg);
// DIR's weights for the model cfg (as DIR/config.json describes it): params (the whole model's global layout,
// param_layout(cfg, cfg->n_experts) floats) and the router bias (MoE layers x experts). Every tensor of the model must
// be there with its shape and dtype F32 or BF16 (widened exactly) and finite values; no tensor of another model may
// be. Fatal on a problem, naming the file and tensor.
void hf_load_weights(const char* dir, const ModelConfig* cfg, float* params, float* bias);
