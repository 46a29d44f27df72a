# Sourced by demo.sh and test.sh: creates the virtual environment with the pinned dependencies.
# It reinstalls only when setup.py changes. MERIT_VENV overrides the location (default: .venv).
# Usage: source scripts/env.sh [test]

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MERIT_VENV:-$root/.venv}"
extras="${1:-}"
fingerprint="$(python3 -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest()[:16])' "$root/setup.py")"
stamp="$venv/.installed-$fingerprint-${extras:-base}"
test_stamp="$venv/.installed-$fingerprint-test"

if [ ! -f "$stamp" ] && [ ! -f "$test_stamp" ]; then
  echo "Installing merit_jax${extras:+ with [$extras]} into $venv (first run only)..." >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e "$root${extras:+[$extras]}"
  touch "$stamp"
fi
