"""How many candidates to fine-tune: the ranker-first success curve on the history, and what it is on new folders.

    python benchmarks/choose_k.py [--out results/selection]

``mc-bench choose HISTORY --images FOLDER --fine-tune auto`` fine-tunes the smallest K whose *ranker-first success
rate* on the history — the share of the history's datasets, each held out in turn, whose best model was among the
ranker's first K — reaches ``--level``; the conformal shortlist (``--level`` without ``--fine-tune``) is calibrated
the same way, on the history's held-out score gaps. Both are promises about datasets like the history's. This
script checks them on folders that are *not* in the history: cpu-paper's history (32 datasets) ranks

* ``heldout`` — the 4 world targets cpu-paper leaves out (profile cpu-heldout), and
* ``validation`` — the 48 validation datasets (cpu-validation-full + cpu-validation-more, cpu-paper's recipe),

each profiled as a new folder from its train split exactly as ``--images`` does, and reads where their best model
(the truth: all 10 candidates fine-tuned) falls in the ranking. Writes ``choose_k.csv`` (set, method, k, success:
the curve on the history's leave-one-dataset-out and realised on each set) and ``choose_k_shortlist.csv`` (the 90 %
conformal shortlist's realised coverage and size per set); prints both, and the K that ``auto`` takes at 0.8 and
0.9 with the realised success at that K.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import pandas as pd

from mc_bench.config import load_manifests
from mc_bench.paths import CLIP_DIR, REPO_ROOT
from mc_bench.profile import profile_new_dataset, read_profiles
from mc_bench.select import GlobalBest, MatchAndChoose, NearestDataset
from mc_bench.select.history import load_history
from mc_bench.select.shortlist import conformal_shortlist, shortlist_threshold
from mc_bench.study.choice import auto_k, best_ranks, success_curve
from mc_bench.world.data import read_world_split

STUDY = REPO_ROOT / "results" / "cpu-paper"
SETS = {"heldout": ["cpu-heldout"], "validation": ["cpu-validation-full", "cpu-validation-more"]}
METHODS = {"M&C": MatchAndChoose, "nearest-dataset": NearestDataset, "global-best": GlobalBest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO_ROOT / "results" / "selection"))
    parser.add_argument("--level", type=float, default=0.9)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    manifests = load_manifests()
    history = load_history(STUDY / "history")
    profiles = read_profiles(history.profiles)
    backbone = profiles.meta.get("backbone")
    n_models = len(history.models)
    lodo_scores = pd.read_csv(STUDY / "selection" / "scores.csv")
    lodo = pd.read_csv(STUDY / "selection" / "lodo.csv")
    curves, shortlists = [], []
    for name in METHODS:
        ranks = best_ranks(lodo_scores[lodo_scores["method"] == name], history.higher_is_better)
        curves.append(success_curve(ranks, n_models).assign(set="history (leave-one-dataset-out)", method=name,
                                                            n_datasets=len(ranks)))
    threshold = shortlist_threshold(lodo.loc[lodo["method"] == "M&C", "best_gap"], args.level)
    sim = history.dataset_similarity()
    for set_name, studies in SETS.items():
        truth = pd.concat([pd.read_csv(REPO_ROOT / "results" / s / "performance.csv") for s in studies])
        rows = []
        for dataset, group in truth.groupby("dataset", sort=True):
            images, captions = read_world_split(manifests, dataset, "train")
            features, similarity = profile_new_dataset(profiles, list(images), captions,
                                                       None if backbone == CLIP_DIR else backbone)
            new = history.with_dataset(dataset, {k: v for k, v in features.items() if k in history.dataset_features},
                                       similarity.reindex(sim.index).to_dict())
            quality = group.set_index("model")[history.label]
            for name, cls in METHODS.items():
                scores = cls().fit(new).predict(dataset)
                rows += [{"method": name, "dataset": dataset, "model": m, "score": s, "quality": quality.get(m)}
                         for m, s in scores.items()]
                if name == "M&C":
                    listed = conformal_shortlist(scores, threshold)
                    best = quality.idxmin() if not history.higher_is_better else quality.idxmax()
                    shortlists.append({"set": set_name, "dataset": dataset, "level": args.level,
                                       "size": len(listed), "holds_best": best in listed})
        table = pd.DataFrame(rows)
        for name in METHODS:
            ranks = best_ranks(table[table["method"] == name], history.higher_is_better)
            curves.append(success_curve(ranks, n_models).assign(set=set_name, method=name, n_datasets=len(ranks)))
    curves = pd.concat(curves, ignore_index=True)[["set", "method", "n_datasets", "k", "success"]]
    shortlist = (pd.DataFrame(shortlists).groupby("set", sort=False)
                 .agg(level=("level", "first"), n_datasets=("dataset", "size"), coverage=("holds_best", "mean"),
                      mean_size=("size", "mean")).reset_index())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curves.to_csv(out / "choose_k.csv", index=False, float_format="%.4f")
    shortlist.to_csv(out / "choose_k_shortlist.csv", index=False, float_format="%.4f")
    wide = curves.pivot_table(index=["set", "method"], columns="k", values="success", sort=False)
    with pd.option_context("display.width", 200):
        print(wide.round(3).to_string())
        print(shortlist.round(3).to_string(index=False))
    history_curve = curves[(curves["set"].str.startswith("history")) & (curves["method"] == "M&C")]
    for level in (0.8, 0.9):
        k = auto_k(history_curve, level)
        realised = {s: float(curves[(curves["set"] == s) & (curves["method"] == "M&C") & (curves["k"] == k)]
                             ["success"].iloc[0]) for s in SETS}
        print(f"auto K at level {level}: {k} of {n_models}; realised " +
              ", ".join(f"{s} {v:.3f}" for s, v in realised.items()))


if __name__ == "__main__":
    main()
