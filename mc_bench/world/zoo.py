"""The offline world's models: a tiny CLIP, a shared tiny VAE, and twelve tiny T2I models in the hub's formats.

Everything is saved exactly as hub checkpoints are (``save_pretrained``, safetensors), under
``world_models/``::

    world_models/tiny-clip/            CLIPModel + CLIPTokenizer + CLIPImageProcessor (metrics, profiles)
    world_models/<zoo id>/             StableDiffusionPipeline: unet, vae, text_encoder, tokenizer, scheduler
    world_models/zoo-xl-natural/       StableDiffusionXLPipeline: + text_encoder_2, tokenizer_2; a "text_time" UNet
    world_models/zoo-sd3-symbols/      StableDiffusion3Pipeline: an SD3 (MMDiT) transformer, two CLIP text
                                       encoders (no T5), a flow-matching scheduler

so ``DiffusionPipeline.from_pretrained(folder, local_files_only=True)`` loads a zoo model the way it loads
``stable-diffusion-v1-5``, ``stable-diffusion-xl-base-1.0`` or ``stable-diffusion-3-medium-diffusers``. The zoo shares
one VAE and the tiny CLIP's text tower as text encoder (as the SD 1.x family shares OpenAI's CLIP text encoder; the
SDXL and SD3 models use it twice, for both of their CLIP encoders), and differs the way hub models differ: family and
architecture (UNet, SDXL's UNet, SD3's transformer), pretraining domains, width and depth, objective (epsilon, v,
sample prediction; rectified flow), noise schedule and pretraining length (:data:`ZOO`). The ten SD-format models are
the candidates of the cpu-paper study (the paper's 10); the SDXL and SD3 ones were added after it (issue 17).
:func:`mc_bench.train.pretrain.build_world_models` rebuilds all of it deterministically on CPU (each model trains
in one thread).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..config import Manifests
from ..paths import CLIP_DIR, WORLD_MODELS

if TYPE_CHECKING:  # pandas is imported where the tables are made
    import pandas as pd

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
    family: str = "tiny-sd"  # tiny-sd (StableDiffusionPipeline), sdxl or sd3 (prediction_type "flow")


ALL_SOURCES = ("src-animals", "src-digits", "src-glyphs-sans", "src-glyphs-serif", "src-shapes", "src-textures",
               "src-photos", "src-faces")

ZOO: tuple[ZooModel, ...] = (
    ZooModel("zoo-animals", ("src-animals",), (32, 64), 1, "epsilon", "scaled_linear", 1500),
    ZooModel("zoo-glyphs", ("src-glyphs-sans", "src-glyphs-serif"), (32, 64), 1, "epsilon", "linear", 1500),
    ZooModel("zoo-digits-glyphs", ("src-digits", "src-glyphs-sans"), (48, 96), 1, "v_prediction", "scaled_linear",
             1500),
    ZooModel("zoo-textures-photos", ("src-textures", "src-photos", "src-faces"), (48, 96), 2, "epsilon",
             "squaredcos_cap_v2", 1200),
    ZooModel("zoo-shapes", ("src-shapes",), (32, 64), 1, "sample", "linear", 1000),
    ZooModel("zoo-all-small", ALL_SOURCES, (32, 64), 1, "epsilon", "scaled_linear", 1500),
    # The first zoo had an all-domain large model here; it was best on 4 of 6 probed targets (no selection
    # problem), so the large model now covers natural images only (see results/zoo/probe_first_zoo.csv).
    ZooModel("zoo-large-natural", ("src-animals", "src-textures", "src-photos", "src-faces"), (64, 128), 1,
             "v_prediction", "scaled_linear", 2000),
    ZooModel("zoo-all-short", ALL_SOURCES, (48, 96), 1, "epsilon", "linear", 300),
    ZooModel("zoo-animals-shapes", ("src-animals", "src-shapes"), (48, 96), 1, "v_prediction", "squaredcos_cap_v2",
             1500),
    ZooModel("zoo-faces-photos", ("src-faces", "src-photos"), (32, 64), 2, "sample", "scaled_linear", 1500),
    # Other families, as a 2026 candidate list has them (issue 17); not in the cpu-paper study's 10 candidates.
    ZooModel("zoo-xl-natural", ("src-animals", "src-textures", "src-photos", "src-faces"), (32, 64), 1, "epsilon",
             "scaled_linear", 1500, family="sdxl"),
    ZooModel("zoo-sd3-symbols", ("src-digits", "src-glyphs-sans", "src-glyphs-serif", "src-shapes"), (64,), 2, "flow",
             "flow", 1000, family="sd3"),
)
SD_ZOO = tuple(m for m in ZOO if m.family == "tiny-sd")  # the cpu-paper study's ten candidates

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


def make_sdxl_unet(spec: ZooModel, cross_attention_dim: int, pooled_dim: int, latent_size: int):
    """An SDXL-style UNet: conditioned on the pooled text embedding and the six size/crop ids
    (``addition_embed_type="text_time"``), linear attention projections, as ``stable-diffusion-xl-base-1.0``."""
    from diffusers import UNet2DConditionModel

    time_dim = 8
    return UNet2DConditionModel(sample_size=latent_size, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                block_out_channels=spec.block_out_channels, layers_per_block=spec.layers_per_block,
                                cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=16,
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=time_dim,
                                projection_class_embeddings_input_dim=6 * time_dim + pooled_dim)


def make_sd3_transformer(spec: ZooModel, joint_attention_dim: int, pooled_dim: int, latent_size: int):
    """An SD3 MMDiT transformer: ``block_out_channels[0]`` wide (heads of 16), ``layers_per_block`` joint blocks,
    patch size 1 on the 8 × 8 latents."""
    from diffusers import SD3Transformer2DModel

    width = spec.block_out_channels[0]
    return SD3Transformer2DModel(sample_size=latent_size, patch_size=1, in_channels=LATENT_CHANNELS,
                                 out_channels=LATENT_CHANNELS, num_layers=spec.layers_per_block, attention_head_dim=16,
                                 num_attention_heads=width // 16, joint_attention_dim=joint_attention_dim,
                                 caption_projection_dim=width, pooled_projection_dim=pooled_dim,
                                 pos_embed_max_size=2 * latent_size)


def make_schedulers(spec: ZooModel):
    """The training scheduler (DDPM) and the sampling scheduler saved in the pipeline (DDIM, same betas); for a
    rectified-flow model both are the flow-matching Euler scheduler (shift 1: the images are small)."""
    from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler

    if spec.prediction_type == "flow":
        flow = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
        return flow, flow
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


@torch.no_grad()
def sample(pipe, prompts: list[str], seed: int = 0, steps: int = 20, guidance_scale: float = 3.0) -> np.ndarray:
    """uint8 images (n, h, w, 3) for ``prompts`` with a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance_scale, generator=gen, output_type="np")
    return (out.images * 255).round().clip(0, 255).astype(np.uint8)


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
            "family": record.get("family", "tiny-sd"), "resolution": 16, "prediction_type": record["prediction_type"],
            "license": "MIT",
            "metadata": model_metadata(record)})
    header = ("# Candidate text-to-image models (schema: data_manifests/README.md).\n"
              "# The zoo entries are written by `mc-bench world zoo`; add hub models with `source: hf:<id>` "
              "+ revision.\n")
    Path(path).write_text(header + yaml.safe_dump({"models": entries}, sort_keys=False, width=110))
    return Path(path)


def retrieval_table(root: Path = WORLD_MODELS, manifests: Manifests | None = None) -> "pd.DataFrame":
    """Zero-shot caption retrieval of the tiny CLIP on the held-out split of every world source and target (the
    datasets whose captions it was trained on; validation datasets were added later and are left out)."""
    import pandas as pd

    from ..config import load_manifests
    from .data import read_world_split
    from .tinyclip import load_clip, retrieval_accuracy

    manifests = manifests or load_manifests(check_profiles=False)
    model, processor = load_clip(Path(root) / CLIP_DIR)
    rows = []
    for spec in manifests.datasets.values():
        if spec.source_kind != "world" or spec.role == "validation":
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

    from diffusers import DiffusionPipeline

    from ..config import load_manifests
    from ..images import labelled_rows, save_png
    from .data import read_world_split

    manifests = manifests or load_manifests(check_profiles=False)
    paths = []
    for record in zoo_records(root):
        pipe = DiffusionPipeline.from_pretrained(Path(root) / record["id"], local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        rows = []
        for dataset_id in [*record["sources"], far_domain]:
            _, captions = read_world_split(manifests, dataset_id, "eval")
            prompts = random.Random(0).sample(sorted(set(captions)), k=min(per_source, len(set(captions))))
            rows.append((dataset_id, sample(pipe, prompts, seed=0)))
        paths.append(save_png(labelled_rows(rows), Path(out) / f"{record['id']}.png"))
    return paths
