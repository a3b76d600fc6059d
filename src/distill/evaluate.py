"""Evaluation helpers shared by recipes; they shard work across processes and reduce the sums."""

from __future__ import annotations

from collections.abc import Callable

import torch
from accelerate import Accelerator
from torch import Tensor, nn

from distill.data.text import Rows
from distill.models import call_model

# (logits, batch) -> (sum of the metric, number of items) for one batch
BatchSums = Callable[[Tensor, dict[str, Tensor]], tuple[Tensor, int]]


@torch.no_grad()
def sharded_mean(model: nn.Module, data: Rows, accelerator: Accelerator, batch_size: int, sums: BatchSums) -> float:
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


def lm_loss(model: nn.Module, data: Rows, accelerator: Accelerator, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy over the positions of `data` ({"input_ids", "labels"}) whose label is not -100
    (prompt data: the completion tokens)."""

    def sums(logits: Tensor, b: dict[str, Tensor]) -> tuple[Tensor, int]:
        labels = b["labels"].flatten()
        ce = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels, reduction="sum")
        return ce, int((labels != -100).sum())

    return sharded_mean(model, data, accelerator, batch_size, sums)


def lm_kl(student: nn.Module, teacher: nn.Module, data: Rows, accelerator: Accelerator, batch_size: int = 8) -> float:
    """Mean forward KL(teacher || student) of the next-token distributions over the positions of `data` whose
    label is not -100: how far the student is from imitating the teacher."""
    was_training = teacher.training
    teacher.eval()

    def sums(logits: Tensor, b: dict[str, Tensor]) -> tuple[Tensor, int]:
        keep = b["labels"] != -100
        with torch.no_grad():
            t = call_model(teacher, b)[keep].float().log_softmax(-1)
        s = logits[keep].float().log_softmax(-1)
        return torch.nn.functional.kl_div(s, t, log_target=True, reduction="sum"), int(keep.sum())

    try:
        return sharded_mean(student, data, accelerator, batch_size, sums)
    finally:
        teacher.train(was_training)
