"""The baselines M&C is judged against: what a practitioner would do without it.

* :class:`RandomChoice` — scored by its exact expectation, not a draw;
* :class:`GlobalBest` — the model that did best on average over the history;
* :class:`NearestDataset` — the ranking observed on the most similar dataset of the history;
* :class:`HistoryWeighted` — collaborative filtering with dataset similarity;
* :class:`Probe` — sample from every pretrained candidate on the new dataset and compare (costs a sampling and
  evaluation pass per candidate, learns nothing from the history).
"""

from __future__ import annotations

import pandas as pd

from .base import Selector
from .collaborative import history_weighted_scores, select_bandwidth, similarity_to
from .history import History


class RandomChoice(Selector):
    """Uniformly random choice. Its scores are all equal; :func:`~mc_bench.select.lodo.leave_one_dataset_out`
    reports the exact expectation of each metric (:func:`mc_bench.select.ranking.random_expectation`) rather than a
    draw."""

    exact_expectation = True

    def fit(self, history: History) -> "RandomChoice":
        self.history_ = history
        return self

    def predict(self, dataset: str) -> pd.Series:
        self._check_fitted()
        return pd.Series(0.0, index=self.history_.models)


class GlobalBest(Selector):
    """The model with the best mean normalised quality over the training datasets, for every dataset."""

    def fit(self, history: History) -> "GlobalBest":
        self.history_ = history
        self.scores_ = history.normalised().mean(axis=1).fillna(-1.0)
        return self

    def predict(self, dataset: str) -> pd.Series:
        self._check_fitted()
        return self.scores_.copy()


class NearestDataset(Selector):
    """The ranking observed on the most similar training dataset (ties and gaps broken by the global mean)."""

    def fit(self, history: History) -> "NearestDataset":
        self.history_ = history
        self.norm_ = history.normalised()
        return self

    def predict(self, dataset: str) -> pd.Series:
        self._check_fitted()
        nearest = similarity_to(self.history_, dataset).idxmax()
        tie_break = self.norm_.mean(axis=1).fillna(0) * 1e-6
        return self.norm_[nearest].fillna(-1.0) + tie_break


class HistoryWeighted(Selector):
    """Each model's normalised quality on the training datasets, averaged with weights that decay with dataset
    distance: ``w = exp((s - s_max) / (bandwidth * spread))`` for similarities ``s`` to the target — collaborative
    filtering with dataset similarity. A small bandwidth trusts the nearest datasets; a large one tends to
    global-best. ``bandwidth=None`` picks it from :data:`~mc_bench.select.collaborative.BANDWIDTH_GRID` by an inner
    leave-one-dataset-out on the training datasets (mean NDCG@5), so it is never tuned on the target."""

    def __init__(self, bandwidth: float | None = None):
        self.bandwidth = bandwidth

    def fit(self, history: History) -> "HistoryWeighted":
        self.history_ = history
        self.norm_ = history.normalised()
        self.bandwidth_ = self.bandwidth if self.bandwidth is not None else select_bandwidth(
            self.norm_, history.dataset_similarity())
        return self

    def predict(self, dataset: str) -> pd.Series:
        self._check_fitted()
        return history_weighted_scores(self.norm_, similarity_to(self.history_, dataset), self.bandwidth_)


class Probe(Selector):
    """Sample from every pretrained candidate and compare: models ranked by the label of their *pretrained* samples
    for the target's held-out captions (the history's ``probe`` table), the first thing a practitioner tries. It
    costs one sampling and evaluation pass per candidate and no fine-tuning; it learns nothing from the history
    (models without a probe on the target rank last)."""

    def fit(self, history: History) -> "Probe":
        self.history_ = history
        return self

    def predict(self, dataset: str) -> pd.Series:
        self._check_fitted()
        return self.history_.probe_normalised(dataset).fillna(-1.0)
