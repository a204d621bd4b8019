"""Successive halving: the multi-fidelity baseline of model selection (Jamieson & Talwalkar, 2016; Li et al.'s
Hyperband builds on it).

Every candidate is fine-tuned briefly on the target; the better ``1/eta`` of them continue to the next, longer
budget; the survivors of the last rung — the full fine-tuning budget — are compared and the best is chosen. Unlike
a ranker it learns nothing from past datasets: it pays for (short) fine-tunes on the target itself.

It is judged on the same grid as the selectors, from measured tables rather than by training anew: ``rungs`` maps
each budget (fine-tuning steps, ``0`` = the pretrained model) to the label of every (model, dataset) run at that
budget, and ``seconds`` to what each of those runs cost (training + sampling + evaluation). Each rung's runs start
from the pretrained model (the rung tables come from independent runs), so a candidate's cost is the sum of its
rungs' costs. The last rung is the full budget: its table is the truth the choice is scored against.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .ranking import DEFAULT_KS, ranking_metrics


def halving_schedule(n_models: int, budgets: list[int], eta: float = 2) -> list[int]:
    """How many candidates each rung runs: all of them at the first budget, then ``ceil(n / eta)`` of the previous
    rung's at each next one (at least one)."""
    counts = [n_models]
    for _ in budgets[1:]:
        counts.append(max(1, math.ceil(counts[-1] / eta)))
    return counts


def successive_halving(rungs: dict[int, pd.Series], seconds: dict[int, pd.Series], higher_is_better: bool,
                       eta: float = 2) -> tuple[pd.Series, float, list[list[str]]]:
    """Run successive halving on one dataset.

    ``rungs[b]`` is the label of every model at budget ``b``, ``seconds[b]`` what each of those runs cost. Returns
    the scores of the implied ranking (larger = better: survivors of a later rung above those dropped earlier, ties
    within a rung broken by the label there), the cost in seconds (every run it used), and the candidates of each
    rung. A model without a result at a rung it reaches is dropped there."""
    budgets = sorted(rungs)
    if not budgets:
        raise ValueError("successive halving needs at least one rung")
    candidates = [m for m in rungs[budgets[0]].index if np.isfinite(rungs[budgets[0]][m])]
    counts = halving_schedule(len(candidates), budgets, eta)
    scores = pd.Series(-1.0, index=rungs[budgets[-1]].index.union(rungs[budgets[0]].index), dtype=float)
    cost, trace = 0.0, []
    for level, (budget, count) in enumerate(zip(budgets, counts)):
        q = rungs[budget].reindex(candidates)
        q = q[np.isfinite(q)]
        trace.append(list(q.index))
        cost += float(seconds[budget].reindex(q.index).fillna(0.0).sum())
        good = q if higher_is_better else -q
        span = float(good.max() - good.min()) if len(good) else 0.0
        within = (good - good.min()) / span if span > 0 else good * 0.0
        scores[q.index] = 2.0 * level + within.to_numpy()  # a later rung always outranks an earlier one
        order = good.sort_values(ascending=False, kind="stable")
        next_count = counts[level + 1] if level + 1 < len(counts) else len(order)
        candidates = list(order.index[:next_count])
    return scores, cost, trace


def halving_evaluation(rungs: dict[int, pd.DataFrame], seconds: dict[int, pd.DataFrame], higher_is_better: bool,
                       eta: float = 2, method: str | None = None, ks=DEFAULT_KS) -> pd.DataFrame:
    """Successive halving on every dataset of the last (full-budget) rung, scored against that rung's label:
    one row per dataset in :func:`~mc_bench.select.lodo.leave_one_dataset_out`'s layout (``method``, ``dataset``,
    ``n_models``, the ranking metrics, ``seconds`` = the compute it spent on the dataset), plus ``runs`` (how many
    fine-tunes it ran) and ``budgets``."""
    budgets = sorted(rungs)
    truth_table = rungs[budgets[-1]]
    name = method or f"successive halving ({'→'.join(str(b) for b in budgets)} steps, eta {eta:g})"
    rows = []
    for dataset in truth_table.columns:
        truth = truth_table[dataset].dropna()
        if len(truth) < 2 or any(dataset not in rungs[b].columns for b in budgets):
            continue
        per_rung = {b: rungs[b][dataset].reindex(truth.index) for b in budgets}
        per_cost = {b: seconds[b][dataset] if dataset in seconds[b].columns else pd.Series(dtype=float)
                    for b in budgets}
        scores, cost, trace = successive_halving(per_rung, per_cost, higher_is_better, eta)
        metrics = ranking_metrics(scores.reindex(truth.index).to_numpy(), truth.to_numpy(), higher_is_better, ks)
        rows.append({"method": name, "dataset": dataset, "n_models": len(truth), **metrics, "best_gap": np.nan,
                     "seconds": cost, "runs": sum(len(t) for t in trace),
                     "budgets": "→".join(f"{len(t)}@{b}" for t, b in zip(trace, budgets))})
    return pd.DataFrame(rows)


def ranked_halving_evaluation(scores: pd.DataFrame, selector_seconds: float, truth: pd.DataFrame,
                              seconds: pd.DataFrame, higher_is_better: bool, eta: float = 2, steps: int = 1,
                              method: str = "ranked halving", ks=DEFAULT_KS) -> pd.DataFrame:
    """Halving whose first rung is a selector's ranking instead of short fine-tunes: the selector's top
    ``ceil(n / eta)`` candidates are fine-tuned to the full budget and the best of them is kept — how a ranker is
    used when fine-tuning a few candidates is affordable (the paper's shortlist, read as a budget).

    ``scores`` is the selector's model × dataset table (larger = better, e.g. leave-one-dataset-out scores, so a
    dataset's own runs never informed them), ``selector_seconds`` what ranking one dataset cost; ``truth`` and
    ``seconds`` the full-budget label and run costs (``steps``: the full budget, for ``budgets``). Same layout as
    :func:`halving_evaluation`, with ``runs`` counting the fine-tunes only (rung 0 ranks, it runs nothing)."""
    oriented = scores if higher_is_better else -scores  # rung 0 in the label's direction
    per_model = pd.DataFrame(selector_seconds / len(scores.index), index=scores.index, columns=scores.columns)
    table = halving_evaluation({0: oriented, steps: truth}, {0: per_model, steps: seconds}, higher_is_better,
                               eta=eta, method=method, ks=ks)
    ranked = table["budgets"].str.split("@").str[0].astype(int)  # the candidates rung 0 ranked
    return table.assign(runs=table["runs"] - ranked)
