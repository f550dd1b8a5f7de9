#!/usr/bin/env bash
# Submit a whole run as a chain of Slurm jobs, each starting when the previous one succeeded
# (--dependency=afterok): prep (seed ... m0) -> iter 1 -> ... -> iter T -> eval (if configured).
# Each job passes its checkpoint to the next through the run directory.
#
# usage (from the project root, on a login node):
#   bash slurm/pipeline.sh --config runs/7b.toml [--nodes 2] [--iterations T] [-- extra sbatch args]
#
#   --config / RUN_FILE     the run file (required)
#   --nodes / NODES         nodes per job (default 2: the 7B-33B presets' size; see README)
#   --iterations / ITERATIONS  T (default: the run file's [run] iterations)
#   Anything after -- is passed to every sbatch call (e.g. --partition=gpu --time=24:00:00).
# Prints the job ids, one line per job. A failed job leaves its dependents pending with
# DependencyNeverSatisfied: fix it, then re-run this script (finished steps are skipped).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() {
  echo "pipeline.sh: error: $*" >&2
  exit 2
}
run_file=${RUN_FILE:-}
nodes=${NODES:-2}
iterations=${ITERATIONS:-}
sbatch_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --config) run_file=$2; shift 2 ;;
    --config=*) run_file=${1#*=}; shift ;;
    --nodes) nodes=$2; shift 2 ;;
    --nodes=*) nodes=${1#*=}; shift ;;
    --iterations) iterations=$2; shift 2 ;;
    --iterations=*) iterations=${1#*=}; shift ;;
    --) shift; sbatch_args=("$@"); break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[ -n "$run_file" ] || die "no run file: --config RUN.toml (or RUN_FILE)"
[ -f "$run_file" ] || die "run file $run_file does not exist"
python=${HUMPBACK_PYTHON:-$root/.venv/bin/python}
read_run() {  # a [run] field of the run file
  "$python" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["run"].get(sys.argv[2], ""))' "$run_file" "$1"
}
[ -n "$iterations" ] || iterations=$(read_run iterations)
[ -n "$iterations" ] || iterations=2  # RunConfig's default (paper: M2)
eval_prompts=$(read_run eval_prompts)

cd "$root"
mkdir -p logs
submit() {  # sbatch [dependency] script args... -> job id
  sbatch --parsable --nodes="$nodes" "${sbatch_args[@]}" "$@" | cut -d';' -f1
}
job=$(submit slurm/prep.sh --config "$run_file")
echo "prep $job"
for t in $(seq 1 "$iterations"); do
  job=$(submit --dependency="afterok:$job" slurm/iter.sh --config "$run_file" --iteration "$t")
  echo "iter$t $job"
done
if [ -n "$eval_prompts" ]; then
  job=$(submit --dependency="afterok:$job" slurm/eval.sh --config "$run_file")
  echo "eval $job"
fi
