"""M&C with its defaults and every baseline on the reported histories, leave-one-dataset-out.

    python benchmarks/selection_report.py [--jobs 2] [--out results/selection]

Reported histories (``mc_bench.select.validation.reported_histories``): TransferGraph's image records held out on the 8
datasets of its published table, the committed cpu-paper study (32 datasets), synthetic histories with seeds 0-2.
None of their targets chose a default (``benchmarks/selection_defaults.py`` did, on validation histories).

Every dataset of a history is held out in turn (the other datasets' gaps calibrate a target's conformal shortlist);
means are over the reported targets. Writes ``reported.csv`` (method × history × dataset rows, every dataset;
column ``reported``), ``reported_scores.csv`` (every ranked score) and
``reported_summary.csv``: per history and method the mean hit@1, regret, rel@1 and Pearson, the conformal shortlist's
coverage and size at 90 %, and the method's gap to the best baseline of that history (``hit1_gain``,
``regret_gain``: positive = ahead), and ``reported_paired.csv``: every method against M&C paired by reported target
(mc_bench.select.lodo.paired_comparison). Prints both; the last line is ``never_behind=<yes|no>`` for M&C.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import pandas as pd

from mc_bench.select import default_methods, leave_one_dataset_out, paired_comparison, shortlist_coverage
from mc_bench.paths import REPO_ROOT
from mc_bench.select.validation import reported_histories

BASELINES = ("global-best", "history-weighted", "nearest-dataset")


def summarise(table: pd.DataFrame, scores: pd.DataFrame, targets: dict[str, list[str]]) -> pd.DataFrame:
    """Means over each history's reported targets; the shortlist of a target is calibrated on the history's other
    datasets (all of them, reported or not)."""
    reported = pd.concat([table[(table["history"] == h) & table["dataset"].isin(t)] for h, t in targets.items()])
    summary = reported.groupby(["history", "method"], sort=False)[["hit@1", "regret", "rel@1", "pearson"]].mean()
    summary = summary.reset_index()
    shortlist = pd.concat([shortlist_coverage(table[table["history"] == h], scores[scores["history"] == h],
                                              targets=t).assign(history=h) for h, t in targets.items()],
                          ignore_index=True)
    summary = summary.merge(shortlist.drop(columns=["n_models"]), on=["history", "method"], how="left")
    best = summary[summary["method"].isin(BASELINES)].groupby("history").agg(
        best_hit1=("hit@1", "max"), best_regret=("regret", "min"))
    summary = summary.join(best, on="history")
    summary["hit1_gain"] = summary["hit@1"] - summary["best_hit1"]
    summary["regret_gain"] = summary["best_regret"] - summary["regret"]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=str(REPO_ROOT / "results" / "selection"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    frames, score_frames, reported = [], [], {}
    for name, (history, targets) in reported_histories().items():
        start = time.perf_counter()
        reported[name] = targets  # every dataset is held out (the others calibrate the shortlist); targets reported
        df, scores = leave_one_dataset_out(history, default_methods(), n_jobs=args.jobs, return_scores=True)
        frames.append(df.assign(history=name, reported=df["dataset"].isin(targets)))
        score_frames.append(scores.assign(history=name))
        print(f"{name}: {len(targets)} targets, {time.perf_counter() - start:.0f} s", flush=True)
    table, scores = pd.concat(frames, ignore_index=True), pd.concat(score_frames, ignore_index=True)
    summary = summarise(table, scores, reported)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.drop(columns=["seconds"]).to_csv(out / "reported.csv", index=False)
    scores.to_csv(out / "reported_scores.csv", index=False, float_format="%.9g")
    summary.to_csv(out / "reported_summary.csv", index=False, float_format="%.4f")
    paired = pd.concat([paired_comparison(table[(table["history"] == h) & table["reported"]], "M&C").assign(history=h)
                        for h in reported], ignore_index=True)
    paired.to_csv(out / "reported_paired.csv", index=False, float_format="%.4f")
    with pd.option_context("display.width", 220, "display.max_rows", 200):
        print(summary.round(4).to_string(index=False))
        print(paired[["history", "method", "n_paired", "top1_diff", "regret_diff", "regret_diff_ci_low",
                      "regret_diff_ci_high", "wins", "losses", "verdict"]].round(4).to_string(index=False))
    mc = summary[summary["method"] == "M&C"]
    ahead = bool(((mc["hit1_gain"] >= -1e-9) & (mc["regret_gain"] >= -1e-9)).all())
    print(f"never_behind={'yes' if ahead else 'no'}")


if __name__ == "__main__":
    main()
