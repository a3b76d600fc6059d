"""The learnable synthetic set: `ipc` images per class, their fixed labels, and a learnable step size."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SyntheticSet(nn.Module):
    """`ipc` learnable images per class, their fixed labels, and the learnable step size alpha."""

    def __init__(self, images: Tensor, labels: Tensor, lr: float) -> None:
        super().__init__()
        self.images = nn.Parameter(images.clone())
        self.lr = nn.Parameter(torch.tensor(float(lr)))
        self.register_buffer("labels", labels.clone())
