#!/usr/bin/env bash
# Runs the MERIT demo on the built-in offline mixture.
# Usage: bash scripts/demo.sh [WORKDIR] [extra absl flags, e.g. --config=configs/demo.py:quick]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ensure_env
workdir="${1:-$root/workdirs/demo}"
shift || true
cd "$root"
exec "$venv/bin/python" -m merit_jax.main --config=configs/demo.py --workdir="$workdir" "$@"
