"""The offline world's CLIP: tokenizer, training, saving in CLIP's formats, and use through torchmetrics."""

import filecmp
from functools import partial

import numpy as np
import pytest
import torch

from mc_bench.world.tinyclip import build_tokenizer, learn_merges, load_clip, retrieval_accuracy, train_tiny_clip

CAPTIONS = ["a blue silhouette of a giraffe on a yellow background",
            "the letter Q in a bold serif font, black on a white background",
            "a patch of gravel texture", "a red star on a blue background"]


def test_every_caption_word_is_one_token(tmp_path):
    tok = build_tokenizer(CAPTIONS, tmp_path)
    tokens = tok.convert_ids_to_tokens(tok(CAPTIONS[0]).input_ids)
    assert tokens == ["<|startoftext|>", "a</w>", "blue</w>", "silhouette</w>", "of</w>", "a</w>", "giraffe</w>",
                      "on</w>", "a</w>", "yellow</w>", "background</w>", "<|endoftext|>"]
    unseen = tok.convert_ids_to_tokens(tok("zebra!").input_ids)[1:-1]
    assert "".join(unseen).replace("</w>", "") == "zebra!"  # byte-level fallback, nothing unknown


def test_tokenizer_is_deterministic(tmp_path):
    build_tokenizer(CAPTIONS, tmp_path / "a")
    build_tokenizer(CAPTIONS, tmp_path / "b")
    for name in ("vocab.json", "merges.txt"):
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False)


def test_learn_merges_ties_are_alphabetical():
    assert learn_merges(["ab", "cd"]) == [("a", "b</w>"), ("c", "d</w>")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(32, 16, 16, 3), dtype=np.uint8)
    captions = [CAPTIONS[i % 4] for i in range(32)]
    model, tok, losses = train_tiny_clip(images, captions, folder, steps=3, batch_size=8, progress=False)
    return folder, images, captions, losses


def test_training_saves_clip_formats(tiny):
    folder, images, captions, losses = tiny
    assert all(np.isfinite(losses))
    for name in ("config.json", "model.safetensors", "vocab.json", "merges.txt", "preprocessor_config.json"):
        assert (folder / name).is_file(), name
    model, processor = load_clip(folder)
    acc = retrieval_accuracy(model, processor.tokenizer, processor.image_processor, images, captions)
    assert 0.0 <= acc <= 1.0


def test_torchmetrics_clip_score_accepts_the_local_model(tiny):
    from torchmetrics.multimodal.clip_score import CLIPScore

    folder, images, captions, _ = tiny
    metric = CLIPScore(model_name_or_path=partial(load_clip, folder))
    score = metric(torch.from_numpy(images[:4]).permute(0, 3, 1, 2), captions[:4])
    assert torch.isfinite(score)
