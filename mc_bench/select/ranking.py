"""Metrics of a predicted model ranking for one dataset, against the models' true quality.

For a dataset with models ``i`` of true quality ``q_i`` and predicted scores ``s_i`` (larger = recommended):

``hit@k``   top-k accuracy: 1 if a truly best model is among the k top-scored models (ties for best count).
``top@k``   TransferGraph's value: the best true quality among the k top-scored models (in the label's units).
``rel@k``   ``top@k`` relative to the best quality: ``top@k / best`` when higher is better, ``best / top@k`` when
            lower is better (e.g. FID); 1 means the best model is among the k chosen. Needs positive values.
``regret``  the relative quality gap of the single chosen model: ``(best - chosen) / |best|`` (higher is better)
            or ``(chosen - best) / |best|`` (lower is better); 0 is perfect.
``pearson``, ``spearman``, ``kendall``   correlation of scores and quality (quality negated when lower is better).
``ndcg@k``  normalised discounted cumulative gain with gains = quality min–max normalised within the dataset.

Ties in the scores are broken by model order. :func:`random_expectation` gives the exact expectation of every
metric under a uniformly random choice (not a draw): the random baseline.
"""

from __future__ import annotations

from math import comb

import numpy as np
import pandas as pd
from scipy import stats

DEFAULT_KS = (1, 3, 5)


def _goodness(quality: np.ndarray, higher_is_better: bool) -> np.ndarray:
    return quality if higher_is_better else -quality


def _gains(quality: np.ndarray, higher_is_better: bool) -> np.ndarray:
    g = _goodness(quality, higher_is_better)
    span = g.max() - g.min()
    return (g - g.min()) / span if span > 0 else np.ones_like(g)


def _relative(top: float, best: float, higher_is_better: bool) -> float:
    return top / best if higher_is_better else best / top


def _regret(chosen: np.ndarray | float, best: float, higher_is_better: bool):
    gap = (best - chosen) if higher_is_better else (chosen - best)
    return gap / abs(best) if best != 0 else gap


def _dcg(gains_in_order: np.ndarray, k: int) -> float:
    k = min(k, len(gains_in_order))
    return float(np.sum(gains_in_order[:k] / np.log2(np.arange(2, k + 2))))


def ndcg_at_k(scores, gains, k: int) -> float:
    """NDCG@k of ``scores`` for non-negative ``gains`` (ties in scores broken by order)."""
    gains = np.asarray(gains, dtype=float)
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    ideal = _dcg(np.sort(gains)[::-1], k)
    return _dcg(gains[order], k) / ideal if ideal > 0 else 1.0


def ranking_metrics(scores, quality, higher_is_better: bool = True, ks=DEFAULT_KS) -> dict[str, float]:
    """All metrics of one predicted ranking (see the module docstring)."""
    scores = np.asarray(scores, dtype=float)
    quality = np.asarray(quality, dtype=float)
    if scores.shape != quality.shape or scores.ndim != 1 or len(scores) < 2:
        raise ValueError("scores and quality must be 1-d arrays of the same length >= 2")
    order = np.argsort(-scores, kind="stable")
    good = _goodness(quality, higher_is_better)
    best_good = good.max()
    is_best = np.isclose(good, best_good, rtol=0, atol=1e-12)
    best = quality[is_best][0]
    gains = _gains(quality, higher_is_better)
    out: dict[str, float] = {}
    for k in ks:
        top_idx = order[: min(k, len(order))]
        top = quality[top_idx[np.argmax(good[top_idx])]]
        out[f"hit@{k}"] = float(is_best[top_idx].any())
        out[f"top@{k}"] = float(top)
        out[f"rel@{k}"] = float(_relative(top, best, higher_is_better))
        out[f"ndcg@{k}"] = ndcg_at_k(scores, gains, k)
    out["regret"] = float(_regret(quality[order[0]], best, higher_is_better))
    constant = np.ptp(scores) == 0 or np.ptp(good) == 0
    out["pearson"] = np.nan if constant else float(stats.pearsonr(scores, good)[0])
    out["spearman"] = np.nan if constant else float(stats.spearmanr(scores, good)[0])
    out["kendall"] = np.nan if constant else float(stats.kendalltau(scores, good)[0])
    return out


def random_expectation(quality, higher_is_better: bool = True, ks=DEFAULT_KS) -> dict[str, float]:
    """The exact expectation of :func:`ranking_metrics` when the models are ranked uniformly at random."""
    quality = np.asarray(quality, dtype=float)
    n = len(quality)
    good = _goodness(quality, higher_is_better)
    n_best = int(np.isclose(good, good.max(), rtol=0, atol=1e-12).sum())
    best = quality[np.argmax(good)]
    by_good = quality[np.argsort(good, kind="stable")]  # ascending goodness
    gains = _gains(quality, higher_is_better)
    out: dict[str, float] = {}
    for k in ks:
        kk = min(k, n)
        # P(the best of a random k-subset is the i-th worst model) = C(i-1, k-1) / C(n, k)
        p = np.array([comb(i - 1, kk - 1) for i in range(1, n + 1)], dtype=float) / comb(n, kk)
        out[f"hit@{k}"] = 1.0 - comb(n - n_best, kk) / comb(n, kk)
        out[f"top@{k}"] = float(p @ by_good)
        out[f"rel@{k}"] = float(p @ np.array([_relative(v, best, higher_is_better) for v in by_good]))
        ideal = _dcg(np.sort(gains)[::-1], kk)
        expected = float(gains.mean() * np.sum(1 / np.log2(np.arange(2, kk + 2))))
        out[f"ndcg@{k}"] = expected / ideal if ideal > 0 else 1.0
    out["regret"] = float(np.mean(_regret(quality, best, higher_is_better)))
    out["pearson"] = out["spearman"] = out["kendall"] = 0.0  # exchangeable random scores: zero by symmetry
    return out


def bootstrap_summary(per_dataset: pd.DataFrame, metrics: list[str], by: str = "method",
                      n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Mean of each metric per ``by`` group, with a percentile bootstrap confidence interval over datasets.

    Returns a tidy table: ``by``, ``metric``, ``mean``, ``ci_low``, ``ci_high``, ``n_datasets``."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, group in per_dataset.groupby(by, sort=False):
        for metric in metrics:
            values = group[metric].to_numpy(dtype=float)
            values = values[~np.isnan(values)]
            if len(values) == 0:
                rows.append({by: name, "metric": metric, "mean": np.nan, "ci_low": np.nan, "ci_high": np.nan,
                             "n_datasets": 0})
                continue
            boots = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
            lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
            rows.append({by: name, "metric": metric, "mean": float(values.mean()), "ci_low": float(lo),
                         "ci_high": float(hi), "n_datasets": len(values)})
    return pd.DataFrame(rows)
