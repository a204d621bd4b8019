"""The whole answer on the four world targets cpu-paper leaves out: rank, fine-tune the first K, keep the winner.

    python benchmarks/choose_finetune.py [--fine-tune auto] [--out results/selection]

For each of animals-brown, glyphs-vowels-bold, shapes-large and photos-astronaut-closeup the world's train and
held-out splits are written as an image folder (``train/`` and ``test/`` with metadata.jsonl) and the command a user
runs is timed: ``mc-bench choose results/cpu-paper --images FOLDER --fine-tune K --json`` (profile, rank, fine-tune
the first K with cpu-paper's recipe, evaluate, keep the best). Its winner is scored against the truth — all 10
candidates fine-tuned with the same recipe on the same splits (profile cpu-heldout,
``results/cpu-heldout/performance.csv``): the winner's rank in the truth and its regret. Writes
``heldout_finetune.csv``; prints it, with the cells fine-tuned against fine-tuning all 10.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from PIL import Image

from mc_bench.config import load_manifests
from mc_bench.paths import REPO_ROOT
from mc_bench.world.data import read_world_split

TARGETS = ("animals-brown", "glyphs-vowels-bold", "shapes-large", "photos-astronaut-closeup")
STUDY = REPO_ROOT / "results" / "cpu-paper"
TRUTH = REPO_ROOT / "results" / "cpu-heldout" / "performance.csv"


def write_folder(folder: Path, dataset: str) -> Path:
    manifests = load_manifests()
    for role, split in (("train", "train"), ("eval", "test")):
        images, captions = read_world_split(manifests, dataset, role)
        (folder / split).mkdir(parents=True)
        lines = []
        for i, (image, caption) in enumerate(zip(images, captions)):
            Image.fromarray(image).save(folder / split / f"{i:05d}.png")
            lines.append(json.dumps({"file_name": f"{i:05d}.png", "text": caption}))
        (folder / split / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fine-tune", default="auto")
    parser.add_argument("--out", default=str(REPO_ROOT / "results" / "selection"))
    args = parser.parse_args()
    truth = pd.read_csv(TRUTH).pivot(index="model", columns="dataset", values="fid")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for target in TARGETS:
            folder = write_folder(Path(tmp) / target, target)
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "mc_bench", "choose", str(STUDY), "--images", str(folder),
                                   "--fine-tune", args.fine_tune, "--out", str(Path(tmp) / "choices" / target),
                                   "--json"], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{target}: {proc.stderr[-2000:]}")
            result = json.loads(proc.stdout)
            fid = truth[target]
            best, winner = fid.idxmin(), result["winner"]
            measured = {t["model"]: t["fid"] for t in result["tried"]}
            rows.append({"dataset": target, "k": result["k"], "tried": ";".join(measured), "winner": winner,
                         "best": best, "winner_fid": measured[winner], "truth_winner_fid": fid[winner],
                         "best_fid": fid[best], "winner_rank": int(fid.rank()[winner]),
                         "regret": (fid[winner] - fid[best]) / fid[best], "hit": winner == best,
                         "expected_success": result["expected_success"],
                         "seconds": round(time.perf_counter() - start, 1)})
    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "heldout_finetune.csv", index=False, float_format="%.4f")
    with pd.option_context("display.width", 220):
        print(table.drop(columns=["tried"]).round(3).to_string(index=False))
    print(f"best found on {int(table['hit'].sum())} of {len(table)}; mean regret {table['regret'].mean():.3f}; "
          f"{int(table['k'].sum())} cells fine-tuned instead of {len(table) * len(truth)}; "
          f"{table['seconds'].sum():.0f} s in all")


if __name__ == "__main__":
    main()
