#!/usr/bin/env bash
# scripts/qk_ablation.sh [FLAGS] [-- TRAINER FLAGS]: builds the trainer and the default corpus if missing, then runs
# scripts/qk_ablation.py (QK-Clip off / tau 100 / tau 30 on k2-nano with Muon at lr 0.1, ~5 min on 2 idle cores;
# --help for the flags). Rerunning the same command skips finished runs and continues interrupted ones.
set -eu
cd "$(dirname "$0")/.."
[ -x ./train_moe ] || make -s train_moe
case " $* " in
    *" --train-data "*|*" --help "*|*" -h "*|*" --no-train "*) ;;
    *) [ -f data/default/train_000.bin ] || make -s data ;;
esac
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
exec /usr/bin/python3 scripts/qk_ablation.py "$@"
