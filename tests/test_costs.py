"""What one new dataset costs each method (mc_bench.study.costs): rates read off a study, the formula against the
seconds its cells measured, and successive halving's run counts."""

import json

import numpy as np
import pandas as pd
import pytest

from mc_bench.config import Profile
from mc_bench.errors import InputError
from mc_bench.select.halving import successive_halving
from mc_bench.study.costs import Rates, measured_rates, method_costs, study_hours


def _study(folder, models, datasets, steps, n_samples, rng):
    """A study folder with the tables measured_rates reads: runs.csv, cells.csv, profiles/timing.json."""
    rows, cells = [], []
    for model in models:
        for dataset in datasets:
            train = steps * rng.uniform(0.1, 0.2)
            rows.append({"model": model, "dataset": dataset, "status": "done", "train_steps": steps,
                         "train_seconds": train, "generate_n_samples": n_samples})
            cells.append({"model": model, "dataset": dataset, "status": "done", "train": train,
                          "sample": n_samples * rng.uniform(0.03, 0.05), "evaluate": n_samples * rng.uniform(0.05, 0.07)})
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "runs.csv", index=False)
    pd.DataFrame(cells).to_csv(folder / "cells.csv", index=False)
    (folder / "profiles").mkdir()
    (folder / "profiles" / "timing.json").write_text(json.dumps({"seconds_per_dataset": 0.25}))
    return pd.DataFrame(cells).assign(seconds=lambda d: d["train"] + d["sample"] + d["evaluate"])


def test_measured_rates_give_back_the_measured_exhaustive_cost(tmp_path):
    models, datasets = [f"m{i}" for i in range(6)], ["a", "b", "c"]
    cells = _study(tmp_path / "s", models, datasets, steps=40, n_samples=16, rng=np.random.default_rng(0))
    rates = measured_rates(tmp_path / "s")
    assert rates.source == "measured: s" and rates.profile_seconds == 0.25
    profile = Profile(id="s", models=models, datasets=datasets, train={"steps": 40}, generate={"n_samples": 16})
    table = method_costs(profile, rates).set_index("method")
    measured = cells.groupby("dataset")["seconds"].sum().mean()  # what exhaustive fine-tuning cost per dataset
    assert table.loc["exhaustive fine-tuning", "seconds_per_dataset"] == pytest.approx(measured, rel=1e-9)
    judge = cells[["sample", "evaluate"]].sum(axis=1).groupby(cells["dataset"]).sum().mean()
    assert table.loc["probe", "seconds_per_dataset"] == pytest.approx(judge, rel=1e-9)
    assert table.loc["M&C", "seconds_per_dataset"] == 0.25 and table.loc["global-best", "seconds_per_dataset"] == 0
    assert table.loc["M&C + probe", "seconds_per_dataset"] == pytest.approx(judge + 0.25)
    assert not any(table.index.str.startswith("successive halving"))  # no rung, no halving row
    # probe-first halving: the probe of all 6, then the better 3 fine-tuned and judged again
    per_run = cells["seconds"].groupby(cells["dataset"]).sum().mean() / 6
    assert table.loc["probe-first halving", "seconds_per_dataset"] == pytest.approx(judge + 3 * per_run)
    assert table.loc["M&C-first halving", "seconds_per_dataset"] == pytest.approx(0.25 + 3 * per_run)
    # the cheap probe: 16 samples of each candidate, here as many as the study's own samples
    assert table.loc["cheap probe", "seconds_per_dataset"] == pytest.approx(judge, rel=1e-9)
    assert table.loc["M&C + cheap probe-first halving", "seconds_per_dataset"] == pytest.approx(judge + 0.25 + 3 * per_run)
    assert study_hours(profile, rates) == pytest.approx(cells["seconds"].sum() / 3600.0, rel=1e-9)


def test_halving_cost_counts_the_runs_successive_halving_makes():
    rates = Rates(step_seconds=1.0, image_seconds=0.5, eval_image_seconds=0.25, profile_seconds=3.0, source="test")
    profile = Profile(id="p", models=[f"m{i}" for i in range(10)], datasets=["a"], train={"steps": 100},
                      generate={"n_samples": 8})
    table = method_costs(profile, rates, rung_steps=(25,), eta=2).set_index("method")
    name = "successive halving"
    judge = 8 * 0.75
    assert table.loc[name, "seconds_per_dataset"] == pytest.approx(10 * (25 + judge) + 5 * (100 + judge))
    assert table.loc[name, "device_hours_per_dataset"] == pytest.approx(table.loc[name, "seconds_per_dataset"] / 3600)
    # the same count as the selector itself: 10 runs at the first rung, the better 5 at the full budget
    models = profile.models
    rungs = {b: pd.Series(np.arange(10.0) + b, index=models) for b in (25, 100)}
    seconds = {b: pd.Series(b + judge, index=models) for b in (25, 100)}
    _, cost, trace = successive_halving(rungs, seconds, higher_is_better=True, eta=2)
    assert [len(t) for t in trace] == [10, 5] and cost == pytest.approx(table.loc[name, "seconds_per_dataset"])
    assert (table["rates"] == "test").all()


def test_a_study_without_training_has_no_rates(tmp_path):
    folder = tmp_path / "pretrained"
    folder.mkdir()
    with pytest.raises(InputError, match=r"pretrained/runs.csv: missing.*Fix: pass a study folder"):
        measured_rates(folder)  # not a study at all: the first missing table is named
    pd.DataFrame([{"model": "m", "dataset": "a", "status": "done", "train_steps": 0, "train_seconds": 0.0,
                   "generate_n_samples": 8}]).to_csv(folder / "runs.csv", index=False)
    pd.DataFrame([{"model": "m", "dataset": "a", "status": "done", "train": 0.0, "sample": 1.0,
                   "evaluate": 1.0}]).to_csv(folder / "cells.csv", index=False)
    with pytest.raises(InputError, match=r"profiles/timing.json: missing"):
        measured_rates(folder)
    (folder / "profiles").mkdir()
    (folder / "profiles" / "timing.json").write_text('{"seconds_per_dataset": 0.2}')
    with pytest.raises(ValueError, match="runs.csv has no done cell with training steps"):
        measured_rates(folder)
