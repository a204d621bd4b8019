"""The kit's errors: each one names the file (and row) at fault and the fix."""

from __future__ import annotations


class McBenchError(Exception):
    """Base class of every error the kit raises on bad input."""


class InputError(McBenchError, ValueError):
    """Bad user input, reported as ``<where>: <problem>. Fix: <fix>``.

    ``where`` is a file path, optionally followed by a row or entry (``datasets.yaml, entry 'digits-low'``).
    """

    def __init__(self, where: str, problem: str, fix: str):
        self.where = str(where)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.where}: {problem}. Fix: {fix}")


class ManifestError(InputError):
    """A manifest (YAML) or a dataset folder it points to is invalid."""


class HistoryError(InputError):
    """A fine-tuning history (runs, features, similarity tables) is invalid."""
