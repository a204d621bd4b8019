"""Profile: describe each dataset by what a user has before fine-tuning anything — its training split.

For every dataset: simple statistics of its images (brightness, contrast, colourfulness, saturation, edge density)
and captions (distinct captions, words per caption, vocabulary), and CLIP features of every image and caption
(the offline world's tiny CLIP by default, any CLIP folder otherwise). From the features:

* ``distributions`` — per dataset and modality (``image``, ``caption``) the Gaussian of its features (mean and
  covariance over up to ``max_images`` training pairs), as FID summarises an image set;
* ``distances`` — the Fréchet distance between every two datasets' Gaussians, per modality (clean-fid's
  ``frechet_distance``): two datasets with the same mean feature but different spreads are told apart, which a
  cosine of mean vectors cannot do;
* ``similarity`` — dataset × dataset in (0, 1]: the mean over modalities of ``exp(-FD / scale)``, ``scale`` being
  the median off-diagonal distance of that modality (recorded, so a new dataset is compared on the same scale).
  These are the data–data edges of the matching graph, and — to a model's pretraining datasets, which are profiled
  too — the model–data affinity the ranker sees;
* ``clip_pc*`` — the first principal components of the datasets' mean features (compact ranker features).

``similarity="mean-cosine"`` gives the earlier representation (the cosine of mean features, averaged over
modalities), kept for the ablation. Tables written by :func:`write_profiles` (schema)::

    dataset_features.csv   dataset, n_train, n_profiled, n_captions, words_per_caption, vocabulary, brightness,
                           contrast, colourfulness, saturation, edge_density, clip_pc0 … clip_pcK
    embeddings.csv         dataset, kind (image|caption), e0 … eD   (mean L2-normalised features)
    distributions.parquet  dataset, modality, n, mean (list of D), cov_upper (list: the covariance's upper triangle,
                           row-major, diagonal included)
    distances.csv          dataset_a, dataset_b, modality, frechet  (every unordered pair)
    similarity.csv         square matrix, first column = dataset ids (kind: similarity, larger = closer)
    profile.json           how it was made: backbone, its weights' SHA-256, resolution, similarity kind, scales,
                           max_images, the PCA of clip_pc*, library versions
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .config import Manifests
from .errors import HistoryError, InputError
from .io import library_versions, write_json
from .paths import CLIP_DIR, WORLD_MODELS
from .weights import clip_weights, sha256
from .world.data import load_dataset_split, resize_shorter
from .world.tinyclip import load_clip, pixel_values

MODALITIES = ("image", "caption")
SIMILARITIES = ("frechet", "mean-cosine")
COV_EPS = 1e-6  # added to covariance diagonals: a dataset with one distinct caption has a singular covariance


@dataclass(frozen=True)
class DatasetProfiles:
    features: pd.DataFrame  # one row per dataset
    embeddings: pd.DataFrame  # dataset, kind, e0..eD (mean features)
    similarity: pd.DataFrame  # dataset × dataset
    distributions: pd.DataFrame = field(default_factory=pd.DataFrame)  # dataset, modality, n, mean, cov_upper
    distances: pd.DataFrame = field(default_factory=pd.DataFrame)  # dataset_a, dataset_b, modality, frechet
    meta: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- statistics


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


# ------------------------------------------------------------------------------------------- features


@contextmanager
def _one_thread():
    """Torch on one thread for the block: the features (and every distance made from them) are then the same
    whatever the caller's thread count; summing in another order changes their last bits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def embed_pairs(model, processor, images: np.ndarray, captions: list[str],
                batch_size: int = 256) -> dict[str, np.ndarray]:
    """L2-normalised CLIP features of every image and every caption (float64, one row per pair), computed in one
    thread (:func:`_one_thread`)."""
    with _one_thread():
        return _embed_pairs(model, processor, images, captions, batch_size)


def _embed_pairs(model, processor, images: np.ndarray, captions: list[str], batch_size: int) -> dict[str, np.ndarray]:
    image_feats, text_feats = [], []
    for start in range(0, len(images), batch_size):
        e = model.get_image_features(pixel_values=pixel_values(images[start:start + batch_size],
                                                               processor.image_processor))
        e = getattr(e, "pooler_output", e)
        image_feats.append(torch.nn.functional.normalize(e, dim=-1))
    distinct = sorted(set(captions))  # each distinct caption is encoded once
    encoded = []
    for start in range(0, len(distinct), batch_size):
        tok = processor.tokenizer(distinct[start:start + batch_size], padding=True, truncation=True,
                                  return_tensors="pt")
        e = model.get_text_features(**tok)
        e = getattr(e, "pooler_output", e)
        encoded.append(torch.nn.functional.normalize(e, dim=-1))
    lookup = dict(zip(distinct, torch.cat(encoded).double().numpy()))
    text_feats = np.stack([lookup[c] for c in captions])
    return {"image": torch.cat(image_feats).double().numpy(), "caption": text_feats}


def gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (ddof 1; zeros for a single row) of features (n, d)."""
    mean = features.mean(axis=0)
    cov = np.cov(features, rowvar=False) if len(features) > 1 else np.zeros((features.shape[1],) * 2)
    return mean, np.atleast_2d(cov)


def frechet(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Fréchet distance of two Gaussians (clean-fid's ``frechet_distance``), covariances regularised by
    ``COV_EPS`` on the diagonal; never negative."""
    from cleanfid.fid import frechet_distance

    eye = np.eye(len(a[0])) * COV_EPS
    return max(float(frechet_distance(a[0], a[1] + eye, b[0], b[1] + eye)), 0.0)


def _symmetric(upper, dims: int) -> np.ndarray:
    """A symmetric matrix from its upper triangle (row-major, diagonal included), as ``distributions`` stores it."""
    out = np.zeros((dims, dims))
    out[np.triu_indices(dims)] = np.asarray(upper, dtype=float)
    return out + np.triu(out, 1).T


def _cosine(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    y = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    return x @ y.T


def _sized(images: list[np.ndarray], resolution: int) -> np.ndarray:
    return np.stack([im[:resolution, :resolution] for im in resize_shorter(images, resolution)])


def _subsample(n: int, max_images: int) -> np.ndarray:
    """Evenly spaced indices: at most ``max_images`` of ``n`` (deterministic)."""
    return np.arange(n) if n <= max_images else np.unique(np.linspace(0, n - 1, max_images).round().astype(int))


@dataclass(frozen=True)
class _Profiled:
    row: dict
    feats: dict[str, np.ndarray]


def _profile_one(model, processor, resolution: int, images: list[np.ndarray], captions: list[str],
                 max_images: int) -> _Profiled:
    keep = _subsample(len(images), max_images)
    sized = _sized([images[i] for i in keep], resolution)
    caps = [captions[i] for i in keep]
    feats = embed_pairs(model, processor, sized, caps)
    row = {"n_train": len(images), "n_profiled": len(keep), **caption_statistics(captions), **image_statistics(sized)}
    return _Profiled(row, feats)


def _backbone(clip_folder: str | Path | None):
    folder = Path(clip_folder) if clip_folder else WORLD_MODELS / CLIP_DIR
    weights = clip_weights(folder)  # refuses a pickled or missing weights file, with the fix
    model, processor = load_clip(folder)
    info = {"backbone": folder.name if clip_folder is None else str(folder), "weights_sha256": sha256(weights),
            "resolution": int(model.config.vision_config.image_size)}
    return model, processor, info


def profile_datasets(manifests: Manifests, dataset_ids: list[str], clip_folder: str | Path | None = None,
                     n_components: int = 4, similarity: str = "frechet", max_images: int = 1000) -> DatasetProfiles:
    """Profile the train splits of ``dataset_ids`` (see the module docstring)."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, not {similarity!r}")
    model, processor, info = _backbone(clip_folder)
    profiled = {}
    for dataset_id in dataset_ids:
        images, captions = load_dataset_split(manifests, dataset_id, "train")
        profiled[dataset_id] = _profile_one(model, processor, info["resolution"], images, captions, max_images)
    return _assemble(profiled, info, n_components, similarity, max_images)


def _assemble(profiled: dict[str, _Profiled], info: dict, n_components: int, similarity: str,
              max_images: int) -> DatasetProfiles:
    ids = list(profiled)
    stats = {m: {d: gaussian(p.feats[m]) for d, p in profiled.items()} for m in MODALITIES}
    means = {m: np.stack([stats[m][d][0] for d in ids]) for m in MODALITIES}
    dist_rows, scales = [], {}
    sims = []
    for m in MODALITIES:
        dist = np.zeros((len(ids), len(ids)))
        for i in range(len(ids)):
            for j in range(i + 1, len(ids)):
                dist[i, j] = dist[j, i] = frechet(stats[m][ids[i]], stats[m][ids[j]])
                dist_rows.append({"dataset_a": ids[i], "dataset_b": ids[j], "modality": m, "frechet": dist[i, j]})
        off = dist[~np.eye(len(ids), dtype=bool)]
        scales[m] = float(np.median(off)) if off.size and np.median(off) > 0 else 1.0
        sims.append(np.exp(-dist / scales[m]) if similarity == "frechet" else _cosine(means[m], means[m]))
    sim = np.mean(sims, axis=0)
    sim = (sim + sim.T) / 2
    np.fill_diagonal(sim, 1.0)

    features = pd.DataFrame([{"dataset": d, **p.row} for d, p in profiled.items()])
    joint = np.concatenate([means["image"], means["caption"]], axis=1)
    centre = joint.mean(0)
    k = min(n_components, len(ids) - 1)
    components = np.zeros((0, joint.shape[1]))
    if k > 0:
        _, _, vt = np.linalg.svd(joint - centre, full_matrices=False)
        components = vt[:k]
        proj = (joint - centre) @ components.T
        signs = np.sign(proj[np.argmax(np.abs(proj), axis=0), range(k)])  # deterministic sign per component
        components = components * signs[:, None]
        for i, col in enumerate(((joint - centre) @ components.T).T):
            features[f"clip_pc{i}"] = col
    dims = means["image"].shape[1]
    emb_rows = [{"dataset": d, "kind": m, **{f"e{j}": float(v[j]) for j in range(dims)}}
                for m in MODALITIES for d, v in zip(ids, means[m])]
    upper = np.triu_indices(dims)
    distributions = pd.DataFrame([{"dataset": d, "modality": m, "n": len(profiled[d].feats[m]),
                                   "mean": stats[m][d][0].tolist(), "cov_upper": stats[m][d][1][upper].tolist()}
                                  for m in MODALITIES for d in ids])
    meta = {**info, "similarity": similarity, "modalities": list(MODALITIES), "scales": scales,
            "max_images": max_images, "cov_eps": COV_EPS,
            "pca": {"centre": centre.tolist(), "components": components.tolist()}}
    return DatasetProfiles(features=features, embeddings=pd.DataFrame(emb_rows),
                           similarity=pd.DataFrame(sim, index=pd.Index(ids, name="dataset"), columns=ids),
                           distributions=distributions, distances=pd.DataFrame(dist_rows), meta=meta)


def similarity_from_profiles(profiles: DatasetProfiles, kind: str = "frechet",
                             modalities=MODALITIES) -> pd.DataFrame:
    """A dataset × dataset similarity recomputed from written profiles: ``frechet`` (the default representation,
    from ``distances``) or ``mean-cosine`` (from the mean features), over some ``modalities`` — for comparing
    representations on the same profiles."""
    ids = list(profiles.similarity.index)
    sims = []
    for m in modalities:
        if kind == "frechet":
            d = profiles.distances[profiles.distances["modality"] == m]
            dist = pd.DataFrame(0.0, index=ids, columns=ids)
            for a, b, v in zip(d["dataset_a"], d["dataset_b"], d["frechet"]):
                dist.loc[a, b] = dist.loc[b, a] = v
            off = dist.to_numpy()[~np.eye(len(ids), dtype=bool)]
            sims.append(np.exp(-dist.to_numpy() / np.median(off)))
        elif kind == "mean-cosine":
            e = profiles.embeddings[profiles.embeddings["kind"] == m].set_index("dataset").loc[ids]
            x = e.drop(columns=["kind"]).to_numpy(dtype=float)
            sims.append(_cosine(x, x))
        else:
            raise ValueError(f"kind must be one of {SIMILARITIES}, not {kind!r}")
    return pd.DataFrame(np.mean(sims, axis=0), index=ids, columns=ids)


# ------------------------------------------------------------------------------------------- a new dataset


def profile_new_dataset(profiles: DatasetProfiles, images: list[np.ndarray], captions: list[str],
                        clip_folder: str | Path | None = None) -> tuple[dict, pd.Series]:
    """Profile a new dataset exactly as ``profiles`` were made (same backbone, image count, distance and scales):
    returns its features row (``clip_pc*`` projected on the recorded PCA) and its similarity to every profiled
    dataset. The backbone's weights must be those recorded (SHA-256), or the error says which differ."""
    row, similarity, _ = _profile_against(profiles, images, captions, clip_folder)
    return row, similarity


def extend_profiles(profiles: DatasetProfiles, dataset: str, images: list[np.ndarray], captions: list[str],
                    clip_folder: str | Path | None = None) -> tuple[DatasetProfiles, dict, pd.Series]:
    """:func:`profile_new_dataset`, and ``profiles`` with the new dataset appended (its features, mean embeddings,
    Gaussians, distances and similarities; the scales and PCA stay the recorded ones), so that a history grown by
    a choice can profile the next folder against it too."""
    if dataset in set(profiles.features["dataset"]):
        raise InputError(f"dataset {dataset!r}", "is profiled already", "give the new dataset another id")
    row, similarity, gaussians = _profile_against(profiles, images, captions, clip_folder)
    upper = np.triu_indices(len(gaussians["image"][0]))
    embeddings = pd.DataFrame([{"dataset": dataset, "kind": m, **{f"e{j}": float(v) for j, v in
                                                                 enumerate(gaussians[m][0])}} for m in MODALITIES])
    distributions = pd.DataFrame([{"dataset": dataset, "modality": m, "n": int(gaussians[m][2]),
                                   "mean": gaussians[m][0].tolist(), "cov_upper": gaussians[m][1][upper].tolist()}
                                  for m in MODALITIES])
    distances = pd.DataFrame([{"dataset_a": d, "dataset_b": dataset, "modality": m, "frechet": float(v)}
                              for m in MODALITIES for d, v in gaussians[m][3].items()])
    sim = profiles.similarity.copy()
    sim.loc[dataset] = similarity.reindex(sim.columns)
    sim[dataset] = pd.concat([similarity.reindex(profiles.similarity.index), pd.Series({dataset: 1.0})])
    extended = DatasetProfiles(
        features=pd.concat([profiles.features, pd.DataFrame([{"dataset": dataset, **row}])], ignore_index=True),
        embeddings=pd.concat([profiles.embeddings, embeddings], ignore_index=True),
        similarity=sim, distributions=pd.concat([profiles.distributions, distributions], ignore_index=True),
        distances=pd.concat([profiles.distances, distances], ignore_index=True), meta=dict(profiles.meta))
    return extended, row, similarity


def _profile_against(profiles: DatasetProfiles, images, captions, clip_folder) -> tuple[dict, pd.Series, dict]:
    """The new dataset's features row, its similarity to every profiled dataset and, per modality, its Gaussian,
    feature count and Fréchet distances."""
    meta = profiles.meta
    model, processor, info = _backbone(clip_folder)
    if meta.get("weights_sha256") and info["weights_sha256"] != meta["weights_sha256"]:
        raise InputError(clip_folder or info["backbone"], "the backbone's weights differ from the ones the history "
                         f"was profiled with (SHA-256 {info['weights_sha256'][:12]} vs {meta['weights_sha256'][:12]})",
                         f"pass the backbone recorded in profile.json ({meta.get('backbone')})")
    new = _profile_one(model, processor, info["resolution"], images, captions, int(meta.get("max_images", 1000)))
    sims, gaussians = [], {}
    for m in MODALITIES:
        mine = gaussian(new.feats[m])
        rows = profiles.distributions[profiles.distributions["modality"] == m].set_index("dataset")
        dist = pd.Series({d: frechet(mine, (np.asarray(r["mean"]), _symmetric(r["cov_upper"], len(mine[0]))))
                          for d, r in rows.iterrows()})
        gaussians[m] = (mine[0], mine[1], len(new.feats[m]), dist)
        if meta.get("similarity", "frechet") == "frechet":
            sims.append(np.exp(-dist / meta["scales"][m]))
        else:
            means = np.stack([np.asarray(r["mean"]) for _, r in rows.iterrows()])
            sims.append(pd.Series(_cosine(mine[0][None], means)[0], index=rows.index))
    similarity = pd.concat(sims, axis=1).mean(axis=1)
    row = dict(new.row)
    pca = meta.get("pca", {})
    if pca.get("components"):
        joint = np.concatenate([new.feats["image"].mean(0), new.feats["caption"].mean(0)])
        for i, value in enumerate((joint - np.asarray(pca["centre"])) @ np.asarray(pca["components"]).T):
            row[f"clip_pc{i}"] = float(value)
    return row, similarity, gaussians


def add_image_dataset(history, images: list[np.ndarray], captions: list[str], dataset: str):
    """``history`` (a :class:`~mc_bench.select.history.History` whose ``profiles`` folder is known) with a new dataset
    made
    from ``images`` and ``captions``: profiled like the history's datasets (:func:`profile_new_dataset`, the backbone
    recorded in ``profile.json``), with its features and its similarity to every profiled dataset. A dataset of the
    history keeps its profile and loses its runs (it is recommended for as if it were new)."""
    if history.profiles is None:
        raise HistoryError(history.source, "the history records no dataset profiles, so a new image folder cannot be "
                           "compared with its datasets", "use a study folder (results/<profile>) or a history written "
                           "by mc-bench run, whose history.yaml names its profiles folder")
    if dataset in history.datasets:
        return history.without_runs(dataset)
    profiles = read_profiles(history.profiles)
    backbone = profiles.meta.get("backbone")
    features, similarity = profile_new_dataset(profiles, images, captions, None if backbone == CLIP_DIR else backbone)
    if dataset in history.dataset_features.index:  # profiled already (e.g. a pretraining dataset): keep it
        return history
    sim = history.dataset_similarity()
    return history.with_dataset(dataset, {k: v for k, v in features.items() if k in history.dataset_features},
                                similarity.reindex(sim.index).to_dict() if sim is not None else None)


# ------------------------------------------------------------------------------------------- files


def write_profiles(profiles: DatasetProfiles, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    profiles.features.to_csv(folder / "dataset_features.csv", index=False)
    profiles.embeddings.to_csv(folder / "embeddings.csv", index=False)
    profiles.similarity.to_csv(folder / "similarity.csv")
    if len(profiles.distributions):
        profiles.distributions.to_parquet(folder / "distributions.parquet", index=False)
        profiles.distances.to_csv(folder / "distances.csv", index=False)
    write_json(folder / "profile.json", {**profiles.meta, "versions": library_versions()})
    return folder


def read_profiles(folder: str | Path) -> DatasetProfiles:
    """The tables :func:`write_profiles` wrote (an :class:`~mc_bench.errors.InputError` names a missing one)."""
    folder = Path(folder)
    for name in ("dataset_features.csv", "similarity.csv", "profile.json", "distributions.parquet"):
        if not (folder / name).is_file():
            raise InputError(folder / name, "missing from the profiles folder",
                             "profile the datasets again (notebook 01_profile, or mc-bench run)")
    try:
        meta = json.loads((folder / "profile.json").read_text())
    except json.JSONDecodeError as err:
        raise InputError(folder / "profile.json", f"not valid JSON (line {err.lineno})",
                         "profile the datasets again (notebook 01_profile, or mc-bench run)") from None
    return DatasetProfiles(features=pd.read_csv(folder / "dataset_features.csv"),
                           embeddings=pd.read_csv(folder / "embeddings.csv"),
                           similarity=pd.read_csv(folder / "similarity.csv", index_col=0),
                           distributions=pd.read_parquet(folder / "distributions.parquet"),
                           distances=pd.read_csv(folder / "distances.csv"),
                           meta=meta)
