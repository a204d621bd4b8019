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
    history/                   history.yaml + runs.csv, models.csv, datasets.csv, similarity.csv (mc_bench.select.history)
    graph/                     graph.graphml, node_embeddings.csv
    selection/                 lodo.csv (per method x dataset), scores.csv (per method x dataset x model),
                               ceiling.csv (label_ceiling), ablations.csv
    selection_summary.csv      method, top1, top3, mean_regret (+ CIs), shortlist_coverage, shortlist_size
    notebooks/                 the executed 01, 04, 05, 06 notebooks
    report.html                06_report exported

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
from ..profile import profile_datasets, write_profiles
from ..select.choose import shortlist_coverage
from ..select.history import load_history
from ..select.ranking import bootstrap_summary

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
                                          "manifests": str(manifests.folder), "versions": library_versions()})


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
    row = {"model": model, "dataset": dataset, "model_source": config.get("model_source"),
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
    named = {d for model in models for d in str(manifests.models[model].metadata.get("pretrain_datasets", "")).split(";")}
    return sorted((named & set(manifests.datasets)) - set(exclude))


def done_datasets(study_dir: Path, profile: Profile) -> list[str]:
    """The profile's datasets with at least one done cell."""
    return [d for d in profile.datasets
            if any((read_cell(cell_dir(study_dir, m, d)) or {}).get("status") == "done" for m in profile.models)]


def profile_study(study_dir: str | Path, clip_folder: str | None = None, n_components: int = 4,
                  manifests: str | Path | None = None):
    """Profile the study's datasets with at least one done cell and the models' pretraining datasets
    (``profiles/``); a dataset whose cells all failed (a broken dataset) is left out, with a note."""
    import sys

    study_dir = Path(study_dir)
    profile = study_profile(study_dir, None, manifests)
    m = load_manifests(manifests)
    kept = done_datasets(study_dir, profile)
    for dataset in [d for d in profile.datasets if d not in kept]:
        print(f"note: {dataset} is left out of the profiles: none of its cells is done", file=sys.stderr)
    sources = pretraining_datasets(m, profile.models, exclude=kept)
    start = time.perf_counter()
    ids = kept + sources
    profiles = profile_datasets(m, ids, clip_folder, n_components)
    write_profiles(profiles, study_dir / "profiles")
    write_json(study_dir / "profiles" / "timing.json",
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


def build_history(study_dir: str | Path, label: str | None = None, manifests: str | Path | None = None):
    """The study's fine-tuning history (``history/``): runs from ``performance.csv``, model features from
    ``models.yaml``, dataset features and similarity from ``profiles/``. Returns a :class:`History`."""
    study_dir = Path(study_dir)
    profile = study_profile(study_dir, None, manifests)
    return write_history(study_dir / "history", pd.read_csv(study_dir / "performance.csv"), study_dir / "profiles",
                         load_manifests(manifests), label or profile.evaluate.quality)


def write_history(folder: str | Path, performance: pd.DataFrame, profiles_dir: str | Path, manifests: Manifests,
                  label: str):
    """Write a history folder (``history.yaml`` + tables, mc_bench.select.history's schema) from a performance table and
    a profiles folder (mc_bench.profile), which ``history.yaml`` names under ``profiles`` so that a new dataset can be
    profiled the same way (``mc-bench choose --images``). Returns the loaded :class:`History`."""
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
    (folder / "history.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return load_history(folder)


def build_combined_history(study_dirs: list[str | Path], out: str | Path, manifests: str | Path | None = None,
                           label: str = "fid"):
    """One history from several studies' runs (e.g. cpu-paper + cpu-validation, on which the selection engine's
    defaults are chosen): their ``performance.csv`` tables, and profiles of all their datasets and the models'
    pretraining datasets made together into ``out/profiles``. Returns the :class:`History` written to ``out``."""
    out = Path(out)
    m = load_manifests(manifests)
    performance = pd.concat([pd.read_csv(Path(d) / "performance.csv") for d in study_dirs], ignore_index=True)
    datasets = list(dict.fromkeys(performance["dataset"]))
    models = sorted(performance["model"].unique())
    sources = pretraining_datasets(m, models, exclude=datasets)
    write_profiles(profile_datasets(m, datasets + sources), out / "profiles")
    return write_history(out, performance, out / "profiles", m, label)


def label_ceiling(study_dir: str | Path, replicate_dir: str | Path, label: str = "fid") -> pd.DataFrame:
    """The label's own reproducibility: for every dataset run in both studies (the same cells with another training
    and sampling seed), whether the two seeds agree on the best model, the Spearman correlation of the models'
    labels, and how much the first seed's winner loses under the second seed (its regret there). The mean agreement
    is the ceiling a selector's top-1 is read against: no method can predict a winner more reliably than the label
    repeats itself."""
    from scipy.stats import spearmanr

    a = pd.read_csv(Path(study_dir) / "performance.csv").pivot(index="model", columns="dataset", values=label)
    b = pd.read_csv(Path(replicate_dir) / "performance.csv").pivot(index="model", columns="dataset", values=label)
    higher = DIRECTIONS[label] == "higher"
    rows = []
    for d in [c for c in b.columns if c in a.columns]:
        pair = pd.concat([a[d], b[d]], axis=1, keys=["first", "second"]).dropna()
        best_first = pair["first"].idxmax() if higher else pair["first"].idxmin()
        best_second = pair["second"].idxmax() if higher else pair["second"].idxmin()
        best = pair["second"].max() if higher else pair["second"].min()
        chosen = pair.loc[best_first, "second"]
        regret = (best - chosen) / abs(best) if higher else (chosen - best) / abs(best)
        rows.append({"dataset": d, "n_models": len(pair), "winner_seed0": best_first, "winner_seed1": best_second,
                     "same_winner": best_first == best_second,
                     "spearman": float(spearmanr(pair["first"], pair["second"])[0]), "regret_of_seed0_winner": regret})
    return pd.DataFrame(rows)


def selection_summary(lodo: pd.DataFrame, seed: int = 0, scores: pd.DataFrame | None = None,
                      level: float = 0.9) -> pd.DataFrame:
    """One row per method: ``top1`` (share of held-out datasets whose best model is ranked first), ``top3``
    (the best model is among the first three), ``mean_regret`` (label lost by taking the first pick), each with
    a 95 % bootstrap interval over datasets; with ``scores`` (leave_one_dataset_out(..., return_scores=True)),
    the conformal shortlist's ``shortlist_coverage`` and mean ``shortlist_size`` at ``shortlist_level``."""
    boot = bootstrap_summary(lodo, ["hit@1", "hit@3", "regret"], seed=seed)
    names = {"hit@1": "top1", "hit@3": "top3", "regret": "mean_regret"}
    rows = []
    for method, group in boot.groupby("method", sort=False):
        row = {"method": method}
        for _, r in group.iterrows():
            name = names[r["metric"]]
            row[name] = r["mean"]
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = r["ci_low"], r["ci_high"]
        row["n_datasets"] = int(group["n_datasets"].max())
        rows.append(row)
    cols = ["method", "top1", "top3", "mean_regret"]
    out = pd.DataFrame(rows)
    if scores is not None and len(scores):
        shortlist = shortlist_coverage(lodo, scores, level).drop(columns=["n_models"])
        out = out.merge(shortlist, on="method", how="left")
    return out[cols + [c for c in out.columns if c not in cols]]
