#!/usr/bin/env bash
# Shared by the slurm/*.sh batch scripts (sourced, not submitted): finding the project, the stop
# file for pre-emption, and running a command that a USR1 asks to checkpoint and stop.
#
#   LOG_DIR             per-job logs and stop files (default: logs under the submit directory)
#   HUMPBACK_STOP_FILE  created on USR1 (default: $LOG_DIR/stop-<job id>)
#   HUMPBACK_REQUEUE    1 (default): after a requested stop, requeue the job so it resumes by itself
#
# Pre-emption: `#SBATCH --signal=B:USR1@N` makes Slurm signal the batch shell N seconds before the
# time limit (or `scancel --signal=USR1 --batch JOB`). The trap creates the stop file; the trainer
# polls it, checkpoints and exits with 75 (EX_TEMPFAIL); generation stages resume from their part
# files whatever stopped them. Then the job is requeued and picks up where it stopped.

hb_die() {
  echo "${hb_name:-${0##*/}}: error: $*" >&2
  exit 2
}

# The options of prep.sh / iter.sh / eval.sh. Sets hb_run_file, hb_iteration, hb_extra (--force).
# shellcheck disable=SC2034  # the globals are read by the scripts that source this file
hb_parse_options() {
  hb_run_file=${RUN_FILE:-}
  hb_iteration=${ITERATION:-}
  hb_extra=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --config) hb_run_file=$2; shift 2 ;;
      --config=*) hb_run_file=${1#*=}; shift ;;
      --iteration) hb_iteration=$2; shift 2 ;;
      --iteration=*) hb_iteration=${1#*=}; shift ;;
      --force) hb_extra+=(--force); shift ;;
      *) hb_die "unknown option $1 (see --help)" ;;
    esac
  done
  [ -n "$hb_run_file" ] || hb_die "no run file: --config RUN.toml (or RUN_FILE)"
}

# Distributed steps of `humpback-ds run|iterate` start one srun task per node (pipeline.py); the
# rendezvous port is derived from the job id so that two jobs sharing a node do not collide.
hb_use_srun() {
  export HUMPBACK_LAUNCHER=srun
  export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
}

# Sets: hb_root, hb_python, hb_log_dir, hb_stop_file (exported as HUMPBACK_STOP_FILE).
# shellcheck disable=SC2034  # the globals are read by the scripts that source this file
hb_init() {
  [ -n "${SLURM_JOB_ID:-}" ] || hb_die "submit with sbatch (see the usage block at the top)"
  # sbatch runs a copy of the script from its spool directory: find the project via the submit dir.
  hb_root=${HUMPBACK_ROOT:-$SLURM_SUBMIT_DIR}
  [ -f "$hb_root/launchers/launch.sh" ] || hb_die "no $hb_root/launchers: submit from the project root or set HUMPBACK_ROOT"
  hb_python=${HUMPBACK_PYTHON:-$hb_root/.venv/bin/python}
  hb_log_dir=${LOG_DIR:-$hb_root/logs}
  mkdir -p "$hb_log_dir"
  hb_stop_file=${HUMPBACK_STOP_FILE:-$hb_log_dir/stop-$SLURM_JOB_ID}
  [[ $hb_stop_file = /* ]] || hb_stop_file=$PWD/$hb_stop_file  # the same file whatever a rank's cwd
  export HUMPBACK_STOP_FILE=$hb_stop_file
  rm -f "$hb_stop_file"  # a requeued run must not stop at once
  hb_stopping=0
  trap hb_on_usr1 USR1
}

# shellcheck disable=SC2317  # reached through the trap
hb_on_usr1() {
  echo "${hb_name:-${0##*/}}: USR1 (time limit or pre-emption near): asking the stage to checkpoint" >&2
  hb_stopping=1
  touch "$hb_stop_file"
}

# Run "$@" in the background, wait for it through USR1 traps, requeue after a requested stop.
hb_run() {
  "$@" &
  local pid=$! rc
  # `wait` returns early (status > 128) when the trap runs; keep waiting while the command lives.
  while :; do
    rc=0
    wait "$pid" || rc=$?
    if [ "$rc" -gt 128 ] && kill -0 "$pid" 2>/dev/null; then
      continue
    fi
    break
  done
  echo "${hb_name:-${0##*/}}: exited with status $rc" >&2
  if [ "$hb_stopping" -eq 1 ] && { [ "$rc" -eq 0 ] || [ "$rc" -eq 75 ]; } && [ "${HUMPBACK_REQUEUE:-1}" = 1 ]; then
    echo "${hb_name:-${0##*/}}: stopped for pre-emption; requeueing job $SLURM_JOB_ID to resume" >&2
    scontrol requeue "$SLURM_JOB_ID"
    return 0
  fi
  return "$rc"
}
