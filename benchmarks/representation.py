"""Which dataset representation sees what matters: nearest-dataset agreement on the world's validation datasets.

    python benchmarks/representation.py [--out results/selection]

For each of the world's 48 validation datasets (profiles cpu-validation-full and cpu-validation-more), its nearest
other dataset among the validation datasets and cpu-paper's 32 (profiles of all, made together:
results/cpu-validation-full/history-with-cpu-paper/profiles), under each representation: the Fréchet distance of image and caption feature
Gaussians (the default), of one modality alone, or the cosine of mean features (the representation before).
Counts how often the nearest dataset shares the family (the manifest's domain) and the winner (best model by FID).
The representation was chosen on these validation datasets; cpu-paper's own table is in its profiles/nearest.csv.
Writes representation.csv; prints it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from mc_bench.config import load_manifests
from mc_bench.paths import REPO_ROOT
from mc_bench.profile import read_profiles, similarity_from_profiles
from mc_bench.study import nearest_datasets
from mc_bench.select.validation import WORLD_VALIDATION_HISTORY

VARIANTS = {"frechet, image + caption (default)": ("frechet", ("image", "caption")),
            "frechet, image only": ("frechet", ("image",)), "frechet, caption only": ("frechet", ("caption",)),
            "mean-cosine, image + caption (before)": ("mean-cosine", ("image", "caption"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO_ROOT / "results" / "selection"))
    args = parser.parse_args()
    profiles = read_profiles(WORLD_VALIDATION_HISTORY / "profiles")
    runs = pd.read_csv(WORLD_VALIDATION_HISTORY / "runs.csv")
    manifests = load_manifests()
    rows = []
    for name, (kind, modalities) in VARIANTS.items():
        table = nearest_datasets(similarity_from_profiles(profiles, kind, modalities), runs, manifests)
        val = table[table["dataset"].str.startswith("val-")]
        rows.append({"representation": name, "validation_datasets": len(val),
                     "same_family": int(val["same_family"].sum()), "same_winner": int(val["same_winner"].sum())})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = pd.DataFrame(rows)
    result.to_csv(out / "representation.csv", index=False)
    print(result.to_string(index=False))


if __name__ == "__main__":
    main()
