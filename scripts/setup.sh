#!/usr/bin/env bash
# Creates .venv with Python 3.12 or 3.13, installs requirements.txt into it and this repository as
# an editable package (pyproject.toml: `lct_flax` and `configs` importable from anywhere); does
# nothing when .venv already holds exactly these for that Python. Run it: `bash scripts/setup.sh`.
# With --plan it also installs requirements-plan.txt (the deviceless GPU/TPU compilers that
# `python -m lct_flax.plan` uses, about 1.3 GB) into .plan-packages, outside the venv.
# The Python is $PYTHON if set, else the first of python3.12, python3.13, python3 (and pyenv's
# installed 3.12/3.13) that is 3.12 or 3.13.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${VENV:-.venv}"

suitable() {
  "$1" -c 'import sys; sys.exit(sys.version_info[:2] not in ((3, 12), (3, 13)))' 2>/dev/null
}

find_python() {
  if [[ -n "${PYTHON:-}" ]]; then
    suitable "$PYTHON" && { echo "$PYTHON"; return; }
    echo "error: PYTHON=$PYTHON is not Python 3.12 or 3.13 (jax 0.12 needs 3.12+); unset PYTHON" \
         "or point it at a python3.12." >&2
    return 1
  fi
  local candidate
  for candidate in python3.12 python3.13 python3; do
    suitable "$candidate" && { echo "$candidate"; return; }
  done
  if command -v pyenv >/dev/null; then
    for candidate in "$(pyenv root)"/versions/3.12*/bin/python3 \
                     "$(pyenv root)"/versions/3.13*/bin/python3; do
      suitable "$candidate" && { echo "$candidate"; return; }
    done
  fi
  echo "error: no Python 3.12 or 3.13 found (jax 0.12 needs 3.12+); install one (e.g." \
       "'apt-get install python3.12-venv', 'pyenv install 3.12', or 'uv python install 3.12')" \
       "and run this again, or set PYTHON=/path/to/python3.12." >&2
  return 1
}

PYTHON="$(find_python)"
stamp="$VENV/.requirements.sha256"
version="$("$PYTHON" -c 'import platform; print(platform.python_version())')"
want="$version $(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  "$PYTHON" -m venv --clear "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -r requirements.txt
  # setuptools' build backend talks even under --quiet: its output is shown only if it fails.
  if ! log="$("$VENV/bin/python" -m pip install --quiet --no-deps --editable . 2>&1)"; then
    echo "$log" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi

if [[ "${1:-}" == "--plan" ]]; then
  plan_stamp=".plan-packages/.requirements.sha256"
  plan_want="$(sha256sum requirements-plan.txt | cut -d' ' -f1)"
  if [[ ! -f "$plan_stamp" || "$(cat "$plan_stamp")" != "$plan_want" ]]; then
    rm -rf .plan-packages
    "$VENV/bin/python" -m pip install --quiet --no-deps --target .plan-packages \
      -r requirements-plan.txt
    echo "$plan_want" > "$plan_stamp"
  fi
fi
