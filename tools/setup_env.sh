#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment and install humpback-ds into it.
#
# usage: bash tools/setup_env.sh
#   HUMPBACK_VENV   where the environment lives (default: .venv in the project root)
#   PYTHON          interpreter that creates it (default: python3; needs 3.11+)
#   TORCH_SPEC      torch requirement (default: torch==2.13.0, the CPU wheel, when no GPU is
#                   visible; plain "torch" when nvidia-smi finds one)
#
# Idempotent: a stamp records the hash of pyproject.toml and this script; a second run with both
# unchanged installs nothing.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${HUMPBACK_VENV:-$root/.venv}
python=${PYTHON:-python3}
if [ -z "${TORCH_SPEC:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    TORCH_SPEC="torch"
  else
    # A plain "torch" requirement can pull a multi-GB CUDA build; pin the CPU wheel.
    TORCH_SPEC="torch==2.13.0"
  fi
fi

stamp="$venv/.humpback-installed"
want=$(cat "$root/pyproject.toml" "$root/tools/setup_env.sh" | sha256sum | cut -c1-16)-$TORCH_SPEC
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  exit 0
fi

echo "setting up $venv (torch: $TORCH_SPEC) ..." >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
log="$venv/setup.log"
: > "$log"
pip_install() {
  if ! "$venv/bin/python" -m pip install -q "$@" >>"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "error: pip install $* failed (full log: $log)" >&2
    exit 1
  fi
}
pip_install --upgrade pip
pip_install "$TORCH_SPEC"
pip_install -e "${root}[dev]"
echo "$want" > "$stamp"
echo "environment ready: $venv" >&2
