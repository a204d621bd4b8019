"""Bad input, across manifests, datasets, weights, runs, histories and the study: each case must end in one clear
error — the kit's error type, a message that names the file (or entry) at fault and a fix — or, for metrics, a row
recorded as not computed with the reason; never a traceback, never half-written output.

``CASES`` maps a short name to a function that provokes the mistake and checks the outcome; the README's reliability
section counts them.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import folder_dataset, make_imagefolder, write_manifests
from PIL import Image

from mc_bench.config import load_manifests
from mc_bench.errors import HistoryError, InputError, ManifestError, McBenchError
from mc_bench.paths import REPO_ROOT, WORLD_MODELS
from mc_bench.select.history import History, from_transfergraph, load_history
from mc_bench.world.data import dataset_folder, read_image_folder, validate_folder

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "transfergraph" / "image_classification"


def expect(error_type, call, where: str, fix: str = ""):
    """``call()`` raises exactly one ``error_type`` whose location names ``where`` and whose fix mentions ``fix``."""
    with pytest.raises(error_type) as info:
        call()
    err = info.value
    assert isinstance(err, McBenchError)
    assert where in err.where, f"{where!r} not in {err.where!r}"
    assert err.fix and fix in err.fix, f"{fix!r} not in {err.fix!r}"
    assert "Fix:" in str(err)
    return err


def expect_cli(args, needle: str, env: dict | None = None, timeout: float = 120):
    """The CLI exits with 2 and one error line that contains ``needle`` and a fix, without a traceback."""
    proc = subprocess.run([sys.executable, "-m", "mc_bench", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "error:" in proc.stderr and needle in proc.stderr and "Fix:" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return proc


# ------------------------------------------------------------------------------------------------ manifests


def _manifest_folder(tmp_path, **kw):
    return write_manifests(tmp_path / "manifests", **kw)


def case_manifest_invalid_yaml(tmp_path):
    folder = _manifest_folder(tmp_path)
    (folder / "datasets.yaml").write_text("datasets:\n  - id: a\n   source: [unclosed\n")
    expect(ManifestError, lambda: load_manifests(folder), "datasets.yaml", "YAML")


def case_manifest_unknown_field(tmp_path):
    folder = _manifest_folder(tmp_path, datasets=[folder_dataset(colour="red")])
    expect(ManifestError, lambda: load_manifests(folder), "datasets.yaml")


def case_manifest_unknown_generator(tmp_path):
    folder = _manifest_folder(tmp_path, datasets=[folder_dataset(source="world:nope")])
    expect(ManifestError, lambda: load_manifests(folder), "datasets.yaml")


def case_manifest_hub_dataset_without_revision(tmp_path):
    folder = _manifest_folder(tmp_path, datasets=[folder_dataset(source="hf:user/data")])
    err = expect(ManifestError, lambda: load_manifests(folder), "datasets.yaml")
    assert "revision" in str(err)


def case_manifest_hub_model_without_revision(tmp_path):
    model = {"id": "m", "source": "hf:org/model", "family": "sd1", "resolution": 512}
    folder = _manifest_folder(tmp_path, models=[model])
    err = expect(ManifestError, lambda: load_manifests(folder), "models.yaml")
    assert "revision" in str(err)


def case_manifest_id_escaping_paths(tmp_path):
    folder = _manifest_folder(tmp_path, datasets=[folder_dataset(id="../evil")])
    expect(ManifestError, lambda: load_manifests(folder), "datasets.yaml")


def case_manifest_unknown_profile(tmp_path):
    expect_cli(["run", "--profile", "nope", "--out", tmp_path / "study"], "unknown profile 'nope'")
    assert not (tmp_path / "study").exists()


def case_manifest_unknown_dataset(tmp_path):
    expect_cli(["finetune", "--model", "zoo-shapes", "--dataset", "nope", "--out", tmp_path / "run"],
               "unknown dataset id 'nope'")
    assert not (tmp_path / "run" / "lora").exists()


def case_manifest_unknown_model(tmp_path):
    expect_cli(["finetune", "--model", "zoo-nope", "--dataset", "shapes-new", "--out", tmp_path / "run"],
               "unknown model 'zoo-nope'")


def case_manifest_bad_generator_parameters(tmp_path):
    from mc_bench.config import DatasetSpec
    from mc_bench.world.generators import generate

    spec = DatasetSpec(id="x", source="world:animals", domain="animals", license="MIT",
                       params={"classes": ["unicorn"]})
    err = expect(ManifestError, lambda: generate(spec, 16), "entry 'x'", "gen_animals")
    assert "unicorn" in str(err)


def case_world_missing_animal_mnist_wheel(tmp_path, monkeypatch):
    from mc_bench.world import generators

    generators._animal_mnist.cache_clear()
    monkeypatch.setenv("MC_BENCH_ANIMAL_MNIST", str(tmp_path / "missing.whl"))
    try:
        err = expect(ManifestError, generators._animal_mnist, "missing.whl", "setup.sh")
        assert "bad generator parameters" not in str(err)
    finally:
        generators._animal_mnist.cache_clear()


def case_world_tampered_animal_mnist_wheel(tmp_path, monkeypatch):
    from mc_bench.world import generators

    wheel = tmp_path / "animal_mnist-0.4-py3-none-any.whl"
    wheel.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip: not the published wheel
    generators._animal_mnist.cache_clear()
    monkeypatch.setenv("MC_BENCH_ANIMAL_MNIST", str(wheel))
    try:
        expect(ManifestError, generators._animal_mnist, str(wheel), "download it again")
    finally:
        generators._animal_mnist.cache_clear()


# ------------------------------------------------------------------------------------------------ datasets


@pytest.fixture
def dataset(tmp_path):
    folder = write_manifests(tmp_path / "manifests", datasets=[folder_dataset()])
    make_imagefolder(folder / "data")
    return folder


def _validate(folder):
    m = load_manifests(folder)
    spec = m.datasets["local"]
    return validate_folder(dataset_folder(m, spec), spec, m.world)


def _rows(meta: Path) -> list[dict]:
    return [json.loads(line) for line in meta.read_text().splitlines()]


def _write_rows(meta: Path, rows: list) -> None:
    meta.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def case_dataset_missing_split(tmp_path, dataset):
    shutil.rmtree(dataset / "data" / "test")
    expect(ManifestError, lambda: _validate(dataset), "data", "create test/")


def case_dataset_missing_metadata(tmp_path, dataset):
    (dataset / "data" / "train" / "metadata.jsonl").unlink()
    expect(ManifestError, lambda: _validate(dataset), "metadata.jsonl", "file_name")


def case_dataset_metadata_not_utf8(tmp_path, dataset):
    meta = dataset / "data" / "train" / "metadata.jsonl"
    meta.write_bytes(meta.read_bytes().replace(b"a red square 0", "une carré rouge".encode("latin-1")))
    expect(ManifestError, lambda: _validate(dataset), "metadata.jsonl", "UTF-8")


def case_dataset_invalid_json_row(tmp_path, dataset):
    meta = dataset / "data" / "train" / "metadata.jsonl"
    _write_rows(meta, _rows(meta)[:3] + ["{not json"])
    expect(ManifestError, lambda: _validate(dataset), "row 4", "one JSON object per line")


def case_dataset_row_not_an_object(tmp_path, dataset):
    meta = dataset / "data" / "train" / "metadata.jsonl"
    _write_rows(meta, _rows(meta)[:2] + ["[1, 2]"])
    expect(ManifestError, lambda: _validate(dataset), "row 3")


def case_dataset_missing_file_name(tmp_path, dataset):
    meta = dataset / "data" / "train" / "metadata.jsonl"
    rows = _rows(meta)
    del rows[1]["file_name"]
    _write_rows(meta, rows)
    expect(ManifestError, lambda: _validate(dataset), "row 2", "file name")


def case_dataset_missing_image(tmp_path, dataset):
    (dataset / "data" / "train" / "3.png").unlink()
    expect(ManifestError, lambda: _validate(dataset), "row 4", "add")


def case_dataset_corrupt_image(tmp_path, dataset):
    (dataset / "data" / "train" / "2.png").write_bytes(b"not a png at all")
    expect(ManifestError, lambda: _validate(dataset), "row 3", "re-export")


def case_dataset_truncated_image(tmp_path, dataset):
    path = dataset / "data" / "train" / "5.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    expect(ManifestError, lambda: _validate(dataset), "row 6", "re-export")


def case_dataset_empty_caption(tmp_path, dataset):
    meta = dataset / "data" / "train" / "metadata.jsonl"
    rows = _rows(meta)
    rows[0]["text"] = "  "
    _write_rows(meta, rows)
    expect(ManifestError, lambda: _validate(dataset), "row 1", "caption")


def case_dataset_path_escaping_folder(tmp_path, dataset):
    meta = dataset / "data" / "train" / "metadata.jsonl"
    rows = _rows(meta)
    rows[0]["file_name"] = "../../secret.png"
    _write_rows(meta, rows)
    expect(ManifestError, lambda: _validate(dataset), "row 1", "inside the split folder")


def case_dataset_image_listed_twice(tmp_path, dataset):
    meta = dataset / "data" / "train" / "metadata.jsonl"
    rows = _rows(meta)
    rows[1]["file_name"] = rows[0]["file_name"]
    _write_rows(meta, rows)
    expect(ManifestError, lambda: _validate(dataset), "row 2", "once")


def case_dataset_wrong_channel_count(tmp_path):
    folder = write_manifests(tmp_path / "manifests", datasets=[folder_dataset()])
    make_imagefolder(folder / "data", mode="RGBA")
    expect(ManifestError, lambda: _validate(folder), "row 1", "convert")


def case_dataset_one_image_refused_by_finetune(tmp_path):
    """finetune validates first: a 1-image dataset (which validate rejects) is not trained on; the run says why."""
    from mc_bench.train.finetune import finetune
    from mc_bench.train.runs import build_config

    folder = write_manifests(tmp_path / "manifests", datasets=[folder_dataset()],
                             models=[{"id": "m", "source": str(WORLD_MODELS / "zoo-shapes"), "family": "tiny-sd",
                                      "resolution": 16}])
    make_imagefolder(folder / "data", n_train=1)
    run = tmp_path / "run"
    expect(ManifestError, lambda: finetune(build_config("m", "local", run, manifests=folder,
                                                        overrides={"train": {"steps": 2}})), "metadata.jsonl",
           "add images")
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and "fewer than the minimum" in status["reason"]
    assert not (run / "lora").exists() and not (run / "loss.csv").exists()


def case_dataset_mixed_sizes_are_resized(tmp_path):
    """Not an error: one huge image among small ones is resized like the others, and fine-tuning runs."""
    from mc_bench.train.finetune import finetune
    from mc_bench.train.runs import build_config

    folder = write_manifests(tmp_path / "manifests", datasets=[folder_dataset()],
                             models=[{"id": "m", "source": str(WORLD_MODELS / "zoo-shapes"), "family": "tiny-sd",
                                      "resolution": 16}])
    make_imagefolder(folder / "data", size=16)
    Image.fromarray(np.full((1200, 900, 3), 200, dtype=np.uint8)).save(folder / "data" / "train" / "0.png")
    run = tmp_path / "run"
    record = finetune(build_config("m", "local", run, manifests=folder,
                                   overrides={"train": {"steps": 2}, "generate": {"n_samples": 2,
                                                                                   "num_inference_steps": 2}}))
    assert record["status"] == "done"


def case_images_folder_without_metadata(tmp_path):
    (tmp_path / "imgs").mkdir()
    expect(ManifestError, lambda: read_image_folder(tmp_path / "imgs"), "imgs", "metadata.jsonl")


def case_images_folder_corrupt_image(tmp_path):
    folder = make_imagefolder(tmp_path / "imgs")
    (folder / "train" / "1.png").write_bytes(b"garbage")
    expect(ManifestError, lambda: read_image_folder(folder), "row 2", "re-export")


# ------------------------------------------------------------------------------------------------ weights and models


def case_weights_missing_inception(tmp_path):
    from mc_bench.evaluate import make_extractor

    expect(InputError, lambda: make_extractor("inception", weights=tmp_path), "inception-2015-12-05.pt",
           "mc-bench weights --fetch inception")


def case_weights_garbage_inception(tmp_path):
    from mc_bench.evaluate import make_extractor

    (tmp_path / "inception-2015-12-05.pt").write_bytes(b"this is not torchscript")
    expect(InputError, lambda: make_extractor("inception", weights=tmp_path), "inception-2015-12-05.pt",
           "--fetch inception")


def case_weights_pickled_clip_refused(tmp_path):
    from mc_bench.weights import clip_weights

    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    expect(InputError, lambda: clip_weights(tmp_path / "clip"), "pytorch_model.bin", "safe_serialization=True")


def _pipeline_copy(tmp_path) -> Path:
    folder = tmp_path / "pipe"
    shutil.copytree(WORLD_MODELS / "zoo-shapes", folder, symlinks=True)
    return folder


def _finetune_model(tmp_path, source, **spec):
    from mc_bench.train.finetune import finetune
    from mc_bench.train.runs import build_config

    entry = {"id": "m", "source": str(source), "family": "tiny-sd", "resolution": 16, **spec}
    manifests = tmp_path / "manifests"
    shutil.copytree(REPO_ROOT / "data_manifests", manifests)
    models = yaml.safe_load((manifests / "models.yaml").read_text())
    for model in models["models"]:  # the zoo stays reachable from the copied manifest folder
        model["source"] = str((REPO_ROOT / "data_manifests" / model["source"]).resolve())
    models["models"].append(entry)
    (manifests / "models.yaml").write_text(yaml.safe_dump(models))
    return lambda: finetune(build_config("m", "shapes-new", tmp_path / "run", manifests=manifests,
                                         overrides={"train": {"steps": 2}}))


def case_model_folder_without_unet(tmp_path):
    folder = _pipeline_copy(tmp_path)
    shutil.rmtree(folder / "unet")
    expect(InputError, _finetune_model(tmp_path, folder), str(folder / "unet"), "save_pretrained")
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "failed"


def case_model_pickled_weights_refused(tmp_path):
    import torch
    from safetensors.torch import load_file

    folder = _pipeline_copy(tmp_path)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), folder / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    expect(InputError, _finetune_model(tmp_path, folder), "diffusion_pytorch_model.bin", "allow_pickle_weights")


def case_model_folder_without_model_index(tmp_path):
    (tmp_path / "empty").mkdir()
    expect(InputError, _finetune_model(tmp_path, tmp_path / "empty"), "empty", "save_pretrained")


def case_model_hub_without_revision(tmp_path):
    expect_cli(["finetune", "--model", "hf:org/some-model", "--dataset", "shapes-new", "--out", tmp_path / "run"],
               "needs a revision")


def case_model_hub_offline(tmp_path):
    expect_cli(["finetune", "--model", "hf:org/some-model", "--revision", "abc123", "--dataset", "shapes-new",
                "--out", tmp_path / "run"], "offline", env={"HF_HUB_OFFLINE": "1"})
    assert not (tmp_path / "run").exists()  # its family is read from its model_index.json before anything is written


# ------------------------------------------------------------------------------------------------ runs


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    from mc_bench.train.finetune import finetune
    from mc_bench.train.runs import build_config

    run = tmp_path_factory.mktemp("done") / "run"
    finetune(build_config("zoo-shapes", "shapes-new", run, overrides={
        "train": {"steps": 2}, "generate": {"n_samples": 6, "num_inference_steps": 2}}))
    return run


def _copy_run(done_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(done_run, run)
    (run / "metrics.csv").unlink(missing_ok=True)
    return run


def _evaluate(run, **settings):
    from mc_bench.config import evaluate_settings
    from mc_bench.evaluate import evaluate_run

    return evaluate_run(run, evaluate_settings(None, {"metrics": ["fid", "kid", "clip_score"], **settings}))


def case_run_not_a_run_folder(tmp_path):
    (tmp_path / "nothing").mkdir()
    expect(InputError, lambda: _evaluate(tmp_path / "nothing"), "nothing", "mc-bench finetune")


def case_run_not_done(tmp_path, done_run):
    run = _copy_run(done_run, tmp_path)
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "status": "running"}))
    expect(InputError, lambda: _evaluate(run), "run", "finish it")
    assert not (run / "metrics.csv").exists()


def case_run_one_sample_is_not_computed(tmp_path, done_run):
    run = _copy_run(done_run, tmp_path)
    table = pd.read_csv(run / "samples.csv")
    table.head(1).to_csv(run / "samples.csv", index=False)
    rows = _evaluate(run).set_index("metric")
    assert rows.loc["fid", "status"] == "not computed" and "at least 2 generated" in rows.loc["fid", "reason"]
    assert np.isnan(rows.loc["fid", "value"]) and rows.loc["clip_score", "status"] == "computed"


def case_run_no_samples(tmp_path, done_run):
    run = _copy_run(done_run, tmp_path)
    pd.read_csv(run / "samples.csv").head(0).to_csv(run / "samples.csv", index=False)
    expect(InputError, lambda: _evaluate(run), "samples.csv", "regenerate")
    assert not (run / "metrics.csv").exists()


def case_run_samples_of_mixed_sizes(tmp_path, done_run):
    run = _copy_run(done_run, tmp_path)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(run / "samples" / "00001.png")
    expect(InputError, lambda: _evaluate(run), "samples.csv", "regenerate")


def case_run_sample_file_missing(tmp_path, done_run):
    run = _copy_run(done_run, tmp_path)
    (run / "samples" / "00002.png").unlink()
    expect(InputError, lambda: _evaluate(run), "samples.csv, row 4", "regenerate")


def case_run_folder_not_writable(tmp_path):
    (tmp_path / "a-file").write_text("")
    expect_cli(["finetune", "--model", "zoo-shapes", "--dataset", "shapes-new", "--out", tmp_path / "a-file" / "run"],
               "cannot be written")


def case_run_folder_with_another_config(tmp_path, done_run):
    from mc_bench.train.finetune import finetune
    from mc_bench.train.runs import build_config

    run = _copy_run(done_run, tmp_path)
    (run / "status.json").unlink()
    expect(InputError, lambda: finetune(build_config("zoo-shapes", "shapes-new", run,
                                                     overrides={"train": {"steps": 3}})), "config.json", "another")


# ------------------------------------------------------------------------------------------------ histories


def _history_folder(tmp_path, runs: pd.DataFrame, **spec) -> Path:
    folder = tmp_path / "history"
    folder.mkdir(parents=True)
    runs.to_csv(folder / "runs.csv", index=False)
    (folder / "history.yaml").write_text(yaml.safe_dump({"runs": "runs.csv", "quality": {"fid": "lower"}, **spec}))
    return folder


def _runs(n_datasets=4, fid=None):
    rng = np.random.default_rng(0)
    rows = [{"model": m, "dataset": f"d{j}", "fid": float(rng.uniform(5, 50))} for m in "abc" for j in range(n_datasets)]
    table = pd.DataFrame(rows)
    if fid is not None:
        table.loc[0, "fid"] = fid
    return table


def case_history_without_spec(tmp_path):
    (tmp_path / "h").mkdir()
    expect(HistoryError, lambda: load_history(tmp_path / "h"), "history.yaml", "describe the tables")


def case_history_missing_quality_column(tmp_path):
    folder = _history_folder(tmp_path, _runs().drop(columns=["fid"]).assign(score=1.0))
    expect(HistoryError, lambda: load_history(folder), "runs", "add it")


def case_history_nan_quality(tmp_path):
    """A failed run (NaN label) is dropped with a warning; a dataset whose only runs failed is one error."""
    with pytest.warns(UserWarning, match="1 of 12 runs have no finite 'fid'.*a on d0"):
        assert load_history(_history_folder(tmp_path / "one", _runs(fid=float("nan")))).summary()["dropped_runs"] == 1
    runs = _runs()
    runs.loc[runs["dataset"] == "d1", "fid"] = float("nan")
    expect(HistoryError, lambda: load_history(_history_folder(tmp_path / "all", runs)), "runs", "drop the datasets")


def case_history_quality_not_a_number(tmp_path):
    runs = _runs().astype({"fid": object})
    runs.loc[2, "fid"] = "n/a?"
    expect(HistoryError, lambda: load_history(_history_folder(tmp_path, runs)), "row 2", "write numbers")


def case_history_negative_fid(tmp_path):
    expect(HistoryError, lambda: load_history(_history_folder(tmp_path, _runs(fid=-3.0))), "(a, d0)", "sign")


def case_history_duplicate_pairs(tmp_path):
    runs = pd.concat([_runs(), _runs().head(1)])
    expect(HistoryError, lambda: load_history(_history_folder(tmp_path, runs)), "runs", "seed")


def case_history_too_few_datasets(tmp_path):
    expect(HistoryError, lambda: load_history(_history_folder(tmp_path, _runs(n_datasets=2))), "runs",
           "at least 3 datasets")


def case_history_asymmetric_similarity(tmp_path):
    ids = [f"d{j}" for j in range(4)]
    sim = pd.DataFrame(np.eye(4), index=ids, columns=ids)
    sim.iloc[0, 1] = 0.9
    folder = _history_folder(tmp_path, _runs(), similarity={"file": "sim.csv", "kind": "similarity"})
    sim.to_csv(folder / "sim.csv")
    expect(HistoryError, lambda: load_history(folder), "similarity", "symmetrise")


def case_transfergraph_missing_column(tmp_path):
    folder = tmp_path / "tg"
    shutil.copytree(FIXTURES, folder)
    pd.read_csv(folder / "records.csv").drop(columns=["eval_accuracy"]).to_csv(folder / "records.csv", index=False)
    expect(HistoryError, lambda: from_transfergraph(folder), "records.csv", "unchanged export")


def case_transfergraph_missing_distances(tmp_path):
    folder = tmp_path / "tg"
    shutil.copytree(FIXTURES, folder)
    next(folder.glob("corr_domain_similarity_*.csv")).unlink()
    expect(HistoryError, lambda: from_transfergraph(folder), "corr_domain_similarity", "copy")


def _synthetic_history_folder(tmp_path) -> Path:
    from mc_bench.select.synthetic import synthetic_tables

    t = synthetic_tables(n_models=4, n_datasets=5, seed=1)
    folder = tmp_path / "synthetic"
    folder.mkdir()
    t["runs"].to_csv(folder / "runs.csv", index=False)
    t["model_features"].to_csv(folder / "models.csv", index=False)
    t["dataset_features"].to_csv(folder / "datasets.csv", index=False)
    (folder / "history.yaml").write_text(yaml.safe_dump({"runs": "runs.csv", "quality": {"accuracy": "higher"},
                                                         "model_features": "models.csv",
                                                         "dataset_features": "datasets.csv"}))
    return folder


def case_choose_new_dataset_reusing_an_id(tmp_path):
    folder = _synthetic_history_folder(tmp_path)
    (tmp_path / "new.json").write_text(json.dumps({"id": "d001", "features": {"emb_0": 1, "emb_1": 0, "emb_2": 0}}))
    expect_cli(["choose", folder, "--new-dataset", tmp_path / "new.json"], "is a dataset of the history already")


def case_choose_new_dataset_without_similarity(tmp_path):
    h = History.from_tables(_runs(), {"fid": "lower"}, similarity=pd.DataFrame(
        np.eye(4), index=[f"d{j}" for j in range(4)], columns=[f"d{j}" for j in range(4)]))
    expect(HistoryError, lambda: h.with_dataset("fresh", {}), "new dataset", "--images")


def case_choose_new_dataset_missing_embedding(tmp_path):
    folder = _synthetic_history_folder(tmp_path)
    (tmp_path / "new.json").write_text(json.dumps({"id": "fresh", "features": {"emb_0": 0.5}}))
    expect_cli(["choose", folder, "--new-dataset", tmp_path / "new.json"], "embedding features")


def case_choose_unreadable_new_dataset(tmp_path):
    folder = _synthetic_history_folder(tmp_path)
    (tmp_path / "new.json").write_text("{broken")
    expect_cli(["choose", folder, "--new-dataset", tmp_path / "new.json"], "cannot read the new dataset")


def case_choose_unknown_dataset(tmp_path):
    expect_cli(["choose", _synthetic_history_folder(tmp_path), "--dataset", "nope"], "unknown dataset 'nope'")


def case_choose_images_without_profiles(tmp_path):
    make_imagefolder(tmp_path / "imgs")
    expect_cli(["choose", _synthetic_history_folder(tmp_path), "--images", tmp_path / "imgs"],
               "records no dataset profiles")


# ------------------------------------------------------------------------------------------------ the study


def case_study_too_few_datasets(tmp_path):
    manifests = tmp_path / "manifests"
    shutil.copytree(REPO_ROOT / "data_manifests", manifests)
    profiles = yaml.safe_load((manifests / "profiles.yaml").read_text())
    profiles["profiles"].append({"id": "two", "models": ["zoo-shapes", "zoo-glyphs"],
                                 "datasets": ["shapes-new", "digits-low"]})
    (manifests / "profiles.yaml").write_text(yaml.safe_dump(profiles))
    models = yaml.safe_load((manifests / "models.yaml").read_text())
    for entry in models["models"]:
        entry["source"] = str((REPO_ROOT / "data_manifests" / entry["source"]).resolve())
    (manifests / "models.yaml").write_text(yaml.safe_dump(models))
    expect_cli(["--manifests", manifests, "run", "--profile", "two", "--out", tmp_path / "study"],
               "needs at least 3", timeout=60)
    assert not (tmp_path / "study" / "runs").exists()


def case_study_second_runner(tmp_path):
    from mc_bench.study.runner import study_lock

    with study_lock(tmp_path / "study"):
        expect_cli(["run", "--profile", "smoke", "--out", tmp_path / "study"], "another mc-bench run is using")
    assert not (tmp_path / "study" / "runs").exists()


# ------------------------------------------------------------------------------------------------ round 2 (issue 26)


def case_profile_lists_a_dataset_twice(tmp_path):
    folder = _manifest_folder(tmp_path, datasets=[folder_dataset()], profiles=[
        {"id": "p", "datasets": ["local", "local"]}])
    expect(ManifestError, lambda: load_manifests(folder), "profile 'p'" if False else "profiles.yaml", "datasets")


def case_yaml_duplicate_key_and_alias_bomb(tmp_path):
    folder = _manifest_folder(tmp_path)
    (folder / "datasets.yaml").write_text("datasets:\n- id: a\n  id: b\n  source: world:shapes\n")
    err = expect(ManifestError, lambda: load_manifests(folder), "datasets.yaml", "YAML")
    assert "duplicate key 'id'" in err.problem
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    (folder / "datasets.yaml").write_text(bomb)
    err = expect(ManifestError, lambda: load_manifests(folder), "datasets.yaml", "YAML")
    assert "aliases" in err.problem


def case_history_yaml_wrongly_typed(tmp_path):
    folder = _history_folder(tmp_path, _runs())
    (folder / "history.yaml").write_text(yaml.safe_dump({"runs": "runs.csv", "quality": ["fid"]}))
    expect(HistoryError, lambda: load_history(folder), "history.yaml", "mapping")
    (folder / "history.yaml").write_text(yaml.safe_dump({"runs": 3, "quality": {"fid": "lower"}}))
    expect(HistoryError, lambda: load_history(folder), "history.yaml", "file name")


def case_similarity_out_of_range_or_inverted(tmp_path):
    ids = ["d0", "d1", "d2", "d3"]
    dist = pd.DataFrame(np.abs(np.subtract.outer(range(4), range(4))).astype(float), index=ids, columns=ids)
    negative = dist.copy()
    negative.loc["d0", "d1"] = negative.loc["d1", "d0"] = -2.0
    expect(HistoryError, lambda: History.from_tables(_runs(), {"fid": "lower"}, similarity=negative,
                                                     similarity_kind="distance"), "similarity", "never negative")
    expect(HistoryError, lambda: History.from_tables(_runs(), {"fid": "lower"}, similarity=dist,
                                                     similarity_kind="similarity"), "similarity", "kind: distance")
    h = History.from_tables(_runs(), {"fid": "lower"}, similarity=dist, similarity_kind="distance")
    for bad in (5.0, -3.0):
        expect(HistoryError, lambda: h.with_dataset("new", {}, {d: bad for d in ids}), "new dataset", "[0, 1]")
    features = pd.DataFrame({"dataset": ids, "size": [1.0, 2.0, 3.0, 4.0]})
    h = History.from_tables(_runs(), {"fid": "lower"}, dataset_features=features)
    expect(HistoryError, lambda: h.with_dataset("new", {"size": "abc"}), "new dataset", "numbers")


def case_same_seed_twice_with_different_values(tmp_path):
    runs = pd.concat([_runs().assign(seed=0), _runs().head(1).assign(seed=0, fid=999.0)], ignore_index=True)
    expect(HistoryError, lambda: History.from_tables(runs, {"fid": "lower"}), "runs", "one row per")


def case_transfergraph_accuracy_in_percent_among_fractions(tmp_path):
    folder = tmp_path / "tg"
    shutil.copytree(FIXTURES, folder)
    records = pd.read_csv(folder / "records.csv")
    records.loc[0, "eval_accuracy"] = 87.5
    records.to_csv(folder / "records.csv", index=False)
    expect(HistoryError, lambda: from_transfergraph(folder), "records.csv, row 2", "fraction")


def case_choose_level_and_top_out_of_range(tmp_path):
    for args, needle in ((["--level", "1.5"], "--level 1.5"), (["--level", "-0.2"], "--level -0.2"),
                         (["--top", "-3"], "--top -3")):
        expect_cli(["choose", REPO_ROOT / "results" / "cpu-paper", "--dataset", "animals-farm", *args], needle)


def case_run_workers_zero(tmp_path):
    expect_cli(["run", "--profile", "smoke", "--out", tmp_path / "s", "--workers", "0", "--grid-only"],
               "--workers 0")


def case_finetune_failing_after_or_at_start_says_failed(tmp_path, monkeypatch):
    from mc_bench.train import finetune as ft
    from mc_bench.train.runs import build_config

    def broken_step(self):
        if self.step == 1:
            raise RuntimeError("shape mismatch")
        return real(self)

    real = ft.Trainer.train_step
    monkeypatch.setattr(ft.Trainer, "train_step", broken_step)
    config = build_config("zoo-shapes", "shapes-new", tmp_path / "run", overrides={"train": {"steps": 3}})
    with pytest.raises(RuntimeError):
        ft.finetune(config)
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and "step 2" in status["reason"] and "shape mismatch" in status["reason"]
    monkeypatch.setattr(ft, "Trainer", lambda *a, **k: (_ for _ in ()).throw(ValueError("no target modules")))
    with pytest.raises(ValueError):
        ft.finetune(build_config("zoo-shapes", "shapes-new", tmp_path / "run2", overrides={"train": {"steps": 3}}))
    status = json.loads((tmp_path / "run2" / "status.json").read_text())
    assert status["status"] == "failed" and "could not start" in status["reason"]


def case_image_folder_16_bit_grey_small_and_repeated(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    grey = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)  # up to 65,520
    Image.fromarray(grey).save(folder / "a.png")
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps({"file_name": "a.png", "text": "a ramp"})
                                                     for _ in range(3)) + "\n")
    with pytest.warns(UserWarning) as record:
        images, _ = read_image_folder(folder)
    messages = " ".join(str(w.message) for w in record)
    assert "more than once" in messages and "3 images" in messages
    expected = grey.astype(float).mean() / 65535 * 255
    assert images[0].shape == (64, 64, 3) and abs(images[0].mean() - expected) < 1.0  # not near-white


def case_world_params_edited_or_misspelled(tmp_path, monkeypatch):
    from mc_bench.world.data import read_world_split

    monkeypatch.setenv("MC_BENCH_CACHE", str(tmp_path / "cache"))
    entry = {"id": "tiny-shapes", "source": "world:shapes", "domain": "shapes", "license": "CC0",
             "params": {"n_images": 40}}
    folder = _manifest_folder(tmp_path, datasets=[entry])
    assert len(read_world_split(load_manifests(folder), "tiny-shapes", "train")[0]) == 32
    entry["params"]["n_images"] = 60  # edited after the build: rebuilt, not the old data
    (folder / "datasets.yaml").write_text(yaml.safe_dump({"datasets": [entry]}))
    assert len(read_world_split(load_manifests(folder), "tiny-shapes", "train")[0]) == 48
    entry["params"]["shapez"] = ["circle"]
    (folder / "datasets.yaml").write_text(yaml.safe_dump({"datasets": [entry]}))
    err = expect(ManifestError, lambda: read_world_split(load_manifests(folder), "tiny-shapes", "train"),
                 "tiny-shapes", "correct the names")
    assert "'shapez'" in err.problem


def case_evaluate_run_whose_config_names_another_dataset(tmp_path, done_run):
    run = _copy_run(done_run, tmp_path)
    config = json.loads((run / "config.json").read_text())
    config["dataset"] = "digits-low"
    (run / "config.json").write_text(json.dumps(config))
    expect(InputError, lambda: _evaluate(run), "config.json", "unedited")


def case_config_file_missing_broken_or_not_a_mapping(tmp_path):
    (tmp_path / "broken.yaml").write_text("train: [steps: 3\n")
    (tmp_path / "list.yaml").write_text("- train\n")
    for name, needle in (("missing.yaml", "cannot be read"), ("broken.yaml", "not valid YAML"),
                         ("list.yaml", "not a mapping")):
        expect_cli(["finetune", "--model", "zoo-shapes", "--dataset", "shapes-new", "--out", tmp_path / "r",
                    "--config", tmp_path / name], needle)


def case_study_selection_with_a_corrupt_timing_file(tmp_path):
    from mc_bench.study.selection import _study_inputs

    study = tmp_path / "study"
    (study / "profiles").mkdir(parents=True)
    (study / "profiles" / "timing.json").write_text("{not json")
    expect(InputError, lambda: _study_inputs(study, study / "profiles" / "timing.json"), "timing.json", "01_profile")
    (study / "profiles" / "timing.json").write_text(json.dumps({"seconds_per_dataset": 1.0}))
    pd.DataFrame({"model": ["a"], "dataset": ["d"], "status": ["done"], "train": [1.0], "sample": [1.0],
                  "evaluate": [1.0]}).to_csv(study / "cells.csv", index=False)
    pd.DataFrame({"model": ["a"], "dataset": ["d"]}).to_csv(study / "runs.csv", index=False)
    err = expect(InputError, lambda: _study_inputs(study, study / "profiles" / "timing.json"), "runs.csv",
                 "regenerate")
    assert "train_steps" in err.problem


def case_history_tables_that_are_not_comma_separated_utf8(tmp_path):
    folder = _history_folder(tmp_path, _runs())
    text = (folder / "runs.csv").read_text()
    for content, needle in ((b"", "empty"), (text.encode("utf-16"), "UTF-16"), (b"PK\x03\x04junk", "zip archive"),
                            (text.replace(",", ";").encode(), "semicolons"),
                            ((text + "a,d0,1.0,extra,fields\n").encode(), "rows do not match"),
                            ("model,dataset,fid\na,d0,\xe9\n".encode("latin-1"), "not UTF-8")):
        (folder / "runs.csv").write_bytes(content)
        err = expect(HistoryError, lambda: load_history(folder), "runs.csv")
        assert needle in err.problem, (needle, err.problem)
    (folder / "runs.parquet").write_bytes(b"not parquet")
    (folder / "history.yaml").write_text(yaml.safe_dump({"runs": "runs.parquet", "quality": {"fid": "lower"}}))
    expect(HistoryError, lambda: load_history(folder), "runs.parquet", "to_parquet")


def case_truncated_run_config_and_profile_json(tmp_path, done_run):
    from mc_bench.profile import read_profiles
    from mc_bench.train.runs import load_run_config

    run = _copy_run(done_run, tmp_path)
    (run / "config.json").write_text((run / "config.json").read_text()[:40])
    expect(InputError, lambda: load_run_config(run), "config.json", "rerun")
    profiles = tmp_path / "profiles"
    shutil.copytree(REPO_ROOT / "results" / "cpu-paper" / "profiles", profiles)
    (profiles / "profile.json").write_text('{"backbone": "tiny')
    expect(InputError, lambda: read_profiles(profiles), "profile.json", "profile the datasets again")


def case_misleading_messages_made_precise(tmp_path):
    folder = _manifest_folder(tmp_path, datasets=[], profiles=[{"id": "p", "datasets": ["x"]}])
    expect(ManifestError, lambda: load_manifests(folder), "datasets.yaml", "add the datasets")
    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "a.png")
    (images / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "caption": "a black square"}) + "\n")
    err = expect(ManifestError, lambda: read_image_folder(images), "row 1", "'text'")
    assert "'caption'" in err.problem
    (images / "loop.png").symlink_to(images / "loop.png")
    (images / "metadata.jsonl").write_text(json.dumps({"file_name": "loop.png", "text": "x"}) + "\n")
    expect(ManifestError, lambda: read_image_folder(images), "row 1", "replace it")
    expect_cli(["choose", REPO_ROOT / "results" / "cpu-paper", "--images", tmp_path / "no-such-folder"],
               "not a folder, nor a dataset id")


def case_unreachable_scheduler(tmp_path):
    from mc_bench.study.runner import _client

    expect(InputError, lambda: _client("tcp://127.0.0.1:9", 1, 0), "--scheduler", "dask scheduler")


def case_world_cache_not_writable(tmp_path, monkeypatch):
    from mc_bench.world.data import read_world_split

    if os.geteuid() == 0:  # root writes anywhere: a read-only folder is simulated by the error it would raise
        import mc_bench.world.generators as generators

        monkeypatch.setattr(generators, "build_dataset", lambda *a, **k: (_ for _ in ()).throw(
            PermissionError(13, "Permission denied")))
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o500)
    monkeypatch.setenv("MC_BENCH_CACHE", str(cache))
    try:
        expect(InputError, lambda: read_world_split(load_manifests(), "shapes-new", "train"), "cache",
               "MC_BENCH_CACHE")
    finally:
        cache.chmod(0o700)


CASES = {name[5:]: fn for name, fn in dict(globals()).items() if name.startswith("case_")}


def test_there_are_at_least_40_cases_and_the_reliability_page_lists_them():
    assert len(CASES) >= 40, len(CASES)
    import importlib.util

    spec = importlib.util.spec_from_file_location("reliability_doc", REPO_ROOT / "scripts" / "reliability_doc.py")
    doc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(doc)
    assert sorted(name for _, name, _ in doc.cases()) == sorted(CASES)
    page = (REPO_ROOT / "docs" / "reliability.md").read_text()
    assert f"**{len(CASES)} cases.**" in page, "regenerate it: .venv/bin/python scripts/reliability_doc.py"


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, request, tmp_path):
    fn = CASES[name]
    import inspect

    kwargs = {p: request.getfixturevalue(p) for p in inspect.signature(fn).parameters if p != "tmp_path"}
    fn(tmp_path, **kwargs)
