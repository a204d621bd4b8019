import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image


def write_manifests(folder: Path, datasets=None, models=None, profiles=None, world=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "datasets.yaml").write_text(yaml.safe_dump({"world": world or {}, "datasets": datasets or []}))
    (folder / "models.yaml").write_text(yaml.safe_dump({"models": models or []}))
    (folder / "profiles.yaml").write_text(yaml.safe_dump({"profiles": profiles or []}))
    return folder


def make_imagefolder(folder: Path, n_train=20, n_eval=16, size=8, mode="RGB", caption="a red square") -> Path:
    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    for split, n in (("train", n_train), ("test", n_eval)):
        (folder / split).mkdir(parents=True)
        rows = []
        for i in range(n):
            arr = rng.integers(0, 256, size=(size, size, channels), dtype=np.uint8)
            Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode=mode).save(folder / split / f"{i}.png")
            rows.append(json.dumps({"file_name": f"{i}.png", "text": f"{caption} {i}"}))
        (folder / split / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def folder_dataset(id="local", source="data", **kw):
    entry = {"id": id, "source": source, "domain": "test", "license": "CC0"}
    entry.update(kw)
    return entry


@pytest.fixture
def local_manifests(tmp_path):
    """A manifest folder with one valid local imagefolder dataset at <tmp>/manifests/data."""
    folder = write_manifests(tmp_path / "manifests", datasets=[folder_dataset()])
    make_imagefolder(folder / "data")
    return folder


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Datasets built by tests go to a temporary cache, never the user's."""
    import os

    old = os.environ.get("MC_BENCH_CACHE")
    os.environ["MC_BENCH_CACHE"] = str(tmp_path_factory.mktemp("mc_bench_cache"))
    yield
    if old is None:
        os.environ.pop("MC_BENCH_CACHE", None)
    else:
        os.environ["MC_BENCH_CACHE"] = old
