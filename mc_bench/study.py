"""The study: a profile's model × dataset grid as papermill notebooks on Dask, then profile, graph, choose, report.

``mc-bench run --profile NAME`` (:func:`run_study`) executes, into the study folder (``results/<profile>/``):

1. the grid — one *cell* per (model, dataset): ``notebooks/02_finetune.ipynb`` then ``03_evaluate.ipynb``, run
   by papermill in the cell's run folder, whose executed notebooks are the cell's record. Cells run on a Dask
   cluster: a ``LocalCluster`` of one-thread worker processes by default, or ``scheduler=ADDRESS``; a GPU
   profile's cells ask for the worker resource ``GPU``;
2. ``01_profile``, ``04_graph``, ``05_choose`` and ``06_report`` (exported to ``report.html``).

Resumable: a cell whose ``cell.json`` says done is skipped; a running or missing one is (re)done — the
fine-tune resumes from its last checkpoint; a failed one keeps its error and is retried only with
``retry_failed``. Killing the runner and starting it again loses nothing and duplicates nothing.

The study folder (schema)::

    study.json                 the resolved profile, manifests folder and library versions
    runs/<model>__<dataset>/   the run folder (see mc_bench.finetune) + finetune.ipynb, evaluate.ipynb,
                               cell.json {status, error, seconds: {finetune, evaluate, kernel_startup, ...}}
    metrics.csv                every run's metric rows (mc_bench.evaluate schema)
    performance.csv            one row per (model, dataset): a column per metric + mean_rank (quality_table)
    cells.csv                  one row per cell: model, dataset, status, error, timings
    profiles/                  dataset_features.csv, embeddings.csv, similarity.csv (mc_bench.profile)
    history/                   history.yaml + runs.csv, models.csv, datasets.csv, similarity.csv (mc_bench.history)
    graph/                     graph.graphml, node_embeddings.csv
    selection/                 lodo.csv (per method × dataset), ablations.csv
    selection_summary.csv      method, top1, top3, mean_regret (+ CIs)
    notebooks/                 the executed 01, 04, 05, 06 notebooks
    report.html                06_report exported
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from .config import REPO_ROOT, EvalSettings, Manifests, Profile, load_manifests, validated
from .errors import InputError

NOTEBOOKS = REPO_ROOT / "notebooks"
FINETUNE_NB, EVALUATE_NB = "02_finetune.ipynb", "03_evaluate.ipynb"
STUDY_NOTEBOOKS = ("01_profile.ipynb", "04_graph.ipynb", "05_choose.ipynb", "06_report.ipynb")
CELL_RECORD = "cell.json"


def study_dir_for(profile_id: str) -> Path:
    return REPO_ROOT / "results" / profile_id


def cell_dir(study_dir: Path, model: str, dataset: str) -> Path:
    return Path(study_dir) / "runs" / f"{model}__{dataset}"


def read_cell(folder: Path) -> dict | None:
    path = Path(folder) / CELL_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def eval_settings(profile: str | None = None, overrides: dict | None = None,
                  manifests: str | Path | None = None) -> EvalSettings:
    """The profile's evaluate settings (defaults without one), updated by ``overrides``, validated."""
    values = {}
    if profile is not None:
        values = load_manifests(manifests).profile(profile).evaluate.model_dump(exclude_unset=True)
    return validated(EvalSettings, {**values, **(overrides or {})}, "evaluate")


# ------------------------------------------------------------------------------------------------ one cell


@functools.cache
def _kernel_manager_class():
    """Kernels over Unix-domain sockets (ipc) rather than TCP ports: kernels started at the same moment by
    several workers cannot race for a port, and nothing listens on the network."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            kwargs.setdefault("transport", "ipc")
            super().__init__(**kwargs)

    return IPCKernelManager


@contextmanager
def _stderr_to(path: Path):
    """Point file descriptor 2 (inherited by kernels) at ``path`` for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "w") as fh:
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _execute(notebook: str, output: Path, parameters: dict, cwd: Path) -> dict:
    """Run a notebook with papermill; returns wall time, the time inside its cells and the first (import) cell."""
    import nbformat
    import papermill as pm

    start = time.perf_counter()
    for attempt in range(2):
        try:
            with _stderr_to(output.with_suffix(".log")):  # the kernel's own log lines, kept beside its notebook
                pm.execute_notebook(str(NOTEBOOKS / notebook), str(output), parameters=parameters, cwd=str(cwd),
                                    progress_bar=False, kernel_name="python3", log_output=False, start_timeout=180,
                                    kernel_manager_class=_kernel_manager_class(),
                                    shutdown_kernel="immediate")  # outputs are saved by then: no 2 s graceful wait
            break
        except RuntimeError as err:  # a kernel that never came up is retried once; a failing notebook is not
            if attempt or "Kernel didn't respond" not in str(err):
                raise
    wall = time.perf_counter() - start
    nb = nbformat.read(output, as_version=4)
    durations = [c.metadata.get("papermill", {}).get("duration") or 0.0 for c in nb.cells if c.cell_type == "code"]
    return {"wall": wall, "cells": sum(durations), "first_cell": durations[0] if durations else 0.0}


def run_cell(study_dir: str | Path, model: str, dataset: str, profile: str, manifests: str | None = None,
             threads: int = 1, weights: str | None = None) -> dict:
    """Fine-tune + generate (02) and evaluate (03) one (model, dataset) cell; writes and returns ``cell.json``."""
    from .finetune import write_json

    folder = cell_dir(Path(study_dir), model, dataset)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)  # inherited by the kernels
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json(folder / CELL_RECORD, {"model": model, "dataset": dataset, "status": "running", "started": started})
    common = {"profile": profile, "manifests": manifests, "threads": threads}
    try:
        ft = _execute(FINETUNE_NB, folder / "finetune.ipynb",
                      {"model": model, "dataset": dataset, "run_dir": str(folder), **common}, folder)
        ev = _execute(EVALUATE_NB, folder / "evaluate.ipynb", {"run_dir": str(folder), "weights": weights, **common},
                      folder)
    except Exception as err:  # papermill's execution error carries the notebook's traceback text
        message = f"{type(err).__name__}: {err}".strip().splitlines()
        record = {"model": model, "dataset": dataset, "status": "failed", "started": started,
                  "error": " | ".join(line for line in message if line.strip())[:2000],
                  "traceback": traceback.format_exc(limit=3)[-2000:]}
        write_json(folder / CELL_RECORD, record)
        return record
    timings = json.loads((folder / "timings.json").read_text())
    seconds = {
        "finetune_notebook": round(ft["wall"], 3), "evaluate_notebook": round(ev["wall"], 3),
        # kernel start-up: what papermill spends outside the notebook's cells (launch, connect, save)
        "kernel_startup": round(ft["wall"] - ft["cells"] + ev["wall"] - ev["cells"], 3),
        "imports": round(ft["first_cell"] + ev["first_cell"], 3),
        "train": timings.get("train_seconds"), "sample": timings.get("sample_seconds"),
        "evaluate": round(ev["cells"] - ev["first_cell"], 3),
    }
    record = {"model": model, "dataset": dataset, "status": "done", "started": started,
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": seconds}
    write_json(folder / CELL_RECORD, record)
    return record


# ------------------------------------------------------------------------------------------------ the grid


def grid(profile: Profile) -> list[tuple[str, str]]:
    return [(m, d) for d in profile.datasets for m in profile.models]


def pending_cells(study_dir: Path, profile: Profile, retry_failed: bool = False) -> tuple[list, list, list]:
    """(to run, done, failed) cells of the grid, from their records."""
    todo, done, failed = [], [], []
    for model, dataset in grid(profile):
        record = read_cell(cell_dir(study_dir, model, dataset)) or {}
        status = record.get("status")
        if status == "done":
            done.append((model, dataset))
        elif status == "failed" and not retry_failed:
            failed.append((model, dataset))
        else:
            todo.append((model, dataset))
    return todo, done, failed


def _client(scheduler: str | None, workers: int, gpus: int):
    from dask.distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler), None
    resources = {"GPU": gpus} if gpus else None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                           resources=resources, silence_logs=40)
    return Client(cluster), cluster


def _prebuild(manifests: Manifests, profile: Profile) -> None:
    """Build the world datasets of the grid once, before cells run in parallel."""
    from .finetune import load_dataset_split

    for dataset in profile.datasets:
        if manifests.dataset(dataset).source_kind == "world":
            load_dataset_split(manifests, dataset, "train")


def write_study_record(study_dir: Path, manifests: Manifests, profile: Profile) -> None:
    from .finetune import library_versions, write_json

    write_json(study_dir / "study.json", {"profile": profile.model_dump(mode="json"),
                                          "manifests": str(manifests.folder), "versions": library_versions()})


def run_grid(study_dir: str | Path, profile_id: str, manifests: str | Path | None = None,
             scheduler: str | None = None, workers: int = 2, retry_failed: bool = False, progress: bool = True,
             weights: str | None = None) -> pd.DataFrame:
    """Run every pending cell of the grid on Dask; returns the cells table (also ``cells.csv``)."""
    from dask.distributed import as_completed
    from tqdm.auto import tqdm

    study_dir = Path(study_dir)
    m = load_manifests(manifests)
    profile = m.profile(profile_id)
    study_dir.mkdir(parents=True, exist_ok=True)
    write_study_record(study_dir, m, profile)
    _prebuild(m, profile)
    todo, done, failed = pending_cells(study_dir, profile, retry_failed)
    total = len(grid(profile))
    bar = tqdm(total=total, initial=len(done) + len(failed), desc=f"grid {profile_id}", unit="cell",
               disable=not progress)
    counts = {"done": len(done), "failed": len(failed)}

    def show():
        bar.set_postfix(done=counts["done"], failed=counts["failed"], remaining=total - counts["done"] - counts["failed"])

    show()
    if todo:
        gpu = profile.train.device == "cuda"
        client, cluster = _client(scheduler, workers, 1 if gpu else 0)
        try:
            futures = [client.submit(run_cell, str(study_dir), model, dataset, profile_id,
                                     str(manifests) if manifests else None, 1, weights,
                                     key=f"cell-{model}__{dataset}-{time.time_ns()}", pure=False,
                                     resources={"GPU": 1} if gpu else None)
                       for model, dataset in todo]
            for future in as_completed(futures):
                record = future.result()
                counts["done" if record["status"] == "done" else "failed"] += 1
                if record["status"] == "failed":
                    bar.write(f"failed: {record['model']} on {record['dataset']}: {record['error'][:300]}")
                bar.update(1)
                show()
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    bar.close()
    return cells_table(study_dir, profile)


def cells_table(study_dir: Path, profile: Profile) -> pd.DataFrame:
    rows = []
    for model, dataset in grid(profile):
        record = read_cell(cell_dir(study_dir, model, dataset)) or {"status": "missing"}
        rows.append({"model": model, "dataset": dataset, "status": record.get("status"),
                     "error": record.get("error", ""), **(record.get("seconds") or {})})
    table = pd.DataFrame(rows)
    table.to_csv(Path(study_dir) / "cells.csv", index=False)
    return table


# ------------------------------------------------------------------------------------------------ tables


def collect_metrics(study_dir: str | Path, profile_id: str | None = None,
                    manifests: str | Path | None = None) -> pd.DataFrame:
    """Every done cell's ``metrics.csv`` in one table (``metrics.csv``) and ``performance.csv``."""
    from .evaluate import METRICS_FILE, quality_table

    study_dir = Path(study_dir)
    profile = _study_profile(study_dir, profile_id, manifests)
    frames = []
    for model, dataset in grid(profile):
        folder = cell_dir(study_dir, model, dataset)
        if (read_cell(folder) or {}).get("status") == "done" and (folder / METRICS_FILE).is_file():
            frames.append(pd.read_csv(folder / METRICS_FILE))
    if not frames:
        raise InputError(study_dir, "no finished cells", "run the grid first: mc-bench run --profile ...")
    metrics = pd.concat(frames, ignore_index=True)
    metrics.to_csv(study_dir / "metrics.csv", index=False)
    performance, _ = quality_table(metrics, profile.evaluate.quality)
    performance.to_csv(study_dir / "performance.csv", index=False)
    return metrics


def _study_profile(study_dir: Path, profile_id: str | None, manifests) -> Profile:
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


def profile_study(study_dir: str | Path, clip_folder: str | None = None, n_components: int = 4,
                  manifests: str | Path | None = None):
    """Profile the study's datasets and the models' pretraining datasets (``profiles/``)."""
    from .finetune import write_json
    from .profile import profile_datasets, write_profiles

    study_dir = Path(study_dir)
    profile = _study_profile(study_dir, None, manifests)
    m = load_manifests(manifests)
    sources = pretraining_datasets(m, profile.models, exclude=profile.datasets)
    start = time.perf_counter()
    ids = list(profile.datasets) + sources
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
    from .evaluate import DIRECTIONS

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
    profile = _study_profile(study_dir, None, manifests)
    return write_history(study_dir / "history", pd.read_csv(study_dir / "performance.csv"), study_dir / "profiles",
                         load_manifests(manifests), label or profile.evaluate.quality)


def write_history(folder: str | Path, performance: pd.DataFrame, profiles_dir: str | Path, manifests: Manifests,
                  label: str):
    """Write a history folder (``history.yaml`` + tables, mc_bench.history's schema) from a performance table and
    a profiles folder (mc_bench.profile), which ``history.yaml`` names under ``profiles`` so that a new dataset can be
    profiled the same way (``mc-bench choose --images``). Returns the loaded :class:`History`."""
    import os

    import yaml

    from .evaluate import DIRECTIONS
    from .history import load_history

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
    from .profile import profile_datasets, write_profiles

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

    from .evaluate import DIRECTIONS

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
    from .choose import shortlist_coverage
    from .ranking import bootstrap_summary

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


# ------------------------------------------------------------------------------------------------ the study


def run_study_notebooks(study_dir: Path, manifests: str | Path | None = None, seed: int = 0,
                        ablations: bool = True) -> dict:
    """01, 04, 05 and 06 on the study folder, then ``report.html``; returns seconds per notebook."""
    out = Path(study_dir) / "notebooks"
    out.mkdir(parents=True, exist_ok=True)
    seconds = {}
    params = {"study_dir": str(Path(study_dir).resolve()), "manifests": str(manifests) if manifests else None}
    extra = {"05_choose.ipynb": {"bootstrap_seed": seed, "ablations": ablations}}
    for notebook in STUDY_NOTEBOOKS:
        seconds[notebook] = round(_execute(notebook, out / notebook, {**params, **extra.get(notebook, {})},
                                           Path(study_dir))["wall"], 3)
    export_html(out / "06_report.ipynb", Path(study_dir) / "report.html")
    return seconds


def export_html(notebook: Path, target: Path) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    target.write_text(body)
    return target


def run_study(profile_id: str, study_dir: str | Path | None = None, manifests: str | Path | None = None,
              scheduler: str | None = None, workers: int = 2, retry_failed: bool = False, progress: bool = True,
              weights: str | None = None, ablations: bool = True, grid_only: bool = False) -> dict:
    """The whole study (see the module docstring). Returns a summary with seconds per stage. ``grid_only``: the
    grid and its metric tables, without the study notebooks."""
    from .finetune import write_json

    study_dir = Path(study_dir) if study_dir else study_dir_for(profile_id)
    start = time.perf_counter()
    cells = run_grid(study_dir, profile_id, manifests, scheduler, workers, retry_failed, progress, weights)
    grid_seconds = time.perf_counter() - start
    collect_metrics(study_dir, profile_id, manifests)
    notebooks = {} if grid_only else run_study_notebooks(study_dir, manifests, ablations=ablations)
    done = cells[cells["status"] == "done"]
    cell_seconds = float((done["finetune_notebook"] + done["evaluate_notebook"]).sum()) if len(done) else 0.0
    summary = {"profile": profile_id, "cells": len(cells), "done": int((cells["status"] == "done").sum()),
               # kernel launch + papermill overhead over the time of the grid's notebooks (imports counted apart)
               "kernel_startup_share": round(float(done["kernel_startup"].sum()) / cell_seconds, 4)
               if cell_seconds else None,
               "imports_share": round(float(done["imports"].sum()) / cell_seconds, 4) if cell_seconds else None,
               "failed": int((cells["status"] == "failed").sum()), "grid_seconds": round(grid_seconds, 1),
               "notebook_seconds": notebooks, "total_seconds": round(time.perf_counter() - start, 1)}
    write_json(study_dir / "run_summary.json", summary)
    return summary


def drop_figures(study_dir: str | Path) -> int:
    """Remove image outputs from the grid's executed notebooks (their text outputs, parameters and timings stay;
    the samples themselves are in each run's ``samples/``): the 640 executed notebooks of the committed
    ``cpu-paper`` study take 8.8 MB without their figures. Returns the number of notebooks rewritten."""
    import nbformat

    count = 0
    for path in sorted(Path(study_dir).glob("runs/*/*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        changed = False
        for cell in nb.cells:
            for output in cell.get("outputs", []):
                data = output.get("data", {})
                for key in [k for k in data if k.startswith("image/")]:
                    del data[key]
                    data.setdefault("text/plain", "<figure dropped to keep the committed study small>")
                    changed = True
        if changed:
            nbformat.write(nb, path)
            count += 1
    return count
