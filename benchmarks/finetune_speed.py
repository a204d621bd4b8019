"""Our fine-tuning step against a plain diffusers training loop, on the same tiny zoo model, batch and process.

    python benchmarks/finetune_speed.py [--model zoo-large-natural] [--dataset animals-farm] [--method lora]
                                        [--steps 40] [--batch 16] [--threads 1]

The plain loop is what diffusers' ``train_text_to_image_lora.py`` does per step, written out here: a batch of
images -> VAE posterior sample × scaling factor, text-encoder states, noise and timesteps, ``add_noise``, UNet,
MSE against the scheduler's target, backward, clip, AdamW, schedule. Ours is :class:`mc_bench.train.finetune.Trainer`
(the same work plus data order, crops and flips from a checkpointable generator, caption dropout, loss log).
Both are timed over the same number of steps after a warm-up, alternating three rounds; the medians are compared.
Also prints sampling speed (images per second) of :func:`mc_bench.train.generate.generate`.
The last line reads ``ratio=<ours/plain>`` (goal ≤ 1.05).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def plain_loop(pipe, images: np.ndarray, captions: list[str], steps: int, batch: int, method: str, lr: float):
    """A plain diffusers training loop; returns seconds per step."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    from mc_bench.train.finetune import add_lora
    from mc_bench.config import TrainSettings

    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    if method == "lora":
        add_lora(unet, TrainSettings())
    params = [p for p in unet.parameters() if p.requires_grad]
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    lr_scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=10, num_training_steps=10**6)
    pixels_all = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    unet.train()

    def step():
        idx = torch.randint(0, len(images), (batch,))
        pixels = pixels_all[idx]
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            ids = tokenizer([captions[i] for i in idx], padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
            states = text_encoder(ids)[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,))
        noisy = noise_scheduler.add_noise(latents, noise, t)
        kind = noise_scheduler.config.prediction_type
        target = {"epsilon": noise, "sample": latents}.get(kind)
        if target is None:
            target = noise_scheduler.get_velocity(latents, noise, t)
        loss = F.mse_loss(unet(noisy, t, states).sample.float(), target.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    from mc_bench.config import GenerateSettings, load_manifests
    from mc_bench.train.finetune import Trainer
    from mc_bench.train.runs import build_config, load_pipeline
    from mc_bench.world.data import load_dataset_split
    from mc_bench.train.generate import generate

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="zoo-large-natural")
    parser.add_argument("--dataset", default="animals-farm")
    parser.add_argument("--method", default="lora", choices=["lora", "full"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        config = build_config(args.model, args.dataset, Path(tmp) / "run", overrides={"train": {
            "method": args.method, "batch_size": args.batch, "steps": 10**6, "caption_dropout": 0.0}}).resolved()
        images, captions = load_dataset_split(load_manifests(), args.dataset, "train")
        trainer = Trainer(config, load_pipeline(config), images, captions, torch.device("cpu"))
        plain_step = plain_loop(load_pipeline(config), np.stack(images), captions, args.steps, args.batch,
                                args.method, config.train.learning_rate)
        for _ in range(5):  # warm-up
            trainer.train_step()
            plain_step()
        ours, plain = [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            for _ in range(args.steps):
                trainer.train_step()
            ours.append((time.perf_counter() - start) / args.steps)
            start = time.perf_counter()
            for _ in range(args.steps):
                plain_step()
            plain.append((time.perf_counter() - start) / args.steps)
        ours_s, plain_s = statistics.median(ours), statistics.median(plain)

        pipe = load_pipeline(config)
        _, eval_captions = load_dataset_split(load_manifests(), args.dataset, "eval")
        prompts = (eval_captions * 4)[:64]
        settings = GenerateSettings(num_inference_steps=20, batch_size=32)
        generate(pipe, prompts[:8], Path(tmp) / "warm", settings)
        start = time.perf_counter()
        generate(pipe, prompts, Path(tmp) / "samples", settings)
        images_per_s = len(prompts) / (time.perf_counter() - start)

    print(f"model={args.model} method={args.method} batch={args.batch} threads={args.threads} "
          f"steps={args.steps}x{args.rounds}")
    print(f"ours:  {ours_s * 1000:.1f} ms/step ({1 / ours_s:.2f} steps/s)   rounds: "
          + ", ".join(f"{x * 1000:.1f}" for x in ours))
    print(f"plain: {plain_s * 1000:.1f} ms/step ({1 / plain_s:.2f} steps/s)   rounds: "
          + ", ".join(f"{x * 1000:.1f}" for x in plain))
    print(f"sampling: {images_per_s:.1f} images/s (20 DDIM steps, guidance 3.0, batch 32)")
    print(f"ratio={ours_s / plain_s:.3f}")


if __name__ == "__main__":
    main()
