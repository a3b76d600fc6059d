"""A tiny classifier trained through the engine, each process saving its own copy of the weights.

python tests/ddp_job.py OUT BATCH_SIZE              (one process)
accelerate launch ... tests/ddp_job.py OUT BATCH    (several: BATCH per process)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import save_file
from torch import nn

from distill.engine import TrainConfig, fit
from distill.kd import Distiller, Term
from distill.run import RunDir


def initial() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))  # no dropout, no batch norm


def main(out: Path, batch_size: int) -> None:
    accelerator = Accelerator(cpu=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 6, generator=g)
    data = {"inputs": x, "labels": (x[:, 0] > 0).long() + (x[:, 1] > 0).long()}
    net = initial()
    cfg = TrainConfig(max_steps=6, batch_size=batch_size, optimizer="sgd", lr=0.2, schedule="constant", progress=False)
    run = RunDir(out / f"run-{accelerator.num_processes}", accelerator.is_main_process)
    fit(Distiller(net, [Term(name="ce", loss="ce", inputs=["student.logits", "labels"])]), data, cfg, stage="s",
        run=run, accelerator=accelerator, seed=0, product=net)  # fmt: skip
    weights = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    save_file(weights, str(out / f"rank-{accelerator.process_index}-of-{accelerator.num_processes}.safetensors"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]), int(sys.argv[2]))
