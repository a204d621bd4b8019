"""M&C and TransferGraph's own learners on TransferGraph's public fine-tuning records, beside its published results.

    python benchmarks/transfergraph.py [FOLDER] [--out DIR] [--jobs N] [--seeds 0,1,2] [--diagnose] [--ablations]

FOLDER (default: ../shared/external/transfergraph/image_classification) is a TransferGraph task folder: records.csv,
model_config_dataset.csv, target_dataset_features.csv, corr_domain_similarity_*.csv and, when it has them,
published_results/*_correlation.csv. The history is imported unchanged (failed runs — an empty accuracy — are dropped
and counted, as TransferGraph's trainer drops them) and every method runs with its defaults, leave-one-dataset-out
over the published targets (every dataset when there is no published table); each fold learns from the other
datasets. TransferGraph's learners (mc_bench.select.transfergraph: XGBoost, random forest and linear regression on
node2vec and node2vec+ embeddings, its "all_normalize_without_transfer" setting) run once per embedding seed in
``--seeds`` (their published numbers are single unseeded runs). Writes to DIR (default results/transfergraph/ for
the default folder, results/transfergraph-<folder name>/ otherwise):

* ``comparison.csv`` — tidy: source (mc_bench | published), method, seed, metric, dataset, value; the dataset
  ``mean`` is the mean over the targets (TransferGraph's ``average`` column is kept as ``published_average``);
* ``summary.csv`` — one row per (source, method): the mean of each metric over the targets (and seeds);
* ``learners.csv`` — per target, each reproduced learner's rel@1 and Pearson (mean, min and max over seeds) beside
  the published learner of the same name;
* ``paired.csv`` — every method against M&C, paired by target (mc_bench.select.lodo.paired_comparison);
* with ``--diagnose``, also the learners without embedding features, with a random vector per node instead of the
  embedding, and on TransferGraph's directed graph (seed 0),
  in ``comparison.csv`` and ``summary.csv``: where the reproduction departs from the published numbers;
* with ``--ablations``: ``ablations.csv`` and ``ablations_summary.csv`` (mc_bench.select.ablations).

The last line printed is ``rel@1=<mean> pearson=<mean>`` for M&C.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import pandas as pd

from mc_bench.paths import REPO_ROOT
from mc_bench.select import METHODS, ablations, leave_one_dataset_out, paired_comparison
from mc_bench.select.history import from_transfergraph, transfergraph_targets
from mc_bench.select.transfergraph import TransferGraph

METRICS = ["rel@1", "rel@2", "rel@3", "rel@4", "rel@5", "top@1", "top@2", "top@3", "top@4", "top@5", "pearson"]
DEFAULT_FOLDER = REPO_ROOT.parent / "shared" / "external" / "transfergraph" / "image_classification"
LEARNERS = [(m.label, m.make().learner, m.make().embedding) for m in METHODS if m.kind == "TransferGraph"]


def published(folder: Path) -> pd.DataFrame:
    rows = []
    for metric in METRICS:
        path = folder / "published_results" / f"{metric}_correlation.csv"
        if not path.is_file():
            continue
        table = pd.read_csv(path, index_col=0)
        for method, row in table.iterrows():
            for dataset, value in row.items():
                name = "published_average" if dataset == "average" else dataset
                rows.append({"source": "published", "method": method, "metric": metric, "dataset": name,
                             "value": float(value)})
    return pd.DataFrame(rows, columns=["source", "method", "metric", "dataset", "value"])


def published_name(learner: str, embedding: str) -> str:
    return f"{learner}_{embedding}_all_normalize_without_transfer"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default=str(DEFAULT_FOLDER))
    parser.add_argument("--out", default=None)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seeds", default="0,1,2", help="embedding seeds of TransferGraph's learners")
    parser.add_argument("--ablations", action="store_true", help="also run M&C's ablations (a few minutes)")
    parser.add_argument("--diagnose", action="store_true",
                        help="also TransferGraph's learners without embeddings, with random vectors, on the directed graph")
    args = parser.parse_args()
    folder = Path(args.folder)
    default_out = "transfergraph" if folder.resolve() == DEFAULT_FOLDER.resolve() else f"transfergraph-{folder.name}"
    out = Path(args.out or REPO_ROOT / "results" / default_out)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = from_transfergraph(folder)
    for w in caught:
        print(f"note: {w.message}")
    summary_line = history.summary()
    pub = published(folder)
    targets = [d for d in transfergraph_targets(folder) if d in history.datasets] or history.datasets
    print(f"{summary_line['models']} models, {summary_line['datasets']} datasets, {summary_line['runs']} runs "
          f"({summary_line['dropped_runs']} failed runs dropped); targets: {', '.join(targets)}")
    warnings.filterwarnings("ignore", category=UserWarning)

    start = time.perf_counter()
    ours = [leave_one_dataset_out(history, {m.label: m.make() for m in METHODS
                                            if m.make is not None and m.kind != "TransferGraph" and not m.probe_table},
                                  targets=targets, ks=(1, 2, 3, 4, 5), n_jobs=args.jobs).assign(seed=0)]
    for seed in [int(s) for s in args.seeds.split(",")]:
        learners = {label: TransferGraph(learner=learner, embedding=embedding, seed=seed)
                    for label, learner, embedding in LEARNERS}
        ours.append(leave_one_dataset_out(history, learners, targets=targets, ks=(1, 2, 3, 4, 5), n_jobs=args.jobs)
                    .assign(seed=seed))
        print(f"TransferGraph's learners, seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    if args.diagnose:  # where the reproduction departs: what the embedding adds, and the graph's direction
        variants = {}
        for name, learner in (("XGBoost", "xgb"), ("random forest", "rf"), ("linear regression", "lr")):
            variants[f"TransferGraph ({name}, no embedding)"] = TransferGraph(learner=learner, embedding=None)
            variants[f"TransferGraph ({name}, random vectors)"] = TransferGraph(learner=learner, embedding="random")
            variants[f"TransferGraph ({name}, node2vec+, directed graph)"] = TransferGraph(learner=learner,
                                                                                         directed=True)
        ours.append(leave_one_dataset_out(history, variants, targets=targets, ks=(1, 2, 3, 4, 5), n_jobs=args.jobs)
                    .assign(seed=0))
    ours = pd.concat(ours, ignore_index=True)
    print(f"leave-one-dataset-out: {time.perf_counter() - start:.1f} s")

    long = ours.melt(id_vars=["method", "dataset", "seed"], value_vars=METRICS, var_name="metric")
    long = long.assign(source="mc_bench")
    pub = pub[pub["dataset"].isin(targets + ["published_average"])].assign(seed=pd.NA)
    both = pd.concat([long, pub], ignore_index=True)
    per_target = both[both["dataset"].isin(targets)]
    means = per_target.groupby(["source", "method", "metric"], sort=False, as_index=False)["value"].mean()
    both = pd.concat([both, means.assign(dataset="mean")], ignore_index=True)
    summary = means.pivot_table(index=["source", "method"], columns="metric", values="value", sort=False)[
        [m for m in METRICS if m in set(means["metric"])]].reset_index()
    summary = summary.sort_values(["source", "rel@1"], ascending=[True, False])

    rows = []
    for label, learner, embedding in LEARNERS:
        mine = ours[ours["method"] == label]
        name = published_name(learner, embedding)
        for dataset in targets:
            row = {"method": label, "published_method": name, "dataset": dataset}
            for metric in ("rel@1", "pearson"):
                values = mine.loc[mine["dataset"] == dataset, metric]
                row.update({metric: values.mean(), f"{metric}_min": values.min(), f"{metric}_max": values.max()})
                hit = pub[(pub["method"] == name) & (pub["metric"] == metric) & (pub["dataset"] == dataset)]
                row[f"published_{metric}"] = float(hit["value"].iloc[0]) if len(hit) else float("nan")
            rows.append(row)
    learners = pd.DataFrame(rows)
    first_seed = ours[(ours["seed"] == ours["seed"].min())]
    paired = paired_comparison(first_seed, "M&C")

    out.mkdir(parents=True, exist_ok=True)
    both[["source", "method", "seed", "metric", "dataset", "value"]].to_csv(out / "comparison.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False, float_format="%.4f")
    learners.to_csv(out / "learners.csv", index=False, float_format="%.4f")
    paired.to_csv(out / "paired.csv", index=False, float_format="%.4f")
    with pd.option_context("display.width", 220, "display.max_columns", 20, "display.max_rows", 100):
        print(summary[["source", "method", "rel@1", "rel@3", "rel@5", "top@1", "pearson"]].round(4)
              .to_string(index=False))
        per_learner = learners.groupby(["method", "published_method"], sort=False)[
            ["rel@1", "published_rel@1", "pearson", "published_pearson"]].mean().round(4)
        print(per_learner.to_string())
        print(paired[["method", "n_paired", "top1_diff", "regret_diff", "regret_diff_ci_low", "regret_diff_ci_high",
                      "wins", "losses", "verdict"]].round(4).to_string(index=False))
    print(f"wrote {out}/comparison.csv, summary.csv, learners.csv, paired.csv")
    if args.ablations:
        abl = ablations(history, targets=targets, ks=(1, 3), n_jobs=args.jobs)
        abl.to_csv(out / "ablations.csv", index=False)
        table = abl.groupby(["ablation", "value", "method"], sort=False)[["rel@1", "hit@1", "regret", "pearson"]].mean()
        table.reset_index().to_csv(out / "ablations_summary.csv", index=False, float_format="%.4f")
        print(table.round(4).to_string())
    mc = summary[(summary["source"] == "mc_bench") & (summary["method"] == "M&C")].iloc[0]
    print(f"rel@1={mc['rel@1']:.4f} pearson={mc['pearson']:.4f}")


if __name__ == "__main__":
    main()
