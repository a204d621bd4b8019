"""Fine-tune: LoRA or full fine-tuning of a text-to-image pipeline (SD 1.x/2.x, SDXL, SD3: :mod:`.families`) on a
manifest dataset.

The objective follows diffusers' ``train_text_to_image.py`` / ``train_text_to_image_lora.py``: resize to the
training resolution, centre or random crop, optional flip; encode with the VAE (a posterior sample times its
``scaling_factor``); draw noise and timesteps; add noise with the pipeline's scheduler and regress the target of its
``prediction_type`` (``epsilon``: the noise; ``v_prediction``: the velocity; ``sample``: the clean latents),
optionally weighted by min-SNR-γ (Hang et al., 2023); rectified-flow families (SD3) regress the flow velocity
instead (``train_dreambooth_lora_sd3.py``). SDXL's UNet is also conditioned on the pooled text and the size and crop
ids, SD3's transformer on the pooled text, both computed by the pipeline's own ``encode_prompt``. Captions are
dropped (replaced by the empty caption) with probability ``caption_dropout`` so that classifier-free guidance works.
AdamW, a diffusers learning-rate schedule with warm-up, gradient accumulation, gradient clipping, optional gradient
checkpointing; bf16/fp16 autocast on a GPU, float32 on CPU.

Every random draw (data order, crops, flips, caption dropout, VAE posterior samples, noise, timesteps) comes from one
``torch.Generator`` seeded by ``TrainSettings.seed``, whose state is checkpointed with the trainable weights, the
optimizer, the learning-rate schedule and the data order. On CPU the same configuration gives identical weights, and
a run killed and resumed from its latest checkpoint ends with the same weights as an uninterrupted one.

The run folder and its configuration are described in :mod:`mc_bench.train.runs`.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..config import TrainSettings, load_manifests
from ..errors import InputError, McBenchError
from ..io import atomic_path, library_versions, write_json
from ..world.data import load_dataset_split, validate_dataset
from . import families
from .generate import generate_run
from .batches import ResizedImages
from .loss import images_to_tensor
from .runs import (CHECKPOINTS, LORA_DIR, FinetuneConfig, load_pipeline, peak_memory_mb, pick_device, read_status,
                   run_lock, write_status)


def gpu_determinism() -> None:
    """The settings that make a CUDA run repeat itself: cuBLAS's fixed workspace, cuDNN's deterministic kernels and
    no autotuning, no TF32, and torch's deterministic algorithms (warning, not failing, where an op has none — those
    differences are what the GPU check's tolerance is for)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def crop_and_flip(images: list[np.ndarray], resolution: int, center: bool, flip: bool,
                  generator: torch.Generator) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Centre or random crop to ``resolution`` and optional horizontal flip, drawn from ``generator``; also each
    crop's top-left corner in the (flipped) resized image — SDXL's ``crop_top_left`` conditioning."""
    batch, corners = [], []
    for image in images:
        h, w = image.shape[:2]
        if center:
            top, left = (h - resolution) // 2, (w - resolution) // 2
        else:
            top = int(torch.randint(0, h - resolution + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - resolution + 1, (1,), generator=generator))
        image = image[top:top + resolution, left:left + resolution]
        if flip and bool(torch.rand(1, generator=generator) < 0.5):
            image = image[:, ::-1]
            left = w - left - resolution  # where the crop sits in the flipped image, as diffusers' script records it
        batch.append(image)
        corners.append((top, left))
    return np.stack(batch), corners


def _write_losses(path: Path, losses: list[tuple[int, float, float]]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "loss", "lr"])
        writer.writerows(losses)


# ------------------------------------------------------------------------------------------------ trainer


def add_lora(denoiser, settings: TrainSettings) -> None:
    """Attach a peft LoRA adapter to the denoiser's attention projections (diffusers' LoRA scripts' config)."""
    from peft import LoraConfig

    denoiser.requires_grad_(False)
    denoiser.add_adapter(LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha or settings.lora_rank,
                                init_lora_weights="gaussian", target_modules=list(settings.lora_target_modules)))


def trainable_state(denoiser) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone().contiguous() for name, p in denoiser.named_parameters() if p.requires_grad}


MAX_SKIPPED_STEPS = 10  # fp16: consecutive non-finite steps after which a run is failed


class Trainer:
    """The training loop of one run (see the module docstring); :func:`finetune` is the entry point."""

    def __init__(self, config: FinetuneConfig, pipe, images: list[np.ndarray], captions: list[str],
                 device: torch.device):
        from diffusers.optimization import get_scheduler

        s = self.settings = config.train
        self.config, self.pipe, self.device = config, pipe, device
        if device.type == "cuda":
            gpu_determinism()
        self.family = family = families.family_of(pipe)
        if family.objective == "flow" and s.snr_gamma is not None:
            raise InputError(f"model {config.model!r}", f"train.snr_gamma is set, but a {family.names[0]} model "
                             "trains with rectified flow, which has no min-SNR weighting", "unset train.snr_gamma")
        self.run_dir = Path(config.run_dir)
        denoiser = self.denoiser = getattr(pipe, family.denoiser)
        self.resolution = s.resolution or denoiser.config.sample_size * pipe.vae_scale_factor
        self.images = ResizedImages(images, self.resolution)  # decoded and resized once; original sizes kept
        self.captions = captions
        self.noise_scheduler = families.training_scheduler(pipe, family)
        weight_dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[s.mixed_precision]
        self.autocast_dtype = weight_dtype
        for frozen in (pipe.vae, *families.text_encoders(pipe, family)):
            frozen.requires_grad_(False).eval()
            dtype = weight_dtype
            if frozen is pipe.vae and weight_dtype == torch.float16 and not family.vae_fp16:
                dtype = torch.float32
            if device.type != "cpu" or dtype != torch.float32:
                frozen.to(device, dtype)
        self.vae_dtype = pipe.vae.dtype
        torch.manual_seed(s.seed)  # peft initialises LoRA layers from the global RNG
        if s.method == "lora":
            add_lora(denoiser, s)
        else:
            denoiser.requires_grad_(True)
        if device.type != "cpu":
            denoiser.to(device)
        denoiser.train()
        if s.gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
        self.params = [p for p in denoiser.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=s.learning_rate, weight_decay=s.adam_weight_decay)
        self.lr_scheduler = get_scheduler(s.lr_scheduler, self.optimizer, num_warmup_steps=s.lr_warmup_steps,
                                          num_training_steps=s.steps)
        self.scaler = torch.amp.GradScaler(device.type, enabled=s.mixed_precision == "fp16")
        self.generator = torch.Generator().manual_seed(s.seed)
        self.order = torch.randperm(len(self.images), generator=self.generator)
        self.cursor = 0
        self.step = 0
        self.skipped_in_a_row = 0  # fp16 steps the gradient scaler skipped in a row
        self.losses: list[tuple[int, float, float]] = []

    @property
    def unet(self):
        """The trained denoiser (a UNet, or SD3's transformer): the name diffusers' SD scripts use."""
        return self.denoiser

    # -- data
    def next_batch(self) -> tuple[np.ndarray, list[str], list[tuple[int, int, int, int]]]:
        """The next batch: cropped images, captions (some dropped) and, per image, its original height and width
        and its crop's top-left corner (SDXL's size and crop conditioning)."""
        idx = []
        while len(idx) < self.settings.batch_size:
            if self.cursor == len(self.order):  # a new epoch: a new permutation
                self.order = torch.randperm(len(self.images), generator=self.generator)
                self.cursor = 0
            take = min(self.settings.batch_size - len(idx), len(self.order) - self.cursor)
            idx += self.order[self.cursor:self.cursor + take].tolist()
            self.cursor += take
        upcoming = self.order[self.cursor:self.cursor + self.settings.batch_size].tolist()
        images, corners = crop_and_flip([self.images[i] for i in idx], self.resolution, self.settings.center_crop,
                                        self.settings.random_flip, self.generator)
        self.images.prefetch(upcoming)  # decoded and resized off the training thread while this batch trains
        sizes = [self.images.original_size(i) for i in idx]
        drop = torch.rand(len(idx), generator=self.generator) < self.settings.caption_dropout
        captions = ["" if d else self.captions[i] for i, d in zip(idx, drop.tolist())]
        return images, captions, [(h, w, top, left) for (h, w), (top, left) in zip(sizes, corners)]

    def micro_step(self) -> torch.Tensor:
        images, captions, geometry = self.next_batch()
        pipe, device = self.pipe, self.device
        with torch.no_grad():
            pixels = images_to_tensor(images).to(device, self.vae_dtype)
            dist = pipe.vae.encode(pixels).latent_dist
            eps = torch.randn(dist.mean.shape, generator=self.generator).to(device, dist.mean.dtype)
            latents = dist.mean + dist.std * eps
            shift = getattr(pipe.vae.config, "shift_factor", None)
            if shift is not None:  # SD3's VAE: latents are shifted before they are scaled
                latents = latents - shift
            latents = (latents * pipe.vae.config.scaling_factor).float()
            conditioning = families.to(families.encode_captions(pipe, self.family, captions, self.resolution,
                                                                geometry), device, torch.float32)
        with torch.autocast(device.type, dtype=self.autocast_dtype, enabled=self.settings.mixed_precision != "no"):
            return families.denoising_loss(self.family, self.denoiser, self.noise_scheduler, latents, conditioning,
                                           self.generator, self.settings.snr_gamma)

    def train_step(self) -> float:
        accumulation = self.settings.gradient_accumulation_steps
        parts = []
        for _ in range(accumulation):
            loss = self.micro_step()
            self.scaler.scale(loss / accumulation).backward()
            parts.append(loss.detach().float() / accumulation)
        total = float(torch.stack(parts).sum().item())  # the step's one host sync (the loss stays on the GPU till here)
        if not np.isfinite(total) and not self.scaler.is_enabled():  # before the update: the weights stay finite
            raise FloatingPointError(f"non-finite loss ({total}) at step {self.step + 1}")
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, self.settings.max_grad_norm)
        self.scaler.step(self.optimizer)  # fp16: skipped when a gradient is not finite (the scale is then lowered)
        self.scaler.update()
        if self.scaler.is_enabled():  # fp16 overflows now and then; a run that only overflows is broken
            self.skipped_in_a_row = 0 if np.isfinite(total) else self.skipped_in_a_row + 1
            if self.skipped_in_a_row >= MAX_SKIPPED_STEPS:
                raise FloatingPointError(f"non-finite loss ({total}) at step {self.step + 1}: fp16 skipped "
                                         f"{MAX_SKIPPED_STEPS} steps in a row (use bf16 or a lower learning rate)")
        lr = self.lr_scheduler.get_last_lr()[0]
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.losses.append((self.step, total, lr))
        return total

    # -- checkpoints
    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-NNNNNN/``: the trainable weights and every tensor of the training state (optimizer
        moments, RNG state, data order) as safetensors, the rest (step, schedule, scaler, losses) as JSON — nothing
        pickled, so resuming a run folder never executes code from it."""
        from safetensors.torch import save_file

        root = self.run_dir / CHECKPOINTS
        final = root / f"step-{self.step:06d}"
        tmp = root / f".tmp-step-{self.step:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(trainable_state(self.denoiser), tmp / "trainable.safetensors")
        optimizer = self.optimizer.state_dict()
        tensors = {f"optimizer.{index}.{key}": value.contiguous() for index, slots in optimizer["state"].items()
                   for key, value in slots.items()}
        tensors.update(generator=self.generator.get_state(), order=self.order.contiguous())
        save_file(tensors, tmp / "state.safetensors")
        write_json(tmp / "state.json", {"step": self.step, "cursor": self.cursor, "losses": self.losses,
                                        "optimizer_param_groups": optimizer["param_groups"],
                                        "optimizer_slots": {str(i): sorted(v) for i, v in optimizer["state"].items()},
                                        "lr_scheduler": self.lr_scheduler.state_dict(),
                                        "scaler": self.scaler.state_dict()})
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)  # a checkpoint exists completely or not at all
        for old in sorted(root.glob("step-*"))[:-self.settings.keep_checkpoints]:
            shutil.rmtree(old)
        _write_losses(self.run_dir / "loss.csv", self.losses)
        return final

    def load_checkpoint(self, folder: Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` (safetensors and JSON only; a checkpoint in any
        other form — such as a pickled ``state.pt`` — is refused, never loaded)."""
        from safetensors.torch import load_file

        if not (folder / "state.json").is_file() or not (folder / "state.safetensors").is_file():
            raise InputError(folder, "not a checkpoint of this kit (state.json and state.safetensors are missing; "
                             "pickled files such as state.pt are never loaded)",
                             f"delete {folder.parent} to restart the run from step 0")
        weights = load_file(folder / "trainable.safetensors")
        params = dict(self.denoiser.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
        tensors = load_file(folder / "state.safetensors")
        state = json.loads((folder / "state.json").read_text())
        slots = {int(i): {key: tensors[f"optimizer.{i}.{key}"] for key in keys}
                 for i, keys in state["optimizer_slots"].items()}
        self.optimizer.load_state_dict({"state": slots, "param_groups": state["optimizer_param_groups"]})
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(tensors["generator"])
        self.order, self.cursor, self.step = tensors["order"], state["cursor"], state["step"]
        self.losses = [tuple(row) for row in state["losses"]]

    def save_weights(self) -> Path:
        if self.settings.method == "lora":
            families.save_lora(self.denoiser, self.family, self.run_dir / LORA_DIR)
            return self.run_dir / LORA_DIR
        self.denoiser.save_pretrained(self.run_dir / self.family.denoiser, safe_serialization=True)
        return self.run_dir / self.family.denoiser


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((Path(run_dir) / CHECKPOINTS).glob("step-*"))
    return found[-1] if found else None


def _same_run(run_dir: Path, config: FinetuneConfig) -> bool:
    saved = Path(run_dir) / "config.json"
    return saved.is_file() and (FinetuneConfig.model_validate_json(saved.read_text()).training_fields
                                == config.training_fields)


def _prepare_run_dir(config: FinetuneConfig) -> None:
    """Create the run folder, or check that an existing one holds the same run (then it is resumed)."""
    run_dir = Path(config.run_dir)
    saved = run_dir / "config.json"
    if saved.is_file():
        old = FinetuneConfig.model_validate_json(saved.read_text())
        if old.training_fields != config.training_fields:
            raise InputError(saved, "the run folder holds a run with a different training configuration",
                             "use another run_dir, or delete this folder to start again")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(saved, json.loads(config.model_dump_json()))
    write_json(run_dir / "versions.json", library_versions())


def finetune(config: FinetuneConfig, sample: bool = True, stop_after: int | None = None) -> dict:
    """Fine-tune (resuming from the run folder's latest checkpoint), save the weights, then generate samples
    for the dataset's held-out captions. Returns the status record (also in ``status.json``).

    A run already marked done is returned as it is. A non-finite loss marks the run failed with its reason;
    the checkpoints already written stay. ``stop_after`` ends training early (tests of resumption)."""
    config = config.resolved()
    run_dir = Path(config.run_dir)
    status = read_status(run_dir)
    if status and status["status"] == "done" and _same_run(run_dir, config):
        return status
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / ".lock").touch()
    except OSError as err:
        raise InputError(run_dir, f"the run folder cannot be written ({type(err).__name__}: {err.strerror or err})",
                         "pass a run folder (--out) in a place you can write to") from None
    with run_lock(run_dir):
        return _finetune_locked(config, sample, stop_after)


def _finetune_locked(config: FinetuneConfig, sample: bool, stop_after: int | None) -> dict:
    run_dir = Path(config.run_dir)
    status = read_status(run_dir)
    if status and status["status"] == "done" and _same_run(run_dir, config):  # done while we waited
        return status
    _prepare_run_dir(config)
    try:  # a run that cannot start says so in status.json, with the reason
        manifests = load_manifests(config.manifests)
        device = pick_device(config.train.device)
        validate_dataset(manifests, config.dataset)  # every row and image, before anything is read for training
        images, captions = load_dataset_split(manifests, config.dataset, "train")
        pipe = load_pipeline(config)
        trainer = Trainer(config, pipe, images, captions, device)
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is not None:
            trainer.load_checkpoint(checkpoint)
    except McBenchError as err:
        write_status(run_dir, "failed", step=0, reason=str(err))
        raise
    except Exception as err:  # any other start failure (an empty scheduler folder, LoRA targets matching nothing…)
        write_status(run_dir, "failed", step=0, reason=f"the run could not start ({type(err).__name__}: {err})")
        raise
    resumed_from = trainer.step
    write_status(run_dir, "running", step=trainer.step, resumed_from=resumed_from or None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    every = config.train.checkpoint_every
    try:
        while trainer.step < config.train.steps:
            trainer.train_step()
            if every and trainer.step % every == 0 and trainer.step < config.train.steps:
                trainer.save_checkpoint()
            if stop_after is not None and trainer.step >= stop_after:
                return write_status(run_dir, "running", step=trainer.step)
    except FloatingPointError as err:
        _write_losses(run_dir / "loss.csv", trainer.losses)
        return write_status(run_dir, "failed", step=trainer.step,
                            reason=f"{err}; lower train.learning_rate or check the dataset's images "
                                   f"(the checkpoints before it are kept in {run_dir / CHECKPOINTS})")
    except Exception as err:  # never leave a run that stopped saying "running"
        _write_losses(run_dir / "loss.csv", trainer.losses)
        write_status(run_dir, "failed", step=trainer.step, reason=f"training stopped at step {trainer.step + 1} "
                     f"({type(err).__name__}: {err}); the checkpoints before it are kept in {run_dir / CHECKPOINTS}")
        raise
    train_seconds = time.perf_counter() - start
    _write_losses(run_dir / "loss.csv", trainer.losses)
    trainer.save_weights()
    timings = {"device": device.type, "train_seconds": round(train_seconds, 3),
               "train_steps_timed": trainer.step - resumed_from,
               "steps_per_second": round((trainer.step - resumed_from) / max(train_seconds, 1e-9), 3),
               "resumed_from_step": resumed_from, "train_peak_memory_mb": round(peak_memory_mb(device), 1),
               "threads": torch.get_num_threads()}
    write_json(run_dir / "timings.json", timings)
    trainer_steps = trainer.step
    del trainer, pipe
    if sample:
        try:
            generate_run(run_dir)
        except Exception as err:  # the weights are trained and kept; the run says why it is not done
            write_status(run_dir, "failed", step=trainer_steps, reason=f"sampling failed after training "
                         f"({type(err).__name__}: {err}); the trained weights are kept in {run_dir} — fix the cause "
                         "and rerun the same command, which samples without training again")
            raise
    shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)  # the final weights are saved; resuming is over
    return write_status(run_dir, "done", step=config.train.steps, final_loss=_final_loss(run_dir))




def _final_loss(run_dir: Path) -> float:
    import pandas as pd

    losses = pd.read_csv(Path(run_dir) / "loss.csv")["loss"]
    return float(losses.tail(max(1, len(losses) // 10)).mean()) if len(losses) else None
