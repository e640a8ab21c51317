#!/bin/bash
# Submits a metatrain study to Slurm as three jobs: an array of the per-seed
# pretrainings, an array of every method on every seed (after the first), and
# the report (after the second). Each array index is one `metatrain study --task I`.
#
#   cluster/slurm/study.sh data/dataset.h5 studies/seeds.yaml studies/out --quick
#
# sbatch options come from Slurm's environment variables (SBATCH_PARTITION,
# SBATCH_TIMELIMIT, ...); the tasks' CPUs from STUDY_CPUS_PER_TASK (default 1).
# `metatrain` must be on PATH (or set METATRAIN). Prints the three job ids.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: study.sh DATASET PLAN OUT [study options, e.g. --quick --seeds 3]" >&2
  exit 2
fi
DATASET=$1 PLAN=$2 OUT=$3
shift 3
METATRAIN=${METATRAIN:-metatrain}
HERE=$(cd "$(dirname "$0")" && pwd)
CPUS=${STUDY_CPUS_PER_TASK:-1}
mkdir -p "$OUT/logs"
LIST=$("$METATRAIN" study --data "$DATASET" --plan "$PLAN" --out "$OUT" "$@" --list)
TASKS=$(printf '%s\n' "$LIST" | wc -l)
PRETRAIN=$(printf '%s\n' "$LIST" | grep -c $'\tpretrain/' || true)
AFTER=()
if [ "$PRETRAIN" -gt 0 ]; then
  PRE=$(sbatch --parsable --cpus-per-task="$CPUS" --array=0-$((PRETRAIN - 1)) --output="$OUT/logs/slurm-%A_%a.out" \
    "$HERE/study.sbatch" "$DATASET" "$PLAN" "$OUT" "$@")
  AFTER=(--dependency=afterok:"$PRE")
  echo "pretraining: job $PRE (tasks 0-$((PRETRAIN - 1)))"
fi
RUNS=$(sbatch --parsable "${AFTER[@]}" --cpus-per-task="$CPUS" --array="$PRETRAIN"-$((TASKS - 1)) \
  --output="$OUT/logs/slurm-%A_%a.out" "$HERE/study.sbatch" "$DATASET" "$PLAN" "$OUT" "$@")
echo "runs: job $RUNS (tasks $PRETRAIN-$((TASKS - 1)))"
REPORT=$(sbatch --parsable --dependency=afterok:"$RUNS" --output="$OUT/logs/slurm-report-%j.out" \
  "$HERE/study.sbatch" "$DATASET" "$PLAN" "$OUT" "$@")
echo "report: job $REPORT (writes $OUT/report.md)"
