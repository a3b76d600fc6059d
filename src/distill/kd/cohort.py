"""Several models trained in one step, each on its own objective; some learn from others as they train.

A trainable teacher and the students that learn from its current signals (online distillation),
or a chain teacher -> assistant -> student, are members of one `Cohort`. Every member is a
submodule: optimised, checkpointed and resumed with the others. A member's forward runs once per
step; the members that read it (`sources`) get its signals detached, so no gradient flows from a
student into its teacher.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor, nn

from distill.engine import TrainConfig, check_fits, epoch_batches
from distill.errors import ConfigError
from distill.kd.distiller import Distiller, Signals
from distill.kd.objective import Objective, Term


@dataclass
class Member:
    """One trained model of a cohort: its objective, the members it learns from, its learning rate."""

    model: nn.Module
    objective: list[Term]
    sources: list[str] = field(default_factory=list)
    lr: float | None = None  # None: the stage's TrainConfig.lr
    weight_decay: float | None = None  # None: the stage's TrainConfig.weight_decay


class Cohort(nn.Module):
    """`Cohort(batch) -> (sum of the members' losses, {member/term: value})`; members run in the order given.

    `every`: members that learn from others (those with sources) take part in one optimizer step out of
    `every` (ERNIE 3.0 Titan's distillation interval), with every micro-batch of it when the stage
    accumulates `grad_accum` of them, from optimizer step `start` on (students joining a teacher that has
    trained for a while); the others, e.g. a teacher on its own objective, in every step. A
    member left out of a step runs no forward, so its parameters get no gradient and the optimizer leaves
    them be. `forwards` counts each member's training forwards (checkpointed).
    """

    steps: Tensor
    forwards: Tensor

    def __init__(self, members: dict[str, Member], every: int = 1, grad_accum: int = 1, start: int = 0) -> None:
        super().__init__()
        if every < 1 or grad_accum < 1:
            raise ConfigError(
                f"a cohort's distillation interval and accumulation must be >= 1, got {every}, {grad_accum}"
            )
        seen: list[str] = []
        for name, m in members.items():
            late = [s for s in m.sources if s not in seen]
            if late:
                raise ConfigError(f"member {name!r} learns from {late}, which are not members listed before it")
            seen.append(name)
        # what each member must expose to the members that read it
        wanted: dict[str, list[str]] = {n: [] for n in members}
        for m in members.values():
            _, teacher_taps = Objective(m.objective, m.sources).taps()
            for src, taps in teacher_taps.items():
                wanted[src] += taps
        self.sources = {n: list(m.sources) for n, m in members.items()}
        self.options = {
            n: {k: v for k, v in (("lr", m.lr), ("weight_decay", m.weight_decay)) if v is not None}
            for n, m in members.items()
        }
        self.members = nn.ModuleDict(
            {n: Distiller(m.model, m.objective, sources=m.sources, extra_taps=wanted[n]) for n, m in members.items()}
        )
        self.every, self.grad_accum, self.start = every, grad_accum, start
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # micro-batches seen (checkpointed)
        self.register_buffer("forwards", torch.zeros(len(members), dtype=torch.long))

    @property
    def distillers(self) -> dict[str, Distiller]:
        """The members' distillers by name, in order."""
        return cast(dict[str, Distiller], dict(self.members.items()))

    def close(self) -> None:
        """Remove every member's hooks (the engine calls it when the stage ends)."""
        for member in self.distillers.values():
            member.close()

    def forward_counts(self) -> dict[str, int]:
        """Training forwards run by each member so far."""
        return dict(zip(self.members, self.forwards.tolist()))

    @property
    def products(self) -> dict[str, nn.Module]:
        """Each member's model by name: what the stage saves."""
        return {n: d.student for n, d in self.distillers.items()}

    product = products  # the engine's name for it

    def param_groups(self) -> list[dict]:
        groups = []
        for name, d in self.members.items():
            # a learner's lr schedule runs over its own steps (engine.group_lr_lambda): warmup when it joins
            own = {"steps_from": self.start, "steps_every": self.every} if self.sources[name] else {}
            groups.append({"params": [p for p in d.parameters() if p.requires_grad], **self.options[name], **own})
        return groups

    def build(self, batch: dict[str, Tensor]) -> Cohort:
        """Size every member's learned projections on one probe batch (before the optimizer is made; `fit`
        does); a built cohort is left as it is."""
        if all(d._built or not d.objective.learns_projections for d in self.distillers.values()):
            return self  # nothing left to size: no probe forward
        was_training = self.training
        self.eval()  # the probe must not move BatchNorm statistics
        out: dict[str, Signals] = {}
        with torch.no_grad():
            for name, d in self.distillers.items():
                given = {s: out[s] for s in self.sources[name]}
                d.build(batch, given)
                out[name] = _detached(d.signals(batch, given))
        self.train(was_training)
        return self

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        total: Tensor | float = 0.0
        terms: dict[str, Tensor] = {}
        out: dict[str, Signals] = {}
        # an optimizer step in which the members with sources take part: all of its micro-batches, or none
        learning = takes_part(int(self.steps) // self.grad_accum, self.every, self.start)
        self.steps += 1
        for i, (name, d) in enumerate(self.distillers.items()):
            if self.sources[name] and not learning:
                continue
            self.forwards[i] += 1
            signals = d.signals(batch, {s: out[s] for s in self.sources[name]})
            loss, own = d.objective(signals, batch)
            total = total + loss
            terms.update({f"{name}/{k}": v for k, v in own.items()})
            out[name] = _detached(signals)
        return cast(Tensor, total), terms  # the members without sources run every step: a tensor


def _detached(signals: Signals) -> Signals:
    """A member's own signals as its readers get them: no gradient path back into it."""
    return {k: v.detach() if isinstance(v, Tensor) else v for k, v in signals["student"].items()}


def takes_part(step: int, every: int, start: int = 0) -> bool:
    """Whether members with sources take part in optimizer step `step`: one in every `every`, from `start` on."""
    return step >= start and (step - start) % every == 0


def learner_steps(total: int, every: int, start: int = 0) -> int:
    """How many of `total` optimizer steps members with sources take part in."""
    return -(-(total - start) // every)


def learner_batches(n: int, cfg: TrainConfig, seed: int, every: int, start: int = 0, world: int = 1) -> Tensor:
    """Indices of the micro-batches members with sources train on in a cohort's stage (`cfg`, drawn from `seed`),
    in their order and laid out so that an unshuffled stage on every process reads them as they came: the data of
    a baseline that must see what the cohort's learners saw."""
    if cfg.max_steps is None:
        raise ConfigError("a cohort's learner batches need train.max_steps")
    per_epoch = check_fits(n, cfg, "train", world) * cfg.grad_accum  # micro-batches per epoch
    epochs: dict[int, list[list[Tensor]]] = {}
    picked = []  # (micro-batches, ranks) of index batches
    for micro in range(cfg.max_steps * cfg.grad_accum):
        if not takes_part(micro // cfg.grad_accum, every, start):
            continue
        epoch, i = divmod(micro, per_epoch)
        if epoch not in epochs:
            epochs[epoch] = [epoch_batches(n, cfg.batch_size, seed, epoch, r, world) for r in range(world)]
        picked.append(torch.stack([epochs[epoch][r][i] for r in range(world)]))
    return torch.stack(picked).permute(0, 2, 1).reshape(-1)  # rank r reads every world-th item from r on
