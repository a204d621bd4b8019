"""The zoo: Stable Diffusion format, offline loading and sampling, deterministic rebuilds, its manifest."""

import filecmp
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mc_bench.config import load_manifests
from mc_bench.paths import CLIP_DIR, VAE_DIR, WORLD_MODELS
from mc_bench.train.pretrain import pretrain, train_vae
from mc_bench.world.zoo import (SD_ZOO, ZOO, ZooModel, model_metadata, sample, source_data, write_models_manifest,
                                zoo_records)

TINY = ZooModel("zoo-test", ("src-shapes",), (32, 64), 1, "v_prediction", "linear", steps=3, batch_size=4)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from mc_bench.world.tinyclip import train_tiny_clip

    root = tmp_path_factory.mktemp("world_models")
    images, captions = source_data(load_manifests(), ["src-shapes"])
    torch.set_num_threads(1)
    train_tiny_clip(images[:64], captions[:64], root / CLIP_DIR, steps=2, batch_size=8, progress=False)
    train_vae(images[:64], root / VAE_DIR, steps=2, batch_size=8)
    return root


def test_pretrain_writes_a_loadable_stable_diffusion_folder(root):
    from diffusers import StableDiffusionPipeline

    record = pretrain(TINY, root)
    folder = root / TINY.id
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / part).is_dir(), part
    assert (folder / "model_index.json").is_file()
    assert not list(folder.rglob("*.bin")), "safetensors only"
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    assert pipe.unet.dtype == torch.float32 and pipe.scheduler.config.prediction_type == "v_prediction"
    pipe.set_progress_bar_config(disable=True)
    images = sample(pipe, ["a red circle on a white background"], steps=2)
    assert images.shape == (1, 16, 16, 3) and images.dtype == np.uint8
    assert record["unet_parameters"] > 0 and np.isfinite(record["final_loss"])


def test_rebuild_is_byte_identical(root, tmp_path):
    import shutil

    other = tmp_path / "again"
    shutil.copytree(root / CLIP_DIR, other / CLIP_DIR)
    shutil.copytree(root / VAE_DIR, other / VAE_DIR)
    pretrain(TINY, root)
    pretrain(TINY, other)
    a = root / TINY.id / "unet" / "diffusion_pytorch_model.safetensors"
    b = other / TINY.id / "unet" / "diffusion_pytorch_model.safetensors"
    assert filecmp.cmp(a, b, shallow=False)


def test_vae_scaling_factor_normalises_latents(root):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(root / VAE_DIR)
    assert vae.config.scaling_factor > 0 and vae.config.latent_channels == 4


def test_zoo_differs_like_hub_models():
    assert len(ZOO) == 12 and len({m.id for m in ZOO}) == 12
    assert {m.family for m in ZOO} == {"tiny-sd", "sdxl", "sd3"} and len(SD_ZOO) == 10  # cpu-paper's ten
    assert {m.prediction_type for m in ZOO} == {"epsilon", "v_prediction", "sample", "flow"}
    assert len({m.beta_schedule for m in SD_ZOO}) == 3
    assert len({(m.block_out_channels, m.layers_per_block) for m in ZOO}) >= 4
    assert len({m.sources for m in ZOO}) >= 7 and len({m.steps for m in ZOO}) >= 3


def test_models_manifest_from_records(root, tmp_path):
    import shutil

    manifest_dir = tmp_path / "manifests"
    shutil.copytree(Path(__file__).resolve().parents[1] / "data_manifests", manifest_dir)
    record = json.loads((root / TINY.id / "mc_bench_zoo.json").read_text()) if (root / TINY.id).exists() \
        else pretrain(TINY, root)
    meta = model_metadata(record)
    assert meta["pretrained_on_shapes"] is True and meta["pretrained_on_animals"] is False
    assert meta["pretrain_datasets"] == "src-shapes"
    (manifest_dir / "profiles.yaml").write_text("profiles: []\n")
    write_models_manifest(manifest_dir / "models.yaml", root, specs=(TINY,))
    model = load_manifests(manifest_dir).models["zoo-test"]
    assert model.family == "tiny-sd" and model.prediction_type == "v_prediction"
    assert (manifest_dir / model.source).resolve() == (root / "zoo-test").resolve()
    assert model.metadata["width"] == 32 and model.metadata["pretrain_steps"] == 3


@pytest.mark.skipif(not (WORLD_MODELS / "zoo-all-small").is_dir(), reason="zoo weights not built")
def test_committed_zoo_loads_offline_and_samples():
    from diffusers import DiffusionPipeline

    records = zoo_records()
    assert [r["id"] for r in records] == [m.id for m in ZOO]
    for record in records:  # the SD, SDXL and SD3 models alike: the class comes from model_index.json
        pipe = DiffusionPipeline.from_pretrained(WORLD_MODELS / record["id"], local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        images = sample(pipe, ["a white silhouette of a horse on a black background"], steps=2)
        assert images.shape == (1, 16, 16, 3)
    manifests = load_manifests()
    assert set(manifests.models) == {m.id for m in ZOO}


@pytest.mark.skipif(not (WORLD_MODELS / "zoo-all-small").is_dir(), reason="zoo weights not built")
def test_cli_world_zoo_json():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "mc_bench", "world", "zoo", "--json"], capture_output=True,
                         text=True, check=True).stdout
    rows = json.loads(out)
    assert [r["id"] for r in rows] == [m.id for m in ZOO]
    assert all(r["path"] == f"world_models/{r['id']}" for r in rows)
    assert {"prediction_type", "width", "depth", "pretrain_steps", "pretrain_domains"} <= set(rows[0])


def test_nan_loss_stops_training(root, monkeypatch):
    import mc_bench.train.pretrain as pretraining
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    from mc_bench.world import zoo

    monkeypatch.setattr(pretraining, "diffusion_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    tok = CLIPTokenizer.from_pretrained(root / CLIP_DIR)
    text = CLIPTextModel.from_pretrained(root / CLIP_DIR)
    vae = AutoencoderKL.from_pretrained(root / VAE_DIR)
    ddpm, _ = zoo.make_schedulers(TINY)
    unet = zoo.make_unet(TINY, text.config.hidden_size, 8)
    images = np.zeros((4, 16, 16, 3), np.uint8)
    with pytest.raises(FloatingPointError, match="non-finite loss .* at step 0"):
        pretraining.train_unet(unet, vae, text, tok, ddpm, images, ["a"] * 4, steps=2, batch_size=2)


def test_world_zoo_without_models_is_a_clear_error(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "mc_bench", "world", "zoo", "--root", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "no zoo models found" in proc.stderr and "--rebuild" in proc.stderr
