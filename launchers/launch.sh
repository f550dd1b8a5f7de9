#!/usr/bin/env bash
# Start one humpback-ds stage on this node under the `deepspeed` launcher.
#
# usage: bash launchers/launch.sh [options] [--] <stage> [stage args...]
#   single node, NPROC processes:
#     bash launchers/launch.sh train --config runs/tiny.toml --task=seed
#   multi-node: run it once on every node (slurm/stage.sh does this with srun), e.g. node 1 of 2:
#     bash launchers/launch.sh --no_ssh --node_rank 1 --master_addr node-a --nnodes 2 train ...
#
# options (each also read from the environment variable in capitals; the option wins):
#   --nproc N         processes on this node (NPROC; default: the GPUs `nvidia-smi -L` lists, or
#                     2 on CPU, i.e. without a GPU or with DS_ACCELERATOR=cpu: the gloo tests' size)
#   --nnodes N        nodes in the job (NNODES; default 1)
#   --node_rank R     this node's index, 0..N-1 (NODE_RANK; default 0)
#   --master_addr A   address of node 0, where rank 0 listens (MASTER_ADDR; default 127.0.0.1)
#   --master_port P   its port (MASTER_PORT; default 29500, DeepSpeed's and torchrun's default)
#   --no_ssh          accepted for familiarity; always on: every node starts its own processes,
#                     the launcher never uses ssh/pdsh
#   HUMPBACK_PYTHON   interpreter (default: the project's .venv/bin/python)
#   HUMPBACK_MODULE   module run as `python -m` (default: humpback_ds, whose first argument is the
#                     stage; tests point it at a probe module)
#
# Every node must be given the same --nnodes, --nproc, --master_addr and --master_port. Global rank
# = node_rank * nproc + local rank. On GPU nodes the processes use GPUs 0..NPROC-1: allocate whole
# nodes. DeepSpeed reads no SLURM_* variables (DEEPSPEED_NOTES.md, "Launching").
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

die() {
  echo "launch.sh: error: $*" >&2
  echo "run 'bash launchers/launch.sh --help' for the options" >&2
  exit 2
}

gpu_count() {
  if [ "${DS_ACCELERATOR:-}" != cpu ] && command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
  else
    echo 0
  fi
}

gpus=$(gpu_count)
if [ "$gpus" -eq 0 ]; then
  export DS_ACCELERATOR=cpu  # DeepSpeed's CPU accelerator: gloo process group
fi
nproc=${NPROC:-$([ "$gpus" -gt 0 ] && echo "$gpus" || echo 2)}
nnodes=${NNODES:-1}
node_rank=${NODE_RANK:-0}
master_addr=${MASTER_ADDR:-127.0.0.1}
master_port=${MASTER_PORT:-29500}
python=${HUMPBACK_PYTHON:-$root/.venv/bin/python}
module=${HUMPBACK_MODULE:-humpback_ds}

while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --no_ssh) shift ;;
    --nproc | --nnodes | --node_rank | --master_addr | --master_port)
      [ $# -ge 2 ] || die "$1 needs a value"
      declare "${1#--}=$2"
      shift 2 ;;
    --nproc=* | --nnodes=* | --node_rank=* | --master_addr=* | --master_port=*)
      opt=${1%%=*}
      declare "${opt#--}=${1#*=}"
      shift ;;
    --) shift; break ;;
    -*) die "unknown option '$1'" ;;
    *) break ;;
  esac
done

[ $# -ge 1 ] || die "no stage given (e.g. 'train', 'augment'; see 'humpback-ds --help')"
for n in nproc nnodes node_rank master_port; do
  [[ ${!n} =~ ^[0-9]+$ ]] || die "--$n must be a whole number, got '${!n}'"
done
[ "$nproc" -ge 1 ] || die "--nproc must be at least 1"
[ "$node_rank" -lt "$nnodes" ] || die "--node_rank $node_rank is not below --nnodes $nnodes"
command -v "$python" >/dev/null ||
  die "no interpreter $python: run tools/setup_env.sh or set HUMPBACK_PYTHON"

# Cluster-specific NCCL settings (GPU nodes): uncomment and adapt to your fabric.
# export NCCL_SOCKET_IFNAME=ib0          # the interface between nodes
# export NCCL_IB_HCA=mlx5                # InfiniBand adapters to use
# export NCCL_DEBUG=WARN                 # INFO when debugging a hang
# export NCCL_ASYNC_ERROR_HANDLING=1     # a lost rank fails the job instead of hanging

# The launcher needs one hostfile line per node to know the world; under --no_ssh the names are
# labels only (never contacted), every node runs its own launcher for its own node_rank.
hostfile=$(mktemp "${TMPDIR:-/tmp}/humpback-hostfile.XXXXXX")
trap 'rm -f "$hostfile"' EXIT
for ((i = 0; i < nnodes; i++)); do
  echo "node$i slots=$nproc" >>"$hostfile"
done

# The module may live in the project tree (tests/dist_probe.py) rather than the installed package.
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
# Quieter logs: every rank would print transformers' weight-loading bars (the stages show their own
# progress on rank 0), and DeepSpeed 0.19 calls torch.distributed functions that torch 2.13 marks
# deprecated, a FutureWarning per rank and call. Set either variable to see them again.
export HF_HUB_DISABLE_PROGRESS_BARS=${HF_HUB_DISABLE_PROGRESS_BARS:-1}
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::FutureWarning}
echo "launch.sh: node $node_rank/$nnodes, $nproc processes, master $master_addr:$master_port," \
  "python -m $module $*" >&2
"$python" -m deepspeed.launcher.runner --hostfile "$hostfile" --no_ssh \
  --node_rank "$node_rank" --master_addr "$master_addr" --master_port "$master_port" \
  --no_local_rank --module "$module" "$@"
