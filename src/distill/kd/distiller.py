"""One model and its objective in one training step: `Distiller(batch) -> (loss, {term: value})`.

Frozen teachers live in a plain list, not as submodules, so they are outside `parameters()`,
the optimizer and every checkpoint; they are rebuilt from the config on resume. A teacher that
trains in the same step is not held here: its signals come in through `given` (see `Cohort`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from distill.kd.objective import CE, Objective, Term
from distill.kd.taps import Taps
from distill.kd.teachers import HoldsTeachers, LiveTeacher
from distill.models import call_model

Signals = dict[str, Any]


class Distiller(HoldsTeachers, nn.Module):
    def __init__(
        self,
        student: nn.Module,
        objective: list[Term],
        teachers: dict[str, nn.Module] | None = None,
        *,
        sources: Sequence[str] = (),
        extra_taps: Sequence[str] = (),
        routed: int | None = None,
    ) -> None:
        """`teachers`: frozen live teachers. `sources`: names of teachers whose signals each step
        receives through `given`. `extra_taps`: submodules of the student to capture beyond what
        its objective reads (what others read from it). `routed`: how many teachers routed signals
        cached in the batch come from (`Objective`)."""
        super().__init__()
        teachers = teachers or {}
        self.student = student
        self.objective = Objective(objective, [*teachers, *sources], routed)
        student_taps, teacher_taps = self.objective.taps()
        self._student_taps = Taps(student, [*student_taps, *extra_taps], owner="student")
        self._teachers = [LiveTeacher(n, m, teacher_taps[n]) for n, m in teachers.items()]
        self._read = self.objective.teachers_read()
        self.source_taps = {n: teacher_taps[n] for n in sources}
        self._built = False

    @property
    def product(self) -> nn.Module:
        """What a stage that trains this delivers and saves: the student."""
        return self.student

    @property
    def _no_split_modules(self) -> list[str]:
        """The student's layer classes: what FSDP's transformer wrap policy shards one unit each."""
        return list(getattr(self.student, "_no_split_modules", None) or [])

    def to(self, *args: Any, **kwargs: Any) -> Distiller:
        super().to(*args, **kwargs)
        for t in self._teachers:
            t.model.to(*args, **kwargs)
        return self

    def signals(self, batch: dict[str, Tensor], given: dict[str, Signals] | None = None) -> dict[str, Any]:
        self._student_taps.clear()
        logits = call_model(self.student, batch)
        teachers = {t.name: t.signals(batch) for t in self._teachers if t.name in self._read}
        teachers.update(given or {})
        return {"student": {"logits": logits, **self._student_taps.values}, "teachers": teachers}

    def build(self, batch: dict[str, Tensor], given: dict[str, Signals] | None = None) -> Distiller:
        """Run one probe batch to size the learned projections, before the optimizer is made (`fit` does); a
        built distiller is left as it is."""
        if self._built:
            return self
        self._built = True
        if not self.objective.learns_projections:  # nothing to size: no probe forward
            return self
        was_training = self.student.training
        self.student.eval()  # the probe must not move BatchNorm statistics
        with torch.no_grad():
            self.objective.build(self.signals(batch, given), batch)
        self.student.train(was_training)
        return self

    def forward(
        self, batch: dict[str, Tensor], given: dict[str, Signals] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return self.objective(self.signals(batch, given), batch)

    def close(self) -> None:
        """Remove the hooks this distiller put on its student and teachers (the engine calls it when the stage
        ends): a later stage or distiller on the same models starts from clean modules."""
        self._student_taps.remove()
        for t in self._teachers:
            t.taps.remove()


def supervised(model: nn.Module, ce: Term = CE) -> Distiller:
    """`model` trained on its labels alone (cross-entropy, no teacher): the baselines and the teachers' training."""
    return Distiller(model, [ce])
