"""How M&C's defaults were chosen: every candidate configuration, leave-one-dataset-out on validation histories only,
each compared with the default paired by dataset.

    python benchmarks/selection_defaults.py [--tier profile|probe] [--jobs 2] [--out results/selection] [--only NAME,...]

Validation histories (``mc_bench.select.validation.validation_histories``; none of their targets is ever reported):

* ``transfergraph-image-val`` — TransferGraph's image records held out on the five datasets that are not in its
  published table; each fold learns from the other twelve datasets;
* ``world-val`` — the world's 48 validation datasets (profiles ``cpu-validation-full`` and ``cpu-validation-more``),
  held out one at a time, each fold learning from the other validation datasets and cpu-paper's 32 (all fine-tuned
  with cpu-paper's recipe), with the probe of every dataset whose grid has a ``<study>-pretrained`` companion (the
  probe tier is judged on those);
* ``world-val-lora`` — the first 12 validation datasets with the first recipe (LoRA), with the LoRA cpu-paper's runs;
* ``synthetic-val-<seed>`` — synthetic histories with planted structure (and a probe), seeds 100-104.

The rule, fixed before the runs: a candidate replaces the default when, over the real validation targets pooled
(world-val and transfergraph-image-val), its paired comparison with the default is ``better`` (a 95 % bootstrap
interval of the top-1 or regret difference excludes 0 in its favour, the other not against it, confirmed by a
signed-rank test: :func:`mc_bench.select.lodo.paired_comparison`) and it is not
``worse`` on the synthetic ones; among several, the lowest pooled mean regret. Otherwise the default stays: a
difference the validation datasets cannot resolve is not a reason to change.

Two tiers, each run on its own: ``profile`` (M&C, which needs only the new dataset's profile, its variants and the
baselines of that tier) and ``probe`` (M&C + probe, its variants, the probe and the probe plus gain, on the
histories that have a probe). Writes ``validation_<tier>.csv`` (method × history × dataset rows),
``validation_<tier>_summary.csv`` (per history and method: mean hit@1, regret, rel@1, Pearson) and
``validation_<tier>_paired.csv`` (every candidate against the tier's default, per history and pooled), and prints
the summary, the pooled paired table and the decision.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import pandas as pd

from mc_bench.paths import REPO_ROOT
from mc_bench.select import (GlobalBest, HistoryWeighted, MatchAndChoose, NearestDataset, Probe, ProbeGain,
                             TransferGraph, leave_one_dataset_out, paired_comparison)
from mc_bench.select.graph import Node2Vec, SpectralGraphEmbedding
from mc_bench.select.validation import validation_histories

REAL = ("world-val", "transfergraph-image-val")  # pooled for the decision; world-val-lora and synthetic: checks


def candidates() -> dict:
    """The baselines, M&C with its defaults, and M&C with one setting changed at a time (profile tier)."""
    return {
        "global-best": GlobalBest(),
        "history-weighted": HistoryWeighted(),
        "nearest-dataset": NearestDataset(),
        "TransferGraph (XGBoost, node2vec+)": TransferGraph(),
        "M&C (default)": MatchAndChoose(),
        "learners: without the booster": MatchAndChoose(learners=("global", "local", "nearest")),
        "learners: booster only": MatchAndChoose(learners=("booster",)),
        "learners: without global": MatchAndChoose(learners=("local", "nearest", "booster")),
        "blend: equal weights": MatchAndChoose(blend="equal"),
        "stacking weighs good models more (top_weight 3)": MatchAndChoose(top_weight=3.0),
        "local bandwidth 0.1 (not 0.3)": MatchAndChoose(local_bandwidth=0.1),
        "local bandwidth 1 (not 0.3)": MatchAndChoose(local_bandwidth=1.0),
        "10 inner folds (not 5)": MatchAndChoose(inner_folds=10),
        "booster: 300 rounds (not 100)": MatchAndChoose(n_estimators=300),
        "booster: no collaborative features": MatchAndChoose(collaborative_features=False),
        "embedding: node2vec+": MatchAndChoose(embedding=Node2Vec()),
        "embedding: spectral": MatchAndChoose(embedding=SpectralGraphEmbedding()),
    }


def probe_candidates() -> dict:
    """The probe tier: the probe, the probe plus gain, M&C + probe with its defaults and one change at a time."""
    return {
        "probe": Probe(),
        "probe + gain": ProbeGain(),
        "M&C + probe (default)": MatchAndChoose(probe=True),
        "M&C + probe: gain bandwidth 0.1 (not 0.3)": MatchAndChoose(probe=True, gain_bandwidth=0.1),
        "M&C + probe: gain bandwidth 1 (not 0.3)": MatchAndChoose(probe=True, gain_bandwidth=1.0),
        "M&C + probe: probe learners only": MatchAndChoose(probe=True, learners=()),
        "M&C + probe: equal weights": MatchAndChoose(probe=True, blend="equal"),
        "M&C + probe: top_weight 3": MatchAndChoose(probe=True, top_weight=3.0),
    }


def decide(paired: pd.DataFrame, default: str, variants: list[str]) -> str:
    """The rule of the module docstring: the configuration of ``variants`` to keep, from the pooled paired
    comparisons with ``default``."""
    real = paired[paired["history"] == "pooled: real"].set_index("method")
    synthetic = paired[paired["history"] == "pooled: synthetic"].set_index("method")
    better = [m for m in real.index if m in variants and real.loc[m, "verdict"] == "better"
              and not (m in synthetic.index and synthetic.loc[m, "verdict"] == "worse")]
    if not better:
        return default
    return min(better, key=lambda m: real.loc[m, "regret_diff"])


def compare(table: pd.DataFrame, default: str, names: list[str]) -> pd.DataFrame:
    """Every candidate of ``names`` against ``default``, per history and pooled (real / synthetic)."""
    table = table[table["method"].isin(names)]
    frames = []
    for history, group in table.groupby("history", sort=False):
        frames.append(paired_comparison(group, default).assign(history=history))
    for pool, mask in (("pooled: real", table["history"].isin(REAL)),
                       ("pooled: synthetic", table["history"].str.startswith("synthetic"))):
        if mask.any():
            pooled = table[mask].assign(dataset=table["history"] + "/" + table["dataset"])
            frames.append(paired_comparison(pooled, default).assign(history=pool))
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", choices=["profile", "probe"], default="profile")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=str(REPO_ROOT / "results" / "selection"))
    parser.add_argument("--only", default=None, help="comma-separated candidate names (the default always runs)")
    parser.add_argument("--reuse", action="store_true",
                        help="read the leave-one-dataset-out rows of an earlier run (validation_<tier>.csv) instead "
                             "of running them again: the summary, the paired comparisons and the decision only")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    tried, default = ((candidates(), "M&C (default)") if args.tier == "profile"
                      else (probe_candidates(), "M&C + probe (default)"))
    if args.only:
        tried = {k: v for k, v in tried.items() if k in set(args.only.split(",")) or k == default}
    out = Path(args.out)
    if args.reuse:
        table = pd.read_csv(out / f"validation_{args.tier}.csv")
        table = table[table["method"].isin(tried)]
    else:
        frames = []
        for name, (history, targets) in validation_histories(probe=args.tier == "probe").items():
            if args.tier == "probe":  # the probe tier is judged on the targets its probe covers
                if history.probe is None:
                    continue
                targets = [d for d in targets if d in history.probe.columns and history.probe[d].notna().any()]
            start = time.perf_counter()
            df = leave_one_dataset_out(history, tried, targets=targets, n_jobs=args.jobs)
            frames.append(df.assign(history=name))
            print(f"{name}: {len(targets)} targets, {time.perf_counter() - start:.0f} s", flush=True)
        table = pd.concat(frames, ignore_index=True)
    summary = table.groupby(["history", "method"], sort=False)[["hit@1", "regret", "rel@1", "pearson"]].mean()
    summary = summary.reset_index()
    paired = compare(table, default, list(tried))
    out.mkdir(parents=True, exist_ok=True)
    table.drop(columns=["seconds"], errors="ignore").to_csv(out / f"validation_{args.tier}.csv", index=False)
    summary.to_csv(out / f"validation_{args.tier}_summary.csv", index=False, float_format="%.4f")
    paired.to_csv(out / f"validation_{args.tier}_paired.csv", index=False, float_format="%.4f")
    columns = ["history", "method", "n_paired", "top1_diff", "regret_diff", "regret_diff_ci_low",
               "regret_diff_ci_high", "wins", "losses", "wilcoxon_p", "verdict"]
    with pd.option_context("display.width", 220, "display.max_rows", 500, "display.max_colwidth", 45):
        print(summary.round(4).to_string(index=False))
        print(paired[paired["history"].str.startswith("pooled")][columns].round(4).to_string(index=False))
    variants = [n for n, m in tried.items() if isinstance(m, MatchAndChoose)]
    chosen = decide(paired, default, variants)
    print(f"{args.tier} tier: keep {chosen!r}" + ("" if chosen == default else f" (replaces {default!r})"))


if __name__ == "__main__":
    main()
