"""History tables: schema validation, loading, and the TransferGraph import."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mc_bench.errors import HistoryError
from mc_bench.select.history import History, from_transfergraph, load_history, transfergraph_targets
from mc_bench.select.synthetic import synthetic_tables

TG = Path(__file__).resolve().parents[2] / "shared" / "external" / "transfergraph" / "image_classification"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "transfergraph"


@pytest.fixture
def tables():
    return synthetic_tables(n_models=4, n_datasets=5, seed=0)


def _build(tables, **kw):
    args = dict(runs=tables["runs"], quality={"accuracy": "higher"}, model_features=tables["model_features"],
                dataset_features=tables["dataset_features"])
    args.update(kw)
    return History.from_tables(**args)


def test_valid(tables):
    h = _build(tables)
    assert len(h.models) == 4 and len(h.datasets) == 5
    norm = h.normalised()
    assert np.allclose(norm.max(), 1) and np.allclose(norm.min(), 0)


def test_lower_is_better_normalisation():
    runs = pd.DataFrame({"model": list("aabbcc"), "dataset": ["x", "y"] * 3, "fid": [10, 1, 20, 2, 30, 3]})
    runs = pd.concat([runs, runs.assign(dataset=runs["dataset"] + "2")])
    h = History.from_tables(runs, {"fid": "lower"})
    assert h.normalised().loc["a"].tolist() == [1.0] * 4 and h.normalised().loc["c"].tolist() == [0.0] * 4


def test_unknown_model_id(tables):
    mf = tables["model_features"].iloc[1:]
    with pytest.raises(HistoryError, match=r"models \['m0000'\] have runs but no features row.*Fix: add a row"):
        _build(tables, model_features=mf)


def test_unknown_dataset_id(tables):
    with pytest.raises(HistoryError, match=r"datasets \['d004'\] have runs but no features row"):
        _build(tables, dataset_features=tables["dataset_features"].iloc[:4])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, "", None])
def test_a_failed_run_is_dropped_counted_and_named(tables, bad):
    """A run whose label is empty, NaN or infinite is a failed run, as real records hold them: dropped, as
    TransferGraph's trainer does, with a warning naming it, and listed in the history's summary."""
    runs = tables["runs"].astype({"accuracy": object})
    runs.loc[3, "accuracy"] = bad
    with pytest.warns(UserWarning, match=r"1 of 20 runs have no finite 'accuracy' .*dropped: m0000 on d003"):
        h = _build(tables, runs=runs)
    assert len(h.runs) == 19 and np.isnan(h.label_matrix().loc["m0000", "d003"])
    summary = h.summary()
    assert summary["dropped_runs"] == 1 and summary["dropped"] == ["m0000 on d003"] and summary["runs"] == 19


def test_a_value_that_is_not_a_number_is_an_error(tables):
    runs = tables["runs"].astype({"accuracy": object})
    runs.loc[3, "accuracy"] = "oops"
    with pytest.raises(HistoryError, match=r"runs, row 3 \(m0000, d003\): quality 'accuracy' is 'oops', not a number"):
        _build(tables, runs=runs)


def test_a_model_or_dataset_left_without_runs_is_an_error(tables):
    runs = tables["runs"].copy()
    runs.loc[runs["model"] == "m0001", "accuracy"] = np.nan
    with pytest.raises(HistoryError, match=r"models \['m0001'\] have no run with a finite 'accuracy'.*Fix: drop"):
        _build(tables, runs=runs)
    runs = tables["runs"].copy()
    runs.loc[runs["dataset"] == "d004", "accuracy"] = np.inf
    with pytest.raises(HistoryError, match=r"datasets \['d004'\] have no run"):
        _build(tables, runs=runs)


def test_transfergraph_records_with_blank_accuracies(tmp_path):
    """A records file whose failed runs have an empty eval_accuracy (as TransferGraph's sequence-classification
    records do) imports: those runs are dropped and named, the others kept."""
    import shutil

    folder = tmp_path / "tg"
    shutil.copytree(FIXTURES / "image_classification", folder)
    records = pd.read_csv(folder / "records.csv", index_col=0)
    blank = records.index[:2]
    records["eval_accuracy"] = records["eval_accuracy"].astype(object)
    records.loc[blank, "eval_accuracy"] = ""
    records.to_csv(folder / "records.csv")
    assert (folder / "records.csv").read_text().count(",,") >= 2  # the accuracy cells are really empty
    with pytest.warns(UserWarning, match=r"2 of \d+ runs have no finite 'eval_accuracy'"):
        h = from_transfergraph(folder)
    assert h.summary()["dropped_runs"] == 2
    kept = records.drop(index=blank)
    assert len(h.runs) == len(kept.groupby(["model", "finetuned_dataset"]))


def test_duplicate_pairs_without_seed(tables):
    runs = pd.concat([tables["runs"], tables["runs"].iloc[:1]])
    with pytest.raises(HistoryError, match=r"\(m0000, d000\) appears .* no seed column.*Fix: add a `seed`"):
        _build(tables, runs=runs)


def test_seeds_are_averaged(tables):
    runs = pd.concat([tables["runs"].assign(seed=0), tables["runs"].assign(seed=1, accuracy=0.5)])
    h = _build(tables, runs=runs)
    first = tables["runs"].iloc[0]
    assert h.label_matrix().loc["m0000", "d000"] == pytest.approx((first["accuracy"] + 0.5) / 2)


def test_too_few_datasets_or_models(tables):
    runs = tables["runs"]
    with pytest.raises(HistoryError, match="only 2 datasets have runs.*at least 3"):
        _build(tables, runs=runs[runs["dataset"].isin(["d000", "d001"])])
    with pytest.raises(HistoryError, match="only 1 model has runs.*at least 2"):
        _build(tables, runs=runs[runs["model"] == "m0000"])


def test_quality_column_without_direction(tables):
    with pytest.raises(HistoryError, match="no quality column declared"):
        _build(tables, quality={})
    with pytest.raises(HistoryError, match=r"column 'accuracy' has direction 'up'.*`higher` or `lower`"):
        _build(tables, quality={"accuracy": "up"})
    with pytest.raises(HistoryError, match="quality column 'fid' is missing"):
        _build(tables, quality={"fid": "lower"})


def _matrix(ids, values):
    return pd.DataFrame(values, index=ids, columns=ids)


def test_similarity_matrix_errors(tables):
    ids = [f"d{j:03d}" for j in range(5)]
    sym = np.eye(5) + 0.1
    with pytest.raises(HistoryError, match="the matrix is 5×4"):
        _build(tables, similarity=_matrix(ids, sym).iloc[:, :4])
    asym = sym.copy()
    asym[0, 1] = 0.9
    with pytest.raises(HistoryError, match=r"not symmetric \(d000, d001: 0.9 vs 0.1\).*symmetrise"):
        _build(tables, similarity=_matrix(ids, asym))
    with pytest.raises(HistoryError, match=r"datasets \['d004'\] are not in the matrix"):
        _build(tables, similarity=_matrix(ids[:4], sym[:4, :4]))


def test_distance_matrix_becomes_similarity(tables):
    ids = [f"d{j:03d}" for j in range(5)]
    dist = np.abs(np.subtract.outer(np.arange(5.0), np.arange(5.0)))
    sim = _build(tables, similarity=_matrix(ids, dist), similarity_kind="distance").dataset_similarity()
    assert np.allclose(np.diag(sim), 1) and sim.loc["d000", "d001"] > sim.loc["d000", "d004"]


def test_load_history_folder_csv_and_parquet(tables, tmp_path):
    tables["runs"].to_parquet(tmp_path / "runs.parquet")
    tables["model_features"].to_csv(tmp_path / "models.csv", index=False)
    tables["dataset_features"].to_csv(tmp_path / "datasets.csv", index=False)
    (tmp_path / "history.yaml").write_text(yaml.safe_dump({
        "runs": "runs.parquet", "quality": {"accuracy": "higher"},
        "model_features": "models.csv", "dataset_features": "datasets.csv"}))
    h = load_history(tmp_path)
    assert len(h.runs) == 20 and h.label == "accuracy"
    with pytest.raises(HistoryError, match="history.yaml not found"):
        load_history(tmp_path / "nowhere")


def test_without_runs_keeps_features(tables):
    h = _build(tables).without_runs("d002")
    assert "d002" not in h.datasets and "d002" in h.dataset_features.index


@pytest.mark.skipif(not TG.is_dir(), reason="../shared/ TransferGraph records not present")
def test_transfergraph_import():
    h = from_transfergraph(TG)
    assert len(h.datasets) == 13 and len(h.models) == 180 and len(h.runs) == 2254
    assert h.similarity is not None and h.similarity.shape == (69, 69)
    assert h.higher_is_better and sum(len(v) for v in h.pretrain.values()) > 100


def test_transfergraph_fixture_image_layout():
    h = from_transfergraph(FIXTURES / "image_classification")
    assert h.models == ["org/convnext-b", "org/resnet-c", "org/swin-d", "org/vit-a"] and len(h.datasets) == 4
    assert {"input_shape", "n_labels", "pretrain_accuracy", "log_parameters", "architecture"} <= set(h.model_features)
    assert h.model_features.loc["org/vit-a", "architecture"] == "ViTForImageClassification"
    # pretraining links: a named dataset, an hfpics label list; one absent from the distance matrix gets none
    assert h.pretrain == {"org/vit-a": ("imagenet",), "org/convnext-b": ("['cats', 'dogs']",), "org/resnet-c": ("cifar100",)}
    assert transfergraph_targets(FIXTURES / "image_classification") == ["dtd", "pets"]


def test_transfergraph_fixture_sequence_layout():
    with pytest.warns(UserWarning, match="imdb"):  # runs on a dataset without distances are left out, with a word
        h = from_transfergraph(FIXTURES / "sequence_classification")
    assert len(h.models) == 3 and h.datasets == sorted(["glue/sst2", "tweet_eval/irony", "ag_news", "rotten_tomatoes"])
    assert {"n_labels", "model_type", "log_parameters", "architecture"} <= set(h.model_features)
    assert "input_shape" not in h.model_features and h.pretrain == {}
    assert h.model_features.loc["u/bert-a", "architecture"] == "BertForSequenceClassification"
    records = pd.read_csv(FIXTURES / "sequence_classification" / "records.csv")
    full = records[records["peft_method"].isna() & (records["model"] == "u/bert-a")
                   & (records["finetuned_dataset"] == "glue/sst2")]
    q = h.label_matrix()
    assert len(full) == 2 and q.loc["u/bert-a", "glue/sst2"] == pytest.approx(full["eval_accuracy"].mean())
    lora = from_transfergraph(FIXTURES / "sequence_classification", peft="lora")  # imdb has no LoRA run
    assert (lora.label_matrix() < q + 1e-9).all().all()  # the LoRA runs, each 0.05 below its full run
    with pytest.warns(UserWarning):
        gpt2 = from_transfergraph(FIXTURES / "sequence_classification", similarity="gpt2")
    assert not np.allclose(gpt2.similarity.to_numpy(), h.similarity.to_numpy())
    assert transfergraph_targets(FIXTURES / "sequence_classification") == ["tweet_eval/irony", "ag_news"]


@pytest.mark.parametrize("table, column", [("records.csv", "eval_accuracy"), ("records.csv", "finetuned_dataset"),
                                           ("model_config_dataset.csv", "model")])
def test_transfergraph_missing_required_column(tmp_path, table, column):
    import shutil

    folder = tmp_path / "tg"
    shutil.copytree(FIXTURES / "image_classification", folder)
    pd.read_csv(folder / table).drop(columns=[column]).to_csv(folder / table, index=False)
    with pytest.raises(HistoryError, match=f"{table}.*{column!r} is missing") as err:
        from_transfergraph(folder)
    assert "Fix:" in str(err.value)


def test_transfergraph_missing_distance_matrix(tmp_path):
    import shutil

    folder = tmp_path / "tg"
    shutil.copytree(FIXTURES / "image_classification", folder)
    next(folder.glob("corr_domain_similarity_*.csv")).unlink()
    with pytest.raises(HistoryError, match="corr_domain_similarity.*no dataset distance matrix"):
        from_transfergraph(folder)
