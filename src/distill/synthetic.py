"""Small data sets that stand in for big ones: the learnable synthetic set, trajectory matching,
the coreset baselines (random real images, herding), and the evaluation protocol.

`TrajectoryMatcher(batch) -> (loss, terms)` follows the engine's contract, so distillation
trains, checkpoints and resumes through `engine.fit` like any other stage: its "parameters"
are the synthetic pixels and the synthetic step size alpha.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import Tensor, nn
from torch.func import functional_call

from distill.augment import DSAConfig, dsa
from distill.engine import TrainConfig, fit
from distill.errors import DistillError
from distill.evaluate import accuracy
from distill.losses import trajectory_matching
from distill.trajectories import Trajectory


class Classifier(nn.Module):
    """Cross-entropy on DSA-augmented images: the module the engine trains for experts and evaluations.

    `steps` counts training forwards; it is checkpointed with the weights, so an interrupted
    expert knows which epoch it is in when it resumes.
    """

    def __init__(self, net: nn.Module, dsa_cfg: DSAConfig) -> None:
        super().__init__()
        self.net = net
        self.dsa_cfg = dsa_cfg
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        if self.training:
            self.steps += 1
        loss = F.cross_entropy(self.net(dsa(batch["inputs"], self.dsa_cfg)), batch["labels"])
        return loss, {}


class SyntheticSet(nn.Module):
    """`ipc` learnable images per class, their fixed labels, and the learnable step size alpha."""

    def __init__(self, images: Tensor, labels: Tensor, lr: float) -> None:
        super().__init__()
        self.images = nn.Parameter(images.clone())
        self.lr = nn.Parameter(torch.tensor(float(lr)))
        self.register_buffer("labels", labels.clone())


# --- choosing real images -------------------------------------------------------------------
def class_indices(labels: Tensor, num_classes: int, ipc: int) -> list[Tensor]:
    """Indices of each class's images; a clear error when a class has fewer than `ipc`."""
    out = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < ipc:
            raise DistillError(f"ipc {ipc} is more than class {c} has images ({len(idx)}); lower distill.ipc")
        out.append(idx)
    return out


def random_real(labels: Tensor, num_classes: int, ipc: int, generator: torch.Generator) -> Tensor:
    """`ipc` random images of each class, class by class."""
    picks = [
        idx[torch.randperm(len(idx), generator=generator)[:ipc]] for idx in class_indices(labels, num_classes, ipc)
    ]
    return torch.cat(picks)


def herding(features: Tensor, ipc: int) -> Tensor:
    """Welling's herding: greedily pick the samples whose running mean stays closest to the class mean."""
    mu = features.mean(0)
    chosen: list[int] = []
    total = torch.zeros_like(mu)
    available = torch.ones(len(features), dtype=torch.bool)
    for k in range(1, ipc + 1):
        dist = ((mu - (total + features) / k) ** 2).sum(1)
        dist[~available] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        total += features[i]
    return torch.tensor(chosen)


@torch.no_grad()
def herding_select(net: nn.Module, images: Tensor, labels: Tensor, num_classes: int, ipc: int) -> Tensor:
    """Herding per class in the feature space of a trained `net` (the input of its `head`)."""
    if not hasattr(net, "head"):
        raise DistillError("herding needs a model with a `head` module (its input are the features)")
    feats: list[Tensor] = []
    hook = net.head.register_forward_pre_hook(lambda _m, args: feats.append(args[0].flatten(1)))
    net.eval()
    try:
        for chunk in images.split(1000):
            net(chunk)
    finally:
        hook.remove()
    features = torch.cat(feats)
    picks = [idx[herding(features[idx], ipc)] for idx in class_indices(labels, num_classes, ipc)]
    return torch.cat(picks)


# --- trajectory matching -----------------------------------------------------------------------
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


# --- evaluation protocol -------------------------------------------------------------------------
def train_and_test(
    net: nn.Module,
    images: Tensor,
    labels: Tensor,
    lr: float,
    test: dict[str, Tensor],
    *,
    epochs: int,
    batch_size: int,
    dsa_cfg: DSAConfig,
    accelerator: Accelerator,
    seed: int,
) -> float:
    """Train a fresh `net` on a small set (SGD momentum 0.9, weight decay 5e-4, lr x0.1 at half, DSA);
    return its test accuracy. Trains in memory through the engine."""
    if not lr > 0:
        raise DistillError(f"the step size to evaluate with is {lr:.3g}; it must be positive (lower distill.lr_lr)")
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=min(batch_size, len(images)),
        optimizer="sgd",
        lr=lr,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="step",
        progress=False,
    )
    data = {"inputs": images.detach(), "labels": labels}
    with torch.enable_grad():  # also when called from an evaluation hook, which runs under no_grad
        fit(Classifier(net, dsa_cfg), data, cfg, stage="eval", run=None, accelerator=accelerator, seed=seed)
    return accuracy(net, test, accelerator)
