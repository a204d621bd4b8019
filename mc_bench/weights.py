"""Metric backbones from a local weights folder — never from the network at evaluation time.

The folder is ``$MC_BENCH_WEIGHTS`` (or the ``weights`` argument), default ``~/.cache/mc_bench/weights``::

    inception-2015-12-05.pt          FID/KID Inception-v3 (TorchScript; the one clean-fid and StyleGAN use)
    clip-vit-large-patch14/          OpenAI CLIP ViT-L/14 (torchmetrics CLIPScore's default), save_pretrained layout
    ImageReward/ImageReward.pt       ImageReward-v1.0 and its med_config.json
    bert-base-uncased/               the BERT tokenizer ImageReward's BLIP text encoder uses

The offline world's tiny CLIP lives in the repository (``world_models/tiny-clip``) and is always present.
``mc-bench weights`` lists what is present (with SHA-256 hashes); ``mc-bench weights --fetch NAME`` downloads a
backbone into the folder on a machine that reaches the hub.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .paths import CLIP_DIR, WORLD_MODELS, cache_dir, hub_id


@dataclass(frozen=True)
class Backbone:
    name: str
    path: str  # relative to the weights folder
    main_file: str  # relative to ``path`` for folders ("" when path is the file)
    used_by: str
    source: str  # where --fetch gets it


BACKBONES: dict[str, Backbone] = {b.name: b for b in (
    Backbone("inception", "inception-2015-12-05.pt", "",
             "FID/KID with the standard Inception-v3 (fid_backbone: inception)",
             "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"),
    Backbone("openai-clip", "clip-vit-large-patch14", "model.safetensors",
             "CLIP score with OpenAI CLIP ViT-L/14 (clip_model: openai-clip)", "hf:openai/clip-vit-large-patch14"),
    Backbone("image-reward", "ImageReward", "ImageReward.pt", "ImageReward-v1.0 (metric image_reward)",
             "hf:THUDM/ImageReward"),
    Backbone("bert-base-uncased", "bert-base-uncased", "vocab.txt", "the tokenizer of ImageReward's text encoder",
             "hf:google-bert/bert-base-uncased"),
)}


def weights_dir(folder: str | os.PathLike | None = None) -> Path:
    """The weights folder: ``folder``, else ``$MC_BENCH_WEIGHTS``, else ``<cache>/weights``."""
    if folder is not None:
        return Path(folder).expanduser()
    env = os.environ.get("MC_BENCH_WEIGHTS")
    return Path(env).expanduser() if env else cache_dir() / "weights"


def backbone_file(name: str, folder: str | os.PathLike | None = None) -> Path:
    """The main file of a backbone (the one hashed)."""
    b = BACKBONES[name]
    base = weights_dir(folder) / b.path
    return base / b.main_file if b.main_file else base


def require(name: str, folder: str | os.PathLike | None = None) -> Path:
    """The backbone's path in the weights folder, or an error naming the missing file and the command that
    fetches it."""
    b = BACKBONES[name]
    main = backbone_file(name, folder)
    if not main.is_file():
        raise InputError(main, f"the {name} weights are missing ({b.used_by})",
                         f"run `mc-bench weights --fetch {name}` on a machine that reaches the hub and copy "
                         f"{weights_dir(folder)} here, or set MC_BENCH_WEIGHTS to a folder that has them")
    return weights_dir(folder) / b.path


def clip_weights(folder: str | os.PathLike) -> Path:
    """The safetensors weights of a CLIP folder (save_pretrained layout). A folder with only a pickled
    ``pytorch_model.bin`` — which can run code when loaded — or with no weights is one :class:`InputError`."""
    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        return folder / "model.safetensors"
    if (folder / "pytorch_model.bin").is_file():
        raise InputError(folder / "pytorch_model.bin",
                         "CLIP weights stored as a pickle are refused (loading one can run code)",
                         "convert them: CLIPModel.from_pretrained(folder).save_pretrained(folder, "
                         "safe_serialization=True), then remove the .bin")
    raise InputError(folder, "no CLIP weights (model.safetensors) in the folder",
                     "point at a folder written by CLIPModel.save_pretrained")


def sha256(path: Path) -> str:
    """SHA-256 of a file, remembered in a ``.sha256`` sidecar keyed by size and modification time."""
    path = Path(path)
    stat = path.stat()
    key = f"{stat.st_size}:{stat.st_mtime_ns}"
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.is_file():
        saved = json.loads(sidecar.read_text())
        if saved.get("key") == key:
            return saved["sha256"]
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    try:
        sidecar.write_text(json.dumps({"key": key, "sha256": digest.hexdigest()}))
    except OSError:  # a read-only weights folder: hash again next time
        pass
    return digest.hexdigest()


def listing(folder: str | os.PathLike | None = None) -> list[dict]:
    """One row per backbone: name, present, path, sha256 (first 16 hex digits), used by."""

    rows = []
    tiny = WORLD_MODELS / CLIP_DIR / "model.safetensors"
    rows.append({"name": "tiny-clip", "present": tiny.is_file(), "path": str(tiny.parent),
                 "sha256": sha256(tiny)[:16] if tiny.is_file() else "",
                 "used_by": "the offline world: FID/KID features and CLIP score"})
    for b in BACKBONES.values():
        main = backbone_file(b.name, folder)
        rows.append({"name": b.name, "present": main.is_file(), "path": str(weights_dir(folder) / b.path),
                     "sha256": sha256(main)[:16] if main.is_file() else "", "used_by": b.used_by})
    return rows


def fetch(name: str, folder: str | os.PathLike | None = None) -> Path:
    """Download one backbone into the weights folder (needs the network)."""
    if name not in BACKBONES:
        raise InputError(f"--fetch {name}", "unknown backbone", f"use one of {sorted(BACKBONES)}")
    b = BACKBONES[name]
    target = weights_dir(folder) / b.path
    try:
        if b.source.startswith("https://"):
            import urllib.request

            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".part")
            urllib.request.urlretrieve(b.source, tmp)
            tmp.replace(target)
        elif name == "image-reward":
            from huggingface_hub import hf_hub_download

            for file in ("ImageReward.pt", "med_config.json"):
                hf_hub_download("THUDM/ImageReward", file, local_dir=target)
        else:
            from huggingface_hub import snapshot_download

            patterns = ["*.json", "*.txt"] if name == "bert-base-uncased" else ["*.json", "*.txt", "*.safetensors"]
            snapshot_download(hub_id(b.source), local_dir=target, allow_patterns=patterns)
    except Exception as err:  # no network, hub down, disk full: one clear message
        raise InputError(b.source, f"could not download {name} ({type(err).__name__}: {err})",
                         "run this on a machine that reaches the hub, then copy the weights folder here") from None
    return target
