"""Collaborative scores: what the other datasets' runs say about a model on a new dataset.

The matching graph read one and two hops out — a dataset's similarity edges to the datasets with runs, and those
datasets' performance edges — as similarity-weighted means of normalised quality, for many targets at once. These
are the baselines' scores (global-best, nearest-dataset, history-weighted) and the M&C ranker's collaborative
learners and features. Also here: what a pick loses (:func:`regret_matrix`, :func:`top_pick_loss`), the criterion
of history-weighted's inner choice of bandwidth (:func:`select_bandwidth`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .history import History
from .ranking import ndcg_at_k

# the history-weighted baseline's bandwidths (chosen by inner leave-one-dataset-out on NDCG@5)
BANDWIDTH_GRID = (0.03, 0.1, 0.3, 1.0, 3.0, 100.0)
NEAREST_BANDWIDTH = 1e-6  # what bandwidth 0 means in practice: the nearest dataset outweighs the next by e^1e6


def collaborative_scores(norm: np.ndarray, similarity: np.ndarray, bandwidth: float) -> np.ndarray:
    """Similarity-weighted means of normalised quality, for many targets at once.

    ``norm`` is models × datasets (NaN where a pair was not run, skipped rather than counted as zero);
    ``similarity`` is targets × datasets, NaN where a dataset must not be used for that target (its own runs).
    Weights are ``exp((s - s_max) / (bandwidth * spread))`` over the usable datasets of each target;
    ``bandwidth=inf`` weighs every dataset the same (the global mean), ``0`` keeps the nearest dataset. Returns
    models × targets (NaN where no usable dataset has a run of the model)."""
    bandwidth = NEAREST_BANDWIDTH if bandwidth == 0 else bandwidth
    s = np.asarray(similarity, dtype=float)
    usable = ~np.isnan(s)
    if np.isinf(bandwidth):
        w = usable.astype(float)
    else:
        with np.errstate(all="ignore"):  # a target with no usable dataset gets no weights at all
            s_max = np.max(np.where(usable, s, -np.inf), axis=1, keepdims=True)
            s_min = np.min(np.where(usable, s, np.inf), axis=1, keepdims=True)
            spread = np.where(np.isfinite(s_max), np.maximum(s_max - s_min, 1e-9), 1.0)
            s_max = np.where(np.isfinite(s_max), s_max, 0.0)
            w = np.where(usable, np.exp((np.where(usable, s, 0.0) - s_max) / (bandwidth * spread)), 0.0)
    observed = ~np.isnan(norm)
    num = np.where(observed, norm, 0.0) @ w.T
    den = observed.astype(float) @ w.T
    with np.errstate(all="ignore"):
        return np.where(den > 0, num / den, np.nan)


def leave_self_out(similarity: pd.DataFrame, targets: list[str], datasets: list[str]) -> np.ndarray:
    """targets × datasets similarity with each target's own column (its own runs) blanked."""
    s = similarity.reindex(index=targets, columns=datasets).to_numpy(dtype=float).copy()
    position = {d: j for j, d in enumerate(datasets)}
    for i, t in enumerate(targets):
        if t in position:
            s[i, position[t]] = np.nan
    return s


def uniform_similarity(targets: list[str], datasets: list[str]) -> np.ndarray:
    """targets × datasets ones, each target's own column blanked: the weights of the global mean."""
    return leave_self_out(pd.DataFrame(1.0, index=targets, columns=datasets), targets, datasets)


def with_fallback(weighted: np.ndarray, overall: np.ndarray) -> np.ndarray:
    """Similarity-weighted scores, gaps filled by the global mean, ties broken by it."""
    overall = np.nan_to_num(overall, nan=0.0)
    return np.where(np.isnan(weighted), overall, weighted) + 1e-6 * overall


def regret_matrix(history: History, criterion: str = "relative") -> pd.DataFrame:
    """What picking each model loses on each dataset (models × datasets, 0 for the best, NaN where not run):
    ``relative`` — the report's regret, ``(best - chosen) / |best|`` (``(chosen - best) / |best|`` when lower is
    better; the plain gap when the best is 0); ``normalised`` — ``1 -`` the min–max normalised quality, 1 for the
    worst model."""
    if criterion == "normalised":
        return 1.0 - history.normalised()
    if criterion != "relative":
        raise ValueError(f"criterion must be 'relative' or 'normalised', not {criterion!r}")
    q = history.label_matrix()
    best = q.max(axis=0) if history.higher_is_better else q.min(axis=0)
    gap = (best - q) if history.higher_is_better else (q - best)
    scale = best.abs().where(best.abs() > 0, 1.0)
    return gap / scale


def top_pick_loss(scores: np.ndarray, regret: np.ndarray) -> np.ndarray:
    """Per dataset (columns), the loss of taking the top-scored model among those with a result: the mean of
    *missed the best* (0 or 1: top-1) and the pick's ``regret`` (:func:`regret_matrix`). NaN for a dataset with
    fewer than 2 results."""
    out = np.full(regret.shape[1], np.nan)
    for j in range(regret.shape[1]):
        r = regret[:, j]
        ok = ~np.isnan(r)
        if ok.sum() < 2:
            continue
        s = np.where(ok & ~np.isnan(scores[:, j]), scores[:, j], -np.inf)
        picked = r[int(np.argmax(s))]
        out[j] = 0.5 * float(picked > 1e-12) + 0.5 * picked
    return out


def select_bandwidth(norm: pd.DataFrame, similarity: pd.DataFrame | None, grid=BANDWIDTH_GRID) -> float:
    """The history-weighted bandwidth with the best mean NDCG@5 over an inner leave-one-dataset-out."""
    if similarity is None or norm.shape[1] < 3:
        return grid[len(grid) // 2]
    datasets = list(norm.columns)
    s = leave_self_out(similarity, datasets, datasets)
    values = norm.to_numpy(dtype=float)
    best, best_score = grid[0], -np.inf
    for bw in grid:
        pred = np.nan_to_num(collaborative_scores(values, s, bw), nan=-1.0)
        scores = []
        for j in range(len(datasets)):
            ok = ~np.isnan(values[:, j])
            scores.append(ndcg_at_k(pred[ok, j], values[ok, j], 5))
        if np.mean(scores) > best_score + 1e-12:
            best, best_score = bw, float(np.mean(scores))
    return best


def similarity_to(history: History, dataset: str) -> pd.Series:
    """``dataset``'s similarity to every *other* dataset of the history with runs."""
    sim = history.dataset_similarity()
    if sim is None or dataset not in sim.index:
        raise ValueError(f"no similarity for dataset {dataset!r}: give a similarity matrix or emb_* features")
    return sim.loc[dataset, [d for d in history.datasets if d != dataset and d in sim.columns]]


def history_weighted_scores(norm: pd.DataFrame, similarity: pd.Series, bandwidth: float) -> pd.Series:
    """Similarity-weighted mean of normalised quality (missing runs are skipped, not counted as zero)."""
    cols = [d for d in similarity.index if d in norm.columns]
    s = similarity[cols].to_numpy(dtype=float)[None, :]
    scores = collaborative_scores(norm[cols].to_numpy(dtype=float), s, bandwidth)[:, 0]
    return pd.Series(np.where(np.isnan(scores), -1.0, scores), index=norm.index)
