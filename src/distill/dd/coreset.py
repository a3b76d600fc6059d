"""Real-image baselines of the same size as a synthetic set: random images per class, and herding."""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from distill.errors import DistillError


def class_indices(labels: Tensor, num_classes: int, ipc: int) -> list[Tensor]:
    """Indices of each class's images; a clear error when a class has fewer than `ipc`."""
    out = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < ipc:
            raise DistillError(f"ipc {ipc} is more than class {c} has images ({len(idx)}); lower distill.ipc")
        out.append(idx)
    return out


def random_real(labels: Tensor, num_classes: int, ipc: int, generator: torch.Generator) -> Tensor:
    """`ipc` random images of each class, class by class."""
    picks = [
        idx[torch.randperm(len(idx), generator=generator)[:ipc]] for idx in class_indices(labels, num_classes, ipc)
    ]
    return torch.cat(picks)


def herding(features: Tensor, ipc: int) -> Tensor:
    """Welling's herding: greedily pick the samples whose running mean stays closest to the class mean."""
    mu = features.mean(0)
    chosen: list[int] = []
    total = torch.zeros_like(mu)
    available = torch.ones(len(features), dtype=torch.bool)
    for k in range(1, ipc + 1):
        dist = ((mu - (total + features) / k) ** 2).sum(1)
        dist[~available] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        total += features[i]
    return torch.tensor(chosen)


@torch.no_grad()
def herding_select(net: nn.Module, images: Tensor, labels: Tensor, num_classes: int, ipc: int) -> Tensor:
    """Herding per class in the feature space of a trained `net` (the input of its `head`)."""
    if not hasattr(net, "head"):
        raise DistillError("herding needs a model with a `head` module (its input are the features)")
    feats: list[Tensor] = []
    head = cast(nn.Module, net.head)
    hook = head.register_forward_pre_hook(lambda _m, args: feats.append(args[0].flatten(1)))
    net.eval()
    try:
        for chunk in images.split(1000):
            net(chunk)
    finally:
        hook.remove()
    features = torch.cat(feats)
    picks = [idx[herding(features[idx], ipc)] for idx in class_indices(labels, num_classes, ipc)]
    return torch.cat(picks)
