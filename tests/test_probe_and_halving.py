"""The probe baseline, M&C + probe, and successive halving."""

import numpy as np
import pandas as pd
import pytest

from mc_bench.errors import HistoryError
from mc_bench.select import MatchAndChoose, Probe, default_methods, leave_one_dataset_out
from mc_bench.select.halving import halving_evaluation, halving_schedule, ranked_halving_evaluation, successive_halving
from mc_bench.select.history import History, load_history
from mc_bench.select.synthetic import synthetic_history, synthetic_tables


def _mean(lodo, method, metric):
    return float(lodo.loc[lodo["method"] == method, metric].mean())


def test_probe_table_is_kept_for_a_held_out_dataset():
    h = synthetic_history(n_models=8, n_datasets=6, probe_noise=0.5, seed=3)
    assert h.probe.shape == (8, 6) and list(h.probe.index) == h.models
    fold = h.without_runs("d000")
    assert "d000" not in fold.datasets and "d000" in fold.probe.columns  # a probe is measurable on a new dataset
    sub = h.subset(models=h.models[:4])
    assert list(sub.probe.index) == h.models[:4]
    norm = h.probe_normalised("d001")
    assert norm.max() == 1.0 and norm.min() == 0.0
    assert norm.idxmax() == h.probe["d001"].idxmax()  # higher is better here


def test_probe_normalised_follows_the_direction():
    t = synthetic_tables(n_models=5, n_datasets=4, probe_noise=0.1, seed=0)
    runs = t["runs"].rename(columns={"accuracy": "fid"})
    probe = t["probe"].rename(columns={"accuracy": "fid"})
    h = History.from_tables(runs, {"fid": "lower"}, probe=probe)
    assert h.probe_normalised("d000").idxmax() == h.probe["d000"].idxmin()


def test_probe_selector_ranks_by_the_pretrained_quality():
    t = synthetic_tables(n_models=8, n_datasets=6, seed=1)
    exact = t["runs"].copy()  # a probe equal to the label: the probe then picks the best model everywhere
    h = History.from_tables(t["runs"], {"accuracy": "higher"}, t["model_features"], t["dataset_features"], probe=exact)
    lodo = leave_one_dataset_out(h, {"probe": Probe()})
    assert lodo["hit@1"].eq(1.0).all() and lodo["regret"].abs().max() < 1e-12
    with pytest.raises(HistoryError, match="no probe for dataset"):
        Probe().fit(synthetic_history(n_models=4, n_datasets=4)).predict("d000")


def test_mc_with_probe_uses_an_informative_probe_and_ignores_noise():
    kwargs = dict(n_models=20, n_datasets=16, n_domains=4, noise=0.3, seed=5)
    methods = {"M&C": MatchAndChoose(), "M&C + probe": MatchAndChoose(probe=True), "probe": Probe()}
    good = leave_one_dataset_out(synthetic_history(probe_noise=0.2, **kwargs), methods)
    assert _mean(good, "M&C + probe", "regret") < _mean(good, "M&C", "regret")
    assert _mean(good, "M&C + probe", "hit@1") >= _mean(good, "M&C", "hit@1")
    fitted = MatchAndChoose(probe=True).fit(synthetic_history(probe_noise=0.2, **kwargs))
    assert fitted.weights_["probe"] + fitted.weights_["gain"] > 0 and "probe" in fitted.state_["feature_names"]
    # a probe that is pure noise: the inner choice weighs it little, and M&C + probe stays near M&C
    noisy = leave_one_dataset_out(synthetic_history(probe_noise=50.0, **kwargs), methods)
    assert _mean(noisy, "M&C + probe", "regret") <= _mean(noisy, "M&C", "regret") + 0.02
    assert _mean(noisy, "M&C + probe", "regret") < _mean(noisy, "probe", "regret")


def test_default_methods_with_probe():
    names = list(default_methods(probe=True))
    assert names[:2] == ["M&C", "M&C + probe"] and {"probe", "probe + gain"} <= set(names)
    assert "probe" not in default_methods() and "M&C + cheap probe" not in names


def test_probe_table_errors_and_loading(tmp_path):
    t = synthetic_tables(n_models=4, n_datasets=4, probe_noise=0.1, seed=0)
    bad = t["probe"].copy()
    bad.loc[0, "accuracy"] = np.nan
    with pytest.raises(HistoryError, match="drop probes that were not computed"):
        History.from_tables(t["runs"], {"accuracy": "higher"}, probe=bad)
    with pytest.raises(HistoryError, match="column 'accuracy' is missing"):
        History.from_tables(t["runs"], {"accuracy": "higher"}, probe=t["probe"].drop(columns="accuracy"))
    unknown = pd.concat([t["probe"], pd.DataFrame({"model": ["zz"], "dataset": ["d000"], "accuracy": [0.5]})])
    with pytest.raises(HistoryError, match="have probes but no runs"):
        History.from_tables(t["runs"], {"accuracy": "higher"}, probe=unknown)
    for name in ("runs", "model_features", "dataset_features", "probe"):
        t[name].to_csv(tmp_path / f"{name}.csv", index=False)
    (tmp_path / "history.yaml").write_text("runs: runs.csv\nquality: {accuracy: higher}\nmodel_features: "
                                           "model_features.csv\ndataset_features: dataset_features.csv\n"
                                           "probe: probe.csv\n")
    h = load_history(tmp_path)
    assert h.probe.shape == (4, 4)
    emb = {c: 0.0 for c in h.dataset_features.columns if c.startswith("emb_")} | {"domain": "domain0"}
    new = h.with_dataset("fresh", emb,
                         probe={m: 0.1 * i for i, m in enumerate(h.models)})
    assert new.probe_normalised("fresh").idxmax() == h.models[-1]
    with pytest.raises(HistoryError, match="probe every candidate"):
        h.with_dataset("fresh2", emb,
                       probe={h.models[0]: 1.0})


# ------------------------------------------------------------------------------------------ successive halving


def test_halving_schedule():
    assert halving_schedule(10, [25, 50, 100], eta=2) == [10, 5, 3]
    assert halving_schedule(10, [25, 100], eta=3) == [10, 4]
    assert halving_schedule(1, [0, 25, 100]) == [1, 1, 1]


def test_successive_halving_keeps_the_better_half_and_counts_every_run():
    models = list("abcdef")
    # lower is better; at 25 steps the true winner "f" looks mediocre but survives (3rd of 6), then wins at 100
    r25 = pd.Series([1.0, 2.0, 5.0, 6.0, 7.0, 3.0], index=models)
    r100 = pd.Series([4.0, 3.0, 0.5, 0.4, 0.3, 0.1], index=models)
    cost25 = pd.Series(1.0, index=models)
    cost100 = pd.Series(10.0, index=models)
    scores, cost, trace = successive_halving({25: r25, 100: r100}, {25: cost25, 100: cost100},
                                             higher_is_better=False, eta=2)
    assert trace == [models, ["a", "b", "f"]]
    assert cost == 6 * 1.0 + 3 * 10.0
    assert scores.idxmax() == "f"
    assert (scores[["a", "b", "f"]].min() > scores[["c", "d", "e"]].max())  # survivors outrank the dropped
    assert list(scores[["a", "b", "f"]].sort_values().index) == ["a", "b", "f"]  # ordered by the 100-step label


def test_halving_evaluation_against_the_full_budget():
    rng = np.random.default_rng(0)
    models, datasets = [f"m{i}" for i in range(8)], [f"d{j}" for j in range(5)]
    full = pd.DataFrame(rng.uniform(10, 50, size=(8, 5)), index=models, columns=datasets)
    seconds = {b: pd.DataFrame(float(b + 1), index=models, columns=datasets) for b in (0, 100)}
    # a rung that tells the truth: SH always ends on the best model
    table = halving_evaluation({0: full, 100: full}, seconds, higher_is_better=False, eta=2)
    assert len(table) == 5 and table["hit@1"].eq(1.0).all() and table["regret"].eq(0.0).all()
    assert table["seconds"].eq(8 * 1.0 + 4 * 101.0).all() and table["runs"].eq(12).all()
    assert table["budgets"].iloc[0] == "8@0→4@100"
    # a rung that is reversed drops the best model first: SH's pick is then never the best
    reversed_ = halving_evaluation({0: -full, 100: full}, seconds, higher_is_better=False, eta=2)
    assert reversed_["hit@1"].eq(0.0).all() and (reversed_["regret"] > 0).all()


def test_ranked_halving_fine_tunes_the_selectors_top_half():
    rng = np.random.default_rng(1)
    models, datasets = [f"m{i}" for i in range(6)], [f"d{j}" for j in range(4)]
    full = pd.DataFrame(rng.uniform(10, 50, size=(6, 4)), index=models, columns=datasets)  # FID: lower is better
    seconds = pd.DataFrame(rng.uniform(5, 9, size=(6, 4)), index=models, columns=datasets)
    # scores that put the best model 3rd of 6 (larger = better): it is in the top half, so it is found
    scores = -full.rank()  # the best model gets the highest score
    for d in datasets:
        order = full[d].sort_values().index
        scores.loc[order[0], d], scores.loc[order[2], d] = scores.loc[order[2], d], scores.loc[order[0], d]
    table = ranked_halving_evaluation(scores, 0.6, full, seconds, higher_is_better=False, eta=2, steps=100,
                                      method="x-first")
    assert table["hit@1"].eq(1.0).all() and table["runs"].eq(3).all() and (table["method"] == "x-first").all()
    assert table["budgets"].eq("6@0→3@100").all()
    for _, row in table.iterrows():  # the selector's cost, then the three fine-tunes of its top half
        top = scores[row["dataset"]].sort_values(ascending=False).index[:3]
        assert row["seconds"] == pytest.approx(0.6 + seconds.loc[top, row["dataset"]].sum())
    # scores that put the best model last: it is never fine-tuned, so never chosen
    table = ranked_halving_evaluation(full, 0.0, full, seconds, higher_is_better=False, eta=2)
    assert table["hit@1"].eq(0.0).all() and (table["regret"] > 0).all()
