"""TransferGraph's learners (Li et al., "Model Selection with Model Zoo via Graph Learning", ICDE 2024), in the kit.

TransferGraph builds a graph of models and datasets, learns node embeddings on it with node2vec, and trains a
regressor of a model's (normalised) accuracy after fine-tuning on the pair's features. Its published setting
``<learner>_<embedding>_all_normalize_without_transfer``, written here from its paper and public code
(``transferability_estimation/graph/attributes.py``, ``train_with_node2vec.py``,
``train_with_linear_regression.py`` at commit 0458aff):

* **graph** — model→dataset performance edges where the accuracy, min–max normalised within the dataset, is above
  0.5 (weight: that value); model→pretraining-dataset edges; dataset–dataset edges between every pair of datasets
  (weight: their similarity). The held-out target keeps its node and similarity edges, never its runs.
  ``without_transfer``: no transferability-score (LogME) edges.
* **embedding** — ``node2vec``: uniform random walks; ``node2vec+``: walks weighted by edge weight (pecanpy's
  node2vec+ with p = q = 1); 128 dimensions, 10 walks of 10 nodes per node, window 10, 50 epochs of skip-gram with
  one negative sample.
* **features** (``all``) — the model's metadata (architecture, pretraining accuracy, model type, parameters, its
  pretraining dataset), the dataset's (size, number of classes), the similarity of the dataset to the model's
  pretraining dataset, and both nodes' 128 embedding coordinates, concatenated.
* **label** (``normalize``) — accuracy min–max normalised within each dataset.
* **learners** — XGBoost (500 trees, depth 5, learning rate 0.1, column sample 0.8, seed 18), random forest (100
  trees of depth 5, ``sqrt`` features, seed 18) and linear regression (on standardised features: the same least
  squares, solved stably).

Where the kit departs from the published code (each measured in ``benchmarks/transfergraph.py``): the graph is
undirected by default (theirs is directed, model → dataset → later dataset: ``directed=True``); the embedding is
gensim's skip-gram, seeded
(theirs is a PyTorch skip-gram, unseeded: each published number is one draw); categorical features get the same codes
in training and test rows (theirs are label-encoded separately); the fine-tuning run's own ``train_runtime`` is not
a feature (for the target it is known only after fine-tuning); repeated runs of a pair are averaged (theirs are
separate rows, and the best is kept as the truth).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.base import clone

from .base import FEATURE_DECIMALS, Selector
from .graph import (EDGE_KINDS, Node2Vec, SparseGraph, dataset_node, matching_edge_index, matching_sparse_graph,
                    model_node)
from .history import History
from .mc import pretrain_similarity

EMBEDDINGS = {"node2vec": False, "node2vec+": True}  # weighted walks?


def transfergraph_embedding(embedding: str = "node2vec+", seed: int = 0) -> Node2Vec:
    """TransferGraph's node2vec settings: 128 dimensions, 10 walks of 10 nodes, window 10, 50 epochs, 1 negative."""
    if embedding not in EMBEDDINGS:
        raise ValueError(f"embedding must be one of {list(EMBEDDINGS)}, not {embedding!r}")
    return Node2Vec(dimensions=128, walk_length=10, num_walks=10, window=10, epochs=50, negative=1,
                    weighted=EMBEDDINGS[embedding], seed=seed)


def transfergraph_graph(history: History, directed: bool = False) -> SparseGraph:
    """TransferGraph's graph of a history: performance edges above 0.5 (normalised), pretraining edges, and every
    pair of datasets linked by their similarity; ``directed``: model → dataset and earlier → later dataset only, as
    its code builds it (walks then never return from a dataset to a model)."""
    if not directed:
        return matching_sparse_graph(history, edge_threshold=0.5, data_knn=None, data_threshold=0.0)
    nodes, u, v, w, kind = matching_edge_index(history, 0.5, None, 0.0)
    similarity = kind == EDGE_KINDS.index("similarity")
    tail, head = np.where(similarity, np.minimum(u, v), u), np.where(similarity, np.maximum(u, v), v)
    adjacency = sp.coo_matrix((w, (tail, head)), shape=(len(nodes), len(nodes))).tocsr()
    return SparseGraph([name for name, _ in nodes], adjacency)


def regressor(learner: str, random_state: int = 18):
    """TransferGraph's regressors, single-threaded."""
    if learner == "xgb":
        try:
            from xgboost import XGBRegressor
        except ImportError:
            from ..errors import InputError

            raise InputError("xgboost", "TransferGraph's XGBoost learner needs the xgboost package, which is not "
                             "installed", "run `bash scripts/setup.sh` (it installs xgboost-cpu from "
                             "requirements.lock), or `pip install xgboost-cpu`") from None

        return XGBRegressor(n_estimators=500, max_depth=5, learning_rate=0.1, subsample=1.0, colsample_bytree=0.8,
                            random_state=random_state, n_jobs=1)
    if learner == "rf":
        from sklearn.ensemble import RandomForestRegressor

        return RandomForestRegressor(n_estimators=100, max_features="sqrt", max_depth=5, random_state=random_state,
                                     n_jobs=1)
    if learner == "lr":
        from sklearn.linear_model import LinearRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        # least squares is unchanged by rescaling a feature in exact arithmetic, not in floating point: with raw
        # columns of very different scales (memory in bytes beside unit-scale embeddings) the solver fits next to
        # nothing (train R² 0.0004 on TransferGraph's text records, 0.69 standardised)
        return make_pipeline(StandardScaler(), LinearRegression())
    raise ValueError(f"learner must be 'xgb', 'rf' or 'lr', not {learner!r}")


class TransferGraph(Selector):
    """TransferGraph's regression learner on node2vec(+) embeddings and all features (see the module docstring).

    Parameters
    ----------
    learner : "xgb", "rf" or "lr"
    embedding : "node2vec+", "node2vec", "random" or None
        None: no embedding coordinates among the features; "random": a seeded Gaussian vector per node, which only
        tells the nodes apart (both measure what the learned embedding adds).
    directed : bool
        Walk the graph as TransferGraph's code builds it — model → dataset, and between datasets from the earlier to
        the later one only — instead of the undirected matching graph.
    seed : int
        The embedding's seed (walks and skip-gram); the regressors keep TransferGraph's seed 18.
    """

    def __init__(self, learner: Literal["xgb", "rf", "lr"] = "xgb",
                 embedding: Literal["node2vec+", "node2vec", "random"] | None = "node2vec+", directed: bool = False,
                 seed: int = 0):
        self.learner = learner
        self.embedding = embedding
        self.directed = directed
        self.seed = seed

    def _features(self, targets: list[str]) -> pd.DataFrame:
        """Feature rows for every (model, target) pair, target-major."""
        history, emb = self.history_, self.embeddings_
        models = history.models
        n_m, n_t = len(models), len(targets)
        mf = history.model_features.reindex(models).copy()
        mf["pretrain_dataset"] = pd.Categorical([(history.pretrain.get(m) or ("",))[0] for m in models])
        blocks = [mf.add_prefix("m_").iloc[np.tile(np.arange(n_m), n_t)].reset_index(drop=True),
                  history.dataset_features.reindex(targets).add_prefix("d_").iloc[np.repeat(np.arange(n_t), n_m)]
                  .reset_index(drop=True)]
        coords = {}
        if emb is not None:
            me = emb.reindex([model_node(m) for m in models]).to_numpy()
            de = emb.reindex([dataset_node(d) for d in targets]).to_numpy()
            coords.update({f"me_{i}": np.tile(me[:, i], n_t) for i in range(me.shape[1])})
            coords.update({f"de_{i}": np.repeat(de[:, i], n_m) for i in range(de.shape[1])})
        coords["pretrain_similarity"] = pretrain_similarity(history, models, targets)
        x = pd.concat(blocks + [pd.DataFrame(coords)], axis=1)
        for col in x.columns:  # categories as their codes, the same in training and test rows
            if isinstance(x[col].dtype, pd.CategoricalDtype):
                x[col] = x[col].cat.codes.astype(float)
        return x.astype(float).round(FEATURE_DECIMALS)

    def _impute(self, x: pd.DataFrame) -> pd.DataFrame:
        """Missing values: the distance to an unknown pretraining dataset as the closest (as TransferGraph), the rest
        by the training rows' mean."""
        return x.fillna(self.fill_).fillna(0.0)

    def fit(self, history: History) -> "TransferGraph":
        self.history_ = history
        self.embeddings_ = None
        if self.embedding == "random":
            nodes = transfergraph_graph(history).nodes
            values = np.random.default_rng(self.seed).normal(size=(len(nodes), 128))
            self.embeddings_ = pd.DataFrame(values, index=nodes, columns=[f"e{i}" for i in range(128)])
        elif self.embedding is not None:
            graph = transfergraph_graph(history, self.directed)
            self.embeddings_ = clone(transfergraph_embedding(self.embedding, self.seed)).fit(graph).embeddings_
        norm = history.normalised()
        x = self._features(list(norm.columns))
        y = norm.reindex(history.models).to_numpy(dtype=float).T.reshape(-1)
        keep = ~np.isnan(y)
        x, y = x.loc[keep].reset_index(drop=True), y[keep]
        self.fill_ = x.mean()
        self.fill_["pretrain_similarity"] = x["pretrain_similarity"].max()
        self.columns_ = list(x.columns)
        self.model_ = regressor(self.learner).fit(self._impute(x), y)
        return self

    def predict(self, dataset: str) -> pd.Series:
        self._check_fitted()
        x = self._impute(self._features([dataset])[self.columns_])
        return pd.Series(np.asarray(self.model_.predict(x), dtype=float), index=self.history_.models)
