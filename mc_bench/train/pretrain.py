"""Pretraining the offline world's models: the shared tiny VAE, every zoo UNet (and the tiny CLIP, through
:func:`mc_bench.world.tinyclip.train_tiny_clip`), deterministically on CPU, with the same diffusion objective as
fine-tuning (:mod:`mc_bench.train.loss`). The models themselves — their specifications and how they are read — are
in :mod:`mc_bench.world.zoo`.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..config import Manifests, load_manifests
from ..paths import CLIP_DIR, VAE_DIR, WORLD_MODELS
from ..world.tinyclip import train_tiny_clip
from ..world.zoo import ALL_SOURCES, ZOO, ZooModel, make_schedulers, make_unet, make_vae, source_data
from .loss import diffusion_loss, encode_text, images_to_tensor


def train_vae(images: np.ndarray, folder: Path, steps: int = 1500, batch_size: int = 64, lr: float = 1e-3,
              kl_weight: float = 1e-5, seed: int = 0):
    """Train the shared tiny VAE (reconstruction + KL) and set ``scaling_factor`` to 1 / std of its latents."""
    torch.manual_seed(seed)
    vae = make_vae(images.shape[1])
    pixels = images_to_tensor(images)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    for _ in range(steps):
        x = pixels[torch.randint(0, len(pixels), (batch_size,), generator=gen)]
        dist = vae.encode(x).latent_dist
        recon = vae.decode(dist.sample(generator=gen)).sample
        loss = torch.nn.functional.mse_loss(recon, x) + kl_weight * dist.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    vae.eval()
    with torch.no_grad():
        latents = vae.encode(pixels[:2048]).latent_dist.mean
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    vae.save_pretrained(folder, safe_serialization=True)
    return vae


def pretrain(spec: ZooModel, root: Path = WORLD_MODELS, manifests: Manifests | None = None,
             threads: int = 1) -> dict:
    """Pretrain one zoo model and save it as a StableDiffusionPipeline folder. Returns its record."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.set_num_threads(threads)
    torch.manual_seed(spec.seed)
    manifests = manifests or load_manifests(check_profiles=False)
    start = time.perf_counter()
    tokenizer = CLIPTokenizer.from_pretrained(root / CLIP_DIR)
    text_encoder = CLIPTextModel.from_pretrained(root / CLIP_DIR).eval()
    vae = AutoencoderKL.from_pretrained(root / VAE_DIR).eval()
    images, captions = source_data(manifests, spec.sources)
    ddpm, ddim = make_schedulers(spec)
    latent_size = images.shape[1] // 2
    unet = make_unet(spec, text_encoder.config.hidden_size, latent_size)

    losses = train_unet(unet, vae, text_encoder, tokenizer, ddpm, images, captions, steps=spec.steps,
                        batch_size=spec.batch_size, learning_rate=spec.learning_rate, seed=spec.seed)
    unet.eval()
    # Weights are stored in float16 (half the repository size); from_pretrained loads them as float32 on CPU.
    for module in (unet, vae, text_encoder):
        module.to(torch.float16)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=ddim,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    folder = root / spec.id
    pipe.save_pretrained(folder, safe_serialization=True)
    n_params = sum(p.numel() for p in unet.parameters())
    record = {**asdict(spec), "sources": list(spec.sources), "block_out_channels": list(spec.block_out_channels),
              "unet_parameters": n_params, "final_loss": float(np.mean(losses[-100:])),
              "train_seconds": round(time.perf_counter() - start, 1)}
    (folder / "mc_bench_zoo.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def train_unet(unet, vae, text_encoder, tokenizer, noise_scheduler, images: np.ndarray, captions: list[str],
               steps: int, batch_size: int = 32, learning_rate: float = 1e-3, seed: int = 0,
               caption_dropout: float = 0.1, warmup: float = 0.05) -> list[float]:
    """Train ``unet`` (all its parameters) on image–caption pairs with the diffusion objective; VAE and text
    encoder frozen. Latent posteriors and caption embeddings are computed once. Returns the loss per step."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        dist = vae.encode(images_to_tensor(images)).latent_dist
        mean, std = dist.mean * vae.config.scaling_factor, dist.std * vae.config.scaling_factor
        distinct = sorted(set(captions)) + [""]
        text = encode_text(tokenizer, text_encoder, distinct)
    index = {c: i for i, c in enumerate(distinct)}
    cap_ids = torch.tensor([index[c] for c in captions])
    empty = len(distinct) - 1
    opt = torch.optim.AdamW(unet.parameters(), lr=learning_rate, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=learning_rate, total_steps=steps, pct_start=warmup)
    losses = []
    unet.train()
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch_size,), generator=gen)
        latents = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)
        drop = torch.rand(batch_size, generator=gen) < caption_dropout
        ids = torch.where(drop, empty, cap_ids[idx])
        loss = diffusion_loss(unet, noise_scheduler, latents, text[ids], gen)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss ({loss.item()}) at step {len(losses)}")
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    unet.eval()
    return losses


def build_world_models(root: Path = WORLD_MODELS, jobs: int = 2, models: tuple[ZooModel, ...] = ZOO,
                       clip_steps: int = 2500, vae_steps: int = 1500, progress: bool = True) -> list[dict]:
    """Train the tiny CLIP, the VAE and every zoo model (``jobs`` one-thread processes) into ``root``."""
    from tqdm.auto import tqdm

    manifests = load_manifests(check_profiles=False)
    root = Path(root)
    # the tiny CLIP learns the captions of the world's sources and targets (not its validation datasets, which were
    # added after the world's models were built and are kept out so that a rebuild reproduces them)
    all_ids = [s.id for s in manifests.datasets.values() if s.source_kind == "world" and s.role != "validation"]
    if not (root / CLIP_DIR / "model.safetensors").exists():
        torch.set_num_threads(jobs)
        images, captions = source_data(manifests, all_ids)
        train_tiny_clip(images, captions, root / CLIP_DIR, steps=clip_steps, progress=progress)
    if not (root / VAE_DIR / "diffusion_pytorch_model.safetensors").exists():
        torch.set_num_threads(jobs)
        images, _ = source_data(manifests, ALL_SOURCES)
        train_vae(images, root / VAE_DIR, steps=vae_steps)
    records = []
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(pretrain, spec, root) for spec in models]
        for future in tqdm(futures, desc="zoo", disable=not progress):
            records.append(future.result())
    return records
