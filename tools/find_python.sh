#!/usr/bin/env bash
# Print the path of a working Python 3.12 interpreter (pyenv 3.12.1 on the dev image), or fail clearly.
find_py312() {
  local c
  for c in "${PYTHON312:-}" "$(PYENV_VERSION=3.12.1 pyenv which python3.12 2>/dev/null)" \
           "${PYENV_ROOT:-$HOME/.pyenv}/versions/3.12.1/bin/python3.12" "$(command -v python3.12 2>/dev/null)" \
           "$(command -v python3 2>/dev/null)"; do
    [ -n "$c" ] && [ -x "$c" ] && "$c" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 12))' 2>/dev/null \
      && { echo "$c"; return 0; }
  done
  echo "error: no Python >= 3.12 found. Install one (e.g. 'pyenv install 3.12.1') or set PYTHON312=/path/to/python3.12" >&2
  return 1
}
find_py312
