"""The histories the selection engine is judged on: the validation ones that chose its defaults, and the reported.

Defaults are chosen on *validation* histories only, and numbers are reported on other datasets:

============================  ==============================================================  ===================
history                       validation targets (held out one at a time)                      reported targets
============================  ==============================================================  ===================
TransferGraph image records   the 5 datasets outside TransferGraph's published table            its 8 published
the world (cpu-paper + cpu-   the 12 ``role: validation`` datasets (profile cpu-validation),   cpu-paper's 32
validation runs)              each fold learning from the other 43 datasets
synthetic (planted)           seeds 100-104                                                    seeds 0-2
============================  ==============================================================  ===================

A reported target is never a validation target; as in any leave-one-dataset-out study, the runs of the other
datasets (reported or not) are the history a fold learns from. ``benchmarks/selection_defaults.py`` runs every
candidate configuration on :func:`validation_histories`; ``benchmarks/selection_report.py`` runs the defaults on
:func:`reported_histories`.
"""

from __future__ import annotations

from pathlib import Path

from ..paths import REPO_ROOT
from .history import History, from_transfergraph, load_history, transfergraph_targets
from .synthetic import synthetic_history

TRANSFERGRAPH_IMAGE = REPO_ROOT.parent / "shared" / "external" / "transfergraph" / "image_classification"
# cpu-validation's runs with those of the LoRA-recipe cpu-paper study (now results/cpu-paper-lora): both grids were
# fine-tuned with the first recipe, so this validation history keeps that label (issue 15)
WORLD_VALIDATION_HISTORY = REPO_ROOT / "results" / "cpu-validation" / "history-with-cpu-paper"
CPU_PAPER_HISTORY = REPO_ROOT / "results" / "cpu-paper" / "history"
SYNTHETIC_SHAPE = {"n_models": 20, "n_datasets": 30}
SYNTHETIC_VALIDATION_SEEDS = (100, 101, 102, 103, 104)
SYNTHETIC_REPORTED_SEEDS = (0, 1, 2)

Histories = dict[str, tuple[History, list[str]]]


def transfergraph_split(folder: str | Path = TRANSFERGRAPH_IMAGE) -> tuple[History, list[str], list[str]]:
    """TransferGraph's history, its published targets (reported) and its other datasets (validation)."""
    history = from_transfergraph(folder)
    published = [t for t in transfergraph_targets(folder) if t in history.datasets]
    return history, published, [d for d in history.datasets if d not in published]


def validation_histories(include_world: bool = True) -> Histories:
    """Every validation history with its validation targets (see the module docstring). The world's needs the
    committed ``results/cpu-validation`` study (:func:`mc_bench.study.build_validation_history` writes it)."""
    out: Histories = {}
    if TRANSFERGRAPH_IMAGE.is_dir():
        history, _, validation = transfergraph_split()
        out["transfergraph-image-val"] = (history, validation)
    if include_world and (WORLD_VALIDATION_HISTORY / "history.yaml").is_file():
        history = load_history(WORLD_VALIDATION_HISTORY)
        out["world-val"] = (history, [d for d in history.datasets if d.startswith("val-")])
    for seed in SYNTHETIC_VALIDATION_SEEDS:
        history = synthetic_history(**SYNTHETIC_SHAPE, seed=seed)
        out[f"synthetic-val-{seed}"] = (history, history.datasets)
    return out


def reported_histories() -> Histories:
    """Every reported history with its reported targets (see the module docstring)."""
    out: Histories = {}
    if TRANSFERGRAPH_IMAGE.is_dir():
        history, published, _ = transfergraph_split()
        out["transfergraph-image"] = (history, published)
    if (CPU_PAPER_HISTORY / "history.yaml").is_file():
        history = load_history(CPU_PAPER_HISTORY)
        out["cpu-paper"] = (history, history.datasets)
    for seed in SYNTHETIC_REPORTED_SEEDS:
        history = synthetic_history(**SYNTHETIC_SHAPE, seed=seed)
        out[f"synthetic-{seed}"] = (history, history.datasets)
    return out
