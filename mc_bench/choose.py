"""Choose: rank candidate models for a dataset, and judge rankers leave-one-dataset-out.

Every selector follows the scikit-learn estimator API: ``fit(history)`` learns from a
:class:`~mc_bench.history.History` and returns ``self``; ``predict(dataset)`` returns one score per model
(larger = recommended). Fitted attributes end in ``_``; ``__init__`` only stores parameters.

* :class:`MatchAndChoose` — the paper's method: features of the model, of the dataset, their node embeddings on
  the matching graph, and pairwise features (similarity of the dataset to the model's pretraining data and the
  history-weighted score), ranked by LightGBM (``lambdarank`` with integer relevance grades, or a regressor on
  normalised quality as in TransferGraph).
* Baselines: :class:`RandomChoice` (scored by its exact expectation), :class:`GlobalBest`,
  :class:`NearestDataset`, :class:`HistoryWeighted`; "metadata-only" is ``MatchAndChoose(embedding=None,
  neighbour_features=False)``.

:func:`leave_one_dataset_out` holds out each dataset in turn: the fold's history has none of its runs, so none
of them can reach the graph, the features or the ranker.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, clone

from .graph import Node2Vec, SpectralGraphEmbedding, build_matching_graph, dataset_node, model_node
from .history import History
from .ranking import DEFAULT_KS, ndcg_at_k, random_expectation, ranking_metrics


class _Selector(BaseEstimator):
    """Common helpers of every selector."""

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


# ------------------------------------------------------------------------------------------------ baselines


class RandomChoice(_Selector):
    """Uniformly random choice. Its scores are all equal; :func:`leave_one_dataset_out` reports the exact
    expectation of each metric (:func:`mc_bench.ranking.random_expectation`) rather than a draw."""

    exact_expectation = True

    def fit(self, history: History) -> "RandomChoice":
        self.history_ = history
        return self

    def predict(self, dataset: str) -> pd.Series:
        self._check_fitted()
        return pd.Series(0.0, index=self.history_.models)


class GlobalBest(_Selector):
    """The model with the best mean normalised quality over the training datasets, for every dataset."""

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


BANDWIDTH_GRID = (0.03, 0.1, 0.3, 1.0, 3.0, 100.0)


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
    best, best_score = grid[0], -np.inf
    for bw in grid:
        scores = []
        for d in norm.columns:
            others = [x for x in norm.columns if x != d]
            truth = norm[d].dropna()
            pred = history_weighted_scores(norm[others], similarity.loc[d, others], bw).reindex(truth.index)
            scores.append(ndcg_at_k(pred.to_numpy(), truth.to_numpy(), 5))
        if np.mean(scores) > best_score + 1e-12:
            best, best_score = bw, float(np.mean(scores))
    return best


def history_weighted_scores(norm: pd.DataFrame, similarity: pd.Series, bandwidth: float) -> pd.Series:
    """Similarity-weighted mean of normalised quality (missing runs are skipped, not counted as zero)."""
    cols = [d for d in similarity.index if d in norm.columns]
    s = similarity[cols].to_numpy(dtype=float)
    spread = max(s.max() - s.min(), 1e-9)
    w = np.exp((s - s.max()) / (bandwidth * spread))
    values = norm[cols].to_numpy(dtype=float)
    mask = ~np.isnan(values)
    num = np.where(mask, values, 0.0) @ w
    den = mask.astype(float) @ w
    return pd.Series(np.where(den > 0, num / np.maximum(den, 1e-300), -1.0), index=norm.index)


# ------------------------------------------------------------------------------------------------ M&C


class MatchAndChoose(_Selector):
    """Match & Choose: a LightGBM ranker over model features, dataset features, graph embeddings of both, and
    (optionally) pairwise features.

    Parameters
    ----------
    embedding : Node2Vec, SpectralGraphEmbedding or None
        Graph embedding learned on the matching graph (cloned and fitted in ``fit``); ``None`` for none. It
        enters the features as the model–dataset affinity (cosine of the two node embeddings).
    embedding_coordinates : bool
        Also give the ranker the raw embedding coordinates of both nodes (2 × dimensions features).
    objective : "lambdarank" or "regression"
        LightGBM objective: learning-to-rank per dataset with integer relevance grades, or regression on the
        normalised quality (TransferGraph's set-up).
    n_grades : int
        Relevance grades for lambdarank: ``round(normalised quality * (n_grades - 1))``; gains ``2**g - 1``.
    neighbour_features : bool
        Add collaborative pairwise features computed from the other datasets' runs only: the model's mean normalised quality,
        its history-weighted score on the dataset, and the similarity of the dataset to the model's pretraining
        data.
    bandwidth : float or None
        Bandwidth of the history-weighted feature; ``None`` selects it by inner cross-validation (see
        :class:`HistoryWeighted`).
    prior : "none", "model_mean" or "history_weighted"
        Regression only: boosting starts from this pairwise feature (``init_score``) and learns corrections to it.
    edge_threshold, data_knn : matching-graph construction (see :func:`mc_bench.graph.build_matching_graph`).
    n_estimators, learning_rate, num_leaves, min_child_samples, colsample_bytree, random_state : LightGBM's.

    The defaults were chosen on validation histories only — two synthetic histories and the five TransferGraph
    datasets that are not in its published table — never on the datasets that are reported.
    """

    def __init__(self, embedding=Node2Vec(), objective: Literal["lambdarank", "regression"] = "regression",
                 n_grades: int = 8, neighbour_features: bool = False, bandwidth: float | None = None,
                 edge_threshold: float = 0.5, data_knn: int = 5, n_estimators: int = 300,
                 learning_rate: float = 0.05, num_leaves: int = 15, min_child_samples: int = 10,
                 colsample_bytree: float = 1.0, embedding_coordinates: bool = False, prior: Literal["none", "model_mean", "history_weighted"] = "none",
                 random_state: int = 0):
        self.embedding = embedding
        self.objective = objective
        self.n_grades = n_grades
        self.neighbour_features = neighbour_features
        self.bandwidth = bandwidth
        self.edge_threshold = edge_threshold
        self.data_knn = data_knn
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.colsample_bytree = colsample_bytree
        self.prior = prior
        self.embedding_coordinates = embedding_coordinates
        self.random_state = random_state

    # -- features --------------------------------------------------------------------------------------

    def _pair_features(self, models: list[str], datasets: list[str]) -> pd.DataFrame:
        """Feature rows for every (model, dataset) pair, dataset-major. Pairwise features of a training dataset
        are computed without that dataset's own runs, exactly as they will be for a new dataset."""
        h = self.history_
        n_m = len(models)
        blocks = [pd.DataFrame({"model": np.tile(models, len(datasets)), "dataset": np.repeat(datasets, n_m)})]
        mf = h.model_features.reindex(models).add_prefix("m_")
        blocks.append(pd.concat([mf] * len(datasets), ignore_index=True))
        df = h.dataset_features.reindex(datasets).add_prefix("d_")
        blocks.append(df.loc[df.index.repeat(n_m)].reset_index(drop=True))
        if self.embedding_ is not None:
            emb = self.embedding_.embeddings_
            me = emb.reindex([model_node(m) for m in models]).to_numpy()
            de = emb.reindex([dataset_node(d) for d in datasets]).to_numpy()
            me_t, de_r = np.tile(me, (len(datasets), 1)), np.repeat(de, n_m, axis=0)
            cols = emb.columns
            if self.embedding_coordinates:
                blocks.append(pd.DataFrame(me_t, columns=[f"me_{c}" for c in cols]))
                blocks.append(pd.DataFrame(de_r, columns=[f"de_{c}" for c in cols]))
            cos = (me_t * de_r).sum(1) / np.maximum(np.linalg.norm(me_t, axis=1) * np.linalg.norm(de_r, axis=1), 1e-12)
            blocks.append(pd.DataFrame({"emb_cosine": cos}))
        if self.neighbour_features:
            blocks.append(self._neighbour_block(models, datasets))
        return pd.concat(blocks, axis=1)

    def _neighbour_block(self, models: list[str], datasets: list[str]) -> pd.DataFrame:
        """Pairwise features from the other datasets' runs (never the dataset's own): the model's mean normalised
        quality, its history-weighted score, and the similarity of the dataset to the model's pretraining data."""
        h = self.history_
        sim = h.dataset_similarity()
        norm = self.norm_.reindex(models)
        mean, hw, pre = [], [], []
        for d in datasets:
            others = [x for x in norm.columns if x != d]
            mean.append(norm[others].mean(axis=1).to_numpy())
            if sim is None or d not in sim.index:
                hw.append(np.full(len(models), np.nan))
                pre.append(np.full(len(models), np.nan))
                continue
            hw.append(history_weighted_scores(norm[others], sim.loc[d, others], self.bandwidth_).to_numpy())
            pre.append(np.array([max((sim.at[d, p] for p in h.pretrain.get(m, ()) if p in sim.columns),
                                     default=np.nan) for m in models]))
        return pd.DataFrame({"model_mean": np.concatenate(mean), "history_weighted": np.concatenate(hw),
                             "pretrain_similarity": np.concatenate(pre)})

    # -- estimator API ---------------------------------------------------------------------------------

    def fit(self, history: History) -> "MatchAndChoose":
        import lightgbm as lgb

        self.history_ = history
        self.norm_ = history.normalised()
        self.bandwidth_ = self.bandwidth
        if self.bandwidth_ is None and self.neighbour_features:
            self.bandwidth_ = select_bandwidth(self.norm_, history.dataset_similarity())
        self.graph_ = build_matching_graph(history, self.edge_threshold, self.data_knn)
        self.embedding_ = clone(self.embedding).fit(self.graph_) if self.embedding is not None else None
        datasets = list(self.norm_.columns)
        models = history.models
        x = self._pair_features(models, datasets)
        y = self.norm_.to_numpy().T.reshape(-1)  # dataset-major, like x
        keep = ~np.isnan(y)
        x, y = x.loc[keep].reset_index(drop=True), y[keep]
        self.feature_names_ = [c for c in x.columns if c not in ("model", "dataset")]
        params = dict(n_estimators=self.n_estimators, learning_rate=self.learning_rate, num_leaves=self.num_leaves,
                      min_child_samples=self.min_child_samples, colsample_bytree=self.colsample_bytree,
                      random_state=self.random_state, n_jobs=1,
                      deterministic=True, force_row_wise=True, verbose=-1)
        if self.objective == "lambdarank":
            grades = np.rint(y * (self.n_grades - 1)).astype(int)
            groups = x.groupby("dataset", sort=False).size().to_numpy()
            self.model_ = lgb.LGBMRanker(objective="lambdarank", label_gain=[2**g - 1 for g in range(self.n_grades)],
                                         **params)
            self.model_.fit(x[self.feature_names_], grades, group=groups)
        elif self.objective == "regression":
            self.model_ = lgb.LGBMRegressor(objective="regression", **params)
            self.model_.fit(x[self.feature_names_], y, init_score=self._prior(x))
        else:
            raise ValueError(f"objective must be 'lambdarank' or 'regression', not {self.objective!r}")
        return self

    def predict(self, dataset: str) -> pd.Series:
        self._check_fitted()
        sim = self.history_.dataset_similarity()
        if dataset not in self.history_.dataset_features.index and (sim is None or dataset not in sim.index):
            raise ValueError(f"unknown dataset {dataset!r}: add it with History.with_dataset(...) first")
        models = self.history_.models
        x = self._pair_features(models, [dataset])
        scores = self.model_.predict(x[self.feature_names_])
        if self.objective == "regression":
            scores = scores + self._prior(x)
        return pd.Series(scores, index=models)

    def _prior(self, x: pd.DataFrame) -> np.ndarray:
        """The starting score that boosting corrects: zero, or a collaborative-filtering score."""
        if self.prior == "none":
            return np.zeros(len(x))
        if not self.neighbour_features:
            raise ValueError(f"prior={self.prior!r} needs neighbour_features=True")
        return x[self.prior].fillna(x["model_mean"]).fillna(0.0).to_numpy()


def default_methods() -> dict[str, _Selector]:
    """M&C with its defaults and every baseline, as evaluated in the report."""
    return {
        "M&C": MatchAndChoose(),
        "metadata-only": MatchAndChoose(embedding=None),
        "history-weighted": HistoryWeighted(),
        "nearest-dataset": NearestDataset(),
        "global-best": GlobalBest(),
        "random": RandomChoice(),
    }


# ------------------------------------------------------------------------------------------------ evaluation


def _evaluate_fold(history: History, target: str, methods: dict[str, _Selector], ks) -> list[dict]:
    truth = history.label_matrix()[target].dropna()
    if len(truth) < 2:  # one candidate's result (e.g. a model subset in a sweep): nothing to rank
        return []
    fold = history.without_runs(target)
    rows = []
    for name, method in methods.items():
        start = time.perf_counter()
        if getattr(method, "exact_expectation", False):
            metrics = random_expectation(truth.to_numpy(), history.higher_is_better, ks)
        else:
            est = clone(method).fit(fold)
            scores = est.predict(target).reindex(truth.index)
            metrics = ranking_metrics(scores.to_numpy(), truth.to_numpy(), history.higher_is_better, ks)
        rows.append({"method": name, "dataset": target, "n_models": len(truth), **metrics,
                     "seconds": time.perf_counter() - start})
    return rows


def leave_one_dataset_out(history: History, methods: dict[str, _Selector] | None = None,
                          targets: list[str] | None = None, ks=DEFAULT_KS, n_jobs: int = 1) -> pd.DataFrame:
    """Hold out each target dataset in turn; fit every method on the remaining runs; score its ranking.

    Returns one row per (method, dataset) with every metric of :mod:`mc_bench.ranking`, ``n_models`` and
    ``seconds`` (fit + predict time)."""
    methods = methods if methods is not None else default_methods()
    targets = targets if targets is not None else history.datasets
    unknown = [t for t in targets if t not in history.datasets]
    if unknown:
        raise ValueError(f"targets without runs in the history: {unknown}")
    folds = Parallel(n_jobs=n_jobs)(delayed(_evaluate_fold)(history, t, methods, ks) for t in targets)
    return pd.DataFrame([row for fold in folds for row in fold])


def ablations(history: History, targets: list[str] | None = None, base: MatchAndChoose | None = None,
              ratios=(0.25, 0.5, 0.75), seeds=(0, 1, 2), ks=DEFAULT_KS, n_jobs: int = 1) -> pd.DataFrame:
    """M&C without graph embeddings, per embedding method, per ranker objective, without pairwise features,
    and model-ratio / history-ratio sweeps (a fraction of the models, or of the training datasets, kept).

    Returns LODO rows with the columns ``ablation`` and ``value`` added."""
    base = base if base is not None else MatchAndChoose()
    targets = targets if targets is not None else history.datasets
    variants = {
        ("default", "-"): base,
        ("embedding", "none"): clone(base).set_params(embedding=None),
        ("embedding", "node2vec"): clone(base).set_params(embedding=Node2Vec()),
        ("embedding", "spectral"): clone(base).set_params(embedding=SpectralGraphEmbedding()),
        ("embedding coordinates", "on"): clone(base).set_params(embedding_coordinates=True),
        ("objective", "lambdarank"): clone(base).set_params(objective="lambdarank"),
        ("objective", "regression"): clone(base).set_params(objective="regression"),
        ("pairwise features", "on"): clone(base).set_params(neighbour_features=True),
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
