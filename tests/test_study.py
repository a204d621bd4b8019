"""The study runner on the smoke profile: every notebook runs, a killed runner resumes with nothing lost or
duplicated, a failing cell is recorded and the grid goes on."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mc_bench.paths import REPO_ROOT
from mc_bench.study.runner import run_grid
from mc_bench.study.tables import cell_dir, read_cell, run_seconds


def _records(study: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((study / "runs").glob("*/cell.json"))}


def test_killed_runner_resumes_with_nothing_lost_or_duplicated(tmp_path):
    study = tmp_path / "smoke"
    cmd = [sys.executable, "-m", "mc_bench", "run", "--profile", "smoke", "--out", str(study)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if sum(r.get("status") == "done" for r in _records(study).values()) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the runner finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the runner, its Dask workers (kernels follow their parent)
    proc.wait()
    before = _records(study)
    done_before = {k: v for k, v in before.items() if v["status"] == "done"}
    assert 2 <= len(done_before) < 6
    time.sleep(2)

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = _records(study)
    assert len(after) == 6 and all(r["status"] == "done" for r in after.values())
    for key, record in done_before.items():  # done cells were not run again
        assert after[key] == record
    for folder in (study / "runs").iterdir():
        loss = pd.read_csv(folder / "loss.csv")
        assert loss["step"].tolist() == list(range(1, 21))  # 20 smoke steps, none lost or repeated
        assert (folder / "finetune.ipynb").is_file() and (folder / "evaluate.ipynb").is_file()
    metrics = pd.read_csv(study / "metrics.csv")
    assert not metrics.duplicated(["model", "dataset", "metric"]).any()
    assert len(metrics[["model", "dataset"]].drop_duplicates()) == 6
    summary = pd.read_csv(study / "selection_summary.csv")
    assert list(summary.columns[:4]) == ["method", "top1", "top3", "mean_regret"]
    assert {"M&C", "random", "global-best", "nearest-dataset", "history-weighted"} <= set(summary["method"])
    assert summary[["top1", "top3"]].apply(lambda c: c.between(0, 1)).all().all()
    for notebook in ("01_profile", "04_graph", "05_choose", "06_report"):
        assert (study / "notebooks" / f"{notebook}.ipynb").is_file()
    assert (study / "selection" / "ablations.csv").is_file() and (study / "graph" / "graph.graphml").is_file()
    html = (study / "report.html").read_text()
    assert "Top-k accuracy" in html and "<img" in html
    run = json.loads((study / "run_summary.json").read_text())
    assert run["done"] == 6 and 0 < run["kernel_startup_share"] < 1


def test_committed_notebooks_are_clean_and_have_one_parameters_cell():
    import nbformat

    for path in sorted((REPO_ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)  # what JupyterLab checks when it opens a notebook
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, path.name
        assert all(not c.get("outputs") and c.get("execution_count") is None
                   for c in nb.cells if c.cell_type == "code"), f"{path.name} has outputs"


def test_failed_cell_is_recorded_and_the_grid_goes_on(tmp_path):
    manifests = tmp_path / "manifests"
    shutil.copytree(REPO_ROOT / "data_manifests", manifests)
    models = yaml.safe_load((manifests / "models.yaml").read_text())
    for entry in models["models"]:  # keep the zoo reachable from the copied manifest folder
        entry["source"] = str((REPO_ROOT / "data_manifests" / entry["source"]).resolve())
    (tmp_path / "empty-model").mkdir()
    models["models"].append({**models["models"][0], "id": "zoo-broken", "source": str(tmp_path / "empty-model")})
    (manifests / "models.yaml").write_text(yaml.safe_dump(models))
    profiles = yaml.safe_load((manifests / "profiles.yaml").read_text())
    profiles["profiles"].append({"id": "broken", "models": ["zoo-shapes", "zoo-broken"],
                                 "datasets": ["shapes-new", "digits-low", "textures-brick"],
                                 "train": {"steps": 3}, "generate": {"n_samples": 8, "num_inference_steps": 2}})
    (manifests / "profiles.yaml").write_text(yaml.safe_dump(profiles))
    cells = run_grid(tmp_path / "study", "broken", manifests=manifests, progress=False)
    status = cells.set_index(["model", "dataset"])["status"]
    assert (status.xs("zoo-shapes") == "done").all() and (status.xs("zoo-broken") == "failed").all()
    record = read_cell(cell_dir(tmp_path / "study", "zoo-broken", "shapes-new"))
    assert "model_index.json" in record["error"]
    assert record["error"].startswith("InputError: ") and "Papermill" not in record["error"]  # the cause, unwrapped
    again = run_grid(tmp_path / "study", "broken", manifests=manifests, progress=False)  # failed cells stay failed
    assert (again["status"] == cells["status"]).all()


def test_profile_statistics_and_similarity():
    from mc_bench.config import load_manifests
    from mc_bench.profile import image_statistics, profile_datasets

    grey = np.full((4, 8, 8, 3), 128, dtype=np.uint8)
    stats = image_statistics(grey)
    assert stats["brightness"] == pytest.approx(128 / 255) and stats["contrast"] == 0
    assert stats["colourfulness"] == 0 and stats["saturation"] == 0 and stats["edge_density"] == 0
    red = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    red[..., 0] = 255
    assert image_statistics(red)["saturation"] == 1 and image_statistics(red)["colourfulness"] > 0
    ids = ["animals-farm", "animals-wild", "digits-low", "digits-high", "textures-brick", "textures-natural"]
    profiles = profile_datasets(load_manifests(), ids, n_components=2)
    sim = profiles.similarity.to_numpy()
    assert np.allclose(sim, sim.T) and np.allclose(np.diag(sim), 1)
    assert list(profiles.features.columns[-2:]) == ["clip_pc0", "clip_pc1"]
    assert set(profiles.embeddings["kind"]) == {"image", "caption"}
    # datasets of one domain are closer to each other than to the other domains' datasets
    domain = np.repeat(np.arange(3), 2)
    same = (domain[:, None] == domain[None, :]) & ~np.eye(6, dtype=bool)
    assert sim[same].mean() > sim[domain[:, None] != domain[None, :]].mean() + 0.2


def test_drop_figures_keeps_text_outputs(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    from mc_bench.study.runner import drop_figures

    cell = new_code_cell("plot()", outputs=[new_output("display_data", data={"image/png": "iVBOR", "text/plain": "<Figure>"}),
                                            new_output("stream", text="loss 0.1\n")])
    (tmp_path / "runs" / "m__d").mkdir(parents=True)
    nbformat.write(new_notebook(cells=[cell]), tmp_path / "runs" / "m__d" / "finetune.ipynb")
    assert drop_figures(tmp_path) == 1
    outputs = nbformat.read(tmp_path / "runs" / "m__d" / "finetune.ipynb", as_version=4).cells[0].outputs
    assert "image/png" not in outputs[0]["data"] and outputs[1]["text"] == "loss 0.1\n"
    assert drop_figures(tmp_path) == 0


@pytest.mark.parametrize("model, dataset", [("zoo-shapes", "shapes-small"), ("zoo-glyphs", "glyphs-lower")])
def test_committed_cells_reproduce(tmp_path, model, dataset):
    """The committed cpu-paper record is what the code makes: two of its cells, rerun from scratch on CPU (one
    thread, as the study's workers), give the metrics of results/cpu-paper/metrics.csv."""
    import torch

    from mc_bench.config import evaluate_settings
    from mc_bench.evaluate import evaluate_run
    from mc_bench.train.finetune import finetune
    from mc_bench.train.runs import build_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = tmp_path / "run"
        assert finetune(build_config(model, dataset, run, profile="cpu-paper"))["status"] == "done"
        ours = evaluate_run(run, evaluate_settings("cpu-paper")).set_index("metric")
    finally:
        torch.set_num_threads(threads)
    committed = pd.read_csv(REPO_ROOT / "results" / "cpu-paper" / "metrics.csv")
    committed = committed[(committed["model"] == model) & (committed["dataset"] == dataset)].set_index("metric")
    computed = committed.index[committed["status"] == "computed"]
    assert {"fid", "kid", "clip_score"} <= set(computed)
    np.testing.assert_allclose(ours.loc[computed, "value"].astype(float), committed.loc[computed, "value"], rtol=1e-4)
    runs = pd.read_csv(REPO_ROOT / "results" / "cpu-paper" / "runs.csv").set_index(["model", "dataset"])
    losses = pd.read_parquet(REPO_ROOT / "results" / "cpu-paper" / "losses.parquet")
    cell = losses[(losses["model"] == model) & (losses["dataset"] == dataset)]
    assert len(cell) == runs.loc[(model, dataset), "train_steps"] == 100
    np.testing.assert_allclose(pd.read_csv(run / "loss.csv")["loss"], cell["loss"], rtol=1e-4)


def test_a_study_survives_a_broken_dataset(tmp_path):
    """A broken folder dataset among good ones: its problem is reported before the grid, its cells fail with the
    cause (not papermill's wrapping), the other cells run, and profile, graph, choose and report leave it out and
    still write the report."""
    from conftest import make_imagefolder

    from mc_bench.study import run_study

    manifests = tmp_path / "manifests"
    shutil.copytree(REPO_ROOT / "data_manifests", manifests)
    models = yaml.safe_load((manifests / "models.yaml").read_text())
    for entry in models["models"]:
        entry["source"] = str((REPO_ROOT / "data_manifests" / entry["source"]).resolve())
    (manifests / "models.yaml").write_text(yaml.safe_dump(models))
    make_imagefolder(manifests / "broken-data")
    (manifests / "broken-data" / "train" / "1.png").write_bytes(b"not an image")
    datasets = yaml.safe_load((manifests / "datasets.yaml").read_text())
    datasets["datasets"].append({"id": "broken", "source": "broken-data", "domain": "test", "license": "CC0"})
    (manifests / "datasets.yaml").write_text(yaml.safe_dump(datasets, sort_keys=False))
    profiles = yaml.safe_load((manifests / "profiles.yaml").read_text())
    profiles["profiles"].append({"id": "with-broken", "models": ["zoo-shapes", "zoo-all-short"],
                                 "datasets": ["shapes-new", "digits-low", "broken", "textures-brick"],
                                 "train": {"steps": 3}, "generate": {"n_samples": 8, "num_inference_steps": 2}})
    (manifests / "profiles.yaml").write_text(yaml.safe_dump(profiles))
    study = tmp_path / "study"
    summary = run_study("with-broken", study, manifests=manifests, progress=False, ablations=False)
    assert summary["done"] == 6 and summary["failed"] == 2
    cells = pd.read_csv(study / "cells.csv").set_index(["model", "dataset"])
    for model in ("zoo-shapes", "zoo-all-short"):
        assert cells.loc[(model, "broken"), "error"].startswith("ManifestError: ")
        assert "1.png is corrupt" in cells.loc[(model, "broken"), "error"]
    assert "broken" not in pd.read_csv(study / "profiles" / "dataset_features.csv")["dataset"].tolist()
    assert "broken" not in set(pd.read_csv(study / "selection" / "lodo.csv")["dataset"])
    assert "Top-k accuracy" in (study / "report.html").read_text()


def test_pretrained_and_rung_companions_feed_gains_probe_and_halving(tmp_path):
    """A ``train.steps: 0`` profile runs through the whole study (every notebook), and beside a study its pretrained
    and short-rung companions give the gains table, the probe baselines and successive halving, with their costs."""
    def run(profile, *extra):
        out = subprocess.run([sys.executable, "-m", "mc_bench", "run", "--profile", profile, "--out",
                              str(tmp_path / profile.replace("smoke", "study")), *extra],
                             capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]

    run("smoke-pretrained")  # the whole study at steps 0: notebooks 01-06 included
    pretrained = tmp_path / "study-pretrained"
    assert (pretrained / "report.html").is_file()
    runs = pd.read_csv(pretrained / "runs.csv")
    assert runs["train_steps"].eq(0).all() and len(runs) == 6
    assert not (pretrained / "losses.parquet").exists() or pd.read_parquet(pretrained / "losses.parquet").empty
    run("smoke-rung5", "--grid-only")
    run("smoke-probe16", "--grid-only")
    run("smoke")
    study = tmp_path / "study"
    history = yaml.safe_load((study / "history" / "history.yaml").read_text())
    assert history["probe"] == "probe.csv"
    summary = pd.read_csv(study / "selection_summary.csv").set_index("method")
    assert {"probe", "M&C + probe", "cheap probe", "M&C + cheap probe", "exhaustive fine-tuning"} <= set(summary.index)
    halving = [m for m in summary.index if m.startswith("successive halving")]
    assert halving == ["successive halving"]
    assert summary.loc["cheap probe", "tier"] == "cheap probe" and summary.loc["M&C", "tier"] == "profile only"
    assert summary.drop(index="M&C")["verdict"].notna().all() and pd.isna(summary.loc["M&C", "verdict"])
    agreement = pd.read_csv(study / "selection" / "probe_agreement.csv")
    assert len(agreement) == 3 and agreement["spearman"].between(-1, 1).all()
    assert summary["seconds_per_dataset"].notna().all()
    cost = summary["seconds_per_dataset"]
    assert cost["M&C + probe"] > cost["probe"] > 0 and cost["M&C + probe"] > cost["M&C"]
    # each probe tier is charged its own companion's measured cells (sampling + evaluation), not a shared guess
    lodo = pd.read_csv(study / "selection" / "lodo.csv").groupby("method")["seconds"].mean()
    for tier, companion in (("probe", "study-pretrained"), ("cheap probe", "study-probe16")):
        measured = run_seconds(tmp_path / companion).sum(axis=0).mean()
        assert cost[tier] == pytest.approx(measured + lodo[tier])
    assert pd.read_csv(tmp_path / "study-probe16" / "runs.csv")["generate_n_samples"].lt(
        pd.read_csv(pretrained / "runs.csv")["generate_n_samples"]).all()
    assert summary.loc["exhaustive fine-tuning", "top1"] == 1.0
    assert "probe-first halving" in summary.index
    both = pd.read_csv(study / "selection" / "halving.csv")
    ranked = both[both["method"] == "M&C-first halving"]
    assert len(ranked) == 3 and ranked["runs"].eq(1).all()  # M&C's top 1 of 2 fine-tuned on each dataset
    assert "nearest-dataset-first halving" in summary.index
    first = both[both["method"].str.startswith("probe-first")]
    assert first["budgets"].eq("2@0→1@20").all() and first["runs"].eq(3).all()
    per_dataset = both[both["method"].str.startswith("successive halving")]
    assert per_dataset["budgets"].eq("2@5→1@20").all() and per_dataset["runs"].eq(3).all()
    # the costs are the measured work of the cells they used: both 5-step runs, the survivor's 20-step run
    def seconds(folder):
        cells = pd.read_csv(folder / "cells.csv").set_index(["model", "dataset"])
        return cells[["train", "sample", "evaluate"]].sum(axis=1)
    full, short = seconds(study), seconds(tmp_path / "study-rung5")
    scores = pd.read_csv(study / "selection" / "lodo.csv")
    for _, row in per_dataset.iterrows():
        d = row["dataset"]
        survivor = pd.read_csv(tmp_path / "study-rung5" / "performance.csv").query("dataset == @d").nsmallest(1, "fid")
        expected = short.xs(d, level="dataset").sum() + full[(survivor["model"].iloc[0], d)]
        assert row["seconds"] == pytest.approx(expected)
    probe = seconds(pretrained)
    for _, row in first.iterrows():  # the probe of both candidates, then the better one's full run
        d = row["dataset"]
        survivor = pd.read_csv(pretrained / "performance.csv").query("dataset == @d").nsmallest(1, "fid")
        assert row["seconds"] == pytest.approx(probe.xs(d, level="dataset").sum() + full[(survivor["model"].iloc[0], d)])
    assert cost["exhaustive fine-tuning"] == pytest.approx(full.groupby(level="dataset").sum().mean())
    assert set(scores["method"]) >= {"probe", "M&C + probe"}
    gains = pd.read_csv(study / "gains.csv")
    assert len(gains) == 6 and {"fid_pretrained", "fid_finetuned", "gain", "in_domain"} <= set(gains.columns)
    assert np.allclose(gains["gain"], gains["fid_pretrained"] - gains["fid_finetuned"])
    assert len(pd.read_csv(study / "learnability.csv")) == 3
    html = (study / "report.html").read_text()
    assert "cost–accuracy frontier" in html and "What fine-tuning did" in html


def test_local_gpu_workers_are_pinned_to_separate_gpus(monkeypatch):
    """The runner's own LocalCluster for a GPU profile gives worker i the i-th visible GPU (its kernels get
    CUDA_VISIBLE_DEVICES); outside such a cluster nothing is pinned."""
    from mc_bench.study import runner

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    client, cluster = runner._client(None, 2, 1)
    try:
        workers = sorted(client.scheduler_info()["workers"])
        pinned = {w: client.submit(runner.worker_gpu, workers=[w], pure=False).result() for w in workers}
        threads = {w: client.submit(runner.worker_threads, workers=[w], pure=False).result() for w in workers}
    finally:
        client.close()
        cluster.close()
    assert sorted(pinned.values()) == ["3", "5"]
    assert runner.worker_gpu() is None
    # a GPU worker's cells get the worker's share of the cores; outside a worker, one thread
    assert set(threads.values()) == {max(1, (os.cpu_count() or 1) // 2)} and runner.worker_threads() == 1


def test_done_datasets_come_from_cells_csv_when_the_cell_folders_are_not_there(tmp_path):
    """A clone has a study's cells.csv but not its per-cell folders: the study's datasets are read from the table."""
    from mc_bench.config import load_manifests
    from mc_bench.study.tables import done_datasets

    profile = load_manifests().profile("smoke")
    rows = [{"model": m, "dataset": d, "status": "failed" if d == profile.datasets[0] else "done"}
            for m in profile.models for d in profile.datasets]
    pd.DataFrame(rows).to_csv(tmp_path / "cells.csv", index=False)
    assert done_datasets(tmp_path, profile) == profile.datasets[1:]
    (tmp_path / "cells.csv").unlink()
    assert done_datasets(tmp_path, profile) == []  # no table and no cell folders: nothing is done


def test_gpu_grids_get_one_worker_per_gpu_and_never_share_one(monkeypatch):
    """Two cells on one GPU would time each other's work: a GPU profile defaults to one worker per visible GPU and
    refuses more; a CPU grid defaults to 2; 0 or a negative count is refused instead of hanging at 0 cells."""
    from mc_bench.errors import InputError
    from mc_bench.study import runner

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2,3")
    assert runner.visible_gpus() == ["0", "2", "3"]
    assert runner.grid_workers(None, runner.visible_gpus()) == 3
    assert runner.grid_workers(2, ["0", "2", "3"]) == 2 and runner.grid_workers(None, None) == 2
    with pytest.raises(InputError, match="more workers than GPUs"):
        runner.grid_workers(4, ["0", "2", "3"])
    with pytest.raises(InputError, match="no CUDA device"):
        runner.grid_workers(None, [])
    for bad in (0, -1):
        with pytest.raises(InputError, match="positive number"):
            runner.grid_workers(bad, None)
