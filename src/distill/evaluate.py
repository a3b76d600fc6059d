"""Evaluation helpers shared by recipes; they shard work across processes and reduce the counts."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torch import Tensor, nn

from distill.teachers import call_model


@torch.no_grad()
def accuracy(model: nn.Module, data: dict[str, Tensor], accelerator: Accelerator, batch_size: int = 1000) -> float:
    """Top-1 accuracy of `model` on `data`; each process scores its stride of the samples."""
    was_training = model.training
    model.eval()
    n = len(data["labels"])
    idx = torch.arange(accelerator.process_index, n, accelerator.num_processes)
    counts = torch.zeros(2, device=accelerator.device)
    for chunk in idx.split(batch_size):
        batch = {k: v[chunk].to(accelerator.device) for k, v in data.items()}
        logits = call_model(model, batch)
        counts[0] += (logits.argmax(-1) == batch["labels"]).sum()
        counts[1] += len(chunk)
    model.train(was_training)
    if accelerator.num_processes > 1:
        counts = accelerator.reduce(counts, reduction="sum")
    return float(counts[0] / counts[1].clamp_min(1))


@torch.no_grad()
def lm_loss(model: nn.Module, data: dict[str, Tensor], accelerator: Accelerator, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy over all positions of `data` ({"input_ids", "labels"})."""
    was_training = model.training
    model.eval()
    n = len(data["labels"])
    idx = torch.arange(accelerator.process_index, n, accelerator.num_processes)
    sums = torch.zeros(2, device=accelerator.device, dtype=torch.float64)
    for chunk in idx.split(batch_size):
        batch = {k: v[chunk].to(accelerator.device) for k, v in data.items()}
        logits = call_model(model, batch).float()
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="sum")
        sums += torch.stack([loss.double(), torch.tensor(batch["labels"].numel(), dtype=torch.float64)])
    model.train(was_training)
    if accelerator.num_processes > 1:
        sums = accelerator.reduce(sums, reduction="sum")
    return float(sums[0] / sums[1].clamp_min(1))
