"""The notebooks as a person runs them in JupyterLab: from ``notebooks/`` as working folder, with their default
parameters, on the committed ``results/cpu-paper`` study — they run, show their figures inline, regenerate the
committed selection tables, and leave the repository as it was."""

import hashlib
import json
import subprocess

import pandas as pd
import pytest

from mc_bench.errors import InputError
from mc_bench.paths import NOTEBOOKS, REPO_ROOT, SCRATCH, resolve, scratch_dir_for
from mc_bench.study import analysis_folders, study_file

COMMITTED = REPO_ROOT / "results" / "cpu-paper"
AS_COMMITTED = [("00_world.ipynb", {}), ("01_profile.ipynb", {}), ("04_graph.ipynb", {}),
                ("05_choose.ipynb", {"ablations": False}), ("06_report.ipynb", {})]


def git_status() -> str | None:
    """``git status --porcelain`` of the repository, or None where it is not a git checkout."""
    try:
        return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO_ROOT,
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def tree_digest(folder) -> dict[str, str]:
    """SHA-256 of every file of a study folder, the per-cell runs/ aside."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "runs" not in p.relative_to(folder).parts}


def image_outputs(notebook) -> int:
    cells = json.loads(notebook.read_text())["cells"]
    return sum("image/png" in out.get("data", {}) for c in cells for out in c.get("outputs", []))


def test_resolve_takes_relative_paths_against_the_repository_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve("results/cpu-paper") == COMMITTED
    assert resolve(tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve("~/study") == tmp_path / "study"
    assert scratch_dir_for("results/cpu-paper") == SCRATCH / "cpu-paper"


def test_analysis_folders_refuse_a_folder_that_is_not_a_study_and_default_to_scratch(tmp_path):
    with pytest.raises(InputError, match="not a study folder.*results/cpu-paper"):
        analysis_folders(tmp_path)
    (tmp_path / "study.json").write_text("{}")
    study, out = analysis_folders(tmp_path, tmp_path / "out")
    assert (study, out) == (tmp_path, tmp_path / "out") and out.is_dir()
    assert study_file("selection_summary.csv", study, out) == study / "selection_summary.csv"
    (out / "selection_summary.csv").write_text("regenerated")
    assert study_file("selection_summary.csv", study, out) == out / "selection_summary.csv"


@pytest.mark.skipif(not (COMMITTED / "study.json").is_file(), reason="the committed cpu-paper study is not here")
def test_notebooks_run_on_the_committed_study_from_the_notebooks_folder_and_change_nothing(tmp_path):
    import shutil

    import papermill as pm

    scratch = scratch_dir_for(COMMITTED)
    shutil.rmtree(scratch, ignore_errors=True)  # regenerable by definition; a stale table must not be read
    status, digest = git_status(), tree_digest(COMMITTED)
    for notebook, parameters in AS_COMMITTED:
        pm.execute_notebook(str(NOTEBOOKS / notebook), str(tmp_path / notebook), parameters=parameters,
                            cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False)

    assert tree_digest(COMMITTED) == digest
    assert git_status() == status
    # what 05 regenerated into the scratch folder is what the repository has
    columns = ["method", "top1", "top3", "mean_regret", "n_datasets"]
    committed = pd.read_csv(COMMITTED / "selection_summary.csv")[columns]
    regenerated = pd.read_csv(scratch / "selection_summary.csv")[columns]
    pd.testing.assert_frame_equal(regenerated, committed, check_exact=False, rtol=0, atol=1e-9)
    lodo = ["method", "dataset", "hit@1", "hit@3", "rel@1", "regret", "spearman"]
    pd.testing.assert_frame_equal(pd.read_csv(scratch / "selection" / "lodo.csv")[lodo],
                                  pd.read_csv(COMMITTED / "selection" / "lodo.csv")[lodo],
                                  check_exact=False, rtol=0, atol=1e-9)
    # the report shows its figures inline: heatmap, contact sheets, matching graph, top-k, regret, frontier
    sheets = len(list((COMMITTED / "contact_sheets").glob("*.png")))
    assert image_outputs(tmp_path / "06_report.ipynb") >= sheets + 4
    assert image_outputs(tmp_path / "04_graph.ipynb") >= 2 and image_outputs(tmp_path / "00_world.ipynb") >= 1
