"""The run folder of one fine-tuning run: its typed configuration, its status, and the pipeline it produced.

The run folder (``FinetuneConfig.run_dir``)::

    config.json            the resolved FinetuneConfig (model source and revision included)
    status.json            {"status": "running" | "done" | "failed", "reason", "step", ...}
    loss.csv               step, loss, lr                     (one row per optimizer step)
    lora/pytorch_lora_weights.safetensors   (method "lora": read by ``pipe.load_lora_weights``)
    unet/ or transformer/  (method "full": the family's denoiser, ``save_pretrained``; see :mod:`.families`)
    checkpoints/step-NNNNNN/   trainable.safetensors + state.pt (optimizer, schedule, RNG, data order, losses)
    samples/NNNNN.png, samples.csv (file, caption, seed)      written by :mod:`mc_bench.train.generate`
    timings.json           train/sample seconds, steps and images per second, peak memory, device
    versions.json          library versions
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from ..config import GenerateSettings, Manifests, ModelSpec, TrainSettings, load_manifests, resolve_folder, validated
from ..errors import InputError, ManifestError
from ..io import write_json
from ..paths import hub_id, is_hub
from .families import FAMILIES, get_family

LORA_DIR = "lora"
CHECKPOINTS = "checkpoints"
SUPPORTED_FAMILIES = tuple(FAMILIES)  # tiny-sd, sd1, sd2, sdxl, sd3 (pixart and flux are recognised, not trained)
PIPELINE_FAMILIES = {  # model_index.json's _class_name → family (StableDiffusionPipeline: see pipeline_family)
    "StableDiffusionXLPipeline": "sdxl", "StableDiffusion3Pipeline": "sd3", "PixArtAlphaPipeline": "pixart",
    "PixArtSigmaPipeline": "pixart", "FluxPipeline": "flux"}
CLIP_WIDTHS = {768: "sd1", 1024: "sd2"}  # the text encoder's hidden size of SD 1.x (CLIP ViT-L) and 2.x (OpenCLIP-H)


def pipeline_family(model_index: dict, text_encoder: dict | None, where: str) -> str:
    """The family of a diffusers pipeline, read from its own ``model_index.json`` (and, for a
    ``StableDiffusionPipeline``, its text encoder's width: 768 → sd1, 1024 → sd2, other → tiny-sd)."""
    name = model_index.get("_class_name", "")
    if name in PIPELINE_FAMILIES:
        return PIPELINE_FAMILIES[name]
    if name == "StableDiffusionPipeline":
        return CLIP_WIDTHS.get((text_encoder or {}).get("hidden_size"), "tiny-sd")
    raise InputError(where, f"pipeline class {name or '(none)'!r} is not a text-to-image family the kit knows",
                     f"use a pipeline of one of {sorted(set(PIPELINE_FAMILIES) | {'StableDiffusionPipeline'})}")


def _folder_family(folder: Path) -> str:
    index = json.loads((folder / "model_index.json").read_text())
    encoder = folder / "text_encoder" / "config.json"
    return pipeline_family(index, json.loads(encoder.read_text()) if encoder.is_file() else None,
                           str(folder / "model_index.json"))


def _hub_family(repo: str, revision: str, offline: bool | None = None) -> str:
    """The family of a hub pipeline from its ``model_index.json`` (and text encoder config) at ``revision``;
    ``offline`` (default: ``HF_HUB_OFFLINE``) reads the local hub cache only."""
    import os

    from huggingface_hub import hf_hub_download

    if offline is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        index = json.loads(Path(hf_hub_download(repo, "model_index.json", revision=revision,
                                                local_files_only=offline)).read_text())
        encoder = None
        if index.get("_class_name") == "StableDiffusionPipeline":
            encoder = json.loads(Path(hf_hub_download(repo, "text_encoder/config.json", revision=revision,
                                                      local_files_only=offline)).read_text())
    except Exception as err:  # offline and not cached, unknown id or revision, no network
        raise InputError(f"hf:{repo}", f"the hub model's model_index.json could not be read at revision {revision} "
                         f"({'offline: not in the local hub cache' if offline else type(err).__name__})",
                         "download it on a machine that reaches the hub (huggingface-cli download) into the cache, "
                         "or save it as a local folder and point models.yaml at that folder") from None
    return pipeline_family(index, encoder, f"hf:{repo}@{revision}/model_index.json")


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
    allow_pickle_weights: bool = False

    def resolved(self) -> "FinetuneConfig":
        """The config with the model's source, revision and family looked up in ``models.yaml``."""
        manifests = load_manifests(self.manifests)
        manifests.dataset(self.dataset)  # an unknown dataset fails here, before anything is written
        spec = resolve_model(self.model, self.revision, manifests)
        source = spec.source if is_hub(spec.source) else str(resolve_folder(manifests.folder, spec.source))
        return self.model_copy(update={"model_source": source, "revision": spec.revision,
                                       "model_family": spec.family, "allow_pickle_weights": spec.allow_pickle_weights})

    @property
    def training_fields(self) -> dict:
        """What determines the trained weights (compared before resuming a run folder)."""
        return self.model_dump(mode="json", include={"model", "dataset", "revision", "model_source", "train"})


def resolve_model(model: str, revision: str | None, manifests: Manifests) -> ModelSpec:
    """A ``models.yaml`` entry, or an ad-hoc entry for a diffusers folder or ``hf:<id>`` (with its revision)."""
    if model in manifests.models:
        return manifests.models[model]
    if is_hub(model):
        if not revision:
            raise InputError(f"model {model!r}", "a hub model needs a revision (a commit hash or tag), so that the run "
                             "can be repeated", "pass --revision <commit>, or add the model to models.yaml with one")
        family = _hub_family(hub_id(model), revision)
        return ModelSpec(id="adhoc", source=model, revision=revision, family=family,
                         resolution=1024 if family in ("sdxl", "sd3", "flux", "pixart") else 512)
    folder = Path(model).expanduser()
    if (folder / "model_index.json").is_file():
        return ModelSpec(id="adhoc", source=str(folder.resolve()), family=_folder_family(folder),
                         resolution=_folder_resolution(folder))
    raise ManifestError(
        manifests.folder / "models.yaml", f"unknown model {model!r} (not an id in models.yaml, not a diffusers "
        "folder with model_index.json, not hf:<id>)", f"use one of {sorted(manifests.models)[:6]}..., a pipeline "
        "folder, or hf:<hub id> with --revision")


def _folder_resolution(folder: Path) -> int:
    """The pipeline's native resolution: its denoiser's latent ``sample_size`` times the VAE's downsampling."""
    vae = folder / "vae" / "config.json"
    for denoiser in ("unet", "transformer"):
        config = folder / denoiser / "config.json"
        if config.is_file() and vae.is_file():
            down = 2 ** (len(json.loads(vae.read_text())["block_out_channels"]) - 1)
            return json.loads(config.read_text())["sample_size"] * down
    return 512


def pick_device(setting: str) -> torch.device:
    """The device of a ``train.device`` setting (``auto``: CUDA when present). On CUDA, float32 matrix products
    and convolutions may use TF32 (as diffusers' scripts' ``--allow_tf32``): several times faster on Ampere and
    later, deterministic on one GPU model."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise InputError("train.device", "cuda was asked for but no GPU is visible", "use device: auto or cpu")
    device = torch.device("cuda" if setting in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def sampling_dtype(mixed_precision: str, device: torch.device) -> torch.dtype:
    """The dtype a run samples in: its training precision (bf16, fp16) on a GPU, float32 on the CPU."""
    if device.type != "cuda":
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)




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


PICKLE_FIX = ("convert the weights to safetensors (diffusers' save_pretrained(safe_serialization=True)), or, if you "
              "trust their origin, set `allow_pickle_weights: true` for this model in models.yaml")


def _check_pipeline_folder(folder: Path, allow_pickle: bool) -> None:
    """Every component ``model_index.json`` names is a subfolder, and its weights are safetensors (or pickles the
    model's entry allows): one error naming what is missing, before diffusers fails with a traceback."""
    index = json.loads((folder / "model_index.json").read_text())
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or value[0] is None:
            continue
        part = folder / name
        if not part.is_dir():
            raise InputError(part, f"the pipeline's {name} folder is missing (model_index.json names it)",
                             "point models.yaml at a complete folder written by save_pretrained")
        if name in ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
            safe = list(part.glob("*.safetensors"))
            pickled = [p for p in part.iterdir() if p.suffix in (".bin", ".ckpt", ".pt", ".pth")]
            if not safe and pickled and not allow_pickle:
                raise InputError(pickled[0], "weights stored as a pickle, which can run code when loaded, are "
                                 "refused", PICKLE_FIX)
            if not safe and not pickled:
                raise InputError(part, f"the pipeline's {name} has no weights file",
                                 "point models.yaml at a complete folder written by save_pretrained")


def load_pipeline(config: FinetuneConfig, torch_dtype=torch.float32):
    """The base pipeline of a resolved config (local folder or hub id at its revision), in the pipeline class of the
    model's family (:mod:`.families`), safetensors only unless the model's entry allows pickled weights."""
    import os

    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # "Loading pipeline components" bars clutter logs and notebooks
    if config.model_family not in SUPPORTED_FAMILIES:
        raise InputError(f"model {config.model!r}", f"family {config.model_family!r} is not supported by fine-tuning",
                         f"fine-tuning supports the families {SUPPORTED_FAMILIES}; pick such a model")
    family = get_family(config.model_family)
    source = config.model_source
    safe = None if config.allow_pickle_weights else True
    if is_hub(source):
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        try:
            pipe = family.pipeline_type().from_pretrained(hub_id(source), revision=config.revision,
                                                          torch_dtype=torch_dtype, use_safetensors=safe,
                                                          local_files_only=offline, **family.load_kwargs())
        except (OSError, ValueError) as err:
            raise InputError(source, f"the hub model could not be loaded at revision {config.revision} "
                             f"({'offline: not in the local hub cache' if offline else type(err).__name__})",
                             "download it on a machine that reaches the hub (huggingface-cli download) into the "
                             "cache, or save it as a local folder and point models.yaml at that folder") from None
    else:
        folder = Path(source)
        if not (folder / "model_index.json").is_file():
            raise InputError(source, "not a diffusers pipeline folder (model_index.json is missing)",
                             "point models.yaml at a folder written by save_pretrained, or rebuild the zoo with "
                             "`mc-bench world zoo --rebuild`")
        _check_pipeline_folder(folder, config.allow_pickle_weights)
        actual = _folder_family(folder)
        if actual != config.model_family:
            raise InputError(folder / "model_index.json", f"the pipeline is of family {actual!r}, but models.yaml "
                             f"says {config.model_family!r} for {config.model!r}",
                             f"set `family: {actual}` in that model's models.yaml entry")
        pipe = family.pipeline_type().from_pretrained(source, torch_dtype=torch_dtype, local_files_only=True,
                                                      use_safetensors=safe, **family.load_kwargs())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_run_config(run_dir: Path) -> FinetuneConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise InputError(run_dir, "not a run folder (config.json is missing)",
                         "pass a folder written by `mc-bench finetune`")
    try:
        return FinetuneConfig.model_validate_json(path.read_text())
    except ValidationError as err:
        raise InputError(path, f"not a run's config ({err.errors()[0]['msg']})", "restore it, or rerun "
                         "`mc-bench finetune` into a new run folder") from None


def load_finetuned_pipeline(run_dir: Path, device: str | torch.device = "cpu", torch_dtype=torch.float32):
    """The base pipeline with the run's LoRA layers (``load_lora_weights``) or fine-tuned denoiser (UNet or
    transformer), in ``torch_dtype``."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    pipe = load_pipeline(config, torch_dtype)
    if config.train.method == "lora":
        weights = run_dir / LORA_DIR / "pytorch_lora_weights.safetensors"
        if not weights.is_file():
            raise InputError(weights, "LoRA weights missing (the run did not finish)", "rerun `mc-bench finetune`")
        from diffusers.utils import logging as diffusers_logging

        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # "no LoRA keys for the text encoder": we train the UNet only
        try:
            # the file is named: offline (HF_HUB_OFFLINE=1) diffusers cannot look a folder's weight name up
            pipe.load_lora_weights(run_dir / LORA_DIR, weight_name=weights.name)
        finally:
            diffusers_logging.set_verbosity(level)
    else:
        family = get_family(config.model_family)
        folder = run_dir / family.denoiser
        if not (folder / "config.json").is_file():
            raise InputError(folder, f"fine-tuned {family.denoiser} missing (the run did not finish)",
                             "rerun `mc-bench finetune`")
        setattr(pipe, family.denoiser, family.denoiser_type().from_pretrained(folder, torch_dtype=torch_dtype,
                                                                              use_safetensors=True))
    return pipe.to(device)


def read_status(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "status.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_status(run_dir: Path, status: str, **fields) -> dict:
    record = {"status": status, **fields, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json(Path(run_dir) / "status.json", record)
    return record


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: on CUDA, allocated since the last ``reset_peak_memory_stats`` (training and sampling
    each reset it); on the CPU, the process's peak resident size so far (it cannot be reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB



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
