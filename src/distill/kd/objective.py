"""The objective: a weighted sum of named loss terms, each naming its inputs.

Inputs are references into the signals of one step:
    student.logits            the student's output (or its `.logits`)
    student.<module.path>     a tapped submodule's output; add `:input` for its input
    teacher.<...>             the same, for the only teacher
    teacher[NAME].<...>       the same, for teacher NAME
    teacher[mean].<...>       the element-wise mean over all teachers (e.g. averaged logits)
    teacher[routed].<...>     per sample, the teacher whose index is in `batch.domain`
    labels, batch.<key>       a field of the batch
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, cast

import torch
from pydantic import AfterValidator, Field, field_validator, model_validator
from torch import Tensor, nn

from distill.config import Section, import_dotted
from distill.errors import ConfigError
from distill.losses import LOSSES, PROJECTED, Projection, RoutedProjection


def loss_fn(name: str) -> Callable[..., Tensor]:
    """A loss by name: one of distill.losses, or a user's function by dotted path (a pure function of tensors,
    its inputs first, then keyword arguments: the same contract, checked the same way)."""
    return import_dotted(name, LOSSES, "loss", "pkg.module:function")


POOLED = ("mean", "routed")
_REF = re.compile(r"^(student|teacher(?:\[([A-Za-z0-9_\-]+)\])?)\.(.+)$")
_BATCH = re.compile(r"^batch(?:\[(routed)\])?\.(.+)$")  # batch[routed].<key>: teacher signals cached routed


class Term(Section):
    """One loss term: `weight * loss(inputs..., **args)`."""

    name: str = Field(description="name it is logged under")
    loss: str = Field(description=f"a loss of distill.losses ({', '.join(LOSSES)}) or a dotted path 'pkg.mod:fn'")
    weight: float = Field(1.0, description="multiplier in the weighted sum")
    inputs: list[str] = Field(description="references: student.<tap>, teacher[NAME].<tap>, labels, batch.<key>")
    mask: str | None = Field(None, description="batch.<key> of a padding mask (True = keep)")
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the loss")
    project: bool = Field(True, description="hint only: learn a projection when widths differ")
    balance_with: str | None = Field(
        None,
        description="dynamic weight: scale this term each step to the size of the named term "
        "(weight * L_other / L_this, both detached), as Minitron weights its hidden-state loss",
    )

    @field_validator("inputs")
    @classmethod
    def _refs(cls, refs: list[str]) -> list[str]:
        for r in refs:
            parse_ref(r)
        return refs

    @field_validator("loss")
    @classmethod
    def _known(cls, loss: str) -> str:
        try:
            fn = loss_fn(loss)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        if not callable(fn):
            raise ValueError(f"loss {loss!r} is not a function")
        return loss

    @model_validator(mode="after")
    def _check(self) -> Term:
        fn = loss_fn(self.loss)
        params = list(inspect.signature(fn).parameters)
        n_in = sum(1 for p in inspect.signature(fn).parameters.values() if p.default is inspect.Parameter.empty)
        if len(self.inputs) != n_in:
            raise ValueError(f"loss {self.loss!r} takes {n_in} inputs, got {len(self.inputs)}")
        bad = [k for k in self.args if k not in params[n_in:] or k == "mask"]
        if bad:
            raise ValueError(f"loss {self.loss!r} has no argument {bad[0]!r}; it takes {params[n_in:]}")
        if self.mask is not None and "mask" not in params:
            raise ValueError(f"loss {self.loss!r} takes no mask")
        t = self.args.get("temperature")
        number = isinstance(t, (int, float)) and not isinstance(t, bool)
        if t is not None and (not number or not math.isfinite(t) or t < 0.01):
            raise ValueError(f"temperature {t!r} must be a finite number >= 0.01 (logits / T overflow below that)")
        return self


@dataclass(frozen=True)
class Ref:
    owner: str  # "student", "teacher" or "batch"
    teacher: str | None  # teacher name, "mean", "routed", or None for the only teacher
    key: str  # tap spec, "logits", or batch key


def parse_ref(ref: str) -> Ref:
    if ref == "labels":
        return Ref("batch", None, "labels")
    if b := _BATCH.match(ref):
        return Ref("batch", b.group(1), b.group(2))
    m = _REF.match(ref)
    if not m:
        raise ValueError(f"input {ref!r} is not student.<tap>, teacher[NAME].<tap>, labels or batch.<key>")
    owner = "student" if m.group(1) == "student" else "teacher"
    return Ref(owner, m.group(2), m.group(3))


class Objective(nn.Module):
    """Weighted sum of terms. Owns the learned projections, so they train with the student."""

    def __init__(self, terms: list[Term], teacher_names: list[str], routed: int | None = None) -> None:
        """`routed`: how many teachers a routed input chooses among (default: all of `teacher_names`; give it when
        their signals were cached in the batch, `read_precomputed`)."""
        super().__init__()
        self.terms = terms
        self.teacher_names = teacher_names
        self.routed = routed or len(teacher_names)
        self.projections = nn.ModuleDict()
        problem = check_refs(terms, teacher_names)
        if problem:
            raise ConfigError(problem)

    def taps(self) -> tuple[list[str], dict[str, list[str]]]:
        """Tap specs the student and each teacher must provide (beyond their logits)."""
        student: list[str] = []
        teachers: dict[str, list[str]] = {n: [] for n in self.teacher_names}
        for term in self.terms:
            for ref in map(parse_ref, term.inputs):
                if ref.key == "logits" or ref.owner == "batch":
                    continue
                if ref.owner == "student":
                    student.append(ref.key)
                else:
                    for name in self._teachers_of(ref):
                        teachers[name].append(ref.key)
        return student, teachers

    def teachers_read(self) -> set[str]:
        """The teachers some term reads: one no term reads need not run (a cross-entropy-only baseline)."""
        refs = [parse_ref(r) for term in self.terms for r in term.inputs]
        return {n for ref in refs if ref.owner == "teacher" for n in self._teachers_of(ref)}

    def _teachers_of(self, ref: Ref) -> list[str]:
        if ref.teacher is None:
            return self.teacher_names[:1]
        return self.teacher_names if ref.teacher in POOLED else [ref.teacher]

    @property
    def learns_projections(self) -> bool:
        """Whether a term maps student features through a learned projection (sized by a probe batch)."""
        return any(term.loss in PROJECTED and term.project for term in self.terms)

    def build(self, signals: dict[str, Any], batch: dict[str, Tensor]) -> None:
        """Create projections from one probe step's shapes (before the optimizer is made)."""
        for term in self.terms:
            if term.loss in PROJECTED and term.project:
                s, t = (self.resolve(r, signals, batch) for r in term.inputs)
                proj: nn.Module | None = Projection.between(s, t)
                if proj is not None and parse_ref(term.inputs[1]).teacher == "routed" and self.routed > 1:
                    # teachers trained apart have unrelated feature bases: one map each, each sample through its own
                    proj = RoutedProjection([cast(Projection, Projection.between(s, t)) for _ in range(self.routed)])
                if proj is not None:
                    self.projections[term.name] = proj.to(s.device)

    def resolve(self, ref_text: str, signals: dict[str, Any], batch: dict[str, Tensor]) -> Tensor:
        ref = parse_ref(ref_text)
        if ref.owner == "batch":
            if ref.key not in batch:
                raise ConfigError(f"input {ref_text!r}: the batch has no {ref.key!r}; it has {sorted(batch)}")
            return batch[ref.key]
        if ref.owner == "student":
            return signals["student"][ref.key]
        if ref.teacher is None:
            return signals["teachers"][self.teacher_names[0]][ref.key]
        if ref.teacher not in POOLED:
            return signals["teachers"][ref.teacher][ref.key]
        stacked = torch.stack([signals["teachers"][n][ref.key].float() for n in self.teacher_names])
        if ref.teacher == "mean":
            return stacked.mean(0)
        domain = batch.get("domain")
        if domain is None:
            raise ConfigError(f"input {ref_text!r} routes by 'domain', but the batch has no 'domain' field")
        return stacked[domain.long(), torch.arange(stacked.shape[1], device=stacked.device)]

    def forward(self, signals: dict[str, Any], batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        raw: dict[str, Tensor] = {}
        for term in self.terms:
            inputs = [self.resolve(r, signals, batch) for r in term.inputs]
            proj = self.projections[term.name] if term.name in self.projections else None
            if isinstance(proj, RoutedProjection):
                inputs[0] = proj(inputs[0], self._domain(term, batch))
            elif proj is not None:
                inputs[0] = proj(inputs[0])
            kwargs = dict(term.args)
            if term.mask is not None:
                kwargs["mask"] = self.resolve(term.mask, signals, batch)
            raw[term.name] = loss_fn(term.loss)(*inputs, **kwargs)
        total = cast(Tensor, sum(self._weight(term, raw) * raw[term.name] for term in self.terms))  # terms: >= 1
        return total, {name: value.detach() for name, value in raw.items()}

    @staticmethod
    def _domain(term: Term, batch: dict[str, Tensor]) -> Tensor:
        if "domain" not in batch:
            raise ConfigError(f"objective term {term.name!r} routes by 'domain', but the batch has no 'domain' field")
        return batch["domain"].long()

    @staticmethod
    def _weight(term: Term, raw: dict[str, Tensor]) -> Tensor | float:
        if term.balance_with is None:
            return term.weight
        ratio = raw[term.balance_with].detach() / raw[term.name].detach().clamp_min(1e-12)
        return term.weight * ratio


def cache_key(tap: str) -> str:
    """The batch field that holds a precomputed teacher signal: 'logits' -> 'teacher_logits'."""
    return "teacher_" + tap.replace(".", "_").replace(":", "_")


def read_precomputed(terms: list[Term]) -> list[Term]:
    """The same terms reading each teacher signal from the batch field that `precompute_signals` filled
    (`teacher[routed].glimpses` -> `batch.teacher_glimpses`): the routing was done when they were computed."""

    def swap(ref: str) -> str:
        parsed = parse_ref(ref)
        if parsed.owner != "teacher":
            return ref
        return f"batch{'[routed]' if parsed.teacher == 'routed' else ''}.{cache_key(parsed.key)}"

    return [t.model_copy(update={"inputs": [swap(r) for r in t.inputs]}) for t in terms]


def check_refs(terms: list[Term], teacher_names: list[str]) -> str | None:
    """What is wrong with the terms' teacher references, given the teachers there are (None: fine)."""
    for term in terms:
        for ref in map(parse_ref, term.inputs):
            if ref.owner != "teacher":
                continue
            if not teacher_names:
                return f"objective term {term.name!r} reads a teacher, but there is no teacher"
            if ref.teacher is None and len(teacher_names) > 1:
                return (
                    f"objective term {term.name!r}: 'teacher.' is ambiguous with {len(teacher_names)} teachers; "
                    f"say teacher[NAME]. with NAME in {teacher_names} or 'mean'/'routed'"
                )
            if ref.teacher is not None and ref.teacher not in teacher_names and ref.teacher not in POOLED:
                return f"objective term {term.name!r}: no teacher named {ref.teacher!r}; teachers: {teacher_names}"
            if ref.teacher == "mean" and term.loss in PROJECTED and ref.key != "logits" and len(teacher_names) > 1:
                return (
                    f"objective term {term.name!r} ({term.loss}) would average the features of {len(teacher_names)} "
                    "teachers, whose feature bases are unrelated; read teacher[routed] (a projection per teacher) "
                    "or one teacher[NAME] per term"
                )
    return None


def check_terms(terms: list[Term]) -> list[Term]:
    """Term names are unique and there is at least one term."""
    if not terms:
        raise ValueError("the objective needs at least one term")
    names = [t.name for t in terms]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"term names must be unique; repeated: {sorted(dup)}")
    for t in terms:
        if t.balance_with is not None and (t.balance_with not in names or t.balance_with == t.name):
            raise ValueError(f"term {t.name!r}: balance_with names no other term ({t.balance_with!r})")
    return terms


# a recipe's objective field: checked for unique names and existing balance partners as the config loads
Terms = Annotated[list[Term], AfterValidator(check_terms)]


CE = Term(name="ce", loss="ce", inputs=["student.logits", "labels"])  # cross-entropy on the batch's labels
