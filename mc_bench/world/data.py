"""Dataset folders: resolving a manifest entry to files, validating them, and reading them.

Local datasets follow the Hugging Face *imagefolder* layout: one sub-folder per split, each holding the images and
a ``metadata.jsonl`` whose rows have ``file_name`` and the caption column::

    my-dataset/
      train/metadata.jsonl   {"file_name": "0001.png", "text": "a red triangle on a blue background"}
      train/0001.png
      test/metadata.jsonl
      test/...

:func:`validate_folder` checks every row and image before anything is read for training, and raises one
:class:`~mc_bench.errors.ManifestError` naming the file, the row and the fix. :func:`load_hf_dataset` opens the
same folder (or a hub dataset id) through ``datasets.load_dataset``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..config import DatasetSpec, Manifests, WorldSettings, resolve_folder
from ..errors import InputError, ManifestError
from ..images import LazyImages, rgb8
from ..paths import cache_dir, hub_id

MODE_FOR_CHANNELS = {3: "RGB", 1: "L"}


@dataclass(frozen=True)
class SplitSummary:
    split: str
    n_images: int
    example_caption: str


def dataset_folder(manifests: Manifests, spec: DatasetSpec, root: Path | None = None) -> Path:
    """The local folder of a ``world:`` or folder dataset (hub datasets have none)."""
    if spec.source_kind == "world":
        from .generators import world_folder

        return world_folder(root or cache_dir(), spec, manifests.world.resolution)
    if spec.source_kind == "folder":
        return resolve_folder(manifests.folder, spec.source)
    raise ManifestError(
        f"datasets.yaml, entry {spec.id!r}", "a hub dataset has no local folder",
        "use load_hf_dataset(), or save it with `datasets` as an imagefolder and point `source` at that folder",
    )


def _read_metadata(path: Path) -> list[dict]:
    if not path.is_file():
        raise ManifestError(path, "metadata.jsonl is missing",
                            "add one JSON object per image with `file_name` and a caption")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ManifestError(path, f"not UTF-8 text (byte {err.start}: {err.reason})",
                            "save metadata.jsonl as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ManifestError(f"{path}, row {line_no}", f"not valid JSON ({err.msg})",
                                "write one JSON object per line") from None
        if not isinstance(row, dict):
            raise ManifestError(f"{path}, row {line_no}", "a row must be a JSON object",
                                "write {\"file_name\": ..., ...}")
        rows.append((line_no, row))
    return rows


def _check_image(path: Path, where: str, channels: int) -> None:
    try:
        with Image.open(path) as im:
            im.load()  # decodes every byte: catches truncated and corrupt files
            mode = im.mode
    except Image.DecompressionBombError as err:
        raise ManifestError(where, f"image {path.name} is too large to decode safely ({err})",
                            "shrink it, or remove its row from metadata.jsonl") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ManifestError(where, f"image {path.name} is corrupt or truncated ({err})",
                            "re-export the image or remove its row from metadata.jsonl") from None
    expected = MODE_FOR_CHANNELS[channels]
    if mode != expected:
        raise ManifestError(
            where, f"image {path.name} has mode {mode!r} ({len(mode) if mode != 'P' else 'palette'} channels), "
            f"expected {expected!r} ({channels} channels)",
            f"convert it, e.g. Image.open(f).convert({expected!r}).save(f), or set `channels` in the manifest",
        )


def validate_split(folder: Path, split: str, spec: DatasetSpec, min_images: int) -> SplitSummary:
    """Check one split folder row by row; returns its size and an example caption."""
    split_dir = (folder / split)
    meta = split_dir / "metadata.jsonl"
    if not split_dir.is_dir():
        raise ManifestError(folder, f"split folder {split!r} is missing",
                            f"create {split}/ with images and metadata.jsonl, or change `splits` in the manifest")
    rows = _read_metadata(meta)
    root = split_dir.resolve()
    seen = set()
    for line_no, row in rows:
        where = f"{meta}, row {line_no}"
        name = row.get("file_name")
        if not isinstance(name, str) or not name:
            raise ManifestError(where, "`file_name` is missing", "give every row the image's file name")
        target = (split_dir / name).resolve()
        if not target.is_relative_to(root):
            raise ManifestError(where, f"file_name {name!r} escapes the data folder {root}",
                                "use a path inside the split folder (no '..' or absolute paths)")
        if name in seen:
            raise ManifestError(where, f"file_name {name!r} is listed twice", "list each image once")
        seen.add(name)
        if not target.is_file():
            raise ManifestError(where, f"image {name!r} is missing", f"add {target} or remove the row")
        caption = row.get(spec.caption_column)
        if not isinstance(caption, str) or not caption.strip():
            raise ManifestError(where, f"empty caption in column {spec.caption_column!r}",
                                "write a caption that describes the image, or remove the row")
        _check_image(target, where, spec.channels)
    if len(rows) < min_images:
        raise ManifestError(meta, f"split {split!r} has {len(rows)} images, fewer than the minimum {min_images}",
                            "add images, or lower `world.min_split_images` in datasets.yaml")
    return SplitSummary(split, len(rows), rows[0][1][spec.caption_column])


def validate_folder(folder: Path, spec: DatasetSpec, world: WorldSettings) -> dict[str, SplitSummary]:
    """Validate the train and eval splits of a dataset folder. Reads only; writes nothing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ManifestError(f"datasets.yaml, entry {spec.id!r}", f"dataset folder {folder} does not exist",
                            "fix `source`, or build world datasets with `mc-bench world datasets`")
    return {role: validate_split(folder, name, spec, world.min_split_images)
            for role, name in (("train", spec.splits.train), ("eval", spec.splits.eval))}


def _decode(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def read_split_images(folder: Path, split: str, caption_column: str = "text") -> tuple[LazyImages, list[str]]:
    """The images of a validated split, each as it is (``uint8``, any size), decoded when indexed (a split of any
    size is never in memory whole), and their captions."""
    rows = _read_metadata(Path(folder) / split / "metadata.jsonl")
    paths = [Path(folder) / split / row["file_name"] for _, row in rows]
    return LazyImages(len(paths), lambda i: _decode(paths[i])), [row[caption_column] for _, row in rows]


def read_split(folder: Path, split: str, caption_column: str = "text") -> tuple[np.ndarray, list[str]]:
    """All images of a validated split of one size (a world dataset's) as a ``uint8`` array (n, h, w, c)."""
    images, captions = read_split_images(folder, split, caption_column)
    return np.stack(images[:]), captions


FEW_IMAGES = 16  # a new folder with fewer images is profiled with a warning
MAX_SIDE = 1024  # a new folder's images are read at most this large (profiles use a few hundred pixels)


def read_image_folder(folder: str | Path, caption_column: str = "text") -> tuple[list[np.ndarray], list[str]]:
    """A new dataset a user points at: ``folder/metadata.jsonl`` (or ``folder/train/metadata.jsonl``) with
    ``file_name`` and a caption per row. Images of any size and mode, returned as RGB ``uint8`` arrays. Every row is
    checked first; a problem is one :class:`ManifestError` naming the file and row."""
    folder = Path(folder)
    split_dir = folder if (folder / "metadata.jsonl").is_file() else folder / "train"
    meta = split_dir / "metadata.jsonl"
    if not meta.is_file():
        raise ManifestError(folder, "no metadata.jsonl (looked in the folder and in train/)",
                            'write one JSON object per image, {"file_name": ..., "text": <caption>}, into '
                            'metadata.jsonl')
    rows = _read_metadata(meta)
    if not rows:
        raise ManifestError(meta, "no rows", "list the folder's images in metadata.jsonl")
    names = [row.get("file_name") for _, row in rows]
    repeated = sorted({n for n in names if isinstance(n, str) and names.count(n) > 1})
    if repeated:
        warnings.warn(f"{meta}: {len(repeated)} images are listed more than once (e.g. {repeated[0]!r}): each "
                      "counts again in the profile", stacklevel=2)
    if len(rows) < FEW_IMAGES:
        warnings.warn(f"{meta}: {len(rows)} images; a profile (and a similarity) from fewer than {FEW_IMAGES} "
                      "is noisy", stacklevel=2)
    images, captions = [], []
    root = split_dir.resolve()
    for line_no, row in rows:
        where = f"{meta}, row {line_no}"
        name, caption = row.get("file_name"), row.get(caption_column)
        if not isinstance(name, str) or not name:
            raise ManifestError(where, "`file_name` is missing", "give every row the image's file name")
        try:
            target = (split_dir / name).resolve()
        except (OSError, RuntimeError):  # a symlink loop
            raise ManifestError(where, f"image {name!r} is a symbolic link that loops",
                                "replace it by the image file") from None
        if not target.is_relative_to(root) or not target.is_file():
            raise ManifestError(where, f"image {name!r} is missing or outside the folder", f"add {split_dir / name}")
        if caption_column not in row:
            raise ManifestError(where, f"no {caption_column!r} key (the row has {sorted(row)})",
                                f"name the caption {caption_column!r}: "
                                f"{{\"file_name\": ..., \"{caption_column}\": ...}}")
        if not isinstance(caption, str) or not caption.strip():
            raise ManifestError(where, f"empty caption in column {caption_column!r}", "write a caption for the image")
        try:
            with Image.open(target) as im:
                images.append(rgb8(im, MAX_SIDE))
        except Image.DecompressionBombError as err:
            raise ManifestError(where, f"image {name} is too large to decode safely ({err})",
                                "shrink it, or remove its row from metadata.jsonl") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise ManifestError(where, f"image {name} is corrupt or truncated ({err})",
                                "re-export the image or remove its row from metadata.jsonl") from None
        captions.append(caption)
    return images, captions


def load_hf_dataset(manifests: Manifests, spec: DatasetSpec):
    """A ``datasets.DatasetDict`` for any source: local folders through the ``imagefolder`` builder, hub ids
    through ``datasets.load_dataset(id, revision=...)``. Columns are renamed to ``image`` and ``text``."""
    import datasets

    if spec.source_kind == "hub":
        ds = _load_hub(spec)
    else:
        ds = datasets.load_dataset("imagefolder", data_dir=str(dataset_folder(manifests, spec)))
    renames = {old: new for old, new in ((spec.image_column, "image"), (spec.caption_column, "text")) if old != new}
    return ds.rename_columns(renames) if renames else ds


def read_world_split(manifests: Manifests, dataset_id: str, role: str = "train",
                     root: Path | None = None) -> tuple[np.ndarray, list[str]]:
    """Images and captions of the ``train`` or ``eval`` split of a ``world:`` dataset, built first if needed."""
    from .generators import build_dataset, world_folder

    spec = manifests.dataset(dataset_id)
    folder = world_folder(root or cache_dir(), spec, manifests.world.resolution)
    try:
        build_dataset(spec, manifests.world.resolution, manifests.world.eval_fraction, folder)
    except PermissionError as err:
        raise InputError(folder.parent, f"the cache folder cannot be written ({err.strerror})",
                         "set MC_BENCH_CACHE to a folder you can write to") from None
    split = spec.splits.train if role == "train" else spec.splits.eval
    return read_split(folder, split, spec.caption_column)


def load_dataset_split(manifests: Manifests, dataset_id: str,
                       role: str) -> tuple[Sequence[np.ndarray], list[str]]:
    """Images (uint8 arrays, any size) and captions of the ``train`` or ``eval`` split of a manifest dataset. Folder
    and hub splits are :class:`~mc_bench.images.LazyImages`, decoded batch by batch as they are used (memory stays
    bounded whatever the split's size); a world split (a few hundred 16×16 images) is a list."""
    spec = manifests.dataset(dataset_id)
    if spec.source_kind == "world":
        images, captions = read_world_split(manifests, dataset_id, role)
        return list(images), captions
    if spec.source_kind == "folder":
        return read_split_images(dataset_folder(manifests, spec),
                                 spec.splits.train if role == "train" else spec.splits.eval, spec.caption_column)
    # a hub split name may use the `datasets` slicing syntax, e.g. "train[:90%]" / "train[90%:]"
    split = _load_hub(spec, split=spec.splits.train if role == "train" else spec.splits.eval)
    column = spec.image_column
    images = LazyImages(len(split), lambda i: np.asarray(split[i][column].convert("RGB")))
    return images, [caption_text(c) for c in split[spec.caption_column]]  # a text column decodes no image


def hub_offline() -> bool:
    """Whether the hub may not be reached (``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE``)."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_snapshot(spec: DatasetSpec) -> Path:
    """The local hub cache's snapshot of a hub dataset at its revision (``huggingface_hub.snapshot_download`` with
    ``local_files_only``), or an :class:`InputError` saying how to put it there."""
    from huggingface_hub import snapshot_download

    repo = hub_id(spec.source)
    try:
        return Path(snapshot_download(repo, repo_type="dataset", revision=spec.revision, local_files_only=True))
    except Exception as err:  # not in the cache at that revision
        raise InputError(f"hf:{repo}@{spec.revision}", f"offline, and the dataset is not in the local hub cache at "
                         f"that revision ({type(err).__name__})", "on a machine that reaches the hub: huggingface-cli "
                         f"download --repo-type dataset {repo} --revision {spec.revision}, then copy $HF_HOME "
                         "here") from None


def _load_hub(spec: DatasetSpec, split: str | None = None):
    """``datasets.load_dataset`` of a hub dataset at its revision, with the manifest's ``params.config`` (a
    configuration name) and ``params.data_dir`` (a folder of the repository, e.g. one configuration of a dataset
    whose loading script was replaced by the hub's Parquet conversion). Offline, the repository's snapshot in the
    local hub cache is loaded as the folder it is (``datasets`` cannot resolve a hub id without the hub)."""
    import datasets

    source = str(hub_snapshot(spec)) if hub_offline() else hub_id(spec.source)
    revision = None if hub_offline() else spec.revision
    return datasets.load_dataset(source, spec.params.get("config"), revision=revision,
                                 data_dir=spec.params.get("data_dir"), split=split)


def caption_text(value) -> str:
    """A caption cell as text; a list of captions (several per image, as flickr30k has) gives its first."""
    if isinstance(value, (list, tuple)):
        return str(value[0]) if len(value) else ""
    return str(value)


def resize_one(image: np.ndarray, resolution: int) -> np.ndarray:
    """Resize an image so that its shorter side is ``resolution`` (bilinear, as diffusers' scripts do); a grey
    image becomes RGB."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    h, w = image.shape[:2]
    if min(h, w) != resolution:
        scale = resolution / min(h, w)
        size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    return image


def resize_shorter(images: Sequence[np.ndarray], resolution: int) -> Sequence[np.ndarray]:
    """:func:`resize_one` for every image: on access for :class:`~mc_bench.images.LazyImages` (nothing is decoded
    here), at once for a list."""
    if isinstance(images, LazyImages):
        return images.map(lambda image: resize_one(image, resolution))
    return [resize_one(image, resolution) for image in images]


def validate_dataset(manifests: Manifests, dataset_id: str) -> None:
    """Check a manifest dataset before anything reads it for training: a folder dataset row by row and image by
    image (:func:`validate_folder`); world datasets are validated as they are built; hub datasets by ``datasets``
    (offline: that the local hub cache holds them at their revision)."""
    spec = manifests.dataset(dataset_id)
    if spec.source_kind == "folder":
        validate_folder(dataset_folder(manifests, spec), spec, manifests.world)
    elif spec.source_kind == "hub" and hub_offline():  # offline, a dataset must be in the hub cache: said up front
        hub_snapshot(spec)
