"""The environment: the lock pins every installed distribution, and every package the kit uses imports — ImageReward
included, whose setuptools requirement once broke silently because its only test skipped without weights."""

import re
import subprocess
import sys
from importlib.metadata import distributions
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"
IMPORTS = ("torch", "torchvision", "transformers", "diffusers", "peft", "accelerate", "safetensors", "torchmetrics",
           "cleanfid", "ImageReward", "clip", "pkg_resources", "datasets", "pandas", "pyarrow", "seaborn", "matplotlib",
           "networkx", "gensim", "sklearn", "skimage", "lightgbm", "dask", "distributed", "dask_jobqueue", "pydantic",
           "yaml", "tqdm", "jupyterlab", "ipykernel", "papermill", "nbformat", "nbconvert", "nbmake", "pytest",
           "threadpoolctl", "scipy", "PIL", "regex")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_lock_pins_every_installed_distribution():
    locked = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            locked[_normal(name)] = version
    installed = {_normal(d.metadata["Name"]): d.version for d in distributions()
                 if _normal(d.metadata["Name"]) != "mc-bench"}
    assert {"pip", "setuptools"} <= set(locked)
    assert installed == locked, {k: (installed.get(k), locked.get(k)) for k in set(installed) ^ set(locked) |
                                 {k for k in installed if installed[k] != locked.get(k)}}


def test_every_package_the_kit_uses_imports():
    code = "import warnings; warnings.simplefilter('ignore')\n" + "\n".join(f"import {name}" for name in IMPORTS)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
