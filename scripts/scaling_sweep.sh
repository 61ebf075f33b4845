#!/usr/bin/env bash
# scripts/scaling_sweep.sh [FLAGS]: builds the trainer and the default corpus if missing, then runs
# scripts/scaling_sweep.py with FLAGS (--quick: ~15 min; no flag: the ~90-minute default ladder; --help).
# Background use: nohup scripts/scaling_sweep.sh > sweeps/default.log 2>&1 &   (rerun the same command to resume)
# The launcher of the other studies too: TRAIN_MOE_STUDY=NAME runs scripts/NAME.py instead (qk_ablation.sh).
set -eu
cd "$(dirname "$0")/.."
study=${TRAIN_MOE_STUDY:-scaling_sweep}
[ -f "scripts/$study.py" ] || { echo "error: TRAIN_MOE_STUDY=$study: no scripts/$study.py" >&2; exit 2; }
[ -x ./train_moe ] || make -s train_moe
case " $* " in
    *" --train-data "*|*" --help "*|*" -h "*|*" --report-only "*|*" --no-train "*) ;;
    *) [ -f data/default/train_000.bin ] || make -s data ;;
esac
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
exec /usr/bin/python3 "scripts/$study.py" "$@"
