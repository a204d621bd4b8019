"""`mc-bench preflight --profile NAME`: every check of a profile before its grid, every problem at once with its fix."""

import json
import subprocess
import sys

import pytest

from conftest import folder_dataset, make_imagefolder, write_manifests
from mc_bench.errors import InputError
from mc_bench.paths import WORLD_MODELS
from mc_bench.study.preflight import PROBLEM, detect_columns, preflight


def _bad_manifests(tmp_path):
    (tmp_path / "not-a-pipeline").mkdir()
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "model_index.json").write_text(json.dumps({"_class_name": "AudioLDMPipeline"}))
    models = [{"id": "good", "source": str(WORLD_MODELS / "zoo-shapes"), "family": "tiny-sd", "resolution": 16,
               "license": "MIT"},
              {"id": "empty", "source": str(tmp_path / "not-a-pipeline"), "family": "tiny-sd", "resolution": 16,
               "license": "MIT"},
              {"id": "odd", "source": str(tmp_path / "odd"), "family": "tiny-sd", "resolution": 16, "license": "MIT"}]
    profile = {"id": "gpu", "models": ["good", "empty", "odd"], "datasets": ["local", "broken"],
               "train": {"device": "cuda", "mixed_precision": "bf16"},
               "evaluate": {"fid_backbone": "inception", "metrics": ["fid"], "allow_missing": False}}
    folder = write_manifests(tmp_path / "m", datasets=[folder_dataset(), folder_dataset("broken", "nothing-here")],
                             models=models, profiles=[profile])
    make_imagefolder(folder / "data")
    return folder


def test_every_problem_at_once_with_its_fix(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    table = preflight("gpu", _bad_manifests(tmp_path), weights=str(tmp_path / "no-weights"), online=False,
                      study_dir=tmp_path / "study")
    problems = table[table["status"] == PROBLEM]
    assert set(problems["subject"]) == {"empty", "odd", "broken", "inception", "cuda"}
    assert (problems["fix"].str.len() > 0).all()
    good = table.set_index("subject").loc["good"]
    assert good["status"] == "ok" and "tiny-sd" in good["detail"] and "16 px" in good["detail"]
    assert table.set_index("subject").loc["local", "status"] == "ok"


def test_cli_exits_2_on_a_problem_and_run_stops_before_the_grid(tmp_path):
    folder = _bad_manifests(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "mc_bench", "--manifests", str(folder), "preflight", "--profile",
                           "gpu", "--offline", "--out", str(tmp_path / "study")], capture_output=True, text=True)
    assert proc.returncode == 2 and "problem: model empty" in proc.stdout and "Fix:" in proc.stdout
    from mc_bench.study.runner import run_study

    with pytest.raises(InputError, match="preflight problems"):
        run_study("gpu", tmp_path / "study", folder, progress=False, grid_only=True)
    assert not (tmp_path / "study" / "runs").exists()
    ok = subprocess.run([sys.executable, "-m", "mc_bench", "preflight", "--profile", "smoke", "--offline"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_hub_columns_are_detected_by_a_documented_rule():
    from datasets import Features, Image, Sequence, Value

    assert detect_columns(Features({"image": Image(), "text": Value("string")})) == ("image", "text")
    assert detect_columns(Features({"img": Image(), "label": Value("int64"), "blip": Value("string")})) == ("img", "blip")
    assert detect_columns(Features({"jpg": Image(), "sentences": Sequence(Value("string")),
                                    "title": Value("string")})) == ("jpg", "sentences")
    assert detect_columns(Features({"a": Image(), "b": Image(), "x": Value("string"), "y": Value("string")})) == (None, None)
