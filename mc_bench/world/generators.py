"""The offline world's image–caption datasets, built deterministically from pip-installed sources.

Sources (all shipped inside installed packages, no network):

* ``animals`` — the ``animal-mnist`` 0.4 wheel (read as a zip, see :func:`_animal_mnist_wheel`): 10,000 28×28
  silhouettes of 10 animals (MIT);
* ``digits`` — scikit-learn's handwritten digits (8×8, 1,797 images; BSD);
* ``textures`` and ``photos`` — scikit-image's shipped images (brick, grass, gravel; astronaut, chelsea, ...)
  cut into random patches (BSD / public domain, see scikit-image's ``data/README.txt``);
* ``faces`` — scikit-image's ``lfw_subset`` (100 faces and 100 non-faces, 25×25);
* ``shapes`` — procedural shapes in named colours;
* ``glyphs`` — letters and digits in the DejaVu fonts that matplotlib ships.

Each generator returns ``(images, captions)``: ``uint8`` arrays of shape ``(n, resolution, resolution, 3)`` and
one caption per image that names what is drawn, so that text conditioning matters.
:func:`build_dataset` writes one dataset in the Hugging Face imagefolder layout
(``<split>/metadata.jsonl`` + PNG files); the same spec and resolution always give byte-identical files.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
import shutil
import tempfile
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import ManifestError, McBenchError

WORLD_VERSION = 1  # bump when a generator changes its output

COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 30),
    "orange": (245, 140, 20),
    "purple": (140, 50, 180),
    "pink": (250, 150, 190),
    "cyan": (40, 200, 220),
    "brown": (120, 75, 35),
    "grey": (128, 128, 128),
    "navy": (20, 30, 90),
    "pastel blue": (170, 200, 240),
    "pastel green": (180, 230, 180),
    "pastel yellow": (250, 240, 170),
}

ANIMALS = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEXTURES = ("brick", "grass", "gravel")
PHOTOS = {
    "astronaut": "an astronaut",
    "chelsea": "a cat",
    "coffee": "a cup of coffee",
    "rocket": "a rocket",
    "camera": "a cameraman",
    "coins": "coins",
    "moon": "the surface of the moon",
    "hubble_deep_field": "galaxies in deep space",
    "ihc": "stained tissue under a microscope",
    "retina": "a retina",
    "motorcycle_left": "a motorcycle",
    "page": "a page of text",
}
_PHOTO_FILES = {"hubble_deep_field": "hubble_deep_field.jpg", "retina": "retina.jpg", "rocket": "rocket.jpg"}
FONTS = {
    "sans": ("DejaVuSans.ttf", "a sans-serif font"),
    "sans-bold": ("DejaVuSans-Bold.ttf", "a bold sans-serif font"),
    "sans-oblique": ("DejaVuSans-Oblique.ttf", "an oblique sans-serif font"),
    "serif": ("DejaVuSerif.ttf", "a serif font"),
    "serif-bold": ("DejaVuSerif-Bold.ttf", "a bold serif font"),
    "serif-italic": ("DejaVuSerif-Italic.ttf", "an italic serif font"),
    "mono": ("DejaVuSansMono.ttf", "a monospace font"),
    "mono-bold": ("DejaVuSansMono-Bold.ttf", "a bold monospace font"),
}
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "ring", "hexagon")

SUPERSAMPLE = 4  # procedural images are drawn at 4× and downsampled (antialiasing)


# ------------------------------------------------------------------------------------------- raw sources


ANIMAL_MNIST_WHEEL = "animal_mnist-0.4-py3-none-any.whl"
ANIMAL_MNIST_SHA256 = "aeebf3d9de4552d6fd2d5701424e1a5b9020f8e5115d68df9db252f2f53ce2ce"  # the PyPI file


def _animal_mnist_wheel() -> Path:
    """The animal-mnist wheel: ``$MC_BENCH_ANIMAL_MNIST`` or ``<repo>/.cache/wheels/`` (scripts/setup.sh puts it
    there). It is read as a zip file, not installed: its metadata requires tensorflow, which would break
    ``pip check``."""
    import os

    from ..paths import REPO_ROOT

    path = Path(os.environ.get("MC_BENCH_ANIMAL_MNIST", REPO_ROOT / ".cache" / "wheels" / ANIMAL_MNIST_WHEEL))
    if not path.is_file():
        raise ManifestError(
            path, "the animal-mnist wheel (source of world:animals) is missing",
            "run `bash scripts/setup.sh`, or `pip download --no-deps -d .cache/wheels animal-mnist==0.4`",
        )
    import hashlib

    if hashlib.sha256(path.read_bytes()).hexdigest() != ANIMAL_MNIST_SHA256:  # its data is pickled: trust, verified
        raise ManifestError(path, "the animal-mnist wheel is not the published 0.4 wheel (its SHA-256 differs)",
                            "delete it and run `bash scripts/setup.sh` to download it again")
    return path


@lru_cache(maxsize=1)
def _animal_mnist() -> tuple[np.ndarray, np.ndarray]:
    import zipfile

    prefix = "animal_mnist/data/Animal_MNIST/"
    with zipfile.ZipFile(_animal_mnist_wheel()) as wheel:
        images = pickle.loads(gzip.decompress(wheel.read(prefix + "animal_data_version_3.gz")))
        labels = pickle.loads(gzip.decompress(wheel.read(prefix + "animal_label_version_3.gz")))
    return np.asarray(images, dtype=np.uint8), np.asarray(labels, dtype=np.int64)


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images / 16.0 * 255).round().astype(np.uint8), bunch.target.astype(np.int64)


def _skimage_file(name: str) -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent / _PHOTO_FILES.get(name, f"{name}.png")


@lru_cache(maxsize=32)
def _skimage_rgb(name: str) -> np.ndarray:
    with Image.open(_skimage_file(name)) as im:
        return np.asarray(im.convert("RGB"))


@lru_cache(maxsize=1)
def _lfw() -> np.ndarray:
    import skimage.data

    arr = np.load(Path(skimage.data.__file__).parent / "lfw_subset.npy")
    return (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)  # 200 × 25 × 25: 100 faces, then 100 others


@lru_cache(maxsize=16)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / FONTS[name][0]
    return ImageFont.truetype(str(path), size=size)


# ------------------------------------------------------------------------------------------- helpers


def _resize(gray: np.ndarray, res: int) -> np.ndarray:
    """Resize a float image in [0, 1] to res×res with an area-averaging filter."""
    im = Image.fromarray(gray.astype(np.float32), mode="F")
    return np.asarray(im.resize((res, res), Image.Resampling.BOX), dtype=np.float32)


def _shift(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    out = np.zeros_like(mask)
    h, w = mask.shape
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    out[yd, xd] = mask[ys, xs]
    return out


def _a(word: str) -> str:
    """``word`` with the article "a". Always "a" (also "a orange", "a elephant"): the committed tiny CLIP and zoo
    were trained on these captions, and world version 1 must keep reproducing them. Use "an" when
    WORLD_VERSION is bumped together with a rebuild of world_models/."""
    return f"a {word}"


def _pick(rng: np.random.Generator, choices: list | tuple) -> str:
    return choices[int(rng.integers(len(choices)))]


def _texture_patch(rng: np.random.Generator, name: str, res: int, crop: tuple[int, int] = (48, 128)) -> np.ndarray:
    src = _skimage_rgb(name)
    size = int(rng.integers(crop[0], min(crop[1], *src.shape[:2]) + 1))
    y = int(rng.integers(0, src.shape[0] - size + 1))
    x = int(rng.integers(0, src.shape[1] - size + 1))
    patch = Image.fromarray(src[y:y + size, x:x + size]).resize((res, res), Image.Resampling.BOX)
    arr = np.asarray(patch)
    k = int(rng.integers(4))
    return np.ascontiguousarray(np.rot90(arr, k))


def _colour_layer(rng: np.random.Generator, spec: str | list, res: int, what: str) -> tuple[np.ndarray, str, bool]:
    """A res×res×3 layer, its name, and whether it is a texture, from a colour name, a list of names (one is
    drawn), or ``texture:<name>``."""
    name = _pick(rng, spec) if isinstance(spec, list) else spec
    if name.startswith("texture:"):
        texture = name.split(":", 1)[1]
        return _texture_patch(rng, texture, res).astype(np.float32), texture, True
    if name not in COLOURS:
        raise ValueError(f"unknown {what} colour {name!r}; known: {sorted(COLOURS)} or texture:<name>")
    return np.broadcast_to(np.array(COLOURS[name], np.float32), (res, res, 3)), name, False


def _compose(mask: np.ndarray, fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    m = np.clip(mask, 0, 1)[..., None]
    return np.clip(bg * (1 - m) + fg * m, 0, 255).round().astype(np.uint8)


def _fg_bg(rng, params, res):
    """Foreground and background layers, the foreground's name, the background's, and the caption phrase for the
    background ("on grass", "on a red background")."""
    fg, fg_name, _ = _colour_layer(rng, params.get("fg", "white"), res, "fg")
    bg, bg_name, textured = _colour_layer(rng, params.get("bg", "black"), res, "bg")
    return fg, fg_name, bg, bg_name, f"on {bg_name}" if textured else f"on {_a(bg_name)} background"


def _class_indices(labels: np.ndarray, wanted: list[int], n: int, rng: np.random.Generator) -> np.ndarray:
    pool = np.flatnonzero(np.isin(labels, wanted))
    return rng.choice(pool, size=n, replace=n > len(pool))


# ------------------------------------------------------------------------------------------- generators


def gen_animals(params: dict, n: int, res: int, rng: np.random.Generator):
    images, labels = _animal_mnist()
    classes = params.get("classes", list(ANIMALS))
    unknown = set(classes) - set(ANIMALS)
    if unknown:
        raise ValueError(f"unknown animals {sorted(unknown)}; known: {list(ANIMALS)}")
    idx = _class_indices(labels, [ANIMALS.index(c) for c in classes], n, rng)
    out, caps = [], []
    for i in idx:
        mask = _resize(images[i] / 255.0, res)
        if rng.random() < 0.5:
            mask = mask[:, ::-1]
        mask = _shift(mask, int(rng.integers(-1, 2)), int(rng.integers(-1, 2)))
        fg, fg_name, bg, bg_name, bg_phrase = _fg_bg(rng, params, res)
        out.append(_compose(mask, fg, bg))
        caps.append(f"{_a(fg_name)} silhouette of {_a(ANIMALS[labels[i]])} {bg_phrase}")
    return np.stack(out), caps


def gen_digits(params: dict, n: int, res: int, rng: np.random.Generator):
    images, labels = _digits()
    wanted = params.get("digits", list(range(10)))
    idx = _class_indices(labels, wanted, n, rng)
    out, caps = [], []
    for i in idx:
        src = np.pad(images[i] / 255.0, 1)  # 10×10 with a margin, like MNIST's border
        mask = _resize(np.kron(src, np.ones((8, 8))), res)
        mask = _shift(mask, int(rng.integers(-1, 2)), int(rng.integers(-1, 2)))
        fg, fg_name, bg, bg_name, bg_phrase = _fg_bg(rng, params, res)
        out.append(_compose(mask, fg, bg))
        caps.append(f"{_a(fg_name)} handwritten digit {DIGIT_WORDS[labels[i]]} {bg_phrase}")
    return np.stack(out), caps


def gen_glyphs(params: dict, n: int, res: int, rng: np.random.Generator):
    chars = params.get("chars", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    fonts = params.get("fonts", ["sans"])
    unknown = set(fonts) - set(FONTS)
    if unknown:
        raise ValueError(f"unknown fonts {sorted(unknown)}; known: {sorted(FONTS)}")
    big = res * SUPERSAMPLE
    out, caps = [], []
    for _ in range(n):
        ch, font_name = _pick(rng, chars), _pick(rng, fonts)
        font = _font(font_name, int(big * float(rng.uniform(0.62, 0.8))))
        canvas = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(canvas)
        left, top, right, bottom = draw.textbbox((0, 0), ch, font=font)
        jitter = rng.integers(-big // 16, big // 16 + 1, size=2)
        pos = ((big - (right - left)) / 2 - left + jitter[0], (big - (bottom - top)) / 2 - top + jitter[1])
        draw.text(pos, ch, fill=255, font=font)
        mask = np.asarray(canvas.resize((res, res), Image.Resampling.BOX), np.float32) / 255.0
        fg, fg_name, bg, bg_name, bg_phrase = _fg_bg(rng, params, res)
        out.append(_compose(mask, fg, bg))
        kind = "digit" if ch.isdigit() else ("lowercase letter" if ch.islower() else "letter")
        caps.append(f"the {kind} {ch} in {FONTS[font_name][1]}, {fg_name} {bg_phrase}")
    return np.stack(out), caps


def _shape_mask(shape: str, big: int, size: float, cx: float, cy: float, angle: float) -> np.ndarray:
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    r = size * big / 2

    def poly(k, radius_fn, offset=0.0):
        t = np.arange(k) * 2 * np.pi / k + angle + offset
        rad = np.array([radius_fn(j) for j in range(k)])
        return [(float(cx + rr * np.cos(a)), float(cy + rr * np.sin(a))) for rr, a in zip(rad, t)]

    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        draw.ellipse([cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55], fill=0)
    elif shape == "square":
        draw.polygon(poly(4, lambda j: r * 1.3, np.pi / 4), fill=255)
    elif shape == "diamond":
        draw.polygon(poly(4, lambda j: r * 1.2 if j % 2 else r * 0.8), fill=255)
    elif shape == "triangle":
        draw.polygon(poly(3, lambda j: r * 1.1, -np.pi / 2), fill=255)
    elif shape == "hexagon":
        draw.polygon(poly(6, lambda j: r), fill=255)
    elif shape == "star":
        draw.polygon(poly(10, lambda j: r * 1.15 if j % 2 == 0 else r * 0.45, -np.pi / 2), fill=255)
    elif shape == "cross":
        w = r * 0.38
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=255)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {list(SHAPES)}")
    return np.asarray(canvas, np.float32) / 255.0


def gen_shapes(params: dict, n: int, res: int, rng: np.random.Generator):
    shapes = params.get("shapes", list(SHAPES))
    size_range = params.get("size", [0.45, 0.75])
    big = res * SUPERSAMPLE
    out, caps = [], []
    for _ in range(n):
        shape = _pick(rng, shapes)
        size = float(rng.uniform(*size_range))
        margin = size * big / 2
        cx, cy = rng.uniform(margin, big - margin, size=2) if margin < big / 2 else (big / 2, big / 2)
        angle = float(rng.uniform(-0.3, 0.3)) if params.get("rotate", True) else 0.0
        mask = _shape_mask(shape, big, size, float(cx), float(cy), angle)
        mask = np.asarray(Image.fromarray(mask, mode="F").resize((res, res), Image.Resampling.BOX))
        fg, fg_name, bg, bg_name, bg_phrase = _fg_bg(rng, params, res)
        while fg_name == bg_name and isinstance(params.get("fg"), list):  # keep fg ≠ bg
            fg, fg_name, bg, bg_name, bg_phrase = _fg_bg(rng, params, res)
        out.append(_compose(mask, fg, bg))
        size_word = "small " if size < 0.35 else ("large " if size > 0.8 else "")
        caps.append(f"{_a(size_word + fg_name)} {shape} {bg_phrase}")
    return np.stack(out), caps


def gen_textures(params: dict, n: int, res: int, rng: np.random.Generator):
    textures = params.get("textures", list(TEXTURES))
    crop = tuple(params.get("crop", [48, 128]))
    tint = params.get("tint")
    out, caps = [], []
    for _ in range(n):
        name = _pick(rng, textures)
        patch = _texture_patch(rng, name, res, crop).astype(np.float32)
        caption = f"a patch of {name} texture"
        if tint:
            colour_name = _pick(rng, tint) if isinstance(tint, list) else tint
            gray = patch.mean(axis=2, keepdims=True) / 255.0
            patch = gray * np.array(COLOURS[colour_name], np.float32)
            caption += f" tinted {colour_name}"
        if crop[1] <= 40:
            caption = "a close-up " + caption[2:]
        out.append(np.clip(patch, 0, 255).round().astype(np.uint8))
        caps.append(caption)
    return np.stack(out), caps


def gen_photos(params: dict, n: int, res: int, rng: np.random.Generator):
    names = params.get("images", ["astronaut", "chelsea", "coffee", "rocket"])
    unknown = set(names) - set(PHOTOS)
    if unknown:
        raise ValueError(f"unknown photos {sorted(unknown)}; known: {sorted(PHOTOS)}")
    crop = params.get("crop", [96, 256])
    out, caps = [], []
    for _ in range(n):
        name = _pick(rng, names)
        src = _skimage_rgb(name)
        size = int(rng.integers(crop[0], min(crop[1], *src.shape[:2]) + 1))
        y = int(rng.integers(0, src.shape[0] - size + 1))
        x = int(rng.integers(0, src.shape[1] - size + 1))
        patch = Image.fromarray(src[y:y + size, x:x + size]).resize((res, res), Image.Resampling.BOX)
        arr = np.asarray(patch)
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        out.append(np.ascontiguousarray(arr))
        caps.append(f"a crop of a photo of {PHOTOS[name]}")
    return np.stack(out), caps


def gen_faces(params: dict, n: int, res: int, rng: np.random.Generator):
    faces = _lfw()
    kind = params.get("kind", "faces")
    pool = {"faces": range(0, 100), "others": range(100, 200), "both": range(0, 200)}[kind]
    idx = rng.choice(np.array(pool), size=n, replace=n > len(pool))
    out, caps = [], []
    for i in idx:
        img = faces[i]
        if rng.random() < 0.5:
            img = img[:, ::-1]
        gray = _resize(img / 255.0, res)
        out.append(np.repeat((gray * 255).round().clip(0, 255).astype(np.uint8)[..., None], 3, axis=2))
        caps.append("a grayscale photo of a face" if i < 100 else "a grayscale photo of a street scene")
    return np.stack(out), caps


GENERATORS = {
    "animals": gen_animals,
    "digits": gen_digits,
    "glyphs": gen_glyphs,
    "shapes": gen_shapes,
    "textures": gen_textures,
    "photos": gen_photos,
    "faces": gen_faces,
}


# ------------------------------------------------------------------------------------------- building


def dataset_seed(dataset_id: str) -> int:
    """A stable seed from the dataset id (independent of Python's hash randomisation)."""
    return zlib.crc32(dataset_id.encode())


def generate(spec, resolution: int) -> tuple[np.ndarray, list[str]]:
    """Images and captions of a ``world:`` dataset spec (see :class:`mc_bench.config.DatasetSpec`)."""
    name = spec.source.split(":", 1)[1]
    params = _ReadKeys(spec.params)
    n = int(params.pop("n_images", 400))
    rng = np.random.default_rng(dataset_seed(spec.id))
    try:
        out = GENERATORS[name](params, n, resolution, rng)
    except McBenchError:  # a missing source (e.g. the animal-mnist wheel) says so itself
        raise
    except (ValueError, KeyError) as err:
        raise ManifestError(
            f"datasets.yaml, entry {spec.id!r}, field `params`", f"bad generator parameters ({err})",
            f"see mc_bench/world/generators.py::gen_{name} for the parameters it takes",
        ) from None
    unknown = sorted(set(params) - params.read)
    if unknown:  # a misspelled parameter would otherwise be ignored in silence
        raise ManifestError(f"datasets.yaml, entry {spec.id!r}, field `params`",
                            f"parameters {unknown} are not read by the {name} generator "
                            f"(it read {sorted(params.read)})",
                            f"correct the names; see mc_bench/world/generators.py::gen_{name}")
    return out


class _ReadKeys(dict):
    """A parameter dict that remembers which keys a generator read (``get``, ``[]``, ``pop``, ``in``)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read: set = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)

    def pop(self, key, *default):
        self.read.add(key)
        return super().pop(key, *default)


def _write_split(folder: Path, images: np.ndarray, captions: list[str], caption_column: str) -> None:
    folder.mkdir(parents=True)
    lines = []
    for i, (img, cap) in enumerate(zip(images, captions)):
        name = f"{i:05d}.png"
        Image.fromarray(img, mode="RGB").save(folder / name, format="PNG", optimize=False, compress_level=6)
        lines.append(json.dumps({"file_name": name, caption_column: cap}, sort_keys=True))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def world_folder(root: Path, spec, resolution: int) -> Path:
    return Path(root) / f"world-v{WORLD_VERSION}-r{resolution}" / spec.id


def build_dataset(spec, resolution: int, eval_fraction: float, out: Path, overwrite: bool = False) -> Path:
    """Write a ``world:`` dataset to ``out`` (imagefolder layout). Written to a temporary folder first and moved
    into place at the end, so an interrupted build leaves nothing half-written."""
    out = Path(out)
    info = {"id": spec.id, "source": spec.source, "params": spec.params, "resolution": resolution,
            "eval_fraction": eval_fraction, "world_version": WORLD_VERSION}
    if out.exists() and not overwrite:
        try:
            built = json.loads((out / "world.json").read_text())
        except (OSError, json.JSONDecodeError):
            built = None
        if built is not None and json.dumps(built, sort_keys=True) == json.dumps(info, sort_keys=True, default=str):
            return out  # built from these very parameters
    images, captions = generate(spec, resolution)  # new, or its parameters changed since it was built
    order = np.random.default_rng(dataset_seed(spec.id) + 1).permutation(len(images))
    n_eval = max(1, int(round(len(images) * eval_fraction)))
    splits = {spec.splits.eval: order[:n_eval], spec.splits.train: order[n_eval:]}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.id}-", dir=out.parent))
    try:
        for split, idx in splits.items():
            idx = np.sort(idx)
            _write_split(tmp / split, images[idx], [captions[i] for i in idx], spec.caption_column)
        (tmp / "world.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def folder_digest(folder: Path) -> str:
    """SHA-256 over every file (relative path + bytes) of a folder: equal digests mean byte-identical builds."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()
