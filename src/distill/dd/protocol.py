"""The evaluation protocol of dataset distillation: fresh networks trained on a small set (SGD with
momentum, weight decay, a tenfold lr drop at half, DSA), scored on the real test set. The same
module trains the experts of the buffer."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torch import Tensor, nn

from distill.dd.augment import DSAConfig, dsa
from distill.dd.synthetic import cross_entropy
from distill.engine import TrainConfig, Wrapping, fit
from distill.errors import DistillError
from distill.evaluate import accuracy
from distill.models import ModelSpec, build_model


class Classifier(Wrapping):
    """Cross-entropy on DSA-augmented images: the module the engine trains for experts and evaluations.
    Float labels of shape (N, classes) are soft-label logits: the target is their softmax."""

    def __init__(self, net: nn.Module, dsa_cfg: DSAConfig) -> None:
        super().__init__(net)
        self.dsa_cfg = dsa_cfg

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return cross_entropy(self.model(dsa(batch["inputs"], self.dsa_cfg)), batch["labels"]), {}


def train_and_test(
    net: nn.Module,
    images: Tensor,
    labels: Tensor,
    test: dict[str, Tensor],
    cfg: TrainConfig,
    *,
    dsa_cfg: DSAConfig,
    accelerator: Accelerator,
    seed: int,
) -> float:
    """Train a fresh `net` on a small set as `cfg` says (in memory, through the engine); its test accuracy."""
    if not cfg.lr > 0:
        raise DistillError(f"the step size to evaluate with is {cfg.lr:.3g}; it must be positive (lower distill.lr_lr)")
    cfg = cfg.model_copy(update={"batch_size": min(cfg.batch_size, len(images))})
    data = {"inputs": images.detach(), "labels": labels}
    with torch.enable_grad():  # also when called from an evaluation hook, which runs under no_grad
        fit(Classifier(net, dsa_cfg), data, cfg, stage="eval", run=None, accelerator=accelerator, seed=seed)
    return accuracy(net, test, accelerator)


def evaluate_set(
    spec: ModelSpec,
    shape: dict[str, int],
    images: Tensor,
    labels: Tensor,
    test: dict[str, Tensor],
    cfg: TrainConfig,
    *,
    nets: int,
    dsa_cfg: DSAConfig,
    accelerator: Accelerator,
    seed: int,
) -> list[float]:
    """Test accuracies of `nets` fresh networks of `spec` trained on a small set; their randomness is
    their own (forked), so evaluating never moves the run's random streams."""
    images, labels = images.to(accelerator.device), labels.to(accelerator.device)
    accs = []
    for i in range(nets):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + i)
            net = build_model(spec, **shape)
            accs.append(
                train_and_test(net, images, labels, test, cfg, dsa_cfg=dsa_cfg, accelerator=accelerator, seed=seed + i)
            )
    return accs
