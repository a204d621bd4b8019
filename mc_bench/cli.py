"""The ``mc-bench`` command line (also ``python -m mc_bench``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .config import load_manifests
from .errors import McBenchError
from .paths import REPO_ROOT, cache_dir, study_dir_for


def _print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in columns))


# ----------------------------------------------------------------------------------------------- world


def world_datasets(args) -> int:
    from .images import contact_sheet, labelled_rows, save_png
    from .world.data import read_split, validate_folder
    from .world.generators import build_dataset, world_folder

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
        roles = {role: sum(r["role"] == role for r in rows) for role in ("source", "target", "validation")}
        print(f"\n{len(rows)} datasets ({roles['source']} source, {roles['target']} target, {roles['validation']} "
              f"validation) at "
              f"{manifests.world.resolution}x{manifests.world.resolution} in {root} ({elapsed:.1f} s); "
              f"contact sheets in {results}")
    return 0


def world_zoo(args) -> int:
    import os
    import shutil

    from .errors import ManifestError
    from .train.pretrain import build_world_models
    from .world.zoo import contact_sheets, model_metadata, retrieval_table, write_models_manifest, zoo_records

    root = Path(args.root)
    manifests = load_manifests(args.manifests, check_profiles=False)  # models.yaml is rewritten below
    if args.rebuild:
        fresh = root.with_name(root.name + ".rebuild")
        if fresh.exists():
            shutil.rmtree(fresh)
        build_world_models(fresh, jobs=args.jobs)
        if root.exists():  # swap only once everything is built: an interrupted rebuild loses nothing
            old = root.with_name(root.name + ".old")
            root.rename(old)
            fresh.rename(root)
            shutil.rmtree(old)
        else:
            fresh.rename(root)
    records = zoo_records(root)
    if not records:
        raise ManifestError(root, "no zoo models found", "build them with `mc-bench world zoo --rebuild`")
    if args.rebuild or args.report:
        write_models_manifest(manifests.folder / "models.yaml", root)
        load_manifests(manifests.folder)  # the profiles must name models of the new manifest
        results = Path(args.results)
        contact_sheets(results, root, manifests)
        table = retrieval_table(root, manifests)
        table.to_csv(results / "tiny_clip_retrieval.csv", index=False, float_format="%.4f")
        print(f"tiny CLIP zero-shot caption retrieval (held-out images): mean top-1 {table['top1'].mean():.3f} "
              f"over {len(table)} datasets", file=sys.stderr)
    rows = [{"id": r["id"], "path": os.path.relpath(root / r["id"], REPO_ROOT), "prediction_type": r["prediction_type"],
             **model_metadata(r)} for r in records]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        _print_table(rows, ["id", "pretrain_domains", "width", "depth", "layers_per_block", "unet_parameters_m",
                            "prediction_type", "beta_schedule", "pretrain_steps", "path"])
    return 0


def validate(args) -> int:
    from .world.data import dataset_folder, validate_folder

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


# ----------------------------------------------------------------------------------------------- choose


def _selection_history(path: str, transfergraph: bool):
    """A history folder (history.yaml), a study folder (its history/), or a TransferGraph task folder."""
    from .errors import HistoryError
    from .select.history import from_transfergraph, load_history

    folder = Path(path)
    if transfergraph:
        return from_transfergraph(folder)
    if (folder / "history.yaml").is_file():
        return load_history(folder)
    if (folder / "history" / "history.yaml").is_file():
        return load_history(folder / "history")
    raise HistoryError(folder, "not a history folder (no history.yaml) nor a study folder (no history/history.yaml)",
                       "pass a history folder, a study folder such as results/cpu-paper, or --transfergraph FOLDER")


def _images_as_new_dataset(history, images_arg: str, manifests_dir):
    """The history with an image folder (or a manifest dataset) added as a new dataset, profiled like the history's
    datasets; its id and number of images."""
    from .profile import add_image_dataset

    folder = Path(images_arg)
    if folder.is_dir():
        from .world.data import read_image_folder

        images, captions = read_image_folder(folder)
        dataset = f"new:{folder.resolve().name}"
    else:
        from .errors import InputError
        from .world.data import load_dataset_split

        manifests = load_manifests(manifests_dir)
        if images_arg not in manifests.datasets:
            raise InputError(f"--images {images_arg}", "not a folder, nor a dataset id of datasets.yaml",
                             "pass an image folder (with metadata.jsonl) that exists, or a dataset id")
        images, captions = load_dataset_split(manifests, images_arg, "train")
        dataset = images_arg
    return add_image_dataset(history, images, captions, dataset), dataset, len(images)


def _shortlist_threshold(history, history_arg: str, level: float, method, label: str) -> tuple[float, str]:
    """The conformal threshold from the study's leave-one-dataset-out (selection/lodo.csv), else computed now."""
    import pandas as pd

    from .select.lodo import leave_one_dataset_out
    from .select.shortlist import shortlist_threshold

    lodo_path = Path(history_arg) / "selection" / "lodo.csv"
    if lodo_path.is_file():
        lodo = pd.read_csv(lodo_path)
        gaps = lodo.loc[lodo["method"] == label, "best_gap"] if "best_gap" in lodo else pd.Series(dtype=float)
        if gaps.notna().any():
            where = f"calibrated on {int(gaps.notna().sum())} held-out datasets of {lodo_path}"
            return shortlist_threshold(gaps, level), where
    lodo = leave_one_dataset_out(history, {label: method}, n_jobs=2)
    return (shortlist_threshold(lodo["best_gap"], level),
            f"calibrated now on {len(lodo)} held-out datasets (leave-one-dataset-out)")


def choosable_methods() -> list[str]:
    """The registered selectors that need at most the new dataset's profile (mc_bench.select.methods)."""
    from .select.methods import METHODS, PROFILE

    return [m.id for m in METHODS if m.make is not None and set(m.needs) <= {PROFILE}]


def choose_cmd(args) -> int:
    """Rank the candidate models for a dataset, from a fine-tuning history."""
    from .errors import HistoryError
    from .select.methods import method as registered
    from .select.shortlist import conformal_shortlist

    from .errors import InputError

    if not (args.level == 0 or 0 < args.level < 1):
        raise InputError(f"--level {args.level}", "a coverage level is a probability",
                         "pass a level between 0 and 1 (e.g. 0.9), or 0 for no shortlist")
    if args.top < 1:
        raise InputError(f"--top {args.top}", "not a number of rows to print", "pass --top 1 or more")
    if args.fine_tune is not None:
        return choose_and_finetune_cmd(args)
    start = time.perf_counter()
    history = _selection_history(args.history, args.transfergraph)
    dataset = args.dataset
    n_images = None
    if args.new_dataset:
        try:
            spec = json.loads(Path(args.new_dataset).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise HistoryError(args.new_dataset, f"cannot read the new dataset ({err})",
                               'write a JSON file {"id": ..., "features": {...}, "similarity": {...}}') from None
        dataset = spec.get("id")
        if not dataset:
            raise HistoryError(args.new_dataset, "the new dataset has no `id`", 'write {"id": ..., "features": {...}}')
        history = history.with_dataset(dataset, spec.get("features", {}), spec.get("similarity"))
    held_out = dataset in history.datasets if dataset else False
    if args.images:
        held_out = args.images in history.datasets
        history, dataset, n_images = _images_as_new_dataset(history, args.images, args.manifests)
    sim = history.dataset_similarity()
    known = set(history.dataset_features.index) | set(sim.index if sim is not None else [])
    if dataset not in known:
        raise HistoryError(args.history, f"unknown dataset {dataset!r}",
                           "pass a dataset of the history, describe a new one with --new-dataset FILE.json, "
                           "or profile an image folder with --images FOLDER")
    if held_out and not args.images:  # recommend as if it were new: none of its own results may be used
        history = history.without_runs(dataset)
    chosen = registered(args.method)
    method = chosen.make()
    if "random_state" in method.get_params():
        method.set_params(random_state=args.seed)
    scores = method.fit(history).predict(dataset)
    ranked = method.rank(dataset)
    threshold, calibration = (None, "")
    if args.level:
        from sklearn.base import clone

        threshold, calibration = _shortlist_threshold(history, args.history, args.level, clone(method), chosen.label)
    shortlist = conformal_shortlist(scores, threshold) if threshold is not None else []
    nearest = (sim.loc[dataset].drop(dataset).loc[lambda s: s.index.isin(history.datasets)]
               .sort_values(ascending=False).head(5)) if sim is not None and dataset in sim.index else None
    seconds = time.perf_counter() - start
    weights = {k: round(v, 4) for k, v in getattr(method, "weights_", {}).items()}  # M&C: what its blend listens to
    dropped = history.summary()["dropped_runs"]
    if args.json:
        print(json.dumps({"dataset": dataset, "method": chosen.id, "held_out": held_out, "n_images": n_images,
                          "ranking": ranked.head(args.top).to_dict(orient="records"), "learner_weights": weights,
                          "dropped_runs": dropped,
                          "shortlist": {"level": args.level, "models": shortlist, "threshold": threshold,
                                        "calibration": calibration} if args.level else None,
                          "nearest_datasets": [] if nearest is None else
                          [{"dataset": d, "similarity": float(v)} for d, v in nearest.items()],
                          "seconds": round(seconds, 2)}, indent=1))
        return 0
    note = " (its own runs were held out)" if held_out else ""
    what = f" ({n_images} images profiled)" if n_images else ""
    print(f"{chosen.label} for {dataset}{what}{note}: {len(history.models)} candidates, "
          f"learned from {len(history.datasets)} datasets\n")
    _print_table([{"rank": r["rank"], "model": r["model"], "score": f"{r['score']:.4f}",
                   "shortlist": "yes" if r["model"] in shortlist else ""}
                  for r in ranked.head(args.top).to_dict(orient="records")],
                 ["rank", "model", "score"] + (["shortlist"] if args.level else []))
    if args.level:
        print(f"\nshortlist ({100 * args.level:.0f} % conformal, {calibration}): {', '.join(shortlist)}")
    if nearest is not None:
        print("nearest known datasets: " + ", ".join(f"{d} ({v:.3f})" for d, v in nearest.items()))
    if weights:
        total = sum(weights.values()) or 1.0
        print("the blend's learners (stacking weights, learned on the history): "
              + ", ".join(f"{k} {v / total:.2f}" for k, v in sorted(weights.items(), key=lambda kv: -kv[1])))
    if dropped:
        print(f"{dropped} failed runs of the history (no finite {history.label}) were left out")
    print(f"{seconds:.1f} s")
    return 0


def choose_and_finetune_cmd(args) -> int:
    """Rank for an image folder, fine-tune the first K candidates on it, print the winner (mc_bench.study.choice)."""
    from .errors import InputError
    from .study.choice import choose_for_folder

    if not args.images or not Path(args.images).is_dir() or args.dataset or args.new_dataset or args.transfergraph:
        raise InputError("--fine-tune", "fine-tuning needs an image folder (--images FOLDER) and a study's history",
                         "pass HISTORY (e.g. results/cpu-paper) --images FOLDER --fine-tune K")
    k = args.fine_tune if args.fine_tune == "auto" else _positive_int(args.fine_tune, "--fine-tune")
    result = choose_for_folder(args.history, args.images, k, out=args.out, level=args.level, method=args.method,
                               scheduler=args.scheduler, workers=args.workers,
                               add_to_history=args.add_to_history, overrides=parse_overrides(args.set),
                               manifests=args.manifests, weights=args.weights, progress=not args.json)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0 if result["winner"] else 1
    label = result["label"]
    print(f"\n{result['dataset']}: {result['n_images']} images; {result['k']} of {len(result['ranking'])} candidates "
          f"fine-tuned ({result['k_why']})\n")
    _print_table([{"rank": t["rank"], "model": t["model"], "status": t["status"],
                   label: "" if t[label] is None else f"{t[label]:.3f}", "seconds": t["seconds"]}
                  for t in result["tried"]], ["rank", "model", "status", label, "seconds"])
    for t in result["tried"]:
        if t["status"] != "done":
            print(f"{t['model']} failed: {t['error'][:300]}")
    if result["winner"] is None:
        print(f"\nno candidate finished; see {Path(args.out or '') / 'cells.csv'}")
        return 1
    margin = result["margin_over_runner_up"]
    print(f"\nfine-tune {result['winner']}" + (f" ({label} {margin:.3f} better than the runner-up)"
                                                 if margin is not None else "")
          + f"; expected to hold the best candidate with probability {result['expected_success']:.2f}; "
          f"{result['seconds']:.0f} s in all")
    if result.get("added_to_history"):
        print(f"the history with this folder added: {result['added_to_history']}")
    return 0


def _positive_int(value, flag: str) -> int:
    from .errors import InputError

    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise InputError(f"{flag} {value}", "not a positive whole number", f"pass {flag} 1 or more")
    return number


# ----------------------------------------------------------------------------------------------- finetune


def parse_overrides(items: list[str]) -> dict:
    """``["train.steps=100", "generate.n_samples=32"]`` -> ``{"train": {"steps": 100}, ...}`` (YAML values)."""
    import yaml

    from .errors import InputError

    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        section, dot, field = key.partition(".")
        if not sep or not dot:
            raise InputError(f"--set {item}", "not of the form section.field=value",
                             "write e.g. --set train.steps=100 or --set generate.n_samples=32")
        out.setdefault(section, {})[field] = yaml.safe_load(value)
    return out


def read_config(path: str) -> dict:
    """A ``--config`` YAML file as a mapping; a missing, unreadable or broken file, or one that is not a mapping, is one
    :class:`InputError`."""
    import yaml

    from .errors import InputError
    from .io import load_yaml

    try:
        data = load_yaml(Path(path).read_text())
    except OSError as err:
        raise InputError(path, f"the config file cannot be read ({err.strerror or err})",
                         "pass the path of a YAML file with `train:`, `generate:` or `evaluate:` sections") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(path, f"not valid YAML ({getattr(err, 'problem', None) or err})",
                         "fix the YAML syntax (sections `train:`, `generate:`, `evaluate:`)") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(path, f"the top level is a {type(data).__name__}, not a mapping",
                         "write sections `train:`, `generate:` or `evaluate:` at the top level")
    return data


def finetune_cmd(args) -> int:
    from .train.finetune import finetune
    from .train.runs import build_config

    overrides = read_config(args.config) if args.config else {}
    for section, values in parse_overrides(args.set).items():
        overrides.setdefault(section, {}).update(values)
    config = build_config(args.model, args.dataset, args.out, profile=args.profile, overrides=overrides,
                          manifests=args.manifests, revision=args.revision)
    record = finetune(config, sample=not args.no_sample)
    print(json.dumps(record, indent=1))
    if record["status"] == "failed":
        print(f"error: run failed: {record['reason']}", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------------------------- evaluate


def evaluate_cmd(args) -> int:
    from .config import evaluate_settings
    from .errors import InputError
    from .evaluate import evaluate_run

    overrides = read_config(args.config).get("evaluate", {}) if args.config else {}
    for section, fields in parse_overrides(args.set).items():
        if section != "evaluate":
            raise InputError(f"--set {section}.*", "only evaluate.* settings apply here",
                             "write --set evaluate.FIELD=VALUE")
        overrides.update(fields)
    settings = evaluate_settings(args.profile, overrides, args.manifests)
    table = evaluate_run(args.run_dir, settings, weights=args.weights)
    if args.json:
        print(table.to_json(orient="records", indent=1))
        return 0
    rows = [{**r, "value": "" if r["value"] != r["value"] else f"{r['value']:.4f}",
             "note": r["reason"] if isinstance(r["reason"], str) and r["reason"]
             else (r["warning"] if isinstance(r["warning"], str) else "")}
            for r in table.to_dict(orient="records")]
    _print_table(rows, ["metric", "value", "status", "library", "backbone", "n_real", "n_fake"])
    notes = {r["note"] for r in rows if r["note"]}
    for note in sorted(notes):
        print(f"note: {note}")
    print(f"written: {Path(args.run_dir) / 'metrics.csv'}")
    return 0


def weights_cmd(args) -> int:
    from .weights import fetch, listing, weights_dir

    for name in args.fetch:
        print(f"fetched {name} -> {fetch(name, args.dir)}")
    rows = listing(args.dir)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"weights folder: {weights_dir(args.dir)}  (set MC_BENCH_WEIGHTS to change it)\n")
    _print_table([{**r, "present": "yes" if r["present"] else "MISSING"} for r in rows],
                 ["name", "present", "sha256", "used_by"])
    return 0


# ----------------------------------------------------------------------------------------------- run


def preflight_cmd(args) -> int:
    """Every check of a profile before the grid: one table, every problem with its fix; exit 2 on a problem."""
    from .study.preflight import PROBLEM, preflight

    table = preflight(args.profile, args.manifests, args.weights, online=False if args.offline else None,
                      study_dir=args.out)
    if args.json:
        print(table.to_json(orient="records", indent=1))
    else:
        _print_table(table.to_dict(orient="records"), ["check", "subject", "status", "detail"])
        for r in table[table["status"] == PROBLEM].itertuples():
            print(f"problem: {r.check} {r.subject}: {r.detail}. Fix: {r.fix}")
        unchecked = int((table["status"] == "not checked").sum())
        if unchecked:
            print(f"{unchecked} checks could not be made offline (the hub is not reachable from here)")
    return 2 if (table["status"] == PROBLEM).any() else 0


def run_cmd(args) -> int:
    from .study import run_study

    summary = run_study(args.profile, args.out, manifests=args.manifests, scheduler=args.scheduler,
                        workers=args.workers, retry_failed=args.retry_failed, weights=args.weights,
                        ablations=not args.no_ablations, grid_only=args.grid_only)
    study = Path(args.out) if args.out else study_dir_for(args.profile)
    print(f"\n{summary['done']}/{summary['cells']} cells done, {summary['failed']} failed; "
          f"{summary['total_seconds']:.0f} s (grid {summary['grid_seconds']:.0f} s)")
    if args.grid_only:
        print(f"grid only: metrics in {study / 'metrics.csv'} and {study / 'performance.csv'}")
        return 0 if summary["failed"] == 0 else 1
    if summary.get("kernel_startup_share") is not None:
        print(f"kernel start-up: {100 * summary['kernel_startup_share']:.1f} % of the grid's notebook time "
              f"(imports in the first cell: {100 * summary['imports_share']:.1f} %)")
    import pandas as pd

    table = pd.read_csv(study / "selection_summary.csv")
    n_datasets = int(table["n_datasets"].max())
    print(f"\nleave-one-dataset-out over {n_datasets} datasets ({study / 'selection_summary.csv'}):")
    _print_table([{"method": r["method"], "top1": f"{r['top1']:.3f}", "top3": f"{r['top3']:.3f}",
                   "mean_regret": f"{r['mean_regret']:.4f}",
                   "vs M&C (paired)": r["verdict"] if isinstance(r.get("verdict"), str) else ""}
                  for r in table.to_dict(orient="records")],
                 ["method", "top1", "top3", "mean_regret"] + (["vs M&C (paired)"] if "verdict" in table else []))
    print(f"\nreport: {study / 'report.html'}")
    return 0 if summary["failed"] == 0 else 1


# ----------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mc-bench", description=__doc__)
    parser.add_argument("--manifests", default=None, help="folder of datasets/models/profiles.yaml")
    sub = parser.add_subparsers(dest="command", required=True)

    world = sub.add_parser("world", help="the offline world: its datasets and its zoo of tiny models")
    world_sub = world.add_subparsers(dest="world_command", required=True)
    wd = world_sub.add_parser("datasets", help="build, validate and list the world's datasets")
    wd.add_argument("--json", action="store_true", help="print the table as JSON")
    wd.add_argument("--rebuild", action="store_true", help="rebuild datasets that already exist")
    wd.add_argument("--cache", default=None, help="where datasets are built (default: $MC_BENCH_CACHE)")
    wd.add_argument("--results", default=str(REPO_ROOT / "results" / "world"), help="where contact sheets go")
    wd.set_defaults(func=world_datasets)

    wz = world_sub.add_parser("zoo", help="list (or rebuild) the tiny CLIP, VAE and the twelve tiny T2I models "
                                          "(SD, SDXL, SD3)")
    wz.add_argument("--json", action="store_true", help="print the zoo as JSON")
    wz.add_argument("--rebuild", action="store_true", help="retrain everything deterministically on CPU")
    wz.add_argument("--report", action="store_true", help="write models.yaml, contact sheets and CLIP retrieval")
    wz.add_argument("--jobs", type=int, default=2, help="one-thread training processes")
    wz.add_argument("--root", default=str(REPO_ROOT / "world_models"))
    wz.add_argument("--results", default=str(REPO_ROOT / "results" / "zoo"))
    wz.set_defaults(func=world_zoo)

    val = sub.add_parser("validate", help="validate the manifests and every local dataset folder")
    val.add_argument("--cache", default=None)
    val.set_defaults(func=validate)

    ch = sub.add_parser("choose", help="rank candidate models for a dataset from a fine-tuning history")
    ch.add_argument("history", help="a history folder (history.yaml), a study folder (results/<profile>), or "
                                    "TransferGraph records with --transfergraph")
    ch.add_argument("--transfergraph", action="store_true", help="HISTORY is in TransferGraph's public format")
    target = ch.add_mutually_exclusive_group(required=True)  # what to choose for: exactly one
    target.add_argument("--dataset", help="a dataset of the history (its own runs are held out)")
    target.add_argument("--new-dataset", help='JSON file: {"id": ..., "features": {...}, "similarity": {...}}')
    target.add_argument("--images", help="an image folder (metadata.jsonl with file_name and text) or a datasets.yaml "
                                         "id: "
                                     "profiled like the history's datasets")
    ch.add_argument("--level", type=float, default=0.9,
                    help="conformal shortlist level (0 for none): the smallest set that holds the best model with "
                         "this probability")
    ch.add_argument("--top", type=int, default=10)
    ch.add_argument("--method", default="mc", choices=choosable_methods(),
                    help="the selector (mc_bench.select.methods): M&C by default")
    ch.add_argument("--seed", type=int, default=0)
    ch.add_argument("--json", action="store_true")
    ft_group = ch.add_argument_group("fine-tune the first candidates on the folder (with --images FOLDER)")
    ft_group.add_argument("--fine-tune", metavar="K", help="fine-tune the first K candidates with the history's "
                          "recipe and return the winner; `auto`: the smallest K whose ranker-first success rate on "
                          "the history reaches --level")
    ft_group.add_argument("--out", help="where the choice is written (default: results/choices/<folder name>)")
    ft_group.add_argument("--scheduler", default=None, help="address of a Dask scheduler (default: a LocalCluster)")
    ft_group.add_argument("--workers", type=int, default=None, help="LocalCluster worker processes (default: one "
                          "per GPU on a GPU recipe, else 2)")
    ft_group.add_argument("--add-to-history", metavar="PATH", help="write a copy of the history with the folder "
                          "and its runs appended to PATH")
    ft_group.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                          help="change the recipe (train./generate. fields), e.g. --set train.steps=20")
    ft_group.add_argument("--weights", default=None, help="weights folder for the metrics (default: $MC_BENCH_WEIGHTS)")
    ch.set_defaults(func=choose_cmd)

    ft = sub.add_parser("finetune", help="fine-tune one model on one dataset (LoRA or full), then generate samples")
    ft.add_argument("--model", required=True, help="models.yaml id, diffusers folder, or hf:<id> (with --revision)")
    ft.add_argument("--dataset", required=True, help="datasets.yaml id")
    ft.add_argument("--out", required=True, help="the run folder (an existing one is resumed)")
    ft.add_argument("--profile", default=None, help="take train/generate settings from this profile")
    ft.add_argument("--config", default=None, help="YAML file with `train:` and `generate:` settings")
    ft.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="override one setting, e.g. --set train.method=full --set train.steps=100")
    ft.add_argument("--revision", default=None, help="hub revision for --model hf:<id>")
    ft.add_argument("--no-sample", action="store_true", help="train only")
    ft.set_defaults(func=finetune_cmd)

    ev = sub.add_parser("evaluate", help="FID/KID, CLIP score and ImageReward of a finished run's samples")
    ev.add_argument("run_dir")
    ev.add_argument("--profile", default=None, help="take the evaluate settings from this profile")
    ev.add_argument("--config", default=None, help="YAML file with an `evaluate:` section")
    ev.add_argument("--set", action="append", default=[], metavar="evaluate.FIELD=VALUE",
                    help="override one setting, e.g. --set evaluate.fid_backbone=inception")
    ev.add_argument("--weights", default=None, help="weights folder (default: $MC_BENCH_WEIGHTS)")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=evaluate_cmd)

    pf = sub.add_parser("preflight", help="check a profile's models, datasets, weights, GPU and disk before its grid")
    pf.add_argument("--profile", required=True)
    pf.add_argument("--weights", default=None, help="weights folder for the metrics (default: $MC_BENCH_WEIGHTS)")
    pf.add_argument("--out", default=None, help="study folder (default: results/<profile>): where disk is checked")
    pf.add_argument("--offline", action="store_true", help="check only what needs no network (the hub cache)")
    pf.add_argument("--json", action="store_true")
    pf.set_defaults(func=preflight_cmd)

    ru = sub.add_parser("run", help="the whole study of a profile: the grid on Dask, then profile, graph, choose, "
                                    "report")
    ru.add_argument("--profile", required=True, help="a profile of profiles.yaml (smoke, mini, cpu-paper, paper)")
    ru.add_argument("--out", default=None, help="study folder (default: results/<profile>)")
    ru.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler (default: a LocalCluster)")
    ru.add_argument("--workers", type=int, default=None, help="LocalCluster worker processes (default: one per GPU "
                    "on a GPU profile, each cell alone on its GPU; 2 one-thread workers on the CPU)")
    ru.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    ru.add_argument("--no-ablations", action="store_true", help="skip the ablations in 05_choose")
    ru.add_argument("--grid-only", action="store_true",
                    help="run the grid and collect its metrics, without the profile/graph/choose/report notebooks")
    ru.add_argument("--weights", default=None, help="weights folder for the metrics (default: $MC_BENCH_WEIGHTS)")
    ru.set_defaults(func=run_cmd)

    we = sub.add_parser("weights", help="list the metric backbones in the weights folder; --fetch downloads them")
    we.add_argument("--dir", default=None, help="weights folder (default: $MC_BENCH_WEIGHTS or <cache>/weights)")
    we.add_argument("--fetch", action="append", default=[], metavar="NAME",
                    help="download a backbone (inception, openai-clip, image-reward, bert-base-uncased); repeatable")
    we.add_argument("--json", action="store_true")
    we.set_defaults(func=weights_cmd)

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
