"""The optimizer and the learning-rate schedules of a stage (warmup, then constant / linear / cosine / step
decay), and the schedule of an optimizer group that joins a stage late or steps less often."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from distill.config import import_dotted
from distill.errors import ConfigError

if TYPE_CHECKING:
    from distill.engine import TrainConfig


SCHEDULES = ("constant", "linear", "cosine", "step")


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """adamw, sgd, or a user's optimizer class by dotted path (e.g. torch.optim.RAdam); one line otherwise."""
    cls = import_dotted(name, {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}, "optimizer", "pkg.module:Class")
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError(f"optimizer {name!r} is not a torch.optim.Optimizer class")
    return cls


def schedule_function(name: str) -> Callable[[float], float] | None:
    """None for a built-in schedule; a user's function of the progress after warmup (0 to 1) giving the multiplier
    of the peak lr, by dotted path."""
    fn = import_dotted(name, dict.fromkeys(SCHEDULES), "schedule", "pkg.module:function")
    if fn is not None and not callable(fn):
        raise ConfigError(f"schedule {name!r} is not a function of the progress (0 to 1)")
    return fn


def make_optimizer(params: list[nn.Parameter] | list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimizer over a list of parameters or of parameter groups (each with its own lr)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(  # fused: one kernel over all tensors, not a loop over them
            params, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay, fused=_fusable(params)
        )
    make: Any = optimizer_class(cfg.optimizer)  # a subclass; torch types the base's constructor without lr
    return make(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **cfg.optimizer_args)


def _fusable(params: list[nn.Parameter] | list[dict]) -> bool:
    """Whether torch's fused AdamW takes these parameters: plain floating-point tensors (not sharded ones), all on
    the CPU or all on GPUs."""
    flat = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    plain = all(type(p.data) is torch.Tensor and p.is_floating_point() for p in flat)
    return bool(flat) and plain and {p.device.type for p in flat} in ({"cpu"}, {"cuda"})


def lr_lambda(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at a step: linear warmup, then constant / linear / cosine decay."""

    custom = schedule_function(cfg.schedule)

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if custom is not None:
            return float(custom(min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))))
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
