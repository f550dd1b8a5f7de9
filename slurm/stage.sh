#!/usr/bin/env bash
# Run one humpback-ds stage across all nodes of a Slurm job: one srun task per node, each running
# launchers/launch.sh for its node (--no_ssh --node_rank=$SLURM_NODEID), rank 0 on the first node.
#
# usage (from the project root; the job finds launchers/ through the submit directory):
#   mkdir -p logs && sbatch --nodes=2 slurm/stage.sh train --config runs/7b.toml --task=seed
#   HUMPBACK_STAGE=augment HUMPBACK_ARGS="--config runs/7b.toml" sbatch slurm/stage.sh
#   chain stages: sbatch --dependency=afterok:<jobid> slurm/stage.sh curate ...
#
#   The stage and its arguments come after the script name, or from HUMPBACK_STAGE/HUMPBACK_ARGS.
#   LOG_DIR             where the per-node logs and the stop file go (default: logs, which the
#                       #SBATCH --output line below uses too); must be visible from every node
#   NPROC               processes per node (default: launch.sh's, the node's GPU count; 2 on CPU)
#   MASTER_PORT         rendezvous port on the first node (default 20000 + job id % 20000, so two
#                       jobs sharing a node do not collide)
#   HUMPBACK_STOP_FILE  the file created on pre-emption (default: $LOG_DIR/stop-<job id>)
#   HUMPBACK_REQUEUE    1 (default): after a stop, requeue this job so it resumes by itself
#
# Pre-emption: Slurm sends USR1 to this script 60 s before the time limit (--signal=B:USR1@60).
# The trap creates the stop file; the trainer (`train --stop_file`, passed here) checkpoints and
# exits; this script waits for it, then requeues the job. To resume, resubmit (or let the requeue
# run): every stage resumes from what it already wrote (checkpoints, part files).
#
#SBATCH --job-name=humpback
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
# #SBATCH --partition=<partition>
set -euo pipefail

case "${1:-}" in
  -h | --help) sed -n '2,/^#SBATCH/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac
hb_name=stage.sh  # the prefix of this script's log lines (sbatch runs a copy named slurm_script)
# shellcheck source=slurm/common.sh
source "${HUMPBACK_ROOT:-${SLURM_SUBMIT_DIR:-.}}/slurm/common.sh"
hb_init
launch=$hb_root/launchers/launch.sh
log_dir=$hb_log_dir

if [ $# -eq 0 ]; then
  [ -n "${HUMPBACK_STAGE:-}" ] || hb_die "no stage: 'sbatch slurm/stage.sh <stage> [args]'"
  read -ra extra <<<"${HUMPBACK_ARGS:-}"
  set -- "$HUMPBACK_STAGE" "${extra[@]}"
fi
if [ "${HUMPBACK_MODULE:-humpback_ds}" = humpback_ds ] && [ "$1" = train ]; then
  set -- "$@" "--stop_file=$hb_stop_file"
fi

master_addr=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -1)
master_port=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
nnodes=$SLURM_JOB_NUM_NODES
echo "stage.sh: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST:" \
  "$*; master $master_addr:$master_port; stop file $hb_stop_file" >&2

# SLURM_NODEID differs per task, so it is read inside each task, not here.
# shellcheck disable=SC2016
hb_run srun --nodes="$nnodes" --ntasks-per-node=1 --kill-on-bad-exit=1 \
  --output="$log_dir/%x-%j-node%n.out" --open-mode=append \
  bash -c 'exec bash "$0" --no_ssh --node_rank "$SLURM_NODEID" --nnodes "$1" \
    --master_addr "$2" --master_port "$3" -- "${@:4}"' \
  "$launch" "$nnodes" "$master_addr" "$master_port" "$@"
