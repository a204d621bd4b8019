"""Generate: images for a dataset's held-out captions with fixed seeds — evaluation's input.

Image ``i`` is generated from caption ``i`` of the held-out split (cycling when more samples than captions are
asked for) with its own generator seeded ``seed + i``, so an image does not depend on the batch size. The
images go to ``samples/NNNNN.png`` and the table ``samples.csv`` (file, caption, seed, sampler: the scheduler class
that sampled) beside them.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import GenerateSettings, load_manifests
from ..errors import InputError
from ..io import write_json
from ..world.data import load_dataset_split
from .runs import load_finetuned_pipeline, load_run_config, peak_memory_mb, pick_device, sampling_dtype

SAMPLES_DIR = "samples"
SAMPLES_TABLE = "samples.csv"

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
}


def set_scheduler(pipe, name: str) -> None:
    """Replace the pipeline's sampling scheduler (``pipeline`` keeps the one saved with the model)."""
    if name == "pipeline":
        return
    import diffusers

    pipe.scheduler = getattr(diffusers, SCHEDULERS[name]).from_config(pipe.scheduler.config)


def held_out_prompts(captions: list[str], n: int) -> list[str]:
    """The first ``n`` held-out captions, cycling through them when ``n`` is larger than the split."""
    return [captions[i % len(captions)] for i in range(n)]


@torch.no_grad()
def generate(pipe, prompts: list[str], out_dir: Path, settings: GenerateSettings = GenerateSettings()) -> pd.DataFrame:
    """Generate one image per prompt into ``out_dir``; returns (and writes) the table of samples."""
    from PIL import Image

    out_dir = Path(out_dir)
    images_dir = out_dir / SAMPLES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    set_scheduler(pipe, settings.scheduler)
    device = pipe.device
    sampler = type(pipe.scheduler).__name__
    rows, writes = [], []

    def save(image: np.ndarray, path: Path) -> None:
        Image.fromarray((image * 255).round().clip(0, 255).astype(np.uint8)).save(path)

    with ThreadPoolExecutor(max_workers=2) as pool:  # PNGs are encoded while the next batch samples
        for start in range(0, len(prompts), settings.batch_size):
            batch = prompts[start:start + settings.batch_size]
            seeds = [settings.seed + start + j for j in range(len(batch))]
            generators = [torch.Generator(device).manual_seed(s) for s in seeds]
            images = pipe(batch, num_inference_steps=settings.num_inference_steps,
                          guidance_scale=settings.guidance_scale, generator=generators, output_type="np").images
            for j, (image, caption, seed) in enumerate(zip(images, batch, seeds)):
                name = f"{start + j:05d}.png"
                writes.append(pool.submit(save, image, images_dir / name))
                rows.append({"file": f"{SAMPLES_DIR}/{name}", "caption": caption, "seed": seed, "sampler": sampler})
        for write in writes:
            write.result()  # a failed write is raised here, before the table names the file
    table = pd.DataFrame(rows, columns=["file", "caption", "seed", "sampler"])
    table.to_csv(out_dir / SAMPLES_TABLE, index=False)
    return table


def read_samples(run_dir: Path, limit: int | None = None) -> tuple[np.ndarray, list[str]]:
    """The generated images (uint8, n × h × w × 3) and their captions of a run folder (the first ``limit``, when
    given: a preview). A missing table or image, an empty table or images of different sizes is one
    :class:`InputError` naming the file and the fix."""
    from PIL import Image, UnidentifiedImageError

    table_path = Path(run_dir) / SAMPLES_TABLE
    regenerate = "regenerate the samples: rerun `mc-bench finetune` with the same settings on this run folder"
    if not table_path.is_file():
        raise InputError(table_path, "no samples table", "run `mc-bench finetune` (it generates) on this run folder")
    table = pd.read_csv(table_path, keep_default_na=False)  # an empty caption stays "", not "nan"
    if len(table) == 0:
        raise InputError(table_path, "the samples table has no rows", regenerate)
    table = table.head(limit) if limit is not None else table
    images = []
    for row, (file, caption) in enumerate(zip(table["file"], table["caption"]), start=2):
        path = Path(run_dir) / file
        try:
            with Image.open(path) as im:
                images.append(np.asarray(im.convert("RGB")))
        except (FileNotFoundError, UnidentifiedImageError, OSError) as err:
            raise InputError(f"{table_path}, row {row}", f"sample {file} cannot be read ({type(err).__name__})",
                             regenerate) from None
    sizes = sorted({im.shape[:2] for im in images})
    if len(sizes) > 1:
        raise InputError(table_path, f"the samples have different sizes {sizes[:3]}", regenerate)
    return np.stack(images), table["caption"].astype(str).tolist()


def generate_run(run_dir: Path) -> pd.DataFrame:
    """Generate a finished run's samples (its config's ``generate`` settings) and add their timings."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    device = pick_device(config.train.device)
    dtype = sampling_dtype(config.train.mixed_precision, device)
    if device.type == "cuda":  # the sampling peak, not the training peak of the same process
        torch.cuda.reset_peak_memory_stats(device)
    pipe = load_finetuned_pipeline(run_dir, device, dtype)
    _, captions = load_dataset_split(load_manifests(config.manifests), config.dataset, "eval")
    prompts = held_out_prompts(captions, config.generate.n_samples)
    start = time.perf_counter()
    table = generate(pipe, prompts, run_dir, config.generate)
    seconds = time.perf_counter() - start
    timings_path = run_dir / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    timings.update({"sample_seconds": round(seconds, 3), "images_per_second": round(len(table) / seconds, 3),
                    "sample_peak_memory_mb": round(peak_memory_mb(device), 1), "sample_dtype": str(dtype)})
    write_json(timings_path, timings)
    return table
