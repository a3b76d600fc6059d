"""Trajectory matching (Cazenavette et al., CVPR 2022): student steps on the synthetic set from an
expert's epoch t should land near its epoch t+M.

`TrajectoryMatcher(batch) -> (loss, terms)` follows the engine's contract, so distillation trains,
checkpoints and resumes through `engine.fit` like any other stage: its "parameters" are the
synthetic pixels and the synthetic step size alpha.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from distill.dd.augment import DSAConfig, dsa
from distill.dd.buffer import Trajectory
from distill.dd.synthetic import SyntheticSet
from distill.losses import trajectory_matching


def unroll(
    net: nn.Module,
    start: dict[str, Tensor],
    images: Tensor,
    labels: Tensor,
    lr: Tensor,
    steps: int,
    batch_size: int,
    dsa_cfg: DSAConfig,
) -> dict[str, Tensor]:
    """`steps` SGD steps of `net` from `start` on the synthetic images, differentiable in images and lr.

    Mini-batches walk through random permutations of the set, as in the paper.
    """
    params = {n: p.detach().clone().requires_grad_(True) for n, p in start.items()}
    chunks: list[Tensor] = []
    for _ in range(steps):
        if not chunks:
            chunks = list(torch.randperm(len(images)).to(images.device).split(batch_size))
        idx = chunks.pop()
        logits = functional_call(net, params, (dsa(images[idx], dsa_cfg),))
        loss = F.cross_entropy(logits, labels[idx])
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        params = {n: p - lr * g for (n, p), g in zip(params.items(), grads)}
    return params


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
    ) -> None:
        super().__init__()
        self.synthetic = synthetic
        self._net = [net.requires_grad_(False)]  # a template for functional_call: not trained, not saved
        self.trajectories = trajectories
        self.syn_steps, self.expert_epochs, self.batch_syn = syn_steps, expert_epochs, batch_syn
        self.lr_img, self.lr_lr = lr_img, lr_lr
        self.dsa_cfg = dsa_cfg

    def param_groups(self) -> list[dict]:
        return [
            {"params": [self.synthetic.images], "lr": self.lr_img},
            {"params": [self.synthetic.lr], "lr": self.lr_lr},
        ]

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        trajectory = self.trajectories[int(batch["expert"][0])]
        t = int(batch["start"][0])
        start, target = trajectory[t], trajectory[t + self.expert_epochs]
        syn = self.synthetic
        end = unroll(self._net[0], start, syn.images, syn.labels, syn.lr, self.syn_steps, self.batch_syn, self.dsa_cfg)
        names = list(start)
        loss = trajectory_matching([end[n] for n in names], [start[n] for n in names], [target[n] for n in names])
        return loss, {"param/syn_lr": syn.lr.detach()}


def schedule(iterations: int, experts: int, max_start_epoch: int, seed: int) -> dict[str, Tensor]:
    """The (expert, start epoch) of every iteration, drawn up front from the run's seed."""
    g = torch.Generator().manual_seed(seed)
    return {
        "expert": torch.randint(experts, (iterations,), generator=g),
        "start": torch.randint(max_start_epoch, (iterations,), generator=g),
    }
