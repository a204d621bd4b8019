"""Match: the matching graph of models and datasets, and graph embeddings learned on it.

Nodes are ``model:<id>`` and ``dataset:<id>`` (attribute ``kind``). Edges (attribute ``kind``):

``performance``  model–dataset, weight = the model's quality after fine-tuning on the dataset, min–max normalised
                 within the dataset (direction-aware); only pairs above ``edge_threshold`` become edges
                 (TransferGraph keeps normalised quality > 0.5).
``pretrain``     model–dataset, weight 1, to the dataset(s) the model was pretrained on (when known).
``similarity``   dataset–dataset, weight = dataset similarity in [0, 1], to each dataset's ``data_knn`` nearest
                 datasets (or every pair above ``data_threshold``).

The graph is built from a :class:`~mc_bench.select.history.History` as it is: a dataset whose runs were removed
(``history.without_runs``) is a node with its similarity edges only. Graph embeddings:
:class:`Node2Vec` (weighted, biased second-order random walks, then gensim's skip-gram) and
:class:`SpectralGraphEmbedding` (scikit-learn's Laplacian eigenmaps) as a cheap alternative.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import networkx as nx
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.base import BaseEstimator

from .history import History


def model_node(model: str) -> str:
    return f"model:{model}"


def dataset_node(dataset: str) -> str:
    return f"dataset:{dataset}"


@dataclass(frozen=True)
class SparseGraph:
    """The matching graph as graph embeddings consume it: node names and a symmetric weighted adjacency (scipy CSR),
    built without networkx (fast for thousands of models). ``kind`` holds each node's kind (model / dataset)."""

    nodes: list[str]
    adjacency: sp.csr_matrix

    @classmethod
    def from_networkx(cls, graph: nx.Graph) -> "SparseGraph":
        nodes = list(graph.nodes)
        adjacency = nx.to_scipy_sparse_array(graph, nodelist=nodes, weight="weight", format="csr")
        return cls(nodes, sp.csr_matrix(adjacency))


def matching_edge_index(history: History, edge_threshold: float, data_knn: int | None,
                         data_threshold: float | None):
    """Nodes ``(name, kind)`` and edges as integer arrays ``(u, v, weight, kind)`` into the node list."""
    sim = history.dataset_similarity()
    models = list(history.model_features.index)
    dataset_ids = list(dict.fromkeys([*history.dataset_features.index, *(sim.index if sim is not None else [])]))
    nodes = [(model_node(m), "model") for m in models] + [(dataset_node(d), "dataset") for d in dataset_ids]
    model_pos = {m: i for i, m in enumerate(models)}
    data_pos = {d: len(models) + j for j, d in enumerate(dataset_ids)}
    norm = history.normalised()
    values = norm.to_numpy(dtype=float)
    rows, cols = np.nonzero(np.nan_to_num(values, nan=-1.0) > edge_threshold)
    row_nodes = np.array([model_pos[m] for m in norm.index], dtype=np.int64)
    col_nodes = np.array([data_pos[d] for d in norm.columns], dtype=np.int64)
    us, vs, ws, kinds = [row_nodes[rows]], [col_nodes[cols]], [values[rows, cols]], [np.zeros(len(rows), np.int8)]
    performance = set(zip(us[0].tolist(), vs[0].tolist()))
    pretrain = [(model_pos[m], data_pos[d]) for m, ds in history.pretrain.items() for d in ds
                if m in model_pos and d in data_pos and (model_pos[m], data_pos[d]) not in performance]
    if pretrain:
        us.append(np.array([u for u, _ in pretrain], np.int64))
        vs.append(np.array([v for _, v in pretrain], np.int64))
        ws.append(np.ones(len(pretrain)))
        kinds.append(np.ones(len(pretrain), np.int8))
    if sim is not None:
        s = sim.to_numpy(dtype=float).copy()
        np.fill_diagonal(s, -np.inf)
        ids = [data_pos[d] for d in sim.index]
        pairs: dict[tuple[int, int], float] = {}
        for i in range(len(ids)):
            if data_threshold is not None:
                neighbours = np.flatnonzero(s[i] > data_threshold)
            else:
                neighbours = np.argsort(-s[i], kind="stable")[: data_knn or 0]
            for j in neighbours:
                pairs.setdefault((min(i, j), max(i, j)), float(s[i, j]))
        if pairs:
            us.append(np.array([ids[a] for a, _ in pairs], np.int64))
            vs.append(np.array([ids[b] for _, b in pairs], np.int64))
            ws.append(np.array(list(pairs.values())))
            kinds.append(np.full(len(pairs), 2, np.int8))
    return nodes, np.concatenate(us), np.concatenate(vs), np.concatenate(ws), np.concatenate(kinds)


EDGE_KINDS = ("performance", "pretrain", "similarity")


def matching_edges(history: History, edge_threshold: float = 0.5, data_knn: int | None = 5,
                   data_threshold: float | None = None) -> tuple[list[tuple[str, str]], pd.DataFrame]:
    """The matching graph's nodes ``(name, kind)`` and edges (``u, v, weight, kind``): the one definition that both
    :func:`build_matching_graph` and :func:`matching_sparse_graph` use (see the module docstring)."""
    nodes, u, v, w, kind = matching_edge_index(history, edge_threshold, data_knn, data_threshold)
    names = [n for n, _ in nodes]
    return nodes, pd.DataFrame({"u": [names[i] for i in u], "v": [names[i] for i in v], "weight": w,
                                "kind": [EDGE_KINDS[k] for k in kind]})


def build_matching_graph(history: History, edge_threshold: float = 0.5, data_knn: int | None = 5,
                         data_threshold: float | None = None) -> nx.Graph:
    """The matching graph of a history as a networkx graph, with node features as ``f_*`` attributes (see the
    module docstring)."""
    nodes, edges = matching_edges(history, edge_threshold, data_knn, data_threshold)
    graph = nx.Graph()
    for name, kind in nodes:
        ident = name.split(":", 1)[1]
        table = history.model_features if kind == "model" else history.dataset_features
        feats = table.loc[ident] if ident in table.index else pd.Series(dtype=float)
        graph.add_node(name, kind=kind, id=ident, **_plain(feats))
    for u, v, w, kind in edges.itertuples(index=False):
        graph.add_edge(u, v, weight=float(w), kind=kind)
    return graph


def matching_sparse_graph(history: History, edge_threshold: float = 0.5, data_knn: int | None = 5,
                          data_threshold: float | None = None) -> SparseGraph:
    """The same graph as :func:`build_matching_graph`, as a :class:`SparseGraph` (no networkx objects)."""
    nodes, u, v, w, _ = matching_edge_index(history, edge_threshold, data_knn, data_threshold)
    n = len(nodes)
    adjacency = sp.coo_matrix((np.concatenate([w, w]), (np.concatenate([u, v]), np.concatenate([v, u]))),
                              shape=(n, n)).tocsr()
    adjacency.sum_duplicates()
    return SparseGraph([name for name, _ in nodes], adjacency)


def _as_sparse(graph) -> SparseGraph:
    return graph if isinstance(graph, SparseGraph) else SparseGraph.from_networkx(graph)


def _plain(feats: pd.Series) -> dict:
    return {f"f_{k}": (v.item() if hasattr(v, "item") else v) for k, v in feats.items() if pd.notna(v)}


# ------------------------------------------------------------------------------------------- embeddings


class _CSR:
    """A weighted graph in compressed sparse row form, for vectorised random walks."""

    def __init__(self, graph, weighted: bool = True):
        graph = _as_sparse(graph)
        self.nodes = list(graph.nodes)
        adjacency = sp.csr_matrix(graph.adjacency)
        adjacency.sort_indices()
        if not weighted:  # every edge counts the same
            adjacency.data = np.ones_like(adjacency.data)
        n = len(self.nodes)
        self.cols = adjacency.indices.astype(np.int64)
        self.indptr = adjacency.indptr.astype(np.int64)
        self.cum = np.cumsum(adjacency.data.astype(float))
        rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(self.indptr))
        self.keys = rows * n + self.cols  # sorted edge keys for membership tests
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
    in-out parameter ``q``, then skip-gram with negative sampling (gensim ``Word2Vec``). ``weighted=False`` draws
    each step uniformly over the neighbours, as TransferGraph's "node2vec" does; weighted walks with ``p = q = 1``
    are its "node2vec+" (pecanpy's node2vec+ with its default ``gamma`` reduces to them).

    The walks are drawn for all walkers at once (numpy); the second-order bias is applied by rejection sampling
    against the first-order weighted proposal, which draws exactly from node2vec's transition probabilities.
    Deterministic for a fixed ``seed`` (gensim runs one worker)."""

    def __init__(self, dimensions: int = 32, walk_length: int = 20, num_walks: int = 10, p: float = 1.0,
                 q: float = 1.0, window: int = 5, epochs: int = 3, negative: int = 5, weighted: bool = True,
                 seed: int = 0):
        self.dimensions = dimensions
        self.walk_length = walk_length
        self.num_walks = num_walks
        self.p = p
        self.q = q
        self.window = window
        self.epochs = epochs
        self.negative = negative
        self.weighted = weighted
        self.seed = seed

    def walks(self, graph) -> list[list[str]]:
        """Node names of ``num_walks`` walks from every node (a networkx graph or a :class:`SparseGraph`)."""
        csr = _CSR(graph, self.weighted)
        rng = np.random.default_rng(self.seed)
        has_edges = np.diff(csr.indptr) > 0
        starts = np.tile(np.arange(csr.n), self.num_walks)
        paths = np.full((len(starts), self.walk_length), -1, np.int64)
        paths[:, 0] = starts
        alive = has_edges[starts]
        max_bias = max(1.0 / self.p, 1.0, 1.0 / self.q)
        for step in range(1, self.walk_length):
            alive &= has_edges[np.maximum(paths[:, step - 1], 0)]  # a walk ends at a node without out-edges
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

    def fit(self, graph) -> "Node2Vec":
        from gensim.models import Word2Vec

        walks = self.walks(graph)
        w2v = Word2Vec(sentences=walks, vector_size=self.dimensions, window=self.window, min_count=0, sg=1,
                       negative=self.negative, workers=1, epochs=self.epochs, seed=self.seed)
        nodes = list(graph.nodes)
        self.embeddings_ = pd.DataFrame(np.stack([w2v.wv[n] for n in nodes]), index=nodes,
                                        columns=[f"e{i}" for i in range(self.dimensions)])
        return self


class SpectralGraphEmbedding(BaseEstimator):
    """Laplacian eigenmaps of the weighted matching graph (scikit-learn's ``spectral_embedding``: eigenvectors of
    the normalised Laplacian, ARPACK with a seeded start vector, signs fixed). A closed form, so the same graph
    gives the same embedding up to rounding on any machine — unlike a skip-gram trained by float32 SGD."""

    def __init__(self, dimensions: int = 16, seed: int = 0):
        self.dimensions = dimensions
        self.seed = seed

    def fit(self, graph) -> "SpectralGraphEmbedding":
        from sklearn.manifold import spectral_embedding

        graph = _as_sparse(graph)
        adjacency = sp.csr_matrix(graph.adjacency, dtype=float)
        adjacency.indices = adjacency.indices.astype(np.int32)  # scikit-learn accepts 32-bit indices only
        adjacency.indptr = adjacency.indptr.astype(np.int32)
        dims = min(self.dimensions, len(graph.nodes) - 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "graph is not fully connected": isolated nodes get their own axis
            x = spectral_embedding(adjacency, n_components=dims, eigen_solver="arpack", random_state=self.seed,
                                   drop_first=False)
        self.embeddings_ = pd.DataFrame(x, index=list(graph.nodes), columns=[f"e{i}" for i in range(dims)])
        return self
