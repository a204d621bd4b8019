"""The offline world: image–caption datasets built from pip-installable sources (:mod:`.generators`), dataset
folders and their validation and reading (:mod:`.data`), the tiny CLIP (:mod:`.tinyclip`) and the zoo of tiny T2I
models (:mod:`.zoo`). Importing this package does not import torch (``tinyclip`` and ``zoo`` do)."""

from .data import (dataset_folder, load_dataset_split, read_image_folder, read_split, read_world_split,
                   resize_shorter, validate_folder)
from .generators import GENERATORS, WORLD_VERSION, build_dataset, dataset_seed, folder_digest, generate, world_folder

__all__ = ["GENERATORS", "WORLD_VERSION", "build_dataset", "dataset_folder", "dataset_seed", "folder_digest",
           "generate", "load_dataset_split", "read_image_folder", "read_split", "read_world_split", "resize_shorter",
           "validate_folder", "world_folder"]
