"""Match & Choose's selection engine. It imports no torch, diffusers or transformers: selection on a history starts in
about a second.

* :mod:`.history` — a fine-tuning history (runs, model and dataset features, similarity, probe) and its importers;
* :mod:`.graph` — the matching graph and its embeddings (node2vec, Laplacian eigenmaps);
* :mod:`.collaborative` — what the other datasets' runs say about a model (similarity-weighted quality), and losses;
* :mod:`.baselines` — random, global-best, nearest-dataset, history-weighted, the probe;
* :mod:`.gain` — the probe tier: quality before fine-tuning plus a learned gain;
* :mod:`.mc` — Match & Choose: learners read off the matching graph, stacked;
* :mod:`.transfergraph` — TransferGraph's learners (XGBoost, random forest, linear regression on node2vec(+));
* :mod:`.methods` — the registry of every method (label, kind, what it needs);
* :mod:`.lodo` — leave-one-dataset-out and paired comparisons; :mod:`.shortlist` — the conformal shortlist;
* :mod:`.halving` — successive and ranker-first halving; :mod:`.ablations`; :mod:`.ranking` — the metrics;
* :mod:`.synthetic` — synthetic histories; :mod:`.validation` — the histories that chose and judge the defaults.
"""

from .ablations import ablations
from .baselines import GlobalBest, HistoryWeighted, NearestDataset, Probe, RandomChoice
from .gain import GainModel, ProbeGain
from .history import History, from_transfergraph, load_history
from .lodo import leave_one_dataset_out, paired_comparison
from .mc import MatchAndChoose
from .methods import METHODS, Method, default_methods, method
from .shortlist import conformal_shortlist, shortlist_coverage, shortlist_threshold
from .transfergraph import TransferGraph

__all__ = ["GainModel", "GlobalBest", "History", "HistoryWeighted", "METHODS", "MatchAndChoose", "Method",
           "NearestDataset", "Probe", "ProbeGain", "RandomChoice", "TransferGraph", "ablations", "conformal_shortlist",
           "default_methods", "from_transfergraph", "leave_one_dataset_out", "load_history", "method",
           "paired_comparison", "shortlist_coverage", "shortlist_threshold"]
