#!/usr/bin/env bash
# Installs mc_bench into .venv/ at the repository root, from the project's own files only:
#   requirements.lock (exact versions), the package itself (editable), and the animal-mnist wheel,
#   which is downloaded but not installed (its metadata pulls tensorflow; the world reads the wheel's data).
# Idempotent: a second run only checks. Any failing step stops the script with its output.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

quiet() {  # run a command, show its output only if it fails
  local out
  if ! out=$("$@" 2>&1); then
    printf '%s\n' "$out" | grep -v "^WARNING: Location" >&2
    echo "setup.sh: failed: $*" >&2
    exit 1
  fi
}

[ -x .venv/bin/python ] || quiet "$PY" -m venv .venv
quiet .venv/bin/python -m pip install -q -r requirements.lock
quiet .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
if [ ! -f .cache/wheels/animal_mnist-0.4-py3-none-any.whl ]; then
  quiet .venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d .cache/wheels animal-mnist==0.4
fi
.venv/bin/python -m pip check
