"""Dataset folders: validation of every row and image, and loading through `datasets`."""

import json

import numpy as np
import pytest
from PIL import Image

from mc_bench.config import load_manifests
from mc_bench.world.data import dataset_folder, load_hf_dataset, read_split, validate_folder
from mc_bench.errors import ManifestError
from mc_bench.world import folder_digest

from conftest import folder_dataset, make_imagefolder, write_manifests


def _validate(folder):
    m = load_manifests(folder)
    spec = m.datasets["local"]
    return validate_folder(dataset_folder(m, spec), spec, m.world)


def _rewrite_row(meta, index, **changes):
    rows = [json.loads(line) for line in meta.read_text().splitlines()]
    rows[index].update(changes)
    meta.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_valid_folder(local_manifests):
    summary = _validate(local_manifests)
    assert summary["train"].n_images == 20 and summary["eval"].n_images == 16
    images, captions = read_split(local_manifests / "data", "train")
    assert images.shape == (20, 8, 8, 3) and captions[0] == "a red square 0"


def test_missing_image(local_manifests):
    (local_manifests / "data" / "train" / "3.png").unlink()
    with pytest.raises(ManifestError, match=r"train/metadata.jsonl, row 4: image '3.png' is missing.*Fix: add"):
        _validate(local_manifests)


def test_corrupt_image(local_manifests):
    (local_manifests / "data" / "train" / "2.png").write_bytes(b"not a png at all")
    with pytest.raises(ManifestError, match=r"row 3: image 2.png is corrupt or truncated.*Fix: re-export"):
        _validate(local_manifests)


def test_truncated_image(local_manifests):
    path = local_manifests / "data" / "test" / "5.png"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ManifestError, match=r"test/metadata.jsonl, row 6: image 5.png is corrupt or truncated"):
        _validate(local_manifests)


def test_empty_caption(local_manifests):
    _rewrite_row(local_manifests / "data" / "train" / "metadata.jsonl", 0, text="   ")
    with pytest.raises(ManifestError, match=r"row 1: empty caption in column 'text'.*Fix: write a caption"):
        _validate(local_manifests)


def test_path_escaping_the_data_folder(local_manifests):
    _rewrite_row(local_manifests / "data" / "train" / "metadata.jsonl", 1, file_name="../../secret.png")
    with pytest.raises(ManifestError, match=r"row 2: file_name '../../secret.png' escapes the data folder"):
        _validate(local_manifests)


def test_wrong_channel_count(local_manifests):
    Image.new("RGBA", (8, 8)).save(local_manifests / "data" / "train" / "0.png")
    with pytest.raises(ManifestError, match=r"row 1: image 0.png has mode 'RGBA' \(4 channels\), expected 'RGB'.*convert"):
        _validate(local_manifests)


def test_split_with_too_few_images(tmp_path):
    from conftest import folder_dataset, make_imagefolder, write_manifests

    folder = write_manifests(tmp_path / "m", datasets=[folder_dataset()], world={"min_split_images": 16})
    make_imagefolder(folder / "data", n_eval=5)
    with pytest.raises(ManifestError, match=r"test/metadata.jsonl: split 'test' has 5 images, fewer than the minimum 16"):
        _validate(folder)


def test_bad_json_row(local_manifests):
    meta = local_manifests / "data" / "train" / "metadata.jsonl"
    meta.write_text(meta.read_text() + "{broken\n")
    with pytest.raises(ManifestError, match=r"row 21: not valid JSON"):
        _validate(local_manifests)


def test_missing_folder(tmp_path):
    from conftest import folder_dataset, write_manifests

    folder = write_manifests(tmp_path, datasets=[folder_dataset(source="nowhere")])
    with pytest.raises(ManifestError, match=r"entry 'local': dataset folder .*nowhere does not exist"):
        _validate(folder)


def test_validation_writes_nothing(local_manifests):
    (local_manifests / "data" / "train" / "2.png").write_bytes(b"broken")
    before = folder_digest(local_manifests)
    with pytest.raises(ManifestError):
        _validate(local_manifests)
    assert folder_digest(local_manifests) == before


def test_load_hf_dataset_on_local_folder(local_manifests, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    m = load_manifests(local_manifests)
    ds = load_hf_dataset(m, m.datasets["local"])
    assert set(ds) == {"train", "test"}
    assert len(ds["train"]) == 20 and set(ds["train"].column_names) == {"image", "text"}
    assert ds["train"][0]["image"].size == (8, 8)


def test_folder_splits_are_decoded_batch_by_batch(tmp_path, monkeypatch):
    """A folder split is read lazily: loading it decodes no image, a batch decodes that batch (memory stays bounded
    whatever the split's size; benchmarks/stream_memory.py measures it on 30,000 images)."""
    from mc_bench.images import LazyImages
    from mc_bench.world import data

    folder = write_manifests(tmp_path / "m", datasets=[folder_dataset()])
    make_imagefolder(folder / "data", n_train=40)
    manifests = load_manifests(folder)
    opened = []
    decode = data._decode
    monkeypatch.setattr(data, "_decode", lambda path: opened.append(path) or decode(path))
    images, captions = data.load_dataset_split(manifests, "local", "train")
    assert isinstance(images, LazyImages) and len(images) == len(captions) == 40 and opened == []
    batch = data.resize_shorter(images, 4)[0:8]
    assert len(opened) == 8 and all(image.shape == (4, 4, 3) for image in batch)
    assert np.array_equal(images[-1], images[39]) and np.array_equal(images[np.int64(3)], images[3])
    with pytest.raises(IndexError):
        images[40]


def test_a_hub_split_streams_and_a_list_caption_gives_its_first(tmp_path, monkeypatch):
    """A hub dataset is opened with its revision, configuration and data folder (``params.data_dir``: how a
    dataset whose loading script was replaced by the hub's Parquet conversion is read); a caption column of lists
    (flickr30k: five per image) gives the first caption."""
    import datasets
    from PIL import Image as PILImage

    from mc_bench.world import data

    calls = []
    table = datasets.Dataset.from_dict({
        "image": [PILImage.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(3)],
        "caption": [["a red dog", "a dog"], ["a cat", "another"], ["a cow"]]})

    def fake_load_dataset(path, name=None, revision=None, data_dir=None, split=None):
        calls.append((path, name, revision, data_dir, split))
        return table

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    folder = write_manifests(tmp_path / "m", datasets=[{
        "id": "hubby", "source": "hf:someone/flickr", "revision": "0d6d9049", "domain": "photos",
        "license": "x", "caption_column": "caption", "params": {"data_dir": "2m_first_1k"},
        "splits": {"train": "test[:90%]", "eval": "test[90%:]"}}])
    images, captions = data.load_dataset_split(load_manifests(folder), "hubby", "train")
    assert calls == [("someone/flickr", None, "0d6d9049", "2m_first_1k", "test[:90%]")]
    assert captions == ["a red dog", "a cat", "a cow"]
    assert len(images) == 3 and images[1].shape == (8, 8, 3) and images[1][0, 0, 0] == 40
