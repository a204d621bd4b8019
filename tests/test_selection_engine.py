"""The method registry, paired comparisons, the probe-plus-gain model and TransferGraph's learners."""

import numpy as np
import pandas as pd
import pytest

from mc_bench.errors import HistoryError
from mc_bench.select import (METHODS, GainModel, MatchAndChoose, ProbeGain, TransferGraph, leave_one_dataset_out,
                             method, paired_comparison)
from mc_bench.select.base import Selector
from mc_bench.select.history import History
from mc_bench.select.methods import CHEAP_PROBE, PROBE, RANKED_FIRST, ranked_first_label
from mc_bench.select.synthetic import synthetic_history, synthetic_tables


def test_registry_is_one_declaration_per_method():
    assert len({m.id for m in METHODS}) == len(METHODS) and len({m.label for m in METHODS}) == len(METHODS)
    assert method("mc").label == "M&C" and method("M&C").id == "mc"
    with pytest.raises(ValueError, match="unknown method 'best'.*mc, mc-probe"):
        method("best")
    first = method(ranked_first_label(method("mc")))
    assert first.kind == "multi-fidelity" and first.tier == "fine-tune some"
    assert {m.tier for m in METHODS} >= {"free", "profile only", "cheap probe", "full probe", "fine-tune some",
                                          "fine-tune all"}
    assert {m.label for m in RANKED_FIRST} >= {"M&C", "history-weighted", "nearest-dataset", "global-best"}


def test_what_a_method_needs_is_what_it_reads():
    """A selector that the registry says needs no probe fits and ranks on a history without one; one that needs a
    probe refuses such a history with a HistoryError."""
    plain = synthetic_history(n_models=5, n_datasets=5, seed=2)
    probed = synthetic_history(n_models=5, n_datasets=5, seed=2, probe_noise=0.2)
    for m in METHODS:
        if m.make is None:
            continue
        selector = m.make()
        assert isinstance(selector, Selector)
        fold = (probed if m.probe_table else plain).without_runs("d000")
        assert selector.fit(fold).predict("d000").notna().all(), m.id
        if m.probe_table in (PROBE, CHEAP_PROBE):
            with pytest.raises(HistoryError, match="probe"):
                m.make().fit(plain.without_runs("d000")).predict("d000")


def _lodo(rows):
    return pd.DataFrame([{"method": m, "dataset": d, "hit@1": h, "regret": r} for m, d, h, r in rows])


def test_paired_comparison_hand_computed():
    rows = []
    for j in range(10):  # "better" wins on 8 datasets by 0.1 regret and finds the best model there; ties on 2
        rows += [("M&C", f"d{j}", 0.0, 0.2), ("better", f"d{j}", 1.0 if j < 8 else 0.0, 0.1 if j < 8 else 0.2),
                 ("noisy", f"d{j}", 0.0, 0.2 + (0.1 if j % 2 else -0.1))]
    table = paired_comparison(_lodo(rows), "M&C", seed=0).set_index("method")
    better = table.loc["better"]
    assert better["n_paired"] == 10 and better["top1_diff"] == pytest.approx(0.8)
    assert better["regret_diff"] == pytest.approx(-0.08) and better["regret_diff_ci_high"] < 0
    assert (better["wins"], better["losses"], better["ties"]) == (8, 0, 2) and better["verdict"] == "better"
    noisy = table.loc["noisy"]
    assert noisy["regret_diff_ci_low"] < 0 < noisy["regret_diff_ci_high"] and noisy["verdict"] == "not distinguishable"
    assert (noisy["wins"], noisy["losses"]) == (5, 5)
    again = paired_comparison(_lodo(rows), "M&C", seed=0).set_index("method")
    pd.testing.assert_frame_equal(table, again)  # seeded: the same intervals every time


def test_a_few_wins_among_many_ties_are_not_distinguishable():
    """4 wins and no loss in 32 datasets: the bootstrap interval excludes 0, the signed-rank test (p = 0.125) does
    not."""
    rows = []
    for j in range(32):
        rows += [("M&C", f"d{j}", 0.0, 0.2), ("lucky", f"d{j}", 1.0 if j < 4 else 0.0, 0.0 if j < 4 else 0.2)]
    row = paired_comparison(_lodo(rows), "M&C").set_index("method").loc["lucky"]
    assert row["top1_diff_ci_low"] > 0 and row["wilcoxon_p"] == pytest.approx(0.125)
    assert row["verdict"] == "not distinguishable"


def test_paired_comparison_uses_only_the_datasets_both_ranked():
    rows = [("M&C", "d0", 1.0, 0.0), ("M&C", "d1", 0.0, 0.5), ("other", "d1", 1.0, 0.0)]
    table = paired_comparison(_lodo(rows), "M&C").set_index("method")
    assert table.loc["other", "n_paired"] == 1 and table.loc["other", "top1_diff"] == 1.0
    assert paired_comparison(_lodo(rows), "absent").empty


def _gain_history(ratio_noise=0.0, seed=0):
    """A history whose fine-tuned FID is the pretrained FID times a model-specific ratio."""
    rng = np.random.default_rng(seed)
    models, datasets = [f"m{i}" for i in range(6)], [f"d{j}" for j in range(8)]
    before = rng.uniform(20, 80, size=(6, 8))
    ratio = np.linspace(0.3, 0.9, 6)[:, None] * np.exp(rng.normal(scale=ratio_noise, size=(6, 8)))
    after = before * ratio
    long = lambda v, name: pd.DataFrame({"model": np.repeat(models, 8), "dataset": np.tile(datasets, 6),  # noqa: E731
                                         name: v.reshape(-1)})
    emb = pd.DataFrame({"dataset": datasets, "emb_0": rng.normal(size=8), "emb_1": rng.normal(size=8)})
    return History.from_tables(long(after, "fid"), {"fid": "lower"}, dataset_features=emb,
                               probe=long(before, "fid")), after


def test_gain_model_recovers_a_constant_ratio():
    history, after = _gain_history()
    fold = history.without_runs("d3")
    model = GainModel().fit(fold)
    assert model.log_  # FID is positive: gains are ratios
    predicted = np.exp(model.predict_label(["d3"])[:, 0])
    np.testing.assert_allclose(predicted, after[:, 3], rtol=1e-9)
    lodo = leave_one_dataset_out(history, {"probe + gain": ProbeGain()})
    assert lodo["hit@1"].eq(1.0).all()
    with pytest.raises(HistoryError, match="needs a probe"):
        GainModel().fit(synthetic_history(n_models=4, n_datasets=4))


def test_mc_with_probe_stacks_the_gain_model_where_it_predicts():
    history, _ = _gain_history(ratio_noise=0.05)
    fitted = MatchAndChoose(probe=True).fit(history.without_runs("d0"))
    assert fitted.weights_["gain"] == max(fitted.weights_.values())  # the learner that predicts held-out data best
    lodo = leave_one_dataset_out(history, {"M&C + probe": MatchAndChoose(probe=True)})
    assert lodo["hit@1"].mean() >= 0.75


def test_with_probe_replaces_the_probe():
    t = synthetic_tables(n_models=4, n_datasets=4, probe_noise=0.1, seed=0)
    h = History.from_tables(t["runs"], {"accuracy": "higher"}, t["model_features"], t["dataset_features"])
    assert h.probe is None and h.with_probe(t["probe"]).probe.shape == (4, 4)
    with pytest.raises(HistoryError, match="probe"):
        h.with_probe(t["probe"].drop(columns=["accuracy"]))


@pytest.mark.parametrize("learner", ["xgb", "rf", "lr"])
def test_transfergraph_learners(learner):
    """Each of TransferGraph's regressors fits on node2vec+ features, scores every model, and is deterministic."""
    h = synthetic_history(n_models=8, n_datasets=6, seed=4).without_runs("d001")
    a = TransferGraph(learner=learner).fit(h)
    scores = a.predict("d001")
    assert scores.notna().all() and len(scores) == 8
    assert a.columns_[:3] == ["m_log_params", "m_skill_0", "m_skill_1"] and "pretrain_similarity" in a.columns_
    assert sum(c.startswith("me_") for c in a.columns_) == 128 and sum(c.startswith("de_") for c in a.columns_) == 128
    pd.testing.assert_series_equal(scores, TransferGraph(learner=learner).fit(h).predict("d001"))


def test_transfergraph_linear_regression_survives_badly_scaled_features():
    """TransferGraph's text records put memory in bytes (~4e8) beside unit-scale embeddings: plain least squares fits
    next to nothing there (R² 0.01 here), the kit's standardised one recovers the signal."""
    from mc_bench.select.transfergraph import regressor

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1200, 260))
    x[:, 0] = 4e8 + 2e8 * rng.normal(size=1200)
    x[:, 1] = 3000 * rng.random(1200)
    y = 0.1 * x[:, 2:10].sum(axis=1) + rng.normal(scale=0.1, size=1200)
    assert regressor("lr").fit(x, y).score(x, y) > 0.85


def test_transfergraph_node2vec_walks_are_uniform_and_node2vec_plus_weighted():
    from mc_bench.select.graph import Node2Vec
    import networkx as nx

    g = nx.Graph()
    g.add_edge("a", "b", weight=100.0)
    g.add_edge("a", "c", weight=1.0)
    firsts = lambda weighted: [w[1] for w in Node2Vec(walk_length=2, num_walks=400, weighted=weighted)  # noqa: E731
                               .walks(g) if w[0] == "a"]
    assert firsts(True).count("b") > 0.95 * 400 and 0.35 < firsts(False).count("b") / 400 < 0.65


def test_a_directed_walk_ends_where_the_edges_end():
    import scipy.sparse as sp

    from mc_bench.select.graph import Node2Vec, SparseGraph
    from mc_bench.select.transfergraph import transfergraph_graph

    chain = SparseGraph(["a", "b", "c"], sp.csr_matrix(np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0.0]])))
    walks = Node2Vec(walk_length=5, num_walks=2).walks(chain)
    assert walks[:3] == [["a", "b", "c"], ["b", "c"], ["c"]]
    h = synthetic_history(n_models=5, n_datasets=5, seed=1)
    graph = transfergraph_graph(h, directed=True)
    adjacency = graph.adjacency.toarray()
    n_models = len(h.models)
    assert not adjacency[n_models:, :n_models].any()  # no edge from a dataset back to a model
    assert not np.tril(adjacency[n_models:, n_models:]).any()  # datasets: earlier -> later only
    assert TransferGraph(directed=True).fit(h.without_runs("d000")).predict("d000").notna().all()
