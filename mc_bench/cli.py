"""The ``mc-bench`` command line (also ``python -m mc_bench``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .config import REPO_ROOT, cache_dir, load_manifests
from .errors import McBenchError


def _print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in columns))


# ----------------------------------------------------------------------------------------------- world


def world_datasets(args) -> int:
    from .data import read_split, validate_folder
    from .report import contact_sheet, labelled_rows, save_png
    from .world import build_dataset, world_folder

    manifests = load_manifests(args.manifests)
    root = Path(args.cache) if args.cache else cache_dir()
    results = Path(args.results)
    specs = [s for s in manifests.datasets.values() if s.source_kind == "world"]
    rows, overview = [], []
    start = time.perf_counter()
    for spec in specs:
        folder = world_folder(root, spec, manifests.world.resolution)
        build_dataset(spec, manifests.world.resolution, manifests.world.eval_fraction, folder, overwrite=args.rebuild)
        summary = validate_folder(folder, spec, manifests.world)
        images, _ = read_split(folder, spec.splits.train, spec.caption_column)
        save_png(contact_sheet(images[:32]), results / "contact_sheets" / f"{spec.id}.png")
        overview.append((spec.id, images[:12]))
        rows.append({
            "id": spec.id, "role": spec.role, "domain": spec.domain,
            "n_images": summary["train"].n_images + summary["eval"].n_images,
            "example_caption": summary["train"].example_caption,
        })
    save_png(labelled_rows(overview), results / "world_datasets.png")
    elapsed = time.perf_counter() - start
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        _print_table(rows, ["id", "role", "domain", "n_images", "example_caption"])
        n_src = sum(r["role"] == "source" for r in rows)
        print(f"\n{len(rows)} datasets ({n_src} source, {len(rows) - n_src} target) at "
              f"{manifests.world.resolution}x{manifests.world.resolution} in {root} ({elapsed:.1f} s); "
              f"contact sheets in {results}")
    return 0


def validate(args) -> int:
    from .data import dataset_folder, validate_folder

    manifests = load_manifests(args.manifests)
    checked = 0
    for spec in manifests.datasets.values():
        if spec.source_kind == "hub":
            continue
        folder = dataset_folder(manifests, spec, Path(args.cache) if args.cache else None)
        if spec.source_kind == "world" and not folder.exists():
            continue
        validate_folder(folder, spec, manifests.world)
        checked += 1
    print(f"ok: {len(manifests.datasets)} datasets, {len(manifests.models)} models, "
          f"{len(manifests.profiles)} profiles; {checked} dataset folders checked")
    return 0


# ----------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mc-bench", description=__doc__)
    parser.add_argument("--manifests", default=None, help="folder of datasets/models/profiles.yaml")
    sub = parser.add_subparsers(dest="command", required=True)

    world = sub.add_parser("world", help="the offline world: datasets (and, later, models)")
    world_sub = world.add_subparsers(dest="world_command", required=True)
    wd = world_sub.add_parser("datasets", help="build, validate and list the world's datasets")
    wd.add_argument("--json", action="store_true", help="print the table as JSON")
    wd.add_argument("--rebuild", action="store_true", help="rebuild datasets that already exist")
    wd.add_argument("--cache", default=None, help="where datasets are built (default: $MC_BENCH_CACHE)")
    wd.add_argument("--results", default=str(REPO_ROOT / "results" / "world"), help="where contact sheets go")
    wd.set_defaults(func=world_datasets)

    val = sub.add_parser("validate", help="validate the manifests and every local dataset folder")
    val.add_argument("--cache", default=None)
    val.set_defaults(func=validate)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except McBenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
