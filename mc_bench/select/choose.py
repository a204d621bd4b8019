"""Choose: rank candidate models for a dataset, and judge rankers leave-one-dataset-out.

Every selector follows the scikit-learn estimator API: ``fit(history)`` learns from a
:class:`~mc_bench.select.history.History` and returns ``self``; ``predict(dataset)`` returns one score per model
(larger = recommended). Fitted attributes end in ``_``; ``__init__`` only stores parameters.

* :class:`MatchAndChoose` — the paper's method: a LightGBM ranker over features of the model, of the dataset, and
  of the pair read off the matching graph — collaborative scores from the other datasets' runs (stacking) and,
  optionally, the pair's affinity in a graph embedding. Boosting starts from a collaborative prior, and both the
  prior's bandwidth and the number of boosting rounds are chosen inside ``fit`` by cross-validation over the
  *training* datasets (0 rounds = the prior alone), so a fold never sees its target and the ranker only departs
  from the prior where that helped on held-out data.
* Baselines: :class:`RandomChoice` (scored by its exact expectation), :class:`GlobalBest`,
  :class:`NearestDataset`, :class:`HistoryWeighted`; "metadata-only" is ``MatchAndChoose(collaborative=False,
  prior="none")``: the same ranker on model and dataset features alone.

:func:`leave_one_dataset_out` holds out each dataset in turn: the fold's history has none of its runs, so none
of them can reach the graph, the features or the ranker. Results do not depend on the process, the number of BLAS
or OpenMP threads or ``n_jobs``: LightGBM runs single-threaded in deterministic mode, BLAS is limited to one
thread during a fold, and learned features are rounded to ``FEATURE_DECIMALS`` decimals so that last-bit
differences between machines cannot move a tree split.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, clone

from .graph import Node2Vec, SpectralGraphEmbedding, dataset_node, matching_sparse_graph, model_node
from .history import History
from .ranking import DEFAULT_KS, ndcg_at_k, random_expectation, ranking_metrics

FEATURE_DECIMALS = 9
BANDWIDTH_GRID = (0.03, 0.1, 0.3, 1.0, 3.0, 100.0)
# 0: the nearest dataset alone; np.inf: every dataset weighs the same (global-best)
PRIOR_BANDWIDTHS = (0.0, 0.03, 0.1, 0.3, 1.0, 3.0, np.inf)
NEAREST_BANDWIDTH = 1e-6  # what bandwidth 0 means in practice: the nearest dataset outweighs the next by e^1e6
ROUND_CHECKPOINTS = (0, 5, 10, 25, 50, 100, 150)
# M&C + probe: the prior's weight on the probe (0: the collaborative prior alone, 1: the probe alone), simplest first
PROBE_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


class _Selector(BaseEstimator):
    """Common helpers of every selector. ``uses_profile`` and ``uses_probe`` say what a new dataset must be given
    before the selector can rank for it — a profile (features, similarity) and/or the probe (every candidate's
    pretrained samples evaluated on it) — and so what choosing costs (``mc_bench.study.tables.selection_costs``)."""

    uses_profile = True
    uses_probe = False

    def _check_fitted(self):
        if not hasattr(self, "history_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(history) first")

    def rank(self, dataset: str) -> pd.DataFrame:
        """Models sorted by predicted score for ``dataset``: columns ``model``, ``score``, ``rank``."""
        scores = self.predict(dataset)
        order = np.argsort(-scores.to_numpy(), kind="stable")
        out = pd.DataFrame({"model": scores.index[order], "score": scores.to_numpy()[order]})
        out["rank"] = np.arange(1, len(out) + 1)
        return out


# ------------------------------------------------------------------------------------------ collaborative scores


def collaborative_scores(norm: np.ndarray, similarity: np.ndarray, bandwidth: float) -> np.ndarray:
    """Similarity-weighted means of normalised quality, for many targets at once.

    ``norm`` is models × datasets (NaN where a pair was not run, skipped rather than counted as zero);
    ``similarity`` is targets × datasets, NaN where a dataset must not be used for that target (its own runs).
    Weights are ``exp((s - s_max) / (bandwidth * spread))`` over the usable datasets of each target;
    ``bandwidth=inf`` weighs every dataset the same (the global mean). Returns models × targets (NaN where no
    usable dataset has a run of the model)."""
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


def _leave_self_out(similarity: pd.DataFrame, targets: list[str], datasets: list[str]) -> np.ndarray:
    """targets × datasets similarity with each target's own column (its own runs) blanked."""
    s = similarity.reindex(index=targets, columns=datasets).to_numpy(dtype=float).copy()
    position = {d: j for j, d in enumerate(datasets)}
    for i, t in enumerate(targets):
        if t in position:
            s[i, position[t]] = np.nan
    return s


def regret_matrix(history: History, criterion: str = "relative") -> pd.DataFrame:
    """What picking each model loses on each dataset (models × datasets, 0 for the best, NaN where not run):
    ``relative`` — the report's regret, ``(best - chosen) / |best|`` (or ``(chosen - best) / |best|`` when lower is
    better); ``normalised`` — ``1 - `` the min–max normalised quality, 1 for the worst model."""
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
    *missed the best* (0 or 1: top-1) and the pick's ``regret`` (:func:`regret_matrix`). The criterion of every
    inner choice in :class:`MatchAndChoose`, which is judged on top-1 and regret. NaN for a dataset with fewer than
    2 results."""
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


def prior_scores(norm: np.ndarray, similarity: np.ndarray, bandwidth: float,
                 overall: np.ndarray | None = None) -> np.ndarray:
    """The collaborative prior: :func:`collaborative_scores` at ``bandwidth`` (0 = the nearest dataset), gaps filled
    by the global mean (``overall``, computed when not given), ties broken by it (models × targets)."""
    weighted = collaborative_scores(norm, similarity, NEAREST_BANDWIDTH if bandwidth == 0 else bandwidth)
    if overall is None:
        overall = collaborative_scores(norm, np.where(np.isnan(similarity), np.nan, 1.0), np.inf)
    return _with_fallback(weighted, overall)


def _with_fallback(weighted: np.ndarray, overall: np.ndarray) -> np.ndarray:
    """Similarity-weighted scores, gaps filled by the global mean, ties broken by it."""
    overall = np.nan_to_num(overall, nan=0.0)
    return np.where(np.isnan(weighted), overall, weighted) + 1e-6 * overall


def choose_bandwidth(norm: pd.DataFrame, similarity: pd.DataFrame | None, regret: pd.DataFrame | None = None,
                     grid=PRIOR_BANDWIDTHS, rule: str = "one-se") -> float:
    """The collaborative prior's bandwidth with the lowest mean :func:`top_pick_loss` (on ``regret``, default
    ``1 - norm``) over an inner leave-one-dataset-out on the training datasets, by :func:`pick_simplest`'s ``rule``
    with the widest bandwidth as the simplest. The grid spans nearest-dataset (0) to global-best (``inf``), so the
    prior is whichever of these the history supports."""
    if similarity is None or norm.shape[1] < 3:
        return np.inf
    datasets = list(norm.columns)
    s = _leave_self_out(similarity, datasets, datasets)
    values = norm.to_numpy(dtype=float)
    losses = (1.0 - values) if regret is None else regret.reindex(index=norm.index, columns=datasets).to_numpy(float)
    overall = collaborative_scores(values, np.where(np.isnan(s), np.nan, 1.0), np.inf)
    # widest first: the simplest prior (global-best) wins ties and, with the one-standard-error rule, near-ties
    candidates = sorted(grid, reverse=True)
    per_dataset = [top_pick_loss(prior_scores(values, s, bw, overall), losses) for bw in candidates]
    return candidates[pick_simplest(per_dataset, rule)]


def pick_simplest(per_dataset: list[np.ndarray], rule: str = "one-se") -> int:
    """Index of the chosen candidate, candidates ordered from simplest to most complex, from their per-dataset
    losses: ``min`` — the lowest mean loss (ties: the simpler); ``one-se`` — the simplest whose mean loss is within
    one standard error of the lowest (Breiman et al.'s rule: a more complex choice must beat the simpler one by more
    than the noise of its estimate)."""
    means = np.array([np.nanmean(v) if np.isfinite(v).any() else np.inf for v in per_dataset])
    best = int(np.argmin(np.round(means, 12)))
    if rule == "min":
        return best
    if rule != "one-se":
        raise ValueError(f"rule must be 'min' or 'one-se', not {rule!r}")
    v = per_dataset[best][np.isfinite(per_dataset[best])]
    se = float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
    return int(np.flatnonzero(means <= means[best] + se + 1e-12)[0])


# ------------------------------------------------------------------------------------------------ baselines


class RandomChoice(_Selector):
    """Uniformly random choice. Its scores are all equal; :func:`leave_one_dataset_out` reports the exact
    expectation of each metric (:func:`mc_bench.select.ranking.random_expectation`) rather than a draw."""

    exact_expectation = True
    uses_profile = False

    def fit(self, history: History) -> "RandomChoice":
        self.history_ = history
        return self

    def predict(self, dataset: str) -> pd.Series:
        self._check_fitted()
        return pd.Series(0.0, index=self.history_.models)


class GlobalBest(_Selector):
    """The model with the best mean normalised quality over the training datasets, for every dataset."""

    uses_profile = False

    def fit(self, history: History) -> "GlobalBest":
        self.history_ = history
        self.scores_ = history.normalised().mean(axis=1).fillna(-1.0)
        return self

    def predict(self, dataset: str) -> pd.Series:
        self._check_fitted()
        return self.scores_.copy()


def _similarity_to(history: History, dataset: str) -> pd.Series:
    sim = history.dataset_similarity()
    if sim is None or dataset not in sim.index:
        raise ValueError(f"no similarity for dataset {dataset!r}: give a similarity matrix or emb_* features")
    return sim.loc[dataset, [d for d in history.datasets if d != dataset and d in sim.columns]]


class NearestDataset(_Selector):
    """The ranking observed on the most similar training dataset (ties and gaps broken by the global mean)."""

    def fit(self, history: History) -> "NearestDataset":
        self.history_ = history
        self.norm_ = history.normalised()
        return self

    def predict(self, dataset: str) -> pd.Series:
        self._check_fitted()
        nearest = _similarity_to(self.history_, dataset).idxmax()
        tie_break = self.norm_.mean(axis=1).fillna(0) * 1e-6
        return self.norm_[nearest].fillna(-1.0) + tie_break


class Probe(_Selector):
    """Sample from every pretrained candidate and compare: models ranked by the label of their *pretrained* samples
    for the target's held-out captions (the history's ``probe`` table), the first thing a practitioner tries. It
    costs one sampling and evaluation pass per candidate and no fine-tuning; it learns nothing from the history
    (models without a probe on the target rank last)."""

    uses_profile = False
    uses_probe = True

    def fit(self, history: History) -> "Probe":
        self.history_ = history
        return self

    def predict(self, dataset: str) -> pd.Series:
        self._check_fitted()
        return self.history_.probe_normalised(dataset).fillna(-1.0)


class HistoryWeighted(_Selector):
    """Each model's normalised quality on the training datasets, averaged with weights that decay with dataset
    distance: ``w = exp((s - s_max) / (bandwidth * spread))`` for similarities ``s`` to the target — collaborative
    filtering with dataset similarity. A small bandwidth trusts the nearest datasets; a large one tends to
    global-best. ``bandwidth=None`` picks it from :data:`BANDWIDTH_GRID` by an inner leave-one-dataset-out on the
    training datasets (mean NDCG@5), so it is never tuned on the target."""

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
        return history_weighted_scores(self.norm_, _similarity_to(self.history_, dataset), self.bandwidth_)


def select_bandwidth(norm: pd.DataFrame, similarity: pd.DataFrame | None, grid=BANDWIDTH_GRID) -> float:
    """The history-weighted bandwidth with the best mean NDCG@5 over an inner leave-one-dataset-out."""
    if similarity is None or norm.shape[1] < 3:
        return grid[len(grid) // 2]
    datasets = list(norm.columns)
    s = _leave_self_out(similarity, datasets, datasets)
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


def history_weighted_scores(norm: pd.DataFrame, similarity: pd.Series, bandwidth: float) -> pd.Series:
    """Similarity-weighted mean of normalised quality (missing runs are skipped, not counted as zero)."""
    cols = [d for d in similarity.index if d in norm.columns]
    s = similarity[cols].to_numpy(dtype=float)[None, :]
    scores = collaborative_scores(norm[cols].to_numpy(dtype=float), s, bandwidth)[:, 0]
    return pd.Series(np.where(np.isnan(scores), -1.0, scores), index=norm.index)


# ------------------------------------------------------------------------------------------------ M&C


class MatchAndChoose(_Selector):
    """Match & Choose: a LightGBM ranker over model features, dataset features and collaborative scores read off the
    matching graph (optionally a graph-embedding affinity), boosted from a collaborative prior.

    For every (model, dataset) pair the ranker sees:

    * the model's features (``m_*``) and the dataset's (``d_*``);
    * ``affinity`` (with an ``embedding``) — the cosine of the model's and the dataset's nodes in a graph embedding
      of the matching graph (the paper's graph embeddings; ``embedding_coordinates`` adds the raw coordinates);
    * collaborative scores from the *other* datasets' runs (``collaborative``): the model's mean normalised quality
      (``global_mean``), its similarity-weighted mean (``weighted_mean``, the prior's bandwidth), the quality on the
      most similar dataset (``nearest``), and the similarity of the dataset to the model's pretraining data
      (``pretrain_similarity``). A training dataset's scores are computed without its own runs, exactly as they
      will be for a new dataset.

    The score is ``prior + boosting``: the prior is the similarity-weighted mean (``prior="auto"``: bandwidth
    chosen by inner leave-one-dataset-out, ``inf`` = global-best), ``"global"``, or ``"none"``; LightGBM
    regresses the remaining normalised quality. ``n_estimators="auto"`` picks the number of rounds among
    :data:`ROUND_CHECKPOINTS` by ``inner_folds``-fold cross-validation over the training datasets (graph, embedding
    and collaborative scores rebuilt without each inner fold), minimising the mean top-pick loss
    (:func:`top_pick_loss`); 0 rounds keeps the prior. Inner choices use the training datasets only.

    Parameters
    ----------
    embedding : None, SpectralGraphEmbedding or Node2Vec
        A graph embedding of the matching graph (cloned and fitted in ``fit``) whose model–dataset cosine becomes the
        ``affinity`` feature. ``None`` by default: on the validation histories the learned embeddings did not add to
        the collaborative scores — which already read the matching graph one and two hops out (a dataset's
        similarity edges, its neighbours' performance edges, a model's pretraining edges) — so the default is the
        simpler ranker (ablations keep both embeddings). Laplacian eigenmaps are deterministic to the last digit
        that matters on any machine; node2vec's float32 skip-gram is not.
    collaborative : bool
        Add the collaborative scores as features (stacking).
    prior : "auto", "global", "none" or a float bandwidth
    n_estimators : "auto" or int
    objective : "regression" (on normalised quality) or "lambdarank" (integer grades, gains ``2**g - 1``)
    inner_folds : int
        Folds of the inner cross-validation (at most the number of training datasets).
    edge_threshold, data_knn : matching-graph construction (see :func:`mc_bench.select.graph.build_matching_graph`).
    max_rows : int
        The booster learns from at most this many (model, training dataset) pairs: with more, every training dataset
        contributes the same number of its models, drawn at random (``random_state``) anew for each dataset; the
        inner cross-validation runs on a random subset of the models sized for a quarter as many pairs. Learning and
        choosing then cost about the same for 1,000 candidates as for 100, and every candidate is still scored.
        Histories of up to ``max_rows / 4`` pairs (TransferGraph's, the world's) are not subsampled.
    criterion : "relative" or "normalised"
        What the inner choices count as the loss of a pick (:func:`regret_matrix`): the report's relative regret, or
        one minus min–max normalised quality; either way averaged with missing the best model (top-1).
    rule : "one-se" or "min"
        How an inner choice is made from its cross-validated losses (:func:`pick_simplest`): the simplest candidate
        within one standard error of the best (the widest bandwidth, the fewest rounds), or the lowest mean loss.
    probe : bool
        M&C + probe: the history's ``probe`` (the label of each pretrained model's samples on the dataset, min–max
        normalised within it) becomes a feature, and the prior becomes ``w * probe + (1 - w) * collaborative prior``
        with ``w`` chosen from :data:`PROBE_WEIGHTS` by inner leave-one-dataset-out (``w = 0``, M&C's own prior, is
        the simplest: the probe must earn its weight on the training datasets). Needs a probe for every dataset, the
        new one included.
    learning_rate, num_leaves, min_child_samples, colsample_bytree, n_grades, random_state : LightGBM's.

    The defaults were chosen on validation histories only (``mc_bench.select.validation``: the TransferGraph datasets
    outside its published table, the world's validation datasets, synthetic histories with seeds ≥ 100), never
    on the datasets that are reported.
    """

    def __init__(self, embedding=None, collaborative: bool = True,
                 prior: Literal["auto", "global", "none"] | float = "auto",
                 n_estimators: Literal["auto"] | int = "auto", objective: Literal["regression", "lambdarank"] = "regression",
                 inner_folds: int = 5, learning_rate: float = 0.1, num_leaves: int = 7, min_child_samples: int = 20,
                 colsample_bytree: float = 1.0, embedding_coordinates: bool = False, edge_threshold: float = 0.5,
                 data_knn: int = 5, n_grades: int = 8, max_rows: int = 20000,
                 criterion: Literal["relative", "normalised"] = "relative", rule: Literal["one-se", "min"] = "one-se",
                 probe: bool = False, random_state: int = 0):
        self.embedding = embedding
        self.collaborative = collaborative
        self.prior = prior
        self.n_estimators = n_estimators
        self.objective = objective
        self.inner_folds = inner_folds
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.colsample_bytree = colsample_bytree
        self.embedding_coordinates = embedding_coordinates
        self.edge_threshold = edge_threshold
        self.data_knn = data_knn
        self.n_grades = n_grades
        self.max_rows = max_rows
        self.criterion = criterion
        self.rule = rule
        self.probe = probe
        self.random_state = random_state

    @property
    def uses_probe(self) -> bool:
        return bool(self.probe)

    # -- features --------------------------------------------------------------------------------------

    def _embed(self, history: History) -> pd.DataFrame | None:
        if self.embedding is None:
            return None
        graph = matching_sparse_graph(history, self.edge_threshold, self.data_knn)
        return clone(self.embedding).fit(graph).embeddings_

    def _design(self, history: History, norm: pd.DataFrame, embeddings: pd.DataFrame | None,
                targets: list[str]) -> pd.DataFrame:
        """Feature rows for every (model, target) pair, target-major. Collaborative scores use ``norm``'s datasets
        other than the target."""
        models = history.models
        n_m, n_t = len(models), len(targets)
        blocks = [history.model_features.reindex(models).add_prefix("m_").iloc[np.tile(np.arange(n_m), n_t)]
                  .reset_index(drop=True)]
        df = history.dataset_features.reindex(targets).add_prefix("d_")
        blocks.append(df.iloc[np.repeat(np.arange(n_t), n_m)].reset_index(drop=True))
        learned = {}
        if embeddings is not None:
            me = embeddings.reindex([model_node(m) for m in models]).to_numpy()
            de = embeddings.reindex([dataset_node(d) for d in targets]).to_numpy()
            me_t, de_r = np.tile(me, (n_t, 1)), np.repeat(de, n_m, axis=0)
            if self.embedding_coordinates:
                learned.update({f"me_{c}": me_t[:, i] for i, c in enumerate(embeddings.columns)})
                learned.update({f"de_{c}": de_r[:, i] for i, c in enumerate(embeddings.columns)})
            norms = np.maximum(np.linalg.norm(me_t, axis=1) * np.linalg.norm(de_r, axis=1), 1e-12)
            learned["affinity"] = (me_t * de_r).sum(1) / norms
        sim = history.dataset_similarity()
        values = norm.reindex(models).to_numpy(dtype=float)
        uniform = _leave_self_out(pd.DataFrame(1.0, index=targets, columns=norm.columns), targets, list(norm.columns))
        overall = collaborative_scores(values, uniform, np.inf)
        if sim is not None:
            s = _leave_self_out(sim, targets, list(norm.columns))
            weighted = collaborative_scores(values, s, NEAREST_BANDWIDTH if self.bandwidth_ == 0 else self.bandwidth_)
            nearest = weighted if self.bandwidth_ == 0 else collaborative_scores(values, s, NEAREST_BANDWIDTH)
            prior = _with_fallback(weighted, overall)
        else:
            weighted = nearest = np.full((n_m, n_t), np.nan)
            prior = np.nan_to_num(overall, nan=0.0)
        collab = {"global_mean": overall.T.reshape(-1), "weighted_mean": weighted.T.reshape(-1),
                  "nearest": nearest.T.reshape(-1), "pretrain_similarity": self._pretrain_similarity(history, models,
                                                                                                   targets)}
        if self.collaborative:
            learned.update(collab)
        if self.probe:
            probe = self._probe_values(history, targets)
            learned["probe"] = probe.T.reshape(-1)
            prior = self.probe_weight_ * np.nan_to_num(probe, nan=0.0) + (1 - self.probe_weight_) * prior
        x = pd.concat(blocks + [pd.DataFrame({k: np.round(v, FEATURE_DECIMALS) for k, v in learned.items()})], axis=1)
        if self.prior == "none":
            prior = np.zeros((n_m, n_t))
        elif self.prior == "global":
            prior = np.nan_to_num(overall, nan=0.0)
        x.attrs["prior"] = np.round(prior.T.reshape(-1), FEATURE_DECIMALS)
        return x

    @staticmethod
    def _probe_values(history: History, targets: list[str]) -> np.ndarray:
        """models × targets: each target's probe, min–max normalised over the models (1 = best pretrained)."""
        return np.column_stack([history.probe_normalised(t).to_numpy(dtype=float) for t in targets])

    def _choose_probe_weight(self, history: History, norm: pd.DataFrame, regret: pd.DataFrame) -> float:
        """The prior's weight on the probe with the lowest top-pick loss over an inner leave-one-dataset-out."""
        datasets = list(norm.columns)
        values = norm.to_numpy(dtype=float)
        sim = history.dataset_similarity()
        uniform = _leave_self_out(pd.DataFrame(1.0, index=datasets, columns=datasets), datasets, datasets)
        overall = collaborative_scores(values, uniform, np.inf)
        if sim is not None:
            collab = prior_scores(values, _leave_self_out(sim, datasets, datasets), self.bandwidth_, overall)
        else:
            collab = np.nan_to_num(overall, nan=0.0)
        probe = np.nan_to_num(self._probe_values(history, datasets), nan=0.0)
        losses = regret.reindex(index=norm.index, columns=datasets).to_numpy(dtype=float)
        per_weight = [top_pick_loss(w * probe + (1 - w) * collab, losses) for w in PROBE_WEIGHTS]
        return PROBE_WEIGHTS[pick_simplest(per_weight, self.rule)]

    @staticmethod
    def _pretrain_similarity(history: History, models: list[str], targets: list[str]) -> np.ndarray:
        """Similarity of each target to the closest of each model's pretraining datasets (NaN when unknown)."""
        sim = history.dataset_similarity()
        out = np.full((len(targets), len(models)), np.nan)
        if sim is None or not history.pretrain:
            return out.reshape(-1)
        columns = list(sim.columns)
        position = {d: k for k, d in enumerate(columns)}
        linked = np.zeros((len(models), len(columns)), bool)
        for j, m in enumerate(models):
            for p in history.pretrain.get(m, ()):
                if p in position:
                    linked[j, position[p]] = True
        known = [i for i, t in enumerate(targets) if t in sim.index]
        if known:
            s = sim.loc[[targets[i] for i in known]].to_numpy(dtype=float)
            best = np.where(linked[None, :, :], s[:, None, :], -np.inf).max(axis=2)
            out[known] = np.where(np.isinf(best), np.nan, best)
        return out.reshape(-1)

    # -- the booster -----------------------------------------------------------------------------------

    def _train(self, x: pd.DataFrame, y: np.ndarray, rounds: int):
        import lightgbm as lgb

        params = dict(learning_rate=self.learning_rate, num_leaves=self.num_leaves,
                      min_data_in_leaf=self.min_child_samples, feature_fraction=self.colsample_bytree,
                      seed=self.random_state, num_threads=1, deterministic=True, force_row_wise=True, verbose=-1,
                      feature_pre_filter=False, max_bin=63)
        features = x[self.feature_names_]
        if self.objective == "lambdarank":
            grades = np.rint(np.clip(y, 0, 1) * (self.n_grades - 1)).astype(int)
            groups = x.groupby("_target", sort=False).size().to_numpy()
            params.update(objective="lambdarank", label_gain=[2**g - 1 for g in range(self.n_grades)])
            data = lgb.Dataset(features, grades, group=groups, init_score=x.attrs["prior"], free_raw_data=False)
        elif self.objective == "regression":
            params.update(objective="regression")
            data = lgb.Dataset(features, y, init_score=x.attrs["prior"], free_raw_data=False)
        else:
            raise ValueError(f"objective must be 'lambdarank' or 'regression', not {self.objective!r}")
        return lgb.train(params, data, num_boost_round=rounds)

    def _training_rows(self, history: History, norm: pd.DataFrame, embeddings) -> tuple[pd.DataFrame, np.ndarray]:
        datasets = list(norm.columns)
        n_m = len(history.models)
        x = self._design(history, norm, embeddings, datasets)
        x["_target"] = np.repeat(np.arange(len(datasets)), n_m)  # the lambdarank groups
        y = norm.reindex(history.models).to_numpy(dtype=float).T.reshape(-1)
        keep = ~np.isnan(y)
        per_dataset = max(1, self.max_rows // max(1, len(datasets)))
        if n_m > per_dataset:  # the same number of random models from every training dataset
            rng = np.random.default_rng(self.random_state)
            sampled = np.zeros(len(y), bool)
            for j in range(len(datasets)):
                sampled[j * n_m + rng.choice(n_m, per_dataset, replace=False)] = True
            keep &= sampled
        prior = x.attrs["prior"][keep]
        x = x.loc[keep].reset_index(drop=True)
        x.attrs["prior"] = prior
        return x, y[keep]

    def _inner_folds(self, datasets: list[str]) -> list[list[str]]:
        k = max(2, min(self.inner_folds, len(datasets)))
        order = np.random.default_rng(self.random_state).permutation(len(datasets))
        return [sorted(datasets[i] for i in order[f::k]) for f in range(k)]

    def _choose_rounds(self, history: History, norm: pd.DataFrame) -> tuple[int, dict[int, float]]:
        regret = regret_matrix(history, self.criterion)
        checkpoints = sorted(ROUND_CHECKPOINTS)
        losses: dict[int, list[float]] = {c: [] for c in checkpoints}
        for held in self._inner_folds(list(norm.columns)):
            inner = history.without_runs(held)
            inner_norm = norm.drop(columns=held)
            embeddings = self._embed(inner)
            x, y = self._training_rows(inner, inner_norm, embeddings)
            booster = self._train(x, y, checkpoints[-1]) if checkpoints[-1] > 0 else None
            xt = self._design(inner, inner_norm, embeddings, held)
            truth = regret.reindex(history.models)[held].to_numpy(dtype=float)
            raw, done = xt.attrs["prior"].copy(), 0
            for c in checkpoints:  # each checkpoint adds the trees after the previous one: one pass in all
                if c > done:
                    raw = raw + booster.predict(xt[self.feature_names_], start_iteration=done, num_iteration=c - done)
                    done = c
                scores = raw.reshape(len(held), len(history.models)).T
                losses[c].extend(v for v in top_pick_loss(scores, truth) if not np.isnan(v))
        mean = {c: float(np.mean(v)) if v else np.inf for c, v in losses.items()}
        best = checkpoints[pick_simplest([np.asarray(losses[c], dtype=float) for c in checkpoints], self.rule)]
        return best, mean

    # -- estimator API ---------------------------------------------------------------------------------

    def fit(self, history: History) -> "MatchAndChoose":
        self.history_ = history
        self.norm_ = history.normalised()
        sim = history.dataset_similarity()
        regret = regret_matrix(history, self.criterion)
        if self.prior == "auto":
            self.bandwidth_ = choose_bandwidth(self.norm_, sim, regret, rule=self.rule)
        elif self.prior in ("global", "none"):
            self.bandwidth_ = choose_bandwidth(self.norm_, sim, regret, rule=self.rule) if self.collaborative else np.inf
        else:
            self.bandwidth_ = float(self.prior)
        self.probe_weight_ = self._choose_probe_weight(history, self.norm_, regret) if self.probe else 0.0
        self.embeddings_ = self._embed(history)
        x, y = self._training_rows(history, self.norm_, self.embeddings_)
        self.feature_names_ = [c for c in x.columns if c != "_target"]
        if self.n_estimators == "auto":
            inner = history
            n_inner = max(2, (self.max_rows // 4) // max(1, len(history.datasets)))
            if len(history.models) > n_inner:  # the inner choice on a random subset of the candidates
                rng = np.random.default_rng(self.random_state)
                inner = history.subset(models=sorted(rng.choice(history.models, n_inner, replace=False)))
            self.n_estimators_, self.cv_loss_ = self._choose_rounds(inner, inner.normalised())
        else:
            self.n_estimators_, self.cv_loss_ = int(self.n_estimators), {}
        self.model_ = self._train(x, y, self.n_estimators_) if self.n_estimators_ > 0 else None
        return self

    def predict(self, dataset: str) -> pd.Series:
        self._check_fitted()
        sim = self.history_.dataset_similarity()
        if dataset not in self.history_.dataset_features.index and (sim is None or dataset not in sim.index):
            raise ValueError(f"unknown dataset {dataset!r}: add it with History.with_dataset(...) first")
        x = self._design(self.history_, self.norm_, self.embeddings_, [dataset])
        scores = x.attrs["prior"] + (self.model_.predict(x[self.feature_names_]) if self.model_ is not None else 0.0)
        return pd.Series(scores, index=self.history_.models)


def default_methods(probe: bool = False) -> dict[str, _Selector]:
    """M&C with its defaults and every baseline, as evaluated in the report; with ``probe`` (a history with a probe
    table) also the probe baseline and M&C + probe."""
    methods = {
        "M&C": MatchAndChoose(),
        "metadata-only": MatchAndChoose(collaborative=False, prior="none"),
        "history-weighted": HistoryWeighted(),
        "nearest-dataset": NearestDataset(),
        "global-best": GlobalBest(),
        "random": RandomChoice(),
    }
    if probe:
        methods = {"M&C": methods.pop("M&C"), "M&C + probe": MatchAndChoose(probe=True), **methods, "probe": Probe()}
    return methods


# ------------------------------------------------------------------------------------------------ evaluation


def _evaluate_fold(history: History, target: str, methods: dict[str, _Selector], ks) -> tuple[list[dict], list[dict]]:
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


def leave_one_dataset_out(history: History, methods: dict[str, _Selector] | None = None,
                          targets: list[str] | None = None, ks=DEFAULT_KS, n_jobs: int = 1,
                          return_scores: bool = False):
    """Hold out each target dataset in turn; fit every method on the remaining runs; score its ranking.

    Returns one row per (method, dataset) with every metric of :mod:`mc_bench.select.ranking`, ``n_models``,
    ``best_gap`` (how far below the top score the truly best model was scored: 0 when it was picked; the
    nonconformity score of the conformal shortlist) and ``seconds`` (fit + predict time; the only column that
    differs between runs). With ``return_scores``, also the scores: one row per (method, dataset, model) with
    ``score`` and the true ``quality``."""
    methods = methods if methods is not None else default_methods()
    targets = targets if targets is not None else history.datasets
    unknown = [t for t in targets if t not in history.datasets]
    if unknown:
        raise ValueError(f"targets without runs in the history: {unknown}")
    folds = Parallel(n_jobs=n_jobs)(delayed(_evaluate_fold)(history, t, methods, ks) for t in targets)
    metrics = pd.DataFrame([row for rows, _ in folds for row in rows])
    if not return_scores:
        return metrics
    return metrics, pd.DataFrame([row for _, rows in folds for row in rows])


# ------------------------------------------------------------------------------------------------ shortlist


def shortlist_threshold(gaps, level: float = 0.9) -> float:
    """Split-conformal threshold on the score gaps of calibration datasets (``best_gap`` of a leave-one-dataset-out):
    the ``ceil((n + 1) * level)``-th smallest gap, ``inf`` when there are too few datasets for that level."""
    gaps = np.sort(np.asarray([g for g in gaps if np.isfinite(g)], dtype=float))
    k = int(np.ceil((len(gaps) + 1) * level))
    return float(gaps[k - 1]) if 0 < k <= len(gaps) else np.inf


def conformal_shortlist(scores: pd.Series, threshold: float) -> list[str]:
    """The models scored within ``threshold`` of the top score, best first. With the threshold of
    :func:`shortlist_threshold` it holds the best model with probability ≥ ``level`` when datasets are exchangeable
    (split conformal prediction with the score gap of the best model as nonconformity score)."""
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


# ------------------------------------------------------------------------------------------------ ablations


def ablations(history: History, targets: list[str] | None = None, base: MatchAndChoose | None = None,
              ratios=(0.25, 0.5, 0.75), seeds=(0, 1, 2), ks=DEFAULT_KS, n_jobs: int = 1) -> pd.DataFrame:
    """M&C without graph embeddings, per embedding method, per ranker objective, without collaborative features or
    prior, with a fixed number of rounds, and model-ratio / history-ratio sweeps (a fraction of the models, or of
    the training datasets, kept).

    Returns LODO rows with the columns ``ablation`` and ``value`` added."""
    base = base if base is not None else MatchAndChoose()
    targets = targets if targets is not None else history.datasets
    variants = {
        ("default", "-"): base,
        ("embedding", "none"): clone(base).set_params(embedding=None),
        ("embedding", "spectral"): clone(base).set_params(embedding=SpectralGraphEmbedding()),
        ("embedding", "node2vec"): clone(base).set_params(embedding=Node2Vec()),
        ("embedding coordinates", "spectral, on"): clone(base).set_params(embedding=SpectralGraphEmbedding(),
                                                                         embedding_coordinates=True),
        ("objective", "lambdarank"): clone(base).set_params(objective="lambdarank"),
        ("collaborative features", "off"): clone(base).set_params(collaborative=False),
        ("prior", "none"): clone(base).set_params(prior="none"),
        ("prior", "global"): clone(base).set_params(prior="global"),
        ("boosting rounds", "0 (prior only)"): clone(base).set_params(n_estimators=0),
        ("boosting rounds", "300 (no inner choice)"): clone(base).set_params(n_estimators=300),
    }
    frames = []
    for (ablation, value), method in variants.items():
        df = leave_one_dataset_out(history, {"M&C": method}, targets, ks, n_jobs)
        frames.append(df.assign(ablation=ablation, value=value))
    for ratio in ratios:
        for seed in seeds:
            rng = np.random.default_rng(seed)
            models = list(rng.choice(history.models, size=max(2, int(round(ratio * len(history.models)))), replace=False))
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
