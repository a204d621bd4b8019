"""The offline world's models: a tiny CLIP, a shared tiny VAE, and ten tiny Stable-Diffusion-format T2I models.

Everything is saved exactly as hub checkpoints are (``save_pretrained``, safetensors), under
``world_models/``::

    world_models/tiny-clip/            CLIPModel + CLIPTokenizer + CLIPImageProcessor (metrics, profiles)
    world_models/<zoo id>/             StableDiffusionPipeline: unet, vae, text_encoder, tokenizer, scheduler

so ``StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)`` loads a zoo model the way it
loads ``stable-diffusion-v1-5``. The zoo shares one VAE and the tiny CLIP's text tower as text encoder (as the
SD 1.x family shares OpenAI's CLIP text encoder), and differs the way hub models differ: pretraining domains,
UNet width and depth, prediction type, noise schedule and pretraining length (:data:`ZOO`).
``build_world_models`` rebuilds all of it deterministically on CPU (each model trains in one thread).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .config import REPO_ROOT, Manifests
from .finetune import diffusion_loss, encode_text, images_to_tensor

WORLD_MODELS = REPO_ROOT / "world_models"
CLIP_DIR = "tiny-clip"
VAE_DIR = "tiny-vae"
LATENT_CHANNELS = 4


@dataclass(frozen=True)
class ZooModel:
    """How one zoo model is built: its pretraining data, UNet capacity, objective and schedule."""

    id: str
    sources: tuple[str, ...]  # source dataset ids it is pretrained on
    block_out_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    prediction_type: str = "epsilon"
    beta_schedule: str = "scaled_linear"
    steps: int = 1500
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0


ALL_SOURCES = ("src-animals", "src-digits", "src-glyphs-sans", "src-glyphs-serif", "src-shapes", "src-textures",
               "src-photos", "src-faces")

ZOO: tuple[ZooModel, ...] = (
    ZooModel("zoo-animals", ("src-animals",), (32, 64), 1, "epsilon", "scaled_linear", 1500),
    ZooModel("zoo-glyphs", ("src-glyphs-sans", "src-glyphs-serif"), (32, 64), 1, "epsilon", "linear", 1500),
    ZooModel("zoo-digits-glyphs", ("src-digits", "src-glyphs-sans"), (48, 96), 1, "v_prediction", "scaled_linear", 1500),
    ZooModel("zoo-textures-photos", ("src-textures", "src-photos", "src-faces"), (48, 96), 2, "epsilon",
             "squaredcos_cap_v2", 1200),
    ZooModel("zoo-shapes", ("src-shapes",), (32, 64), 1, "sample", "linear", 1000),
    ZooModel("zoo-all-small", ALL_SOURCES, (32, 64), 1, "epsilon", "scaled_linear", 1500),
    # The first zoo had an all-domain large model here; it was best on 4 of 6 probed targets (no selection
    # problem), so the large model now covers natural images only (see results/zoo/probe_first_zoo.csv).
    ZooModel("zoo-large-natural", ("src-animals", "src-textures", "src-photos", "src-faces"), (64, 128), 1,
             "v_prediction", "scaled_linear", 2000),
    ZooModel("zoo-all-short", ALL_SOURCES, (48, 96), 1, "epsilon", "linear", 300),
    ZooModel("zoo-animals-shapes", ("src-animals", "src-shapes"), (48, 96), 1, "v_prediction", "squaredcos_cap_v2", 1500),
    ZooModel("zoo-faces-photos", ("src-faces", "src-photos"), (32, 64), 2, "sample", "scaled_linear", 1500),
)

BETAS = {"scaled_linear": (0.00085, 0.012), "linear": (0.0001, 0.02), "squaredcos_cap_v2": (0.0001, 0.02)}


# ------------------------------------------------------------------------------------------------ parts


def make_vae(resolution: int = 16):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
                         latent_channels=LATENT_CHANNELS, norm_num_groups=16, sample_size=resolution)


def make_unet(spec: ZooModel, cross_attention_dim: int, latent_size: int):
    from diffusers import UNet2DConditionModel

    n = len(spec.block_out_channels)
    # attention (and text conditioning) only in the low-resolution blocks: it costs 5-10x at full resolution
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1)
    up = ("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",)
    return UNet2DConditionModel(sample_size=latent_size, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
                                down_block_types=down, up_block_types=up, block_out_channels=spec.block_out_channels,
                                layers_per_block=spec.layers_per_block, cross_attention_dim=cross_attention_dim,
                                attention_head_dim=8, norm_num_groups=16)


def make_schedulers(spec: ZooModel):
    """The training scheduler (DDPM) and the sampling scheduler saved in the pipeline (DDIM, same betas)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    start, end = BETAS[spec.beta_schedule]
    ddpm = DDPMScheduler(num_train_timesteps=1000, beta_start=start, beta_end=end, beta_schedule=spec.beta_schedule,
                         prediction_type=spec.prediction_type, clip_sample=False)
    return ddpm, DDIMScheduler.from_config(ddpm.config, set_alpha_to_one=False, steps_offset=1)


def source_data(manifests: Manifests, dataset_ids, root: Path | None = None) -> tuple[np.ndarray, list[str]]:
    """Train-split images and captions of world datasets (built on demand)."""
    from .data import read_world_split

    images, captions = [], []
    for dataset_id in dataset_ids:
        x, c = read_world_split(manifests, dataset_id, "train", root)
        images.append(x)
        captions += c
    return np.concatenate(images), captions


# ------------------------------------------------------------------------------------------------ training


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

    from .config import load_manifests

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


@torch.no_grad()
def sample(pipe, prompts: list[str], seed: int = 0, steps: int = 20, guidance_scale: float = 3.0) -> np.ndarray:
    """uint8 images (n, h, w, 3) for ``prompts`` with a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance_scale, generator=gen, output_type="np")
    return (out.images * 255).round().clip(0, 255).astype(np.uint8)


def build_world_models(root: Path = WORLD_MODELS, jobs: int = 2, models: tuple[ZooModel, ...] = ZOO,
                       clip_steps: int = 2500, vae_steps: int = 1500, progress: bool = True) -> list[dict]:
    """Train the tiny CLIP, the VAE and every zoo model (``jobs`` one-thread processes) into ``root``."""
    from tqdm.auto import tqdm

    from .config import load_manifests
    from .tinyclip import train_tiny_clip

    manifests = load_manifests(check_profiles=False)
    root = Path(root)
    all_ids = [s.id for s in manifests.datasets.values() if s.source_kind == "world"]
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


# ------------------------------------------------------------------------------------------------ the zoo table


def zoo_records(root: Path = WORLD_MODELS, specs: tuple[ZooModel, ...] = ZOO) -> list[dict]:
    """The records (``mc_bench_zoo.json``) of the built zoo models, in :data:`ZOO` order."""
    records = []
    for spec in specs:
        path = Path(root) / spec.id / "mc_bench_zoo.json"
        if path.is_file():
            records.append(json.loads(path.read_text()))
    return records


def model_metadata(record: dict) -> dict:
    """The scalar model features of a zoo model (what ``models.yaml`` records as ``metadata``)."""
    domains = sorted({s.removeprefix("src-").split("-")[0] for s in record["sources"]})
    meta = {
        "unet_parameters_m": round(record["unet_parameters"] / 1e6, 3),
        "width": record["block_out_channels"][0],
        "depth": len(record["block_out_channels"]),
        "layers_per_block": record["layers_per_block"],
        "beta_schedule": record["beta_schedule"],
        "pretrain_steps": record["steps"],
        "pretrain_datasets": ";".join(record["sources"]),
        "pretrain_domains": ";".join(domains),
    }
    for domain in ("animals", "digits", "glyphs", "shapes", "textures", "photos", "faces"):
        meta[f"pretrained_on_{domain}"] = domain in domains
    return meta


def write_models_manifest(path: Path, root: Path = WORLD_MODELS, specs: tuple[ZooModel, ...] = ZOO) -> Path:
    """Write ``models.yaml`` with one entry per built zoo model (source relative to the manifest folder)."""
    import os

    import yaml

    entries = []
    for record in zoo_records(root, specs):
        entries.append({
            "id": record["id"], "source": os.path.relpath(Path(root) / record["id"], Path(path).parent),
            "family": "tiny-sd", "resolution": 16, "prediction_type": record["prediction_type"], "license": "MIT",
            "metadata": model_metadata(record)})
    header = ("# Candidate text-to-image models (schema: data_manifests/README.md).\n"
              "# The zoo entries are written by `mc-bench world zoo`; add hub models with `source: hf:<id>` + revision.\n")
    Path(path).write_text(header + yaml.safe_dump({"models": entries}, sort_keys=False, width=110))
    return Path(path)


def retrieval_table(root: Path = WORLD_MODELS, manifests: Manifests | None = None) -> "pd.DataFrame":
    """Zero-shot caption retrieval of the tiny CLIP on the held-out split of every world dataset."""
    import pandas as pd

    from .config import load_manifests
    from .data import read_world_split
    from .tinyclip import load_clip, retrieval_accuracy

    manifests = manifests or load_manifests(check_profiles=False)
    model, processor = load_clip(Path(root) / CLIP_DIR)
    rows = []
    for spec in manifests.datasets.values():
        if spec.source_kind != "world":
            continue
        images, captions = read_world_split(manifests, spec.id, "eval")
        acc = retrieval_accuracy(model, processor.tokenizer, processor.image_processor, images, captions)
        rows.append({"dataset": spec.id, "role": spec.role, "n_images": len(images),
                     "n_captions": len(set(captions)), "top1": acc})
    return pd.DataFrame(rows)


def contact_sheets(out: Path, root: Path = WORLD_MODELS, manifests: Manifests | None = None,
                   far_domain: str = "photos-microscopy", per_source: int = 8) -> list[Path]:
    """For each zoo model, samples for captions of its own source datasets and of one far target."""
    import random

    from diffusers import StableDiffusionPipeline

    from .config import load_manifests
    from .data import read_world_split
    from .report import labelled_rows, save_png

    manifests = manifests or load_manifests(check_profiles=False)
    paths = []
    for record in zoo_records(root):
        pipe = StableDiffusionPipeline.from_pretrained(Path(root) / record["id"], local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        rows = []
        for dataset_id in [*record["sources"], far_domain]:
            _, captions = read_world_split(manifests, dataset_id, "eval")
            prompts = random.Random(0).sample(sorted(set(captions)), k=min(per_source, len(set(captions))))
            rows.append((dataset_id, sample(pipe, prompts, seed=0)))
        paths.append(save_png(labelled_rows(rows), Path(out) / f"{record['id']}.png"))
    return paths
