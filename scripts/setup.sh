#!/usr/bin/env bash
# Installs mc_bench into .venv/ at the repository root, from the project's own files only:
#   requirements.lock (exact versions), the package itself (editable), and the animal-mnist wheel,
#   which is downloaded but not installed (its metadata pulls tensorflow; the world reads the wheel's data).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade "pip>=23" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -r requirements.lock 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true
mkdir -p .cache/wheels
if [ ! -f .cache/wheels/animal_mnist-0.4-py3-none-any.whl ]; then
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d .cache/wheels animal-mnist==0.4 \
    2>&1 | grep -v "^WARNING: Location" || true
fi
.venv/bin/python -m pip check
