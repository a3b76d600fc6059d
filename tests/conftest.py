"""Shared fixtures: a tiny synthetic image task that a small net learns in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TQDM_DISABLE", "1")


def make_images(n: int, classes: int = 4, size: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class lights a different quadrant, plus noise: learnable, but not in one step."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.rand(n, 1, size, size, generator=g) * 0.8
    h = size // 2
    for c in range(classes):
        r, col = divmod(c % 4, 2)
        x[y == c, :, r * h : (r + 1) * h, col * h : (col + 1) * h] += 0.7
    return (x.clamp(0, 1) * 255).to(torch.uint8), y


@pytest.fixture
def tensor_file(tmp_path: Path) -> Path:
    """A data.source=tensors file: 256 train and 128 test images of 4 classes."""
    x_tr, y_tr = make_images(256, seed=0)
    x_te, y_te = make_images(128, seed=1)
    path = tmp_path / "tiny.pt"
    torch.save({"train_images": x_tr, "train_labels": y_tr, "test_images": x_te, "test_labels": y_te}, path)
    return path


def tiny_overrides(tensor_file: Path, out: Path) -> list[str]:
    """A complete `distill kd` run on the tiny task in a few seconds."""
    return [
        "data.source=tensors",
        f"data.path={tensor_file}",
        f"run.output_dir={out}",
        "run.run_name=tiny",
        "teachers.0.model.args.channels=[8,16,16]",
        "teachers.0.train.epochs=2",
        "teachers.0.train.batch_size=32",
        "student.args.channels=[4,8,8]",
        "train.epochs=2",
        "train.batch_size=32",
        "train.log_every=2",
        "train.save_every=4",
        "train.progress=false",
        "teachers.0.train.progress=false",
    ]
