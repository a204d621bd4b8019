#!/usr/bin/env bash
# GPU check (under 5 minutes, no network): LoRA and full fine-tuning of a zoo model on CUDA in bf16, then
# generation, with the step and sampling times printed.
#
#   bash benchmarks/gpu_check.sh [MODEL] [DATASET]          (default: zoo-large-natural animals-farm)
#
# Needs torch with CUDA, diffusers, transformers, peft, pydantic, pandas, pyyaml and safetensors. On a machine
# whose image lacks some of them (the lent GPU machines have no diffusers or pydantic), download the wheels here
# into .whl/ (pip download --no-deps --only-binary=:all: --python-version 3.12 ... diffusers==0.39.0
# pydantic==2.14.4 pydantic-core==<its pin>) and carry .whl: this script installs them into /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-zoo-large-natural}
DATASET=${2:-animals-farm}
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 MC_BENCH_CACHE=${MC_BENCH_CACHE:-/tmp/mc_bench_cache}
$PY - <<'EOF'
import torch
assert torch.cuda.is_available(), "no CUDA device visible"
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| bf16:", torch.cuda.is_bf16_supported())
EOF
OUT_DIR=${OUT:-/tmp/gpu_check}
for METHOD in lora full; do
  RUN=$OUT_DIR/run-$METHOD
  rm -rf "$RUN"
  $PY -m mc_bench finetune --model "$MODEL" --dataset "$DATASET" --out "$RUN" \
      --set train.method=$METHOD --set train.device=cuda --set train.mixed_precision=bf16 \
      --set train.steps=300 --set train.batch_size=64 --set train.checkpoint_every=100 \
      --set generate.n_samples=256 --set generate.num_inference_steps=20 --set generate.batch_size=128 >/dev/null
  $PY - "$RUN" "$METHOD" <<'EOF'
import json, sys
run, method = sys.argv[1], sys.argv[2]
t = json.load(open(f"{run}/timings.json"))
s = json.load(open(f"{run}/status.json"))
print(f"{method:5s} status={s['status']} final_loss={s.get('final_loss', float('nan')):.4f} "
      f"step={1000 / t['steps_per_second']:.1f} ms ({t['steps_per_second']:.1f} steps/s, batch 64, bf16) "
      f"train_peak={t['train_peak_memory_mb']:.0f} MiB | sampling {t['images_per_second']:.1f} images/s "
      f"(20 steps, batch 128)")
EOF
done
