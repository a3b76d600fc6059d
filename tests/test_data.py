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


def _folder(root, train: dict[str, int], test: dict[str, int]):
    for split, counts in (("train", train), ("test", test)):
        for cls, n in counts.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((6, 6), 20 * i, np.uint8)).save(root / split / cls / f"{i}.png")
    return ImageData(source="folder", path=str(root))


def test_image_folder_errors(tmp_path):
    with pytest.raises(DistillError, match="must hold train/ and test/"):
        load_images(ImageData(source="folder", path=str(tmp_path)))
    with pytest.raises(DistillError, match=r"train has 1 class subfolders; a classifier needs two or more"):
        load_images(_folder(tmp_path / "one", {"cat": 3}, {"cat": 2}))
    with pytest.raises(DistillError, match=r"test has classes that .*train lacks: \['bird'\]"):
        load_images(_folder(tmp_path / "unseen", {"cat": 3, "dog": 3}, {"cat": 2, "bird": 2}))
    with pytest.raises(DistillError, match=r"train: class folders \['dog'\] hold no images"):
        load_images(_folder(tmp_path / "empty", {"cat": 3, "dog": 0}, {"cat": 2}))


def test_a_limit_takes_every_class_in_proportion_seeded(tmp_path):
    """A folder lists its images class by class: a limit of 6 out of 3 classes of 10 takes 2 of each (not 6 of a),
    the same ones each time."""
    cfg = _folder(tmp_path, {"a": 10, "b": 10, "c": 10}, {"a": 4, "b": 4, "c": 4})
    data = load_images(cfg.model_copy(update={"train_limit": 6, "test_limit": 3}))
    assert data.train["labels"].tolist() == [0, 0, 1, 1, 2, 2] and data.test["labels"].tolist() == [0, 1, 2]
    again = load_images(cfg.model_copy(update={"train_limit": 6, "test_limit": 3}))
    assert torch.equal(again.train["inputs"], data.train["inputs"])
    from distill.data.images import stratified

    picked = stratified(torch.tensor([0] * 10 + [1] * 10 + [2] * 20), 8)
    assert torch.bincount(torch.tensor([0] * 10 + [1] * 10 + [2] * 20)[picked]).tolist() == [2, 2, 4]
    assert stratified(torch.tensor([0, 1]), 5).tolist() == [0, 1]


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
