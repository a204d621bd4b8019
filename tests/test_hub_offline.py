"""The `hf:` path the `paper` profile uses, rehearsed offline: a local Hugging Face cache (its own HF_HOME) holding a
tiny dataset repository in the hub's Parquet layout and a tiny pipeline in the hub's snapshot layout, each at a
named revision; manifest -> preflight -> 02 -> 03 with HF_HUB_OFFLINE=1, at 64 px, with images of mixed sizes.
Nothing is faked: `datasets`, `huggingface_hub` and diffusers read the cache as they would a downloaded one."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from mc_bench.paths import WORLD_MODELS

COMMIT_DATA = "a" * 40
COMMIT_MODEL = "b" * 40


def _hub_repo(hub: Path, kind: str, repo: str, commit: str, revision: str):
    """``hub/<kind>s--org--name/`` with ``refs/<revision>`` -> ``commit`` and ``snapshots/<commit>/``."""
    folder = hub / f"{kind}s--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / revision).write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    return snapshot


def _dataset_repo(snapshot):
    """Parquet files as the hub's converter writes them: data/<split>-00000-of-00001.parquet, images as bytes."""
    import datasets

    rng = np.random.default_rng(0)
    sizes = [(80, 64), (64, 96), (72, 72), (100, 70)]
    for split, n in (("train", 24), ("test", 8)):
        images = [Image.fromarray(rng.integers(0, 256, sizes[i % 4] + (3,), dtype=np.uint8)) for i in range(n)]
        table = datasets.Dataset.from_dict(
            {"jpg": images, "blip_caption": [f"a noisy picture number {i}" for i in range(n)]},
            features=datasets.Features({"jpg": datasets.Image(), "blip_caption": datasets.Value("string")}))
        (snapshot / "data").mkdir(exist_ok=True)
        table.to_parquet(str(snapshot / "data" / f"{split}-00000-of-00001.parquet"))


def _model_repo(snapshot):
    """The zoo's tiny SD pipeline as a hub snapshot, its UNet's native size raised to 64 px."""
    shutil.copytree(WORLD_MODELS / "zoo-shapes", snapshot, dirs_exist_ok=True)
    config = json.loads((snapshot / "unet" / "config.json").read_text())
    down = 2 ** (len(json.loads((snapshot / "vae" / "config.json").read_text())["block_out_channels"]) - 1)
    config["sample_size"] = 64 // down
    (snapshot / "unet" / "config.json").write_text(json.dumps(config))


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    home = tmp_path / "hf-home"
    _dataset_repo(_hub_repo(home / "hub", "dataset", "kit-test/noisy-captions", COMMIT_DATA, "v1.0"))
    _model_repo(_hub_repo(home / "hub", "model", "kit-test/tiny-sd-64", COMMIT_MODEL, "v2"))
    for name, value in (("HF_HOME", str(home)), ("HF_HUB_CACHE", str(home / "hub")), ("HF_HUB_OFFLINE", "1"),
                        ("HF_DATASETS_OFFLINE", "1"), ("HF_DATASETS_CACHE", str(home / "datasets"))):
        monkeypatch.setenv(name, value)
    import huggingface_hub.constants

    # this process imported huggingface_hub before the fixture set HF_HOME (the kernels that fine-tune start after)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "datasets.yaml").write_text(yaml.safe_dump({"datasets": [{
        "id": "noisy", "source": "hf:kit-test/noisy-captions", "revision": "v1.0", "domain": "test",
        "license": "CC0", "image_column": "jpg", "caption_column": "blip_caption",
        "splits": {"train": "train", "eval": "test"}}]}))
    (manifests / "models.yaml").write_text(yaml.safe_dump({"models": [{
        "id": "tiny-64", "source": "hf:kit-test/tiny-sd-64", "revision": "v2", "family": "tiny-sd",
        "resolution": 64, "license": "MIT"}]}))
    (manifests / "profiles.yaml").write_text(yaml.safe_dump({"profiles": [{
        "id": "hub", "models": ["tiny-64"], "datasets": ["noisy"],
        "train": {"steps": 2, "batch_size": 4, "checkpoint_every": 0},
        "generate": {"n_samples": 4, "num_inference_steps": 2, "batch_size": 4},
        "evaluate": {"metrics": ["fid", "clip_score"]}}]}))
    return manifests


def test_the_hub_path_runs_offline_from_a_local_cache(offline_hub, tmp_path):
    from mc_bench.study.preflight import preflight
    from mc_bench.study.runner import run_grid

    table = preflight("hub", offline_hub, online=False, study_dir=tmp_path / "study").set_index("subject")
    assert table.loc["tiny-64", "status"] == "ok" and "tiny-sd" in table.loc["tiny-64", "detail"]
    assert table.loc["noisy", "status"] == "ok" and "train 24" in table.loc["noisy", "detail"]
    cells = run_grid(tmp_path / "study", "hub", offline_hub, workers=1, progress=False)
    assert cells["status"].tolist() == ["done"], cells.to_dict(orient="records")
    run = tmp_path / "study" / "runs" / "tiny-64__noisy"
    config = json.loads((run / "config.json").read_text())
    assert config["revision"] == "v2" and config["model_source"].startswith("hf:")
    metrics = pd.read_csv(run / "metrics.csv").set_index("metric")
    assert metrics.loc["fid", "status"] == "computed" and np.isfinite(metrics.loc["fid", "value"])
    with Image.open(run / "samples" / "00000.png") as sample:
        assert sample.size == (64, 64)


def test_a_hub_dataset_missing_from_the_cache_is_not_checked_offline(offline_hub, tmp_path):
    from mc_bench.study.preflight import preflight

    text = (offline_hub / "datasets.yaml").read_text().replace("revision: v1.0", "revision: v9.9")
    (offline_hub / "datasets.yaml").write_text(text)
    row = preflight("hub", offline_hub, online=False, study_dir=tmp_path).set_index("subject").loc["noisy"]
    assert row["status"] == "not checked" and "v9.9" in row["detail"]


def test_an_offline_grid_refuses_a_hub_dataset_missing_from_the_cache_before_any_cell(offline_hub, tmp_path):
    from mc_bench.study.runner import broken_datasets
    from mc_bench.config import load_manifests

    text = (offline_hub / "datasets.yaml").read_text().replace("revision: v1.0", "revision: v9.9")
    (offline_hub / "datasets.yaml").write_text(text)
    m = load_manifests(offline_hub)
    broken = broken_datasets(m, m.profile("hub"))
    assert "noisy" in broken and "not in the local hub cache" in broken["noisy"] and "huggingface-cli" in broken["noisy"]
