#!/usr/bin/env bash
# The offline GPU check (benchmarks/gpu_check.py: recipes in bf16/fp16, determinism, resume, LoRA alpha, seeded
# generation, FID features on the device; last line GPU_CHECK OK or GPU_CHECK FAIL), with no network.
#
#   bash benchmarks/gpu_check.sh [--small] [--out DIR]
#
# Needs torch with CUDA and the kit's dependencies. On a machine whose image lacks some of them (the lent GPU
# machines have no diffusers or pydantic), download the wheels here into .whl/ (pip download --no-deps
# --only-binary=:all: --python-version 3.12 ... diffusers==0.39.0 pydantic==2.14.4 pydantic-core==<its pin>) and
# carry .whl: this script installs them into /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 MC_BENCH_CACHE=${MC_BENCH_CACHE:-/tmp/mc_bench_cache}
exec $PY benchmarks/gpu_check.py "$@"
