"""Choosing, judged on a study: every registered method leave-one-dataset-out, beside the multi-fidelity ones, with
what each costs per new dataset and how each compares with M&C, paired by dataset.

:func:`study_selection` writes ``selection/lodo.csv``, ``selection/scores.csv``, ``selection/halving.csv``,
``selection/paired.csv``, ``selection/probe_agreement.csv`` (with a cheap probe) and ``selection_summary.csv`` (schema
in :mod:`mc_bench.study.tables`). The methods come from
the registry (:mod:`mc_bench.select.methods`): those whose needs the study can meet — the probe with a
``<study>-pretrained`` companion, the cheap probe with a ``<study>-probe16`` companion (16 samples per candidate).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..errors import InputError
from ..select.halving import halving_evaluation, ranked_halving_evaluation
from ..select.history import History, load_history
from ..select.lodo import leave_one_dataset_out, paired_comparison
from ..select.methods import (CHEAP_PROBE, METHODS, PROBE, PROFILE, RANKED_FIRST, method, ranked_first_label)
from ..select.ranking import bootstrap_summary
from ..select.shortlist import shortlist_coverage
from .tables import companion_study, probe_table, rung_studies, run_seconds

CHEAP_PROBE_COMPANION = "probe16"  # <study>-probe16: the pretrained grid sampled with 16 images per cell
REFERENCE = "M&C"


def selection_summary(lodo: pd.DataFrame, seed: int = 0, scores: pd.DataFrame | None = None,
                      level: float = 0.9) -> pd.DataFrame:
    """One row per method: ``top1`` (share of held-out datasets whose best model is ranked first), ``top3``
    (the best model is among the first three), ``mean_regret`` (label lost by taking the first pick), each with
    a 95 % bootstrap interval over datasets; with ``scores`` (leave_one_dataset_out(..., return_scores=True)),
    the conformal shortlist's ``shortlist_coverage`` and mean ``shortlist_size`` at ``shortlist_level``."""
    boot = bootstrap_summary(lodo, ["hit@1", "hit@3", "regret"], seed=seed)
    names = {"hit@1": "top1", "hit@3": "top3", "regret": "mean_regret"}
    rows = []
    for name, group in boot.groupby("method", sort=False):
        row = {"method": name}
        for _, r in group.iterrows():
            metric = names[r["metric"]]
            row[metric] = r["mean"]
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = r["ci_low"], r["ci_high"]
        row["n_datasets"] = int(group["n_datasets"].max())
        rows.append(row)
    cols = ["method", "top1", "top3", "mean_regret"]
    out = pd.DataFrame(rows)
    if scores is not None and len(scores):
        shortlist = shortlist_coverage(lodo, scores, level).drop(columns=["n_models"])
        out = out.merge(shortlist, on="method", how="left")
    return out[cols + [c for c in out.columns if c not in cols]]


def selection_costs(lodo: pd.DataFrame, profile_seconds: float, probe_seconds: dict[str, float]) -> pd.DataFrame:
    """The compute one new dataset costs each selector of ``lodo``, from what the registry says it needs: profiling
    the dataset (``profile``), probing every candidate (``probe`` / ``cheap probe``: ``probe_seconds`` of each), and
    its own fit and rank time (mean ``seconds`` of its leave-one-dataset-out folds; the random baseline's
    expectation costs nothing). Returns ``method``, ``seconds_per_dataset``, ``cost_basis``."""
    rows = []
    for name, fits in lodo.groupby("method", sort=False)["seconds"]:
        needs = method(name).needs
        seconds = 0.0 if name == "random" else float(fits.mean())
        basis = ["fit + rank"]
        if PROFILE in needs:
            seconds += profile_seconds
            basis.insert(0, "profile")
        for probe in (PROBE, CHEAP_PROBE):
            if probe in needs:
                seconds += probe_seconds[probe]
                basis.insert(0, f"{probe} every candidate (sample + evaluate)")
        rows.append({"method": name, "seconds_per_dataset": seconds, "cost_basis": " + ".join(basis)})
    return pd.DataFrame(rows)


def study_histories(study_dir: Path, history: History) -> tuple[dict[str, History], dict[str, pd.DataFrame]]:
    """The histories a study's methods are judged on, by the probe they read (None: no probe; ``probe``: the
    history's own, from ``<study>-pretrained``; ``cheap probe``: ``<study>-probe16``'s), and each probe's cells'
    seconds (model × dataset)."""
    histories, seconds = {None: history}, {}
    pretrained = companion_study(study_dir, "pretrained")
    if history.probe is not None and pretrained is not None:
        histories[PROBE] = history
        seconds[PROBE] = run_seconds(pretrained)
    cheap = companion_study(study_dir, CHEAP_PROBE_COMPANION)
    if cheap is not None:
        histories[CHEAP_PROBE] = history.with_probe(probe_table(cheap, history.label))
        seconds[CHEAP_PROBE] = run_seconds(cheap)
    return histories, seconds


def judge_methods(histories: dict[str, History], n_jobs: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every registered study method whose probe is available, leave-one-dataset-out on the history with that
    probe: the LODO rows and scores of all of them."""
    frames, score_frames = [], []
    for probe, history in histories.items():
        methods = {m.label: m.make() for m in METHODS if m.make is not None and m.in_study
                   and m.probe_table == probe}
        # a probe tier ranks the datasets its probe covers (a partial companion grid leaves some out)
        targets = history.datasets if probe is None else [d for d in history.datasets if d in history.probe.columns
                                                          and history.probe[d].notna().any()]
        if methods and targets:
            lodo, scores = leave_one_dataset_out(history, methods, targets=targets, n_jobs=n_jobs,
                                                 return_scores=True)
            frames.append(lodo)
            score_frames.append(scores)
    return pd.concat(frames, ignore_index=True), pd.concat(score_frames, ignore_index=True)


def halving_tables(study_dir: Path, history: History, scores: pd.DataFrame, costs: pd.DataFrame,
                   probes: dict[str, pd.DataFrame], eta: float = 2) -> list[tuple[pd.DataFrame, str]]:
    """The multi-fidelity methods on the study's measured tables: successive halving (``<study>-rung<steps>``
    companions), probe-first halving, and each ranked-first method's top ``1/eta`` fine-tuned; each with its cost
    basis."""
    full = run_seconds(study_dir)
    budget = int(pd.read_csv(study_dir / "runs.csv")["train_steps"].max())
    truth = history.label_matrix()
    selector_seconds = costs.set_index("method")["seconds_per_dataset"]
    out = []
    rungs = rung_studies(study_dir)
    if rungs:
        quality = {s: pd.read_csv(f / "performance.csv").pivot(index="model", columns="dataset", values=history.label)
                   for s, f in rungs.items()}
        seconds = {s: run_seconds(f) for s, f in rungs.items()}
        steps = "→".join(str(b) for b in [*rungs, budget])
        out.append((halving_evaluation({**quality, budget: truth}, {**seconds, budget: full},
                                       history.higher_is_better, eta=eta, method="successive halving"),
                    f"short fine-tunes of every candidate ({steps} steps), the better 1/{eta:g} continue (each rung "
                    "from the pretrained model)"))
    if PROBE in probes:
        out.append((halving_evaluation({0: history.probe, budget: truth}, {0: probes[PROBE], budget: full},
                                       history.higher_is_better, eta=eta, method="probe-first halving"),
                    f"the probe, then the better 1/{eta:g} fine-tuned to the full budget ({budget} steps)"))
    for ranker in RANKED_FIRST:
        if ranker.label in selector_seconds.index:
            ranked = scores[scores["method"] == ranker.label].pivot(index="model", columns="dataset", values="score")
            out.append((ranked_halving_evaluation(ranked, float(selector_seconds[ranker.label]), truth, full,
                                                  history.higher_is_better, eta=eta, steps=budget,
                                                  method=ranked_first_label(ranker)),
                        f"{ranker.label} (leave-one-dataset-out), then its top 1/{eta:g} fine-tuned ({budget} steps)"))
    return out


def probe_agreement(full: pd.DataFrame, cheap: pd.DataFrame, higher_is_better: bool) -> pd.DataFrame:
    """How well the cheap probe stands in for the full one, per dataset (model × dataset tables of the label): the
    Spearman correlation of the candidates' two probe values, whether both pick the same best pretrained model, and
    where the full probe's pick ranks under the cheap one."""
    from scipy.stats import spearmanr

    rows = []
    for dataset in [d for d in full.columns if d in cheap.columns]:
        pair = pd.concat([full[dataset], cheap[dataset]], axis=1, keys=["full", "cheap"]).dropna()
        if len(pair) < 2:
            continue
        good = pair if higher_is_better else -pair
        rank_in_cheap = good["cheap"].rank(ascending=False, method="min")
        rows.append({"dataset": dataset, "n_models": len(pair),
                     "spearman": float(spearmanr(pair["full"], pair["cheap"])[0]),
                     "same_best": bool(good["full"].idxmax() == good["cheap"].idxmax()),
                     "full_best_rank_in_cheap": int(rank_in_cheap[good["full"].idxmax()])})
    return pd.DataFrame(rows)


def _study_inputs(study_dir: Path, timing_file: Path) -> dict:
    """The study's tables that the costs read, checked before the leave-one-dataset-out (minutes) rather than after:
    ``profiles/timing.json`` (returned), ``cells.csv`` and ``runs.csv`` with the columns used."""
    try:
        timing = json.loads(timing_file.read_text())
        float(timing["seconds_per_dataset"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise InputError(timing_file, f"the profiling time cannot be read ({type(err).__name__}: {err})",
                         "rerun 01_profile on the study (it writes timing.json), or restore the file") from None
    for name, columns in (("cells.csv", ["model", "dataset", "status", "train", "sample", "evaluate"]),
                          ("runs.csv", ["model", "dataset", "train_steps"])):
        path = study_dir / name
        try:
            header = list(pd.read_csv(path, nrows=0).columns)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise InputError(path, f"cannot be read ({type(err).__name__})", "regenerate the study's tables "
                             "(mc-bench run --profile NAME resumes and rewrites them)") from None
        missing = [c for c in columns if c not in header]
        if missing:
            raise InputError(path, f"columns {missing} are missing", "regenerate the study's tables (mc-bench run "
                             "--profile NAME resumes and rewrites them)")
    return timing


def study_selection(study_dir: str | Path, n_jobs: int = 1, seed: int = 0, level: float = 0.9, eta: float = 2,
                    out_dir: str | Path | None = None, history_dir: str | Path | None = None,
                    timing_file: str | Path | None = None) -> dict[str, pd.DataFrame]:
    """Judge every registered method on the study's history leave-one-dataset-out, beside the multi-fidelity ones
    and exhaustive fine-tuning; compare each with M&C, paired by dataset; write the tables (see the module
    docstring) to ``out_dir`` (the study itself by default). The history and the profiles' ``timing.json`` are read
    from ``history_dir`` and ``timing_file`` (the study's by default). Returns the tables by name."""
    study_dir = Path(study_dir)
    out_dir = Path(out_dir) if out_dir else study_dir
    history = load_history(Path(history_dir) if history_dir else study_dir / "history")
    timing = _study_inputs(study_dir, Path(timing_file or study_dir / "profiles" / "timing.json"))
    out = out_dir / "selection"
    out.mkdir(parents=True, exist_ok=True)
    histories, probes = study_histories(study_dir, history)
    lodo, scores = judge_methods(histories, n_jobs)
    lodo.to_csv(out / "lodo.csv", index=False)
    scores.to_csv(out / "scores.csv", index=False)

    probe_seconds = {p: float(t.reindex(columns=history.datasets).sum(axis=0, min_count=1).mean())
                     for p, t in probes.items()}
    costs = [selection_costs(lodo, timing["seconds_per_dataset"], probe_seconds)]
    halvings = halving_tables(study_dir, history, scores, costs[0], probes, eta)
    halvings = [(h, basis) for h, basis in halvings if len(h)]  # a companion sharing no dataset judges nothing
    judged = [lodo]
    for halving, basis in halvings:
        judged.append(halving.drop(columns=["runs", "budgets"]))
        costs.append(pd.DataFrame([{"method": halving["method"].iloc[0],
                                    "seconds_per_dataset": float(halving["seconds"].mean()), "cost_basis": basis}]))
    if halvings:
        pd.concat([h for h, _ in halvings], ignore_index=True).to_csv(out / "halving.csv", index=False)
    exhaustive = method("exhaustive")  # it defines the label: every dataset's best model, at no regret
    judged.append(pd.DataFrame({"method": exhaustive.label, "dataset": history.datasets, "hit@1": 1.0, "hit@3": 1.0,
                                "regret": 0.0}))
    judged = pd.concat(judged, ignore_index=True)
    if PROBE in histories and CHEAP_PROBE in histories:
        probe_agreement(histories[PROBE].probe, histories[CHEAP_PROBE].probe, history.higher_is_better).to_csv(
            out / "probe_agreement.csv", index=False)
    paired = paired_comparison(judged, REFERENCE, seed=seed)
    paired.to_csv(out / "paired.csv", index=False)

    summary = selection_summary(judged, seed=seed, scores=scores, level=level)
    full = run_seconds(study_dir)
    costs.append(pd.DataFrame([{"method": exhaustive.label,
                                "seconds_per_dataset": float(full.reindex(columns=history.datasets)
                                                             .sum(axis=0, min_count=1).mean()),
                                "cost_basis": exhaustive.description}]))
    summary = summary.merge(pd.concat(costs, ignore_index=True), on="method", how="left")
    registry = pd.DataFrame([{"method": name, "kind": method(name).kind, "tier": method(name).tier}
                             for name in summary["method"]])
    columns = ["method", "top1_diff", "top1_diff_ci_low", "top1_diff_ci_high", "regret_diff", "regret_diff_ci_low",
               "regret_diff_ci_high", "wins", "losses", "ties", "verdict"]
    summary = summary.merge(registry, on="method").merge(paired[columns] if len(paired) else
                                                         pd.DataFrame(columns=columns), on="method", how="left")
    summary.to_csv(out_dir / "selection_summary.csv", index=False)
    return {"lodo": lodo, "scores": scores, "summary": summary, "paired": paired,
            **({"halving": pd.concat([h for h, _ in halvings], ignore_index=True)} if halvings else {})}
