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


MAX_YAML_NODES = 1_000_000  # a manifest has thousands; an "alias bomb" expands a few lines into billions


def load_yaml(text: str):
    """``yaml.safe_load`` that also refuses a key repeated in one mapping (YAML keeps the last in silence) and a
    document whose aliases expand to more than ``MAX_YAML_NODES`` nodes (counted on the composed graph, where an
    alias is a shared node, before anything is expanded). Problems are ``yaml.YAMLError`` with the line, as
    PyYAML's own."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    sizes: dict[int, int] = {}

    def expanded(node) -> int:  # nodes once every alias is expanded, each shared node counted once per use
        if id(node) not in sizes:
            sizes[id(node)] = 0  # a recursive alias counts as one node
            children = node.value if isinstance(node, yaml.SequenceNode) else (
                [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
            sizes[id(node)] = 1 + sum(expanded(child) for child in children)
        return sizes[id(node)]

    if root is not None and expanded(root) > MAX_YAML_NODES:
        raise yaml.composer.ComposerError(None, None, f"its aliases expand to {expanded(root):,} nodes (a YAML alias "
                                          "bomb)", root.start_mark)
    return yaml.load(text, Loader=StrictLoader)
