"""Training images decoded and resized once: a cache in front of a split's images.

A fine-tune visits each image many times (1,000 steps of batch 8 on a 2,000-image split: four epochs); decoding a
JPEG and resizing it to 512 px every time keeps the GPU waiting. :class:`ResizedImages` decodes and resizes an
image on its first use and keeps the result (and the image's original size, which conditions SDXL), up to a memory
budget; past the budget it decodes again, so memory stays bounded whatever the split's size. :meth:`prefetch`
decodes the next batch's images on a background thread while the current batch trains. The values are the same
either way: the cache and the thread change the time, never the numbers (no random draw happens there).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..images import LazyImages
from ..world.data import resize_one

CACHE_MB = 8192  # default budget of resized training images, in MiB


class ResizedImages(Sequence):
    """``images[i]`` resized so that its shorter side is ``resolution`` (:func:`mc_bench.world.data.resize_one`),
    decoded once and cached up to ``max_mb``; :meth:`original_size` is the image's (height, width) before."""

    def __init__(self, images: Sequence[np.ndarray], resolution: int, max_mb: float = CACHE_MB):
        self._images, self._resolution, self._budget = images, int(resolution), max_mb * 2 ** 20
        self._cache: dict[int, np.ndarray] = {}
        self._sizes: dict[int, tuple[int, int]] = {}
        self._bytes = 0
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.RLock()
        self._pending = None

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> np.ndarray:
        if index in self._cache:
            return self._cache[index]
        with self._lock:  # a prefetching thread may be decoding it: wait for it rather than decode it twice
            if index in self._cache:
                return self._cache[index]
            return self._load(index)

    def _load(self, index: int) -> np.ndarray:
        raw = self._images[index]
        self._sizes[index] = tuple(raw.shape[:2])
        image = resize_one(raw, self._resolution)
        if self._bytes + image.nbytes <= self._budget:
            self._cache[index] = image
            self._bytes += image.nbytes
        return image

    def prefetch(self, indices: list[int]) -> None:
        """Decode and resize ``indices`` on a background thread (no random draws: the numbers do not change)."""
        todo = [i for i in indices if i not in self._cache]
        if not todo or not isinstance(self._images, LazyImages):  # a list is decoded already
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending = self._pool.submit(lambda: [self[i] for i in todo])

    def original_size(self, index: int) -> tuple[int, int]:
        if index not in self._sizes:
            self[index]
        return self._sizes[index]

    @property
    def cached_mb(self) -> float:
        return self._bytes / 2 ** 20
