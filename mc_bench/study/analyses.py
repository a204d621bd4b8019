"""What the study's cells say beyond the ranking: the gains fine-tuning brought (against the ``<study>-pretrained``
companion), which datasets are learnable under the recipe, the label's own ceiling (against ``<study>-replicate``)
and M&C's ablations — each computed and written into the study's folder (``gains.csv``, ``learnability.csv``,
``selection/ceiling.csv``, ``selection/ablations.csv``; schema in :mod:`.tables`) by one function the notebook
calls."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..config import load_manifests
from ..evaluate import DIRECTIONS
from ..select.ablations import ablations
from ..select.history import History
from .tables import companion_study

UNLEARNABLE_FID = 50.0  # a target whose best fine-tuned FID stays above this is flagged (tiny-CLIP feature units)


def gains_table(study_dir: str | Path, pretrained_dir: str | Path, manifests: str | Path | None = None,
                label: str = "fid") -> pd.DataFrame:
    """What fine-tuning did to every cell: the label of the pretrained model (``<label>_pretrained``, from the
    ``train.steps: 0`` companion study) beside the fine-tuned one (``<label>_finetuned``), the ``gain`` (positive =
    better after fine-tuning, in label units), ``relative_gain`` (gain / |pretrained|), ``improved``, and
    ``in_domain`` (the dataset's family is one the model was pretrained on, from ``models.yaml``'s
    ``pretrain_domains``)."""
    m = load_manifests(manifests)
    after = pd.read_csv(Path(study_dir) / "performance.csv")[["model", "dataset", label]]
    before = pd.read_csv(Path(pretrained_dir) / "performance.csv")[["model", "dataset", label]]
    table = after.merge(before, on=["model", "dataset"], suffixes=("_finetuned", "_pretrained"))
    sign = 1.0 if DIRECTIONS[label] == "higher" else -1.0
    table["gain"] = sign * (table[f"{label}_finetuned"] - table[f"{label}_pretrained"])
    table["relative_gain"] = table["gain"] / table[f"{label}_pretrained"].abs()
    table["improved"] = table["gain"] > 0
    domains = {mid: set(str(spec.metadata.get("pretrain_domains", "")).split(";")) for mid, spec in m.models.items()}
    table["family"] = table["dataset"].map(lambda d: m.datasets[d].domain if d in m.datasets else "")
    table["in_domain"] = [f in domains.get(model, set()) for model, f in zip(table["model"], table["family"])]
    return table[["model", "dataset", "family", "in_domain", f"{label}_pretrained", f"{label}_finetuned", "gain",
                  "relative_gain", "improved"]]


def learnability(gains: pd.DataFrame, label: str = "fid", threshold: float = UNLEARNABLE_FID) -> pd.DataFrame:
    """Per dataset: the best label before and after fine-tuning, the share of candidates fine-tuning improved, and
    ``learnable`` — False when every candidate stays beyond ``threshold`` after fine-tuning (for FID: no model gets
    near the data under the recipe, and the label there says little about fine-tuning)."""
    higher = DIRECTIONS[label] == "higher"
    best = (lambda s: s.max()) if higher else (lambda s: s.min())
    rows = []
    for dataset, g in gains.groupby("dataset", sort=False):
        after, before = best(g[f"{label}_finetuned"]), best(g[f"{label}_pretrained"])
        rows.append({"dataset": dataset, "family": g["family"].iloc[0], f"best_{label}_pretrained": before,
                     f"best_{label}_finetuned": after, "share_improved": float(g["improved"].mean()),
                     "learnable": bool(after >= threshold if higher else after <= threshold)})
    return pd.DataFrame(rows)


def gains_summary(gains: pd.DataFrame) -> pd.DataFrame:
    """The recipe's effect in a few numbers, over all cells and over the in-domain ones: the share of cells that
    fine-tuning improved, and the mean and median gain and relative gain."""
    rows = []
    for scope, g in (("all cells", gains), ("in-domain cells", gains[gains["in_domain"]])):
        rows.append({"scope": scope, "cells": len(g), "share_improved": float(g["improved"].mean()),
                     "mean_gain": float(g["gain"].mean()), "median_gain": float(g["gain"].median()),
                     "mean_relative_gain": float(g["relative_gain"].mean())})
    return pd.DataFrame(rows)


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


def write_gains(study_dir: Path, out_dir: Path, label: str, manifests: str | Path | None = None) -> pd.DataFrame | None:
    """``gains.csv`` and ``learnability.csv`` in ``out_dir`` when the study has a pretrained companion; returns the
    learnability table (None without a companion)."""
    pretrained = companion_study(study_dir, "pretrained")
    if pretrained is None:
        return None
    gains = gains_table(study_dir, pretrained, manifests, label=label)
    gains.to_csv(Path(out_dir) / "gains.csv", index=False)
    learn = learnability(gains, label)
    learn.to_csv(Path(out_dir) / "learnability.csv", index=False)
    return learn


def write_ceiling(study_dir: Path, out_dir: Path, label: str, replicate_dir: str | Path | None = "auto"
                  ) -> pd.DataFrame | None:
    """``selection/ceiling.csv`` in ``out_dir`` from the replicate study (``"auto"``: ``<study>-replicate``); None
    when there is none."""
    study_dir = Path(study_dir)
    replicate = study_dir.with_name(f"{study_dir.name}-replicate") if replicate_dir == "auto" else (
        Path(replicate_dir) if replicate_dir else None)
    if replicate is None or not (replicate / "performance.csv").is_file():
        return None
    ceiling = label_ceiling(study_dir, replicate, label)
    (Path(out_dir) / "selection").mkdir(parents=True, exist_ok=True)
    ceiling.to_csv(Path(out_dir) / "selection" / "ceiling.csv", index=False)
    return ceiling


def write_ablations(history: History, out_dir: Path, seeds: tuple[int, ...] = (0,), n_jobs: int = 1) -> pd.DataFrame:
    """M&C's ablations on the study's history (:func:`mc_bench.select.ablations.ablations`), written to
    ``selection/ablations.csv`` in ``out_dir``."""
    table = ablations(history, seeds=tuple(seeds), n_jobs=n_jobs)
    (Path(out_dir) / "selection").mkdir(parents=True, exist_ok=True)
    table.to_csv(Path(out_dir) / "selection" / "ablations.csv", index=False)
    return table
