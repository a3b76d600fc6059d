"""Evaluation helpers shared by recipes; they shard work across processes and reduce the sums."""

from __future__ import annotations

from collections.abc import Callable

import torch
from accelerate import Accelerator
from torch import Tensor, nn

from distill.models import call_model

# (logits, batch) -> (sum of the metric, number of items) for one batch
BatchSums = Callable[[Tensor, dict[str, Tensor]], tuple[Tensor, int]]


@torch.no_grad()
def sharded_mean(
    model: nn.Module, data: dict[str, Tensor], accelerator: Accelerator, batch_size: int, sums: BatchSums
) -> float:
    """Mean of a per-item metric over `data`; each process scores its stride of the samples."""
    was_training = model.training
    model.eval()
    n = len(data["labels"])
    idx = torch.arange(accelerator.process_index, n, accelerator.num_processes)
    totals = torch.zeros(2, device=accelerator.device, dtype=torch.float64)
    for chunk in idx.split(batch_size):
        batch = {k: v[chunk].to(accelerator.device) for k, v in data.items()}
        value, count = sums(call_model(model, batch), batch)
        totals += torch.stack([value.double(), torch.tensor(float(count), dtype=torch.float64, device=totals.device)])
    model.train(was_training)
    if accelerator.num_processes > 1:
        totals = accelerator.reduce(totals, reduction="sum")
    return float(totals[0] / totals[1].clamp_min(1))


def accuracy(model: nn.Module, data: dict[str, Tensor], accelerator: Accelerator, batch_size: int = 1000) -> float:
    """Top-1 accuracy of a classifier."""
    return sharded_mean(
        model,
        data,
        accelerator,
        batch_size,
        lambda logits, b: ((logits.argmax(-1) == b["labels"]).sum(), len(b["labels"])),
    )


def lm_loss(model: nn.Module, data: dict[str, Tensor], accelerator: Accelerator, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy over all positions of `data` ({"input_ids", "labels"})."""

    def sums(logits: Tensor, b: dict[str, Tensor]) -> tuple[Tensor, int]:
        ce = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), b["labels"].flatten(), reduction="sum")
        return ce, b["labels"].numel()

    return sharded_mean(model, data, accelerator, batch_size, sums)
