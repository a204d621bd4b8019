"""Images per second of our FID path against clean-fid's, on the same extractor and the same image folders.

    python benchmarks/fid_speed.py [--a shapes-new] [--b shapes-pastel] [--backbone tiny-clip] [--rounds 3]

Both compute the FID between the train splits of two world datasets (PNG folders) with the same feature
extractor (the tiny CLIP by default) and clean-fid's bicubic resize:
ours = read the images, :func:`mc_bench.evaluate.extract`, torchmetrics ``FrechetInceptionDistance``;
clean-fid = ``cleanfid.fid.compute_fid(fdir1, fdir2, custom_feat_extractor=..., custom_fn_resize=...)`` (CPU, no
worker processes). The FID values are printed too (they must agree). Medians over rounds; one thread.
The last line reads ``ratio=<our time/clean-fid time>``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def main() -> None:
    from cleanfid import fid as cleanfid
    from cleanfid.resize import make_resizer
    from torchmetrics.image.fid import FrechetInceptionDistance

    from mc_bench.config import load_manifests
    from mc_bench.world.data import dataset_folder
    from mc_bench.evaluate import PrecomputedFeatures, extract, make_extractor
    from mc_bench.world.data import load_dataset_split

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", default="shapes-new")
    parser.add_argument("--b", default="shapes-pastel")
    parser.add_argument("--backbone", default="tiny-clip")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    manifests = load_manifests()
    folders = []
    for dataset in (args.a, args.b):
        load_dataset_split(manifests, dataset, "train")  # build if needed
        spec = manifests.dataset(dataset)
        folders.append(str(dataset_folder(manifests, spec) / spec.splits.train))
    extractor = make_extractor(args.backbone)

    def ours() -> float:
        fid = FrechetInceptionDistance(feature=PrecomputedFeatures(extractor.num_features))
        for dataset, real in ((args.a, True), (args.b, False)):
            images, _ = load_dataset_split(manifests, dataset, "train")
            fid.update(torch.from_numpy(extract(extractor, images, "clean")), real=real)
        return float(fid.compute())

    def theirs() -> float:
        resize = make_resizer("PIL", False, "bicubic", (extractor.resolution, extractor.resolution))
        return float(cleanfid.compute_fid(folders[0], folders[1], custom_feat_extractor=lambda x: extractor(x),
                                          custom_fn_resize=resize, device=torch.device("cpu"), num_workers=0,
                                          batch_size=64, verbose=False, use_dataparallel=False))

    n_images = sum(len(load_dataset_split(manifests, d, "train")[0]) for d in (args.a, args.b))
    ours(), theirs()  # warm-up
    t_ours, t_theirs, values = [], [], None
    for _ in range(args.rounds):
        start = time.perf_counter()
        v_ours = ours()
        t_ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        v_theirs = theirs()
        t_theirs.append(time.perf_counter() - start)
        values = (v_ours, v_theirs)
    a, b = statistics.median(t_ours), statistics.median(t_theirs)
    print(f"{args.a} vs {args.b}: {n_images} images, backbone {extractor.name} ({extractor.num_features}-d), 1 thread")
    print(f"ours:      {a:.3f} s  ({n_images / a:.0f} images/s)  FID={values[0]:.4f}")
    print(f"clean-fid: {b:.3f} s  ({n_images / b:.0f} images/s)  FID={values[1]:.4f}")
    assert np.isclose(values[0], values[1], rtol=1e-4), "the two FIDs disagree"
    print(f"ratio={a / b:.3f}")


if __name__ == "__main__":
    main()
