# Sourced by scripts/start and scripts/test: make .venv with Python >= 3.11 and install into it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${BLUEPLANE_VENV:-.venv}"

find_python() {
  for py in python3.13 python3.12 python3.11 python3; do
    if command -v "$py" >/dev/null 2>&1 &&
       "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  echo "Blueplane needs Python 3.11 or newer; none found on PATH" >&2
  return 1
}

ensure_venv() {  # $1: the pip requirement to install, e.g. "." or ".[test]"
  local want="$1" stamp
  if [ ! -x "$VENV/bin/python" ]; then
    "$(find_python)" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
  fi
  # Reinstall only when pyproject.toml changed or a different extra is wanted.
  stamp="$VENV/.blueplane-installed"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! grep -qxF "$want" "$stamp"; then
    "$VENV/bin/python" -m pip install --quiet -e "$want"
    echo "$want" > "$stamp"
  fi
}
