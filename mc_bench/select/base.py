"""What every selector shares: the scikit-learn estimator API and a ranking view of its scores.

A selector learns from a :class:`~mc_bench.select.history.History` with ``fit(history)`` (returns ``self``; fitted
attributes end in ``_``; ``__init__`` only stores parameters) and scores the history's models for a dataset with
``predict(dataset)`` (one score per model, larger = recommended). What a selector needs to know about a new dataset
(its profile, a probe of the pretrained candidates) is declared once, in :mod:`mc_bench.select.methods`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

# learned features are rounded to this many decimals so that last-bit differences between machines (BLAS, thread
# counts) cannot move a tree split
FEATURE_DECIMALS = 9


class Selector(BaseEstimator):
    """Base class of every selector (see the module docstring)."""

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
