#!/usr/bin/env bash
# One Humpback iteration T on a Slurm allocation: m{T-1} rates the candidate pool (curate), the
# best are kept (select), and m{T} is trained from the BASE model on seed + selected, across all
# nodes of the job. Checkpoints pass through the run directory (humpback_ds/layout.py).
#
# usage (from the project root):
#   mkdir -p logs && sbatch --nodes=2 slurm/iter.sh --config runs/7b.toml --iteration 1
#   RUN_FILE=runs/7b.toml ITERATION=2 sbatch slurm/iter.sh
#
#   --config / RUN_FILE    the run file (required)
#   --iteration / ITERATION  T >= 1 (required); m{T-1} must exist (slurm/prep.sh makes m0)
#   --force                re-run steps whose settings changed (see `humpback-ds iterate --help`)
#   NPROC                  processes per node (default: launch.sh's, the node's GPU count; 2 on CPU)
#   LOG_DIR, HUMPBACK_STOP_FILE, HUMPBACK_REQUEUE: see slurm/common.sh
#
# Pre-emption: USR1 60 s before the time limit -> the trainer checkpoints and exits, the job is
# requeued and resumes (training from its checkpoint, curation from its part files). To resume by
# hand, resubmit the same command: finished steps are skipped.
#
#SBATCH --job-name=humpback-iter
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --output=logs/%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@60
#SBATCH --requeue
# Cluster-specific lines (GPU nodes): uncomment and adapt.
# #SBATCH --gpus-per-node=8
# #SBATCH --exclusive
# #SBATCH --time=24:00:00
set -euo pipefail

case "${1:-}" in
  -h | --help) sed -n '2,/^#SBATCH/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac
hb_name=iter.sh  # the prefix of this script's log lines (sbatch runs a copy named slurm_script)
# shellcheck source=slurm/common.sh
source "${HUMPBACK_ROOT:-${SLURM_SUBMIT_DIR:-.}}/slurm/common.sh"

hb_parse_options "$@"
[ -n "$hb_iteration" ] || hb_die "no iteration: --iteration T (or ITERATION)"
hb_init
hb_use_srun
echo "iter.sh: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST:" \
  "iteration $hb_iteration of $hb_run_file" >&2
hb_run "$hb_python" -m humpback_ds iterate --config "$hb_run_file" --iteration "$hb_iteration" \
  "${hb_extra[@]}"
