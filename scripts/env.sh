# Sourced by demo.sh and test.sh. `ensure_env [extra]` creates the virtual environment with the
# pinned dependencies (and the extra, e.g. "test") and reinstalls only when setup.py changes.
# MERIT_VENV overrides its location (default: .venv in the repository).

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MERIT_VENV:-$root/.venv}"

ensure_env() {
  local extras="${1:-}"
  local fingerprint stamp test_stamp
  fingerprint="$(python3 -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest()[:16])' "$root/setup.py")"
  stamp="$venv/.installed-$fingerprint-${extras:-base}"
  test_stamp="$venv/.installed-$fingerprint-test"
  if [ -f "$stamp" ] || [ -f "$test_stamp" ]; then
    return
  fi
  echo "Installing merit_jax${extras:+ with [$extras]} into $venv (first run only)..." >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e "$root${extras:+[$extras]}"
  touch "$stamp"
}
