"""The method registry: every way of choosing a model that the kit judges, declared once.

Each :class:`Method` has an ``id`` (for the command line), the ``label`` its rows carry in every table, a ``kind``
(M&C, baseline, TransferGraph, multi-fidelity) and what it ``needs`` for a new dataset — a ``profile`` (features
and similarity), a ``probe`` (every pretrained candidate sampled and evaluated) or the ``cheap probe`` (the same with
a quarter of the samples), or ``fine-tunes`` on the dataset itself. Costs (:mod:`mc_bench.study.costs`), the study's
tables and report, and the CLI read them from here; the cost tier of the frontier figure follows from ``needs``.

Selectors are made by ``make()``; multi-fidelity methods (successive halving, a ranker's top half fine-tuned,
exhaustive fine-tuning) are judged from measured fine-tuning tables (:mod:`mc_bench.select.halving`) and have no
``make``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .base import Selector
from .baselines import GlobalBest, HistoryWeighted, NearestDataset, Probe, RandomChoice
from .gain import ProbeGain
from .mc import MatchAndChoose
from .transfergraph import TransferGraph

PROFILE, PROBE, CHEAP_PROBE, FINE_TUNES = "profile", "probe", "cheap probe", "fine-tunes"
CHEAP_PROBE_SAMPLES = 16  # samples per candidate of the cheap probe (the full probe: the study's n_samples)
TIERS = ("free", "profile only", "cheap probe", "full probe", "fine-tune some", "fine-tune all")


@dataclass(frozen=True)
class Method:
    id: str
    label: str
    kind: str
    needs: tuple[str, ...]
    description: str
    make: Callable[[], Selector] | None = None
    ranked_first: bool = False  # its ranking is also judged as the first rung of halving (its top half fine-tuned)
    in_study: bool = True  # among a study's default methods (TransferGraph's other learners: its benchmark only)

    @property
    def tier(self) -> str:
        """What choosing with it costs, coarsely: the frontier figure's colour."""
        if FINE_TUNES in self.needs:
            return "fine-tune all" if self.id == "exhaustive" else "fine-tune some"
        if PROBE in self.needs:
            return "full probe"
        if CHEAP_PROBE in self.needs:
            return "cheap probe"
        return "profile only" if PROFILE in self.needs else "free"

    @property
    def probe_table(self) -> str | None:
        """Which probe the method reads: ``probe``, ``cheap probe`` or none."""
        return PROBE if PROBE in self.needs else (CHEAP_PROBE if CHEAP_PROBE in self.needs else None)


def _tg(learner: str, embedding: str, name: str, in_study: bool) -> Method:
    return Method(f"transfergraph-{learner}-{embedding}", f"TransferGraph ({name}, {embedding})", "TransferGraph",
                  (PROFILE,), f"TransferGraph's {name} regressor on {embedding} embeddings and all features "
                  "(its 'all_normalize_without_transfer' setting)",
                  lambda: TransferGraph(learner=learner, embedding=embedding), in_study=in_study)


METHODS: tuple[Method, ...] = (
    Method("mc", "M&C", "M&C", (PROFILE,), "Match & Choose: collaborative learners and a LightGBM ranker on the "
           "matching graph, stacked", MatchAndChoose, ranked_first=True),
    Method("mc-probe", "M&C + probe", "M&C", (PROFILE, PROBE), "M&C with the probe and the probe-plus-gain model "
           "among its stacked learners", lambda: MatchAndChoose(probe=True), ranked_first=True),
    Method("mc-cheap-probe", "M&C + cheap probe", "M&C", (PROFILE, CHEAP_PROBE), "M&C + probe on the cheap probe "
           "(16 samples per candidate)", lambda: MatchAndChoose(probe=True), ranked_first=True),
    Method("metadata-only", "metadata-only", "baseline", (PROFILE,), "M&C's booster on model and dataset features "
           "alone (no collaborative scores)",
           lambda: MatchAndChoose(learners=("booster",), collaborative_features=False)),
    Method("history-weighted", "history-weighted", "baseline", (PROFILE,), "similarity-weighted mean quality over "
           "the history (collaborative filtering)", HistoryWeighted, ranked_first=True),
    Method("nearest-dataset", "nearest-dataset", "baseline", (PROFILE,), "the ranking on the most similar dataset",
           NearestDataset, ranked_first=True),
    Method("global-best", "global-best", "baseline", (), "the best model on average over the history", GlobalBest,
           ranked_first=True),
    Method("random", "random", "baseline", (), "a uniformly random pick (its exact expectation)", RandomChoice),
    Method("probe", "probe", "baseline", (PROBE,), "every pretrained candidate sampled (64 images) and evaluated: "
           "the best pretrained model", Probe),
    Method("cheap-probe", "cheap probe", "baseline", (CHEAP_PROBE,), "the probe with 16 samples per candidate",
           Probe),
    Method("probe-gain", "probe + gain", "baseline", (PROFILE, PROBE), "the probe plus the fine-tuning gain the "
           "model showed on similar datasets", ProbeGain),
    _tg("xgb", "node2vec+", "XGBoost", True),
    _tg("xgb", "node2vec", "XGBoost", False),
    _tg("rf", "node2vec+", "random forest", False),
    _tg("rf", "node2vec", "random forest", False),
    _tg("lr", "node2vec+", "linear regression", False),
    _tg("lr", "node2vec", "linear regression", False),
    Method("successive-halving", "successive halving", "multi-fidelity", (FINE_TUNES,), "short fine-tunes of every "
           "candidate, the better 1/eta continue to the full budget"),
    Method("probe-first-halving", "probe-first halving", "multi-fidelity", (PROBE, FINE_TUNES), "the probe, then "
           "the better 1/eta fine-tuned to the full budget"),
    Method("exhaustive", "exhaustive fine-tuning", "multi-fidelity", (FINE_TUNES,), "fine-tune, sample and evaluate "
           "every candidate (defines the label)"),
)
RANKED_FIRST = tuple(m for m in METHODS if m.ranked_first)


def ranked_first_label(method: Method) -> str:
    """The label of a ranker's first-rung halving: its top 1/eta fine-tuned, the best kept."""
    return f"{method.label}-first halving"


def method(key: str) -> Method:
    """A registered method by id or label (a :class:`ValueError` listing the ids otherwise)."""
    for m in METHODS:
        if key in (m.id, m.label):
            return m
    for m in RANKED_FIRST:
        if key == ranked_first_label(m):
            return Method(f"{m.id}-first-halving", key, "multi-fidelity", m.needs + (FINE_TUNES,),
                          f"{m.label}'s ranking, then its top 1/eta fine-tuned to the full budget")
    raise ValueError(f"unknown method {key!r}; known: {', '.join(m.id for m in METHODS)}")


def default_methods(probe: bool = False) -> dict[str, Selector]:
    """A study's selectors by label: M&C and every baseline a practitioner would use, TransferGraph's XGBoost on
    node2vec+, and with ``probe`` (a history with a probe table) the probe-tier methods that read it. (The cheap
    probe's methods read another probe table: :func:`mc_bench.study.selection.study_histories` gives them theirs.)"""
    have = {PROFILE, PROBE} if probe else {PROFILE}
    return {m.label: m.make() for m in METHODS
            if m.make is not None and m.in_study and set(m.needs) <= have}
