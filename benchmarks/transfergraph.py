"""Match & Choose on TransferGraph's public fine-tuning records, next to TransferGraph's published results.

    python benchmarks/transfergraph.py [FOLDER] [--out DIR] [--jobs N]

FOLDER (default: ../shared/external/transfergraph/image_classification) holds records.csv,
model_config_dataset.csv, target_dataset_features.csv, corr_domain_similarity_*.csv and published_results/.
The history is imported unchanged (mc_bench.select.history.from_transfergraph) and every method runs with its
defaults, leave-one-dataset-out over the target datasets of the published tables (each fold learns from the
other 12 datasets). Writes to DIR (default results/transfergraph/):

* ``comparison.csv`` — tidy: source (mc_bench | published), method, metric, dataset, value; the dataset
  ``mean`` is the mean over the published targets (the published ``average`` column is kept as ``published_average``);
* ``summary.csv`` — one row per (source, method), the mean of each metric; printed;
* with ``--ablations``: ``ablations.csv`` (mc_bench.select.choose.ablations: embedding, objective, pairwise features,
  model-ratio and history-ratio sweeps) and ``ablations_summary.csv`` (means per ablation, value and method).

The last line printed is ``rel@1=<mean> pearson=<mean>`` for the default M&C configuration.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import pandas as pd

from mc_bench.select.choose import MatchAndChoose, ablations, default_methods, leave_one_dataset_out
from mc_bench.paths import REPO_ROOT
from mc_bench.select.graph import Node2Vec, SpectralGraphEmbedding
from mc_bench.select.history import from_transfergraph, transfergraph_targets

METRICS = ["rel@1", "rel@2", "rel@3", "rel@4", "rel@5", "top@1", "top@2", "top@3", "top@4", "top@5", "pearson"]
DEFAULT_FOLDER = REPO_ROOT.parent / "shared" / "external" / "transfergraph" / "image_classification"


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
    return pd.DataFrame(rows)


def methods() -> dict:
    out = default_methods()
    out.update({
        "M&C (spectral embedding)": MatchAndChoose(embedding=SpectralGraphEmbedding()),
        "M&C (node2vec embedding)": MatchAndChoose(embedding=Node2Vec()),
        "M&C (lambdarank)": MatchAndChoose(objective="lambdarank"),
        "M&C (prior only, 0 rounds)": MatchAndChoose(n_estimators=0),
        "M&C (prior: global)": MatchAndChoose(prior="global"),
    })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default=str(DEFAULT_FOLDER))
    parser.add_argument("--out", default=str(REPO_ROOT / "results" / "transfergraph"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--ablations", action="store_true", help="also run the ablation study (a few minutes)")
    args = parser.parse_args()
    folder, out = Path(args.folder), Path(args.out)
    warnings.filterwarnings("ignore", category=UserWarning)

    history = from_transfergraph(folder)
    pub = published(folder)
    targets = [d for d in transfergraph_targets(folder) if d in history.datasets]
    print(f"{len(history.models)} models, {len(history.datasets)} datasets; targets: {', '.join(targets)}")
    start = time.perf_counter()
    ours = leave_one_dataset_out(history, methods(), targets=targets, ks=(1, 2, 3, 4, 5), n_jobs=args.jobs)
    print(f"leave-one-dataset-out: {time.perf_counter() - start:.1f} s")

    long = ours.melt(id_vars=["method", "dataset"], value_vars=METRICS, var_name="metric").assign(source="mc_bench")
    pub = pub[pub["dataset"].isin(targets + ["published_average"])]
    both = pd.concat([long, pub], ignore_index=True)
    per_target = both[both["dataset"].isin(targets)]
    means = per_target.groupby(["source", "method", "metric"], sort=False, as_index=False)["value"].mean()
    both = pd.concat([both, means.assign(dataset="mean")], ignore_index=True)
    summary = means.pivot_table(index=["source", "method"], columns="metric", values="value", sort=False)[
        [m for m in METRICS if m in set(means["metric"])]].reset_index()
    summary = summary.sort_values(["source", "rel@1"], ascending=[True, False])

    out.mkdir(parents=True, exist_ok=True)
    both[["source", "method", "metric", "dataset", "value"]].to_csv(out / "comparison.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False, float_format="%.4f")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary[["source", "method", "rel@1", "rel@3", "rel@5", "top@1", "pearson"]].round(3).to_string(index=False))
    print(f"wrote {out / 'comparison.csv'} and {out / 'summary.csv'}")
    if args.ablations:
        abl = ablations(history, targets=targets, ks=(1, 3), n_jobs=args.jobs)
        abl.to_csv(out / "ablations.csv", index=False)
        table = abl.groupby(["ablation", "value", "method"], sort=False)[["rel@1", "hit@1", "regret", "pearson"]].mean()
        table.reset_index().to_csv(out / "ablations_summary.csv", index=False, float_format="%.4f")
        print(table.round(3).to_string())
    mc = summary[(summary["source"] == "mc_bench") & (summary["method"] == "M&C")].iloc[0]
    print(f"rel@1={mc['rel@1']:.4f} pearson={mc['pearson']:.4f}")


if __name__ == "__main__":
    main()
