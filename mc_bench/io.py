"""Writing files so that a killed process never leaves half of one, and recording what made them.

A leaf module: it imports nothing of the kit.
"""

from __future__ import annotations

import json
import platform
import sys
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; when the block ends without an error, rename it onto ``path``
    (one ``rename``: readers see the old file or the new one, never a part). On an error the temporary file is
    removed and ``path`` is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: dict) -> None:
    """Write JSON atomically (see :func:`atomic_path`)."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def library_versions() -> dict:
    """Python, the platform and the versions of the libraries that make the kit's numbers."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("mc-bench", "torch", "diffusers", "transformers", "peft", "accelerate", "numpy", "torchmetrics",
                 "clean-fid", "image-reward", "lightgbm", "scikit-learn", "pandas"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
