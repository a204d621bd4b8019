"""The offline world's datasets: determinism, layout and the CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest

from mc_bench.config import DatasetSpec, load_manifests
from mc_bench.world.data import read_split, validate_folder
from mc_bench.world import GENERATORS, build_dataset, folder_digest, generate

MANIFESTS = load_manifests()


def _one_per_generator():
    seen = {}
    for spec in MANIFESTS.datasets.values():
        seen.setdefault(spec.source, spec)
    return list(seen.values())


@pytest.mark.parametrize("spec", _one_per_generator(), ids=lambda s: s.source)
def test_every_generator_builds_valid_identical_folders(spec, tmp_path):
    spec = spec.model_copy(update={"params": {**spec.params, "n_images": 40}})
    a = build_dataset(spec, 16, 0.5, tmp_path / "a")
    b = build_dataset(spec, 16, 0.5, tmp_path / "b")
    assert folder_digest(a) == folder_digest(b)
    summary = validate_folder(a, spec, MANIFESTS.world)
    assert summary["train"].n_images + summary["eval"].n_images == 40
    images, captions = read_split(a, "train")
    assert images.shape[1:] == (16, 16, 3) and images.dtype == np.uint8
    assert images.std() > 5, "images must not be blank"
    assert all(len(c.split()) >= 4 for c in captions)


def test_all_generators_in_manifest():
    assert {s.source.split(":")[1] for s in MANIFESTS.datasets.values()} == set(GENERATORS)


def test_captions_name_the_content():
    spec = DatasetSpec(id="t", source="world:shapes", domain="shapes", license="MIT",
                       params={"n_images": 20, "shapes": ["star"], "fg": "red", "bg": "blue"})
    _, captions = generate(spec, 16)
    assert set(captions) == {"a red star on a blue background"}


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    import mc_bench.world.generators as world

    spec = next(iter(MANIFESTS.datasets.values())).model_copy(update={"params": {"n_images": 20}})

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(world, "_write_split", boom)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(spec, 16, 0.5, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_cli_world_datasets_json(tmp_path):
    from conftest import write_manifests

    entries = [
        {"id": "s", "role": "source", "domain": "digits", "source": "world:digits", "params": {"n_images": 40}, "license": "BSD"},
        {"id": "t", "domain": "shapes", "source": "world:shapes", "params": {"n_images": 40}, "license": "MIT"},
    ]
    folder = write_manifests(tmp_path / "m", datasets=entries, world={"min_split_images": 4})
    cmd = [sys.executable, "-m", "mc_bench", "--manifests", str(folder), "world", "datasets", "--json",
           "--cache", str(tmp_path / "cache"), "--results", str(tmp_path / "results")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)
    assert [r["id"] for r in rows] == ["s", "t"]
    assert set(rows[0]) == {"id", "role", "domain", "n_images", "example_caption"}
    assert rows[0]["role"] == "source" and rows[1]["role"] == "target" and rows[0]["n_images"] == 40
    assert (tmp_path / "results" / "contact_sheets" / "t.png").is_file()
    assert (tmp_path / "results" / "world_datasets.png").is_file()


def test_cli_reports_manifest_errors(tmp_path):
    from conftest import write_manifests

    folder = write_manifests(tmp_path, datasets=[{"id": "x", "source": "world:nope", "domain": "d", "license": "l"}])
    proc = subprocess.run([sys.executable, "-m", "mc_bench", "--manifests", str(folder), "validate"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "unknown source 'world:nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_animal_mnist_wheel_names_the_fix(monkeypatch, tmp_path):
    import mc_bench.world.generators as world
    from mc_bench.errors import ManifestError

    monkeypatch.setenv("MC_BENCH_ANIMAL_MNIST", str(tmp_path / "missing.whl"))
    world._animal_mnist.cache_clear()
    try:
        with pytest.raises(ManifestError, match=r"missing.whl: the animal-mnist wheel .* is missing.*setup.sh"):
            world._animal_mnist()
    finally:
        world._animal_mnist.cache_clear()
