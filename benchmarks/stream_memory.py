"""Peak memory of a large folder dataset read the kit's way (decoded batch by batch) against decoding it whole.

    python benchmarks/stream_memory.py [--n 30000] [--size 128] [--folder /tmp/stream_dataset]

Builds (once, offline) an image folder dataset of ``--n`` PNG images of ``--size`` px with captions, then measures
in fresh processes the peak resident memory (``ru_maxrss``) of

* **streamed** — ``load_dataset_split`` as fine-tuning and evaluation use it: 200 training batches of 64 (resized
  to 64 px, cropped), then one pass over every image in batches of 256 (as feature extraction does);
* **whole** (the reference, what the kit did before) — every image decoded into a list, then the same pass.

Prints both in MiB, the baseline of a process that only imports the kit, and ``ratio=<streamed / whole>``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

MANIFEST = """datasets:
- id: big
  source: data
  domain: test
  license: CC0
  splits: {train: train, eval: train}
"""

WORK = r"""
import json, resource, sys
import numpy as np
from mc_bench.config import load_manifests
from mc_bench.world.data import load_dataset_split, resize_shorter
mode, manifests = sys.argv[1], sys.argv[2]
if mode != "baseline":
    images, captions = load_dataset_split(load_manifests(manifests), "big", "train")
    if mode == "whole":
        images = images[:]  # every image decoded at once
    sized = resize_shorter(images, 64)
    rng = np.random.default_rng(0)
    for _ in range(200):  # training batches
        batch = np.stack([sized[int(i)][:64, :64] for i in rng.integers(0, len(sized), 64)])
    total = 0.0
    for start in range(0, len(images), 256):  # one pass, as feature extraction makes it
        total += float(np.mean([im.mean() for im in images[start:start + 256]]))
print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def build(folder: Path, n: int, size: int) -> Path:
    """An image folder dataset of ``n`` smooth random images (``size`` px), built once."""
    from PIL import Image

    split = folder / "data" / "train"
    meta = split / "metadata.jsonl"
    if meta.is_file() and sum(1 for _ in meta.open()) == n:
        return folder
    split.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(low).resize((size, size), Image.BILINEAR).save(split / f"{i:05d}.png", compress_level=1)
        rows.append(json.dumps({"file_name": f"{i:05d}.png", "text": f"image {i}"}))
    meta.write_text("\n".join(rows) + "\n")
    (folder / "datasets.yaml").write_text(MANIFEST)
    (folder / "models.yaml").write_text("models: []\n")
    (folder / "profiles.yaml").write_text("profiles: []\n")
    return folder


def peak(mode: str, folder: Path) -> float:
    out = subprocess.run([sys.executable, "-c", WORK, mode, str(folder)], check=True, capture_output=True, text=True,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/stream_dataset"))
    args = parser.parse_args(argv)
    folder = build(args.folder, args.n, args.size)
    decoded = args.n * args.size * args.size * 3 / 2**20
    baseline, streamed, whole = (peak(mode, folder) for mode in ("baseline", "streamed", "whole"))
    print(f"{args.n} images of {args.size} px ({decoded:.0f} MiB decoded): peak RSS streamed {streamed:.0f} MiB, "
          f"whole {whole:.0f} MiB, a process that only imports the kit {baseline:.0f} MiB")
    print(f"ratio={streamed / whole:.3f}")


if __name__ == "__main__":
    main()
