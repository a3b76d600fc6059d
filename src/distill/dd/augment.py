"""Differentiable Siamese Augmentation (DSA, Zhao & Bilen 2021), as used by dataset distillation.

Every op is differentiable with respect to the images, so gradients reach synthetic pixels
through the augmentation. In 'S' mode one op family is drawn per call; by default each image
gets its own random parameters, as in the official DSA and MTT code (`batchmode=False`);
`same_for_batch` draws one set for the whole batch instead. All randomness comes from the
`generator` passed in (or torch's global stream), so a seed makes an augmentation reproducible.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor

from distill.config import Section

OPS = ("color", "crop", "cutout", "flip", "scale", "rotate", "noise")


class DSAConfig(Section):
    """Differentiable Siamese augmentation; defaults are the DSA paper's."""

    strategy: str = Field(
        "color_crop_cutout_flip_scale_rotate", description=f"ops joined by '_', from {list(OPS)}; 'none' disables"
    )
    mode: Literal["S", "M"] = Field("S", description="S: one op per batch, drawn at random; M: all ops in order")
    same_for_batch: bool = Field(
        False, description="one random draw for the whole batch, or one per image (the official code's default)"
    )
    prob_flip: float = Field(0.5, ge=0, le=1)
    ratio_scale: float = Field(1.2, ge=1)
    ratio_rotate: float = Field(15.0, ge=0, description="degrees")
    ratio_crop_pad: float = Field(0.125, ge=0, lt=1, description="shift, as a fraction of the side")
    ratio_cutout: float = Field(0.5, gt=0, le=1, description="cutout side, as a fraction of the image side")
    ratio_noise: float = Field(0.05, ge=0)
    brightness: float = Field(1.0, ge=0)
    saturation: float = Field(2.0, ge=0)
    contrast: float = Field(0.5, ge=0)

    @field_validator("strategy")
    @classmethod
    def _ops(cls, strategy: str) -> str:
        if strategy.lower() != "none":
            bad = [op for op in strategy.split("_") if op not in OPS]
            if bad:
                raise ValueError(f"unknown DSA ops {bad}; choose from {list(OPS)} or 'none'")
        return strategy

    @property
    def ops(self) -> list[str]:
        return [] if self.strategy.lower() == "none" else self.strategy.split("_")


def dsa(x: Tensor, cfg: DSAConfig, generator: torch.Generator | None = None) -> Tensor:
    """Augment a batch (N, C, H, W) differentiably."""
    ops = cfg.ops
    if not ops:
        return x
    if cfg.mode == "S":
        ops = [ops[int(torch.randint(len(ops), (1,), generator=generator))]]
    for op in ops:
        for fn in _FNS[op]:
            x = fn(x, cfg, generator)
    return x


def _rand(x: Tensor, cfg: DSAConfig, g: torch.Generator | None, *shape: int) -> Tensor:
    """Uniform [0, 1) draws of shape (N, *shape), one row repeated when the batch shares parameters."""
    n = 1 if cfg.same_for_batch else x.shape[0]
    r = torch.rand(n, *shape, generator=g).to(x.device, x.dtype)
    return r.expand(x.shape[0], *shape)


def _randint(x: Tensor, cfg: DSAConfig, g: torch.Generator | None, low: int, high: int) -> Tensor:
    n = 1 if cfg.same_for_batch else x.shape[0]
    return torch.randint(low, high, (n, 1, 1), generator=g).to(x.device).expand(x.shape[0], 1, 1)


def _brightness(x: Tensor, cfg: DSAConfig, g) -> Tensor:
    return x + (_rand(x, cfg, g, 1, 1, 1) - 0.5) * cfg.brightness


def _saturation(x: Tensor, cfg: DSAConfig, g) -> Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_rand(x, cfg, g, 1, 1, 1) * cfg.saturation) + mean


def _contrast(x: Tensor, cfg: DSAConfig, g) -> Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(x, cfg, g, 1, 1, 1) + cfg.contrast) + mean


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def _scale(x: Tensor, cfg: DSAConfig, g) -> Tensor:
    r = cfg.ratio_scale
    s = _rand(x, cfg, g, 2) * (r - 1.0 / r) + 1.0 / r
    zero = torch.zeros_like(s[:, 0])
    theta = torch.stack([torch.stack([s[:, 0], zero, zero], 1), torch.stack([zero, s[:, 1], zero], 1)], 1)
    return _affine(x, theta)


def _rotate(x: Tensor, cfg: DSAConfig, g) -> Tensor:
    angle = (_rand(x, cfg, g) - 0.5) * 2 * cfg.ratio_rotate / 180 * math.pi
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, sin, zero], 1), torch.stack([-sin, cos, zero], 1)], 1)
    return _affine(x, theta)


def _flip(x: Tensor, cfg: DSAConfig, g) -> Tensor:
    return torch.where(_rand(x, cfg, g, 1, 1, 1) < cfg.prob_flip, x.flip(3), x)


def _crop(x: Tensor, cfg: DSAConfig, g) -> Tensor:
    """Translate by up to ratio_crop_pad of the side, filling with zeros (a padded random crop)."""
    n, _, h, w = x.shape
    sx, sy = int(h * cfg.ratio_crop_pad + 0.5), int(w * cfg.ratio_crop_pad + 0.5)
    tx, ty = _randint(x, cfg, g, -sx, sx + 1), _randint(x, cfg, g, -sy, sy + 1)
    gb, gx, gy = torch.meshgrid(torch.arange(n), torch.arange(h), torch.arange(w), indexing="ij")
    gx = torch.clamp(gx.to(x.device) + tx + 1, 0, h + 1)
    gy = torch.clamp(gy.to(x.device) + ty + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])
    return padded.permute(0, 2, 3, 1)[gb.to(x.device), gx, gy].permute(0, 3, 1, 2)


def _cutout(x: Tensor, cfg: DSAConfig, g) -> Tensor:
    n, _, h, w = x.shape
    ch, cw = int(h * cfg.ratio_cutout + 0.5), int(w * cfg.ratio_cutout + 0.5)
    ox, oy = _randint(x, cfg, g, 0, h + (1 - ch % 2)), _randint(x, cfg, g, 0, w + (1 - cw % 2))
    gb, gx, gy = torch.meshgrid(torch.arange(n), torch.arange(ch), torch.arange(cw), indexing="ij")
    gx = torch.clamp(gx.to(x.device) + ox - ch // 2, 0, h - 1)
    gy = torch.clamp(gy.to(x.device) + oy - cw // 2, 0, w - 1)
    mask = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
    mask[gb.to(x.device), gx, gy] = 0
    return x * mask.unsqueeze(1)


def _noise(x: Tensor, cfg: DSAConfig, g) -> Tensor:
    return x + torch.randn(x.shape, generator=g).to(x.device, x.dtype) * cfg.ratio_noise


_FNS = {
    "color": [_brightness, _saturation, _contrast],
    "crop": [_crop],
    "cutout": [_cutout],
    "flip": [_flip],
    "scale": [_scale],
    "rotate": [_rotate],
    "noise": [_noise],
}
