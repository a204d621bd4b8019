"""`mc-bench choose HISTORY --images FOLDER --fine-tune K`: rank, fine-tune the first K on the folder with the
history's recipe, return the winner, grow the history (mc_bench.study.choice)."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from mc_bench.config import load_manifests
from mc_bench.errors import HistoryError, InputError, ManifestError
from mc_bench.paths import REPO_ROOT
from mc_bench.profile import profile_datasets, read_profiles, write_profiles
from mc_bench.select.history import load_history
from mc_bench.study import write_history
from mc_bench.study.choice import (auto_k, best_ranks, choose_for_folder, dataset_id, rank_for_folder,
                                   split_folder, success_curve)
from mc_bench.study.tables import pretraining_datasets
from mc_bench.world.data import read_world_split

DATASETS = ["shapes-new", "shapes-small", "digits-low", "glyphs-lower"]
MODELS = ["zoo-shapes", "zoo-glyphs", "zoo-all-short"]
QUICK = {"train": {"steps": 2}, "generate": {"n_samples": 8}}


def test_success_curve_and_auto_k():
    scores = pd.DataFrame({"dataset": ["a"] * 3 + ["b"] * 3, "model": ["x", "y", "z"] * 2,
                           "score": [0.9, 0.5, 0.1, 0.2, 0.8, 0.3], "quality": [3.0, 1.0, 2.0, 5.0, 4.0, 1.0]})
    ranks = best_ranks(scores, higher_is_better=False)  # a: best y, ranked 2nd; b: best z, ranked 2nd of y,z,x
    assert ranks.to_dict() == {"a": 2, "b": 2}
    curve = success_curve(ranks, 3)
    assert curve["success"].tolist() == [0.0, 1.0, 1.0]
    assert auto_k(curve, 0.9) == 2 and auto_k(curve.assign(success=[0, 0.5, 0.5]), 0.9) == 3
    assert best_ranks(scores, higher_is_better=True).to_dict() == {"a": 1, "b": 3}


def _unsplit_folder(folder, dataset="shapes-large", n=40):
    images, captions = read_world_split(load_manifests(), dataset, "train")
    folder.mkdir(parents=True)
    rows = []
    for i in range(n):
        Image.fromarray(images[i]).save(folder / f"img {i}.png")
        rows.append(json.dumps({"file_name": f"img {i}.png", "text": captions[i]}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def test_split_folder_is_deterministic_and_refuses_too_few_images(tmp_path):
    folder = _unsplit_folder(tmp_path / "My Photos!", n=40)
    assert dataset_id(folder) == "new-my-photos"
    a = split_folder(folder, tmp_path / "a", eval_fraction=0.2, min_images=16)
    b = split_folder(folder, tmp_path / "b", eval_fraction=0.2, min_images=16)
    for split, n in (("train", 24), ("test", 16)):
        assert len((a / split / "metadata.jsonl").read_text().splitlines()) == n
        assert (a / split / "metadata.jsonl").read_text() == (b / split / "metadata.jsonl").read_text()
    with pytest.raises(InputError, match="too few"):
        split_folder(folder, tmp_path / "c", eval_fraction=0.2, min_images=21)
    assert not (tmp_path / "c").exists()


@pytest.fixture(scope="module")
def study_history(tmp_path_factory):
    """A history of 3 zoo models x 4 world datasets (random FIDs) with a study record whose recipe is tiny."""
    folder = tmp_path_factory.mktemp("study")
    manifests = load_manifests()
    sources = pretraining_datasets(manifests, MODELS, exclude=DATASETS)
    write_profiles(profile_datasets(manifests, DATASETS + sources, max_images=64), folder / "profiles")
    rng = np.random.default_rng(0)
    perf = pd.DataFrame([{"model": m, "dataset": d, "fid": float(rng.uniform(5, 50))} for m in MODELS for d in DATASETS])
    write_history(folder / "history", perf, folder / "profiles", manifests, "fid")
    recipe = manifests.profile("mini").model_dump(mode="json")
    (folder / "study.json").write_text(json.dumps({"profile": {**recipe, "models": MODELS, "datasets": DATASETS}}))
    return folder


def test_choose_fine_tunes_the_first_k_and_grows_the_history(study_history, tmp_path):
    folder = _unsplit_folder(tmp_path / "shapes")
    history = load_history(study_history / "history")
    images, captions = read_world_split(load_manifests(), "shapes-large", "train")
    ranking, _ = rank_for_folder(history, "new-shapes", list(images[:40]), captions[:40])
    broken = ranking.index[1]  # the second candidate cannot be loaded: it fails, the first goes on
    base = load_manifests()
    models = []
    for m in MODELS:
        spec = base.models[m].model_dump(mode="json", exclude_none=True)
        spec["source"] = str(tmp_path / "empty") if m == broken else str((base.folder / spec["source"]).resolve())
        models.append(spec)
    (tmp_path / "empty").mkdir()
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "datasets.yaml").write_text(yaml.safe_dump({"datasets": []}))
    (manifests / "models.yaml").write_text(yaml.safe_dump({"models": models}))
    out, grown = tmp_path / "choice", tmp_path / "grown"
    result = choose_for_folder(study_history, folder, 2, out=out, overrides=QUICK, manifests=manifests,
                               add_to_history=grown, progress=False)
    assert [t["model"] for t in result["tried"]] == list(ranking.index[:2])
    assert result["winner"] == ranking.index[0] and result["failed"] == [broken]
    failed = next(t for t in result["tried"] if t["model"] == broken)
    assert failed["status"] == "failed" and failed["error"] and failed["fid"] is None
    assert result["k"] == 2 and result["recipe"]["overrides"] == QUICK
    assert json.loads((out / "choice.json").read_text())["winner"] == result["winner"]
    assert (out / "choice.html").is_file() and (out / "contact_sheets" / "new-shapes.png").is_file()
    assert len((out / "data" / "test" / "metadata.jsonl").read_text().splitlines()) == 16
    # the history grew by the folder and its one finished run; the history given is unchanged
    g = load_history(grown)
    assert "new-shapes" in g.datasets and len(g.runs) == len(history.runs) + 1
    assert len(load_history(study_history / "history").runs) == len(history.runs)
    assert "new-shapes" in set(read_profiles(grown / "profiles").features["dataset"])
    assert json.loads((grown / "study.json").read_text())["added"] == "new-shapes"
    # the grown history ranks for a dataset with runs of only some candidates, and keeps the recipe
    assert len(rank_for_folder(g, "new-again", list(images[40:80]), captions[40:80])[0]) == len(MODELS)
    # a rerun resumes: the finished cell is kept, not fine-tuned again
    finished = json.loads((out / "runs" / f"{result['winner']}__new-shapes" / "cell.json").read_text())["finished"]
    again = choose_for_folder(study_history, folder, 2, out=out, overrides=QUICK, manifests=manifests,
                              progress=False)
    assert again["winner"] == result["winner"]
    assert json.loads((out / "runs" / f"{result['winner']}__new-shapes" / "cell.json").read_text())["finished"] == finished
    # notebook 07 is the same call: on the same folder it resumes and names the same winner
    import papermill as pm

    pm.execute_notebook(str(REPO_ROOT / "notebooks" / "07_choose_for_my_data.ipynb"), str(tmp_path / "07.ipynb"),
                        parameters={"history": str(study_history), "images": str(folder), "fine_tune": 2,
                                    "out_dir": str(out), "settings": QUICK}, progress_bar=False)
    assert json.loads((out / "choice.json").read_text())["winner"] == result["winner"]


def test_choose_bad_inputs_fail_before_anything_is_written(study_history, tmp_path):
    folder = _unsplit_folder(tmp_path / "ok")
    out = tmp_path / "out"
    with pytest.raises(InputError, match="not a number of candidates"):
        choose_for_folder(study_history, folder, 0, out=out)
    with pytest.raises(InputError, match="not a probability"):
        choose_for_folder(study_history, folder, "auto", out=out, level=1.5)
    (tmp_path / "no-meta").mkdir()
    with pytest.raises(ManifestError, match="metadata.jsonl"):
        choose_for_folder(study_history, tmp_path / "no-meta", 2, out=out)
    with pytest.raises(HistoryError, match="study.json"):  # a history without its study: no recipe
        bare = tmp_path / "bare"
        bare.mkdir()
        (bare / "history.yaml").write_text((study_history / "history" / "history.yaml").read_text())
        choose_for_folder(bare, folder, 2, out=out)
    assert not out.exists()


def test_cli_fine_tune_needs_an_image_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mc_bench", "choose", str(REPO_ROOT / "results" / "cpu-paper"),
                           "--dataset", "animals-farm", "--fine-tune", "2"], capture_output=True, text=True)
    assert proc.returncode != 0 and "image folder" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "mc_bench", "choose", str(REPO_ROOT / "results" / "cpu-paper"),
                           "--images", str(tmp_path), "--fine-tune", "-1"], capture_output=True, text=True)
    assert proc.returncode != 0 and "positive whole number" in proc.stderr
