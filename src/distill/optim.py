"""The optimizer and the learning-rate schedules of a stage (warmup, then constant / linear / cosine / step
decay), and the schedule of an optimizer group that joins a stage late or steps less often."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from distill.engine import TrainConfig


def make_optimizer(params: list[nn.Parameter] | list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimizer over a list of parameters or of parameter groups (each with its own lr)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
        )
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)


def lr_lambda(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at a step: linear warmup, then constant / linear / cosine decay."""

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        if cfg.schedule == "step":  # the dataset-distillation evaluation protocol
            return 1.0 if step < total_steps // 2 else 0.1
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        decay = 1.0 - progress if cfg.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay

    return f


def group_lr_lambda(cfg: TrainConfig, total_steps: int, group: Mapping[str, Any]) -> Callable[[int], float]:
    """An optimizer group's multiplier. A group that steps once every `steps_every` optimizer steps from
    `steps_from` on (a cohort's students) follows the schedule of its own steps, as a stage of only those
    steps would: its warmup and decay start when it joins, not at the stage's step 0."""
    start, every = group.get("steps_from", 0), group.get("steps_every", 1)
    if (start, every) == (0, 1):
        return lr_lambda(cfg, total_steps)
    own = lr_lambda(
        cfg.model_copy(update={"warmup_steps": -(-cfg.warmup_steps // every)}), -(-(total_steps - start) // every)
    )
    return lambda step: own(max(0, step - start) // every)
