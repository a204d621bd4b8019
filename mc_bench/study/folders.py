"""Where an analysis notebook reads and writes: the study folder it analyses, and the folder its tables go to.

A notebook run by ``mc-bench run`` writes into the study itself (``out_dir = study_dir``). A person who opens a
notebook on a committed study (``results/cpu-paper``) and presses "Run all" gets its tables in a scratch folder,
``results/scratch/<study>/`` (ignored by git), so the committed results stay as they are; a later notebook reads a
table from the scratch folder when an earlier one regenerated it there, and from the study otherwise.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..paths import resolve, scratch_dir_for


def analysis_folders(study_dir: str | Path, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """The study folder (must hold ``study.json``) and the output folder (``out_dir``, or the study's scratch
    folder when None), both resolved with :func:`mc_bench.paths.resolve`; the output folder is created."""
    study = resolve(study_dir)
    if not (study / "study.json").is_file():
        raise InputError(study, "not a study folder (no study.json)",
                         "pass study_dir='results/cpu-paper' (committed) or a folder written by "
                         "`mc-bench run --profile <profile>`")
    out = resolve(out_dir) if out_dir else scratch_dir_for(study)
    out.mkdir(parents=True, exist_ok=True)
    return study, out


def study_file(relative: str | Path, study: Path, out: Path) -> Path:
    """A study table as a notebook reads it: ``out/relative`` when an earlier notebook regenerated it there, else
    ``study/relative`` (which may not exist: the caller says what is missing)."""
    regenerated = Path(out) / relative
    return regenerated if regenerated.exists() else Path(study) / relative
