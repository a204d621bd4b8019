"""Profile: describe each target dataset by what a user has before fine-tuning anything — its training split.

For every dataset: simple statistics of its images (brightness, contrast, colourfulness, saturation, edge density)
and captions (distinct captions, words per caption, vocabulary), and CLIP embeddings of images and captions
(the offline world's tiny CLIP by default, any CLIP folder otherwise). From the embeddings:

* ``similarity`` — dataset × dataset: the mean of the cosines of the datasets' mean image embeddings and of their
  mean caption embeddings (the data–data edges of the matching graph);
* ``clip_pc*`` — the first principal components of the datasets' mean embeddings (compact ranker features;
  computed over the profiled datasets, without any fine-tuning result).

Tables written by :func:`write_profiles` (schema)::

    dataset_features.csv   dataset, n_train, n_captions, words_per_caption, vocabulary, brightness, contrast,
                           colourfulness, saturation, edge_density, clip_pc0 … clip_pcK
    embeddings.csv         dataset, kind (image|caption), e0 … eD  (mean L2-normalised embeddings)
    similarity.csv         square matrix, first column = dataset ids (kind: similarity, larger = closer)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .config import Manifests


@dataclass(frozen=True)
class DatasetProfiles:
    features: pd.DataFrame  # one row per dataset
    embeddings: pd.DataFrame  # dataset, kind, e0..eD
    similarity: pd.DataFrame  # dataset × dataset


def image_statistics(images: np.ndarray) -> dict[str, float]:
    """Brightness and contrast (of luminance, 0–1), colourfulness (Hasler & Süsstrunk, 2003), mean HSV
    saturation, and edge density (mean absolute luminance gradient) of uint8 images (n, h, w, 3)."""
    x = images.astype(np.float64) / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    lum = 0.299 * r + 0.587 * g + 0.114 * b
    rg, yb = r - g, 0.5 * (r + g) - b
    colourfulness = np.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * np.sqrt(rg.mean() ** 2 + yb.mean() ** 2)
    cmax, cmin = x.max(axis=-1), x.min(axis=-1)
    saturation = np.where(cmax > 0, (cmax - cmin) / np.maximum(cmax, 1e-12), 0.0)
    edges = np.abs(np.diff(lum, axis=1)).mean() + np.abs(np.diff(lum, axis=2)).mean()
    return {"brightness": float(lum.mean()), "contrast": float(lum.std()), "colourfulness": float(colourfulness),
            "saturation": float(saturation.mean()), "edge_density": float(edges)}


def caption_statistics(captions: list[str]) -> dict[str, float]:
    words = [c.lower().split() for c in captions]
    return {"n_captions": len(set(captions)), "words_per_caption": float(np.mean([len(w) for w in words])),
            "vocabulary": len({t for w in words for t in w})}


@torch.no_grad()
def mean_embeddings(model, processor, images: np.ndarray, captions: list[str], batch_size: int = 256):
    """Mean L2-normalised CLIP embeddings of the images and of the distinct captions."""
    from .tinyclip import pixel_values

    image_embs, text_embs = [], []
    for start in range(0, len(images), batch_size):
        e = model.get_image_features(pixel_values=pixel_values(images[start:start + batch_size],
                                                               processor.image_processor))
        e = getattr(e, "pooler_output", e)
        image_embs.append(torch.nn.functional.normalize(e, dim=-1))
    distinct = sorted(set(captions))
    for start in range(0, len(distinct), batch_size):
        tok = processor.tokenizer(distinct[start:start + batch_size], padding=True, truncation=True,
                                  return_tensors="pt")
        e = model.get_text_features(**tok)
        e = getattr(e, "pooler_output", e)
        text_embs.append(torch.nn.functional.normalize(e, dim=-1))
    return torch.cat(image_embs).mean(0).numpy(), torch.cat(text_embs).mean(0).numpy()


def _cosine(x: np.ndarray) -> np.ndarray:
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x @ x.T


def profile_datasets(manifests: Manifests, dataset_ids: list[str], clip_folder: str | Path | None = None,
                     n_components: int = 4) -> DatasetProfiles:
    """Profile the train splits of ``dataset_ids`` (see the module docstring)."""
    from .finetune import load_dataset_split, resize_shorter
    from .tinyclip import load_clip
    from .zoo import CLIP_DIR, WORLD_MODELS

    model, processor = load_clip(clip_folder or WORLD_MODELS / CLIP_DIR)
    resolution = model.config.vision_config.image_size
    rows, img_means, txt_means = [], [], []
    for dataset_id in dataset_ids:
        images, captions = load_dataset_split(manifests, dataset_id, "train")
        sized = np.stack([im[:resolution, :resolution] for im in resize_shorter(images, resolution)])
        img, txt = mean_embeddings(model, processor, sized, captions)
        img_means.append(img)
        txt_means.append(txt)
        rows.append({"dataset": dataset_id, "n_train": len(images), **caption_statistics(captions),
                     **image_statistics(sized)})
    img_means, txt_means = np.stack(img_means), np.stack(txt_means)
    sim = (_cosine(img_means) + _cosine(txt_means)) / 2
    sim = (sim + sim.T) / 2
    np.fill_diagonal(sim, 1.0)
    features = pd.DataFrame(rows)
    joint = np.concatenate([img_means, txt_means], axis=1)
    joint = joint - joint.mean(0)
    k = min(n_components, len(dataset_ids) - 1)
    if k > 0:
        u, s, _ = np.linalg.svd(joint, full_matrices=False)
        signs = np.sign(u[np.argmax(np.abs(u), axis=0), range(u.shape[1])])  # deterministic sign per component
        pcs = (u * s * signs)[:, :k]
        for i in range(k):
            features[f"clip_pc{i}"] = pcs[:, i]
    dims = img_means.shape[1]
    emb_rows = [{"dataset": d, "kind": kind, **{f"e{j}": float(v[j]) for j in range(dims)}}
                for kind, means in (("image", img_means), ("caption", txt_means))
                for d, v in zip(dataset_ids, means)]
    similarity = pd.DataFrame(sim, index=pd.Index(dataset_ids, name="dataset"), columns=dataset_ids)
    return DatasetProfiles(features=features, embeddings=pd.DataFrame(emb_rows), similarity=similarity)


def write_profiles(profiles: DatasetProfiles, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    profiles.features.to_csv(folder / "dataset_features.csv", index=False)
    profiles.embeddings.to_csv(folder / "embeddings.csv", index=False)
    profiles.similarity.to_csv(folder / "similarity.csv")
    return folder


def read_profiles(folder: str | Path) -> DatasetProfiles:
    folder = Path(folder)
    return DatasetProfiles(features=pd.read_csv(folder / "dataset_features.csv"),
                           embeddings=pd.read_csv(folder / "embeddings.csv"),
                           similarity=pd.read_csv(folder / "similarity.csv", index_col=0))
