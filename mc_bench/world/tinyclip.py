"""The offline world's image–text backbone: a CLIP-format tokenizer and a tiny CLIP trained on the world.

Everything is saved in the formats real checkpoints use (``CLIPTokenizer`` vocab.json + merges.txt,
``CLIPModel.save_pretrained`` with safetensors, ``CLIPImageProcessor``), so code that loads
``openai/clip-vit-base-patch32`` loads this folder the same way (``CLIPModel.from_pretrained(folder)``).

The tokenizer is byte-level BPE in CLIP's layout: the 256 byte symbols, the same with the end-of-word mark
``</w>``, then one merge chain per word of the world's captions (``g i`` → ``gi``, ``gi r`` → ``gir``, …), so
every caption word is one token and any other text still tokenizes, byte by byte.
"""

from __future__ import annotations

import json
import regex  # CLIP's own pre-tokenizer pattern needs \p{L}
from pathlib import Path

import numpy as np
import torch

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 32


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's (GPT-2's) reversible byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def caption_words(captions) -> list[str]:
    """The words CLIP's pre-tokenizer sees in ``captions`` (lower-cased), sorted."""
    pattern = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+", regex.IGNORECASE)
    words = set()
    for caption in captions:
        words.update(pattern.findall(" ".join(caption.lower().split())))
    return sorted(words)


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair-encoding merges that turn every word into one symbol: repeatedly merge the most frequent
    adjacent pair (ties broken alphabetically, so the result is deterministic — the ``tokenizers`` trainer's
    tie-breaking is not). Words end with ``</w>`` as in CLIP."""
    from collections import Counter

    split = [list(w[:-1]) + [w[-1] + "</w>"] for w in words if w]
    merges = []
    while True:
        pairs = Counter(p for sym in split for p in zip(sym, sym[1:]))
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for i, sym in enumerate(split):
            out, j = [], 0
            while j < len(sym):
                if j + 1 < len(sym) and (sym[j], sym[j + 1]) == best:
                    out.append(sym[j] + sym[j + 1])
                    j += 2
                else:
                    out.append(sym[j])
                    j += 1
            split[i] = out


def build_tokenizer(captions, folder: str | Path):
    """Write a CLIP tokenizer whose vocabulary holds every word of ``captions`` as one token; return it.

    The merges are learned by BPE on the caption words (so that applying them in rank order, as CLIP's tokenizer
    does, rebuilds each word), and laid out as CLIP lays out its vocabulary."""
    from transformers import CLIPTokenizer

    byte_chars = list(_bytes_to_unicode().values())
    merges = learn_merges(caption_words(captions))
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    seen = set(vocab)
    for a, b in merges:
        if a + b not in seen:
            vocab.append(a + b)
            seen.add(a + b)
    vocab += [BOS, EOS]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    tokenizer = CLIPTokenizer(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"),
                              model_max_length=MAX_LENGTH, pad_token=EOS)
    tokenizer.save_pretrained(folder)
    return tokenizer


def load_clip(folder: str | Path):
    """``(CLIPModel, CLIPProcessor)`` from a local folder, offline. Pass ``functools.partial(load_clip, folder)``
    as ``model_name_or_path`` to torchmetrics' ``CLIPScore``, which accepts such a callable."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(folder, local_files_only=True, use_safetensors=True).eval()
    return model, CLIPProcessor.from_pretrained(folder, local_files_only=True, use_fast=False)


def tiny_clip_config(vocab_size: int, resolution: int = 16, width: int = 96, layers: int = 3, heads: int = 4,
                     patch: int = 4, projection_dim: int = 64):
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width,
                          num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=MAX_LENGTH,
                          bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    vision = CLIPVisionConfig(image_size=resolution, patch_size=patch, hidden_size=width,
                              intermediate_size=2 * width, num_hidden_layers=layers, num_attention_heads=heads)
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=projection_dim)


def image_processor(resolution: int = 16):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": resolution}, crop_size={"height": resolution, "width": resolution},
                              do_resize=True, do_center_crop=True, resample=3)


def contrastive_loss(logits: torch.Tensor, caption_ids: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where every pair with the same caption is a positive (captions repeat in a batch)."""
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    target = same / same.sum(dim=1, keepdim=True)
    loss_i = -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()
    loss_t = -(target * logits.t().log_softmax(dim=1)).sum(dim=1).mean()
    return (loss_i + loss_t) / 2


def pixel_values(images: np.ndarray, processor) -> torch.Tensor:
    """uint8 (n, h, w, 3) -> normalised float tensor (n, 3, h, w), as the image processor does at world size."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
    return (x - mean) / std


def train_tiny_clip(images: np.ndarray, captions: list[str], folder: str | Path, steps: int = 1500,
                    batch_size: int = 256, lr: float = 2e-3, seed: int = 0, progress: bool = True):
    """Train a tiny CLIP contrastively on (images, captions) and save model, tokenizer and processor to folder."""
    from tqdm.auto import tqdm
    from transformers import CLIPModel

    torch.manual_seed(seed)
    folder = Path(folder)
    tokenizer = build_tokenizer(captions, folder)
    processor = image_processor(images.shape[1])
    model = CLIPModel(tiny_clip_config(len(tokenizer), resolution=images.shape[1]))
    distinct = sorted(set(captions))
    index = {c: i for i, c in enumerate(distinct)}
    cap_ids = torch.tensor([index[c] for c in captions])
    tok = tokenizer(distinct, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt")
    pixels = pixel_values(images, processor)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for _ in tqdm(range(steps), disable=not progress, desc="tiny CLIP"):
        idx = torch.randint(0, len(images), (batch_size,), generator=gen)
        x = pixels[idx]  # no flips: glyphs and digits are not mirror-symmetric
        ids = cap_ids[idx]
        out = model(input_ids=tok.input_ids[ids], attention_mask=tok.attention_mask[ids], pixel_values=x)
        loss = contrastive_loss(out.logits_per_image, ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return model, tokenizer, losses


@torch.no_grad()
def retrieval_accuracy(model, tokenizer, processor, images: np.ndarray, captions: list[str]) -> float:
    """Zero-shot caption retrieval: share of images whose best-matching caption, among the distinct captions
    given, is their own."""
    distinct = sorted(set(captions))
    tok = tokenizer(distinct, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    text = torch.nn.functional.normalize(model.get_text_features(**tok), dim=-1)
    img = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixel_values(images, processor)), dim=-1)
    pred = (img @ text.t()).argmax(dim=1).numpy()
    truth = np.array([distinct.index(c) for c in captions])
    return float((pred == truth).mean())
