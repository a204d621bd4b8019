"""Pretraining the offline world's models: the shared tiny VAE, every zoo denoiser (and the tiny CLIP, through
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
from ..world.zoo import (ALL_SOURCES, ZOO, ZooModel, make_schedulers, make_sd3_transformer, make_sdxl_unet,
                         make_unet, make_vae, source_data)
from . import families
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


def _clip_text_with_projection(folder: Path):
    """The tiny CLIP's text tower with its projection (``CLIPTextModelWithProjection``, the second text encoder of
    SDXL and both CLIP encoders of SD3), built from the CLIPModel checkpoint."""
    from transformers import CLIPModel, CLIPTextConfig, CLIPTextModelWithProjection

    clip = CLIPModel.from_pretrained(folder)
    config = CLIPTextConfig(**{**clip.config.text_config.to_dict(), "projection_dim": clip.config.projection_dim})
    encoder = CLIPTextModelWithProjection(config)
    encoder.text_model.load_state_dict(clip.text_model.state_dict())
    encoder.text_projection.load_state_dict(clip.text_projection.state_dict())
    return encoder.eval()


def _tiny_t5(clip_tokenizer, width: int, seed: int):
    """SD3's third text encoder, tiny: a one-layer T5 encoder (``width`` wide: SD3 pads the CLIP embeddings to the
    T5 width) with a word-level T5 tokenizer over the tiny CLIP's whole-word vocabulary. It is not trained: its
    features are a fixed random function of the caption's words, which the transformer learns to use or ignore
    (real SD3's T5-XXL is pretrained; the tiny world has no corpus to pretrain it on)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    words = sorted(t.removesuffix("</w>") for t in clip_tokenizer.get_vocab() if t.endswith("</w>") and len(t) > 4)
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in words:
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = T5TokenizerFast(tokenizer_object=core, extra_ids=0, pad_token="<pad>", eos_token="</s>",
                                unk_token="<unk>", model_max_length=256)
    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(vocab), d_model=width, d_kv=width // 4, d_ff=2 * width, num_layers=1,
                      num_heads=4, feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
    return tokenizer, T5EncoderModel(config).eval()


def build_pipeline(spec: ZooModel, root: Path, latent_size: int):
    """The untrained pipeline of a zoo model, in its family's format, with the world's VAE and tiny CLIP text
    encoders, and the training scheduler of its objective. Returns ``(pipe, training scheduler)``."""
    from diffusers import (AutoencoderKL, StableDiffusion3Pipeline, StableDiffusionPipeline,
                           StableDiffusionXLPipeline)
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(root / CLIP_DIR)
    text_encoder = CLIPTextModel.from_pretrained(root / CLIP_DIR).eval()  # loaded in the first zoo's order
    vae = AutoencoderKL.from_pretrained(root / VAE_DIR).eval()
    train_scheduler, sample_scheduler = make_schedulers(spec)
    if spec.family == "tiny-sd":
        unet = make_unet(spec, text_encoder.config.hidden_size, latent_size)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=sample_scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    elif spec.family == "sdxl":
        text_encoder_2 = _clip_text_with_projection(root / CLIP_DIR)
        unet = make_sdxl_unet(spec, text_encoder.config.hidden_size + text_encoder_2.config.hidden_size,
                              text_encoder_2.config.projection_dim, latent_size)
        # the unconditional input is the empty caption's embedding, as caption dropout trains it
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                         tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
                                         scheduler=sample_scheduler, force_zeros_for_empty_prompt=False)
    elif spec.family == "sd3":
        text_encoder, text_encoder_2 = (_clip_text_with_projection(root / CLIP_DIR) for _ in range(2))
        vae.register_to_config(shift_factor=0.0)  # SD3's pipeline shifts latents; the world's VAE needs none
        transformer = make_sd3_transformer(spec, 2 * text_encoder.config.hidden_size,
                                           2 * text_encoder.config.projection_dim, latent_size)
        tokenizer_3, text_encoder_3 = _tiny_t5(tokenizer, 2 * text_encoder.config.hidden_size, spec.seed)
        pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=sample_scheduler, vae=vae,
                                        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                                        tokenizer_2=tokenizer, text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)
    else:
        raise ValueError(f"unknown zoo family {spec.family!r}")
    pipe.set_progress_bar_config(disable=True)
    return pipe, train_scheduler


def pretrain(spec: ZooModel, root: Path = WORLD_MODELS, manifests: Manifests | None = None,
             threads: int = 1) -> dict:
    """Pretrain one zoo model and save it as a pipeline folder of its family. Returns its record."""
    torch.set_num_threads(threads)
    torch.manual_seed(spec.seed)
    manifests = manifests or load_manifests(check_profiles=False)
    start = time.perf_counter()
    images, captions = source_data(manifests, spec.sources)
    latent_size = images.shape[1] // 2
    pipe, train_scheduler = build_pipeline(spec, root, latent_size)
    family = families.family_of(pipe)
    denoiser = getattr(pipe, family.denoiser)
    losses = train_denoiser(
        denoiser, pipe.vae, lambda c: families.encode_captions(pipe, family, c, images.shape[1]),
        lambda model, latents, cond, gen: families.denoising_loss(family, model, train_scheduler, latents, cond, gen,
                                                                  flow_timesteps="uniform"),  # as the zoo was made
        images, captions, steps=spec.steps, batch_size=spec.batch_size, learning_rate=spec.learning_rate,
        seed=spec.seed)
    denoiser.eval()
    # Weights are stored in float16 (half the repository size); from_pretrained loads them as float32 on CPU.
    for module in (denoiser, pipe.vae, *families.text_encoders(pipe, family)):
        module.to(torch.float16)
    folder = root / spec.id
    pipe.save_pretrained(folder, safe_serialization=True)
    n_params = sum(p.numel() for p in denoiser.parameters())
    record = {**asdict(spec), "sources": list(spec.sources), "block_out_channels": list(spec.block_out_channels),
              "unet_parameters": n_params, "final_loss": float(np.mean(losses[-100:])),
              "train_seconds": round(time.perf_counter() - start, 1)}
    if spec.family == "tiny-sd":  # the records of the first ten zoo models, byte for byte
        record.pop("family")
    (folder / "mc_bench_zoo.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def train_unet(unet, vae, text_encoder, tokenizer, noise_scheduler, images: np.ndarray, captions: list[str],
               steps: int, batch_size: int = 32, learning_rate: float = 1e-3, seed: int = 0,
               caption_dropout: float = 0.1, warmup: float = 0.05) -> list[float]:
    """Train an SD ``unet`` (all its parameters) on image–caption pairs with the diffusion objective
    (:func:`train_denoiser` with the SD conditioning and loss)."""
    return train_denoiser(
        unet, vae, lambda c: {"encoder_hidden_states": encode_text(tokenizer, text_encoder, c)},
        lambda model, latents, cond, gen: diffusion_loss(model, noise_scheduler, latents,
                                                         cond["encoder_hidden_states"], gen),
        images, captions, steps, batch_size, learning_rate, seed, caption_dropout, warmup)


def train_denoiser(denoiser, vae, encode, loss_fn, images: np.ndarray, captions: list[str], steps: int,
                   batch_size: int = 32, learning_rate: float = 1e-3, seed: int = 0, caption_dropout: float = 0.1,
                   warmup: float = 0.05) -> list[float]:
    """Train ``denoiser`` (all its parameters) on image–caption pairs; VAE and text encoders frozen. ``encode``
    maps captions to the denoiser's conditioning (a dictionary of tensors), ``loss_fn(denoiser, latents,
    conditioning, generator)`` is the family's objective. Latent posteriors and caption conditionings are computed
    once. Returns the loss per step."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        dist = vae.encode(images_to_tensor(images)).latent_dist
        mean = dist.mean
        if getattr(vae.config, "shift_factor", None) is not None:  # SD3's VAE: latents shifted, then scaled
            mean = mean - vae.config.shift_factor
        mean, std = mean * vae.config.scaling_factor, dist.std * vae.config.scaling_factor
        distinct = sorted(set(captions)) + [""]
        table = encode(distinct)
    index = {c: i for i, c in enumerate(distinct)}
    cap_ids = torch.tensor([index[c] for c in captions])
    empty = len(distinct) - 1
    opt = torch.optim.AdamW(denoiser.parameters(), lr=learning_rate, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=learning_rate, total_steps=steps, pct_start=warmup)
    losses = []
    denoiser.train()
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch_size,), generator=gen)
        latents = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)
        drop = torch.rand(batch_size, generator=gen) < caption_dropout
        ids = torch.where(drop, empty, cap_ids[idx])
        loss = loss_fn(denoiser, latents, families.select(table, ids), gen)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss ({loss.item()}) at step {len(losses)}")
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(denoiser.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    denoiser.eval()
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
