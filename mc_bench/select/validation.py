"""The histories the selection engine is judged on: the validation ones that chose its defaults, and the reported.

Defaults are chosen on *validation* histories only, and numbers are reported on other datasets:

============================  ==============================================================  ===================
history                       validation targets (held out one at a time)                      reported targets
============================  ==============================================================  ===================
TransferGraph image records   the 5 datasets outside TransferGraph's published table            its 8 published
the world (cpu-paper + cpu-   the 48 ``role: validation`` datasets (profiles                   cpu-paper's 32
validation-full + cpu-        cpu-validation-full and cpu-validation-more), each fold
validation-more runs)         learning from the other 79, with the probe of every dataset
                              whose study has a ``<study>-pretrained`` companion
the world, LoRA label (cpu-   the same 12 datasets (profile cpu-validation), with the LoRA     (cpu-paper-lora's
paper-lora + cpu-validation)  cpu-paper study's runs as the other 32                           32, not reported)
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
# cpu-validation-full's and cpu-validation-more's runs with cpu-paper's: the grids fine-tuned with the recipe cpu-paper
# reports (full UNet, lr 5e-5, cosine, 100 steps), so the defaults are chosen on the label they are judged on
WORLD_VALIDATION_HISTORY = REPO_ROOT / "results" / "cpu-validation-full" / "history-with-cpu-paper"
# the same 12 validation datasets with the first recipe (LoRA rank 4, lr 1e-3), with the LoRA cpu-paper study's runs
# (results/cpu-paper-lora): a second label of the world, kept as a validation history of its own
WORLD_VALIDATION_LORA_HISTORY = REPO_ROOT / "results" / "cpu-validation" / "history-with-cpu-paper"
CPU_PAPER_HISTORY = REPO_ROOT / "results" / "cpu-paper" / "history"
SYNTHETIC_SHAPE = {"n_models": 20, "n_datasets": 30}
SYNTHETIC_VALIDATION_SEEDS = (100, 101, 102, 103, 104)
SYNTHETIC_PROBE_NOISE = 0.5  # the validation histories' probe: the quality before fine-tuning tracks the label loosely
SYNTHETIC_REPORTED_SEEDS = (0, 1, 2)

Histories = dict[str, tuple[History, list[str]]]


def transfergraph_split(folder: str | Path = TRANSFERGRAPH_IMAGE) -> tuple[History, list[str], list[str]]:
    """TransferGraph's history, its published targets (reported) and its other datasets (validation)."""
    history = from_transfergraph(folder)
    published = [t for t in transfergraph_targets(folder) if t in history.datasets]
    return history, published, [d for d in history.datasets if d not in published]


def validation_histories(include_world: bool = True, probe: bool = False) -> Histories:
    """Every validation history with its validation targets (see the module docstring); with ``probe``, the
    synthetic ones carry a probe (noise :data:`SYNTHETIC_PROBE_NOISE`). The world's two need the committed histories
    :data:`WORLD_VALIDATION_HISTORY` and :data:`WORLD_VALIDATION_LORA_HISTORY`, each written by
    :func:`mc_bench.study.build_combined_history` from the validation grid's and the cpu-paper grid's study folders
    (e.g. ``build_combined_history(["results/cpu-validation-full", "results/cpu-paper"], WORLD_VALIDATION_HISTORY)``;
    the probe comes from their ``-pretrained`` companions)."""
    out: Histories = {}
    if TRANSFERGRAPH_IMAGE.is_dir():
        history, _, validation = transfergraph_split()
        out["transfergraph-image-val"] = (history, validation)
    for name, folder in (("world-val", WORLD_VALIDATION_HISTORY), ("world-val-lora", WORLD_VALIDATION_LORA_HISTORY)):
        if include_world and (folder / "history.yaml").is_file():
            history = load_history(folder)
            out[name] = (history, [d for d in history.datasets if d.startswith("val-")])
    for seed in SYNTHETIC_VALIDATION_SEEDS:
        history = synthetic_history(**SYNTHETIC_SHAPE, seed=seed, probe_noise=SYNTHETIC_PROBE_NOISE if probe else None)
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
