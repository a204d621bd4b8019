"""A fine-tuning history: the tables Match & Choose learns from.

Schema (CSV or Parquet; one folder, described by ``history.yaml``):

``runs``
    one row per fine-tuning run: ``model``, ``dataset``, optional ``seed``, and one or more quality columns.
    Each quality column has a declared direction (``higher`` or ``lower`` is better). Several seeds of the same
    (model, dataset) pair are averaged; without a ``seed`` column a repeated pair is an error. A run whose label is
    empty, NaN or infinite (a failed run, as real records hold them) is dropped with a warning that counts and names
    it, and listed in :meth:`History.summary`; a model or dataset left with no run is an error, and so is a value
    that is not a number at all.
``model_features``
    one row per model (column ``model``); numeric columns are features, text columns become categorical
    features. The optional column ``pretrain_dataset`` names the dataset(s) a model was pretrained on
    (``;``-separated ids of the similarity matrix); it links model nodes to dataset nodes in the matching graph.
``dataset_features``
    one row per dataset (column ``dataset``), numeric; embedding vectors as columns ``emb_0 … emb_k``.
    Missing values (NaN) are allowed in feature tables.
``similarity`` (optional)
    a square dataset × dataset matrix (first column = row ids, header = the same ids), symmetric, either a
    ``similarity`` (larger is closer) or a ``distance`` (smaller is closer). Without it, dataset similarity is the
    cosine of the ``emb_*`` columns.

``history.yaml``::

    runs: runs.csv
    quality: {fid: lower, clip_score: higher}
    label: fid                 # the quality column used as the selection label (default: the first)
    model_features: models.csv
    dataset_features: datasets.csv
    similarity: {file: similarity.csv, kind: distance}   # optional
    profiles: ../profiles      # optional: the mc_bench.profile folder that made the features (choose --images)
    probe: probe.csv           # optional: the label measured on each *pretrained* model's samples (no fine-tuning)

``probe`` (optional)
    one row per (model, dataset): ``model``, ``dataset`` and the label column, measured the same way as the label
    but on the pretrained model's samples for the dataset's held-out captions (``train.steps: 0``): the first thing a
    practitioner tries. Unlike runs, a probe is cheap enough to have for a new dataset too, so
    :meth:`History.without_runs` keeps it. Optional ``seconds`` column: what the probe cost.

Every problem is one :class:`~mc_bench.errors.HistoryError` naming the table and the fix.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import yaml

from ..errors import HistoryError
from ..io import load_yaml
from ..io import read_table as read_any_table

Direction = Literal["higher", "lower"]


def read_table(path: str | Path) -> pd.DataFrame:
    """A history's table (CSV or Parquet), a problem with the file being one :class:`HistoryError`."""
    return read_any_table(path, HistoryError)


@dataclass(frozen=True)
class History:
    """A validated fine-tuning history. Build it with :meth:`from_tables`, :func:`load_history` or
    :func:`from_transfergraph`; never mutate it — :meth:`without_runs` and :meth:`subset` return new ones."""

    runs: pd.DataFrame  # model, dataset, <quality columns>; one row per pair (seeds averaged)
    quality: dict[str, Direction]
    label: str
    model_features: pd.DataFrame  # index: model
    dataset_features: pd.DataFrame  # index: dataset
    similarity: pd.DataFrame | None = None  # dataset × dataset, larger = closer, in [0, 1]
    pretrain: dict[str, tuple[str, ...]] = field(default_factory=dict)  # model -> pretraining dataset ids
    source: str = "tables"
    profiles: Path | None = None  # the mc_bench.profile folder the dataset features came from, when known
    probe: pd.DataFrame | None = None  # model × dataset: the label of each pretrained model's samples (no fine-tuning)
    dropped_runs: pd.DataFrame | None = None  # model, dataset, row: runs left out because their label was missing

    # ------------------------------------------------------------------------------------------ building

    @classmethod
    def from_tables(
        cls,
        runs: pd.DataFrame,
        quality: dict[str, Direction],
        model_features: pd.DataFrame | None = None,
        dataset_features: pd.DataFrame | None = None,
        similarity: pd.DataFrame | None = None,
        similarity_kind: Literal["similarity", "distance"] = "similarity",
        label: str | None = None,
        source: str = "tables",
        probe: pd.DataFrame | None = None,
    ) -> "History":
        """Validate raw tables (see the module docstring) and return a :class:`History`."""
        runs = runs.copy()
        for col in ("model", "dataset"):
            if col not in runs.columns:
                raise HistoryError(f"{source}: runs", f"column {col!r} is missing",
                                   "name the columns model, dataset, <quality>")
        runs["model"] = runs["model"].astype(str)
        runs["dataset"] = runs["dataset"].astype(str)
        if not quality:
            raise HistoryError(f"{source}: runs", "no quality column declared",
                               "declare quality: {column: higher|lower}")
        for col, direction in quality.items():
            if col not in runs.columns:
                raise HistoryError(f"{source}: runs", f"quality column {col!r} is missing", "add it or fix `quality`")
            if direction not in ("higher", "lower"):
                raise HistoryError(f"{source}: quality", f"column {col!r} has direction {direction!r}",
                                   "declare each quality column as `higher` or `lower` (is better)")
            values = pd.to_numeric(runs[col], errors="coerce")
            text = values.isna() & runs[col].notna() & ~runs[col].astype(str).str.strip().isin(["", "nan", "NaN"])
            if text.any():  # a value that is not a number at all: a broken table, not a failed run
                row = runs.loc[text].iloc[0]
                raise HistoryError(
                    f"{source}: runs, row {int(np.flatnonzero(text)[0])} ({row['model']}, {row['dataset']})",
                    f"quality {col!r} is {row[col]!r}, not a number",
                    "write numbers (a failed run's quality may be left empty: such runs are dropped)")
            finite = np.isfinite(values.to_numpy(dtype=float))
            if str(col).lower().startswith("fid") and (values[finite] < 0).any():
                row = runs.loc[finite & (values < 0)].iloc[0]
                raise HistoryError(f"{source}: runs ({row['model']}, {row['dataset']})",
                                   f"{col} is {row[col]}: a Fréchet distance is never negative",
                                   "check how the column was computed (a sign flipped, or a different metric)")
            runs[col] = values
        label = label or next(iter(quality))
        if label not in quality:
            raise HistoryError(f"{source}: label", f"label {label!r} is not a declared quality column",
                               f"use one of {list(quality)}")
        runs, dropped = _drop_failed_runs(runs, label, source)
        if "seed" in runs.columns:
            again = runs.duplicated(["model", "dataset", "seed"], keep=False)
            if again.any():
                row = runs.loc[again].iloc[0]
                raise HistoryError(f"{source}: runs", f"({row['model']}, {row['dataset']}, seed {row['seed']}) appears "
                                   "more than once",
                                   "keep one row per (model, dataset, seed): the same seed twice is one run recorded "
                                   "twice "
                                   "(or a mistake), not two seeds to average")
        dup = runs.duplicated(["model", "dataset"], keep=False)
        if dup.any() and "seed" not in runs.columns:
            row = runs.loc[dup].iloc[0]
            raise HistoryError(f"{source}: runs", f"({row['model']}, {row['dataset']}) appears {int(dup.sum())} times "
                               "in all duplicated pairs, and there is no seed column",
                               "add a `seed` column (seeds are averaged) or remove the duplicates")
        # Seeds are averaged; extra columns (hyper-parameters, timings) are not part of the history.
        runs = runs.groupby(["model", "dataset"], as_index=False, sort=True)[list(quality)].mean()

        models = sorted(runs["model"].unique())
        datasets_with_runs = sorted(runs["dataset"].unique())
        if len(datasets_with_runs) < 3:
            raise HistoryError(f"{source}: runs", f"only {len(datasets_with_runs)} datasets have runs",
                               "a history needs at least 3 datasets (one held out, two to learn from)")
        if len(models) < 2:
            raise HistoryError(f"{source}: runs", f"only {len(models)} model has runs",
                               "a history needs at least 2 models")

        mf = _feature_table(model_features, "model", models, source)
        pretrain: dict[str, tuple[str, ...]] = {}
        if "pretrain_dataset" in mf.columns:
            for m, val in mf.pop("pretrain_dataset").items():
                if isinstance(val, str) and val:
                    pretrain[m] = tuple(v.strip() for v in val.split(";") if v.strip())
        df = _feature_table(dataset_features, "dataset", datasets_with_runs, source)
        sim = None
        if similarity is not None:
            sim = _similarity_matrix(similarity, similarity_kind, source)
            missing = [d for d in df.index if d not in sim.index]
            if missing:
                raise HistoryError(f"{source}: similarity", f"datasets {missing[:5]} are not in the matrix",
                                   "give the matrix a row and column for every dataset")
            unknown = sorted({d for ds in pretrain.values() for d in ds} - set(sim.index))
            if unknown:
                raise HistoryError(f"{source}: model_features.pretrain_dataset", f"unknown datasets {unknown[:5]}",
                                   "name pretraining datasets by their ids in the similarity matrix")
        probe_matrix = None if probe is None else _probe_matrix(probe, label, models, source)
        return cls(runs=runs.reset_index(drop=True), quality=dict(quality), label=label, model_features=mf,
                   dataset_features=df, similarity=sim, pretrain=pretrain, source=source, probe=probe_matrix,
                   dropped_runs=dropped)

    # ------------------------------------------------------------------------------------------ views

    @property
    def models(self) -> list[str]:
        return list(self.model_features.index)

    @property
    def datasets(self) -> list[str]:
        """Datasets with at least one run."""
        return sorted(self.runs["dataset"].unique())

    @property
    def higher_is_better(self) -> bool:
        return self.quality[self.label] == "higher"

    def summary(self) -> dict:
        """What the history holds: models, datasets, runs, the label and its direction, whether it has a similarity
        and a probe, and the runs dropped on import because their label was missing or not finite (failed runs)."""
        dropped = self.dropped_runs if self.dropped_runs is not None else pd.DataFrame(columns=["model", "dataset"])
        return {"source": self.source, "models": len(self.models), "datasets": len(self.datasets),
                "runs": len(self.runs), "label": self.label, "direction": self.quality[self.label],
                "similarity": self.similarity is not None or self.dataset_similarity() is not None,
                "probe": self.probe is not None, "dropped_runs": len(dropped),
                "dropped": [f"{m} on {d}" for m, d in zip(dropped["model"], dropped["dataset"])]}

    def with_probe(self, table: pd.DataFrame) -> "History":
        """The same history with another probe table (``model``, ``dataset``, the label): e.g. the cheap probe of
        a study's ``<study>-probe16`` companion instead of the full one."""
        return replace(self, probe=_probe_matrix(table, self.label, self.models, f"{self.source}: probe"))

    def label_matrix(self) -> pd.DataFrame:
        """The label as a model × dataset matrix (NaN where a pair was not run)."""
        return self._label_matrix.copy()

    def normalised(self) -> pd.DataFrame:
        """Label min–max normalised within each dataset, direction-aware: 1 = best model, 0 = worst."""
        return self._normalised.copy()

    def probe_normalised(self, dataset: str) -> pd.Series:
        """The probe (pretrained quality) on ``dataset``, min–max normalised over the models, direction-aware:
        1 = the best pretrained model. A :class:`HistoryError` when the history has no probe for the dataset."""
        if self.probe is None or dataset not in self.probe.columns:
            raise HistoryError(f"{self.source}: probe", f"no probe for dataset {dataset!r}",
                               "measure every candidate's pretrained samples on it (a study with train.steps: 0, "
                               "e.g. mc-bench run --profile <profile>-pretrained) and name the table under `probe`")
        q = self.probe[dataset].reindex(self.models)
        lo, hi = q.min(), q.max()
        if not np.isfinite(hi - lo) or hi == lo:
            return q.notna().astype(float).where(q.notna())
        return (q - lo) / (hi - lo) if self.higher_is_better else (hi - q) / (hi - lo)

    def dataset_similarity(self) -> pd.DataFrame | None:
        """Dataset × dataset similarity in [0, 1] for every dataset with features (given matrix, else cosine)."""
        sim = self._dataset_similarity
        return None if sim is None else sim.copy()

    # computed once per History (it is immutable; the public methods return copies)
    @cached_property
    def _label_matrix(self) -> pd.DataFrame:
        return self.runs.pivot(index="model", columns="dataset", values=self.label).reindex(index=self.models)

    @cached_property
    def _normalised(self) -> pd.DataFrame:
        q = self._label_matrix
        lo, hi = q.min(axis=0), q.max(axis=0)
        span = (hi - lo).replace(0, np.nan)
        norm = (q - lo) / span if self.higher_is_better else (hi - q) / span
        return norm.mask(q.notna() & norm.isna(), 1.0)  # a dataset where all models tie: every model is best

    @cached_property
    def _dataset_similarity(self) -> pd.DataFrame | None:
        if self.similarity is not None:
            return self.similarity
        emb = self.dataset_features[[c for c in self.dataset_features.columns if c.startswith("emb_")]]
        if emb.shape[1] == 0:
            return None
        x = emb.to_numpy(dtype=float)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return pd.DataFrame((x @ x.T + 1) / 2, index=emb.index, columns=emb.index)

    def without_runs(self, datasets: list[str] | str) -> "History":
        """The same history with every run on ``datasets`` removed (their features and similarities stay):
        what a model-selection method may know about a new dataset."""
        drop = {datasets} if isinstance(datasets, str) else set(datasets)
        return replace(self, runs=self.runs[~self.runs["dataset"].isin(drop)].reset_index(drop=True))

    def subset(self, models: list[str] | None = None, datasets: list[str] | None = None) -> "History":
        """Keep only some models and/or datasets' runs (for model-ratio and history-ratio sweeps)."""
        runs = self.runs
        mf = self.model_features
        if models is not None:
            runs = runs[runs["model"].isin(models)]
            mf = mf.loc[[m for m in mf.index if m in set(models)]]
        if datasets is not None:
            runs = runs[runs["dataset"].isin(datasets)]
        probe = None if self.probe is None else self.probe.reindex(index=list(mf.index))
        return replace(self, runs=runs.reset_index(drop=True), model_features=mf, probe=probe,
                       pretrain={m: v for m, v in self.pretrain.items() if m in mf.index})

    def with_dataset(self, dataset: str, features: dict[str, float], similarity: dict[str, float] | None = None,
                     probe: dict[str, float] | None = None) -> "History":
        """Add a new dataset (no runs) with its features and its similarity to the history's datasets (needed when
        the history has a similarity matrix), and optionally its probe (the label of each candidate's pretrained
        samples). An id the history already uses, unknown features or a missing similarity is a
        :class:`HistoryError`; features left out are unknown to the ranker, and said so in a warning."""
        import warnings

        known = self.dataset_features
        if dataset in known.index or (self.similarity is not None and dataset in self.similarity.index):
            raise HistoryError("new dataset", f"the id {dataset!r} is a dataset of the history already",
                               "give the new dataset another id, or pass --dataset ID to rank for that dataset "
                               "with its own runs held out")
        unknown = sorted(set(features) - set(known.columns))
        if unknown:
            raise HistoryError("new dataset", f"features {unknown} are not features of the history",
                               f"use the history's dataset features: {list(known.columns)}")
        if self.similarity is not None and similarity is None:
            raise HistoryError("new dataset", "no similarity to the history's datasets, which the history compares "
                               "datasets by", "give `similarity` to every dataset of the history, or profile an "
                               "image folder with mc-bench choose --images")
        left_out = [c for c in known.columns if c not in features]
        if self.similarity is None and any(c.startswith("emb_") for c in left_out):
            raise HistoryError("new dataset", f"embedding features {[c for c in left_out if c.startswith('emb_')]} "
                               "are missing, and the history's dataset similarity is made from them",
                               "give every emb_* feature of the new dataset")
        if left_out:
            warnings.warn(f"new dataset {dataset!r}: features {left_out} not given; the ranker treats them as unknown",
                          stacklevel=2)
        for name, value in features.items():
            if not isinstance(known[name].dtype, pd.CategoricalDtype) and value is not None and not (
                    isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and np.isfinite(value)):
                raise HistoryError("new dataset", f"feature {name!r} is {value!r}, not a finite number",
                                   "give numeric features as numbers (leave a feature out when it is unknown)")
        if similarity is not None:
            bad = {k: v for k, v in similarity.items()
                   if not isinstance(v, (int, float, np.number)) or not 0.0 <= float(v) <= 1.0}
            if bad:
                raise HistoryError("new dataset", f"similarities {dict(list(bad.items())[:3])} are outside [0, 1]",
                                   "give similarities in [0, 1] (1 = the same dataset), as the history's matrix is")
        row = pd.DataFrame([features], index=[dataset]).reindex(columns=known.columns)
        for col in known.columns:  # same dtypes as the history: categories keep their codes
            if isinstance(known[col].dtype, pd.CategoricalDtype):
                row[col] = pd.Categorical(row[col], categories=known[col].cat.categories)
            else:
                row[col] = pd.to_numeric(row[col], errors="coerce").astype(float)
        df = pd.concat([known, row])
        sim = self.similarity
        if similarity is not None and sim is not None:
            row = pd.Series(similarity).reindex(sim.index)
            if row.isna().any():
                raise HistoryError("new dataset", f"similarity to {list(row.index[row.isna()])[:5]} is missing",
                                   "give its similarity to every dataset of the history")
            sim = sim.copy()
            sim.loc[dataset] = row
            sim[dataset] = pd.concat([row, pd.Series({dataset: 1.0})])
        table = self.probe
        if probe is not None:
            values = pd.Series(probe, dtype=float).reindex(self.models)
            if values.isna().any() or not np.isfinite(values.to_numpy()).all():
                missing = list(values.index[~np.isfinite(values)])[:5]
                raise HistoryError("new dataset: probe", f"no finite probe for models {missing}",
                                   "probe every candidate model of the history")
            table = pd.DataFrame(index=pd.Index(self.models, name="model")) if table is None else table.copy()
            table[dataset] = values
        return replace(self, dataset_features=df, similarity=sim, probe=table)


def _drop_failed_runs(runs: pd.DataFrame, label: str, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs whose label is missing or not finite (failed runs, as real records hold them) are dropped — as
    TransferGraph's own trainer does (``dropna(subset=['eval_accuracy'])``) — counted and named in a warning;
    a model or dataset left with no run at all is a :class:`HistoryError`."""
    import warnings

    bad = ~np.isfinite(runs[label].to_numpy(dtype=float))
    dropped = runs.loc[bad, ["model", "dataset"]].assign(row=np.flatnonzero(bad)).reset_index(drop=True)
    if not bad.any():
        return runs, dropped
    kept = runs.loc[~bad]
    for key in ("model", "dataset"):
        lost = sorted(set(runs[key]) - set(kept[key]))
        if lost:
            raise HistoryError(f"{source}: runs", f"{key}s {lost[:5]} have no run with a finite {label!r} (all "
                               f"{int(runs[key].isin(lost).sum())} of their runs are empty, NaN or infinite)",
                               f"drop the {key}s from the tables, or rerun their failed runs")
    names = ", ".join(f"{m} on {d}" for m, d in zip(dropped["model"][:5], dropped["dataset"][:5]))
    warnings.warn(f"{source}: {int(bad.sum())} of {len(runs)} runs have no finite {label!r} (failed runs) and are "
                  f"dropped: {names}{', ...' if bad.sum() > 5 else ''}", stacklevel=3)
    return kept, dropped


def _feature_table(table: pd.DataFrame | None, key: str, ids: list[str], source: str) -> pd.DataFrame:
    if table is None:
        return pd.DataFrame(index=pd.Index(ids, name=key))
    table = table.copy()
    if key not in table.columns:
        raise HistoryError(f"{source}: {key}_features", f"column {key!r} is missing", f"add a {key!r} id column")
    table[key] = table[key].astype(str)
    if table[key].duplicated().any():
        dup = table.loc[table[key].duplicated(), key].iloc[0]
        raise HistoryError(f"{source}: {key}_features", f"{key} {dup!r} has two rows", "keep one row per id")
    table = table.set_index(key)
    unknown = [i for i in ids if i not in table.index]
    if unknown:
        raise HistoryError(f"{source}: {key}_features", f"{key}s {unknown[:5]} have runs but no features row",
                           f"add a row for every {key} of the runs table")
    for col in table.columns:
        if col == "pretrain_dataset":
            continue
        if table[col].dtype == object or pd.api.types.is_string_dtype(table[col]):
            numeric = pd.to_numeric(table[col], errors="coerce")
            if numeric.notna().sum() == table[col].notna().sum():
                table[col] = numeric
            else:
                table[col] = table[col].astype("category")
        vals = table[col]
        if pd.api.types.is_numeric_dtype(vals) and np.isinf(vals.to_numpy(dtype=float)).any():
            raise HistoryError(f"{source}: {key}_features", f"column {col!r} has infinite values",
                               "use NaN for unknown")
    return table


def _probe_matrix(table: pd.DataFrame, label: str, models: list[str], source: str) -> pd.DataFrame:
    """The probe table (model, dataset, <label>) as a model × dataset matrix over ``models``."""
    where = f"{source}: probe"
    missing = [c for c in ("model", "dataset", label) if c not in table.columns]
    if missing:
        raise HistoryError(where, f"column {missing[0]!r} is missing", f"name the columns model, dataset, {label}")
    table = table.assign(model=table["model"].astype(str), dataset=table["dataset"].astype(str))
    values = pd.to_numeric(table[label], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(values).all():
        row = table.iloc[int(np.flatnonzero(~np.isfinite(values))[0])]
        raise HistoryError(f"{where} ({row['model']}, {row['dataset']})", f"{label} is {row[label]!r}",
                           "drop probes that were not computed")
    if table.duplicated(["model", "dataset"]).any():
        row = table.loc[table.duplicated(["model", "dataset"])].iloc[0]
        raise HistoryError(where, f"({row['model']}, {row['dataset']}) has two rows", "keep one probe per pair")
    matrix = table.assign(**{label: values}).pivot(index="model", columns="dataset", values=label)
    unknown = sorted(set(matrix.index) - set(models))
    if unknown:
        raise HistoryError(where, f"models {unknown[:5]} have probes but no runs", "probe the history's models only")
    return matrix.reindex(index=models)


def _similarity_matrix(matrix: pd.DataFrame, kind: str, source: str) -> pd.DataFrame:
    where = f"{source}: similarity"
    if kind not in ("similarity", "distance"):
        raise HistoryError(where, f"kind {kind!r}", "declare the matrix as `similarity` or `distance`")
    m = matrix.copy()
    m.index = m.index.astype(str)
    m.columns = m.columns.astype(str)
    if m.shape[0] != m.shape[1] or list(m.index) != list(m.columns):
        raise HistoryError(where, f"the matrix is {m.shape[0]}×{m.shape[1]} or its rows and columns differ",
                           "write a square matrix whose header lists the row ids in the same order")
    x = m.to_numpy(dtype=float)
    if not np.isfinite(x).all():
        raise HistoryError(where, "the matrix has NaN or infinite entries", "fill every pair")
    if not np.allclose(x, x.T, rtol=1e-6, atol=1e-8):
        i, j = np.unravel_index(np.argmax(np.abs(x - x.T)), x.shape)
        raise HistoryError(where, f"the matrix is not symmetric ({m.index[i]}, {m.columns[j]}: {x[i, j]} vs {x[j, i]})",
                           "symmetrise it, e.g. (M + M.T) / 2")
    diagonal, off_mask = np.diag(x), ~np.eye(len(x), dtype=bool)
    if kind == "distance":
        if (x < 0).any():
            i, j = np.unravel_index(np.argmin(x), x.shape)
            raise HistoryError(where, f"a distance is negative ({m.index[i]}, {m.columns[j]}: {x[i, j]})",
                               "write distances (never negative), or declare the matrix `kind: similarity`")
        if len(x) > 1 and (diagonal > np.where(off_mask, x, np.inf).min(axis=1) + 1e-12).any():
            raise HistoryError(where, "a dataset is farther from itself than from another dataset (the diagonal of a "
                               "distance matrix is its row's smallest entry)", "check the matrix, or declare it "
                               "`kind: similarity` if larger means closer")
    elif len(x) > 1 and (diagonal < np.where(off_mask, x, -np.inf).max(axis=1) - 1e-12).any():
        i = int(np.argmax(np.where(off_mask, x, -np.inf).max(axis=1) - diagonal))
        raise HistoryError(where, f"{m.index[i]} is less similar to itself ({diagonal[i]}) than to another dataset: "
                           "the matrix looks like a distance", "declare it `kind: distance` (smaller = closer)")
    if kind == "distance":
        off = x[off_mask]
        scale = np.median(off) if off.size and np.median(off) > 0 else 1.0
        x = np.exp(-x / scale)  # distance -> similarity in (0, 1]; 1 on the diagonal
    else:
        lo, hi = x.min(), x.max()
        x = (x - lo) / (hi - lo) if hi > lo else np.ones_like(x)
    return pd.DataFrame(x, index=m.index, columns=m.columns)


# ---------------------------------------------------------------------------------------------- loaders


def load_history(folder: str | Path) -> History:
    """Load a history folder described by ``history.yaml`` (see the module docstring)."""
    folder = Path(folder)
    spec_path = folder / "history.yaml"
    if not spec_path.is_file():
        raise HistoryError(spec_path, "history.yaml not found",
                           "describe the tables in history.yaml (see mc_bench.select.history)")
    try:
        spec = load_yaml(spec_path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise HistoryError(f"{spec_path}, line {mark.line + 1}" if mark else spec_path,
                           f"not valid YAML ({getattr(err, 'problem', err)})", "fix the YAML syntax") from None
    if not isinstance(spec, dict):
        raise HistoryError(spec_path, "the top level must be a mapping", "write `runs: runs.csv`, `quality: ...`")
    for key, kind in (("quality", dict), ("similarity", dict), ("runs", str), ("model_features", str),
                      ("dataset_features", str), ("probe", str), ("profiles", str), ("label", str)):
        if spec.get(key) is not None and not isinstance(spec[key], kind):
            what = "mapping" if kind is dict else "column name" if key == "label" else "file name"
            raise HistoryError(spec_path, f"`{key}` is {type(spec[key]).__name__} {spec[key]!r}",
                               f"write `{key}` as a {what} (see mc_bench.select.history)")
    sim_spec = spec.get("similarity")
    sim = None
    kind = "similarity"
    if sim_spec:
        sim = read_table(folder / sim_spec["file"])
        sim = sim.set_index(sim.columns[0])
        kind = sim_spec.get("kind", "similarity")
    history = History.from_tables(
        runs=read_table(folder / spec.get("runs", "runs.csv")),
        quality=spec.get("quality") or {},
        label=spec.get("label"),
        model_features=read_table(folder / spec["model_features"]) if spec.get("model_features") else None,
        dataset_features=read_table(folder / spec["dataset_features"]) if spec.get("dataset_features") else None,
        similarity=sim,
        similarity_kind=kind,
        source=str(folder),
        probe=read_table(folder / spec["probe"]) if spec.get("probe") else None,
    )
    return replace(history, profiles=(folder / spec["profiles"]).resolve()) if spec.get("profiles") else history


def _require_columns(table: pd.DataFrame, columns: list[str], path: Path) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise HistoryError(path, f"column {missing[0]!r} is missing (columns: {list(table.columns)[:12]})",
                           "use TransferGraph's unchanged export, which has it")


def _transfergraph_table(path: Path) -> pd.DataFrame:
    table = read_table(path)
    return table.drop(columns=[c for c in table.columns if str(c).startswith("Unnamed:") or c == ""])


def _first_architecture(value):
    """``"['ViTForImageClassification']"`` (image task) or ``"BertForSequenceClassification"`` (text task)."""
    if isinstance(value, str) and value.startswith("["):
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
        return parsed[0] if parsed else np.nan
    return value


def transfergraph_similarity_file(folder: str | Path, backbone: str | None = None) -> Path:
    """The ``corr_domain_similarity_<backbone>.csv`` of a TransferGraph task folder (the first in name order when
    several backbones are present and none is asked for)."""
    folder = Path(folder)
    files = sorted(folder.glob("corr_domain_similarity_*.csv"))
    if backbone is not None:
        files = [f for f in files if backbone in f.name]
    if not files:
        raise HistoryError(folder / "corr_domain_similarity_<backbone>.csv",
                           "no dataset distance matrix" + (f" for backbone {backbone!r}" if backbone else ""),
                           "copy TransferGraph's corr_domain_similarity_*.csv of this task into the folder")
    return files[0]


def transfergraph_targets(folder: str | Path) -> list[str]:
    """The target datasets of TransferGraph's published tables (``published_results/*_correlation.csv`` header,
    without ``average``); empty when the folder has no published results."""
    files = sorted((Path(folder) / "published_results").glob("*_correlation.csv"))
    if not files:
        return []
    header = pd.read_csv(files[0], index_col=0, nrows=0).columns
    return [c for c in header if c != "average"]


def from_transfergraph(folder: str | Path, similarity: str | None = None, peft: str | None = None) -> History:
    """Import a TransferGraph task folder unchanged: image classification (``../shared/external/transfergraph/
    image_classification``) or sequence classification (their ``resources/experiments/sequence_classification``).

    Required: ``records.csv`` with ``model``, ``finetuned_dataset`` and ``eval_accuracy`` (the label), and a
    ``corr_domain_similarity_*.csv`` distance matrix (``similarity`` picks a backbone by name when there are
    several). Optional: ``model_config_dataset.csv`` (model features: whichever of ``input_shape``,
    ``output_shape``, ``#labels`` / ``number_of_labels``, ``accuracy``, ``number_of_parameters``,
    ``memory_consumption``, ``model_type``, ``architectures`` it has; ``dataset`` — with ``labels`` for ad-hoc
    ``hfpics`` sets — names the pretraining dataset) and ``target_dataset_features.csv`` (``size``,
    ``number_of_classes``). Records of parameter-efficient runs (``peft_method``) are left out unless ``peft``
    names the method to keep; repeated runs of a pair are averaged. Datasets with runs but no row in the distance
    matrix are left out with a warning. A missing required column is a :class:`HistoryError` naming the file."""
    import warnings

    folder = Path(folder)
    records_path = folder / "records.csv"
    records = _transfergraph_table(records_path)
    _require_columns(records, ["model", "finetuned_dataset", "eval_accuracy"], records_path)
    if "peft_method" in records.columns:
        method = records["peft_method"].fillna("").astype(str).str.strip()
        records = records[method == (peft or "")]
    runs = records.rename(columns={"finetuned_dataset": "dataset"})[["model", "dataset", "eval_accuracy"]].copy()
    accuracy = pd.to_numeric(runs["eval_accuracy"], errors="coerce")
    if (accuracy > 1).any() and (accuracy <= 1).any():
        row = int(np.flatnonzero(accuracy > 1)[0])
        raise HistoryError(f"{records_path}, row {row + 2}", f"eval_accuracy {accuracy.iloc[row]} among fractions: "
                           "percent and fractions mixed", "write every accuracy as a fraction in [0, 1]")
    runs["seed"] = runs.groupby(["model", "dataset"]).cumcount()  # repeated runs of a pair are averaged

    dist_path = transfergraph_similarity_file(folder, similarity)
    dist = read_table(dist_path)
    dist = dist.set_index(dist.columns[0])
    dist.index = dist.index.astype(str)
    dist = dist[~dist.index.duplicated()]
    dist = dist.loc[:, ~dist.columns.duplicated()]
    missing = sorted(set(runs["dataset"]) - set(dist.index))
    if missing:
        warnings.warn(f"{dist_path.name}: datasets {missing} have runs but no distances; they are left out")
        runs = runs[~runs["dataset"].isin(missing)]

    mf = pd.DataFrame({"model": sorted(runs["model"].unique())})
    config_path = folder / "model_config_dataset.csv"
    if config_path.is_file():
        config = _transfergraph_table(config_path)
        _require_columns(config, ["model"], config_path)
        config = config.drop_duplicates("model").set_index("model")
        columns = {"input_shape": "input_shape", "output_shape": "output_shape", "#labels": "n_labels",
                   "number_of_labels": "n_labels", "accuracy": "pretrain_accuracy",
                   "memory_consumption": "memory_consumption", "model_type": "model_type"}
        for source, name in columns.items():
            if source in config.columns and name not in mf.columns:
                mf[name] = mf["model"].map(config[source])
        if "number_of_parameters" in config.columns:
            mf["log_parameters"] = np.log10(mf["model"].map(config["number_of_parameters"]).astype(float).clip(lower=1))
        if "architectures" in config.columns:
            mf["architecture"] = mf["model"].map(config["architectures"].map(_first_architecture))
        if "dataset" in config.columns:
            # the pretraining dataset, or — for models fine-tuned on ad-hoc Hugging Face picture sets ("hfpics") —
            # its label list, which is how TransferGraph names those datasets
            labels = config["labels"] if "labels" in config.columns else config["dataset"]
            pretrain = pd.Series(np.where(config["dataset"] == "hfpics", labels, config["dataset"]), index=config.index)
            # pretraining datasets absent from the distance matrix get no link
            mf["pretrain_dataset"] = mf["model"].map(pretrain.where(pretrain.isin(set(dist.index))))
    datasets = sorted(runs["dataset"].unique())
    feats = pd.DataFrame({"dataset": datasets})
    features_path = folder / "target_dataset_features.csv"
    if features_path.is_file():
        table = _transfergraph_table(features_path)
        _require_columns(table, ["finetune_dataset"], features_path)
        table = table.drop_duplicates("finetune_dataset").set_index("finetune_dataset")
        if "size" in table.columns:
            feats["log_size"] = np.log10(feats["dataset"].map(table["size"]).astype(float))
        if "number_of_classes" in table.columns:
            feats["log_classes"] = np.log10(feats["dataset"].map(table["number_of_classes"]).astype(float))
    return History.from_tables(runs=runs, quality={"eval_accuracy": "higher"}, model_features=mf,
                               dataset_features=feats, similarity=dist, similarity_kind="distance",
                               source=str(folder))
