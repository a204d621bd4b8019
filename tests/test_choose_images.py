"""`mc-bench choose HISTORY --images FOLDER`: a new image folder profiled like the history's datasets, ranked,
with a conformal shortlist; and the profiles that make it possible (Fréchet-distance similarity)."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from mc_bench.config import load_manifests
from mc_bench.world.data import read_world_split
from mc_bench.profile import (frechet, gaussian, profile_datasets, profile_new_dataset, read_profiles,
                              similarity_from_profiles, write_profiles)
from mc_bench.study import write_history
from mc_bench.study.tables import pretraining_datasets

DATASETS = ["shapes-new", "shapes-small", "digits-low", "glyphs-lower"]
MODELS = ["zoo-shapes", "zoo-glyphs", "zoo-all-short"]


@pytest.fixture(scope="module")
def history_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("history")
    manifests = load_manifests()
    sources = pretraining_datasets(manifests, MODELS, exclude=DATASETS)
    profiles = profile_datasets(manifests, DATASETS + sources, max_images=64)
    write_profiles(profiles, folder / "profiles")
    rng = np.random.default_rng(0)
    perf = pd.DataFrame([{"model": m, "dataset": d, "fid": float(rng.uniform(5, 50))} for m in MODELS for d in DATASETS])
    write_history(folder, perf, folder / "profiles", manifests, "fid")
    return folder


def test_profiles_record_distributions_and_how_they_were_made(history_folder):
    p = read_profiles(history_folder / "profiles")
    assert p.meta["backbone"] == "tiny-clip" and len(p.meta["weights_sha256"]) == 64
    assert p.meta["similarity"] == "frechet" and set(p.meta["scales"]) == {"image", "caption"}
    assert set(p.distributions["modality"]) == {"image", "caption"} and len(p.distributions) == 2 * 12
    assert (p.features["n_profiled"] <= 64).all()
    s = p.similarity.to_numpy()
    assert np.allclose(s, s.T) and np.allclose(np.diag(s), 1) and ((s > 0) & (s <= 1)).all()
    # the similarity is the one recomputed from the written distances
    np.testing.assert_allclose(similarity_from_profiles(p).to_numpy(), s, atol=1e-12)


def test_frechet_sees_spread_that_mean_cosine_does_not():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 4))
    b = a * 3.0  # same mean (0), three times the spread
    assert frechet(gaussian(a), gaussian(a)) < 1e-6
    assert frechet(gaussian(a), gaussian(b)) > 10


def test_new_dataset_is_profiled_like_the_history(history_folder):
    manifests = load_manifests()
    p = read_profiles(history_folder / "profiles")
    images, captions = read_world_split(manifests, "shapes-new", "train")
    row, sim = profile_new_dataset(p, list(images), captions)
    # the same images as a profiled dataset: identical features, similarity 1 to it
    assert sim.idxmax() == "shapes-new" and sim["shapes-new"] == pytest.approx(1.0, abs=1e-6)
    expected = p.features.set_index("dataset").loc["shapes-new"]
    for key in ("n_train", "brightness", "clip_pc0"):
        assert row[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9)


def _image_folder(tmp_path, dataset="shapes-large", n=40):
    manifests = load_manifests()
    images, captions = read_world_split(manifests, dataset, "train")
    from PIL import Image

    folder = tmp_path / "my-images"
    folder.mkdir()
    rows = []
    for i, (img, cap) in enumerate(zip(images[:n], captions[:n])):
        Image.fromarray(img).resize((48, 48)).save(folder / f"{i}.png")  # any size: profiled at the backbone's
        rows.append(json.dumps({"file_name": f"{i}.png", "text": cap}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def _choose(*args):
    return subprocess.run([sys.executable, "-m", "mc_bench", "choose", *map(str, args)], capture_output=True, text=True)


def test_cli_choose_images_folder(history_folder, tmp_path):
    folder = _image_folder(tmp_path)
    proc = _choose(history_folder, "--images", folder, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["dataset"] == "new:my-images" and out["n_images"] == 40 and not out["held_out"]
    assert sorted(r["model"] for r in out["ranking"]) == sorted(MODELS)
    shortlist = out["shortlist"]
    assert shortlist["level"] == 0.9 and set(shortlist["models"]) <= set(MODELS) and shortlist["models"]
    assert out["ranking"][0]["model"] == shortlist["models"][0]
    # a dataset of the manifests, given by id, is profiled from its train split
    proc = _choose(history_folder, "--images", "shapes-large", "--json", "--level", "0")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["dataset"] == "shapes-large"


def test_cli_choose_images_bad_input(history_folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _choose(history_folder, "--images", empty)
    assert proc.returncode == 2 and "no metadata.jsonl" in proc.stderr and "Fix:" in proc.stderr
    folder = _image_folder(tmp_path, n=3)
    (folder / "1.png").write_bytes(b"not a png")
    proc = _choose(history_folder, "--images", folder)
    assert proc.returncode == 2 and "1.png is corrupt" in proc.stderr and "Traceback" not in proc.stderr
    no_profiles = tmp_path / "plain"
    shutil.copytree(history_folder, no_profiles, ignore=shutil.ignore_patterns("profiles"))
    spec = (no_profiles / "history.yaml").read_text().splitlines()
    (no_profiles / "history.yaml").write_text("\n".join(line for line in spec if not line.startswith("profiles")))
    other = tmp_path / "other"
    other.mkdir()
    proc = _choose(no_profiles, "--images", _image_folder(other))
    assert proc.returncode == 2 and "records no dataset profiles" in proc.stderr


def test_profiles_do_not_depend_on_the_thread_count():
    import torch

    manifests = load_manifests()
    threads = torch.get_num_threads()
    try:
        tables = []
        for n in (1, 2):
            torch.set_num_threads(n)
            tables.append(profile_datasets(manifests, ["digits-low", "shapes-small", "glyphs-lower"], max_images=64))
    finally:
        torch.set_num_threads(threads)
    a, b = tables
    pd.testing.assert_frame_equal(a.similarity, b.similarity, check_exact=True)
    pd.testing.assert_frame_equal(a.distances, b.distances, check_exact=True)
