"""Fine-tune: LoRA or full fine-tuning of a Stable-Diffusion-family pipeline on a manifest dataset.

The objective follows diffusers' ``train_text_to_image.py`` / ``train_text_to_image_lora.py``: resize to the
training resolution, centre or random crop, optional flip; encode with the VAE (a posterior sample times its
``scaling_factor``); draw noise and timesteps; add noise with the pipeline's scheduler and regress the target of
its ``prediction_type`` (``epsilon``: the noise; ``v_prediction``: the velocity; ``sample``: the clean latents),
optionally weighted by min-SNR-γ (Hang et al., 2023). Captions are dropped (replaced by the empty caption) with
probability ``caption_dropout`` so that classifier-free guidance works. AdamW, a diffusers learning-rate schedule
with warm-up, gradient accumulation, gradient clipping, optional gradient checkpointing; bf16/fp16 autocast on a
GPU, float32 on CPU.

Every random draw (data order, crops, flips, caption dropout, VAE posterior samples, noise, timesteps) comes from one
``torch.Generator`` seeded by ``TrainSettings.seed``, whose state is checkpointed with the trainable weights, the
optimizer, the learning-rate schedule and the data order. On CPU the same configuration gives identical weights, and
a run killed and resumed from its latest checkpoint ends with the same weights as an uninterrupted one.

The run folder (``FinetuneConfig.run_dir``)::

    config.json            the resolved FinetuneConfig (model source and revision included)
    status.json            {"status": "running" | "done" | "failed", "reason", "step", ...}
    loss.csv               step, loss, lr                     (one row per optimizer step)
    lora/pytorch_lora_weights.safetensors   (method "lora": read by ``pipe.load_lora_weights``)
    unet/                  (method "full": ``UNet2DConditionModel.save_pretrained``)
    checkpoints/step-NNNNNN/   trainable.safetensors + state.pt (optimizer, schedule, RNG, data order, losses)
    samples/NNNNN.png, samples.csv (file, caption, seed)      written by :mod:`mc_bench.generate`
    timings.json           train/sample seconds, steps and images per second, peak memory, device
    versions.json          library versions
"""

from __future__ import annotations

import csv
import json
import platform
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict

from .config import GenerateSettings, Manifests, ModelSpec, TrainSettings, load_manifests, resolve_folder, validated
from .errors import InputError, ManifestError

LORA_DIR = "lora"
UNET_DIR = "unet"
CHECKPOINTS = "checkpoints"
SUPPORTED_FAMILIES = ("tiny-sd", "sd1", "sd2")


# ------------------------------------------------------------------------------------------------ objective


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, h, w, 3) -> float (n, 3, h, w) in [-1, 1], as diffusers' training scripts normalise."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def encode_text(tokenizer, text_encoder, captions: list[str]) -> torch.Tensor:
    """Last hidden states of the text encoder for padded captions, as Stable Diffusion conditions its UNet."""
    tok = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")
    return text_encoder(tok.input_ids.to(text_encoder.device))[0]


def diffusion_loss(unet, noise_scheduler, latents: torch.Tensor, encoder_hidden_states: torch.Tensor,
                   generator: torch.Generator, snr_gamma: float | None = None) -> torch.Tensor:
    """One denoising loss (diffusers' text-to-image objective; see the module docstring). Random draws come from
    the CPU ``generator`` (so that CPU and GPU runs draw the same numbers) and move to the latents' device."""
    device = latents.device
    noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    timesteps = timesteps.to(device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    elif prediction_type == "sample":
        target = latents
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}")
    pred = unet(noisy, timesteps, encoder_hidden_states).sample
    if snr_gamma is None:
        return F.mse_loss(pred.float(), target.float())
    alphas = noise_scheduler.alphas_cumprod.to(device)[timesteps]
    snr = alphas / (1 - alphas)
    weight = torch.minimum(snr, torch.full_like(snr, snr_gamma))
    weight = {"epsilon": weight / snr, "v_prediction": weight / (snr + 1), "sample": weight}[prediction_type]
    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (loss * weight).mean()


# ------------------------------------------------------------------------------------------------ configuration


class FinetuneConfig(BaseModel):
    """One fine-tuning run: which model on which dataset, how to train, how to sample, and where it goes.

    ``model`` is a ``models.yaml`` id, a local diffusers folder, or ``hf:<id>`` (then ``revision`` is needed).
    ``dataset`` is a ``datasets.yaml`` id. The CLI (``mc-bench finetune``) and the fine-tune notebook's parameters
    build this object; its resolved form is saved as ``config.json`` in ``run_dir``."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model: str
    dataset: str
    run_dir: Path
    revision: str | None = None
    manifests: Path | None = None
    train: TrainSettings = TrainSettings()
    generate: GenerateSettings = GenerateSettings()

    # filled in by resolve()
    model_source: str | None = None
    model_family: str | None = None

    def resolved(self) -> "FinetuneConfig":
        """The config with the model's source, revision and family looked up in ``models.yaml``."""
        manifests = load_manifests(self.manifests)
        manifests.dataset(self.dataset)  # an unknown dataset fails here, before anything is written
        spec = resolve_model(self.model, self.revision, manifests)
        source = spec.source if spec.source.startswith("hf:") else str(resolve_folder(manifests.folder, spec.source))
        return self.model_copy(update={"model_source": source, "revision": spec.revision,
                                       "model_family": spec.family})

    @property
    def training_fields(self) -> dict:
        """What determines the trained weights (compared before resuming a run folder)."""
        return self.model_dump(mode="json", include={"model", "dataset", "revision", "model_source", "train"})


def resolve_model(model: str, revision: str | None, manifests: Manifests) -> ModelSpec:
    """A ``models.yaml`` entry, or an ad-hoc entry for a diffusers folder or ``hf:<id>``."""
    if model in manifests.models:
        return manifests.models[model]
    if model.startswith("hf:"):
        return ModelSpec(id="adhoc", source=model, revision=revision or "main", family="sd1", resolution=512)
    folder = Path(model).expanduser()
    if (folder / "model_index.json").is_file():
        return ModelSpec(id="adhoc", source=str(folder.resolve()), family="sd1", resolution=_folder_resolution(folder))
    raise ManifestError(
        manifests.folder / "models.yaml", f"unknown model {model!r} (not an id in models.yaml, not a diffusers "
        "folder with model_index.json, not hf:<id>)", f"use one of {sorted(manifests.models)[:6]}..., a pipeline "
        "folder, or hf:<hub id> with --revision")


def _folder_resolution(folder: Path) -> int:
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    return unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)


def pick_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise InputError("train.device", "cuda was asked for but no GPU is visible", "use device: auto or cpu")
    return torch.device("cuda" if setting in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------------------------------------ loading


def load_pipeline(config: FinetuneConfig, torch_dtype=torch.float32):
    """The base pipeline of a resolved config (local folder or hub id at its revision)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # "Loading pipeline components" bars clutter logs and notebooks
    if config.model_family not in SUPPORTED_FAMILIES:
        raise InputError(f"model {config.model!r}", f"family {config.model_family!r} is not supported by fine-tuning",
                         f"fine-tuning supports the SD UNet families {SUPPORTED_FAMILIES}; pick such a model")
    source = config.model_source
    if source.startswith("hf:"):
        pipe = StableDiffusionPipeline.from_pretrained(source[3:], revision=config.revision, torch_dtype=torch_dtype,
                                                       safety_checker=None, requires_safety_checker=False)
    else:
        if not (Path(source) / "model_index.json").is_file():
            raise InputError(source, "not a diffusers pipeline folder (model_index.json is missing)",
                             "point models.yaml at a folder written by save_pretrained, or rebuild the zoo with "
                             "`mc-bench world zoo --rebuild`")
        pipe = StableDiffusionPipeline.from_pretrained(source, torch_dtype=torch_dtype, local_files_only=True,
                                                       safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_dataset_split(manifests: Manifests, dataset_id: str, role: str) -> tuple[list[np.ndarray], list[str]]:
    """Images (uint8 arrays, any size) and captions of the ``train`` or ``eval`` split of a manifest dataset."""
    from .data import dataset_folder, read_split, read_world_split

    spec = manifests.dataset(dataset_id)
    if spec.source_kind == "world":
        images, captions = read_world_split(manifests, dataset_id, role)
        return list(images), captions
    if spec.source_kind == "folder":
        images, captions = read_split(dataset_folder(manifests, spec),
                                      spec.splits.train if role == "train" else spec.splits.eval, spec.caption_column)
        return list(images), captions
    import datasets

    # a hub split name may use the `datasets` slicing syntax, e.g. "train[:90%]" / "train[90%:]"
    split = datasets.load_dataset(spec.source[3:], spec.params.get("config"), revision=spec.revision,
                                  split=spec.splits.train if role == "train" else spec.splits.eval)
    return ([np.asarray(im.convert("RGB")) for im in split[spec.image_column]],
            [str(c) for c in split[spec.caption_column]])


def resize_shorter(images: list[np.ndarray], resolution: int) -> list[np.ndarray]:
    """Resize each image so that its shorter side is ``resolution`` (bilinear, as diffusers' scripts do)."""
    from PIL import Image

    out = []
    for image in images:
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        h, w = image.shape[:2]
        if min(h, w) != resolution:
            scale = resolution / min(h, w)
            size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
            image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        out.append(image)
    return out


def crop_and_flip(images: list[np.ndarray], resolution: int, center: bool, flip: bool,
                  generator: torch.Generator) -> np.ndarray:
    """Centre or random crop to ``resolution`` and optional horizontal flip, drawn from ``generator``."""
    batch = []
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
        batch.append(image)
    return np.stack(batch)


# ------------------------------------------------------------------------------------------------ run folder


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("mc-bench", "torch", "diffusers", "transformers", "peft", "accelerate", "numpy", "torchmetrics",
                 "clean-fid", "image-reward"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def write_json(path: Path, data: dict) -> None:
    """Write atomically (temp file + rename): a killed process never leaves half a JSON file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def read_status(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "status.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_status(run_dir: Path, status: str, **fields) -> dict:
    record = {"status": status, **fields, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json(Path(run_dir) / "status.json", record)
    return record


def _write_losses(path: Path, losses: list[tuple[int, float, float]]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "loss", "lr"])
        writer.writerows(losses)
    tmp.replace(path)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ------------------------------------------------------------------------------------------------ trainer


def add_lora(unet, settings: TrainSettings) -> None:
    """Attach a peft LoRA adapter to the UNet's attention projections (diffusers' LoRA script's config)."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha or settings.lora_rank,
                                init_lora_weights="gaussian", target_modules=list(settings.lora_target_modules)))


def trainable_state(unet) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone().contiguous() for name, p in unet.named_parameters() if p.requires_grad}


def save_lora(unet, folder: Path) -> None:
    """Save the LoRA layers in the format ``StableDiffusionPipeline.load_lora_weights`` reads."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True)


class Trainer:
    """The training loop of one run (see the module docstring); :func:`finetune` is the entry point."""

    def __init__(self, config: FinetuneConfig, pipe, images: list[np.ndarray], captions: list[str],
                 device: torch.device):
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler

        s = self.settings = config.train
        self.config, self.pipe, self.device = config, pipe, device
        self.run_dir = Path(config.run_dir)
        self.resolution = s.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
        self.images = resize_shorter(images, self.resolution)
        self.captions = captions
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        weight_dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[s.mixed_precision]
        self.autocast_dtype = weight_dtype
        for frozen in (pipe.vae, pipe.text_encoder):
            frozen.requires_grad_(False).eval()
            if device.type != "cpu" or weight_dtype != torch.float32:
                frozen.to(device, weight_dtype)
        unet = self.unet = pipe.unet
        torch.manual_seed(s.seed)  # peft initialises LoRA layers from the global RNG
        if s.method == "lora":
            add_lora(unet, s)
        else:
            unet.requires_grad_(True)
        if device.type != "cpu":
            unet.to(device)
        unet.train()
        if s.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.params = [p for p in unet.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=s.learning_rate, weight_decay=s.adam_weight_decay)
        self.lr_scheduler = get_scheduler(s.lr_scheduler, self.optimizer, num_warmup_steps=s.lr_warmup_steps,
                                          num_training_steps=s.steps)
        self.scaler = torch.amp.GradScaler(device.type, enabled=s.mixed_precision == "fp16")
        self.generator = torch.Generator().manual_seed(s.seed)
        self.order = torch.randperm(len(self.images), generator=self.generator)
        self.cursor = 0
        self.step = 0
        self.losses: list[tuple[int, float, float]] = []

    # -- data
    def next_batch(self) -> tuple[np.ndarray, list[str]]:
        idx = []
        while len(idx) < self.settings.batch_size:
            if self.cursor == len(self.order):  # a new epoch: a new permutation
                self.order = torch.randperm(len(self.images), generator=self.generator)
                self.cursor = 0
            take = min(self.settings.batch_size - len(idx), len(self.order) - self.cursor)
            idx += self.order[self.cursor:self.cursor + take].tolist()
            self.cursor += take
        images = crop_and_flip([self.images[i] for i in idx], self.resolution, self.settings.center_crop,
                               self.settings.random_flip, self.generator)
        drop = torch.rand(len(idx), generator=self.generator) < self.settings.caption_dropout
        captions = ["" if d else self.captions[i] for i, d in zip(idx, drop.tolist())]
        return images, captions

    def micro_step(self) -> torch.Tensor:
        images, captions = self.next_batch()
        pipe, device = self.pipe, self.device
        with torch.no_grad():
            pixels = images_to_tensor(images).to(device, self.autocast_dtype)
            dist = pipe.vae.encode(pixels).latent_dist
            eps = torch.randn(dist.mean.shape, generator=self.generator).to(device, dist.mean.dtype)
            latents = ((dist.mean + dist.std * eps) * pipe.vae.config.scaling_factor).float()
            text = encode_text(pipe.tokenizer, pipe.text_encoder, captions).float()
        with torch.autocast(device.type, dtype=self.autocast_dtype, enabled=self.settings.mixed_precision != "no"):
            return diffusion_loss(self.unet, self.noise_scheduler, latents, text, self.generator,
                                  self.settings.snr_gamma)

    def train_step(self) -> float:
        accumulation = self.settings.gradient_accumulation_steps
        total = 0.0
        for _ in range(accumulation):
            loss = self.micro_step()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss ({loss.item()}) at step {self.step + 1}")
            self.scaler.scale(loss / accumulation).backward()
            total += loss.item() / accumulation
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, self.settings.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.lr_scheduler.get_last_lr()[0]
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.losses.append((self.step, total, lr))
        return total

    # -- checkpoints
    def save_checkpoint(self) -> Path:
        from safetensors.torch import save_file

        root = self.run_dir / CHECKPOINTS
        final = root / f"step-{self.step:06d}"
        tmp = root / f".tmp-step-{self.step:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(trainable_state(self.unet), tmp / "trainable.safetensors")
        torch.save({"step": self.step, "optimizer": self.optimizer.state_dict(),
                    "lr_scheduler": self.lr_scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                    "generator": self.generator.get_state(), "order": self.order, "cursor": self.cursor,
                    "losses": self.losses}, tmp / "state.pt")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)  # a checkpoint exists completely or not at all
        for old in sorted(root.glob("step-*"))[:-self.settings.keep_checkpoints]:
            shutil.rmtree(old)
        _write_losses(self.run_dir / "loss.csv", self.losses)
        return final

    def load_checkpoint(self, folder: Path) -> None:
        from safetensors.torch import load_file

        weights = load_file(folder / "trainable.safetensors")
        params = dict(self.unet.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
        state = torch.load(folder / "state.pt", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        self.order, self.cursor, self.step, self.losses = state["order"], state["cursor"], state["step"], state["losses"]

    def save_weights(self) -> Path:
        if self.settings.method == "lora":
            save_lora(self.unet, self.run_dir / LORA_DIR)
            return self.run_dir / LORA_DIR
        self.unet.save_pretrained(self.run_dir / UNET_DIR, safe_serialization=True)
        return self.run_dir / UNET_DIR


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
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):
        return _finetune_locked(config, sample, stop_after)


@contextmanager
def run_lock(run_dir: Path, timeout: float = 120.0):
    """An exclusive lock on the run folder: two processes never train the same run. A process killed while
    holding it releases it (the OS drops the lock), so a restarted study waits at most for a dying one."""
    import fcntl

    with open(Path(run_dir) / ".lock", "w") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise InputError(run_dir, f"the run folder is in use by another process for over {timeout:.0f} s",
                                     "wait for that run to finish, or stop it") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _finetune_locked(config: FinetuneConfig, sample: bool, stop_after: int | None) -> dict:
    run_dir = Path(config.run_dir)
    status = read_status(run_dir)
    if status and status["status"] == "done" and _same_run(run_dir, config):  # done while we waited
        return status
    _prepare_run_dir(config)
    manifests = load_manifests(config.manifests)
    device = pick_device(config.train.device)
    images, captions = load_dataset_split(manifests, config.dataset, "train")
    pipe = load_pipeline(config)
    trainer = Trainer(config, pipe, images, captions, device)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None:
        trainer.load_checkpoint(checkpoint)
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
    train_seconds = time.perf_counter() - start
    _write_losses(run_dir / "loss.csv", trainer.losses)
    trainer.save_weights()
    timings = {"device": device.type, "train_seconds": round(train_seconds, 3),
               "train_steps_timed": trainer.step - resumed_from,
               "steps_per_second": round((trainer.step - resumed_from) / max(train_seconds, 1e-9), 3),
               "resumed_from_step": resumed_from, "train_peak_memory_mb": round(peak_memory_mb(device), 1),
               "threads": torch.get_num_threads()}
    write_json(run_dir / "timings.json", timings)
    del trainer, pipe
    if sample:
        from .generate import generate_run

        generate_run(run_dir)
    shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)  # the final weights are saved; resuming is over
    return write_status(run_dir, "done", step=config.train.steps, final_loss=_final_loss(run_dir))


def build_config(model: str, dataset: str, run_dir: str | Path, profile: str | None = None,
                 overrides: dict | None = None, manifests: str | Path | None = None,
                 revision: str | None = None) -> FinetuneConfig:
    """The one way a run's configuration is made (CLI, notebook, study runner): the profile's ``train`` and
    ``generate`` settings (defaults without a profile), updated by ``overrides`` such as
    ``{"train": {"steps": 100}, "generate": {"n_samples": 32}}``, validated."""
    base = {"train": {}, "generate": {}}
    if profile is not None:
        p = load_manifests(manifests).profile(profile)
        base = {"train": p.train.model_dump(exclude_unset=True), "generate": p.generate.model_dump(exclude_unset=True)}
    for section, values in (overrides or {}).items():
        if section not in base:
            raise InputError("overrides", f"unknown section {section!r}", "use `train` or `generate`")
        base[section] = {**base[section], **(values or {})}
    settings = {"train": validated(TrainSettings, base["train"], "train"),
                "generate": validated(GenerateSettings, base["generate"], "generate")}
    return FinetuneConfig(model=model, dataset=dataset, run_dir=Path(run_dir), revision=revision,
                          manifests=Path(manifests) if manifests else None, **settings)


def _final_loss(run_dir: Path) -> float:
    import pandas as pd

    losses = pd.read_csv(Path(run_dir) / "loss.csv")["loss"]
    return float(losses.tail(max(1, len(losses) // 10)).mean()) if len(losses) else None


def load_run_config(run_dir: Path) -> FinetuneConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise InputError(run_dir, "not a run folder (config.json is missing)",
                         "pass a folder written by `mc-bench finetune`")
    return FinetuneConfig.model_validate_json(path.read_text())


def load_finetuned_pipeline(run_dir: Path, device: str | torch.device = "cpu"):
    """The base pipeline with the run's LoRA layers (``load_lora_weights``) or fine-tuned UNet."""
    from diffusers import UNet2DConditionModel

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    pipe = load_pipeline(config)
    if config.train.method == "lora":
        weights = run_dir / LORA_DIR / "pytorch_lora_weights.safetensors"
        if not weights.is_file():
            raise InputError(weights, "LoRA weights missing (the run did not finish)", "rerun `mc-bench finetune`")
        from diffusers.utils import logging as diffusers_logging

        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # "no LoRA keys for the text encoder": we train the UNet only
        try:
            pipe.load_lora_weights(run_dir / LORA_DIR)
        finally:
            diffusers_logging.set_verbosity(level)
    else:
        if not (run_dir / UNET_DIR / "config.json").is_file():
            raise InputError(run_dir / UNET_DIR, "fine-tuned UNet missing (the run did not finish)",
                             "rerun `mc-bench finetune`")
        pipe.unet = UNet2DConditionModel.from_pretrained(run_dir / UNET_DIR, torch_dtype=torch.float32)
    return pipe.to(device)
