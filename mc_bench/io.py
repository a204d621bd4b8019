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


def read_table(path: str | Path, error):
    """A CSV or Parquet table, or one ``error(where, problem, fix)`` naming what is wrong with the file: missing,
    empty, not UTF-8 (UTF-16 is named), a spreadsheet or archive renamed ``.csv``, separated by ``;`` or tabs
    instead of commas, a row with more fields than the header, a Parquet file that is not one."""
    import io as _io

    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise error(path, "table not found", "check the file name (and the folder it is read from)")
    data = path.read_bytes()
    if path.suffix == ".parquet":
        try:
            return pd.read_parquet(_io.BytesIO(data))
        except Exception as err:  # pyarrow's ArrowInvalid and friends
            raise error(path, f"not a readable Parquet file ({type(err).__name__})",
                        "rewrite it with DataFrame.to_parquet, or give a CSV") from None
    if not data.strip():
        raise error(path, "the file is empty", "write the header and one row per record")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise error(path, "the file is UTF-16 text", "save it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)")
    if data[:4] == b"PK\x03\x04":
        raise error(path, "the file is a zip archive (an .xlsx spreadsheet renamed?), not CSV text",
                    "export the sheet as CSV (comma-separated, UTF-8)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise error(path, f"not UTF-8 text (byte {err.start})", "save the table as UTF-8 CSV") from None
    header = text.splitlines()[0]
    for sep, name in ((";", "semicolons"), ("\t", "tabs")):
        if sep in header and "," not in header:
            raise error(path, f"the columns are separated by {name}, not commas", "save it comma-separated")
    try:
        return pd.read_csv(_io.StringIO(text))
    except pd.errors.ParserError as err:
        raise error(path, f"the rows do not match the header ({err})".replace("\n", " "),
                    "give every row as many fields as the header (quote fields that contain commas)") from None
