"""Choose for my data: "which model should I fine-tune on my images?" answered end to end.

``mc-bench choose HISTORY --images FOLDER --fine-tune K`` (:func:`choose_for_folder`), or notebook
``07_choose_for_my_data``:

1. the folder is read and checked (every image and caption; enough images for a train and a held-out split)
   before anything is fine-tuned;
2. it is profiled like the history's datasets (:func:`mc_bench.profile.extend_profiles`) and the candidates are
   ranked by the default engine (M&C, :mod:`mc_bench.select.methods`);
3. the top ``K`` are kept — or, with ``K = "auto"``, the smallest K whose *ranker-first success rate* reaches
   ``level``: the share of the history's datasets, each held out in turn, whose best model was among the ranker's
   first K (:func:`success_curve`);
4. each is fine-tuned on the folder with the history's own recipe (the ``train``/``generate``/``evaluate`` settings
   of the study that made the history, its ``study.json``), sampled from the held-out captions and evaluated with
   the history's label — as cells of the study runner (:func:`mc_bench.study.runner.run_grid`: Dask, resumable,
   one GPU per cell on a GPU);
5. the winner is the tried candidate with the best label.

The output folder (default ``results/choices/<folder>/``) is a small study folder: ``study.json``, ``manifests/``
(the folder as a dataset, the K candidates, the recipe as profile ``choice``), ``data/`` (the folder split into
train and held-out images when it came unsplit), ``runs/``, ``cells.csv``, ``metrics.csv``, ``performance.csv``,
``contact_sheets/``, and ``choice.json`` + ``choice.html``. Running the same command again resumes: finished cells
are kept, a killed one is redone.

``add_to_history``: a copy of the history with the folder's profile and its K runs appended (the history given is
never changed), so that the next choice learns from this one.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..config import Manifests, Profile, load_manifests, resolve_folder, validated
from ..errors import HistoryError, InputError
from ..evaluate import DIRECTIONS
from ..io import write_json, write_text
from ..paths import CLIP_DIR, REPO_ROOT
from ..profile import extend_profiles, read_profiles, write_profiles
from ..select.history import History, load_history
from ..select.lodo import leave_one_dataset_out
from ..select.methods import method as registered_method
from ..world.data import read_image_folder, validate_dataset
from .runner import run_grid, study_lock
from .report import write_contact_sheets
from .tables import cell_dir, collect_tables, read_cell, write_history

CHOICES_DIR = REPO_ROOT / "results" / "choices"
PROFILE_ID = "choice"
CHOICE_RECORD = "choice.json"


# ------------------------------------------------------------------------------------------- the inputs


def history_folder(path: str | Path) -> Path:
    """The history folder of ``path``: a history folder (``history.yaml``) or a study folder (``history/``)."""
    folder = Path(path)
    for candidate in (folder, folder / "history"):
        if (candidate / "history.yaml").is_file():
            return candidate
    raise HistoryError(folder, "not a history folder (no history.yaml) nor a study folder (no history/history.yaml)",
                       "pass a study folder such as results/cpu-paper, or a history written by --add-to-history")


def history_recipe(folder: Path) -> tuple[Path, Profile]:
    """The study record (``study.json``) that made a history, beside it or one level up, and its profile: the
    recipe the candidates are fine-tuned with."""
    for candidate in (folder / "study.json", folder.parent / "study.json"):
        if candidate.is_file():
            try:
                record = json.loads(candidate.read_text())
                return candidate, validated(Profile, record["profile"], "study.json: profile")
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise InputError(candidate, f"cannot read the study's recipe ({err!r})",
                                 "restore study.json from the repository, or rerun the study") from None
    raise HistoryError(folder, "no study.json beside the history or above it, so the fine-tuning recipe is unknown",
                       "pass a study folder (results/<profile>) or a history written by --add-to-history; a "
                       "history without a study (e.g. TransferGraph's) can rank (mc-bench choose) but not fine-tune")


def dataset_id(folder: Path) -> str:
    """The id a folder gets as a dataset: ``new-`` and its name, lower-case, other characters as ``-``."""
    name = re.sub(r"[^a-z0-9_.-]+", "-", folder.resolve().name.lower()).strip("-.") or "folder"
    return f"new-{name}"


def split_folder(folder: Path, out: Path, eval_fraction: float, min_images: int) -> Path:
    """The folder as a dataset folder with ``train/`` and ``test/`` splits: itself when it has both, else a copy
    into ``out`` split deterministically (every image kept, ``eval_fraction`` held out). Too few images for two
    splits of ``min_images`` is an :class:`InputError` before anything is written."""
    folder = Path(folder)
    if (folder / "train" / "metadata.jsonl").is_file() and (folder / "test" / "metadata.jsonl").is_file():
        return folder.resolve()
    source = folder if (folder / "metadata.jsonl").is_file() else folder / "train"
    rows = [json.loads(line) for line in (source / "metadata.jsonl").read_text().splitlines() if line.strip()]
    n_eval = max(min_images, int(round(eval_fraction * len(rows))))
    if len(rows) - n_eval < min_images:
        raise InputError(folder, f"{len(rows)} images: too few for a training split and a held-out split of "
                         f"at least {min_images} each", f"add images (at least {2 * min_images}), or lower "
                         "`world.min_split_images` in datasets.yaml")
    held = set(np.random.default_rng(0).permutation(len(rows))[:n_eval].tolist())
    for split, keep in (("train", lambda i: i not in held), ("test", lambda i: i in held)):
        target = out / split
        target.mkdir(parents=True, exist_ok=True)
        lines = []
        for i, row in enumerate(rows):
            if keep(i):
                name = f"{i:06d}{Path(row['file_name']).suffix.lower()}"
                shutil.copyfile(source / row["file_name"], target / name)
                lines.append(json.dumps({**row, "file_name": name}))
        write_text(target / "metadata.jsonl", "\n".join(lines) + "\n")
    return out.resolve()


def write_choice_manifests(out: Path, base: Manifests, recipe: Profile, models: list[str], dataset: str,
                           data: Path) -> Path:
    """``out/manifests``: the folder as the only dataset, the candidates (sources made absolute) and the recipe as
    profile ``choice``. Returns the folder."""
    unknown = [m for m in models if m not in base.models]
    if unknown:
        raise HistoryError(base.folder / "models.yaml", f"the history's candidates {unknown} are not in models.yaml, "
                           "so they cannot be fine-tuned", "pass --manifests with the folder whose models.yaml "
                           "lists them (the one the study was run with)")
    folder = out / "manifests"
    folder.mkdir(parents=True, exist_ok=True)
    models_yaml = []
    for m in models:
        spec = base.models[m].model_dump(mode="json", exclude_none=True)
        if not spec["source"].startswith("hf:"):
            spec["source"] = str(resolve_folder(base.folder, spec["source"]))
        models_yaml.append(spec)
    datasets_yaml = {"world": base.world.model_dump(mode="json"),
                     "datasets": [{"id": dataset, "source": str(data), "role": "target", "domain": "user",
                                   "license": "the user's own images", "splits": {"train": "train", "eval": "test"}}]}
    profile = {**recipe.model_dump(mode="json"), "id": PROFILE_ID, "models": models, "datasets": [dataset],
               "description": f"the {len(models)} candidates ranked first for {dataset}, with the recipe of "
                              f"profile {recipe.id!r}"}
    write_text(folder / "datasets.yaml", yaml.safe_dump(datasets_yaml, sort_keys=False))
    write_text(folder / "models.yaml", yaml.safe_dump({"models": models_yaml}, sort_keys=False))
    write_text(folder / "profiles.yaml", yaml.safe_dump({"profiles": [profile]}, sort_keys=False))
    load_manifests(folder)  # what was written is a valid manifest folder
    return folder


# ------------------------------------------------------------------------------------------- how many


def best_ranks(scores: pd.DataFrame, higher_is_better: bool) -> pd.Series:
    """Per dataset of a leave-one-dataset-out's ``scores`` (dataset, model, score, quality): the position of the
    truly best model in the ranker's order (1 = first; ties in quality: the best-placed of them)."""
    out = {}
    for dataset, group in scores.groupby("dataset", sort=True):
        group = group.dropna(subset=["quality"])
        if group.empty:
            continue
        order = group.sort_values("score", ascending=False, kind="stable")["model"].tolist()
        best = group["quality"].max() if higher_is_better else group["quality"].min()
        out[dataset] = min(order.index(m) + 1 for m in group.loc[group["quality"] == best, "model"])
    return pd.Series(out, name="best_rank", dtype=int)


def success_curve(ranks: pd.Series, n_models: int) -> pd.DataFrame:
    """For K = 1..n_models: the share of datasets whose best model was among the ranker's first K."""
    ranks = np.asarray(ranks, dtype=int)
    return pd.DataFrame({"k": np.arange(1, n_models + 1),
                         "success": [float(np.mean(ranks <= k)) if len(ranks) else np.nan
                                     for k in range(1, n_models + 1)]})


def auto_k(curve: pd.DataFrame, level: float) -> int:
    """The smallest K whose success rate reaches ``level`` (all candidates when none does)."""
    reached = curve.loc[curve["success"] >= level - 1e-12, "k"]
    return int(reached.min()) if len(reached) else int(curve["k"].max())


def history_curve(folder: Path, history: History, method, label: str, n_jobs: int = 2) -> tuple[pd.DataFrame, str]:
    """The ranker-first success curve of ``method`` on the history: from the study's leave-one-dataset-out
    (``selection/scores.csv``) when the history is a study's, else computed now."""
    scores_path = folder.parent / "selection" / "scores.csv"
    if folder.name == "history" and scores_path.is_file():
        scores = pd.read_csv(scores_path)
        scores = scores[scores["method"] == label]
        if len(scores):
            ranks = best_ranks(scores, history.higher_is_better)
            return success_curve(ranks, len(history.models)), f"{len(ranks)} held-out datasets of {scores_path}"
    _, scores = leave_one_dataset_out(history, {label: method}, n_jobs=n_jobs, return_scores=True)
    ranks = best_ranks(scores, history.higher_is_better)
    return success_curve(ranks, len(history.models)), f"{len(ranks)} datasets held out now"


# ------------------------------------------------------------------------------------------- the choice


def _winner(performance: pd.DataFrame, label: str) -> pd.DataFrame:
    """The tried candidates, best first by ``label`` (direction-aware)."""
    return performance.sort_values(label, ascending=DIRECTIONS[label] == "lower", kind="stable").reset_index(drop=True)


def rank_for_folder(history: History, dataset: str, images: list, captions: list[str], method: str = "mc"):
    """The candidates ranked for a new dataset made of ``images`` and ``captions`` (profiled like the history's
    datasets), best first, and the history's profiles with the new dataset appended."""
    profiles = read_profiles(history.profiles)
    backbone = profiles.meta.get("backbone")
    grown, features, similarity = extend_profiles(profiles, dataset, images, captions,
                                                  None if backbone == CLIP_DIR else backbone)
    sim = history.dataset_similarity()
    with_new = history.with_dataset(dataset, {k: v for k, v in features.items() if k in history.dataset_features},
                                    similarity.reindex(sim.index).to_dict() if sim is not None else None)
    scores = registered_method(method).make().fit(with_new).predict(dataset)
    return scores.sort_values(ascending=False, kind="stable"), grown


def choose_for_folder(history: str | Path, images: str | Path, fine_tune: int | str = "auto",
                      out: str | Path | None = None,
                      level: float = 0.9, method: str = "mc", scheduler: str | None = None, workers: int | None = None,
                      add_to_history: str | Path | None = None, overrides: dict | None = None,
                      manifests: str | Path | None = None, weights: str | None = None,
                      progress: bool = True) -> dict:
    """Rank the candidates for an image folder, fine-tune the first K with the history's recipe, and return the
    record of ``choice.json`` (see the module docstring). ``overrides``: ``{"train": {...}, "generate": {...}}``
    on top of the recipe (e.g. fewer steps for a quick look; recorded in ``choice.json``)."""
    start = time.perf_counter()
    folder = history_folder(history)
    study_record, recipe = history_recipe(folder)
    if overrides:
        recipe = validated(Profile, {**recipe.model_dump(mode="json"),
                                     **{s: {**recipe.model_dump(mode="json")[s], **v} for s, v in overrides.items()}},
                           "--set")
    if not (isinstance(fine_tune, int) and fine_tune >= 1) and fine_tune != "auto":
        raise InputError(f"--fine-tune {fine_tune}", "not a number of candidates", "pass K >= 1 or auto")
    if not 0 < level < 1:
        raise InputError(f"--level {level}", "not a probability", "pass a level between 0 and 1, e.g. 0.9")
    images = Path(images)
    if not images.is_dir():
        raise InputError(images, "not a folder", "pass an image folder with metadata.jsonl (file_name, text)")
    base = load_manifests(manifests)
    pictures, captions = read_image_folder(images)  # every row checked: one clear error before anything runs
    name = dataset_id(images)
    out = Path(out) if out else CHOICES_DIR / images.resolve().name
    hist = load_history(folder)
    if name in hist.datasets or name in hist.dataset_features.index:
        raise HistoryError(folder, f"the history has a dataset {name!r} already (this folder was added to it?)",
                           "choose from the history it was added to's source, or rename the folder")
    if hist.profiles is None:
        raise HistoryError(folder, "the history records no dataset profiles, so the folder cannot be compared with "
                           "its datasets", "use a study folder (results/<profile>) or a history it wrote")

    with study_lock(out):
        data = split_folder(images, out / "data", base.world.eval_fraction, base.world.min_split_images)
        ranking, grown_profiles = rank_for_folder(hist, name, pictures, captions, method)
        chosen = registered_method(method)
        curve, calibration = history_curve(folder, hist, chosen.make(), chosen.label)
        k = auto_k(curve, level) if fine_tune == "auto" else min(int(fine_tune), len(ranking))
        why = (f"the smallest K whose ranker-first success rate on the history reaches {level:.0%} "
               f"({calibration})" if fine_tune == "auto" else "given (--fine-tune)")
        candidates = list(ranking.index[:k])
        manifest_dir = write_choice_manifests(out, base, recipe, candidates, name, data)
        validate_dataset(load_manifests(manifest_dir), name)  # what fine-tuning will refuse, refused before it
        cells = run_grid(out, PROFILE_ID, manifest_dir, scheduler, workers, progress=progress, weights=weights)
        done = cells[cells["status"] == "done"]
        label = hist.label
        tried = []
        if len(done):
            collect_tables(out, PROFILE_ID, manifest_dir)
            write_contact_sheets(out, manifests=manifest_dir)
            performance = _winner(pd.read_csv(out / "performance.csv"), label)
        else:
            performance = pd.DataFrame(columns=["model", label])
        for _, row in cells.iterrows():
            record = read_cell(cell_dir(out, row["model"], name)) or {}
            quality = performance.loc[performance["model"] == row["model"], label]
            tried.append({"model": row["model"], "rank": candidates.index(row["model"]) + 1,
                          "status": row["status"], label: float(quality.iloc[0]) if len(quality) else None,
                          "seconds": round(sum((record.get("seconds") or {}).get(k) or 0.0
                                               for k in ("finetune_notebook", "evaluate_notebook")), 1),
                          "error": row.get("error") or ""})
        winner = performance["model"].iloc[0] if len(performance) else None
        margin = abs(float(performance[label].iloc[1] - performance[label].iloc[0])) if len(performance) > 1 else None
        success = curve.set_index("k")["success"]
        result = {
            "folder": str(images.resolve()), "dataset": name, "n_images": len(pictures),
            "history": str(folder), "recipe": {"study": str(study_record), "profile": recipe.id,
                                               "overrides": overrides or {}},
            "method": chosen.id, "label": label, "direction": hist.quality[label],
            "ranking": [{"rank": i + 1, "model": m, "score": round(float(v), 6)}
                        for i, (m, v) in enumerate(ranking.items())],
            "k": k, "k_why": why, "level": level,
            "expected_success": None if np.isnan(success.get(k, np.nan)) else float(success[k]),
            "success_curve": curve.to_dict(orient="records"),
            "tried": tried, "winner": winner,
            "margin_over_runner_up": margin,
            "failed": [t["model"] for t in tried if t["status"] != "done"],
            "seconds": round(time.perf_counter() - start, 1),
        }
        if add_to_history is not None and len(done):
            result["added_to_history"] = str(grow_history(folder, study_record, grown_profiles, name,
                                                          pd.read_csv(out / "performance.csv"), add_to_history,
                                                          base))
        write_json(out / CHOICE_RECORD, result)
        write_text(out / "choice.html", choice_html(result, out))
    return result


def grow_history(folder: Path, study_record: Path, profiles, dataset: str, performance: pd.DataFrame,
                 target: str | Path, manifests: Manifests) -> Path:
    """A copy of the history in ``target`` with ``dataset``'s profile and runs appended (the history in ``folder``
    is not changed); the study record goes along, so the grown history keeps its recipe. Returns ``target``."""
    target = Path(target)
    if target.resolve() == folder.resolve():
        raise InputError(target, "is the history itself", "write the grown history to another folder")
    spec = yaml.safe_load((folder / "history.yaml").read_text())
    old = pd.read_csv(folder / spec.get("runs", "runs.csv"))
    new = performance[[c for c in old.columns if c in performance.columns]].copy()
    if "mean_rank" in new:  # a rank among the K tried is not a rank among all candidates
        new["mean_rank"] = np.nan
    runs = pd.concat([old, new], ignore_index=True)
    probe = pd.read_csv(folder / spec["probe"]) if spec.get("probe") else None
    write_profiles(profiles, target / "profiles")
    write_history(target, runs, target / "profiles", manifests, spec.get("label", "fid"), probe=probe)
    record = json.loads(study_record.read_text())
    write_json(target / "study.json", {**record, "grown_from": str(folder), "added": dataset})
    return target


def choice_html(result: dict, out: Path) -> str:
    """A short page: the winner, the tried candidates, the ranking and the contact sheet."""
    label = result["label"]
    rows = "".join(f"<tr><td>{t['rank']}</td><td>{html.escape(t['model'])}</td><td>{t['status']}</td>"
                   f"<td>{'' if t[label] is None else f'{t[label]:.3f}'}</td><td>{t['seconds']}</td></tr>"
                   for t in result["tried"])
    ranking = ", ".join(html.escape(r["model"]) for r in result["ranking"])
    sheet = f"contact_sheets/{result['dataset']}.png"
    image = f'<p><img src="{sheet}" alt="held-out images and samples"></p>' if (out / sheet).is_file() else ""
    margin = result["margin_over_runner_up"]
    return (f"<!doctype html><meta charset=utf-8><title>choice for {html.escape(result['dataset'])}</title>"
            f"<h1>Fine-tune {html.escape(str(result['winner']))}</h1>"
            f"<p>{result['n_images']} images; {result['k']} candidates fine-tuned ({html.escape(result['k_why'])}); "
            f"{label} {'lower' if result['direction'] == 'lower' else 'higher'} is better"
            + (f"; margin over the runner-up {margin:.3f}" if margin is not None else "")
            + f"; {result['seconds']} s.</p>"
            f"<table border=1 cellpadding=4><tr><th>rank</th><th>model</th><th>status</th><th>{label}</th>"
            f"<th>seconds</th></tr>{rows}</table><p>The ranking ({result['method']}): {ranking}</p>{image}")
