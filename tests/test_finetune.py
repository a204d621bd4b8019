"""Fine-tuning and generation on the tiny zoo (CPU): LoRA and full, load_lora_weights round trip, determinism,
resume after a real kill, NaN handling, the run folder."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from mc_bench.config import GenerateSettings, load_manifests
from mc_bench.errors import InputError
from mc_bench.train import finetune as ft
from mc_bench.train import runs
from mc_bench.world.data import load_dataset_split

MODEL, DATASET = "zoo-shapes", "shapes-new"


def config(tmp_path, name="run", **train):
    train = {"steps": 6, "batch_size": 8, "checkpoint_every": 0, **train}
    return runs.build_config(MODEL, DATASET, tmp_path / name, overrides={
        "train": train, "generate": {"n_samples": 6, "num_inference_steps": 3, "batch_size": 4}})


def test_lora_run_folder(tmp_path):
    record = ft.finetune(config(tmp_path))
    run = tmp_path / "run"
    assert record["status"] == "done" and np.isfinite(record["final_loss"])
    saved = json.loads((run / "config.json").read_text())
    assert saved["model_source"].endswith("world_models/zoo-shapes") and saved["model_family"] == "tiny-sd"
    assert saved["train"]["method"] == "lora" and saved["train"]["steps"] == 6
    losses = pd.read_csv(run / "loss.csv")
    assert losses["step"].tolist() == list(range(1, 7)) and losses["loss"].notna().all()
    samples = pd.read_csv(run / "samples.csv")
    assert list(samples.columns) == ["file", "caption", "seed", "sampler"] and samples["seed"].tolist() == list(range(6))
    assert all((run / f).is_file() for f in samples["file"])
    assert (run / "lora" / "pytorch_lora_weights.safetensors").is_file()
    timings = json.loads((run / "timings.json").read_text())
    assert timings["train_seconds"] > 0 and timings["images_per_second"] > 0 and timings["train_peak_memory_mb"] > 0
    assert json.loads((run / "versions.json").read_text())["diffusers"]
    assert not (run / "checkpoints").exists()  # removed once the final weights are saved
    # a done run is not redone
    mtime = (run / "lora" / "pytorch_lora_weights.safetensors").stat().st_mtime
    assert ft.finetune(config(tmp_path))["status"] == "done"
    assert (run / "lora" / "pytorch_lora_weights.safetensors").stat().st_mtime == mtime


def unet_output(unet, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    ehs = torch.randn(2, 32, unet.config.cross_attention_dim, generator=gen)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 500]), ehs).sample


@pytest.mark.parametrize("alpha", [None, 16])
def test_lora_round_trip_through_load_lora_weights(tmp_path, alpha):
    """The reloaded adapter samples as trained, also when lora_alpha (16) is not the rank (4): the adapter's config
    travels in the safetensors metadata, so the scale alpha / rank is kept."""
    cfg = config(tmp_path, steps=4, lora_alpha=alpha).resolved()
    manifests = load_manifests()
    images, captions = load_dataset_split(manifests, DATASET, "train")
    base = unet_output(runs.load_pipeline(cfg).unet)
    trainer = ft.Trainer(cfg, runs.load_pipeline(cfg), images, captions, torch.device("cpu"))
    for _ in range(4):
        trainer.train_step()
    trainer.unet.eval()
    trained = unet_output(trainer.unet)
    ft.families.save_lora(trainer.unet, ft.families.SD, tmp_path / "lora")
    pipe = runs.load_pipeline(cfg)
    pipe.load_lora_weights(tmp_path / "lora")
    reloaded = unet_output(pipe.unet)
    assert (trained - base).abs().max() > 1e-4  # the adapter changed the model...
    torch.testing.assert_close(reloaded, trained, atol=1e-5, rtol=1e-4)  # ...and loads back as trained


def test_a_run_samples_in_its_training_precision_on_a_gpu_and_in_float32_on_the_cpu(tmp_path):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert runs.sampling_dtype("bf16", cuda) == torch.bfloat16 and runs.sampling_dtype("fp16", cuda) == torch.float16
    assert runs.sampling_dtype("no", cuda) == torch.float32 and runs.sampling_dtype("bf16", cpu) == torch.float32
    ft.finetune(config(tmp_path, steps=2), sample=False)
    pipe = runs.load_finetuned_pipeline(tmp_path / "run", "cpu", torch.bfloat16)  # a LoRA run reloaded in bf16
    assert pipe.unet.dtype == torch.bfloat16 and pipe.vae.dtype == torch.bfloat16
    images = pipe(["a red square"], num_inference_steps=2, output_type="np").images
    assert images.shape[0] == 1 and np.isfinite(images).all()


def test_the_family_is_read_from_the_pipeline_config(tmp_path):
    """An ad-hoc folder's family comes from its model_index.json (and text encoder width), never assumed; a
    models.yaml family that disagrees with the folder is one clear error."""
    import shutil

    from mc_bench.paths import WORLD_MODELS

    family = runs.pipeline_family
    assert family({"_class_name": "StableDiffusionPipeline"}, {"hidden_size": 768}, "x") == "sd1"
    assert family({"_class_name": "StableDiffusionPipeline"}, {"hidden_size": 1024}, "x") == "sd2"
    assert family({"_class_name": "StableDiffusionXLPipeline"}, None, "x") == "sdxl"
    assert family({"_class_name": "StableDiffusion3Pipeline"}, None, "x") == "sd3"
    assert family({"_class_name": "PixArtSigmaPipeline"}, None, "x") == "pixart"
    with pytest.raises(InputError, match="x: pipeline class 'AudioLDMPipeline' is not a text-to-image family"):
        family({"_class_name": "AudioLDMPipeline"}, None, "x")
    zoo = WORLD_MODELS / MODEL
    assert runs.build_config(str(zoo), DATASET, tmp_path / "a").resolved().model_family == "tiny-sd"
    pixart = shutil.copytree(zoo, tmp_path / "pixart")
    index = json.loads((pixart / "model_index.json").read_text())
    (pixart / "model_index.json").write_text(json.dumps({**index, "_class_name": "PixArtSigmaPipeline"}))
    config = runs.build_config(str(pixart), DATASET, tmp_path / "b").resolved()
    assert config.model_family == "pixart"  # not forced to sd1
    with pytest.raises(InputError, match="family 'pixart' is not supported by fine-tuning"):
        runs.load_pipeline(config)
    declared = runs.build_config(MODEL, DATASET, tmp_path / "c").resolved().model_copy(update={"model_family": "sd1"})
    with pytest.raises(InputError, match="family 'tiny-sd', but models.yaml says 'sd1'.*set `family: tiny-sd`"):
        runs.load_pipeline(declared)


def test_full_finetune_and_generation(tmp_path):
    record = ft.finetune(config(tmp_path, method="full", learning_rate=1e-4))
    run = tmp_path / "run"
    assert record["status"] == "done" and (run / "unet" / "config.json").is_file()
    base = runs.load_pipeline(runs.load_run_config(run))
    tuned = runs.load_finetuned_pipeline(run)
    assert (unet_output(base.unet) - unet_output(tuned.unet)).abs().max() > 1e-5
    assert len(pd.read_csv(run / "samples.csv")) == 6


def test_same_config_gives_identical_weights(tmp_path):
    ft.finetune(config(tmp_path, "a", random_flip=True, center_crop=False, gradient_accumulation_steps=2), sample=False)
    ft.finetune(config(tmp_path, "b", random_flip=True, center_crop=False, gradient_accumulation_steps=2), sample=False)
    a = load_file(tmp_path / "a" / "lora" / "pytorch_lora_weights.safetensors")
    b = load_file(tmp_path / "b" / "lora" / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # gradient checkpointing recomputes activations: the same weights
    ft.finetune(config(tmp_path, "gc", random_flip=True, center_crop=False, gradient_accumulation_steps=2,
                       gradient_checkpointing=True), sample=False)
    gc = load_file(tmp_path / "gc" / "lora" / "pytorch_lora_weights.safetensors")
    assert all(torch.allclose(a[k], gc[k], atol=1e-6) for k in a)
    c = ft.finetune(config(tmp_path, "c", seed=1), sample=False)
    assert c["status"] == "done"
    other = load_file(tmp_path / "c" / "lora" / "pytorch_lora_weights.safetensors")
    assert not all(torch.equal(a[k], other[k]) for k in a)


def _cli(tmp_path, name, steps=40):
    return [sys.executable, "-m", "mc_bench", "finetune", "--model", MODEL, "--dataset", DATASET,
            "--out", str(tmp_path / name), "--no-sample", "--set", f"train.steps={steps}",
            "--set", "train.batch_size=8", "--set", "train.checkpoint_every=5", "--set", "train.lr_scheduler=cosine"]


def test_resume_after_kill_equals_uninterrupted(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli(tmp_path, "straight"), env=env, check=True, capture_output=True)
    proc = subprocess.Popen(_cli(tmp_path, "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / "checkpoints" / "step-000015"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists(), "the run never reached its step-15 checkpoint"
    assert json.loads((tmp_path / "killed" / "status.json").read_text())["status"] == "running"
    assert not (tmp_path / "killed" / "lora").exists()  # it really died mid-run
    subprocess.run(_cli(tmp_path, "killed"), env=env, check=True, capture_output=True)
    status = json.loads((tmp_path / "killed" / "status.json").read_text())
    assert status["status"] == "done"
    timings = json.loads((tmp_path / "killed" / "timings.json").read_text())
    assert timings["resumed_from_step"] >= 15
    a = load_file(tmp_path / "straight" / "lora" / "pytorch_lora_weights.safetensors")
    b = load_file(tmp_path / "killed" / "lora" / "pytorch_lora_weights.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    la, lb = pd.read_csv(tmp_path / "straight" / "loss.csv"), pd.read_csv(tmp_path / "killed" / "loss.csv")
    pd.testing.assert_frame_equal(la, lb)  # 40 rows, none lost or repeated


def test_nan_loss_marks_run_failed(tmp_path, monkeypatch):
    real = ft.families.denoising_loss
    calls = {"n": 0}

    def sometimes_nan(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(ft.families, "denoising_loss", sometimes_nan)
    record = ft.finetune(config(tmp_path, checkpoint_every=1))
    run = tmp_path / "run"
    assert record["status"] == "failed" and "non-finite loss (nan) at step 3" in record["reason"]
    assert json.loads((run / "status.json").read_text())["status"] == "failed"
    assert len(pd.read_csv(run / "loss.csv")) == 2 and (run / "checkpoints" / "step-000002").is_dir()
    assert not (run / "lora").exists() and not (run / "samples.csv").exists()


def test_fp16_gradient_scaler_skips_a_non_finite_step_and_fails_a_run_that_only_overflows(tmp_path, monkeypatch):
    """With fp16's gradient scaler (enabled here on CPU), a non-finite loss skips that step — the weights stay, the
    scale is lowered, training goes on — as in diffusers' scripts; MAX_SKIPPED_STEPS in a row fail the run."""
    cfg = config(tmp_path, steps=4).resolved()
    images, captions = load_dataset_split(load_manifests(), DATASET, "train")
    trainer = ft.Trainer(cfg, runs.load_pipeline(cfg), images, captions, torch.device("cpu"))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    real, nan_at = ft.families.denoising_loss, {2}
    calls = {"n": 0}

    def sometimes_nan(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] in nan_at else loss

    monkeypatch.setattr(ft.families, "denoising_loss", sometimes_nan)
    trainer.train_step()
    before = {k: v.clone() for k, v in ft.trainable_state(trainer.unet).items()}
    assert np.isnan(trainer.train_step())  # skipped: the weights are those of step 1
    after = ft.trainable_state(trainer.unet)
    assert all(torch.equal(before[k], after[k]) for k in before) and trainer.scaler.get_scale() == 2.0 ** 7
    assert np.isfinite(trainer.train_step()) and trainer.step == 3
    nan_at.update(range(4, 4 + ft.MAX_SKIPPED_STEPS))
    with pytest.raises(FloatingPointError, match=f"skipped {ft.MAX_SKIPPED_STEPS} steps in a row"):
        for _ in range(ft.MAX_SKIPPED_STEPS):
            trainer.train_step()


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="unknown model 'zoo-nope'.*models.yaml"):
        ft.finetune(runs.build_config("zoo-nope", DATASET, tmp_path / "x"))
    with pytest.raises(InputError, match="unknown dataset id 'nope'"):
        ft.finetune(runs.build_config(MODEL, "nope", tmp_path / "x"))
    with pytest.raises(InputError, match="field `train`.*mixed precision needs a GPU"):
        runs.build_config(MODEL, DATASET, tmp_path / "x", overrides={"train": {"device": "cpu", "mixed_precision": "bf16"}})
    with pytest.raises(InputError, match="train.lora_rankk"):
        runs.build_config(MODEL, DATASET, tmp_path / "x", overrides={"train": {"lora_rankk": 2}})
    ft.finetune(config(tmp_path, steps=2), sample=False)
    with pytest.raises(InputError, match="different training configuration"):
        ft.finetune(config(tmp_path, steps=3))


def test_generation_does_not_depend_on_batch_size(tmp_path):
    from mc_bench.train.generate import generate

    cfg = config(tmp_path).resolved()
    pipe = runs.load_pipeline(cfg)
    prompts = ["a red circle on a blue background"] * 3 + ["a green square on a white background"] * 2
    generate(pipe, prompts, tmp_path / "b1", GenerateSettings(num_inference_steps=3, batch_size=1))
    generate(pipe, prompts, tmp_path / "b5", GenerateSettings(num_inference_steps=3, batch_size=5))
    from mc_bench.train.generate import read_samples

    x1, c1 = read_samples(tmp_path / "b1")
    x5, c5 = read_samples(tmp_path / "b5")
    assert c1 == c5 == prompts
    assert np.abs(x1.astype(int) - x5.astype(int)).max() <= 1  # same seeds, same images (up to rounding)
    assert not np.array_equal(x1[0], x1[1])  # different seeds per image


def test_a_pickled_checkpoint_is_never_loaded(tmp_path):
    """A state.pt planted in a run folder (a pickle that would run code when loaded) is refused on resume: nothing
    runs, the run is marked failed with the reason and the fix."""
    import shutil

    cfg = config(tmp_path, steps=4, checkpoint_every=2)
    ft.finetune(cfg, sample=False, stop_after=2)
    checkpoint = ft.latest_checkpoint(cfg.run_dir)
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state": Payload()}, checkpoint / "state.pt")
    (checkpoint / "state.json").unlink()
    with pytest.raises(InputError, match="pickled files such as state.pt are never loaded"):
        ft.finetune(cfg, sample=False)
    assert not marker.exists()
    status = json.loads((cfg.run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "delete" in status["reason"]
    shutil.rmtree(cfg.run_dir / "checkpoints")  # the fix the message gives: the run restarts and finishes
    assert ft.finetune(cfg, sample=False)["status"] == "done"


def test_lora_run_reloads_offline(tmp_path):
    """With HF_HUB_OFFLINE=1 (the usual setting on a cluster) a LoRA run's weights reload by their file name."""
    cfg = config(tmp_path, steps=2)
    ft.finetune(cfg, sample=False)
    code = ("import sys; from mc_bench.train.runs import load_finetuned_pipeline; "
            "pipe = load_finetuned_pipeline(sys.argv[1]); print(type(pipe).__name__)")
    proc = subprocess.run([sys.executable, "-c", code, str(cfg.run_dir)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "StableDiffusionPipeline" in proc.stdout


def test_gpu_determinism_settings(monkeypatch):
    """What a CUDA run sets so that it repeats (the GPU check then allows a stated tolerance)."""
    import os

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda mode, warn_only=False: calls.append((mode, warn_only)))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    ft.gpu_determinism()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and calls == [(True, True)]
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert not torch.backends.cuda.matmul.allow_tf32


def test_training_images_are_decoded_and_resized_once():
    """A split is decoded and resized on first use and cached within a budget; the values are the same past it."""
    from mc_bench.images import LazyImages
    from mc_bench.train.batches import ResizedImages

    decoded = []

    def load(i):
        decoded.append(i)
        return np.full((32, 48, 3), i, np.uint8)

    cached = ResizedImages(LazyImages(3, load), 16)
    for _ in range(4):
        assert [cached[i].shape for i in range(3)] == [(16, 24, 3)] * 3
    assert decoded == [0, 1, 2] and cached.original_size(1) == (32, 48)
    ahead = ResizedImages(LazyImages(3, load), 16)
    decoded.clear()
    ahead.prefetch([2, 0])
    ahead._pending.result()  # the background thread decoded them; using them decodes nothing more
    assert sorted(decoded) == [0, 2] and (ahead[2] == cached[2]).all() and sorted(decoded) == [0, 2]
    tiny = ResizedImages(LazyImages(3, load), 16, max_mb=16 * 24 * 3 / 2 ** 20)  # room for one image
    assert all((tiny[i] == cached[i]).all() for i in range(3) for _ in range(2)) and tiny.cached_mb > 0
