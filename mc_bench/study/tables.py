"""The study's tables: what a study folder holds, and the tables and histories made from its cells.

The study folder (schema)::

    study.json                 the resolved profile, manifests folder and library versions
    runs/<model>__<dataset>/   the run folder (mc_bench.train.runs) + finetune.ipynb, evaluate.ipynb,
                               cell.json {status, error, seconds: {finetune, evaluate, kernel_startup, ...}}
    metrics.csv                every run's metric rows (mc_bench.evaluate schema)
    performance.csv            one row per (model, dataset): a column per metric + mean_rank (quality_table)
    runs.csv                   one row per done cell: model, dataset, model_source, revision, status, final_loss,
                               train_{method, steps, batch_size, learning_rate, lora_rank, seed},
                               generate_{n_samples, num_inference_steps, guidance_scale, seed}, device, threads,
                               train_seconds, steps_per_second, sample_seconds, images_per_second,
                               train_peak_memory_mb
    losses.parquet             model, dataset, step, loss, lr: every optimizer step of every done cell
    cells.csv                  one row per cell of the grid: model, dataset, status, error, seconds per stage
    contact_sheets/<dataset>.png   held-out real images beside each model's samples, labelled with its label value
    profiles/                  mc_bench.profile's tables, and nearest.csv (nearest_datasets)
    history/                   history.yaml + runs.csv, models.csv, datasets.csv, similarity.csv and, with a
                               pretrained companion, probe.csv (mc_bench.select.history)
    graph/                     graph.graphml, node_embeddings.csv
    gains.csv                  with a pretrained companion study: one row per cell — model, dataset, family,
                               in_domain, <label>_pretrained, <label>_finetuned, gain, relative_gain, improved
                               (gains_table)
    learnability.csv           one row per dataset: best pretrained and fine-tuned label, share improved, learnable
                               (learnability: the best fine-tuned FID under UNLEARNABLE_FID)
    selection/                 lodo.csv (per method x dataset), scores.csv (per method x dataset x model),
                               halving.csv (successive, probe-first and ranker-first halving per dataset: method,
                               dataset, the ranking metrics, seconds, runs, budgets), paired.csv (every method
                               against M&C, paired by dataset: mc_bench.select.lodo.paired_comparison),
                               probe_agreement.csv (with a cheap probe: dataset, n_models, spearman, same_best,
                               full_best_rank_in_cheap), ceiling.csv (label_ceiling), ablations.csv
    selection_summary.csv      method, top1, top3, mean_regret (+ CIs), n_datasets, shortlist_level,
                               shortlist_coverage, shortlist_size, seconds_per_dataset (the compute one new dataset
                               costs the method), cost_basis, kind and tier (from mc_bench.select.methods), and the
                               paired comparison with M&C: top1_diff, regret_diff (+ CIs), wins, losses, ties,
                               verdict (better / worse / not distinguishable)
    figures/                   frontier.png, gains.png (06_report; the README shows them)
    notebooks/                 the executed 01, 04, 05, 06 notebooks
    report.html                06_report exported

Companion studies sit beside the study and share its grid: ``<study>-pretrained`` (``train.steps: 0``: the
pretrained models' samples, the probe and the quality before fine-tuning), ``<study>-probe16`` (the same with 16
samples per cell: the cheap probe), ``<study>-rung<steps>`` (short
fine-tunes: successive halving's lower rungs) and ``<study>-replicate`` (another seed: the label's ceiling).
A notebook run by hand on a study writes these tables to ``results/scratch/<study>/`` instead (:mod:`.folders`).

Only the tables, the contact sheets, the executed study notebooks and the report are committed; the per-cell
folders (``runs/``) are not: a rerun of the grid reproduces them (and ``tests/test_study.py`` reruns a few committed
cells and compares their metrics with ``metrics.csv``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from ..config import Manifests, Profile, load_manifests
from ..errors import InputError
from ..evaluate import DIRECTIONS, METRICS_FILE, quality_table
from ..io import library_versions, write_json
from ..paths import repo_relative
from ..profile import profile_datasets, write_profiles
from ..select.history import load_history

CELL_RECORD = "cell.json"


def cell_dir(study_dir: Path, model: str, dataset: str) -> Path:
    return Path(study_dir) / "runs" / f"{model}__{dataset}"


def read_cell(folder: Path) -> dict | None:
    path = Path(folder) / CELL_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def grid(profile: Profile) -> list[tuple[str, str]]:
    return [(m, d) for d in profile.datasets for m in profile.models]


def write_study_record(study_dir: Path, manifests: Manifests, profile: Profile) -> None:
    write_json(study_dir / "study.json", {"profile": profile.model_dump(mode="json"),
                                          "manifests": repo_relative(manifests.folder), "versions": library_versions()})


def cells_table(study_dir: Path, profile: Profile) -> pd.DataFrame:
    rows = []
    for model, dataset in grid(profile):
        record = read_cell(cell_dir(study_dir, model, dataset)) or {"status": "missing"}
        rows.append({"model": model, "dataset": dataset, "status": record.get("status"),
                     "error": record.get("error", ""), **(record.get("seconds") or {})})
    table = pd.DataFrame(rows)
    table.to_csv(Path(study_dir) / "cells.csv", index=False)
    return table


def collect_tables(study_dir: str | Path, profile_id: str | None = None,
                   manifests: str | Path | None = None) -> pd.DataFrame:
    """The study's record from its done cells, the tables a clone carries instead of the per-cell folders:
    ``metrics.csv`` (every metric row), ``performance.csv`` (quality_table), ``runs.csv`` (one row per cell: the
    settings that made it, its final loss and timings) and ``losses.parquet`` (every optimizer step). Returns the
    metrics."""
    study_dir = Path(study_dir)
    profile = study_profile(study_dir, profile_id, manifests)
    frames, runs, losses = [], [], []
    for model, dataset in grid(profile):
        folder = cell_dir(study_dir, model, dataset)
        if (read_cell(folder) or {}).get("status") != "done" or not (folder / METRICS_FILE).is_file():
            continue
        frames.append(pd.read_csv(folder / METRICS_FILE))
        runs.append(_run_row(folder, model, dataset))
        if (folder / "loss.csv").is_file():
            losses.append(pd.read_csv(folder / "loss.csv").assign(model=model, dataset=dataset))
    if not frames:
        raise InputError(study_dir, "no finished cells", "run the grid first: mc-bench run --profile ...")
    metrics = pd.concat(frames, ignore_index=True)
    metrics.to_csv(study_dir / "metrics.csv", index=False)
    performance, _ = quality_table(metrics, profile.evaluate.quality)
    performance.to_csv(study_dir / "performance.csv", index=False)
    pd.DataFrame(runs).to_csv(study_dir / "runs.csv", index=False)
    if losses:
        table = pd.concat(losses, ignore_index=True)[["model", "dataset", "step", "loss", "lr"]]
        table.to_parquet(study_dir / "losses.parquet", index=False)
    return metrics


RUN_SETTINGS = {"train": ("method", "steps", "batch_size", "learning_rate", "lora_rank", "seed"),
                "generate": ("n_samples", "num_inference_steps", "guidance_scale", "seed")}


def _run_row(folder: Path, model: str, dataset: str) -> dict:
    """One row of ``runs.csv``: the cell's settings (``train_*``, ``generate_*``), final loss and timings."""
    config = json.loads((folder / "config.json").read_text())
    status = json.loads((folder / "status.json").read_text())
    timings = json.loads((folder / "timings.json").read_text()) if (folder / "timings.json").is_file() else {}
    row = {"model": model, "dataset": dataset, "model_source": repo_relative(config.get("model_source"))
           if not str(config.get("model_source", "")).startswith("hf:") else config.get("model_source"),
           "revision": config.get("revision"), "status": status.get("status"), "final_loss": status.get("final_loss")}
    for section, keys in RUN_SETTINGS.items():
        row.update({f"{section}_{k}": config[section].get(k) for k in keys})
    row.update({k: timings.get(k) for k in ("device", "threads", "train_seconds", "steps_per_second",
                                            "sample_seconds", "images_per_second", "train_peak_memory_mb")})
    return row


def study_profile(study_dir: Path, profile_id: str | None, manifests) -> Profile:
    record = Path(study_dir) / "study.json"
    if profile_id is None and record.is_file():
        return Profile.model_validate(json.loads(record.read_text())["profile"])
    if profile_id is None:
        raise InputError(record, "not a study folder (study.json is missing)", "run `mc-bench run --profile NAME`")
    return load_manifests(manifests).profile(profile_id)


def model_features(manifests: Manifests, models: list[str]) -> pd.DataFrame:
    """Model features for the ranker from ``models.yaml`` metadata; ``pretrain_datasets`` becomes the history's
    ``pretrain_dataset`` (links model nodes to the datasets they were pretrained on)."""
    rows = []
    for model in models:
        spec = manifests.models[model]
        meta = dict(spec.metadata)
        row = {"model": model, "prediction_type": spec.prediction_type, "family": spec.family,
               "resolution": spec.resolution}
        row.update({k: v for k, v in meta.items() if k not in ("pretrain_datasets", "pretrain_domains")})
        row["pretrain_dataset"] = meta.get("pretrain_datasets", "")
        rows.append(row)
    return pd.DataFrame(rows)


def pretraining_datasets(manifests: Manifests, models: list[str], exclude=()) -> list[str]:
    """The datasets of ``manifests`` that ``models`` were pretrained on (their ``pretrain_datasets`` metadata)."""
    named = {d for model in models
             for d in str(manifests.models[model].metadata.get("pretrain_datasets", "")).split(";")}
    return sorted((named & set(manifests.datasets)) - set(exclude))


def done_datasets(study_dir: Path, profile: Profile) -> list[str]:
    """The profile's datasets with at least one done cell: from the study's ``cells.csv`` (the record a clone
    carries; the per-cell folders are not committed), else from the cell folders."""
    table = Path(study_dir) / "cells.csv"
    if table.is_file():
        cells = pd.read_csv(table)
        done = set(cells.loc[cells["status"] == "done", "dataset"])
    else:
        done = {d for m, d in grid(profile) if (read_cell(cell_dir(study_dir, m, d)) or {}).get("status") == "done"}
    return [d for d in profile.datasets if d in done]


def profile_study(study_dir: str | Path, clip_folder: str | None = None, n_components: int = 4,
                  manifests: str | Path | None = None, out_dir: str | Path | None = None):
    """Profile the study's datasets with at least one done cell and the models' pretraining datasets
    (``profiles/`` in ``out_dir``, the study itself by default); a dataset whose cells all failed (a broken
    dataset) is left out, with a note."""
    import sys

    study_dir = Path(study_dir)
    out_dir = Path(out_dir) if out_dir else study_dir
    profile = study_profile(study_dir, None, manifests)
    m = load_manifests(manifests)
    kept = done_datasets(study_dir, profile)
    for dataset in [d for d in profile.datasets if d not in kept]:
        print(f"note: {dataset} is left out of the profiles: none of its cells is done", file=sys.stderr)
    sources = pretraining_datasets(m, profile.models, exclude=kept)
    start = time.perf_counter()
    ids = kept + sources
    profiles = profile_datasets(m, ids, clip_folder, n_components)
    write_profiles(profiles, out_dir / "profiles")
    write_json(out_dir / "profiles" / "timing.json",
               {"datasets": len(ids), "seconds": round(time.perf_counter() - start, 3),
                "seconds_per_dataset": round((time.perf_counter() - start) / len(ids), 3)})
    return profiles


def nearest_datasets(similarity: pd.DataFrame, performance: pd.DataFrame, manifests: Manifests,
                     label: str = "fid") -> pd.DataFrame:
    """For every dataset with runs: its most similar *other* dataset with runs, their similarity, and whether the two
    share the family (the manifest's ``domain``) and the winner (the best model by ``label``). A dataset
    representation is useful to M&C when nearest datasets tend to share winners."""
    q = performance.pivot(index="model", columns="dataset", values=label)
    winners = q.idxmax() if DIRECTIONS[label] == "higher" else q.idxmin()
    datasets = [d for d in q.columns if d in similarity.index]
    rows = []
    for d in datasets:
        others = similarity.loc[d, [o for o in datasets if o != d]]
        nearest = others.idxmax()
        rows.append({"dataset": d, "nearest": nearest, "similarity": float(others.max()),
                     "family": manifests.datasets[d].domain if d in manifests.datasets else "",
                     "nearest_family": manifests.datasets[nearest].domain if nearest in manifests.datasets else "",
                     "winner": winners[d], "nearest_winner": winners[nearest]})
    table = pd.DataFrame(rows)
    table["same_family"] = table["family"] == table["nearest_family"]
    table["same_winner"] = table["winner"] == table["nearest_winner"]
    return table


def companion_study(study_dir: str | Path, suffix: str) -> Path | None:
    """``<study>-<suffix>`` when it exists and has a ``performance.csv`` (see the module docstring), else None."""
    folder = Path(f"{str(study_dir).rstrip('/')}-{suffix}")
    return folder if (folder / "performance.csv").is_file() else None


def rung_studies(study_dir: str | Path) -> dict[int, Path]:
    """The study's short fine-tuning companions, ``<study>-rung<steps>``, by their number of steps."""
    study_dir = Path(str(study_dir).rstrip("/"))
    out = {}
    for folder in sorted(study_dir.parent.glob(f"{study_dir.name}-rung*")):
        steps = folder.name[len(study_dir.name) + len("-rung"):]
        if steps.isdigit() and (folder / "performance.csv").is_file():
            out[int(steps)] = folder
    return dict(sorted(out.items()))


def run_seconds(study_dir: str | Path, stages=("train", "sample", "evaluate")) -> pd.DataFrame:
    """What each done cell of a study cost, as a model × dataset table of seconds: the sum of ``stages`` in
    ``cells.csv`` (the work itself: training, sampling, evaluation; not kernel start-up or imports)."""
    cells = pd.read_csv(Path(study_dir) / "cells.csv")
    done = cells[cells["status"] == "done"].copy()
    done["seconds"] = done[list(stages)].fillna(0.0).sum(axis=1)
    return done.pivot(index="model", columns="dataset", values="seconds")


def probe_table(pretrained_dir: str | Path, label: str) -> pd.DataFrame:
    """The probe of a history (mc_bench.select.history's ``probe`` schema) from a pretrained companion study:
    ``model``, ``dataset``, the label of the pretrained model's samples, and ``seconds`` (sampling + evaluation)."""
    performance = pd.read_csv(Path(pretrained_dir) / "performance.csv")
    seconds = run_seconds(pretrained_dir).stack().rename("seconds").reset_index()
    table = performance[["model", "dataset", label]].dropna()
    return table.merge(seconds, on=["model", "dataset"], how="left")


def build_history(study_dir: str | Path, label: str | None = None, manifests: str | Path | None = None,
                  out_dir: str | Path | None = None, profiles_dir: str | Path | None = None):
    """The study's fine-tuning history (``history/`` in ``out_dir``, the study itself by default): runs from
    ``performance.csv``, model features from ``models.yaml``, dataset features and similarity from ``profiles_dir``
    (the study's ``profiles/`` by default), and — when the companion study ``<study>-pretrained`` exists — the
    probe (the label of every pretrained model's samples). Returns a :class:`History`."""
    study_dir = Path(study_dir)
    out_dir = Path(out_dir) if out_dir else study_dir
    profiles_dir = Path(profiles_dir) if profiles_dir else study_dir / "profiles"
    profile = study_profile(study_dir, None, manifests)
    label = label or profile.evaluate.quality
    pretrained = companion_study(study_dir, "pretrained")
    probe = probe_table(pretrained, label) if pretrained is not None else None
    return write_history(out_dir / "history", pd.read_csv(study_dir / "performance.csv"), profiles_dir,
                         load_manifests(manifests), label, probe=probe)


def write_history(folder: str | Path, performance: pd.DataFrame, profiles_dir: str | Path, manifests: Manifests,
                  label: str, probe: pd.DataFrame | None = None):
    """Write a history folder (``history.yaml`` + tables, mc_bench.select.history's schema) from a performance table and
    a profiles folder (mc_bench.profile), which ``history.yaml`` names under ``profiles`` so that a new dataset can be
    profiled the same way (``mc-bench choose --images``), and optionally a probe table. Returns the loaded
    :class:`History`."""
    import os

    import yaml

    folder, profiles_dir = Path(folder), Path(profiles_dir)
    quality = {c: DIRECTIONS[c] for c in performance.columns if c in DIRECTIONS}
    folder.mkdir(parents=True, exist_ok=True)
    performance.to_csv(folder / "runs.csv", index=False)
    model_features(manifests, sorted(performance["model"].unique())).to_csv(folder / "models.csv", index=False)
    pd.read_csv(profiles_dir / "dataset_features.csv").to_csv(folder / "datasets.csv", index=False)
    pd.read_csv(profiles_dir / "similarity.csv", index_col=0).to_csv(folder / "similarity.csv")
    spec = {"runs": "runs.csv", "quality": quality, "label": label, "model_features": "models.csv",
            "dataset_features": "datasets.csv", "similarity": {"file": "similarity.csv", "kind": "similarity"},
            "profiles": os.path.relpath(profiles_dir, folder)}
    if probe is not None:
        probe.to_csv(folder / "probe.csv", index=False)
        spec["probe"] = "probe.csv"
    elif (folder / "probe.csv").exists():
        (folder / "probe.csv").unlink()
    (folder / "history.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return load_history(folder)


def build_combined_history(study_dirs: list[str | Path], out: str | Path, manifests: str | Path | None = None,
                           label: str = "fid"):
    """One history from several studies' runs (e.g. cpu-paper + cpu-validation, on which the selection engine's
    defaults are chosen): their ``performance.csv`` tables, profiles of all their datasets and the models'
    pretraining datasets made together into ``out/profiles``, and the probes of the studies that have a
    ``<study>-pretrained`` companion (a probe tier is judged on the datasets its probe covers). Returns the
    :class:`History` written to ``out``."""
    out = Path(out)
    m = load_manifests(manifests)
    performance = pd.concat([pd.read_csv(Path(d) / "performance.csv") for d in study_dirs], ignore_index=True)
    datasets = list(dict.fromkeys(performance["dataset"]))
    models = sorted(performance["model"].unique())
    sources = pretraining_datasets(m, models, exclude=datasets)
    write_profiles(profile_datasets(m, datasets + sources), out / "profiles")
    pretrained = [p for p in (companion_study(d, "pretrained") for d in study_dirs) if p is not None]
    probe = pd.concat([probe_table(p, label) for p in pretrained], ignore_index=True) if pretrained else None
    return write_history(out, performance, out / "profiles", m, label, probe=probe)
