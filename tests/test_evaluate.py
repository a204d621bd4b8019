"""Evaluation: Fréchet/kernel distances against closed forms and between backends, CLIP score with the tiny CLIP,
the real-feature cache, missing weights, ImageReward around its weights, and a run evaluated twice."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mc_bench import evaluate as ev
from mc_bench.config import EvalSettings, load_manifests
from mc_bench.errors import InputError
from mc_bench.train.finetune import finetune
from mc_bench.train.runs import build_config
from mc_bench.weights import weights_dir

OFFLINE = EvalSettings(metrics=["fid", "kid", "clip_score"], kid_subsets=20)


def exact_gaussian(n, mean, var, seed):
    """n samples whose sample mean and (n-1)-normalised covariance are exactly ``mean`` and ``diag(var)``."""
    z = np.random.default_rng(seed).normal(size=(n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # whiten: sample cov = I
    return z * np.sqrt(var) + mean


def test_frechet_distance_closed_form():
    m1, v1 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 2.0, 0.5, 3.0])
    m2, v2 = np.array([1.0, 1.0, 0.0, 0.0]), np.array([4.0, 1.0, 0.5, 1.0])
    expected = np.sum((m1 - m2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    values = ev.fid_kid(exact_gaussian(400, m1, v1, 0), exact_gaussian(300, m2, v2, 1), kid_subsets=5)
    assert values["fid"][0] == pytest.approx(expected, rel=1e-6)
    assert values["fid_clean"][0] == pytest.approx(expected, rel=1e-6)


def test_a_set_against_itself_is_zero_and_backends_agree():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16))
    same = ev.fid_kid(x, x.copy(), kid_subsets=10)
    assert abs(same["fid"][0]) < 1e-6 and abs(same["fid_clean"][0]) < 1e-6
    y = rng.normal(loc=0.3, scale=1.2, size=(200, 16))
    other = ev.fid_kid(x, y, kid_subsets=10)
    assert other["fid"][0] > 1.0
    # KID is unbiased: two samples of one distribution give ~0 (a set against itself does not: k(x, x) terms)
    twin = ev.fid_kid(x, rng.normal(size=(200, 16)), kid_subsets=10)
    assert abs(twin["kid"][0]) < 0.05 * other["kid"][0] and abs(twin["kid_clean"][0]) < 0.05 * other["kid"][0]
    assert abs(other["fid"][0] - other["fid_clean"][0]) < 1e-3
    # with subsets as large as both sets, every KID subset is the whole set: the two backends must agree
    assert abs(other["kid"][0] - other["kid_clean"][0]) < 1e-3


def test_clip_score_with_tiny_clip_prefers_the_right_captions():
    from mc_bench.world.data import load_dataset_split

    images, captions = load_dataset_split(load_manifests(), "shapes-new", "eval")
    images = np.stack(images[:48])
    right = captions[:48]
    wrong = right[1:] + right[:1]
    loader, name, digest = ev.clip_model_loader("tiny-clip")
    assert name == "tiny-clip" and len(digest) == 64
    assert ev.clip_score(images, right, loader, batch_size=16) > ev.clip_score(images, wrong, loader) + 1.0


def test_real_features_are_cached_per_backbone_and_resize(tmp_path, monkeypatch):
    manifests = load_manifests()
    extractor = ev.make_extractor("tiny-clip")
    first = ev.real_features(manifests, "shapes-new", extractor, "clean", root=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1 and first.shape[1] == extractor.num_features

    def no_extract(*args, **kwargs):
        raise AssertionError("features were recomputed")

    monkeypatch.setattr(ev, "extract", no_extract)
    np.testing.assert_array_equal(ev.real_features(manifests, "shapes-new", extractor, "clean", root=tmp_path), first)
    with pytest.raises(AssertionError, match="recomputed"):  # another resize mode is another cache entry
        ev.real_features(manifests, "shapes-new", extractor, "bilinear", root=tmp_path)


def test_missing_weights_name_the_file_and_the_command(tmp_path):
    with pytest.raises(InputError, match=r"inception-2015-12-05.pt.*mc-bench weights --fetch inception"):
        ev.make_extractor("inception", weights=tmp_path)
    with pytest.raises(InputError, match=r"ImageReward.pt.*--fetch image-reward"):
        ev.load_image_reward(weights=tmp_path)
    with pytest.raises(InputError, match="clip-vit-large-patch14"):
        ev.clip_model_loader("openai-clip", weights=tmp_path)
    with pytest.raises(InputError, match="unknown backbone"):
        ev.make_extractor("resnet")


class FakeReward:
    """Stands in for ImageReward's model: score(prompt, image or [images]) -> float or list."""

    def __init__(self):
        self.calls = []

    def score(self, prompt, images):
        batch = images if isinstance(images, list) else [images]
        self.calls.append((prompt, len(batch)))
        values = [float(np.asarray(im).mean()) + len(prompt) for im in batch]
        return values if isinstance(images, list) else values[0]


def test_image_reward_batching_keeps_order():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(7, 8, 8, 3), dtype=np.uint8)
    captions = ["a", "bb", "a", "a", "bb", "ccc", "a"]
    model = FakeReward()
    scores = ev.image_reward_scores(model, images, captions, batch_size=2)
    expected = [images[i].mean() + len(c) for i, c in enumerate(captions)]
    np.testing.assert_allclose(scores, expected)
    assert model.calls == [("a", 2), ("a", 2), ("bb", 2), ("ccc", 1)]


def _random_image_reward_weights(folder: Path) -> Path:
    """A weights folder holding ImageReward's architecture with random weights and a one-layer text encoder, a small
    BERT vocabulary and the med_config ImageReward reads: everything ``load_image_reward`` touches, no download."""
    import torch
    from ImageReward.ImageReward import ImageReward

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "grey", "square", "red", "circle"]
    (folder / "bert-base-uncased").mkdir(parents=True)
    (folder / "bert-base-uncased" / "vocab.txt").write_text("\n".join(words) + "\n")
    (folder / "ImageReward").mkdir()
    med_config = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.0, "hidden_act": "gelu",
                  "hidden_dropout_prob": 0.0, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 128,
                  "layer_norm_eps": 1e-12, "max_position_embeddings": 64, "model_type": "bert",
                  "num_attention_heads": 12, "num_hidden_layers": 1, "pad_token_id": 0, "type_vocab_size": 2,
                  "vocab_size": len(words) + 2, "encoder_width": 1024, "add_cross_attention": True}
    (folder / "ImageReward" / "med_config.json").write_text(json.dumps(med_config))
    from unittest import mock

    from ImageReward.models.BLIP import blip
    from transformers import BertTokenizer

    torch.manual_seed(0)
    with mock.patch.object(blip.BertTokenizer, "from_pretrained",
                           lambda *a, **k: BertTokenizer(str(folder / "bert-base-uncased" / "vocab.txt"))):
        model = ImageReward(med_config=str(folder / "ImageReward" / "med_config.json"))
    torch.save(model.state_dict(), folder / "ImageReward" / "ImageReward.pt")
    return folder


def test_image_reward_adapter_with_a_random_model(tmp_path):
    """The real adapter (ImageReward's loader, its BLIP, the tokenizer routed to the weights folder) on CPU."""
    import torch

    weights = _random_image_reward_weights(tmp_path / "weights")
    model = ev.load_image_reward(weights=weights)
    saved = torch.load(weights / "ImageReward" / "ImageReward.pt", weights_only=True)
    for name, value in model.state_dict().items():  # the folder's weights, all of them, were loaded
        assert torch.equal(value, saved[name]), name
    images = np.stack([np.full((32, 32, 3), v, dtype=np.uint8) for v in (40, 128, 220)])
    scores = ev.image_reward_scores(model, images, ["a grey square", "a red circle", "a grey square"], batch_size=2)
    assert scores.shape == (3,) and np.isfinite(scores).all()


@pytest.mark.skipif(not (weights_dir() / "ImageReward" / "ImageReward.pt").is_file(),
                    reason="ImageReward-v1.0 weights are not in the weights folder (mc-bench weights --fetch image-reward)")
def test_image_reward_real_scoring():
    model = ev.load_image_reward()
    images = np.full((2, 64, 64, 3), 128, dtype=np.uint8)
    scores = ev.image_reward_scores(model, images, ["a grey square", "a grey square"])
    assert np.isfinite(scores).all()


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    cfg = build_config("zoo-shapes", "shapes-new", run, overrides={
        "train": {"steps": 3, "batch_size": 8}, "generate": {"n_samples": 12, "num_inference_steps": 3}})
    assert finetune(cfg)["status"] == "done"
    return run


def test_run_evaluated_twice_gives_identical_rows(done_run, tmp_path):
    with pytest.warns(UserWarning, match="below the feature dimension"):
        first = ev.evaluate_run(done_run, EvalSettings(kid_subsets=20), weights=tmp_path)
    second = ev.evaluate_run(done_run, EvalSettings(kid_subsets=20), weights=tmp_path)
    pd.testing.assert_frame_equal(first, second)
    assert list(first.columns) == ev.COLUMNS
    rows = first.set_index("metric")
    assert set(rows.index) == {"fid", "fid_clean", "kid", "kid_clean", "clip_score", "image_reward"}
    assert rows.loc["fid", "status"] == "computed" and rows.loc["fid", "n_fake"] == 12
    assert rows.loc["fid", "backbone"] == "tiny-clip" and len(rows.loc["fid", "weights_sha256"]) == 64
    assert (first["sampler"] == "DDIMScheduler").all()  # the sampler that made the samples, with every number
    assert rows.loc["fid", "n_real"] > 12 and "torchmetrics=" in rows.loc["fid", "versions"]
    assert abs(rows.loc["fid", "value"] - rows.loc["fid_clean", "value"]) < 1e-3
    assert rows.loc["image_reward", "status"] == "not computed"
    assert "mc-bench weights --fetch image-reward" in rows.loc["image_reward", "reason"]
    assert np.isnan(rows.loc["image_reward", "value"])
    on_disk = pd.read_csv(done_run / "metrics.csv")
    assert len(on_disk) == 6 and json.loads((done_run / "evaluate.json").read_text())["settings"]["kid_subsets"] == 20


@pytest.mark.filterwarnings("ignore:n_fake")
def test_evaluation_runs_on_the_device_that_fine_tuned(done_run, tmp_path, monkeypatch):
    """The metrics' networks go to the run's device (train.device, resolved as fine-tuning resolves it: CUDA when
    present under auto); features come back to the CPU for the float64 distances."""
    asked, seen = [], {}
    monkeypatch.setattr(ev, "pick_device", lambda setting: asked.append(setting) or torch.device("cpu"))
    real_extract = ev.extract

    def spy(extractor, *args, **kwargs):
        seen["device"] = ev.module_device(extractor)
        return real_extract(extractor, *args, **kwargs)

    monkeypatch.setattr(ev, "extract", spy)
    first = ev.evaluate_run(done_run, EvalSettings(kid_subsets=20, metrics=["fid"]), weights=tmp_path)
    assert asked == ["auto"] and seen["device"] == torch.device("cpu")
    assert json.loads((done_run / "evaluate.json").read_text())["device"] == "cpu"
    second = ev.evaluate_run(done_run, EvalSettings(kid_subsets=20, metrics=["fid"]), weights=tmp_path, device="cpu")
    assert asked == ["auto"]  # an explicit device is used as given
    pd.testing.assert_frame_equal(first, second)


def test_missing_weights_stop_when_not_allowed(done_run, tmp_path):
    with pytest.raises(InputError, match="inception"):
        ev.evaluate_run(done_run, EvalSettings(fid_backbone="inception", metrics=["fid"], allow_missing=False),
                        weights=tmp_path)


def test_unfinished_run_is_refused(tmp_path):
    finetune(build_config("zoo-shapes", "shapes-new", tmp_path / "r", overrides={"train": {"steps": 5}}),
                stop_after=1)
    with pytest.raises(InputError, match="not done"):
        ev.evaluate_run(tmp_path / "r")


def test_quality_table_and_mean_rank():
    rows = []
    for model, fid, clip in (("a", 10.0, 30.0), ("b", 20.0, 35.0), ("c", 30.0, 20.0)):
        rows += [{"model": model, "dataset": "d", "metric": "fid", "value": fid, "status": "computed"},
                 {"model": model, "dataset": "d", "metric": "clip_score", "value": clip, "status": "computed"},
                 {"model": model, "dataset": "d", "metric": "image_reward", "value": None, "status": "not computed"}]
    table, directions = ev.quality_table(pd.DataFrame(rows))
    table = table.set_index("model")
    assert directions == {"clip_score": "higher", "fid": "lower", "mean_rank": "lower"}
    assert table["mean_rank"].to_dict() == {"a": 1.5, "b": 1.5, "c": 3.0}
    with pytest.raises(InputError, match="'image_reward' was not computed"):
        ev.quality_table(pd.DataFrame(rows), label="image_reward")


def test_cli_weights_and_evaluate(done_run, tmp_path, capsys):
    from mc_bench.cli import main

    assert main(["weights", "--dir", str(tmp_path), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["tiny-clip"]["present"] and len(rows["tiny-clip"]["sha256"]) == 16
    assert not rows["inception"]["present"] and not rows["image-reward"]["present"]
    assert main(["weights", "--dir", str(tmp_path), "--fetch", "resnet"]) == 2
    assert "unknown backbone" in capsys.readouterr().err
    assert main(["evaluate", str(done_run), "--weights", str(tmp_path), "--set", "evaluate.metrics=[fid, clip_score]",
                 "--set", "evaluate.kid_subsets=5", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["metric"] for r in rows} == {"fid", "fid_clean", "clip_score"}
    assert main(["evaluate", str(done_run), "--set", "evaluate.resize=lanczos"]) == 2
    assert "evaluate.resize" in capsys.readouterr().err


def test_real_images_of_mixed_sizes_are_centre_cropped_and_sheets_take_them(tmp_path):
    """Hub splits keep their own sizes: the FID's real images are centre squares (like the trained samples), and
    03's contact sheet stacks thumbnails instead of failing on np.stack."""
    from mc_bench.images import LazyImages, centre_square, labelled_rows, thumbnails

    shapes = [(480, 640), (640, 480), (375, 500)]
    images = LazyImages(3, lambda i: np.full(shapes[i] + (3,), 40 * i, np.uint8))
    with pytest.raises(ValueError):
        np.stack(images[:3])  # what 03's last cell did
    sheet = thumbnails(images[:3], 16)
    assert sheet.shape == (3, 16, 16, 3)
    labelled_rows([("real", sheet), ("generated", sheet)])
    wide = np.zeros((4, 10, 3), np.uint8)
    wide[:, 3:7] = 255
    assert centre_square(wide).shape == (4, 4, 3) and (centre_square(wide) == 255).all()


def test_fid_real_images_are_centre_squares(tmp_path, monkeypatch):
    from PIL import Image

    from conftest import folder_dataset, write_manifests

    folder = write_manifests(tmp_path / "m", datasets=[folder_dataset()], world={"min_split_images": 2})
    for split in ("train", "test"):
        (folder / "data" / split).mkdir(parents=True)
        rows = []
        for i in range(3):
            arr = np.zeros((8, 20, 3), np.uint8)
            arr[:, 6:14] = 200  # the centre square is bright, the sides are black
            Image.fromarray(arr).save(folder / "data" / split / f"{i}.png")
            rows.append(json.dumps({"file_name": f"{i}.png", "text": "a bar"}))
        (folder / "data" / split / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    seen = []
    monkeypatch.setattr(ev, "extract", lambda extractor, images, resize: seen.extend(images[:]) or np.zeros((3, 2)))

    class Extractor:
        name, weights_sha256, resolution = "fake", "0" * 64, 8

    ev.real_features(load_manifests(folder), "local", Extractor(), "clean", root=tmp_path / "stats")
    assert all(im.shape == (8, 8, 3) and (im == 200).all() for im in seen) and len(seen) == 3
