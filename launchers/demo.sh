#!/usr/bin/env bash
# The CPU twin of a full run: every stage of the method on a tiny LLaMA and the bundled sample data
# (seed -> segment -> backward -> augment -> m0 -> curate -> select -> m1 -> curate -> select -> m2
# -> answers -> judge -> report), 2 processes with DeepSpeed on CPU (gloo). About 5 minutes.
#
# usage: bash launchers/demo.sh [RUN_DIR]
#   RUN_DIR         where everything is written (default: runs/demo under the project root)
#   NPROC           processes for the distributed stages (default: demo.toml's nproc, 2)
#   extra options go to `humpback-ds run`, e.g. HUMPBACK_DEMO_ARGS="--force"
#
# Sets up the virtual environment first (tools/setup_env.sh). Re-running skips finished steps.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
run_dir=${1:-$root/runs/demo}
bash "$root/tools/setup_env.sh"
venv=${HUMPBACK_VENV:-$root/.venv}
# The demo is the CPU twin; on a GPU machine use launchers/launch.sh with a real model instead.
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$root"
start=$(date +%s)
read -ra extra <<<"${HUMPBACK_DEMO_ARGS:-}"
"$venv/bin/humpback-ds" run --config launchers/demo.toml --run_dir "$run_dir" "${extra[@]}"

"$venv/bin/python" - "$run_dir" <<'PY'
import json, sys
from pathlib import Path

run = Path(sys.argv[1])
judge = json.loads((run / "eval" / "m2_vs_m0.jsonl.manifest.json").read_text())["win_rate"]
print(f"\nwin rate of m2 vs m0 (local judge, both orders): {judge['win_rate']:.1f} "
      f"+- {judge['standard_error']:.1f} (wins {judge['n_wins']}, losses {judge['n_wins_base']}, "
      f"draws {judge['n_draws']})")
print(f"report:       {run / 'report' / 'index.html'}")
print(f"models:       {run / 'models'} (base, backward, m0, m1, m2)")
print(f"data:         {run / 'data'}  iterations: {run / 'iter1'}, {run / 'iter2'}")
PY
echo "demo finished in $(( $(date +%s) - start )) s"
