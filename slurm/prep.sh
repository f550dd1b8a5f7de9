#!/usr/bin/env bash
# The preparation stages of a run on a Slurm allocation: seed data, segments, the backward model,
# self-augmentation (candidates) and the seed model m0. slurm/iter.sh takes over from m0.
#
# usage (from the project root):
#   mkdir -p logs && sbatch --nodes=2 slurm/prep.sh --config runs/7b.toml
#
#   --config / RUN_FILE    the run file (required)
#   --force                re-run steps whose settings changed
#   NPROC, LOG_DIR, HUMPBACK_STOP_FILE, HUMPBACK_REQUEUE: see slurm/iter.sh and slurm/common.sh
# To resume, resubmit: finished steps are skipped, a stopped one resumes.
#
#SBATCH --job-name=humpback-prep
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --output=logs/%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@60
#SBATCH --requeue
# #SBATCH --gpus-per-node=8
# #SBATCH --exclusive
set -euo pipefail

case "${1:-}" in
  -h | --help) sed -n '2,/^#SBATCH/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac
hb_name=prep.sh  # the prefix of this script's log lines (sbatch runs a copy named slurm_script)
# shellcheck source=slurm/common.sh
source "${HUMPBACK_ROOT:-${SLURM_SUBMIT_DIR:-.}}/slurm/common.sh"

hb_parse_options "$@"
hb_init
hb_use_srun
hb_run "$hb_python" -m humpback_ds run --config "$hb_run_file" --until m0 "${hb_extra[@]}"
