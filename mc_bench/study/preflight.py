"""Preflight: everything a profile needs, checked before a GPU-hour is spent (``mc-bench preflight --profile NAME``).

One row per check — ``check``, ``subject``, ``status`` (``ok``, ``problem``, ``not checked``), ``detail``, ``fix``
— and every problem at once, not the first:

* **models** — a folder: it exists, its ``model_index.json`` names a family the kit fine-tunes, its resolution; a
  hub id: the same read at its revision from the hub (or, offline, from the local hub cache);
* **datasets** — a folder: both splits validated row by row; a hub id: id, revision and both splits resolve, the
  image and caption columns exist (``image_column`` / ``caption_column``), enough rows for the held-out samples;
  a world dataset: its generator is known (it is built when the grid starts);
* **weights** — the metric backbones the profile's ``evaluate`` settings name are in the weights folder (a missing
  one is a problem when ``allow_missing`` is false, else recorded as not computed);
* **device** — on a GPU profile: CUDA visible to torch (a driver too old for torch's CUDA shows here), the GPUs'
  memory against the profile's estimated need per cell;
* **disk** — free space where the study is written against an estimate of what the grid writes.

Offline (``online=False``, or ``HF_HUB_OFFLINE=1``), hub checks read the local hub cache and say "not checked" for
what is not in it. ``mc-bench run`` runs the offline checks first and stops on a problem (exit 2).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from ..config import Manifests, Profile, load_manifests, resolve_folder
from ..errors import InputError, McBenchError
from ..evaluate import MIN_FID_IMAGES
from ..paths import hub_id
from ..weights import BACKBONES, backbone_file
from ..world.data import hub_offline, validate_dataset

OK, PROBLEM, UNCHECKED = "ok", "problem", "not checked"

# Peak GPU memory of one LoRA fine-tuning cell, GB, by family at its native resolution for batch 8 in bf16, without
# / with gradient checkpointing: ESTIMATES from public reports of diffusers' LoRA scripts, not measured by the kit.
GPU_GB = {"sd1": (14.0, 9.0), "sd2": (22.0, 12.0), "sdxl": (40.0, 22.0), "sd3": (45.0, 26.0), "tiny-sd": (1.0, 1.0)}
MODEL_GB = {"sd1": 5.0, "sd2": 5.5, "sdxl": 14.0, "sd3": 16.0, "tiny-sd": 0.01}  # a snapshot in the hub cache


@dataclass(frozen=True)
class Check:
    check: str
    subject: str
    status: str
    detail: str
    fix: str = ""


# ------------------------------------------------------------------------------------------- models


def check_model(manifests: Manifests, model: str, online: bool) -> tuple[Check, str | None]:
    """One model's check and its family (None when it could not be read)."""
    from ..train.runs import _folder_family, _folder_resolution, _hub_family

    spec = manifests.models[model]
    if spec.source.startswith("hf:"):
        repo = hub_id(spec.source)
        try:
            family = _hub_family(repo, spec.revision, offline=not online)
        except InputError as err:
            status = UNCHECKED if "offline" in str(err) else PROBLEM
            return Check("model", model, status, f"hf:{repo}@{spec.revision}: {err.problem}", err.fix), None
        return Check("model", model, OK, f"hf:{repo}@{spec.revision}: family {family}"), family
    folder = resolve_folder(manifests.folder, spec.source)
    if not (folder / "model_index.json").is_file():
        return Check("model", model, PROBLEM, f"{folder}: no model_index.json (not a diffusers pipeline folder)",
                     "point models.yaml at a folder written by DiffusionPipeline.save_pretrained"), None
    try:
        family = _folder_family(folder)
    except (McBenchError, json.JSONDecodeError, OSError) as err:
        return Check("model", model, PROBLEM, f"{folder}: {err}", "use a pipeline the kit fine-tunes"), None
    return Check("model", model, OK, f"{folder.name}: family {family}, {_folder_resolution(folder)} px"), family


# ------------------------------------------------------------------------------------------- datasets


def detect_columns(features: dict) -> tuple[str | None, str | None]:
    """The image and caption columns of a hub split's features, by a documented rule: the image column is the
    only ``Image`` feature; the caption column is the first of ``text``, ``caption``, ``captions``, ``prompt``,
    ``sentences``, ``sentence`` present, else the only string (or list-of-string) column."""
    images = [k for k, v in features.items() if type(v).__name__ == "Image"]
    names = [k for k in ("text", "caption", "captions", "prompt", "sentences", "sentence") if k in features]
    strings = [k for k, v in features.items() if getattr(v, "dtype", None) == "string"
               or getattr(getattr(v, "feature", None), "dtype", None) == "string"]
    caption = names[0] if names else (strings[0] if len(strings) == 1 else None)
    return (images[0] if len(images) == 1 else None), caption


def check_dataset(manifests: Manifests, dataset: str, profile: Profile, online: bool) -> Check:
    spec = manifests.datasets[dataset]
    if spec.source_kind == "world":
        return Check("dataset", dataset, OK, f"{spec.source}: built when the grid starts")
    if spec.source_kind == "folder":
        try:
            validate_dataset(manifests, dataset)
        except McBenchError as err:
            return Check("dataset", dataset, PROBLEM, f"{getattr(err, 'where', '')}: {getattr(err, 'problem', err)}",
                         getattr(err, "fix", ""))
        return Check("dataset", dataset, OK, f"{resolve_folder(manifests.folder, spec.source)}: both splits valid")
    return _check_hub_dataset(spec, profile, online)


def _hub_dataset_info(spec, online: bool) -> tuple[dict, dict[str, int]]:
    """A hub dataset's features and rows per split: from the hub (``load_dataset_builder``) online; offline from the
    Parquet files of its snapshot in the local hub cache (``<split>-NNNNN-of-NNNNN.parquet``, the hub's layout; the
    features from the schema's ``huggingface`` metadata)."""
    import datasets

    if online:
        builder = datasets.load_dataset_builder(hub_id(spec.source), spec.params.get("config"),
                                                revision=spec.revision, data_dir=spec.params.get("data_dir"))
        splits = builder.info.splits or {}
        return dict(builder.info.features or {}), {k: v.num_examples for k, v in splits.items()}
    import pyarrow.parquet as pq

    from ..world.data import hub_snapshot

    folder = hub_snapshot(spec)
    if spec.params.get("data_dir"):
        folder = folder / spec.params["data_dir"]
    features, rows = {}, {}
    for path in sorted(folder.rglob("*.parquet")):
        meta = pq.read_metadata(path)
        split = path.name.split("-")[0]
        rows[split] = rows.get(split, 0) + meta.num_rows
        hf = (meta.schema.to_arrow_schema().metadata or {}).get(b"huggingface")
        if hf and not features:
            features = dict(datasets.Features.from_dict(json.loads(hf)["info"]["features"]))
    return features, rows


def _check_hub_dataset(spec, profile: Profile, online: bool) -> Check:
    repo = hub_id(spec.source)
    where = f"hf:{repo}@{spec.revision}"
    try:
        features, splits = _hub_dataset_info(spec, online and not hub_offline())
    except Exception as err:  # unknown id, revision or config; offline and not cached
        status = UNCHECKED if not online or hub_offline() else PROBLEM
        offline = " offline" if status == UNCHECKED else ""
        return Check("dataset", spec.id, status, f"{where}: cannot be resolved{offline}"
                     f" ({getattr(err, 'problem', str(err))[:200]})",
                     getattr(err, "fix", "check the id, revision and params.config in datasets.yaml"))
    image, caption = detect_columns(features)
    problems = []
    for declared, found, key in ((spec.image_column, image, "image_column"), (spec.caption_column, caption,
                                                                             "caption_column")):
        if features and declared not in features:
            problems.append(f"no column {declared!r} (columns: {sorted(features)[:8]}; detected: {found!r}) -> set "
                            f"{key}: {found}" if found else f"no column {declared!r} -> set {key}")
    for role, name in (("train", spec.splits.train), ("eval", spec.splits.eval)):
        base = name.split("[")[0]
        if splits and base not in splits:
            problems.append(f"no split {base!r} (splits: {sorted(splits)})")
        elif splits and "[" not in name and role == "eval" and splits[base] < MIN_FID_IMAGES:
            problems.append(f"held-out split {base!r} has {splits[base]} rows, FID needs {MIN_FID_IMAGES}")
    if problems:
        return Check("dataset", spec.id, PROBLEM, f"{where}: " + "; ".join(problems), "fix the entry in datasets.yaml")
    sizes = ", ".join(f"{k} {v}" for k, v in splits.items()) if splits else "sizes unknown"
    return Check("dataset", spec.id, OK, f"{where}: columns {spec.image_column}/{spec.caption_column}; {sizes}")


# ------------------------------------------------------------------------------------------- weights, device, disk


def needed_backbones(profile: Profile) -> list[str]:
    s = profile.evaluate
    names = []
    if {"fid", "kid"} & set(s.metrics) and s.fid_backbone == "inception":
        names.append("inception")
    if "clip_score" in s.metrics and s.clip_model == "openai-clip":
        names.append("openai-clip")
    if "image_reward" in s.metrics:
        names += ["image-reward", "bert-base-uncased"]
    return names


def check_weights(profile: Profile, weights: str | None) -> list[Check]:
    out = []
    for name in needed_backbones(profile):
        path = backbone_file(name, weights)
        if path.is_file():
            out.append(Check("weights", name, OK, str(path)))
        else:
            status = PROBLEM if not profile.evaluate.allow_missing else OK
            detail = f"{path} missing ({BACKBONES[name].used_by})"
            if status == OK:
                detail += ": recorded as not computed (allow_missing)"
            out.append(Check("weights", name, status, detail,
                             f"mc-bench weights --fetch {name} (online), or set MC_BENCH_WEIGHTS to a folder with it"))
    return out


def check_device(profile: Profile, families: list[str]) -> list[Check]:
    if profile.train.device == "cpu":
        return [Check("device", "cpu", OK, "the profile trains on the CPU")]
    import torch

    if not torch.cuda.is_available():
        if profile.train.device == "auto":
            return [Check("device", "cpu", OK, "train.device auto: no CUDA visible, cells run on the CPU")]
        return [Check("device", "cuda", PROBLEM, f"CUDA is not visible to torch {torch.__version__} (built for CUDA "
                      f"{torch.version.cuda}); no GPU, or a driver older than that CUDA",
                      "run on a GPU machine whose driver supports torch's CUDA (nvidia-smi shows the driver's)")]
    out = []
    checkpointing = profile.train.gradient_checkpointing
    known = [f for f in families if f]
    need = max((GPU_GB.get(f, GPU_GB["sdxl"])[checkpointing] for f in known), default=None)
    if need is None:
        return [Check("device", "cuda", UNCHECKED, f"{torch.cuda.device_count()} GPUs visible; no model's family "
                      "could be read, so the memory a cell needs is unknown", "run `mc-bench preflight` online")]
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        total = props.total_memory / 2 ** 30
        status = OK if total >= need else PROBLEM
        out.append(Check("device", f"cuda:{i}", status, f"{props.name}, {total:.0f} GiB; a cell needs about "
                         f"{need:.0f} GiB (estimate, batch {profile.train.batch_size}, checkpointing "
                         f"{'on' if checkpointing else 'off'})", "" if status == OK else
                         "turn on train.gradient_checkpointing or lower train.batch_size"))
    return out


def check_disk(profile: Profile, families: list[str], study_dir: Path) -> Check:
    cells = len(profile.models) * len(profile.datasets)
    side = profile.train.resolution or (16 if families and all(f == "tiny-sd" for f in families) else 512)
    samples_gb = cells * profile.generate.n_samples * side * side * 1.5 / 1e9  # a PNG: about half its raw bytes
    models_gb = sum(MODEL_GB.get(f, 5.0) for f in families)  # a family not read: counted as an SD model
    need = samples_gb + models_gb
    target = next((p for p in [study_dir, *study_dir.parents] if p.exists()), Path("."))
    free = shutil.disk_usage(target).free / 1e9
    status = OK if free >= need else PROBLEM
    return Check("disk", str(target), status, f"{free:.0f} GB free; the grid writes about {samples_gb:.1f} GB of "
                 f"samples and the hub cache holds about {models_gb:.1f} GB of models (estimates)",
                 "" if status == OK else "free space, or write the study elsewhere (--out)")


# ------------------------------------------------------------------------------------------- all of it


def preflight(profile_id: str, manifests: str | Path | None = None, weights: str | None = None,
              online: bool | None = None, study_dir: str | Path | None = None, datasets: bool = True) -> pd.DataFrame:
    """Every check of the profile (see the module docstring) as one table. ``online`` None: unless
    ``HF_HUB_OFFLINE`` is set. ``datasets=False`` leaves the datasets out (the runner checks them itself, and a
    broken one fails only its own cells)."""
    from ..paths import study_dir_for

    online = not hub_offline() if online is None else online
    m = load_manifests(manifests)
    profile = m.profile(profile_id)
    rows, families = [], []
    for model in profile.models:
        check, family = check_model(m, model, online)
        rows.append(check)
        families.append(family)
    rows += [check_dataset(m, d, profile, online) for d in profile.datasets] if datasets else []
    rows += check_weights(profile, weights)
    rows += check_device(profile, families)
    rows.append(check_disk(profile, families, Path(study_dir) if study_dir else study_dir_for(profile_id)))
    return pd.DataFrame([asdict(r) for r in rows], columns=list(Check.__dataclass_fields__))


def raise_on_problems(table: pd.DataFrame, profile_id: str) -> None:
    """One :class:`InputError` listing every problem of a preflight table (nothing when there is none)."""
    problems = table[table["status"] == PROBLEM]
    if len(problems):
        lines = "; ".join(f"{r.check} {r.subject}: {r.detail}" for r in problems.itertuples())
        raise InputError(f"profile {profile_id!r}", f"{len(problems)} preflight problems: {lines}",
                         "fix each (mc-bench preflight --profile " + profile_id + " lists them with their fixes)")


