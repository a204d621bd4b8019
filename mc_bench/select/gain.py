"""The probe tier: quality after fine-tuning modelled as the quality before it plus a learned gain.

A probe (every pretrained candidate sampled on the new dataset and evaluated with the history's label) tells where a
model *starts*; fine-tuning moves it, by an amount that depends on the model and on the data. The history records
both ends for its datasets — the probe and the fine-tuned label — so the gain a model showed on datasets like the new
one is a natural estimate of the gain it will show there::

    predicted(m, t) = T(probe(m, t)) + sum_d w(t, d) * [T(label(m, d)) - T(probe(m, d))] / sum_d w(t, d)

with ``w`` the similarity weights of :func:`~mc_bench.select.collaborative.collaborative_scores` and ``T = log``
for a positive label (FID, accuracy: gains are ratios) or the identity otherwise. :class:`ProbeGain` ranks by it
alone; :class:`~mc_bench.select.mc.MatchAndChoose` with ``probe=True`` stacks it with its other learners.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from .base import Selector
from .collaborative import collaborative_scores, leave_self_out
from .history import History


def probe_matrix(history: History, targets: list[str]) -> np.ndarray:
    """models × targets: each target's probe min–max normalised over the models, direction-aware (1 = the best
    pretrained model); NaN for a target without a probe."""
    columns = []
    for t in targets:
        if history.probe is not None and t in history.probe.columns:
            columns.append(history.probe_normalised(t).to_numpy(dtype=float))
        else:
            columns.append(np.full(len(history.models), np.nan))
    return np.column_stack(columns) if columns else np.empty((len(history.models), 0))


def _normalise_columns(values: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Min–max normalise each column over its finite entries, 1 = best (NaN stays NaN)."""
    good = values if higher_is_better else -values
    with np.errstate(all="ignore"):
        lo, hi = np.nanmin(good, axis=0, keepdims=True), np.nanmax(good, axis=0, keepdims=True)
        span = np.where(hi > lo, hi - lo, np.nan)
        out = (good - lo) / span
    return np.where(np.isfinite(good) & ~np.isfinite(out), 1.0, out)


class GainModel(BaseEstimator):
    """Predicts the label after fine-tuning from the probe and the gains recorded in a history (see the module
    docstring). ``bandwidth``: of the similarity weights (0 = the nearest dataset's gain, ``inf`` = the model's mean
    gain); ``transform``: ``"auto"`` (log when every label and probe value is positive), ``"log"`` or
    ``"identity"``."""

    def __init__(self, bandwidth: float = 0.3, transform: str = "auto"):
        self.bandwidth = bandwidth
        self.transform = transform

    def fit(self, history: History) -> "GainModel":
        if history.probe is None:
            from ..errors import HistoryError

            raise HistoryError(f"{history.source}: probe", "the gain model needs a probe table",
                               "name a probe table in history.yaml (a study's <study>-pretrained companion)")
        if self.transform not in ("auto", "log", "identity"):
            raise ValueError(f"transform must be 'auto', 'log' or 'identity', not {self.transform!r}")
        label = history.label_matrix()
        probe = history.probe.reindex(index=label.index, columns=label.columns)
        values = np.concatenate([label.to_numpy(dtype=float).ravel(), history.probe.to_numpy(dtype=float).ravel()])
        positive = bool((values[np.isfinite(values)] > 0).all())  # missing runs and probes do not count
        self.log_ = self.transform == "log" or (self.transform == "auto" and positive)
        gain = self._t(label) - self._t(probe)
        self.gain_ = gain.loc[:, gain.notna().any(axis=0)]
        self.history_ = history
        return self

    def _t(self, values):
        return np.log(values) if self.log_ else values

    def predict_label(self, targets: list[str]) -> np.ndarray:
        """models × targets: the predicted label after fine-tuning in transformed units (``log`` of the label when
        :attr:`log_`); NaN where a target has no probe."""
        history = self.history_
        gains = self.gain_.to_numpy(dtype=float)
        datasets = list(self.gain_.columns)
        uniform = leave_self_out(pd.DataFrame(1.0, index=targets, columns=datasets), targets, datasets)
        mean_gain = np.nan_to_num(collaborative_scores(gains, uniform, np.inf), nan=0.0)
        sim = history.dataset_similarity()
        if sim is not None and datasets:
            weighted = collaborative_scores(gains, leave_self_out(sim, targets, datasets), self.bandwidth)
            gain = np.where(np.isnan(weighted), mean_gain, weighted)
        else:
            gain = mean_gain
        probe = history.probe.reindex(index=history.models, columns=targets) if history.probe is not None else None
        start = np.full(gain.shape, np.nan) if probe is None else self._t(probe.to_numpy(dtype=float))
        return start + gain

    def normalised_scores(self, targets: list[str]) -> np.ndarray:
        """models × targets: the predicted label min–max normalised per target, 1 = the best predicted model."""
        return _normalise_columns(self.predict_label(targets), self.history_.higher_is_better)


class ProbeGain(Selector):
    """Rank by the probe plus the fine-tuning gain learned from the history (:class:`GainModel`), alone: the
    simplest model of quality after fine-tuning that uses the probe."""

    def __init__(self, bandwidth: float = 0.3):
        self.bandwidth = bandwidth

    def fit(self, history: History) -> "ProbeGain":
        self.model_ = GainModel(bandwidth=self.bandwidth).fit(history)
        self.history_ = history
        return self

    def predict(self, dataset: str) -> pd.Series:
        self._check_fitted()
        self.history_.probe_normalised(dataset)  # a clear error when the dataset has no probe
        scores = self.model_.normalised_scores([dataset])[:, 0]
        return pd.Series(np.where(np.isnan(scores), -1.0, scores), index=self.history_.models)
