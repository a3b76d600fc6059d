"""A trainable teacher and two students in one fit: run as a script, so a test can SIGKILL it.

python tests/cohort_job.py RUN_DIR
"""

from __future__ import annotations

import sys

import torch
from accelerate import Accelerator
from torch import nn

from distill.engine import TrainConfig, fit
from distill.kd import Cohort, Member, Term
from distill.run import RunDir

CE = Term(name="ce", loss="ce", inputs=["student.logits", "labels"])
KD = Term(name="kd", loss="kl", inputs=["student.logits", "teacher.logits"], args={"temperature": 2.0})
HINT = Term(name="hint", loss="hint", inputs=["student.0", "teacher.0"])  # student width 8 -> teacher 32


def data(n: int = 256) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    return {"inputs": x, "labels": (x[:, 0] > 0).long() + (x[:, 1] > 0).long()}


def net(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, width), nn.ReLU(), nn.Dropout(0.1), nn.Linear(width, 3))


def cohort() -> Cohort:
    members = {
        "teacher": Member(net(32, 0), [CE]),
        "small": Member(net(8, 1), [KD, CE, HINT], sources=["teacher"], lr=3e-3),
        "tiny": Member(net(4, 2), [KD], sources=["teacher"]),
    }
    return Cohort(members).build({k: v[:8] for k, v in data().items()})


CONFIG = TrainConfig(max_steps=400, batch_size=16, lr=1e-2, save_every=10, log_every=3, progress=False)


def main(path: str) -> None:
    model = cohort()
    fit(model, data(), CONFIG, stage="online", run=RunDir(path), accelerator=Accelerator(cpu=True), seed=3,
        product=model.products)  # fmt: skip


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1])
