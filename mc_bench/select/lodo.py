"""Leave-one-dataset-out: how a selector is judged, and how two selectors are compared.

:func:`leave_one_dataset_out` holds out each dataset in turn: the fold's history has none of its runs, so none of them
can reach the graph, the features or the ranker; every method is fitted on the fold and ranks the held-out dataset's
candidates. Results do not depend on the process, the number of BLAS or OpenMP threads or ``n_jobs``: BLAS is limited
to one thread during a fold and the learners run single-threaded and seeded.

:func:`paired_comparison` compares every method with a reference (M&C) on the datasets both ranked: the mean paired
difference in top-1 and regret with a 95 % bootstrap interval over datasets, and win / loss counts. A difference
whose interval holds 0 is *not distinguishable* — with 32 datasets, one dataset is 3 points of top-1.
"""

from __future__ import annotations

import time
import zlib

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from scipy.stats import wilcoxon
from sklearn.base import clone

from .base import Selector
from .history import History
from .ranking import DEFAULT_KS, random_expectation, ranking_metrics


def _evaluate_fold(history: History, target: str, methods: dict[str, Selector], ks) -> tuple[list[dict], list[dict]]:
    from threadpoolctl import threadpool_limits

    truth = history.label_matrix()[target].dropna()
    if len(truth) < 2:  # one candidate's result (e.g. a model subset in a sweep): nothing to rank
        return [], []
    fold = history.without_runs(target)
    rows, score_rows = [], []
    for name, method in methods.items():
        start = time.perf_counter()
        if getattr(method, "exact_expectation", False):
            metrics = random_expectation(truth.to_numpy(), history.higher_is_better, ks)
            gap = np.nan
        else:
            with threadpool_limits(limits=1):  # BLAS sums in one order, whatever the machine's thread count
                scores = clone(method).fit(fold).predict(target).reindex(truth.index)
            metrics = ranking_metrics(scores.to_numpy(), truth.to_numpy(), history.higher_is_better, ks)
            good = truth.to_numpy() if history.higher_is_better else -truth.to_numpy()
            best = np.isclose(good, good.max(), rtol=0, atol=1e-12)
            gap = float(scores.max() - scores.to_numpy()[best].max())  # the conformal shortlist's score
            score_rows += [{"method": name, "dataset": target, "model": m, "score": float(v), "quality": float(q)}
                           for m, v, q in zip(truth.index, scores.to_numpy(), truth.to_numpy())]
        rows.append({"method": name, "dataset": target, "n_models": len(truth), **metrics, "best_gap": gap,
                     "seconds": time.perf_counter() - start})
    return rows, score_rows


def leave_one_dataset_out(history: History, methods: dict[str, Selector] | None = None,
                          targets: list[str] | None = None, ks=DEFAULT_KS, n_jobs: int = 1,
                          return_scores: bool = False):
    """Hold out each target dataset in turn; fit every method on the remaining runs; score its ranking.

    ``methods`` maps a name to a selector (default: :func:`mc_bench.select.methods.default_methods`). Returns one
    row per (method, dataset) with every metric of :mod:`mc_bench.select.ranking`, ``n_models``, ``best_gap`` (how far
    below the top score the truly best model was scored: 0 when it was picked; the nonconformity score of the
    conformal shortlist) and ``seconds`` (fit + predict time; the only column that differs between runs). With
    ``return_scores``, also the scores: one row per (method, dataset, model) with ``score`` and the true
    ``quality``."""
    if methods is None:
        from .methods import default_methods

        methods = default_methods()
    targets = targets if targets is not None else history.datasets
    unknown = [t for t in targets if t not in history.datasets]
    if unknown:
        raise ValueError(f"targets without runs in the history: {unknown}")
    folds = Parallel(n_jobs=n_jobs)(delayed(_evaluate_fold)(history, t, methods, ks) for t in targets)
    metrics = pd.DataFrame([row for rows, _ in folds for row in rows])
    if not return_scores:
        return metrics
    return metrics, pd.DataFrame([row for _, rows in folds for row in rows])


# ------------------------------------------------------------------------------------------------ paired comparison

PAIRED_METRICS = {"hit@1": ("top1", "higher"), "regret": ("regret", "lower")}


def paired_comparison(lodo: pd.DataFrame, reference: str = "M&C", n_boot: int = 2000, level: float = 0.95,
                      seed: int = 0) -> pd.DataFrame:
    """Every method of ``lodo`` against ``reference``, paired by dataset (the datasets both ranked).

    One row per method: ``n_paired``; for top-1 (``hit@1``) and ``regret``, the mean difference *method minus
    reference* (``top1_diff``: positive = the method finds the best model more often; ``regret_diff``: negative =
    the method loses less) with a percentile bootstrap interval over datasets (``*_ci_low``, ``*_ci_high``; the same
    resampled datasets for both metrics, drawn by a generator seeded by ``seed`` and the method's name);
    ``wins`` / ``losses`` / ``ties`` — datasets where the method's pick has a lower / higher / equal regret than the
    reference's — and ``wilcoxon_p``, the two-sided Wilcoxon signed-rank test of the regret differences of the
    datasets where the picks differ; and ``verdict`` — ``better`` or ``worse`` when the top-1 or the regret interval
    excludes 0 (the other not pointing the other way), the wins (losses) outnumber the losses (wins) and the signed-rank
    test agrees at the same level (on mostly tied pairs the percentile bootstrap alone is optimistic: 4 wins and no
    loss in 32 datasets exclude 0 from its interval, the signed-rank test gives p = 0.125), else ``not
    distinguishable``."""
    table = lodo.pivot_table(index="dataset", columns="method", values=list(PAIRED_METRICS), sort=False)
    if reference not in table["regret"].columns:
        return pd.DataFrame()
    rows = []
    for method in [m for m in lodo["method"].drop_duplicates() if m != reference]:
        rng = np.random.default_rng([seed, zlib.crc32(method.encode())])  # a method's interval is its own
        pair = pd.DataFrame({(metric, who): table[metric][name] for metric in PAIRED_METRICS
                             for who, name in (("m", method), ("r", reference))}).dropna()
        n = len(pair)
        if n == 0:
            continue
        row = {"method": method, "reference": reference, "n_paired": n}
        draws = rng.integers(0, n, size=(n_boot, n))
        signs = {}
        for metric, (name, _) in PAIRED_METRICS.items():
            diff = (pair[(metric, "m")] - pair[(metric, "r")]).to_numpy(dtype=float)
            boots = diff[draws].mean(axis=1)
            lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
            row.update({f"{name}_diff": float(diff.mean()), f"{name}_diff_ci_low": float(lo),
                        f"{name}_diff_ci_high": float(hi)})
            signs[name] = 1 if lo > 1e-12 else (-1 if hi < -1e-12 else 0)
        regret = (pair[("regret", "m")] - pair[("regret", "r")]).to_numpy(dtype=float)
        wins, losses = int((regret < -1e-12).sum()), int((regret > 1e-12).sum())
        differing = regret[np.abs(regret) > 1e-12]
        test_p = float(wilcoxon(differing).pvalue) if len(differing) else 1.0
        row.update({"wins": wins, "losses": losses, "ties": n - wins - losses, "wilcoxon_p": test_p})
        better = (signs["top1"] > 0 or signs["regret"] < 0) and wins > losses
        worse = (signs["top1"] < 0 or signs["regret"] > 0) and losses > wins
        significant = test_p < 1 - level  # the percentile bootstrap alone is optimistic on mostly-tied pairs
        row["verdict"] = ("better" if better and not worse and significant else
                          "worse" if worse and not better and significant else "not distinguishable")
        rows.append(row)
    return pd.DataFrame(rows)
