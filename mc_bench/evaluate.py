"""Evaluate: FID and KID, CLIP score and ImageReward of a run's samples, each number with how it was made.

* **FID / KID** compare features of the generated images with features of the dataset's held-out real images.
  The feature extractor is configurable (:class:`ClipFeatures` — the offline world's tiny CLIP or an OpenAI CLIP
  folder — or :class:`InceptionFeatures`, clean-fid's TorchScript Inception-v3 from the weights folder). The
  distances are the libraries' own: torchmetrics' ``FrechetInceptionDistance`` / ``KernelInceptionDistance`` (fed
  the features through :class:`PrecomputedFeatures`) and, as a second backend on the *same* features, clean-fid's
  ``frechet_distance`` / ``kernel_distance``. Real-image features are cached per (dataset, split, backbone and its
  weights hash, resize mode, resolution, split contents) under ``<cache>/stats/`` and reused for every model.
* **CLIP score**: torchmetrics ``CLIPScore`` with a local CLIP folder (the tiny CLIP offline) or a hub id.
* **ImageReward**: the ``image-reward`` package's ImageReward-v1.0, from the weights folder only.

A metric whose weights are missing is recorded as *not computed* with the reason (or stops the evaluation when
``EvalSettings.allow_missing`` is false) — never a made-up number. Every row of ``metrics.csv`` records
``n_real``, ``n_fake``, the backbone and its weights hash, the resize mode, the resolution and library versions.

``metrics.csv`` (one row per metric and backend; written into the run folder)::

    model, dataset, metric, value, std, direction (lower|higher), status (computed|not computed), reason,
    library, backbone, weights_sha256, resize, resolution, n_real, n_fake, warning, versions
"""

from __future__ import annotations

import hashlib
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .config import EvalSettings, load_manifests
from .errors import InputError
from .images import LazyImages, centre_square
from .io import atomic_path, write_json
from .paths import CLIP_DIR, WORLD_MODELS, cache_dir
from .train.generate import SAMPLES_TABLE, held_out_prompts, read_samples
from .train.runs import load_run_config, pick_device, read_status
from .weights import clip_weights, require, sha256
from .world.data import dataset_folder, load_dataset_split
from .world.tinyclip import load_clip

DIRECTIONS = {"fid": "lower", "fid_clean": "lower", "kid": "lower", "kid_clean": "lower", "clip_score": "higher",
              "image_reward": "higher", "mean_rank": "lower"}
COLUMNS = ["model", "dataset", "metric", "value", "std", "direction", "status", "reason", "library", "backbone",
           "weights_sha256", "resize", "resolution", "n_real", "n_fake", "warning", "versions", "sampler"]
METRICS_FILE = "metrics.csv"
MIN_FID_IMAGES = 2  # a covariance and KID's subsets need two images on each side
FID_KID_BACKENDS = (("fid", "torchmetrics"), ("fid_clean", "clean-fid"), ("kid", "torchmetrics"),
                    ("kid_clean", "clean-fid"))


# ------------------------------------------------------------------------------------------------ features


def resize_images(images: list[np.ndarray], resolution: int, mode: str) -> torch.Tensor:
    """uint8 images (any size) -> float (n, 3, r, r) in [0, 255]. ``clean``: PIL bicubic on float32 pixels
    (clean-fid's resizer); ``bilinear``: torch bilinear (the legacy PyTorch FID way); ``none``: sizes must match."""
    if mode == "clean":
        from cleanfid.resize import make_resizer

        resize = make_resizer("PIL", False, "bicubic", (resolution, resolution))
        out = np.stack([resize(np.asarray(im, dtype=np.uint8)) for im in images])
        return torch.from_numpy(out).permute(0, 3, 1, 2).float()
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    if mode == "bilinear":
        return torch.nn.functional.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        raise InputError("evaluate.resize", f"images are {tuple(x.shape[-2:])}, the backbone takes {resolution}",
                         "use resize: clean (or bilinear)")
    return x


class ClipFeatures(nn.Module):
    """CLIP image embeddings (after the projection) as FID/KID features; input float (n, 3, r, r) in [0, 255]."""

    def __init__(self, folder: str | Path, name: str):
        super().__init__()
        from transformers import CLIPImageProcessor, CLIPModel

        folder = Path(folder)
        self.name = name
        weights_file = clip_weights(folder)
        self.model = CLIPModel.from_pretrained(folder, local_files_only=True, use_safetensors=True).eval()
        proc = CLIPImageProcessor.from_pretrained(folder, local_files_only=True)
        self.register_buffer("mean", torch.tensor(proc.image_mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(proc.image_std).view(1, 3, 1, 1) * 255)
        self.resolution = self.model.config.vision_config.image_size
        self.num_features = self.model.config.projection_dim
        self.weights_sha256 = sha256(weights_file)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.model.get_image_features(pixel_values=(x - self.mean) / self.std)
        return getattr(features, "pooler_output", features)


class InceptionFeatures(nn.Module):
    """The standard FID Inception-v3 (clean-fid's TorchScript copy, 2048-d pool features) from the weights folder."""

    def __init__(self, weights: str | Path | None = None):
        super().__init__()
        from cleanfid.inception_torchscript import InceptionV3W

        path = require("inception", weights)
        self.name = "inception-v3"
        try:
            self.model = InceptionV3W(str(path.parent), download=False)
        except RuntimeError as err:  # torch.jit.load of a truncated or foreign file
            raise InputError(path, f"not a TorchScript Inception-v3 file ({str(err).splitlines()[0][:120]})",
                             "fetch it again: mc-bench weights --fetch inception (or copy a good copy there)") from None
        self.resolution = 299
        self.num_features = 2048
        self.weights_sha256 = sha256(path)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PrecomputedFeatures(nn.Module):
    """Identity "extractor" so that torchmetrics' FID/KID compute their distances on features we already have."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def make_extractor(backbone: str, weights: str | Path | None = None) -> nn.Module:

    if backbone == "tiny-clip":
        return ClipFeatures(WORLD_MODELS / CLIP_DIR, "tiny-clip")
    if backbone == "inception":
        return InceptionFeatures(weights)
    if backbone == "openai-clip":
        return ClipFeatures(require("openai-clip", weights), "openai-clip-vit-l14")
    if Path(backbone).is_dir():
        return ClipFeatures(backbone, Path(backbone).name)
    raise InputError("evaluate.fid_backbone", f"unknown backbone {backbone!r}",
                     "use tiny-clip, inception, openai-clip or a CLIP folder")


def module_device(module: nn.Module) -> torch.device:
    """The device a module's weights are on (CPU for a module without weights)."""
    weight = next(module.parameters(), None)
    return weight.device if weight is not None else torch.device("cpu")


def extract(extractor: nn.Module, images: list[np.ndarray], resize: str, batch_size: int = 64) -> np.ndarray:
    """Features (float64, n × d) of uint8 images, ``batch_size`` at a time on the extractor's device (images are
    resized on the CPU, as clean-fid does)."""
    device, out = module_device(extractor), []
    for start in range(0, len(images), batch_size):
        x = resize_images(images[start:start + batch_size], extractor.resolution, resize)
        out.append(extractor(x.to(device)).double().cpu().numpy())
    return np.concatenate(out)


def split_digest(manifests, dataset_id: str, role: str) -> str:
    """What the real split holds: the hash of its metadata (local folders) or its revision (hub)."""

    spec = manifests.dataset(dataset_id)
    if spec.source_kind == "hub":
        return f"rev-{spec.revision}"
    split = spec.splits.train if role == "train" else spec.splits.eval
    meta = dataset_folder(manifests, spec) / split / "metadata.jsonl"
    return hashlib.sha256(meta.read_bytes()).hexdigest()[:12] if meta.is_file() else "unbuilt"


def real_features(manifests, dataset_id: str, extractor: nn.Module, resize: str, role: str = "eval",
                  root: Path | None = None) -> np.ndarray:
    """Features of a dataset's real held-out images, cached per (dataset, split, backbone + weights hash, resize,
    resolution, split contents) and reused for every model."""

    images, _ = load_dataset_split(manifests, dataset_id, role)  # builds world datasets on demand
    # the samples are square and the model was trained on centre crops: the real images are centre-cropped too,
    # not squashed to a square by the backbone's resize
    images = images.map(centre_square) if isinstance(images, LazyImages) else [centre_square(im) for im in images]
    key = "-".join([dataset_id, role, extractor.name, extractor.weights_sha256[:12], resize, "centre",
                    str(extractor.resolution), split_digest(manifests, dataset_id, role)])
    path = Path(root or cache_dir() / "stats") / f"{key}.npz"
    if path.is_file():
        return np.load(path)["features"]
    features = extract(extractor, images, resize)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.savez(fh, features=features)
    return features


# ------------------------------------------------------------------------------------------------ metrics


def fid_kid(real: np.ndarray, fake: np.ndarray, kid_subsets: int = 100, seed: int = 0) -> dict[str, tuple]:
    """FID and KID of two feature sets with torchmetrics and clean-fid: {name: (value, std or None)}."""
    from cleanfid.fid import frechet_distance, kernel_distance
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    d = real.shape[1]
    fid = FrechetInceptionDistance(feature=PrecomputedFeatures(d))
    fid.update(torch.from_numpy(real), real=True)
    fid.update(torch.from_numpy(fake), real=False)
    subset = min(len(real), len(fake))
    with warnings.catch_warnings():  # "KID will save all extracted features": yes, that is what we want
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=PrecomputedFeatures(d), subsets=kid_subsets, subset_size=subset)
    kid.update(torch.from_numpy(real), real=True)
    kid.update(torch.from_numpy(fake), real=False)
    torch.manual_seed(seed)  # KID draws its subsets from the global RNG
    kid_mean, kid_std = kid.compute()
    np.random.seed(seed)  # clean-fid's kernel_distance too
    kid_clean = kernel_distance(real, fake, num_subsets=kid_subsets, max_subset_size=subset)
    mu_r, mu_f = real.mean(0), fake.mean(0)
    fid_clean = frechet_distance(mu_r, np.cov(real, rowvar=False), mu_f, np.cov(fake, rowvar=False))
    return {"fid": (float(fid.compute()), None), "fid_clean": (float(fid_clean), None),
            "kid": (float(kid_mean), float(kid_std)), "kid_clean": (float(kid_clean), None)}


def clip_model_loader(clip_model: str, weights: str | Path | None = None):
    """What torchmetrics' ``CLIPScore(model_name_or_path=...)`` gets: a loader of a local folder, or a hub id."""

    if clip_model == "tiny-clip":
        folder = WORLD_MODELS / CLIP_DIR
    elif clip_model == "openai-clip":
        folder = require("openai-clip", weights)
    elif Path(clip_model).is_dir():
        folder = Path(clip_model)
    else:
        return clip_model, clip_model, ""  # a hub id: torchmetrics loads it (from the HF cache when offline)
    return partial(load_clip, folder), folder.name, sha256(clip_weights(folder))


@torch.no_grad()
def clip_score(images: np.ndarray, captions: list[str], model_name_or_path, batch_size: int = 64,
               device: str | torch.device = "cpu") -> float:
    """torchmetrics' CLIP score (100 × cosine, clipped at 0) of uint8 images (n, h, w, 3) and their captions,
    ``batch_size`` at a time on ``device``."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    metric = CLIPScore(model_name_or_path=model_name_or_path).to(device)
    for start in range(0, len(images), batch_size):
        metric.update(torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2).to(device),
                      captions[start:start + batch_size])
    return float(metric.compute())


def load_image_reward(weights: str | Path | None = None, device: str = "cpu"):
    """ImageReward-v1.0 from the weights folder. Its BLIP hard-codes a hub download of the BERT tokenizer; here
    that name is routed to the folder's ``bert-base-uncased`` copy, so nothing reaches for the network."""
    from unittest import mock

    folder = require("image-reward", weights)
    tokenizer_dir = require("bert-base-uncased", weights)
    import ImageReward as RM
    from ImageReward.models.BLIP import blip
    from transformers import BertTokenizer

    class LocalBertTokenizer(BertTokenizer):
        @classmethod
        def from_pretrained(cls, name, *args, **kwargs):
            source = tokenizer_dir if name == "bert-base-uncased" else name
            return BertTokenizer.from_pretrained(source, *args, **kwargs)

    with mock.patch.object(blip, "BertTokenizer", LocalBertTokenizer):
        return RM.load(str(folder / "ImageReward.pt"), device=device, med_config=str(folder / "med_config.json"))


@torch.no_grad()
def image_reward_scores(model, images: np.ndarray, captions: list[str], batch_size: int = 16) -> np.ndarray:
    """One ImageReward score per (image, caption). Images sharing a caption are scored together (the model's
    ``score(prompt, [images])``), at most ``batch_size`` at a time; the result is in input order."""
    from PIL import Image

    scores = np.full(len(images), np.nan)
    by_caption: dict[str, list[int]] = {}
    for i, caption in enumerate(captions):
        by_caption.setdefault(caption, []).append(i)
    for caption, idx in by_caption.items():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size]
            pil = [Image.fromarray(images[i]) for i in chunk]
            out = model.score(caption, pil if len(pil) > 1 else pil[0])
            scores[chunk] = np.atleast_1d(np.asarray(out, dtype=float))
    return scores


# ------------------------------------------------------------------------------------------------ a run


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for name in ("torch", "torchmetrics", "clean-fid", "transformers", "image-reward"):
        try:
            parts.append(f"{name}={version(name)}")
        except PackageNotFoundError:
            pass
    return ";".join(parts)


def _row(metric: str, value=None, std=None, reason: str = "", **prov) -> dict:
    return {"metric": metric, "value": value, "std": std, "direction": DIRECTIONS[metric],
            "status": "computed" if value is not None else "not computed", "reason": reason, **prov}


def _fid_kid_rows(fake, real_feats_fn, settings: EvalSettings, weights, wanted: set, versions: str,
                  missing, device: torch.device) -> list[dict]:
    """FID and KID rows (both backends), or not-computed rows with the reason: weights missing, or fewer than
    ``MIN_FID_IMAGES`` images on a side."""
    backends = [(m, lib) for m, lib in FID_KID_BACKENDS if m.split("_")[0] in wanted]
    try:
        extractor = make_extractor(settings.fid_backbone, weights).to(device)
    except InputError as err:
        return [row for m, lib in backends for row in missing([m], err, library=lib, backbone=settings.fid_backbone)]
    real = real_feats_fn(extractor)
    if min(len(real), len(fake)) < MIN_FID_IMAGES:
        reason = (f"FID and KID need at least {MIN_FID_IMAGES} generated and {MIN_FID_IMAGES} real images "
                  f"(n_fake={len(fake)}, n_real={len(real)}): generate more samples (generate.n_samples) or use a "
                  "dataset with a larger held-out split")
        return [_row(m, reason=reason, library=lib, backbone=extractor.name, n_fake=len(fake), n_real=len(real),
                     versions=versions) for m, lib in backends]
    fake_feats = extract(extractor, list(fake), settings.resize)
    warning = ""
    if min(len(real), len(fake_feats)) < extractor.num_features:
        warning = (f"n_fake={len(fake_feats)}, n_real={len(real)} below the feature dimension "
                   f"{extractor.num_features}: FID is biased (singular covariance); compare KID")
        warnings.warn(warning, stacklevel=3)
    values = fid_kid(real, fake_feats, settings.kid_subsets, settings.seed)
    prov = {"backbone": extractor.name, "weights_sha256": extractor.weights_sha256, "resize": settings.resize,
            "resolution": extractor.resolution, "n_real": len(real), "n_fake": len(fake_feats), "warning": warning,
            "versions": versions}
    return [_row(m, *values[m], library=lib, **prov) for m, lib in backends]


def evaluate_samples(fake: np.ndarray, captions: list[str], real_feats_fn, settings: EvalSettings,
                     weights: str | Path | None = None, device: str | torch.device = "cpu") -> list[dict]:
    """Metric rows for generated images (uint8 n × h × w × 3) and their captions. ``real_feats_fn(extractor)``
    returns the real features for an extractor (cached). Feature extraction, CLIP score and ImageReward run on
    ``device``; the distances (FID, KID) are computed in float64 on the CPU."""
    rows, versions, device = [], _versions(), torch.device(device)
    wanted = set(settings.metrics)

    def missing(metrics, err, **prov):
        if not settings.allow_missing:
            raise err
        reason = str(err).replace(str(Path.home()) + "/", "~/")  # a recorded reason names no one's home folder
        return [_row(m, reason=reason, versions=versions, n_fake=len(fake), **prov) for m in metrics]

    if wanted & {"fid", "kid"}:
        rows += _fid_kid_rows(fake, real_feats_fn, settings, weights, wanted, versions, missing, device)
    if "clip_score" in wanted:
        try:
            loader, name, digest = clip_model_loader(settings.clip_model, weights)
        except InputError as err:
            rows += missing(["clip_score"], err, library="torchmetrics", backbone=settings.clip_model)
        else:
            rows.append(_row("clip_score", clip_score(fake, captions, loader, device=device), library="torchmetrics",
                             backbone=name,
                             weights_sha256=digest, resize="processor", n_fake=len(fake), versions=versions))
    if "image_reward" in wanted:
        try:
            model = load_image_reward(weights, str(device))
        except InputError as err:
            rows += missing(["image_reward"], err, library="image-reward", backbone="ImageReward-v1.0")
        else:
            scores = image_reward_scores(model, fake, captions)
            rows.append(_row("image_reward", float(scores.mean()), float(scores.std()), library="image-reward",
                             backbone="ImageReward-v1.0", weights_sha256=sha256(require("image-reward", weights)
                                                                                / "ImageReward.pt"),
                             resize="processor", resolution=224, n_fake=len(fake), versions=versions))
    return rows


def evaluate_run(run_dir: str | Path, settings: EvalSettings = EvalSettings(),
                 weights: str | Path | None = None, device: str | torch.device | None = None) -> pd.DataFrame:
    """Evaluate a finished run folder: writes ``metrics.csv`` and ``evaluate.json`` (the settings) into it. The
    metrics' networks run on ``device``, by default the one the run was fine-tuned on (``train.device``: CUDA when
    present under ``auto``)."""

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    status = read_status(run_dir) or {}
    if status.get("status") != "done":
        raise InputError(run_dir, f"the run is not done (status: {status.get('status', 'none')})",
                         "finish it with `mc-bench finetune` (a failed run has no samples to evaluate)")
    manifests = load_manifests(config.manifests)
    fake, captions = read_samples(run_dir)
    _, held_out = load_dataset_split(manifests, config.dataset, "eval")
    if captions != held_out_prompts(held_out, len(captions)):  # the samples must be this dataset's
        raise InputError(run_dir / "config.json", f"the samples' captions are not the held-out captions of "
                         f"{config.dataset!r}, the dataset config.json names", "evaluate the run folder the samples "
                         "were generated in, unedited (or regenerate the samples: rerun mc-bench finetune)")
    device = torch.device(device) if device is not None else pick_device(config.train.device)
    rows = evaluate_samples(fake, captions,
                            lambda ex: real_features(manifests, config.dataset, ex, settings.resize), settings, weights,
                            device)
    samples = pd.read_csv(run_dir / SAMPLES_TABLE)
    sampler = ";".join(sorted(samples["sampler"].dropna().unique())) if "sampler" in samples else None
    table = pd.DataFrame([{"model": config.model, "dataset": config.dataset, **r, "sampler": sampler}
                          for r in rows]).reindex(columns=COLUMNS)
    with atomic_path(run_dir / METRICS_FILE) as tmp:
        table.to_csv(tmp, index=False)
    write_json(run_dir / "evaluate.json", {"settings": settings.model_dump(mode="json"),
                                           "weights_dir": str(weights) if weights else None, "device": device.type})
    return table


# ------------------------------------------------------------------------------------------------ quality label


def quality_table(metrics: pd.DataFrame, label: str = "fid") -> tuple[pd.DataFrame, dict[str, str]]:
    """From tidy metric rows of many runs to one row per (model, dataset): a column per computed metric, plus
    ``mean_rank`` — per dataset, each available metric ranks the models (1 = best, by its direction) and the
    ranks are averaged. Returns the table and the direction of every column; ``label`` must be one of them."""
    computed = metrics[metrics["status"] == "computed"]
    wide = computed.pivot_table(index=["model", "dataset"], columns="metric", values="value", aggfunc="first")
    wide.columns.name = None
    ranks = []
    for metric in wide.columns:
        ranks.append(wide[metric].groupby(level="dataset").rank(ascending=DIRECTIONS[metric] == "lower"))
    if ranks:
        wide["mean_rank"] = pd.concat(ranks, axis=1).mean(axis=1)
    directions = {c: DIRECTIONS[c] for c in wide.columns}
    if label not in directions:
        raise InputError("evaluate.quality", f"{label!r} was not computed for these runs",
                         f"use one of {sorted(directions)}, or compute it (and its weights) first")
    return wide.reset_index(), directions
