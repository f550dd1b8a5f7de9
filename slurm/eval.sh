#!/usr/bin/env bash
# Evaluation of a finished run on a Slurm allocation: answers of m0 and the last model for the
# evaluation prompts, the pairwise judgement (win rate) and the report.
#
# usage (from the project root):
#   mkdir -p logs && sbatch --nodes=1 slurm/eval.sh --config runs/7b.toml
#
#   --config / RUN_FILE    the run file (required; its [run] eval_prompts must be set)
#   NPROC, LOG_DIR, HUMPBACK_STOP_FILE, HUMPBACK_REQUEUE: see slurm/iter.sh and slurm/common.sh
#
#SBATCH --job-name=humpback-eval
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --output=logs/%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@60
#SBATCH --requeue
# #SBATCH --gpus-per-node=8
set -euo pipefail

case "${1:-}" in
  -h | --help) sed -n '2,/^#SBATCH/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac
hb_name=eval.sh  # the prefix of this script's log lines (sbatch runs a copy named slurm_script)
# shellcheck source=slurm/common.sh
source "${HUMPBACK_ROOT:-${SLURM_SUBMIT_DIR:-.}}/slurm/common.sh"

hb_parse_options "$@"
hb_init
hb_use_srun
hb_run "$hb_python" -m humpback_ds run --config "$hb_run_file" --from answer_m0 "${hb_extra[@]}"
