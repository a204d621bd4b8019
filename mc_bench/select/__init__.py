"""Match & Choose's selection engine: a fine-tuning history (:mod:`.history`), the matching graph and its
embeddings (:mod:`.graph`), the ranker, the baselines, leave-one-dataset-out and the conformal shortlist
(:mod:`.choose`), ranking metrics (:mod:`.ranking`), synthetic histories (:mod:`.synthetic`), and the histories that
chose and judge its defaults (:mod:`.validation`). It imports no torch, diffusers or transformers: selection on a
history starts in about a second."""

from .choose import (GlobalBest, HistoryWeighted, MatchAndChoose, NearestDataset, RandomChoice, ablations,
                     conformal_shortlist, default_methods, leave_one_dataset_out, shortlist_coverage,
                     shortlist_threshold)
from .history import History, from_transfergraph, load_history

__all__ = ["GlobalBest", "History", "HistoryWeighted", "MatchAndChoose", "NearestDataset", "RandomChoice",
           "ablations", "conformal_shortlist", "default_methods", "from_transfergraph", "leave_one_dataset_out",
           "load_history", "shortlist_coverage", "shortlist_threshold"]
