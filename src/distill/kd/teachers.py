"""Teachers as signal sources. A live frozen teacher (this module, the default) runs in eval mode
under no_grad with taps on named submodules; a teacher that trains while students learn from it is
a member of a `Cohort` (distill.kd.cohort)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from distill.kd.taps import Taps
from distill.models import call_model


class LiveTeacher:
    """Produces a teacher's signals for a batch. Never trained, never in a checkpoint.

    `torch.no_grad()` rather than `inference_mode()`: inference tensors cannot be saved for
    the student's backward pass.
    """

    def __init__(self, name: str, model: nn.Module, taps: list[str] = ()) -> None:
        self.name = name
        self.model = model.eval().requires_grad_(False)
        self.taps = Taps(model, taps, owner=f"teacher {name!r}")
        self.forwards = 0  # forward passes run for students (what a cached or online teacher saves)

    def to(self, device: torch.device | str) -> LiveTeacher:
        self.model.to(device)
        return self

    @torch.no_grad()
    def signals(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        self.model.eval()  # stays pinned even if someone called .train() on a parent
        self.taps.clear()
        self.forwards += 1
        logits = call_model(self.model, batch)
        return {"logits": logits, **self.taps.values}
