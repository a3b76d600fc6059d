"""The student side of one training step: student + objective, with the teachers held aside.

`Distiller(batch) -> (loss, {term: value})` is the contract the engine trains. Teachers live in
a plain list, not as submodules, so they are outside `parameters()`, the optimizer and every
checkpoint; they are rebuilt from the config on resume.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from distill.objective import Objective, Term
from distill.taps import Taps
from distill.teachers import LiveTeacher, call_model


class Distiller(nn.Module):
    def __init__(self, student: nn.Module, objective: list[Term], teachers: dict[str, nn.Module] | None = None) -> None:
        super().__init__()
        teachers = teachers or {}
        self.student = student
        self.objective = Objective(objective, list(teachers))
        student_taps, teacher_taps = self.objective.taps()
        self._student_taps = Taps(student, student_taps, owner="student")
        self._teachers = [LiveTeacher(n, m, teacher_taps[n]) for n, m in teachers.items()]

    @property
    def teachers(self) -> list[LiveTeacher]:
        return self._teachers

    def to(self, *args: Any, **kwargs: Any) -> Distiller:
        super().to(*args, **kwargs)
        for t in self._teachers:
            t.model.to(*args, **kwargs)
        return self

    def signals(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        self._student_taps.clear()
        logits = call_model(self.student, batch)
        teachers = {t.name: t.signals(batch) for t in self._teachers}
        return {"student": {"logits": logits, **self._student_taps.values}, "teachers": teachers}

    def build(self, batch: dict[str, Tensor]) -> Distiller:
        """Run one probe batch to size the learned projections; call before making the optimizer."""
        was_training = self.student.training
        self.student.eval()  # the probe must not move BatchNorm statistics
        with torch.no_grad():
            self.objective.build(self.signals(batch), batch)
        self.student.train(was_training)
        return self

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return self.objective(self.signals(batch), batch)
