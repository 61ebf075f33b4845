#!/usr/bin/env bash
# scripts/qk_ablation.sh [FLAGS] [-- TRAINER FLAGS]: scripts/qk_ablation.py through scaling_sweep.sh's launcher
# (the trainer and the default corpus built first if missing; --help for the flags).
TRAIN_MOE_STUDY=qk_ablation exec "$(dirname "$0")/scaling_sweep.sh" "$@"
