#!/usr/bin/env bash
# The CPU twin of a full run: every stage on a tiny LLaMA and the bundled sample data.
#
# usage: bash launchers/demo.sh [RUN_DIR]
#   RUN_DIR         where everything is written (default: runs/demo)
#   NPROC           processes for the distributed stages (default: 2, CPU gloo)
#
# Sets up the virtual environment first (tools/setup_env.sh). Re-running reuses finished artifacts.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
run_dir=${1:-$root/runs/demo}
bash "$root/tools/setup_env.sh"
export PATH="${HUMPBACK_VENV:-$root/.venv}/bin:$PATH"
# No GPU is assumed for the demo; a GPU user runs launchers/launch.sh with the real model.
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
sample="$root/humpback_ds/sample_data"
mkdir -p "$run_dir/data"
start=$(date +%s)

humpback-ds tiny-model --output_dir "$run_dir/models/base"
humpback-ds seed --input "$sample/oasst/messages.jsonl" --output "$run_dir/data/seed.jsonl"
humpback-ds segment --input "$sample/web" --output "$run_dir/data/segments.jsonl"

echo "demo finished in $(( $(date +%s) - start )) s; artifacts under $run_dir"
