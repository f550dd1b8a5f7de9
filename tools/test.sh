#!/usr/bin/env bash
# Run the test suite: sets up the virtual environment first (tools/setup_env.sh).
#
# usage: bash tools/test.sh [pytest args...]
#   e.g. bash tools/test.sh -m "not slow"      # the fast unit tests only
#        bash tools/test.sh tests/test_seed.py  # one file
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/tools/setup_env.sh"
venv=${HUMPBACK_VENV:-$root/.venv}
cd "$root"
exec "$venv/bin/python" -m pytest "$@"
