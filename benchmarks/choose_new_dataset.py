"""Choose for a new image folder: M&C's pick for the four world targets cpu-paper leaves out, beside the truth.

    python benchmarks/choose_new_dataset.py [--out results/selection]

For each of animals-brown, glyphs-vowels-bold, shapes-large and photos-astronaut-closeup (profile cpu-heldout: all
10 zoo models fine-tuned on each with cpu-paper's settings, results/cpu-heldout/performance.csv), runs the command a
user runs, ``mc-bench choose results/cpu-paper --images <dataset> --json`` (a fresh process: start-up, profiling the
train split like cpu-paper's datasets, fitting M&C on cpu-paper's history, the conformal shortlist), and scores its
pick against the truth: the best model by FID, the pick's FID, its rank and regret, whether the shortlist holds the
best model. The baselines pick from the same profile. Then times the command on a 1,000-image folder (the goal:
<= 30 s on 2 cores, start-up included). Writes ``heldout_choices.csv``; prints it, last line ``seconds_1000=<s>``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd
from PIL import Image

from mc_bench.select import GlobalBest, HistoryWeighted, NearestDataset
from mc_bench.config import load_manifests
from mc_bench.paths import REPO_ROOT
from mc_bench.world.data import read_world_split
from mc_bench.select.history import load_history
from mc_bench.profile import add_image_dataset

TARGETS = ("animals-brown", "glyphs-vowels-bold", "shapes-large", "photos-astronaut-closeup")
STUDY = REPO_ROOT / "results" / "cpu-paper"
TRUTH = REPO_ROOT / "results" / "cpu-heldout" / "performance.csv"


def choose(images: str) -> tuple[dict, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mc_bench", "choose", str(STUDY), "--images", images, "--json"],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO_ROOT / "results" / "selection"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    truth = pd.read_csv(TRUTH).pivot(index="model", columns="dataset", values="fid")
    manifests = load_manifests()
    history = load_history(STUDY / "history")
    rows = []
    for target in TARGETS:
        out, seconds = choose(target)
        fid = truth[target]
        best = fid.idxmin()
        images, captions = read_world_split(manifests, target, "train")
        new = add_image_dataset(history, list(images), captions, target)
        picks = {"M&C": out["ranking"][0]["model"]}
        for name, method in (("history-weighted", HistoryWeighted()), ("nearest-dataset", NearestDataset()),
                             ("global-best", GlobalBest())):
            picks[name] = method.fit(new).predict(target).idxmax()
        for method, pick in picks.items():
            rows.append({"dataset": target, "method": method, "pick": pick, "best": best,
                         "pick_fid": fid[pick], "best_fid": fid[best], "regret": (fid[pick] - fid[best]) / fid[best],
                         "pick_rank": int(fid.rank()[pick]), "hit": pick == best,
                         "shortlist": ";".join(out["shortlist"]["models"]) if method == "M&C" else "",
                         "shortlist_has_best": best in out["shortlist"]["models"] if method == "M&C" else None,
                         "n_images": out["n_images"], "seconds": round(seconds, 1) if method == "M&C" else None})
    table = pd.DataFrame(rows)
    with tempfile.TemporaryDirectory() as tmp:  # a 1,000-image folder in the imagefolder layout
        folder = Path(tmp) / "thousand"
        folder.mkdir()
        lines = []
        for source in ("src-animals", "src-digits"):
            images, captions = read_world_split(manifests, source, "train")
            for img, cap in zip(images, captions):
                if len(lines) == 1000:
                    break
                name = f"{len(lines):04d}.png"
                Image.fromarray(img).save(folder / name)
                lines.append(json.dumps({"file_name": name, "text": cap}))
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
        out, seconds_1000 = choose(str(folder))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "heldout_choices.csv", index=False, float_format="%.4f")
    with pd.option_context("display.width", 220):
        print(table.drop(columns=["shortlist"]).round(3).to_string(index=False))
        print(table[table.method == "M&C"][["dataset", "shortlist"]].to_string(index=False))
    print(f"1,000-image folder: {out['n_images']} images, pick {out['ranking'][0]['model']}")
    print(f"seconds_1000={seconds_1000:.1f}")


if __name__ == "__main__":
    main()
