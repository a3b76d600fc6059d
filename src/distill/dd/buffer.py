"""Expert trajectories for trajectory matching: a network trained on real data, its parameters saved
after every epoch (epoch 0 = the initialisation), one safetensors shard per epoch.

Layout inside a run: `buffer/expert-000/epoch-0000.safetensors ... epoch-00EE.safetensors`, next to
the engine's own `done.json` for the expert's stage.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn

from distill.errors import DistillError
from distill.run import atomic_write

Trajectory = list[dict[str, Tensor]]


def expert_dir(run_path: str | Path, k: int) -> Path:
    return Path(run_path) / "buffer" / f"expert-{k:03d}"


def save_epoch(run_path: str | Path, k: int, epoch: int, model: nn.Module) -> None:
    params = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters()}
    atomic_write(expert_dir(run_path, k) / f"epoch-{epoch:04d}.safetensors", save(params))


def load_trajectory(folder: Path) -> Trajectory:
    files = sorted(folder.glob("epoch-*.safetensors"))
    if [int(f.stem.split("-")[1]) for f in files] != list(range(len(files))):
        raise DistillError(f"{folder} has a gap in its epochs: {[f.name for f in files]}")
    return [load_file(str(f)) for f in files]


def load_buffer(run_path: str | Path) -> list[Trajectory]:
    """Every finished expert trajectory of a run."""
    root = Path(run_path) / "buffer"
    folders = sorted(d for d in root.glob("expert-*") if (d / "done.json").exists())
    if not folders:
        raise DistillError(f"{root} holds no finished expert trajectories; run the buffer stage first")
    trajectories = [load_trajectory(d) for d in folders]
    if len({len(t) for t in trajectories}) != 1:
        raise DistillError(f"the experts in {root} were saved for different numbers of epochs")
    return trajectories


def check_span(trajectories: list[Trajectory], max_start_epoch: int, expert_epochs: int, model: nn.Module) -> None:
    """A clear error when start epochs + expert_epochs run past the saved trajectories, or they do not fit the net."""
    saved = len(trajectories[0]) - 1  # epochs after the initialisation
    if max_start_epoch - 1 + expert_epochs > saved:
        raise DistillError(
            f"distill.max_start_epoch {max_start_epoch} + expert_epochs {expert_epochs} needs epoch "
            f"{max_start_epoch - 1 + expert_epochs}, but the trajectories stop at epoch {saved}; lower them "
            "or train longer experts (buffer.epochs)"
        )
    want = {n: tuple(p.shape) for n, p in model.named_parameters()}
    have = {n: tuple(p.shape) for n, p in trajectories[0][0].items()}
    if want != have:
        diff = sorted(set(want.items()) ^ set(have.items()))[:3]
        raise DistillError(f"the expert trajectories do not fit the model (e.g. {diff}); use the same model spec")


def to_device(trajectories: list[Trajectory], device: torch.device) -> list[Trajectory]:
    return [[{n: p.to(device) for n, p in epoch.items()} for epoch in t] for t in trajectories]
