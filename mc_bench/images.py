"""Contact sheets: grids of small images, labelled rows of them, saved as PNG (the world's datasets, the zoo's
samples, a study's real images beside each model's samples). A leaf module (numpy and PIL only)."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


class LazyImages(Sequence):
    """The images of a split, decoded only when indexed: a dataset of any size stays on disk (a folder's files,
    the hub's Arrow cache) and only the batch being used is in memory. ``images[i]`` is one ``uint8`` array,
    ``images[a:b]`` a list of them; :meth:`map` chains a per-image transform (e.g. a resize), applied on access."""

    def __init__(self, n: int, load: Callable[[int], np.ndarray]):
        self._n, self._load = int(n), load

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._load(i) for i in range(*index.indices(self._n))]
        index = operator.index(index)
        if index < 0:
            index += self._n
        if not 0 <= index < self._n:
            raise IndexError(f"image {index} of {self._n}")
        return self._load(index)

    def map(self, transform: Callable[[np.ndarray], np.ndarray]) -> "LazyImages":
        load = self._load
        return LazyImages(self._n, lambda i: transform(load(i)))

    def __repr__(self) -> str:
        return f"LazyImages({self._n} images, decoded on access)"


def rgb8(image: Image.Image, max_side: int | None = None) -> np.ndarray:
    """A PIL image as an RGB ``uint8`` array: 16-bit and 32-bit grey images scaled to 8 bits (``convert("RGB")``
    clips them, so a 16-bit photo turns near-white), and, with ``max_side``, shrunk so that its longer side is at
    most that many pixels (JPEGs are decoded at a reduced size directly: a folder of large photos never holds them
    at full size)."""
    if max_side is not None:
        image.draft("RGB", (max_side, max_side))
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        grey = np.asarray(image, dtype=np.float64)
        peak = 1.0 if image.mode == "F" else (65535.0 if grey.max() > 255 or image.mode.startswith("I;16") else 255.0)
        image = Image.fromarray(np.clip(grey / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    image = image.convert("RGB")
    if max_side is not None and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return np.asarray(image)


def centre_square(image: np.ndarray) -> np.ndarray:
    """The largest centred square of an image (the crop the samples were trained on: ``train.center_crop``)."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top:top + side, left:left + side]


def thumbnails(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """``images`` of any sizes and modes as one ``(n, size, size, 3)`` uint8 array: centre square, then a
    ``size``-px thumbnail — what a contact sheet stacks (hub splits keep their own image sizes)."""
    out = []
    for image in images:
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        square = Image.fromarray(centre_square(image[..., :3]).astype(np.uint8))
        out.append(np.asarray(square.resize((size, size), Image.Resampling.BILINEAR)))
    return np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)


def contact_sheet(images: np.ndarray, cols: int = 8, scale: int = 4, pad: int = 2) -> Image.Image:
    """A grid of ``images`` (n, h, w, 3 uint8), each enlarged ``scale``× with nearest-neighbour sampling."""
    n, h, w = images.shape[:3]
    rows = max(1, -(-n // cols))
    cell_h, cell_w = h * scale + pad, w * scale + pad
    sheet = Image.new("RGB", (cols * cell_w + pad, rows * cell_h + pad), (255, 255, 255))
    for i, img in enumerate(images):
        tile = Image.fromarray(img).resize((w * scale, h * scale), Image.Resampling.NEAREST)
        sheet.paste(tile, (pad + (i % cols) * cell_w, pad + (i // cols) * cell_h))
    return sheet


def labelled_rows(rows: list[tuple[str, np.ndarray]], scale: int = 3, label_width: int = 170) -> Image.Image:
    """One labelled row of images per entry: an overview of many datasets in one picture."""
    sheets = [(label, contact_sheet(imgs, cols=len(imgs), scale=scale)) for label, imgs in rows]
    width = label_width + max(s.width for _, s in sheets)
    out = Image.new("RGB", (width, sum(s.height for _, s in sheets)), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    y = 0
    for label, sheet in sheets:
        draw.text((4, y + sheet.height // 2 - 5), label, fill=(0, 0, 0))
        out.paste(sheet, (label_width, y))
        y += sheet.height
    return out


def save_png(image: Image.Image, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=False)
    return path
