#!/usr/bin/env bash
# Runs the test suite. Extra arguments go to pytest (e.g. -m "not slow", -k merge).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ensure_env test
cd "$root"
exec "$venv/bin/python" -m pytest "$@"
