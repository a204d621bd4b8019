"""The study: a profile's model × dataset grid as papermill notebooks on Dask, then profile, graph, choose, report.

``mc-bench run --profile NAME`` (:func:`run_study`) executes, into the study folder (``results/<profile>/``):

1. the grid — one *cell* per (model, dataset): ``notebooks/02_finetune.ipynb`` then ``03_evaluate.ipynb``, run
   by papermill in the cell's run folder, whose executed notebooks are the cell's record. Cells run on a Dask
   cluster: a ``LocalCluster`` of one-thread worker processes by default, or ``scheduler=ADDRESS``; a GPU
   profile's cells ask for the worker resource ``GPU``;
2. ``01_profile``, ``04_graph``, ``05_choose`` and ``06_report`` (exported to ``report.html``).

Resumable: a cell whose ``cell.json`` says done is skipped; a running or missing one is (re)done — the
fine-tune resumes from its last checkpoint; a failed one keeps its error and is retried only with
``retry_failed``. Killing the runner and starting it again loses nothing and duplicates nothing.

The study folder and its tables are described in :mod:`mc_bench.study.tables`.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from ..config import Manifests, Profile, load_manifests
from ..errors import InputError, McBenchError
from ..io import write_json
from ..paths import NOTEBOOKS, REPO_ROOT, repo_relative, study_dir_for
from ..world.data import load_dataset_split, validate_dataset
from .report import write_contact_sheets
from .tables import CELL_RECORD, cell_dir, cells_table, collect_tables, grid, read_cell, write_study_record

FINETUNE_NB, EVALUATE_NB = "02_finetune.ipynb", "03_evaluate.ipynb"
STUDY_NOTEBOOKS = ("01_profile.ipynb", "04_graph.ipynb", "05_choose.ipynb", "06_report.ipynb")


# ------------------------------------------------------------------------------------------------ one cell


PIN_GPUS = "MC_BENCH_PIN_GPUS"  # set by the runner's own GPU LocalCluster: the GPUs its workers share out


def worker_gpu() -> str | None:
    """The GPU this Dask worker's kernels should see: worker ``i`` of the runner's local GPU cluster gets the
    ``i``-th GPU of ``$MC_BENCH_PIN_GPUS`` (modulo their number); None elsewhere (outside a worker, or on a cluster
    whose jobs already have their own GPUs, such as SLURM's ``--gres``)."""
    gpus = [g for g in os.environ.get(PIN_GPUS, "").split(",") if g]
    if not gpus:
        return None
    from dask.distributed import get_worker

    try:
        name = get_worker().name
    except ValueError:  # not in a worker
        return None
    return gpus[int(name) % len(gpus)] if str(name).isdigit() else None


def worker_threads() -> int:
    """The threads a cell may use: the Dask worker's own (``nthreads``: the cores it was given), 1 outside one."""
    from dask.distributed import get_worker

    try:
        return max(1, int(get_worker().state.nthreads))
    except (ValueError, AttributeError):
        return 1


@functools.cache
def _kernel_manager_class(threads: int = 1, gpu: str | None = None):
    """Kernels over Unix-domain sockets (ipc) rather than TCP ports — kernels started at the same moment by several
    workers cannot race for a port, and nothing listens on the network — started with ``threads`` OpenMP/MKL
    threads in their environment, and ``CUDA_VISIBLE_DEVICES=gpu`` when a GPU is pinned (the worker's own
    environment is left as it is)."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            kwargs.setdefault("transport", "ipc")
            super().__init__(**kwargs)

        async def start_kernel(self, **kw):
            env = dict(kw.pop("env", None) or os.environ)
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpu
            return await super().start_kernel(env=env, **kw)

    return IPCKernelManager


@contextmanager
def _stderr_to(path: Path):
    """Point file descriptor 2 (inherited by kernels) at ``path`` for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "w") as fh:
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _execute(notebook: str, output: Path, parameters: dict, cwd: Path, threads: int = 1) -> dict:
    """Run a notebook with papermill; returns wall time, the time inside its cells and the first (import) cell."""
    import nbformat
    import papermill as pm

    start = time.perf_counter()
    for attempt in range(2):
        try:
            with _stderr_to(output.with_suffix(".log")):  # the kernel's own log lines, kept beside its notebook
                pm.execute_notebook(str(NOTEBOOKS / notebook), str(output), parameters=parameters, cwd=str(cwd),
                                    progress_bar=False, kernel_name="python3", log_output=False, start_timeout=180,
                                    kernel_manager_class=_kernel_manager_class(threads, worker_gpu()),
                                    shutdown_kernel="immediate")  # outputs are saved by then: no 2 s graceful wait
            break
        except RuntimeError as err:  # a kernel that never came up is retried once; a failing notebook is not
            if attempt or "Kernel didn't respond" not in str(err):
                raise
    wall = time.perf_counter() - start
    nb = nbformat.read(output, as_version=4)
    durations = [c.metadata.get("papermill", {}).get("duration") or 0.0 for c in nb.cells if c.cell_type == "code"]
    return {"wall": wall, "cells": sum(durations), "first_cell": durations[0] if durations else 0.0}


def failure_cause(err: Exception) -> str:
    """The cause of a failed cell in one line: the exception raised inside the notebook (papermill's ``ename``
    and ``evalue``), not papermill's own wrapping of it."""
    name, value = getattr(err, "ename", None), getattr(err, "evalue", None)
    if name is None:
        name, value = type(err).__name__, str(err)
    return f"{name}: {' '.join(str(value).split())}"[:1000]


def failed_record(study_dir: Path, model: str, dataset: str, cause: str) -> dict:
    """Record a cell as failed without running it (its dataset is broken): ``cell.json`` with the cause."""
    folder = cell_dir(Path(study_dir), model, dataset)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"model": model, "dataset": dataset, "status": "failed", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "error": cause}
    write_json(folder / CELL_RECORD, record)
    return record


def run_cell(study_dir: str | Path, model: str, dataset: str, profile: str, manifests: str | None = None,
             threads: int | None = 1, weights: str | None = None) -> dict:
    """Fine-tune + generate (02) and evaluate (03) one (model, dataset) cell; writes and returns ``cell.json``.
    ``threads`` None: the worker's own threads (a GPU cell, alone on its worker's GPU, uses the worker's cores)."""
    threads = threads or worker_threads()
    folder = cell_dir(Path(study_dir), model, dataset)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json(folder / CELL_RECORD, {"model": model, "dataset": dataset, "status": "running", "started": started})
    common = {"profile": profile, "manifests": manifests, "threads": threads}
    try:
        ft = _execute(FINETUNE_NB, folder / "finetune.ipynb",
                      {"model": model, "dataset": dataset, "run_dir": str(folder), **common}, folder, threads)
        ev = _execute(EVALUATE_NB, folder / "evaluate.ipynb", {"run_dir": str(folder), "weights": weights, **common},
                      folder, threads)
    except Exception as err:
        record = {"model": model, "dataset": dataset, "status": "failed", "started": started,
                  "error": failure_cause(err), "traceback": traceback.format_exc(limit=3)[-2000:]}
        write_json(folder / CELL_RECORD, record)
        return record
    timings = json.loads((folder / "timings.json").read_text())
    seconds = {
        "finetune_notebook": round(ft["wall"], 3), "evaluate_notebook": round(ev["wall"], 3),
        # kernel start-up: what papermill spends outside the notebook's cells (launch, connect, save)
        "kernel_startup": round(ft["wall"] - ft["cells"] + ev["wall"] - ev["cells"], 3),
        "imports": round(ft["first_cell"] + ev["first_cell"], 3),
        "train": timings.get("train_seconds"), "sample": timings.get("sample_seconds"),
        "evaluate": round(ev["cells"] - ev["first_cell"], 3),
    }
    record = {"model": model, "dataset": dataset, "status": "done", "started": started,
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": seconds, "threads": threads,
              "gpu": worker_gpu() or os.environ.get("CUDA_VISIBLE_DEVICES")}
    write_json(folder / CELL_RECORD, record)
    return record


# ------------------------------------------------------------------------------------------------ the grid


def pending_cells(study_dir: Path, profile: Profile, retry_failed: bool = False) -> tuple[list, list, list]:
    """(to run, done, failed) cells of the grid, from their records."""
    todo, done, failed = [], [], []
    for model, dataset in grid(profile):
        record = read_cell(cell_dir(study_dir, model, dataset)) or {}
        status = record.get("status")
        if status == "done":
            done.append((model, dataset))
        elif status == "failed" and not retry_failed:
            failed.append((model, dataset))
        else:
            todo.append((model, dataset))
    return todo, done, failed


def uses_gpu(profile: Profile) -> bool:
    """Whether a profile's cells train on a GPU: ``train.device`` cuda, or auto where CUDA is visible."""
    if profile.train.device == "cpu":
        return False
    if profile.train.device == "cuda":
        return True
    import torch

    return torch.cuda.is_available()


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else every device torch sees."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def grid_workers(workers: int | None, gpus: list[str] | None) -> int:
    """The runner's local worker processes: ``workers``, or by default one per GPU on a GPU profile (each cell has
    its GPU to itself, so its timings hold no contention) and 2 on the CPU. More workers than GPUs, or fewer than
    one, is an :class:`InputError`."""
    if gpus is not None and not gpus:
        raise InputError("the profile trains on a GPU (train.device)", "no CUDA device is visible",
                         "run on a machine with a GPU, or set train.device: cpu (or auto) in the profile")
    if workers is None:
        return len(gpus) if gpus else 2
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError(f"--workers {workers}", "not a positive number of worker processes",
                         "pass --workers 1 or more")
    if gpus and workers > len(gpus):
        raise InputError(f"--workers {workers}", f"more workers than GPUs ({len(gpus)}): cells would share a GPU and "
                         "their timings would include each other", f"pass --workers {len(gpus)} or fewer (or leave "
                         "it out: one per GPU)")
    return workers


def _client(scheduler: str | None, workers: int, gpus: int):
    from dask.distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None
        except (OSError, TimeoutError) as err:
            raise InputError(f"--scheduler {scheduler}", f"no Dask scheduler answers there ({type(err).__name__})",
                             "start one (dask scheduler) and pass its address, e.g. tcp://host:8786, or leave "
                             "--scheduler out for a local cluster") from None
    resources = {"GPU": gpus} if gpus else None
    env = {}
    if gpus:  # one GPU per local worker: without this every worker's kernels would share GPU 0
        env[PIN_GPUS] = ",".join(visible_gpus())
    # a GPU worker runs one cell at a time (resource GPU=1) and gives it its share of the machine's cores
    threads = max(1, (os.cpu_count() or 1) // workers) if gpus else 1
    cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True, dashboard_address=":0",
                           resources=resources, silence_logs=40, env=env)
    return Client(cluster), cluster


def broken_datasets(manifests: Manifests, profile: Profile) -> dict[str, str]:
    """Every dataset of the profile checked before the grid runs — world datasets built once (before cells run in
    parallel), folder datasets validated row by row: {dataset: the problem} for each broken one, all of them at
    once, not the first."""
    broken = {}
    for dataset in profile.datasets:
        try:
            if manifests.dataset(dataset).source_kind == "world":
                load_dataset_split(manifests, dataset, "train")
            else:
                validate_dataset(manifests, dataset)
        except McBenchError as err:
            broken[dataset] = f"{type(err).__name__}: {err}"
    return broken


def run_grid(study_dir: str | Path, profile_id: str, manifests: str | Path | None = None,
             scheduler: str | None = None, workers: int | None = None, retry_failed: bool = False,
             progress: bool = True, weights: str | None = None) -> pd.DataFrame:
    """Run every pending cell of the grid on Dask; returns the cells table (also ``cells.csv``). ``workers``: the
    local cluster's worker processes (:func:`grid_workers`: one per GPU on a GPU profile, else 2)."""
    from dask.distributed import as_completed
    from tqdm.auto import tqdm

    study_dir = Path(study_dir)
    m = load_manifests(manifests)
    profile = m.profile(profile_id)
    study_dir.mkdir(parents=True, exist_ok=True)
    write_study_record(study_dir, m, profile)
    broken = broken_datasets(m, profile)
    for dataset, cause in broken.items():
        print(f"dataset {dataset} is broken, its cells fail without running: {cause}", file=sys.stderr)
    todo, done, failed = pending_cells(study_dir, profile, retry_failed)
    for model, dataset in [c for c in todo if c[1] in broken]:
        failed_record(study_dir, model, dataset, broken[dataset])
    failed += [c for c in todo if c[1] in broken]
    todo = [c for c in todo if c[1] not in broken]
    total = len(grid(profile))
    bar = tqdm(total=total, initial=len(done) + len(failed), desc=f"grid {profile_id}", unit="cell",
               disable=not progress)
    counts = {"done": len(done), "failed": len(failed)}

    def show():
        left = total - counts["done"] - counts["failed"]
        bar.set_postfix(done=counts["done"], failed=counts["failed"], remaining=left)

    show()
    if todo:
        gpu = uses_gpu(profile)
        if scheduler is None:
            workers = grid_workers(workers, visible_gpus() if gpu else None)
        client, cluster = _client(scheduler, workers, 1 if gpu else 0)
        try:
            # CPU cells: one thread each (two one-thread workers beat one two-thread one; the numbers do not depend
            # on the machine's cores); GPU cells: the worker's threads, for data loading and evaluation
            futures = [client.submit(run_cell, str(study_dir.resolve()), model, dataset, profile_id,
                                     str(Path(manifests).resolve()) if manifests else None, None if gpu else 1,
                                     weights,
                                     key=f"cell-{model}__{dataset}-{time.time_ns()}", pure=False,
                                     resources={"GPU": 1} if gpu else None)
                       for model, dataset in todo]
            for future in as_completed(futures):
                record = future.result()
                counts["done" if record["status"] == "done" else "failed"] += 1
                if record["status"] == "failed":
                    bar.write(f"failed: {record['model']} on {record['dataset']}: {record['error'][:300]}")
                bar.update(1)
                show()
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    bar.close()
    return cells_table(study_dir, profile)


# ------------------------------------------------------------------------------------------------ the study


def run_study_notebooks(study_dir: Path, manifests: str | Path | None = None, seed: int = 0,
                        ablations: bool = True) -> dict:
    """01, 04, 05 and 06 on the study folder, then ``report.html``; returns seconds per notebook."""
    out = Path(study_dir) / "notebooks"
    out.mkdir(parents=True, exist_ok=True)
    seconds = {}
    import papermill as pm

    # the notebooks write into the study they analyse; paths inside the repository are passed relative to it (the
    # notebooks resolve them against the root) so that the executed notebooks name no machine's folders
    study = repo_relative(Path(study_dir).resolve())
    given = {"study_dir": study, "out_dir": study,
             "manifests": repo_relative(Path(manifests).resolve()) if manifests else None,
             "bootstrap_seed": seed, "ablations": ablations}
    for notebook in STUDY_NOTEBOOKS:
        declared = pm.inspect_notebook(str(NOTEBOOKS / notebook))  # pass each notebook only its own parameters
        params = {k: v for k, v in given.items() if k in declared}
        seconds[notebook] = round(_execute(notebook, out / notebook, params, Path(study_dir))["wall"], 3)
        without_repo_root(out / notebook)
    without_repo_root(export_html(out / "06_report.ipynb", Path(study_dir) / "report.html"))
    return seconds


def without_repo_root(path: Path) -> Path:
    """Rewrite a committed output so that the repository's absolute folder (what a printed path starts with on the
    machine that made it) reads as a relative path."""
    text = Path(path).read_text()
    for root in {str(REPO_ROOT), str(REPO_ROOT.resolve())}:
        text = text.replace(root + "/", "")
    Path(path).write_text(text)
    return Path(path)


def export_html(notebook: Path, target: Path) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    target.write_text(body)
    return target


def run_study(profile_id: str, study_dir: str | Path | None = None, manifests: str | Path | None = None,
              scheduler: str | None = None, workers: int | None = None, retry_failed: bool = False,
              progress: bool = True, weights: str | None = None, ablations: bool = True,
              grid_only: bool = False) -> dict:
    """The whole study (see the module docstring). Returns a summary with seconds per stage. ``grid_only``: the
    grid and its metric tables, without the study notebooks."""
    study_dir = Path(study_dir) if study_dir else study_dir_for(profile_id)
    profile = load_manifests(manifests).profile(profile_id)
    if not grid_only and len(profile.datasets) < 3:
        raise InputError(f"profile {profile_id!r}", f"it has {len(profile.datasets)} datasets; choosing a model "
                         "leave-one-dataset-out needs at least 3", "add datasets to the profile, or pass --grid-only "
                         "to fine-tune and evaluate without the selection stages")
    from .preflight import preflight, raise_on_problems

    # the offline preflight first: a missing model folder or metric weight, no GPU for a GPU profile, a full disk
    raise_on_problems(preflight(profile_id, manifests, weights, online=False, study_dir=study_dir, datasets=False),
                      profile_id)
    with study_lock(study_dir):
        return _run_study_locked(profile_id, study_dir, manifests, scheduler, workers, retry_failed, progress,
                                 weights, ablations, grid_only)


@contextmanager
def study_lock(study_dir: Path):
    """One runner per study folder: a second ``mc-bench run`` on the same folder is refused while the first holds it
    (the operating system drops the lock of a killed runner)."""
    import fcntl

    try:
        Path(study_dir).mkdir(parents=True, exist_ok=True)
        handle = open(Path(study_dir) / ".study.lock", "a+")
    except OSError as err:
        raise InputError(study_dir, f"the study folder cannot be written ({err.strerror or err})",
                         "pass a study folder (--out) in a place you can write to") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise InputError(study_dir, f"another mc-bench run is using this study folder ({holder})",
                             "wait for it to finish, or stop it; a killed runner releases the folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_study_locked(profile_id, study_dir, manifests, scheduler, workers, retry_failed, progress, weights,
                      ablations, grid_only) -> dict:
    start = time.perf_counter()
    cells = run_grid(study_dir, profile_id, manifests, scheduler, workers, retry_failed, progress, weights)
    grid_seconds = time.perf_counter() - start
    collect_tables(study_dir, profile_id, manifests)
    write_contact_sheets(study_dir, manifests=manifests)
    notebooks = {} if grid_only else run_study_notebooks(study_dir, manifests, ablations=ablations)
    done = cells[cells["status"] == "done"]
    cell_seconds = float((done["finetune_notebook"] + done["evaluate_notebook"]).sum()) if len(done) else 0.0
    summary = {"profile": profile_id, "cells": len(cells), "done": int((cells["status"] == "done").sum()),
               # kernel launch + papermill overhead over the time of the grid's notebooks (imports counted apart)
               "kernel_startup_share": round(float(done["kernel_startup"].sum()) / cell_seconds, 4)
               if cell_seconds else None,
               "imports_share": round(float(done["imports"].sum()) / cell_seconds, 4) if cell_seconds else None,
               "failed": int((cells["status"] == "failed").sum()), "grid_seconds": round(grid_seconds, 1),
               "notebook_seconds": notebooks, "total_seconds": round(time.perf_counter() - start, 1)}
    write_json(study_dir / "run_summary.json", summary)
    return summary


def drop_figures(study_dir: str | Path) -> int:
    """Remove image outputs from the grid's executed notebooks (their text outputs, parameters and timings stay;
    the samples themselves are in each run's ``samples/``): a 320-cell grid's 640 executed notebooks shrink to a
    few MB. Returns the number of notebooks rewritten."""
    import nbformat

    count = 0
    for path in sorted(Path(study_dir).glob("runs/*/*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        changed = False
        for cell in nb.cells:
            for output in cell.get("outputs", []):
                data = output.get("data", {})
                for key in [k for k in data if k.startswith("image/")]:
                    del data[key]
                    data.setdefault("text/plain", "<figure dropped to keep the committed study small>")
                    changed = True
        if changed:
            nbformat.write(nb, path)
            count += 1
    return count
