"""What choosing a model for one new dataset costs each method, from per-step and per-image rates.

The frontier of a study measured on this machine (``selection_summary.csv``'s ``seconds_per_dataset``) sums the
seconds its cells took. For a profile that was not run here — the GPU ``paper`` profile — the same costs follow
from its settings and four rates:

* ``step_seconds`` — one optimizer step of fine-tuning at the profile's batch size and resolution;
* ``image_seconds`` — sampling one image with the profile's inference steps;
* ``eval_image_seconds`` — evaluating one generated image (FID/KID features, CLIP score, ImageReward);
* ``profile_seconds`` — profiling the new dataset (embedding its images and captions: M&C's only device work).

Per new dataset with ``M`` candidates, full budget ``S`` steps, ``N`` samples per run:

==========================  ========================================================================================
method                      cost
==========================  ========================================================================================
global-best                 0 (reads the history)
M&C, history-weighted, ...  profile the dataset: ``profile_seconds`` (each selector pays for what the method registry
                            says it needs: profile, probe, cheap probe)
probe                       sample and evaluate every candidate as pretrained: ``M x N x (image + eval_image)``
cheap probe                 the same with 16 samples per candidate
M&C + probe                 probe + profile
successive halving          ``M`` runs at the first rung's steps, then ``ceil(M / eta)`` at the next, ... to ``S``,
                            each run = its steps x ``step_seconds`` + sampling and evaluating ``N`` images
probe-first halving         the probe, then ``ceil(M / eta)`` runs of ``S`` steps, each sampled and evaluated
M&C-first halving           profile, then ``ceil(M / eta)`` runs of ``S`` steps (M&C's top), sampled and evaluated
exhaustive fine-tuning      ``M`` runs of ``S`` steps, each sampled and evaluated
==========================  ========================================================================================

:func:`measured_rates` reads the rates off a study that was run (its ``cells.csv`` and ``runs.csv``), so the same
formula can be checked against a study's measured frontier and applied to the paper profile with rates measured
on a GPU. Rates that were not measured are estimates, and every row says which it is (``rates``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from ..config import Profile
from ..errors import InputError
from ..select.halving import halving_schedule
from ..select.methods import (CHEAP_PROBE, CHEAP_PROBE_SAMPLES, METHODS, PROBE, PROFILE, RANKED_FIRST,
                              ranked_first_label)


@dataclass(frozen=True)
class Rates:
    """Seconds per unit of work on one device, and where they came from (``source``: "measured: <study>" or
    "estimate: <basis>")."""

    step_seconds: float
    image_seconds: float
    eval_image_seconds: float
    profile_seconds: float
    source: str


def measured_rates(study_dir: str | Path, profile_dir: str | Path | None = None) -> Rates:
    """The mean rates of a study's done cells (total seconds over total work): training seconds per step
    (``runs.csv``), sampling and evaluation seconds per generated image (``cells.csv`` stage seconds over
    ``generate_n_samples``), and profiling seconds per dataset (``profiles/timing.json``; ``profile_dir`` to read
    another study's)."""
    study_dir = Path(study_dir)
    timing_file = Path(profile_dir or study_dir / "profiles") / "timing.json"
    for path in (study_dir / "runs.csv", study_dir / "cells.csv", timing_file):
        if not path.is_file():
            raise InputError(path, "missing: the rates are read from a study's runs.csv, cells.csv and "
                             "profiles/timing.json", "pass a study folder whose grid and profiles were run (mc-bench "
                             "run --profile NAME), or --rates-from another study")
    runs = pd.read_csv(study_dir / "runs.csv")
    runs = runs[(runs["status"] == "done") & (runs["train_steps"] > 0)]
    if runs.empty:
        raise InputError(study_dir, "runs.csv has no done cell with training steps: its rates cannot be read",
                         "pass a study that fine-tuned (train.steps > 0) and finished some cells")
    cells = pd.read_csv(study_dir / "cells.csv")
    cells = cells[cells["status"] == "done"].merge(runs[["model", "dataset", "generate_n_samples"]],
                                                   on=["model", "dataset"])
    timing = json.loads(timing_file.read_text())
    images = float(cells["generate_n_samples"].sum())
    return Rates(step_seconds=float(runs["train_seconds"].sum() / runs["train_steps"].sum()),
                 image_seconds=float(cells["sample"].sum() / images),
                 eval_image_seconds=float(cells["evaluate"].sum() / images),
                 profile_seconds=float(timing["seconds_per_dataset"]),
                 source=f"measured: {study_dir.name}")


def method_costs(profile: Profile, rates: Rates, n_models: int | None = None, rung_steps: tuple[int, ...] = (),
                 eta: float = 2) -> pd.DataFrame:
    """Seconds and device-hours one new dataset costs each registered method (:mod:`mc_bench.select.methods`) under
    ``profile``'s settings (see the module docstring): a selector pays for what it needs (profile, probe, cheap
    probe); ``rung_steps`` are successive halving's lower rungs (the profile's ``train.steps`` is the last); without
    them there is no halving row. Returns ``method``, ``seconds_per_dataset``, ``device_hours_per_dataset``,
    ``cost_basis`` and the rates' fields."""
    m = n_models if n_models is not None else len(profile.models)
    full_steps = profile.train.steps
    n_samples = profile.generate.n_samples
    judge = n_samples * (rates.image_seconds + rates.eval_image_seconds)  # sample + evaluate one run
    cheap = CHEAP_PROBE_SAMPLES * (rates.image_seconds + rates.eval_image_seconds)
    run = full_steps * rates.step_seconds + judge
    what = {PROFILE: (rates.profile_seconds, "profile the dataset"),
            PROBE: (m * judge, f"{m} candidates x {n_samples} pretrained samples, evaluated"),
            CHEAP_PROBE: (m * cheap, f"{m} candidates x {CHEAP_PROBE_SAMPLES} pretrained samples, evaluated")}

    def choosing(method) -> tuple[float, list[str]]:
        parts = [what[n] for n in (PROFILE, PROBE, CHEAP_PROBE) if n in method.needs]
        return sum(p[0] for p in parts), [p[1] for p in parts] or ["reads the history"]

    rows = []
    for method in METHODS:
        if method.make is not None and method.in_study:
            seconds, basis = choosing(method)
            rows.append((method.label, seconds, " + ".join(basis)))
    survivors = halving_schedule(m, [0, full_steps], eta)[1]
    rows.append(("probe-first halving", m * judge + survivors * run,
                 f"probe {m} candidates, fine-tune the better {survivors} ({full_steps} steps)"))
    for method in RANKED_FIRST:
        seconds, basis = choosing(method)
        rows.append((ranked_first_label(method), seconds + survivors * run,
                     " + ".join(basis) + f", fine-tune the top {survivors} ({full_steps} steps)"))
    budgets = sorted(set(rung_steps) | {full_steps})
    if len(budgets) > 1:
        counts = halving_schedule(m, budgets, eta)
        seconds = sum(c * (b * rates.step_seconds + judge) for b, c in zip(budgets, counts))
        rows.append(("successive halving", seconds, " + ".join(f"{c} x {b} steps" for b, c in zip(budgets, counts))
                     + f", each sampled ({n_samples}) and evaluated"))
    rows.append(("exhaustive fine-tuning", m * run, f"{m} x ({full_steps} steps + {n_samples} samples, evaluated)"))
    table = pd.DataFrame(rows, columns=["method", "seconds_per_dataset", "cost_basis"])
    table["device_hours_per_dataset"] = table["seconds_per_dataset"] / 3600.0
    for key, value in asdict(rates).items():
        table[f"rates_{key}" if key != "source" else "rates"] = value
    return table[["method", "seconds_per_dataset", "device_hours_per_dataset", "cost_basis",
                  *[c for c in table.columns if c.startswith("rates")]]]


def study_hours(profile: Profile, rates: Rates) -> float:
    """Device-hours of the profile's whole grid (every model x dataset run: train, sample, evaluate)."""
    per_cell = profile.train.steps * rates.step_seconds + profile.generate.n_samples * (
        rates.image_seconds + rates.eval_image_seconds)
    return len(profile.models) * len(profile.datasets) * per_cell / 3600.0

