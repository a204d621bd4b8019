"""Every diffusers T2I family the kit fine-tunes — SD (UNet), SDXL (two text encoders, size/crop ids), SD3 (MMDiT
transformer, rectified flow) — on the tiny pipelines of the world's zoo (CPU): LoRA and full fine-tuning, sampling,
and the trained weights reloaded as trained."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mc_bench.config import load_manifests
from mc_bench.errors import InputError
from mc_bench.paths import WORLD_MODELS
from mc_bench.train import families
from mc_bench.train import finetune as ft
from mc_bench.train import runs
from mc_bench.world.data import load_dataset_split

DATASET = "shapes-new"
FAMILY_MODELS = [("zoo-xl-natural", "sdxl", "StableDiffusionXLPipeline", "unet"),
                 ("zoo-sd3-symbols", "sd3", "StableDiffusion3Pipeline", "transformer")]


def config(tmp_path, model, name="run", **train):
    train = {"steps": 3, "batch_size": 4, "checkpoint_every": 0, **train}
    return runs.build_config(model, DATASET, tmp_path / name, overrides={
        "train": train, "generate": {"n_samples": 4, "num_inference_steps": 3, "batch_size": 4}})


@pytest.mark.parametrize("model, family, pipeline, denoiser", FAMILY_MODELS)
def test_the_zoo_pipeline_loads_with_plain_from_pretrained_and_its_family_is_read_from_its_config(
        model, family, pipeline, denoiser):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(WORLD_MODELS / model, local_files_only=True)
    assert type(pipe).__name__ == pipeline and hasattr(pipe, denoiser)
    assert runs._folder_family(WORLD_MODELS / model) == family
    assert load_manifests().models[model].family == family
    assert families.family_of(pipe).denoiser == denoiser


@pytest.mark.parametrize("model, family, pipeline, denoiser", FAMILY_MODELS)
def test_lora_fine_tunes_samples_and_reloads(tmp_path, model, family, pipeline, denoiser):
    record = ft.finetune(config(tmp_path, model))
    run = tmp_path / "run"
    assert record["status"] == "done" and np.isfinite(record["final_loss"])
    assert json.loads((run / "config.json").read_text())["model_family"] == family
    samples = pd.read_csv(run / "samples.csv")
    assert len(samples) == 4 and all((run / f).is_file() for f in samples["file"])
    pipe = runs.load_finetuned_pipeline(run)
    assert type(pipe).__name__ == pipeline
    base = families.denoiser_output(getattr(runs.load_pipeline(runs.load_run_config(run)), denoiser))
    assert (families.denoiser_output(getattr(pipe, denoiser)) - base).abs().max() > 1e-6  # the adapter is loaded


@pytest.mark.parametrize("model, family, pipeline, denoiser", FAMILY_MODELS)
def test_lora_round_trip_with_alpha_not_rank(tmp_path, model, family, pipeline, denoiser):
    """An adapter of rank 4 and lora_alpha 16 reloads at scale alpha / rank: the denoiser's output as trained."""
    cfg = config(tmp_path, model, lora_alpha=16, learning_rate=1e-2).resolved()
    images, captions = load_dataset_split(load_manifests(), DATASET, "train")
    base = families.denoiser_output(getattr(runs.load_pipeline(cfg), denoiser))
    trainer = ft.Trainer(cfg, runs.load_pipeline(cfg), images, captions, torch.device("cpu"))
    for _ in range(3):
        assert np.isfinite(trainer.train_step())
    trainer.denoiser.eval()
    trained = families.denoiser_output(trainer.denoiser)
    families.save_lora(trainer.denoiser, trainer.family, tmp_path / "lora")
    pipe = runs.load_pipeline(cfg)
    pipe.load_lora_weights(tmp_path / "lora", weight_name="pytorch_lora_weights.safetensors")
    assert (trained - base).abs().max() > 1e-4
    torch.testing.assert_close(families.denoiser_output(getattr(pipe, denoiser)), trained, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("model, family, pipeline, denoiser", FAMILY_MODELS)
def test_full_fine_tune_saves_and_reloads_the_denoiser(tmp_path, model, family, pipeline, denoiser):
    record = ft.finetune(config(tmp_path, model, method="full", learning_rate=1e-3), sample=False)
    run = tmp_path / "run"
    assert record["status"] == "done" and (run / denoiser / "config.json").is_file()
    base = runs.load_pipeline(runs.load_run_config(run))
    tuned = runs.load_finetuned_pipeline(run)
    assert (families.denoiser_output(getattr(base, denoiser))
            - families.denoiser_output(getattr(tuned, denoiser))).abs().max() > 1e-5


def test_same_sd3_config_gives_identical_weights(tmp_path):
    """Determinism holds for the rectified-flow objective too (timesteps and noise from the run's generator)."""
    for name in ("a", "b"):
        ft.finetune(config(tmp_path, "zoo-sd3-symbols", name), sample=False)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "a" / "lora" / "pytorch_lora_weights.safetensors")
    b = load_file(tmp_path / "b" / "lora" / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sdxl_conditioning_is_the_pipelines_own(tmp_path):
    """Training conditions SDXL's UNet with the pipeline's encode_prompt: both encoders' penultimate states, the
    pooled projection of the second, and the size/crop ids of the training resolution."""
    cfg = config(tmp_path, "zoo-xl-natural").resolved()
    pipe = runs.load_pipeline(cfg)
    cond = families.encode_captions(pipe, families.SDXL, ["a red square", ""], 16)
    embeds, _, pooled, _ = pipe.encode_prompt(["a red square", ""], device="cpu", do_classifier_free_guidance=False)
    torch.testing.assert_close(cond["encoder_hidden_states"], embeds)
    torch.testing.assert_close(cond["added_cond_kwargs"]["text_embeds"], pooled)
    assert cond["added_cond_kwargs"]["time_ids"].tolist() == [[16, 16, 0, 0, 16, 16]] * 2
    assert cond["encoder_hidden_states"].shape[-1] == pipe.unet.config.cross_attention_dim


def test_min_snr_is_refused_for_a_rectified_flow_model(tmp_path):
    cfg = config(tmp_path, "zoo-sd3-symbols", snr_gamma=5.0).resolved()
    images, captions = load_dataset_split(load_manifests(), DATASET, "train")
    with pytest.raises(InputError, match="rectified flow, which has no min-SNR weighting.*unset train.snr_gamma"):
        ft.Trainer(cfg, runs.load_pipeline(cfg), images, captions, torch.device("cpu"))


def test_a_full_run_without_its_denoiser_is_one_clear_error(tmp_path):
    """A full fine-tune whose saved transformer is gone is refused naming the folder and the fix."""
    import shutil

    ft.finetune(config(tmp_path, "zoo-sd3-symbols", method="full"), sample=False)
    shutil.rmtree(tmp_path / "run" / "transformer")
    with pytest.raises(InputError, match=r"run/transformer: fine-tuned transformer missing.*rerun `mc-bench finetune`"):
        runs.load_finetuned_pipeline(tmp_path / "run")


@pytest.mark.parametrize("model, vae_dtype", [("zoo-xl-natural", torch.float32), ("zoo-sd3-symbols", torch.float16)])
def test_fp16_training_keeps_sdxls_vae_in_float32(tmp_path, model, vae_dtype):
    """diffusers' SDXL LoRA script keeps the VAE in float32 under fp16 ("to avoid NaN losses"); the text encoders
    and other families' VAEs are cast."""
    cfg = config(tmp_path, model, mixed_precision="fp16").resolved()
    images, captions = load_dataset_split(load_manifests(), DATASET, "train")
    trainer = ft.Trainer(cfg, runs.load_pipeline(cfg), images, captions, torch.device("cpu"))
    assert trainer.pipe.vae.dtype == vae_dtype and trainer.vae_dtype == vae_dtype
    assert trainer.pipe.text_encoder.dtype == torch.float16


def test_sd3_draws_logit_normal_timesteps_as_diffusers_script_does(monkeypatch):
    """train_dreambooth_lora_sd3.py's default: u ~ sigmoid(N(0, 1)), timestep index = u * T; unit weighting.
    Middle timesteps are drawn far more often than under the uniform draw the zoo was pretrained with."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from mc_bench.train.loss import flow_matching_loss

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    seen = []

    def transformer(hidden_states, timestep, return_dict, **kw):
        seen.append(timestep.clone())
        return (torch.zeros_like(hidden_states),)

    latents = torch.zeros(4000, 1, 1, 1)
    for scheme in ("logit_normal", "uniform"):
        loss = flow_matching_loss(transformer, scheduler, latents, {}, torch.Generator().manual_seed(0), scheme)
        assert torch.isfinite(loss)
    logit, uniform = (t.float() for t in seen)
    middle = lambda t: ((t > 250) & (t < 750)).float().mean().item()  # noqa: E731
    assert abs(middle(logit) - 0.728) < 0.03 and abs(middle(uniform) - 0.5) < 0.03  # P(|z| < ln 3) = 0.728


def test_sdxl_size_and_crop_ids_are_each_images_own(tmp_path):
    """diffusers' SDXL script conditions on each image's original size and crop corner: a 24x16 image resized to
    16 px (shorter side) and centre-cropped is (24, 16, 4, 0, 16, 16); a square 16 px image (0, 0)."""
    cfg = config(tmp_path, "zoo-xl-natural", batch_size=2).resolved()
    pipe = runs.load_pipeline(cfg)
    images = [np.zeros((24, 16, 3), np.uint8), np.zeros((16, 16, 3), np.uint8)]
    trainer = ft.Trainer(cfg, pipe, images, ["a tall one", "a square one"], torch.device("cpu"))
    trainer.order = torch.tensor([0, 1])
    batch, captions, geometry = trainer.next_batch()
    assert batch.shape == (2, 16, 16, 3) and geometry == [(24, 16, 4, 0), (16, 16, 0, 0)]
    cond = families.encode_captions(pipe, families.SDXL, captions, 16, geometry)
    assert cond["added_cond_kwargs"]["time_ids"].tolist() == [[24, 16, 4, 0, 16, 16], [16, 16, 0, 0, 16, 16]]
    _, corners = ft.crop_and_flip([np.zeros((16, 30, 3), np.uint8)], 16, False, True, torch.Generator().manual_seed(3))
    assert 0 <= corners[0][1] <= 14
