"""Ablations of M&C: what each of its parts adds, leave-one-dataset-out.

Each variant changes one thing of the default :class:`~mc_bench.select.mc.MatchAndChoose`: a learner left out (the
booster, the collaborative learners), the booster alone, the learners averaged instead of stacked, a graph embedding
added to the booster's features (node2vec+, Laplacian eigenmaps), the booster without collaborative features; and two
sweeps keep a fraction of the candidate models or of the training datasets (the paper's model-ratio and
history-ratio studies), beside history-weighted and global-best on the same subsets.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import clone

from .baselines import GlobalBest, HistoryWeighted
from .graph import Node2Vec, SpectralGraphEmbedding
from .history import History
from .lodo import leave_one_dataset_out
from .mc import MatchAndChoose
from .ranking import DEFAULT_KS


def variants(base: MatchAndChoose) -> dict[tuple[str, str], MatchAndChoose]:
    """The one-change variants of ``base``, by (ablation, value)."""
    without = lambda name: tuple(n for n in base.learners if n != name)  # noqa: E731
    return {
        ("default", "-"): base,
        ("learners", "without the booster"): clone(base).set_params(learners=without("booster")),
        ("learners", "booster only"): clone(base).set_params(learners=("booster",)),
        ("learners", "without local and nearest"): clone(base).set_params(
            learners=tuple(n for n in base.learners if n not in ("local", "nearest"))),
        ("blend", "equal weights"): clone(base).set_params(blend="equal"),
        ("embedding", "node2vec+"): clone(base).set_params(embedding=Node2Vec(p=1.0, q=1.0)),
        ("embedding", "spectral"): clone(base).set_params(embedding=SpectralGraphEmbedding()),
        ("collaborative features", "off"): clone(base).set_params(collaborative_features=False),
    }


def ablations(history: History, targets: list[str] | None = None, base: MatchAndChoose | None = None,
              ratios=(0.25, 0.5, 0.75), seeds=(0, 1, 2), ks=DEFAULT_KS, n_jobs: int = 1) -> pd.DataFrame:
    """Leave-one-dataset-out rows of every variant (see the module docstring), with the columns ``ablation`` and
    ``value`` (and ``seed`` for the sweeps)."""
    base = base if base is not None else MatchAndChoose()
    targets = targets if targets is not None else history.datasets
    frames = []
    for (ablation, value), method in variants(base).items():
        df = leave_one_dataset_out(history, {"M&C": method}, targets, ks, n_jobs)
        frames.append(df.assign(ablation=ablation, value=value))
    for ratio in ratios:
        for seed in seeds:
            rng = np.random.default_rng(seed)
            size = max(2, int(round(ratio * len(history.models))))
            models = list(rng.choice(history.models, size=size, replace=False))
            sub = history.subset(models=sorted(models))
            methods = {"M&C": base, "history-weighted": HistoryWeighted(), "global-best": GlobalBest()}
            df = leave_one_dataset_out(sub, methods, targets, ks, n_jobs)
            frames.append(df.assign(ablation="model ratio", value=ratio, seed=seed))
            rows = []
            for target in targets:
                others = [d for d in history.datasets if d != target]
                keep = list(rng.choice(others, size=max(2, int(round(ratio * len(others)))), replace=False))
                rows.append(leave_one_dataset_out(history.subset(datasets=sorted(keep + [target])), methods,
                                                  [target], ks, 1))
            frames.append(pd.concat(rows).assign(ablation="history ratio", value=ratio, seed=seed))
    return pd.concat(frames, ignore_index=True)
