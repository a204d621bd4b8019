"""Match: the matching graph of models and datasets, and graph embeddings learned on it.

Nodes are ``model:<id>`` and ``dataset:<id>`` (attribute ``kind``). Edges (attribute ``kind``):

``performance``  model–dataset, weight = the model's quality after fine-tuning on the dataset, min–max normalised
                 within the dataset (direction-aware); only pairs above ``edge_threshold`` become edges
                 (TransferGraph keeps normalised quality > 0.5).
``pretrain``     model–dataset, weight 1, to the dataset(s) the model was pretrained on (when known).
``similarity``   dataset–dataset, weight = dataset similarity in [0, 1], to each dataset's ``data_knn`` nearest
                 datasets (or every pair above ``data_threshold``).

The graph is built from a :class:`~mc_bench.history.History` as it is: a dataset whose runs were removed
(``history.without_runs``) is a node with its similarity edges only. Graph embeddings:
:class:`Node2Vec` (weighted, biased second-order random walks, then gensim's skip-gram) and
:class:`SpectralGraphEmbedding` (scikit-learn's Laplacian eigenmaps) as a cheap alternative.
"""

from __future__ import annotations

import warnings

import networkx as nx
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from .history import History


def model_node(model: str) -> str:
    return f"model:{model}"


def dataset_node(dataset: str) -> str:
    return f"dataset:{dataset}"


def build_matching_graph(history: History, edge_threshold: float = 0.5, data_knn: int | None = 5,
                         data_threshold: float | None = None) -> nx.Graph:
    """The matching graph of a history (see the module docstring)."""
    graph = nx.Graph()
    for model, feats in history.model_features.iterrows():
        graph.add_node(model_node(model), kind="model", id=model, **_plain(feats))
    sim = history.dataset_similarity()
    dataset_ids = list(dict.fromkeys([*history.dataset_features.index, *(sim.index if sim is not None else [])]))
    for dataset in dataset_ids:
        feats = history.dataset_features.loc[dataset] if dataset in history.dataset_features.index else pd.Series()
        graph.add_node(dataset_node(dataset), kind="dataset", id=dataset, **_plain(feats))

    norm = history.normalised()
    for dataset in norm.columns:
        col = norm[dataset].dropna()
        for model, value in col[col > edge_threshold].items():
            graph.add_edge(model_node(model), dataset_node(dataset), weight=float(value), kind="performance")
    for model, pretrain_sets in history.pretrain.items():
        for dataset in pretrain_sets:
            if not graph.has_edge(model_node(model), dataset_node(dataset)):
                graph.add_edge(model_node(model), dataset_node(dataset), weight=1.0, kind="pretrain")

    if sim is not None:
        values = sim.to_numpy(dtype=float).copy()
        np.fill_diagonal(values, -np.inf)
        ids = list(sim.index)
        for i, a in enumerate(ids):
            if data_threshold is not None:
                neighbours = np.flatnonzero(values[i] > data_threshold)
            else:
                neighbours = np.argsort(-values[i], kind="stable")[: data_knn or 0]
            for j in neighbours:
                graph.add_edge(dataset_node(a), dataset_node(ids[j]), weight=float(values[i, j]), kind="similarity")
    return graph


def _plain(feats: pd.Series) -> dict:
    return {f"f_{k}": (v.item() if hasattr(v, "item") else v) for k, v in feats.items() if pd.notna(v)}


# ------------------------------------------------------------------------------------------- embeddings


class _CSR:
    """A weighted graph in compressed sparse row form, for vectorised random walks."""

    def __init__(self, graph: nx.Graph):
        self.nodes = list(graph.nodes)
        index = {n: i for i, n in enumerate(self.nodes)}
        n = len(self.nodes)
        rows, cols, weights = [], [], []
        for u, v, w in graph.edges(data="weight", default=1.0):
            for a, b in ((index[u], index[v]), (index[v], index[u])):
                rows.append(a)
                cols.append(b)
                weights.append(w)
        rows, cols, weights = np.array(rows, np.int64), np.array(cols, np.int64), np.array(weights, float)
        order = np.lexsort((cols, rows))
        self.cols, weights = cols[order], weights[order]
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
        self.cum = np.cumsum(weights)
        self.keys = rows[order] * n + self.cols  # sorted edge keys for membership tests
        self.n = n

    def sample_neighbours(self, nodes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        start, end = self.indptr[nodes], self.indptr[nodes + 1]
        lo = np.where(start > 0, self.cum[np.maximum(start - 1, 0)], 0.0)
        hi = self.cum[end - 1]
        r = lo + rng.random(len(nodes)) * (hi - lo)
        picked = np.searchsorted(self.cum, r, side="right")
        return self.cols[np.clip(picked, start, end - 1)]

    def is_edge(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        key = a * self.n + b
        pos = np.minimum(np.searchsorted(self.keys, key), len(self.keys) - 1)
        return self.keys[pos] == key if len(self.keys) else np.zeros(len(a), bool)


class Node2Vec(BaseEstimator):
    """node2vec (Grover & Leskovec, 2016): weighted second-order random walks with return parameter ``p`` and
    in-out parameter ``q``, then skip-gram with negative sampling (gensim ``Word2Vec``).

    The walks are drawn for all walkers at once (numpy); the second-order bias is applied by rejection sampling
    against the first-order weighted proposal, which draws exactly from node2vec's transition probabilities.
    Deterministic for a fixed ``seed`` (gensim runs one worker)."""

    def __init__(self, dimensions: int = 32, walk_length: int = 20, num_walks: int = 10, p: float = 1.0,
                 q: float = 1.0, window: int = 5, epochs: int = 3, negative: int = 5, seed: int = 0):
        self.dimensions = dimensions
        self.walk_length = walk_length
        self.num_walks = num_walks
        self.p = p
        self.q = q
        self.window = window
        self.epochs = epochs
        self.negative = negative
        self.seed = seed

    def walks(self, graph: nx.Graph) -> list[list[str]]:
        csr = _CSR(graph)
        rng = np.random.default_rng(self.seed)
        has_edges = np.diff(csr.indptr) > 0
        starts = np.tile(np.arange(csr.n), self.num_walks)
        paths = np.full((len(starts), self.walk_length), -1, np.int64)
        paths[:, 0] = starts
        alive = has_edges[starts]
        max_bias = max(1.0 / self.p, 1.0, 1.0 / self.q)
        for step in range(1, self.walk_length):
            idx = np.flatnonzero(alive)
            cur = paths[idx, step - 1]
            nxt = csr.sample_neighbours(cur, rng)
            if step > 1 and (self.p != 1 or self.q != 1):
                prev = paths[idx, step - 2]
                pending = np.ones(len(idx), bool)
                while True:
                    x = nxt[pending]
                    pv = prev[pending]
                    bias = np.where(x == pv, 1.0 / self.p, np.where(csr.is_edge(pv, x), 1.0, 1.0 / self.q))
                    accept = rng.random(len(x)) * max_bias < bias
                    pos = np.flatnonzero(pending)
                    pending[pos[accept]] = False
                    if not pending.any():
                        break
                    nxt[pending] = csr.sample_neighbours(cur[pending], rng)
            paths[idx, step] = nxt
        names = np.array(csr.nodes, dtype=object)
        return [list(names[row[row >= 0]]) for row in paths]

    def fit(self, graph: nx.Graph) -> "Node2Vec":
        from gensim.models import Word2Vec

        walks = self.walks(graph)
        w2v = Word2Vec(sentences=walks, vector_size=self.dimensions, window=self.window, min_count=0, sg=1,
                       negative=self.negative, workers=1, epochs=self.epochs, seed=self.seed)
        nodes = list(graph.nodes)
        self.embeddings_ = pd.DataFrame(np.stack([w2v.wv[n] for n in nodes]), index=nodes,
                                        columns=[f"e{i}" for i in range(self.dimensions)])
        return self


class SpectralGraphEmbedding(BaseEstimator):
    """Laplacian eigenmaps of the weighted matching graph (scikit-learn ``SpectralEmbedding``)."""

    def __init__(self, dimensions: int = 16, seed: int = 0):
        self.dimensions = dimensions
        self.seed = seed

    def fit(self, graph: nx.Graph) -> "SpectralGraphEmbedding":
        from sklearn.manifold import SpectralEmbedding

        nodes = list(graph.nodes)
        adjacency = nx.to_scipy_sparse_array(graph, nodelist=nodes, weight="weight", format="csr")
        adjacency.indices = adjacency.indices.astype(np.int32)  # scikit-learn accepts 32-bit indices only
        adjacency.indptr = adjacency.indptr.astype(np.int32)
        dims = min(self.dimensions, len(nodes) - 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "graph is not fully connected": isolated nodes get their own axis
            x = SpectralEmbedding(n_components=dims, affinity="precomputed", random_state=self.seed,
                                  eigen_solver="arpack").fit_transform(adjacency)
        self.embeddings_ = pd.DataFrame(x, index=nodes, columns=[f"e{i}" for i in range(dims)])
        return self
