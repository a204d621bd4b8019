"""Match & Choose: learners read off the matching graph, stacked by weights fit on the training datasets.

For a new dataset, M&C scores every candidate model with several *learners*, each a different reading of the
matching graph, and adds their scores with weights learned on the history:

``global``   the model's mean normalised quality over the history's datasets (global-best);
``local``    its similarity-weighted mean (the datasets near the new one count most; bandwidth ``local_bandwidth``);
``nearest``  its normalised quality on the most similar dataset;
``booster``  a LightGBM regressor of normalised quality on the model's features (``m_*``), the dataset's (``d_*``),
             the three collaborative scores above, the similarity of the dataset to the model's pretraining data and,
             with an ``embedding``, the model's and the dataset's nodes in a graph embedding of the matching graph
             (TransferGraph's node2vec+ features);
``probe``    (M&C + probe) the normalised quality of the candidate's *pretrained* samples on the new dataset;
``gain``     (M&C + probe) the pretrained quality plus the fine-tuning gain the same model showed on similar datasets
             (:class:`~mc_bench.select.gain.GainModel`): a model of quality *after* fine-tuning.

The weights are learned by stacking (Wolpert, 1992; Breiman, 1996): every learner predicts each training dataset
out of fold — the collaborative, probe and gain learners leave-one-dataset-out exactly, the booster by inner
cross-validation over the training datasets (graph, features and booster rebuilt without each inner fold's runs) —
and non-negative least squares fits the held-out normalised quality on those predictions,
centred within each dataset (only the order of the models within a dataset matters). A learner gets the weight its
out-of-fold predictions earn, so the booster has a say exactly where it predicted held-out datasets better than the
collaborative scores; the held-out target is never seen. Every learner's output is rounded to
:data:`~mc_bench.select.base.FEATURE_DECIMALS` decimals and LightGBM runs single-threaded and deterministic, so the
same history gives the same scores in another process, with another thread count or ``n_jobs``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from scipy.optimize import nnls
from sklearn.base import clone

from .base import FEATURE_DECIMALS, Selector
from .collaborative import collaborative_scores, leave_self_out, uniform_similarity, with_fallback
from .gain import GainModel, probe_matrix
from .graph import dataset_node, matching_sparse_graph, model_node
from .history import History

COLLABORATIVE = ("global", "local", "nearest")
PROBE_LEARNERS = ("probe", "gain")
LEARNERS = COLLABORATIVE + ("booster",) + PROBE_LEARNERS


class MatchAndChoose(Selector):
    """Match & Choose (see the module docstring).

    Parameters
    ----------
    learners : tuple of names from :data:`LEARNERS`
        The stacked learners. ``("booster",)`` with ``collaborative_features=False`` is the metadata-only ranker.
    probe : bool
        M&C + probe: add the ``probe`` and ``gain`` learners and the probe as a booster feature. Needs a probe for
        every dataset, the new one included.
    embedding : None or a graph embedding (:class:`~mc_bench.select.graph.Node2Vec`,
        :class:`~mc_bench.select.graph.SpectralGraphEmbedding`)
        Fitted on the matching graph of each (inner) history; the booster sees the model–dataset cosine
        (``affinity``) and, with ``embedding_coordinates``, both nodes' coordinates.
    collaborative_features : bool
        Give the booster the collaborative scores as features.
    blend : "nnls" or "equal"
        How learners are combined: stacking weights (non-negative least squares on out-of-fold predictions), or
        the plain mean of the learners' scores (the ablation).
    top_weight : float
        Stacking weighs each training pair by ``exp(top_weight * normalised quality)``: 0 fits every model alike,
        a larger value fits the good models — those a first pick is made among — more closely.
    local_bandwidth, gain_bandwidth : float
        Bandwidths of the ``local`` learner and of the gain model's similarity weights (in units of the spread of
        the similarities to the target; small = the nearest datasets only).
    n_estimators, learning_rate, num_leaves, min_child_samples, colsample_bytree : the booster's (LightGBM).
    inner_folds : int
        Folds of the inner cross-validation that makes the out-of-fold predictions (at most the number of training
        datasets).
    edge_threshold, data_knn : matching-graph construction for the embedding
        (:func:`mc_bench.select.graph.build_matching_graph`).
    max_rows : int
        The booster learns from at most this many (model, training dataset) pairs: with more, every training dataset
        contributes the same number of its models, drawn at random (``random_state``).
    random_state : int

    The defaults were chosen on validation histories only (``mc_bench.select.validation``, ``benchmarks/
    selection_defaults.py``), never on the datasets that are reported.
    """

    def __init__(self, learners: tuple[str, ...] = ("global", "local", "nearest", "booster"), probe: bool = False,
                 embedding=None, embedding_coordinates: bool = False, collaborative_features: bool = True,
                 blend: Literal["nnls", "equal"] = "nnls", top_weight: float = 0.0, local_bandwidth: float = 0.3,
                 gain_bandwidth: float = 0.3,
                 n_estimators: int = 100, learning_rate: float = 0.05, num_leaves: int = 7,
                 min_child_samples: int = 10, colsample_bytree: float = 0.8, inner_folds: int = 5,
                 edge_threshold: float = 0.5, data_knn: int = 5, max_rows: int = 20000, random_state: int = 0):
        self.learners = learners
        self.probe = probe
        self.embedding = embedding
        self.embedding_coordinates = embedding_coordinates
        self.collaborative_features = collaborative_features
        self.blend = blend
        self.top_weight = top_weight
        self.local_bandwidth = local_bandwidth
        self.gain_bandwidth = gain_bandwidth
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.colsample_bytree = colsample_bytree
        self.inner_folds = inner_folds
        self.edge_threshold = edge_threshold
        self.data_knn = data_knn
        self.max_rows = max_rows
        self.random_state = random_state

    # -- the learners ----------------------------------------------------------------------------------

    def _active_learners(self) -> list[str]:
        unknown = [n for n in self.learners if n not in LEARNERS]
        if unknown:
            raise ValueError(f"unknown learners {unknown}; known: {list(LEARNERS)}")
        names = list(dict.fromkeys(self.learners))
        if self.probe:
            names += [n for n in PROBE_LEARNERS if n not in names]
        elif any(n in PROBE_LEARNERS for n in names):
            raise ValueError("the probe and gain learners need probe=True (and a history with a probe)")
        if not names:
            raise ValueError("M&C needs at least one learner")
        return names

    def _fit_state(self, history: History) -> dict:
        """Everything the learners need from a (training or inner) history."""
        state = {"history": history, "norm": history.normalised()}
        state["embeddings"] = self._embed(history) if self.embedding is not None else None
        names = self._active_learners()
        if "booster" in names:
            x, y = self._training_rows(state)
            state["booster"] = self._train_booster(x, y) if len(y) else None
            state["feature_names"] = list(x.columns)
        if "gain" in names:
            state["gain"] = GainModel(bandwidth=self.gain_bandwidth).fit(history)
        return state

    def _learner_scores(self, state: dict, targets: list[str], booster: bool = True) -> dict[str, np.ndarray]:
        """Each learner's scores, models × targets, in normalised-quality units (NaN where it has no opinion); a
        target's own runs, when the history has them, are never used (leave-self-out)."""
        history, norm = state["history"], state["norm"]
        collab = self._collaborative(history, norm, targets)
        out = {}
        for name in self._active_learners():
            if name in COLLABORATIVE:
                out[name] = collab[name]
            elif name == "booster":
                if booster:
                    out[name] = self._booster_scores(state, targets, collab)
            elif name == "probe":
                out[name] = probe_matrix(history, targets)
            elif name == "gain":
                out[name] = state["gain"].normalised_scores(targets)
        return {k: np.round(v, FEATURE_DECIMALS) for k, v in out.items()}

    def _collaborative(self, history: History, norm: pd.DataFrame, targets: list[str]) -> dict[str, np.ndarray]:
        """The collaborative scores of every model for ``targets`` from ``norm``'s datasets other than the target;
        without a similarity, ``local`` and ``nearest`` fall back to the global mean."""
        values = norm.reindex(history.models).to_numpy(dtype=float)
        datasets = list(norm.columns)
        overall = collaborative_scores(values, uniform_similarity(targets, datasets), np.inf)
        out = {"global": np.nan_to_num(overall, nan=0.0)}
        sim = history.dataset_similarity()
        if sim is None:
            out["local"] = out["nearest"] = out["global"]
            out["raw_local"] = out["raw_nearest"] = np.full_like(overall, np.nan)
            return out
        s = leave_self_out(sim, targets, datasets)
        local = collaborative_scores(values, s, self.local_bandwidth)
        nearest = collaborative_scores(values, s, 0)
        out.update(local=with_fallback(local, overall), nearest=with_fallback(nearest, overall),
                   raw_local=local, raw_nearest=nearest)
        return out

    # -- the booster -----------------------------------------------------------------------------------

    def _embed(self, history: History) -> pd.DataFrame:
        graph = matching_sparse_graph(history, self.edge_threshold, self.data_knn)
        return clone(self.embedding).fit(graph).embeddings_

    def _features(self, state: dict, targets: list[str], collab: dict | None = None) -> pd.DataFrame:
        """The booster's feature rows for every (model, target) pair, target-major."""
        history, norm, embeddings = state["history"], state["norm"], state["embeddings"]
        models = history.models
        n_m, n_t = len(models), len(targets)
        blocks = [history.model_features.reindex(models).add_prefix("m_").iloc[np.tile(np.arange(n_m), n_t)]
                  .reset_index(drop=True),
                  history.dataset_features.reindex(targets).add_prefix("d_").iloc[np.repeat(np.arange(n_t), n_m)]
                  .reset_index(drop=True)]
        learned = {}
        if self.collaborative_features:
            collab = collab if collab is not None else self._collaborative(history, norm, targets)
            learned.update({"global_mean": collab["global"].T.reshape(-1),
                            "weighted_mean": collab.get("raw_local", collab["local"]).T.reshape(-1),
                            "nearest": collab.get("raw_nearest", collab["nearest"]).T.reshape(-1)})
        learned["pretrain_similarity"] = pretrain_similarity(history, models, targets)
        if embeddings is not None:
            me = embeddings.reindex([model_node(m) for m in models]).to_numpy()
            de = embeddings.reindex([dataset_node(d) for d in targets]).to_numpy()
            me_t, de_r = np.tile(me, (n_t, 1)), np.repeat(de, n_m, axis=0)
            if self.embedding_coordinates:
                learned.update({f"me_{c}": me_t[:, i] for i, c in enumerate(embeddings.columns)})
                learned.update({f"de_{c}": de_r[:, i] for i, c in enumerate(embeddings.columns)})
            norms = np.maximum(np.linalg.norm(me_t, axis=1) * np.linalg.norm(de_r, axis=1), 1e-12)
            learned["affinity"] = (me_t * de_r).sum(1) / norms
        if self.probe:
            learned["probe"] = probe_matrix(history, targets).T.reshape(-1)
        frame = pd.DataFrame({k: np.round(np.asarray(v, dtype=float), FEATURE_DECIMALS) for k, v in learned.items()})
        return pd.concat(blocks + [frame], axis=1)

    def _training_rows(self, state: dict) -> tuple[pd.DataFrame, np.ndarray]:
        history, norm = state["history"], state["norm"]
        datasets = list(norm.columns)
        n_m = len(history.models)
        x = self._features(state, datasets)
        y = norm.reindex(history.models).to_numpy(dtype=float).T.reshape(-1)
        keep = ~np.isnan(y)
        per_dataset = max(1, self.max_rows // max(1, len(datasets)))
        if n_m > per_dataset:  # the same number of random models from every training dataset
            rng = np.random.default_rng(self.random_state)
            sampled = np.zeros(len(y), bool)
            for j in range(len(datasets)):
                sampled[j * n_m + rng.choice(n_m, per_dataset, replace=False)] = True
            keep &= sampled
        return x.loc[keep].reset_index(drop=True), y[keep]

    def _train_booster(self, x: pd.DataFrame, y: np.ndarray):
        import lightgbm as lgb

        params = dict(objective="regression", learning_rate=self.learning_rate, num_leaves=self.num_leaves,
                      min_data_in_leaf=self.min_child_samples, feature_fraction=self.colsample_bytree,
                      seed=self.random_state, num_threads=1, deterministic=True, force_row_wise=True, verbose=-1,
                      feature_pre_filter=False, max_bin=63)
        return lgb.train(params, lgb.Dataset(x, y, free_raw_data=False), num_boost_round=self.n_estimators)

    def _booster_scores(self, state: dict, targets: list[str], collab: dict) -> np.ndarray:
        if state.get("booster") is None:
            return np.full((len(state["history"].models), len(targets)), np.nan)
        x = self._features(state, targets, collab)[state["feature_names"]]
        return state["booster"].predict(x).reshape(len(targets), -1).T

    # -- stacking --------------------------------------------------------------------------------------

    def _inner_folds(self, datasets: list[str]) -> list[list[str]]:
        k = max(2, min(self.inner_folds, len(datasets)))
        order = np.random.default_rng(self.random_state).permutation(len(datasets))
        return [fold for fold in (sorted(datasets[i] for i in order[f::k]) for f in range(k)) if fold]

    def _out_of_fold(self, history: History, state: dict) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Each learner's out-of-fold scores of the training datasets' pairs with a result, the pairs' normalised
        quality, and their dataset index. The collaborative, probe and gain learners are leave-one-dataset-out
        exactly (each training dataset scored without its own runs, from ``state`` fitted on the whole history); the
        booster, which must be refitted, by ``inner_folds``-fold cross-validation over the training datasets."""
        norm = history.normalised()
        datasets = list(norm.columns)
        y = norm.reindex(history.models).to_numpy(dtype=float)
        observed = ~np.isnan(y)
        names = self._active_learners()
        exact = self._learner_scores(state, datasets, booster=False)
        scores = {n: exact[n][observed] for n in names if n != "booster"}
        if "booster" in names:
            booster = np.full(y.shape, np.nan)
            position = {d: j for j, d in enumerate(datasets)}
            for held in self._inner_folds(datasets):
                inner = self._fit_state(history.without_runs(held))
                collab = self._collaborative(inner["history"], inner["norm"], held)
                booster[:, [position[d] for d in held]] = np.round(self._booster_scores(inner, held, collab),
                                                                   FEATURE_DECIMALS)
            scores["booster"] = booster[observed]
        return scores, y[observed], np.nonzero(observed)[1]

    @staticmethod
    def _centred(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """``values`` minus their mean within each group (NaN scores become the group's mean: no opinion)."""
        out = np.empty_like(values, dtype=float)
        for g in np.unique(groups):
            idx = groups == g
            v = values[idx]
            mean = np.nanmean(v) if np.isfinite(v).any() else 0.0
            out[idx] = np.where(np.isnan(v), 0.0, v - mean)
        return out

    def _stacking_weights(self, history: History, state: dict) -> dict[str, float]:
        names = self._active_learners()
        if self.blend == "equal" or len(names) == 1:
            return {n: 1.0 / len(names) for n in names}
        scores, y, groups = self._out_of_fold(history, state)
        a = np.column_stack([self._centred(scores[n], groups) for n in names])
        b = self._centred(y, groups)
        rows = np.sqrt(np.exp(self.top_weight * y))[:, None]  # top_weight > 0: errors on good models count more
        weights, _ = nnls(np.round(rows * a, FEATURE_DECIMALS), np.round(rows[:, 0] * b, FEATURE_DECIMALS))
        if not np.any(weights > 0):  # no learner predicts held-out datasets at all: weigh them the same
            weights = np.ones(len(names))
        return {n: float(np.round(w, FEATURE_DECIMALS)) for n, w in zip(names, weights)}

    # -- estimator API ---------------------------------------------------------------------------------

    def fit(self, history: History) -> "MatchAndChoose":
        if self.blend not in ("nnls", "equal"):
            raise ValueError(f"blend must be 'nnls' or 'equal', not {self.blend!r}")
        if self.probe and history.probe is None:
            from ..errors import HistoryError

            raise HistoryError(f"{history.source}: probe", "M&C + probe needs the probe of every dataset",
                               "name a probe table in history.yaml (a study's <study>-pretrained companion)")
        self.state_ = self._fit_state(history)
        self.weights_ = self._stacking_weights(history, self.state_)
        self.history_ = history
        return self

    def predict(self, dataset: str) -> pd.Series:
        self._check_fitted()
        history = self.history_
        sim = history.dataset_similarity()
        if dataset not in history.dataset_features.index and (sim is None or dataset not in sim.index):
            raise ValueError(f"unknown dataset {dataset!r}: add it with History.with_dataset(...) first")
        scores = self._learner_scores(self.state_, [dataset])
        total = np.zeros(len(history.models))
        for name, weight in self.weights_.items():
            column = scores[name][:, 0]
            filled = np.where(np.isnan(column), np.nanmean(column) if np.isfinite(column).any() else 0.0, column)
            total += weight * filled
        tie_break = 1e-9 * np.nan_to_num(scores.get("global", np.zeros((len(total), 1)))[:, 0])
        return pd.Series(np.round(total, FEATURE_DECIMALS) + tie_break, index=history.models)

    def learner_scores(self, dataset: str) -> pd.DataFrame:
        """Every learner's scores for ``dataset`` (models × learners) and the blend: what each learner says and how
        much the blend listens to it (``weights_``)."""
        self._check_fitted()
        scores = self._learner_scores(self.state_, [dataset])
        table = pd.DataFrame({n: v[:, 0] for n, v in scores.items()}, index=self.history_.models)
        return table.assign(blend=self.predict(dataset))


def pretrain_similarity(history: History, models: list[str], targets: list[str]) -> np.ndarray:
    """Similarity of each target to the closest of each model's pretraining datasets, target-major (NaN when
    unknown)."""
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
