"""Where things are — the repository, the manifests, the world's models, the cache — and how sources are spelled.

A leaf module: it imports nothing of the kit, so every part of it can use these names.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MANIFEST_DIR = REPO_ROOT / "data_manifests"
NOTEBOOKS = REPO_ROOT / "notebooks"
WORLD_MODELS = REPO_ROOT / "world_models"  # the tiny CLIP, the shared VAE and the zoo, committed
CLIP_DIR = "tiny-clip"
VAE_DIR = "tiny-vae"

WORLD_PREFIX = "world:"  # a dataset built by mc_bench.world
HUB_PREFIX = "hf:"  # a Hugging Face hub id


def cache_dir() -> Path:
    """Where built datasets and derived files go: ``$MC_BENCH_CACHE`` or ``~/.cache/mc_bench``."""
    return Path(os.environ.get("MC_BENCH_CACHE", Path.home() / ".cache" / "mc_bench")).expanduser()


SCRATCH = REPO_ROOT / "results" / "scratch"  # ignored by git: what notebooks regenerate from a committed study


def resolve(path: str | Path) -> Path:
    """A path parameter of a notebook, the same from any working folder (the repository root, ``notebooks/`` as
    JupyterLab runs it, papermill's ``--cwd``): ``~`` is expanded and a relative path is taken against the
    repository root. The CLI takes paths against the working folder, as command-line tools do."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def scratch_dir_for(study_dir: str | Path) -> Path:
    """Where a notebook writes what it regenerates from a study it only reads: ``results/scratch/<study name>``."""
    return SCRATCH / Path(study_dir).name


def study_dir_for(profile_id: str) -> Path:
    """The default folder of a profile's study: ``results/<profile>``."""
    return REPO_ROOT / "results" / profile_id


def is_hub(source: str) -> bool:
    return source.startswith(HUB_PREFIX)


def hub_id(source: str) -> str:
    """``"hf:org/name"`` → ``"org/name"``."""
    if not is_hub(source):
        raise ValueError(f"{source!r} is not a hub source ({HUB_PREFIX}<id>)")
    return source[len(HUB_PREFIX):]


def repo_relative(path: str | Path | None) -> str | None:
    """``path`` as recorded in a committed output: relative to the repository root when it lies inside it (an
    absolute path names the machine that made the file), as it is otherwise; :func:`resolve` reads it back."""
    if path is None:
        return None
    path = Path(path)
    try:
        return str(path.resolve().relative_to(REPO_ROOT)) if path.is_absolute() else str(path)
    except ValueError:
        return str(path)
