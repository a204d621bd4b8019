"""How M&C's defaults were chosen: every candidate configuration, leave-one-dataset-out on validation histories only.

    python benchmarks/selection_defaults.py [--jobs 2] [--out results/selection]

Validation histories (none of their targets is ever reported):

* ``transfergraph-image-val`` — TransferGraph's image records (``../shared``), held out one at a time: the five
  datasets that are not in its published table (diabetic_retinopathy_detection, eurosat, food101, kitti,
  smallnorb_label_azimuth); each fold learns from the other twelve datasets;
* ``world-val`` — the world's 12 validation datasets (profile ``cpu-validation-full``), held out one at a time, each
  fold learning from the other validation datasets and cpu-paper's 32 (history = both studies' runs, both fine-tuned
  with cpu-paper's recipe: full UNet, lr 5e-5, cosine, 100 steps; profiles of all);
* ``world-val-lora`` — the same 12 datasets fine-tuned with the first recipe (LoRA rank 4; profile
  ``cpu-validation``), with the LoRA cpu-paper study's runs (``results/cpu-paper-lora``) as the other 32;
* ``synthetic-val-<seed>`` — synthetic histories with planted structure, seeds 100-104 (the reported synthetic
  histories use seeds 0-2).

Writes ``validation.csv`` (method × history × dataset rows) and ``validation_summary.csv`` (mean hit@1, regret and
rel@1 per method and history, and each method's gap to the best baseline of that history), and prints the summary.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import pandas as pd

from mc_bench.select.choose import (GlobalBest, HistoryWeighted, MatchAndChoose, NearestDataset, leave_one_dataset_out)
from mc_bench.paths import REPO_ROOT
from mc_bench.select.graph import Node2Vec, SpectralGraphEmbedding
from mc_bench.select.validation import validation_histories

BASELINES = ("global-best", "history-weighted", "nearest-dataset")


def candidates() -> dict:
    """The baselines, M&C with its defaults, and M&C with one setting changed at a time."""
    return {
        "global-best": GlobalBest(),
        "history-weighted": HistoryWeighted(),
        "nearest-dataset": NearestDataset(),
        "M&C (default)": MatchAndChoose(),
        "rule: min (not one-se)": MatchAndChoose(rule="min"),
        "criterion: normalised (not relative)": MatchAndChoose(criterion="normalised"),
        "3 inner folds (not 5)": MatchAndChoose(inner_folds=3),
        "0 rounds (prior only)": MatchAndChoose(n_estimators=0),
        "150 rounds (no inner choice)": MatchAndChoose(n_estimators=150),
        "spectral embedding (not none)": MatchAndChoose(embedding=SpectralGraphEmbedding()),
        "node2vec embedding (not none)": MatchAndChoose(embedding=Node2Vec()),
        "lambdarank (not regression)": MatchAndChoose(objective="lambdarank"),
        "no collaborative features": MatchAndChoose(collaborative=False),
        "prior: global (not auto)": MatchAndChoose(prior="global"),
        "metadata-only": MatchAndChoose(collaborative=False, prior="none"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=str(REPO_ROOT / "results" / "selection"))
    parser.add_argument("--only", default=None, help="comma-separated candidate names (the baselines always run)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    methods = candidates()
    if args.only:
        methods = {k: v for k, v in methods.items() if k in args.only.split(",") or k in BASELINES}
    frames = []
    for name, (history, targets) in validation_histories().items():
        start = time.perf_counter()
        df = leave_one_dataset_out(history, methods, targets=targets, n_jobs=args.jobs)
        frames.append(df.assign(history=name))
        print(f"{name}: {len(targets)} targets, {time.perf_counter() - start:.0f} s", flush=True)
    table = pd.concat(frames, ignore_index=True)
    summary = table.groupby(["history", "method"], sort=False)[["hit@1", "regret", "rel@1", "pearson"]].mean()
    summary = summary.reset_index()
    best = summary[summary["method"].isin(BASELINES)].groupby("history").agg(
        best_hit1=("hit@1", "max"), best_regret=("regret", "min"))
    summary = summary.join(best, on="history")
    summary["hit1_gain"] = summary["hit@1"] - summary["best_hit1"]
    summary["regret_gain"] = summary["best_regret"] - summary["regret"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.drop(columns=["seconds"]).to_csv(out / "validation.csv", index=False)
    summary.to_csv(out / "validation_summary.csv", index=False, float_format="%.4f")
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(summary.round(4).to_string(index=False))
        overall = summary.groupby("method", sort=False)[["hit1_gain", "regret_gain"]].agg(["mean", "min"])
        print(overall.round(4).to_string())


if __name__ == "__main__":
    main()
