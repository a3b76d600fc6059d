"""Trajectory matching (Cazenavette et al., CVPR 2022): student steps on the synthetic set from an
expert's epoch t should land near its epoch t+M.

`TrajectoryMatcher(batch) -> (loss, terms)` follows the engine's contract, so distillation trains,
checkpoints and resumes through `engine.fit` like any other stage: its "parameters" are the
synthetic pixels, the synthetic step size alpha and, optionally, learned soft labels.

Two ways to get the meta-gradient, equal up to floating-point rounding:
- `unrolled` keeps the graph of all N student steps until one backward pass (the paper's code):
  memory grows with N x images per step;
- `constant` (TESLA, Cui et al., ICML 2023) runs the N steps without a graph, keeping only each
  step's parameters, then walks back from the last step, rebuilding one step's graph at a time
  and carrying the adjoint dL/dtheta_i. Activation memory is one step's, whatever N is; the price
  is a second forward and backward pass of each step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import torch
from torch import Tensor, nn
from torch.func import functional_call

from distill.dd.augment import DSAConfig, dsa
from distill.dd.buffer import Trajectory
from distill.dd.synthetic import SyntheticSet, cross_entropy
from distill.losses import trajectory_matching

Memory = Literal["unrolled", "constant"]


class StudentNet:
    """The student's cross-entropy as a function of its parameters, and the two per-step derivatives
    that the constant-memory pass needs, optionally through `torch.compile`, whose fused kernels for
    the second-order pass (mostly instance norm's) made an iteration 1.2-1.4x faster on 2 CPU cores
    after a one-off compilation of 1-2 minutes (benchmarks/results/mtt_fmnist.md)."""

    def __init__(self, net: nn.Module, names: list[str], compile: bool = False) -> None:
        self.net, self.names, self.compiled = net, names, compile

        def ce(params: list[Tensor], x: Tensor, t: Tensor) -> Tensor:
            return cross_entropy(functional_call(net, dict(zip(names, params)), (x,)), t)

        def dot(params: list[Tensor], x: Tensor, t: Tensor, lam: list[Tensor]) -> Tensor:
            grads = torch.func.grad(ce)(params, x, t)
            return sum((g * a).sum() for g, a in zip(grads, lam))

        self.ce = ce
        if compile:
            self._grad = torch.compile(torch.func.grad(ce))
            self._vjp = {
                soft: torch.compile(torch.func.grad_and_value(dot, argnums=(0, 1, 2) if soft else (0, 1)))
                for soft in (False, True)
            }

    def grad(self, params: list[Tensor], x: Tensor, t: Tensor) -> list[Tensor]:
        """d ce / d params."""
        if self.compiled:
            return self._grad(params, x, t)
        with torch.enable_grad():
            leaves = [p.detach().requires_grad_(True) for p in params]
            return list(torch.autograd.grad(self.ce(leaves, x, t), leaves))

    def vjp(self, params: list[Tensor], x: Tensor, t: Tensor, lam: list[Tensor], soft: bool):
        """The gradient of <d ce / d params, lam> with respect to params, x (and soft targets t), and its value."""
        if self.compiled:
            return self._vjp[soft](params, x, t, lam)
        with torch.enable_grad():
            leaves = [p.detach().requires_grad_(True) for p in params]
            x, t = x.detach().requires_grad_(True), t.detach().requires_grad_(soft)
            grads = torch.autograd.grad(self.ce(leaves, x, t), leaves, create_graph=True)
            dot = cast(Tensor, sum((g * a).sum() for g, a in zip(grads, lam)))
            back = torch.autograd.grad(dot, [*leaves, x, *([t] if soft else [])])
        return (back[: len(leaves)], *back[len(leaves) :]), dot.detach()


@dataclass
class StudentSteps:
    """N SGD steps of the student on the synthetic set: each step's mini-batch and augmentation seed are
    drawn up front (from torch's global stream), so a step can be replayed exactly."""

    student: StudentNet
    plan: list[tuple[Tensor, int]]
    dsa_cfg: DSAConfig

    @classmethod
    def draw(
        cls, student: StudentNet, n: int, steps: int, batch_size: int, dsa_cfg: DSAConfig, device: torch.device
    ) -> StudentSteps:
        """Mini-batches walk through random permutations of the set, as in the paper."""
        plan: list[tuple[Tensor, int]] = []
        chunks: list[Tensor] = []
        for _ in range(steps):
            if not chunks:
                chunks = list(torch.randperm(n).split(batch_size))
            plan.append((chunks.pop().to(device), int(torch.randint(2**62, ()))))
        return cls(student, plan, dsa_cfg)

    def inputs(self, i: int, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Step i's augmented images and their targets (class indices or soft-label logits)."""
        idx, seed = self.plan[i]
        return dsa(images[idx], self.dsa_cfg, torch.Generator().manual_seed(seed)), targets[idx]


def unroll(
    steps: StudentSteps, start: list[Tensor], images: Tensor, targets: Tensor, lr: Tensor, memory: Memory = "unrolled"
) -> list[Tensor]:
    """The student's parameters after the steps, differentiable in images, soft targets and lr."""
    if memory == "constant":
        return list(_ConstantMemory.apply(steps, images, targets, lr, *start))
    params = [p.detach().clone().requires_grad_(True) for p in start]
    for i in range(len(steps.plan)):
        loss = steps.student.ce(params, *steps.inputs(i, images, targets))
        grads = torch.autograd.grad(loss, params, create_graph=True)
        params = [p - lr * g for p, g in zip(params, grads)]
    return params


class _ConstantMemory(torch.autograd.Function):
    """The unrolled meta-gradient by reverse accumulation, one step's graph at a time."""

    @staticmethod
    def forward(ctx, steps: StudentSteps, images: Tensor, targets: Tensor, lr: Tensor, *start: Tensor):
        params, trajectory = [p.detach() for p in start], []
        for i in range(len(steps.plan)):
            trajectory.append(params)
            grads = steps.student.grad(params, *steps.inputs(i, images, targets))
            params = [p - lr * g for p, g in zip(params, grads)]
        ctx.steps, ctx.trajectory = steps, trajectory
        ctx.save_for_backward(images, targets, lr)
        return tuple(params)

    @staticmethod
    def backward(ctx, *adjoint: Tensor):
        images, targets, lr = ctx.saved_tensors
        soft = targets.is_floating_point() and ctx.needs_input_grad[2]
        alpha, lam = lr.detach(), list(adjoint)  # lam: dL/dtheta_{i+1}
        d_images, d_targets, d_lr = torch.zeros_like(images), torch.zeros_like(targets) if soft else None, 0.0
        for i in reversed(range(len(ctx.steps.plan))):
            with torch.enable_grad():  # the augmentation's graph, to carry d/dx back to the images
                leaf = images.detach().requires_grad_(True)
                x, t = ctx.steps.inputs(i, leaf, targets.detach())
            # theta_{i+1} = theta_i - lr * g(theta_i, x, t): the vector-Jacobian product with lam
            back, dot = ctx.steps.student.vjp(ctx.trajectory[i], x.detach(), t, lam, soft)
            d_lr = d_lr - dot
            d_images -= alpha * torch.autograd.grad(x, leaf, back[1])[0]
            if d_targets is not None:  # soft labels learn
                d_targets.index_add_(0, ctx.steps.plan[i][0], -alpha * back[2])
            lam = [a - alpha * b for a, b in zip(lam, back[0])]
        ctx.trajectory = None  # free the stored parameters
        return None, d_images, d_targets, d_lr, *([None] * len(lam))


class TrajectoryMatcher(nn.Module):
    """One MTT iteration per batch: `batch["expert"]`, `batch["start"]` pick theta*_t and theta*_{t+M}."""

    def __init__(
        self,
        synthetic: SyntheticSet,
        net: nn.Module,
        trajectories: list[Trajectory],
        *,
        syn_steps: int,
        expert_epochs: int,
        batch_syn: int,
        lr_img: float,
        lr_lr: float,
        dsa_cfg: DSAConfig,
        memory: Memory = "unrolled",
        lr_label: float | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.synthetic = synthetic
        names = list(trajectories[0][0])  # the parameters the experts saved, in their order
        # a template for functional_call: not trained, not saved (a list hides it from the module tree)
        self._student = [StudentNet(net.requires_grad_(False), names, compile)]
        self.trajectories = trajectories
        self.syn_steps, self.expert_epochs, self.batch_syn = syn_steps, expert_epochs, batch_syn
        self.lr_img, self.lr_lr, self.lr_label = lr_img, lr_lr, lr_label
        self.dsa_cfg, self.memory = dsa_cfg, memory
        if synthetic.soft is not None and not lr_label:
            synthetic.soft.requires_grad_(False)  # assigned, not learned: no gradient to take

    @property
    def product(self) -> nn.Module:
        """The synthetic set: what the stage learns and saves."""
        return self.synthetic

    def param_groups(self) -> list[dict]:
        groups = [
            {"params": [self.synthetic.images], "lr": self.lr_img},
            {"params": [self.synthetic.lr], "lr": self.lr_lr},
        ]
        if self.synthetic.soft is not None and self.lr_label:
            groups.append({"params": [self.synthetic.soft], "lr": self.lr_label})
        return groups

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        trajectory = self.trajectories[int(batch["expert"][0])]
        t = int(batch["start"][0])
        start, target = trajectory[t], trajectory[t + self.expert_epochs]
        syn, names = self.synthetic, self._student[0].names
        steps = StudentSteps.draw(
            self._student[0], len(syn.images), self.syn_steps, self.batch_syn, self.dsa_cfg, syn.images.device
        )
        end = unroll(steps, [start[n] for n in names], syn.images, syn.targets, syn.lr, self.memory)
        loss = trajectory_matching(end, [start[n] for n in names], [target[n] for n in names])
        return loss, {"param/syn_lr": syn.lr.detach()}


def schedule(iterations: int, experts: int, max_start_epoch: int, seed: int) -> dict[str, Tensor]:
    """The (expert, start epoch) of every iteration, drawn up front from the run's seed."""
    g = torch.Generator().manual_seed(seed)
    return {
        "expert": torch.randint(experts, (iterations,), generator=g),
        "start": torch.randint(max_start_epoch, (iterations,), generator=g),
    }
