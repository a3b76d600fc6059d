"""Small image classifiers for the KD recipe (and later MTT).

Every stage is a named submodule (`stage1`, `stage2`, ..., `head`) so that taps can address
intermediate features by path without editing the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ConvNet(nn.Module):
    """Conv stages (conv-BN-ReLU x `convs_per_stage`, then 2x2 max pool), global pool, linear head."""

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 128),
        convs_per_stage: int = 1,
        num_classes: int = 10,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        prev = in_channels
        for i, width in enumerate(channels, start=1):
            layers: list[nn.Module] = []
            for _ in range(convs_per_stage):
                layers += [
                    nn.Conv2d(prev, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                prev = width
            layers.append(nn.MaxPool2d(2))
            self.add_module(f"stage{i}", nn.Sequential(*layers))
        self.num_stages = len(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"stage{i}")(x)
        return self.head(torch.flatten(self.pool(x), 1))


class MLP(nn.Module):
    """Flatten, hidden layers with ReLU (`layer1`, ...), linear head."""

    def __init__(self, in_features: int = 784, hidden: Sequence[int] = (256,), num_classes: int = 10) -> None:
        super().__init__()
        prev = in_features
        for i, width in enumerate(hidden, start=1):
            self.add_module(f"layer{i}", nn.Sequential(nn.Linear(prev, width), nn.ReLU(inplace=True)))
            prev = width
        self.num_layers = len(hidden)
        self.head = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        for i in range(1, self.num_layers + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.head(x)
