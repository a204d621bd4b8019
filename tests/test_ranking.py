"""Selection metrics against hand-computed cases, and the random baseline's exact expectation."""

from itertools import permutations

import numpy as np
import pandas as pd
import pytest

from mc_bench.select.ranking import bootstrap_summary, random_expectation, ranking_metrics


def test_hand_computed_higher_is_better():
    quality = [0.9, 0.5, 0.7, 0.95]
    m = ranking_metrics([3, 2, 1, 0], quality, higher_is_better=True, ks=(1, 3, 5))
    assert m["hit@1"] == 0 and m["hit@3"] == 0 and m["hit@5"] == 1
    assert m["top@1"] == 0.9 and m["top@3"] == 0.9 and m["top@5"] == 0.95
    assert m["rel@1"] == pytest.approx(0.9 / 0.95)
    assert m["regret"] == pytest.approx(0.05 / 0.95)
    assert m["spearman"] == pytest.approx(-0.4)
    assert m["kendall"] == pytest.approx(-1 / 3)
    assert m["pearson"] == pytest.approx(np.corrcoef([3, 2, 1, 0], quality)[0, 1])
    gains = np.array([0.4, 0.0, 0.2, 0.45]) / 0.45
    assert m["ndcg@1"] == pytest.approx(gains[0])
    dcg3 = gains[0] + gains[1] / np.log2(3) + gains[2] / 2
    idcg3 = gains[3] + gains[0] / np.log2(3) + gains[2] / 2
    assert m["ndcg@3"] == pytest.approx(dcg3 / idcg3)


def test_hand_computed_lower_is_better():
    fid = [10.0, 20.0, 5.0]
    good = ranking_metrics([1, 0, 2], fid, higher_is_better=False, ks=(1,))
    assert good["hit@1"] == 1 and good["rel@1"] == 1 and good["regret"] == 0 and good["top@1"] == 5
    bad = ranking_metrics([2, 1, 0], fid, higher_is_better=False, ks=(1, 2))
    assert bad["hit@1"] == 0 and bad["top@1"] == 10 and bad["rel@1"] == pytest.approx(0.5)
    assert bad["regret"] == pytest.approx(1.0)  # (10 - 5) / 5
    assert bad["top@2"] == 10 and bad["spearman"] == pytest.approx(-0.5)  # scores vs -fid


def test_ties_for_best_count_as_hits():
    assert ranking_metrics([1, 0, 2], [0.8, 0.9, 0.9], ks=(1,))["hit@1"] == 1


def test_random_expectation_hand_computed():
    r = random_expectation([1, 2, 3, 4], True, ks=(1, 2, 3))
    assert r["hit@1"] == pytest.approx(0.25) and r["hit@3"] == pytest.approx(0.75)
    assert r["top@1"] == pytest.approx(2.5)
    assert r["top@2"] == pytest.approx(20 / 6)  # E[max of 2 of 4] = (1*2 + 2*3 + 3*4) / 6
    assert r["regret"] == pytest.approx(0.375)
    assert r["pearson"] == 0 and r["spearman"] == 0


@pytest.mark.parametrize("higher", [True, False])
def test_random_expectation_equals_mean_over_all_orderings(higher):
    quality = np.array([3.0, 7.0, 7.0, 2.0, 5.0])  # a tie for best
    keys = ["hit@1", "hit@2", "hit@3", "top@1", "top@2", "top@3", "rel@1", "rel@3", "regret", "ndcg@1", "ndcg@3"]
    per_order = [ranking_metrics(np.array(p, float), quality, higher, ks=(1, 2, 3))
                 for p in permutations(range(5))]
    expected = random_expectation(quality, higher, ks=(1, 2, 3))
    for key in keys:
        assert expected[key] == pytest.approx(np.mean([m[key] for m in per_order])), key


def test_k_larger_than_the_number_of_models():
    assert ranking_metrics([0, 1], [1.0, 2.0], ks=(5,))["hit@5"] == 1
    assert random_expectation([1.0, 2.0], ks=(5,))["hit@5"] == 1


def test_bootstrap_summary():
    df = pd.DataFrame({"method": ["a"] * 4 + ["b"] * 4, "x": [1, 1, 1, 1, 0, 1, 0, 1]})
    s = bootstrap_summary(df, ["x"], n_boot=200).set_index("method")
    assert s.loc["a", "mean"] == 1 and s.loc["a", "ci_low"] == 1
    assert s.loc["b", "mean"] == 0.5 and 0 <= s.loc["b", "ci_low"] < 0.5 < s.loc["b", "ci_high"] <= 1
    assert s.loc["b", "n_datasets"] == 4
