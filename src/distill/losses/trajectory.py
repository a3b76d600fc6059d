"""Trajectory matching (Cazenavette et al. 2022, eq. 2): how far N student steps from the expert's
epoch t land from the expert's epoch t+M, relative to how far the expert itself moved."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from torch import Tensor


def trajectory_matching(
    student_end: Sequence[Tensor], expert_start: Sequence[Tensor], expert_end: Sequence[Tensor]
) -> Tensor:
    """||theta_hat_{t+N} - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2, summed over all parameter tensors."""
    if not (len(student_end) == len(expert_start) == len(expert_end)):
        raise ValueError("student and expert parameter lists differ in length")
    num = sum(((s - e) ** 2).sum() for s, e in zip(student_end, expert_end))
    den = sum(((a - e) ** 2).sum() for a, e in zip(expert_start, expert_end))
    return cast(Tensor, num / den)  # sums of tensors (the lists are not empty)
