"""Teachers as signal sources. A live frozen teacher (this module, the default) runs in eval mode
under no_grad with taps on named submodules; a teacher that trains while students learn from it is
a member of a `Cohort` (distill.kd.cohort)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

import torch
from pydantic import BeforeValidator
from torch import Tensor, nn

from distill.kd.objective import cache_key
from distill.kd.taps import Taps
from distill.models import call_model

# where a frozen teacher's signals come from: its forward on every batch, or computed once before training
# and read from memory ('cached', the older name, still reads as precomputed)
TeacherSignals = Annotated[
    Literal["live", "precomputed"], BeforeValidator(lambda v: "precomputed" if v == "cached" else v)
]


class LiveTeacher:
    """Produces a teacher's signals for a batch. Never trained, never in a checkpoint.

    `torch.no_grad()` rather than `inference_mode()`: inference tensors cannot be saved for
    the student's backward pass.
    """

    def __init__(self, name: str, model: nn.Module, taps: Sequence[str] = ()) -> None:
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


class HoldsTeachers:
    """A trainable's frozen live teachers, kept in a plain list outside its `parameters()` (never optimized, never
    saved with the product), and placed by the engine through `place_frozen` (sharded under FSDP)."""

    _teachers: list[LiveTeacher]

    @property
    def teachers(self) -> list[LiveTeacher]:
        return self._teachers

    def place_frozen(self, place: Callable[[nn.Module], nn.Module]) -> None:
        """Put each frozen teacher where `place` says (the engine shards them under FSDP)."""
        for t in self._teachers:
            t.model = place(t.model)


@torch.no_grad()
def precompute_signals(
    teachers: dict[str, nn.Module],
    taps: list[str],
    data: dict[str, Tensor],
    device: torch.device | str,
    batch_size: int = 256,
    route: str = "domain",
) -> dict[str, Tensor]:
    """Every sample's teacher signals (logits and `taps`), computed once and returned as data fields
    (`cache_key`). With several teachers, each sample goes only to the teacher whose index is in
    `data[route]`: half the teacher work of running both and picking per sample. Exact for frozen
    teachers on data that is not augmented, whose signals do not change between epochs."""
    names = list(teachers)
    n = len(next(iter(data.values())))
    owner = data[route] if len(names) > 1 else torch.zeros(n, dtype=torch.long)
    out: dict[str, Tensor] = {}
    for index, name in enumerate(names):
        live = LiveTeacher(name, teachers[name].to(device), taps)
        for chunk in (owner == index).nonzero().flatten().split(batch_size):
            for key, value in live.signals({k: v[chunk].to(device) for k, v in data.items()}).items():
                if key not in out:
                    out[key] = torch.zeros((n, *value.shape[1:]), dtype=value.dtype)
                out[key][chunk] = value.cpu()
        live.taps.remove()
    return {cache_key(k): v for k, v in out.items()}
