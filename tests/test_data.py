"""Image loaders: a user's folder, a tensor file, and the bundled Fashion-MNIST."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from distill.data import ImageData, load_images
from distill.data.images import FASHION_MNIST_DIR
from distill.errors import DistillError


def test_image_folder(tmp_path):
    for split, n in [("train", 3), ("test", 2)]:
        for cls, value in [("cat", 50), ("dog", 200)]:
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((6, 6), value, np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    data = load_images(ImageData(source="folder", path=str(tmp_path)))
    assert data.classes == ["cat", "dog"]
    assert data.train["inputs"].shape == (6, 1, 6, 6) and data.test["labels"].tolist() == [0, 0, 1, 1]
    assert abs(float(data.train["inputs"].mean())) < 1e-5  # normalised with the train split's statistics
    rgb = load_images(ImageData(source="folder", path=str(tmp_path), channels=3, image_size=4))
    assert rgb.train["inputs"].shape == (6, 3, 4, 4)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DistillError, match="must hold train/ and test/"):
        load_images(ImageData(source="folder", path=str(tmp_path)))


def test_tensor_file(tensor_file):
    data = load_images(ImageData(source="tensors", path=str(tensor_file), train_limit=100))
    assert data.train["inputs"].shape == (100, 1, 12, 12) and data.num_classes == 4
    assert data.train["inputs"].dtype == torch.float32


def test_tensor_file_missing_keys(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"train_images": torch.zeros(2, 4, 4)}, path)
    lacks = r"x.pt lacks \['train_labels', 'test_images', 'test_labels'\]; it has \['train_images'\]"
    with pytest.raises(DistillError, match=lacks):
        load_images(ImageData(source="tensors", path=str(path)))


@pytest.mark.bundled
def test_fashion_mnist():
    if not (FASHION_MNIST_DIR and __import__("os").path.isdir(FASHION_MNIST_DIR)):
        pytest.fail("Fashion-MNIST is not installed: run `make data`")
    data = load_images(ImageData(test_limit=500))
    assert data.train["inputs"].shape == (60000, 1, 28, 28) and data.test["labels"].shape == (500,)
    assert data.classes[9] == "Ankle boot" and set(data.train["labels"].tolist()) == set(range(10))
