"""The conformal shortlist: the models a ranker cannot tell from its first pick, at a chosen coverage.

Split conformal prediction with the score gap of the truly best model as nonconformity score (``best_gap`` of a
leave-one-dataset-out): calibrated on held-out datasets, the shortlist holds the best model with probability at
least ``level`` when datasets are exchangeable.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def shortlist_threshold(gaps, level: float = 0.9) -> float:
    """Split-conformal threshold on the score gaps of calibration datasets (``best_gap`` of a leave-one-dataset-out):
    the ``ceil((n + 1) * level)``-th smallest gap, ``inf`` when there are too few datasets for that level."""
    gaps = np.sort(np.asarray([g for g in gaps if np.isfinite(g)], dtype=float))
    k = int(np.ceil((len(gaps) + 1) * level))
    return float(gaps[k - 1]) if 0 < k <= len(gaps) else np.inf


def conformal_shortlist(scores: pd.Series, threshold: float) -> list[str]:
    """The models scored within ``threshold`` of the top score, best first. With the threshold of
    :func:`shortlist_threshold` it holds the best model with probability ≥ ``level`` when datasets are exchangeable."""
    top = scores.max()
    return list(scores[scores >= top - threshold - 1e-12].sort_values(ascending=False, kind="stable").index)


def shortlist_coverage(lodo: pd.DataFrame, scores: pd.DataFrame, level: float = 0.9,
                       targets: list[str] | None = None) -> pd.DataFrame:
    """Empirical coverage and mean size of the conformal shortlist per method, leave-one-dataset-out: each held-out
    dataset's shortlist is calibrated on every *other* held-out dataset's gap, covers when its best model is inside,
    and its size is the number of models scored within the threshold of the top. ``targets``: the datasets
    reported (default: all of ``lodo``'s)."""
    rows = []
    for method, group in lodo.groupby("method", sort=False):
        gaps = group.set_index("dataset")["best_gap"].astype(float)
        if not np.isfinite(gaps).any():
            continue
        method_scores = scores[scores["method"] == method]
        covered, sizes = [], []
        for dataset in targets if targets is not None else list(gaps.index):
            threshold = shortlist_threshold(gaps.drop(dataset), level)
            s = method_scores.loc[method_scores["dataset"] == dataset, "score"].to_numpy()
            covered.append(gaps[dataset] <= threshold + 1e-12)
            sizes.append(int((s >= s.max() - threshold - 1e-12).sum()))
        rows.append({"method": method, "shortlist_level": level, "shortlist_coverage": float(np.mean(covered)),
                     "shortlist_size": float(np.mean(sizes)), "n_models": float(group["n_models"].mean())})
    return pd.DataFrame(rows)
