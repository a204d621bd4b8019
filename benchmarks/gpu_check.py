"""The offline GPU check: one short script for the day a GPU is at hand — no network, the committed world only.

    python benchmarks/gpu_check.py                  # on CUDA: the full check (about 5 minutes on one GPU)
    python benchmarks/gpu_check.py --small          # fewer steps and images (the test suite runs it on the CPU)
    python benchmarks/gpu_check.py --out DIR        # keep the run folders (default: a temporary folder)

Each check prints one line, ``ok`` or ``FAIL``, with its figures:

* **recipes** — LoRA bf16 on an epsilon model, full fine-tuning bf16 on a v-prediction model, LoRA fp16 with
  min-SNR weighting (gamma 5) on a v-prediction model: each trains, samples, and its weights reload; steps/s,
  images/s and the peak memory of training and of sampling. On the CPU mixed precision is refused by the kit's
  config, so the three run in float32 and the line says so.
* **determinism** — the same LoRA config twice gives bit-identical adapter weights.
* **resume** — a run stopped after a checkpoint and resumed ends with the weights of the uninterrupted run.
* **lora alpha** — an adapter with lora_alpha 16 at rank 4 reloads at scale alpha / rank (the UNet's output as
  trained).
* **seeded generation** — the same run sampled twice gives identical images.
* **fid features** — tiny-CLIP features of the same images on the device and on the CPU agree (TF32 allowed).
* **families** — LoRA bf16 on the zoo's SDXL model (two text encoders, size/crop ids) and on its SD3 model (an
  MMDiT transformer trained with rectified flow): each trains, samples and reloads its adapter as trained.

The last line is ``GPU_CHECK OK`` or ``GPU_CHECK FAIL (n): <names>``; the exit code is 0 or 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing reaches for the network

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mc_bench.train import finetune as ft  # noqa: E402
from mc_bench.train.families import denoiser_output  # noqa: E402
from mc_bench.train import runs  # noqa: E402
from mc_bench.train.generate import generate, read_samples  # noqa: E402

DATASET = "animals-farm"
WEIGHT_TOLERANCE = 1e-6  # max |difference| of two same-config runs' adapter weights (bit-identical on the CPU)
PIXEL_TOLERANCE = 1  # max difference of two seeded samplings, in 8-bit pixel values
FAILED: list[str] = []


def report(name: str, ok: bool | None, figures: str) -> None:
    word = "skipped" if ok is None else ("ok" if ok else "FAIL")
    print(f"{word:7s} {name}: {figures}", flush=True)
    if ok is False:
        FAILED.append(name)


def make_config(out: Path, name: str, model: str, small: bool, **train):
    steps = 6 if small else 300
    settings = {"steps": steps, "batch_size": 8 if small else 64, "checkpoint_every": 0,
                "device": "cuda" if torch.cuda.is_available() else "cpu", **train}
    generate_settings = {"n_samples": 8 if small else 256, "num_inference_steps": 3 if small else 20,
                         "batch_size": 8 if small else 128}
    return runs.build_config(model, DATASET, out / name, overrides={"train": settings, "generate": generate_settings})


def adapter(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / runs.LORA_DIR / "pytorch_lora_weights.safetensors")


def check_recipes(out: Path, small: bool, cuda: bool) -> None:
    recipes = [("lora bf16, epsilon", "zoo-all-small", {"method": "lora", "mixed_precision": "bf16"}),
               ("full bf16, v-prediction", "zoo-large-natural", {"method": "full", "mixed_precision": "bf16",
                                                                  "learning_rate": 5e-5}),
               ("lora fp16 + min-SNR 5, v-prediction", "zoo-digits-glyphs",
                {"method": "lora", "mixed_precision": "fp16", "snr_gamma": 5.0}),
               ("lora bf16, sdxl family", "zoo-xl-natural", {"method": "lora", "mixed_precision": "bf16"}),
               ("lora bf16, sd3 family (rectified flow)", "zoo-sd3-symbols", {"method": "lora",
                                                                               "mixed_precision": "bf16"})]
    for name, model, train in recipes:
        if not cuda:
            train = {**train, "mixed_precision": "no"}
        config = make_config(out, model + "-" + name.split(",")[0].replace(" ", "-"), model, small, **train)
        try:
            record = ft.finetune(config)
            timings = json.loads((Path(config.run_dir) / "timings.json").read_text())
            pipe = runs.load_finetuned_pipeline(Path(config.run_dir), runs.pick_device(config.train.device))
            denoiser = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
            finite = bool(torch.isfinite(denoiser_output(denoiser, pipe.device)).all())
        except Exception as err:  # a check reports, it does not stop the others
            report(f"recipe {name}", False, f"{type(err).__name__}: {err}")
            continue
        precision = train["mixed_precision"] if cuda else "float32 (CPU: mixed precision refused)"
        report(f"recipe {name}", record["status"] == "done" and finite,
               f"{model}, {precision}; {timings['steps_per_second']:.1f} steps/s (batch {config.train.batch_size}), "
               f"{timings['images_per_second']:.1f} images/s ({config.generate.num_inference_steps} steps, "
               f"{timings.get('sample_dtype', '?')}); peak MiB train {timings['train_peak_memory_mb']:.0f}, "
               f"sample {timings['sample_peak_memory_mb']:.0f}; final loss {record.get('final_loss', float('nan')):.4f}")


def check_determinism_and_resume(out: Path, small: bool) -> None:
    every = 3 if small else 100
    common = {"method": "lora", "checkpoint_every": every, "lr_scheduler": "cosine"}
    for name in ("same-a", "same-b"):
        ft.finetune(make_config(out, name, "zoo-all-small", small, **common), sample=False)
    a, b = adapter(out / "same-a"), adapter(out / "same-b")
    gap = max(float((a[k] - b[k]).abs().max()) for k in a) if a.keys() == b.keys() else float("inf")
    # mc_bench.train.finetune.gpu_determinism makes CUDA runs repeat; an op without a deterministic kernel may
    # still differ in the last bits: the stated tolerance
    report("determinism", gap <= WEIGHT_TOLERANCE, f"two runs of the same config: {len(a)} adapter tensors, "
                                                   f"max |a - b| = {gap:.1e} (tolerance {WEIGHT_TOLERANCE:.0e})")
    resumed = make_config(out, "resumed", "zoo-all-small", small, **common)
    ft.finetune(resumed, stop_after=every, sample=False)  # stops right after its first checkpoint
    record = ft.finetune(resumed, sample=False)
    c = adapter(out / "resumed")
    diff = max(float((a[k] - c[k]).abs().max()) for k in a)
    report("resume", record["status"] == "done" and diff == 0.0,
           f"stopped at step {every}, resumed to {resumed.train.steps}: max |w - w_uninterrupted| = {diff:.2e}")


def check_lora_alpha(out: Path, small: bool) -> None:
    config = make_config(out, "alpha", "zoo-all-small", small, method="lora", lora_rank=4, lora_alpha=16).resolved()
    device = runs.pick_device(config.train.device)
    from mc_bench.config import load_manifests
    from mc_bench.world.data import load_dataset_split

    images, captions = load_dataset_split(load_manifests(), DATASET, "train")
    trainer = ft.Trainer(config, runs.load_pipeline(config), images, captions, device)
    for _ in range(3):
        trainer.train_step()
    trainer.unet.eval()
    trained = denoiser_output(trainer.unet, device)
    ft.families.save_lora(trainer.unet, ft.families.family_of(trainer.pipe), out / "alpha" / runs.LORA_DIR)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # "no LoRA keys for the text encoder": only the UNet is adapted
    pipe = runs.load_pipeline(config).to(device)
    pipe.load_lora_weights(out / "alpha" / runs.LORA_DIR, weight_name="pytorch_lora_weights.safetensors")
    diff = float((denoiser_output(pipe.unet, device) - trained).abs().max())
    report("lora alpha != rank", diff < 1e-3, f"rank 4, alpha 16: max |reloaded - trained| = {diff:.2e}")


def check_seeded_generation(out: Path, small: bool) -> None:
    run = out / "same-a"
    config = runs.load_run_config(run)
    pipe = runs.load_finetuned_pipeline(run, runs.pick_device(config.train.device))
    prompts = ["a photo of a cow"] * (4 if small else 32)
    first = generate(pipe, prompts, out / "gen-1", config.generate)
    generate(pipe, prompts, out / "gen-2", config.generate)
    a, _ = read_samples(out / "gen-1")
    b, _ = read_samples(out / "gen-2")
    gap = int(np.abs(a.astype(int) - b.astype(int)).max())
    report("seeded generation", gap <= PIXEL_TOLERANCE, f"{len(first)} images sampled twice: max pixel difference "
                                                        f"{gap} (tolerance {PIXEL_TOLERANCE} of 255)")


def check_fid_features(cuda: bool) -> None:
    from mc_bench.evaluate import extract, make_extractor

    images = [np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8) for i in range(64)]
    on_cpu = extract(make_extractor("tiny-clip"), images, "clean")
    if not cuda:
        report("fid features device vs cpu", None, "no CUDA device: nothing to compare")
        return
    on_gpu = extract(make_extractor("tiny-clip").to("cuda"), images, "clean")
    rel = float(np.abs(on_gpu - on_cpu).max() / np.abs(on_cpu).max())
    report("fid features device vs cpu", rel < 1e-2, f"64 images: max relative difference {rel:.2e} (TF32 allowed)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a few steps and images (CPU, tests)")
    parser.add_argument("--out", type=Path, default=None, help="keep the run folders here")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    start = time.perf_counter()
    print(f"device: {torch.cuda.get_device_name(0) if cuda else 'cpu (no CUDA device)'} | torch {torch.__version__}"
          f"{' | bf16 ' + str(torch.cuda.is_bf16_supported()) if cuda else ''} | small={args.small}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        checks = {"recipes": lambda: check_recipes(out, args.small, cuda),
                  "determinism and resume": lambda: check_determinism_and_resume(out, args.small),
                  "lora alpha != rank": lambda: check_lora_alpha(out, args.small),
                  "seeded generation": lambda: check_seeded_generation(out, args.small),
                  "fid features device vs cpu": lambda: check_fid_features(cuda)}
        for name, check in checks.items():
            try:
                check()
            except Exception as err:  # one broken check is reported; the others still run
                report(name, False, f"{type(err).__name__}: {err}")
    print(f"{time.perf_counter() - start:.0f} s in all", flush=True)
    print("GPU_CHECK OK" if not FAILED else f"GPU_CHECK FAIL ({len(FAILED)}): {', '.join(FAILED)}", flush=True)
    return 0 if not FAILED else 1


if __name__ == "__main__":
    sys.exit(main())
