"""Is the zoo a selection problem worth solving? Fine-tune every zoo model briefly on a handful of targets.

    python benchmarks/zoo_probe.py [--targets a,b,...] [--steps 100] [--seeds 0,1] [--jobs 2]
                                   [--models id,id --update]

For every (zoo model, target, seed): full fine-tuning of the UNet on the target's train split (the zoo's own
diffusion objective, mc_bench.train.pretrain.train_unet), then images for the target's held-out captions, scored with the
tiny CLIP: CLIP score (torchmetrics CLIPScore) and caption-retrieval top-1 among the target's distinct captions.
Writes results/zoo/probe.csv (with ``--models ... --update``: reruns only those models and keeps the other
models' rows of the existing file; every run is deterministic, so this equals a full rerun) and prints (a) the best model per target and how many targets each model wins, and
(b) the Spearman correlation of the model ranking between the two seeds, per target. The last line reads
``max_wins_share=<share of targets won by the most frequent winner> mean_spearman=<...>``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from mc_bench.paths import REPO_ROOT

TARGETS = "animals-farm,digits-colour,glyphs-lower,shapes-new,textures-tinted,photos-cat"


def run_one(model_id: str, target: str, seed: int, steps: int, n_samples: int) -> dict:
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from torchmetrics.multimodal.clip_score import CLIPScore

    from mc_bench.config import load_manifests
    from mc_bench.world.data import read_world_split
    from mc_bench.world.tinyclip import load_clip, retrieval_accuracy
    from mc_bench.paths import CLIP_DIR, WORLD_MODELS
    from mc_bench.train.pretrain import train_unet
    from mc_bench.world.zoo import sample

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    manifests = load_manifests()
    images, captions = read_world_split(manifests, target, "train")
    _, eval_captions = read_world_split(manifests, target, "eval")
    pipe = StableDiffusionPipeline.from_pretrained(WORLD_MODELS / model_id, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    ddpm = DDPMScheduler.from_config(pipe.scheduler.config)
    start = time.perf_counter()
    losses = train_unet(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, ddpm, images, captions,
                        steps=steps, batch_size=32, learning_rate=3e-4, seed=seed)
    train_s = time.perf_counter() - start
    prompts = eval_captions[:n_samples]
    fake = sample(pipe, prompts, seed=seed)
    clip_model, processor = load_clip(WORLD_MODELS / CLIP_DIR)
    metric = CLIPScore(model_name_or_path=partial(load_clip, WORLD_MODELS / CLIP_DIR))
    clip_score = float(metric(torch.from_numpy(fake).permute(0, 3, 1, 2), prompts))
    retrieval = retrieval_accuracy(clip_model, processor.tokenizer, processor.image_processor, fake, prompts)
    return {"model": model_id, "target": target, "seed": seed, "clip_score": clip_score,
            "retrieval_top1": retrieval, "final_loss": float(np.mean(losses[-20:])), "train_seconds": round(train_s, 1)}


def main() -> None:
    from scipy.stats import spearmanr

    from mc_bench.world.zoo import SD_ZOO as ZOO  # the study's ten SD-format candidates (its loop trains UNets)

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=TARGETS)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--models", default=None, help="comma-separated zoo ids to run (default: all)")
    parser.add_argument("--update", action="store_true", help="keep the other models' rows of --out")
    parser.add_argument("--out", default=str(REPO_ROOT / "results" / "zoo" / "probe.csv"))
    args = parser.parse_args()
    targets, seeds = args.targets.split(","), [int(s) for s in args.seeds.split(",")]
    models = args.models.split(",") if args.models else [m.id for m in ZOO]
    jobs = [(m, t, s) for t in targets for s in seeds for m in models]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(run_one, *zip(*jobs), [args.steps] * len(jobs), [args.samples] * len(jobs)))
    df = pd.DataFrame(rows)
    if args.update and Path(args.out).is_file():
        old = pd.read_csv(args.out)
        keep = old["model"].isin({m.id for m in ZOO} - set(models)) & old["target"].isin(targets)
        df = pd.concat([old[keep], df], ignore_index=True).sort_values(["target", "seed", "model"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False, float_format="%.4f")
    print(f"{len(rows)} fine-tunes in {time.perf_counter() - start:.0f} s; wrote {args.out}")

    quality = "clip_score"
    mean = df.groupby(["target", "model"])[quality].mean().unstack()
    print(mean.round(2).to_string())
    best = mean.idxmax(axis=1)
    print("\n(a) best model per target (mean over seeds):")
    print(best.to_string())
    wins = best.value_counts()
    print(f"wins: {wins.to_dict()}")
    rho = {}
    if len(seeds) >= 2:
        for target, group in df.groupby("target"):
            a = group[group.seed == seeds[0]].set_index("model")[quality]
            b = group[group.seed == seeds[1]].set_index("model")[quality].reindex(a.index)
            rho[target] = spearmanr(a, b)[0]
        print("\n(b) Spearman of the model ranking between seeds:", {k: round(v, 3) for k, v in rho.items()})
    print(f"max_wins_share={wins.max() / len(best):.3f} mean_spearman={np.mean(list(rho.values())) if rho else float('nan'):.3f}")


if __name__ == "__main__":
    main()
