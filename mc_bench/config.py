"""Typed manifests: datasets, models and study profiles, loaded from YAML and validated.

The manifests live in ``data_manifests/`` (``datasets.yaml``, ``models.yaml``, ``profiles.yaml``).
Every problem is reported as one :class:`~mc_bench.errors.ManifestError` that names the file, the entry
and the fix. Loading a manifest never writes anything.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ManifestError
from .io import load_yaml
from .paths import DEFAULT_MANIFEST_DIR, HUB_PREFIX, WORLD_PREFIX

ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"
# the generators of mc_bench.world.generators (a test checks that the two lists agree)
WORLD_GENERATORS = ("animals", "digits", "glyphs", "shapes", "textures", "photos", "faces")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitSpec(_Strict):
    """Names of the splits used for training and for held-out evaluation."""

    train: str = "train"
    eval: str = "test"


class DatasetSpec(_Strict):
    """One image–caption dataset.

    ``source`` is one of ``world:<generator>`` (built by :mod:`mc_bench.world`), ``hf:<dataset id>`` (a
    Hugging Face dataset, with ``revision``), or a folder in the imagefolder layout (``<split>/metadata.jsonl``
    with ``file_name`` and the caption column), relative to the manifest file.
    """

    id: str = Field(pattern=ID_PATTERN)
    source: str
    revision: str | None = None
    # source: pretrains the zoo; target: fine-tuned on and reported; validation: fine-tuned on like a target, used
    # only to choose the selection engine's defaults, never reported as a result
    role: Literal["source", "target", "validation"] = "target"
    domain: str
    params: dict[str, Any] = Field(default_factory=dict)
    image_column: str = "image"
    caption_column: str = "text"
    splits: SplitSpec = SplitSpec()
    channels: Literal[1, 3] = 3
    license: str
    citation: str = ""

    @property
    def source_kind(self) -> Literal["world", "hub", "folder"]:
        if self.source.startswith(WORLD_PREFIX):
            return "world"
        if self.source.startswith(HUB_PREFIX):
            return "hub"
        return "folder"

    @model_validator(mode="after")
    def _check_source(self):
        if self.source_kind == "hub" and not self.revision:
            raise ValueError("a hub dataset (hf:<id>) needs a `revision` (a commit hash or tag) for reproducibility")
        if self.source_kind == "world":
            name = self.source[len(WORLD_PREFIX):]
            if name not in WORLD_GENERATORS:
                raise ValueError(f"unknown source {self.source!r}: world generators are {sorted(WORLD_GENERATORS)}")
        if self.source_kind == "folder" and "://" in self.source:
            raise ValueError(
                f"unknown source {self.source!r}: use world:<generator>, hf:<dataset id> or a local folder path"
            )
        return self


MODEL_FAMILIES = ("tiny-sd", "sd1", "sd2", "sdxl", "pixart", "sd3", "flux")


class ModelSpec(_Strict):
    """One candidate text-to-image model: a diffusers folder or a hub id (``hf:<id>`` with ``revision``)."""

    id: str = Field(pattern=ID_PATTERN)
    source: str
    revision: str | None = None
    family: Literal[MODEL_FAMILIES]  # type: ignore[valid-type]
    resolution: int = Field(gt=0)
    prediction_type: Literal["epsilon", "v_prediction", "sample", "flow"] = "epsilon"  # flow: rectified flow (SD3)
    license: str = ""
    # Weights stored as pickles (.bin, .ckpt) can run code when loaded; they are refused unless this model's entry
    # opts in by name. safetensors is the default and the format of every model the kit writes.
    allow_pickle_weights: bool = False
    # Scalar metadata used as model features by the ranker (parameter count, pretraining domains, ...).
    metadata: dict[str, float | int | str | bool] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_source(self):
        if self.source.startswith(HUB_PREFIX) and not self.revision:
            raise ValueError("a hub model (hf:<id>) needs a `revision` (a commit hash or tag)")
        if "://" in self.source or self.source.startswith(WORLD_PREFIX):
            raise ValueError(f"unknown source {self.source!r}: use hf:<model id> or a local diffusers folder")
        return self


class TrainSettings(_Strict):
    """How a model is fine-tuned (diffusers' ``train_text_to_image[_lora].py`` knobs, CPU/float32 defaults)."""

    method: Literal["lora", "full"] = "lora"
    steps: int = Field(default=200, ge=0)  # 0: no fine-tuning (the pretrained model as it is)
    batch_size: int = Field(default=16, gt=0)
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    learning_rate: float = Field(default=1e-3, gt=0)
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant_with_warmup"
    lr_warmup_steps: int = Field(default=10, ge=0)
    adam_weight_decay: float = Field(default=1e-2, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    lora_rank: int = Field(default=4, gt=0)
    lora_alpha: float | None = None  # None: equal to the rank (scale 1)
    lora_target_modules: list[str] = Field(default_factory=lambda: ["to_k", "to_q", "to_v", "to_out.0"])
    resolution: int | None = Field(default=None, gt=0)  # None: the model's own resolution
    center_crop: bool = True  # False: random crop
    random_flip: bool = False
    caption_dropout: float = Field(default=0.1, ge=0, lt=1)
    snr_gamma: float | None = Field(default=None, gt=0)
    gradient_checkpointing: bool = False
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every: int = Field(default=50, ge=0)  # 0: no intermediate checkpoints
    keep_checkpoints: int = Field(default=2, gt=0)
    seed: int = 0

    @model_validator(mode="after")
    def _check_precision(self):
        if self.mixed_precision != "no" and self.device == "cpu":
            raise ValueError("mixed precision needs a GPU: use mixed_precision: no on CPU (float32)")
        return self


class GenerateSettings(_Strict):
    """How images are generated from a dataset's held-out captions after fine-tuning."""

    n_samples: int = Field(default=64, gt=0)
    num_inference_steps: int = Field(default=20, gt=0)
    guidance_scale: float = Field(default=3.0, ge=0)
    scheduler: Literal["pipeline", "ddim", "ddpm", "euler", "dpm"] = "pipeline"
    seed: int = 0
    batch_size: int = Field(default=32, gt=0)


class EvalSettings(_Strict):
    """Which metrics are computed, with which backbones, and which one labels the history."""

    metrics: list[Literal["fid", "kid", "clip_score", "image_reward"]] = Field(
        default_factory=lambda: ["fid", "kid", "clip_score", "image_reward"])
    # "tiny-clip": the offline world's CLIP (world_models/tiny-clip); "inception": clean-fid's Inception-v3
    # from the weights folder; or a path to a CLIP folder.
    fid_backbone: str = "tiny-clip"
    clip_model: str = "tiny-clip"  # "tiny-clip", "openai-clip" (weights folder), a folder, or a hub id
    resize: Literal["clean", "bilinear", "none"] = "clean"
    kid_subsets: int = Field(default=100, gt=0)
    # metrics whose weights are missing are recorded as not computed (True) or stop the run (False)
    allow_missing: bool = True
    quality: Literal["fid", "kid", "clip_score", "image_reward", "mean_rank"] = "fid"
    seed: int = 0


class Profile(_Strict):
    """A named study: a grid of models × datasets with training and evaluation settings."""

    id: str = Field(pattern=ID_PATTERN)
    description: str = ""
    models: list[str] = Field(default_factory=list)
    datasets: list[str]
    train: TrainSettings = TrainSettings()
    generate: GenerateSettings = GenerateSettings()
    evaluate: EvalSettings = EvalSettings()

    @field_validator("datasets")
    @classmethod
    def _non_empty(cls, value):
        if not value:
            raise ValueError("a profile needs at least one dataset")
        return value

    @field_validator("models", "datasets")
    @classmethod
    def _unique(cls, value):
        repeated = sorted({v for v in value if value.count(v) > 1})
        if repeated:
            raise ValueError(f"{repeated} listed more than once (each would be run, and recorded, twice)")
        return value


class WorldSettings(_Strict):
    """Settings shared by every ``world:`` dataset."""

    resolution: Literal[16, 32] = 16
    eval_fraction: float = Field(default=0.2, gt=0, lt=1)
    min_split_images: int = Field(default=16, gt=0)


class Manifests(_Strict):
    """All manifests of a folder, cross-checked."""

    folder: Path
    world: WorldSettings
    datasets: dict[str, DatasetSpec]
    models: dict[str, ModelSpec]
    profiles: dict[str, Profile]

    def dataset(self, dataset_id: str) -> DatasetSpec:
        if dataset_id not in self.datasets:
            raise ManifestError(
                self.folder / "datasets.yaml",
                f"unknown dataset id {dataset_id!r}",
                f"use one of {sorted(self.datasets)[:8]}... or add it to datasets.yaml",
            )
        return self.datasets[dataset_id]

    def profile(self, profile_id: str) -> Profile:
        if profile_id not in self.profiles:
            raise ManifestError(
                self.folder / "profiles.yaml", f"unknown profile {profile_id!r}", f"use one of {sorted(self.profiles)}"
            )
        return self.profiles[profile_id]


def validated(cls: type[BaseModel], values: dict, section: str):
    """``cls(**values)``, with a validation problem raised as one :class:`InputError` naming ``section.field``."""
    from .errors import InputError

    try:
        return cls(**(values or {}))
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join([section, *(str(p) for p in first["loc"])])
        raise InputError(f"settings, field `{field}`", first["msg"],
                         f"fix the value (the schema: {cls.__name__} in mc_bench.config)") from None


# --------------------------------------------------------------------------------------------------- loading


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        raise ManifestError(path, "manifest file not found", "create it or point --manifests at the right folder")
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark else str(path)
        raise ManifestError(where, f"not valid YAML ({getattr(err, 'problem', err)})", "fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise ManifestError(path, "the top level must be a mapping", "start the file with a key such as `datasets:`")
    return data


def _entries(path: Path, data: dict, key: str) -> list[dict]:
    entries = data.get(key, [])
    if entries is None:
        entries = []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ManifestError(path, f"`{key}` must be a list of mappings",
                            f"write `{key}:` followed by `- id: ...` items")
    return entries


def _parse(path: Path, cls: type[BaseModel], entry: dict, index: int):
    label = entry.get("id", f"#{index + 1}")
    try:
        return cls.model_validate(entry)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(entry)"
        got = first.get("input")
        got_text = f" (got {got!r})" if not isinstance(got, dict) else ""
        raise ManifestError(
            f"{path}, entry {label!r}, field `{field}`",
            f"{first['msg']}{got_text}",
            f"correct `{field}` in that entry; the schema is documented in data_manifests/README.md",
        ) from None


def _parse_all(path: Path, cls: type[BaseModel], entries: list[dict]) -> dict:
    out: dict = {}
    for i, entry in enumerate(entries):
        item = _parse(path, cls, entry, i)
        if item.id in out:
            raise ManifestError(
                f"{path}, entry #{i + 1}", f"duplicate id {item.id!r}", "give every entry a unique `id`"
            )
        out[item.id] = item
    return out


def load_manifests(folder: str | os.PathLike | None = None, check_profiles: bool = True) -> Manifests:
    """Load and cross-check ``datasets.yaml``, ``models.yaml`` and ``profiles.yaml`` from ``folder``.

    ``check_profiles=False`` skips the check that profiles name known models and datasets: for tools that
    (re)write ``models.yaml`` themselves, such as ``mc-bench world zoo``."""
    folder = Path(folder) if folder is not None else DEFAULT_MANIFEST_DIR
    ds_path, m_path, p_path = folder / "datasets.yaml", folder / "models.yaml", folder / "profiles.yaml"

    ds_data = _read_yaml(ds_path)
    try:
        world = WorldSettings.model_validate(ds_data.get("world") or {})
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ManifestError(f"{ds_path}, `world.{field}`", first["msg"], "correct the world settings") from None
    datasets = _parse_all(ds_path, DatasetSpec, _entries(ds_path, ds_data, "datasets"))
    models = _parse_all(m_path, ModelSpec, _entries(m_path, _read_yaml(m_path), "models")) if m_path.exists() else {}
    profiles = _parse_all(p_path, Profile, _entries(p_path, _read_yaml(p_path), "profiles")) if p_path.exists() else {}

    for profile in profiles.values() if check_profiles else ():
        for kind, ids, known in (("model", profile.models, models), ("dataset", profile.datasets, datasets)):
            if kind == "dataset" and not datasets:
                raise ManifestError(ds_path, "it lists no datasets", "add the datasets the profiles name "
                                    "(`datasets:` followed by `- id: ...` entries)")
            for item in ids:
                if item not in known:
                    raise ManifestError(
                        f"{p_path}, profile {profile.id!r}",
                        f"unknown {kind} {item!r}",
                        f"add {item!r} to {kind}s.yaml or remove it from the profile",
                    )
    return Manifests(folder=folder, world=world, datasets=datasets, models=models, profiles=profiles)


def resolve_folder(manifest_folder: Path, source: str) -> Path:
    """A dataset or model folder named in a manifest, relative to the manifest folder."""
    path = Path(source).expanduser()
    return path if path.is_absolute() else (manifest_folder / path).resolve()


def evaluate_settings(profile: str | None = None, overrides: dict | None = None,
                      manifests: str | os.PathLike | None = None) -> EvalSettings:
    """A profile's ``evaluate`` settings (the defaults without a profile), updated by ``overrides``, validated: the
    one way the CLI, the evaluate notebook and the study resolve them."""
    values = {}
    if profile is not None:
        values = load_manifests(manifests).profile(profile).evaluate.model_dump(exclude_unset=True)
    return validated(EvalSettings, {**values, **(overrides or {})}, "evaluate")
