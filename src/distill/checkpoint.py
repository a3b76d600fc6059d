"""What the training loop saves and restores: checkpoints with RNG state (written atomically, each
with a checksum), and the weights of a stage's product. Under FSDP (accelerate's configuration)
every state dict is gathered whole from the shards, so checkpoints and products are the same
files with or without sharding, and a run may resume on another number of processes.
"""

from __future__ import annotations

import hashlib
import io
import random
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object
from safetensors.torch import load_model, save_file, save_model
from torch import nn

from distill.run import RunDir, atomic_write

if TYPE_CHECKING:
    from distill.meter import Window


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoints(run: RunDir, stage: str) -> list[Path]:
    return sorted((run.path / "checkpoints" / stage).glob("step-*.pt"))


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def latest_intact_checkpoint(run: RunDir, stage: str, speak: bool = True) -> dict[str, Any] | None:
    """The newest checkpoint of `stage` whose bytes match the checksum written with it, loaded.

    A truncated or corrupt newest checkpoint is passed over, with one line saying so.
    """
    skipped: list[str] = []
    state = None
    for path in reversed(checkpoints(run, stage)):
        data = path.read_bytes()
        sums = _checksum_path(path)
        if not sums.is_file() or sums.read_text().strip() != hashlib.sha256(data).hexdigest():
            skipped.append(path.name)
            continue
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
        break
    if skipped and speak:
        to = f"resuming from {path.name}" if state is not None else "starting the stage over"
        print(f"distill: {stage}: checkpoint {', '.join(skipped)} is truncated or corrupt; {to}", file=sys.stderr)
    return state


def save_checkpoint(
    run: RunDir,
    stage: str,
    step: int,
    wrapped: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    metrics: dict[str, float],
    accelerator: Accelerator,
    keep: int,
    window: Window,
) -> None:
    """The stage's state at `step` (model, optimizer, schedule, every process's random streams and log window),
    written atomically with a checksum after it; only the last `keep` are kept."""
    # per process: its random streams, and the loss sums since its last log record (so that a resumed run
    # logs the same averages as an uninterrupted one, whatever the checkpoint's place between two logs)
    mine = {"rng": rng_state(), "window": window.state()}
    own = gather_object([mine]) if accelerator.num_processes > 1 else [mine]
    model, optim = model_state(accelerator, wrapped), optimizer_state(accelerator, wrapped, optimizer)
    if not accelerator.is_main_process:
        return
    state = {
        "model": model,
        "optimizer": optim,
        "scheduler": scheduler.state_dict(),
        "step": step,
        "metrics": metrics,
        "processes": own,
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    path = run.path / "checkpoints" / stage / f"step-{step:08d}.pt"
    atomic_write(path, buf.getvalue())
    atomic_write(_checksum_path(path), hashlib.sha256(buf.getvalue()).hexdigest() + "\n")  # written after: proof
    for old in checkpoints(run, stage)[:-keep]:
        old.unlink(missing_ok=True)
        _checksum_path(old).unlink(missing_ok=True)


# --- sharded (FSDP) or not: whole state dicts ------------------------------------------------------
def sharded(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def shard_frozen(accelerator: Accelerator, model: nn.Module) -> nn.Module:
    """A frozen model (a teacher) sharded as the student is, by accelerate's own FSDP preparation (FSDP2's
    `prepare()` wants an optimizer, which a frozen model has not)."""
    if accelerator.is_fsdp2:
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        return fsdp2_prepare_model(accelerator, model)
    return accelerator.prepare_model(model)


def whole_copy(module: nn.Module, weights: Path) -> nn.Module:
    """An unsharded copy of an HF model whose whole weights were saved at `weights` (for exporting it)."""
    copy = type(module)(module.config)
    load_model(copy, str(weights))
    return copy.eval()


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def model_state(accelerator: Accelerator, wrapped: nn.Module) -> dict[str, Any]:
    """The whole model's state dict (gathered on the main process under FSDP: a collective call)."""
    if not sharded(accelerator):
        return accelerator.unwrap_model(wrapped).state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(wrapped, options=_options(cpu_offload=True))


def load_model_state(accelerator: Accelerator, wrapped: nn.Module, state: dict[str, Any]) -> None:
    if not sharded(accelerator):
        accelerator.unwrap_model(wrapped).load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(wrapped, state, options=_options())


def optimizer_state(accelerator: Accelerator, wrapped: nn.Module, optimizer) -> dict[str, Any]:
    if not sharded(accelerator):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(wrapped, optimizer.optimizer, options=_options(cpu_offload=True))


def load_optimizer_state(accelerator: Accelerator, wrapped: nn.Module, optimizer, state: dict[str, Any]) -> None:
    if not sharded(accelerator):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(wrapped, optimizer.optimizer, state, options=_options())


def product_files(run: RunDir, stage: str, product) -> list[tuple[Path, nn.Module]]:
    if isinstance(product, nn.Module):
        return [(run.path / stage / "model.safetensors", product)]
    return [(run.path / stage / f"{name}.safetensors", module) for name, module in product.items()]


def save_products(run: RunDir, stage: str, product, wrapped: nn.Module, accelerator: Accelerator) -> None:
    """Each product module's weights as safetensors (main process; atomic). Under FSDP the shards are
    gathered first and each module's part is cut out of the whole by its place in the wrapped model."""
    files = product_files(run, stage, product)
    full = model_state(accelerator, wrapped) if sharded(accelerator) else None
    if not accelerator.is_main_process:
        return
    where = {id(m): n for n, m in accelerator.unwrap_model(wrapped).named_modules()}
    for out, module in files:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        if full is None:
            save_model(module, str(tmp))
        else:
            prefix = where[id(module)] + "." if where.get(id(module)) else ""
            seen, tensors = set(), {}
            for name, p in module.named_parameters(remove_duplicate=False):  # tied weights are stored once
                if id(p) not in seen:
                    seen.add(id(p))
                    tensors[name] = full[prefix + name].contiguous()
            for name, _ in module.named_buffers():
                if prefix + name in full:
                    tensors[name] = full[prefix + name].contiguous()
            save_file(tensors, str(tmp))
        tmp.replace(out)
