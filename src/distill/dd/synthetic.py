"""The learnable synthetic set: `ipc` images per class, their labels, and a learnable step size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy against class indices, or against the softmax of soft-label logits (float targets)."""
    return F.cross_entropy(logits, targets.softmax(-1) if targets.is_floating_point() else targets)


class SyntheticSet(nn.Module):
    """`ipc` learnable images per class, their class labels, the learnable step size alpha and, when
    `soft` logits are given, learned soft labels (TESLA): students then train on softmax(soft)."""

    labels: Tensor

    def __init__(self, images: Tensor, labels: Tensor, lr: float, soft: Tensor | None = None) -> None:
        super().__init__()
        self.images = nn.Parameter(images.clone())
        self.lr = nn.Parameter(torch.tensor(float(lr)))
        self.register_buffer("labels", labels.clone())
        self.soft = nn.Parameter(soft.clone()) if soft is not None else None

    @property
    def targets(self) -> Tensor:
        """What the students' cross-entropy is taken against: soft-label logits, or the class indices."""
        return self.soft if self.soft is not None else self.labels
