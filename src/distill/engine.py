"""THE training loop. Every recipe trains through `fit`; nothing else owns a loop.

The module passed in maps a batch (a dict of tensors) to `(loss, {term: value})`; `fit` handles
devices and processes (Hugging Face accelerate), mixed precision, gradient accumulation and
clipping, warmup + decay schedules, evaluation, logging, progress, atomic checkpoints with RNG
state, and exact resume: an interrupted-and-resumed run matches an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sized
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
from accelerate import Accelerator
from pydantic import Field, ValidationInfo, field_validator
from safetensors.torch import load_model
from torch import Tensor, nn
from tqdm.auto import tqdm

from distill.checkpoint import (
    checkpoints,
    latest_intact_checkpoint,
    load_model_state,
    load_optimizer_state,
    product_files,
    save_checkpoint,
    save_products,
    set_rng_state,
    shard_frozen,
    sharded,
)
from distill.config import Section
from distill.errors import ConfigError, DistillError
from distill.meter import Window, postfix
from distill.optim import group_lr_lambda, lr_lambda, make_optimizer, optimizer_class, schedule_function
from distill.run import RunDir

__all__ = [
    "Callbacks",
    "Data",
    "TrainConfig",
    "Trainable",
    "check_fits",
    "checkpoints",
    "epoch_batches",
    "fit",
    "lr_lambda",
]

Data = Mapping[str, Tensor] | torch.utils.data.Dataset


class Trainable(Protocol):
    """What `fit` trains: a module that maps a batch to (loss, {term: value}). Optional, each found by name:
    product (what the stage delivers and saves; default: the trainable itself), build(probe) (sizes learned
    parts from a probe batch before the optimizer exists; called again on a built one, it changes nothing),
    param_groups() (its own optimizer groups), place_frozen(place) (puts each frozen model it holds, e.g. a
    teacher, where `place` returns it: sharded under FSDP), close()
    (removes the forward hooks it put on its models; called when the stage ends)."""

    def __call__(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]: ...


class Wrapping(nn.Module):
    """A trainable around one model (a loss on its outputs): the model is what its stage delivers and saves."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def product(self) -> nn.Module:
        return self.model


# what a stage delivers: one model, or several named ones (e.g. a trainable teacher and its students)
Product = nn.Module | Mapping[str, nn.Module]
EvalFn = Callable[[Any], dict[str, float]]  # called with the trainable's product, whichever kind it is


@dataclass
class Callbacks:
    """Named hooks of a fit; each receives the stage's product (never the training wrapper).

    on_step(product, step)              after every optimizer step
    on_eval(product, step, metrics)     after every evaluation
    on_epoch_end(product, epoch)        when an epoch's last step is done (epoch counts from 1), before
                                        any checkpoint of that step: a checkpoint implies the hook ran
    on_save(product, step)              after a checkpoint is written (main process)
    """

    on_step: Callable[[Any, int], None] | None = None
    on_eval: Callable[[Any, int, dict[str, float]], None] | None = None
    on_epoch_end: Callable[[Any, int], None] | None = None
    on_save: Callable[[Any, int], None] | None = None


class TrainConfig(Section):
    """How one stage trains."""

    epochs: int = Field(1, gt=0, description="passes over the training data (ignored if max_steps is set)")
    max_steps: int | None = Field(None, gt=0, description="optimizer steps; overrides epochs")
    batch_size: int = Field(128, gt=0, description="samples per process per micro-batch")
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    optimizer: str = Field(
        "adamw", description="adamw, sgd, or an optimizer class by dotted path (e.g. torch.optim.RAdam)"
    )
    optimizer_args: dict[str, Any] = Field(
        default_factory=dict, description="further keyword arguments of an optimizer given by dotted path"
    )
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="decoupled (adamw) or L2 (sgd) weight decay")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd momentum / adamw beta1")
    nesterov: bool = Field(False, description="sgd: Nesterov momentum")
    schedule: str = Field(
        "cosine",
        description="decay after warmup: constant, linear, cosine, step (x0.1 from half the steps on), or a function "
        "of the progress after warmup (0 to 1) giving the lr multiplier, by dotted path",
    )
    warmup_steps: int = Field(0, ge=0, description="linear warmup steps")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="final lr as a fraction of the peak")
    clip_grad_norm: float | None = Field(
        None, gt=0, description="clip the grad norm (null: off); per group when the model owns its optimizer groups"
    )
    shuffle: bool = Field(True, description="draw each epoch's batches in a seeded random order (false: in order)")
    log_every: int = Field(50, gt=0, description="steps between metrics records")
    eval_every: int = Field(0, ge=0, description="steps between evaluations (0: end of each epoch)")
    save_every: int = Field(0, ge=0, description="steps between checkpoints (0: end of each epoch)")
    keep_checkpoints: int = Field(2, gt=0, description="checkpoints kept per stage")
    progress: bool = Field(True, description="show a progress bar")

    @field_validator("optimizer", "schedule")
    @classmethod
    def _importable(cls, name: str, info: ValidationInfo) -> str:
        try:  # one line naming the field now, not an error when the stage starts
            (optimizer_class if info.field_name == "optimizer" else schedule_function)(name)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return name


def stage_field(description: str, **defaults: Any) -> Any:
    """A config field holding one stage's TrainConfig, with these defaults."""
    return Field(default_factory=lambda: TrainConfig(**defaults), description=description)


# --- pieces -------------------------------------------------------------------------------
def check_fits(n: int, cfg: TrainConfig, where: str, world: int = 1) -> int:
    """Optimizer steps per epoch of `n` samples (as many as epoch_batches yields); a clear error for none.

    Recipes call it for every stage before any work, so a batch larger than the data fails at once.
    """
    steps = (n // world) // cfg.batch_size // cfg.grad_accum
    if steps == 0:
        raise DistillError(
            f"{where}: {n} samples make no full step of batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum}"
            f" x {world} processes; lower its batch_size"
        )
    return steps


def data_len(data: Data) -> int:
    return len(next(iter(data.values()))) if isinstance(data, Mapping) else len(cast(Sized, data))


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1, shuffle: bool = True
) -> list[Tensor]:
    """This process's index batches for an epoch: a seeded permutation (or 0..n-1 in order), sharded, last
    partial dropped."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
    per_rank = n // world
    shard = perm[rank : per_rank * world : world]
    full = len(shard) // batch_size * batch_size
    return list(shard[:full].split(batch_size)) if full else []


def take(data: Data, idx: Tensor) -> dict[str, Tensor]:
    if isinstance(data, Mapping):
        return {k: v[idx] for k, v in data.items()}
    return torch.utils.data.default_collate([data[int(i)] for i in idx])


# --- the loop -----------------------------------------------------------------------------
def fit(
    model: Trainable,
    data: Data,
    cfg: TrainConfig,
    *,
    stage: str,
    run: RunDir | None,
    accelerator: Accelerator,
    seed: int,
    eval_fn: EvalFn | None = None,
    callbacks: Callbacks | None = None,
    product: Product | None = None,
) -> dict[str, float]:
    """Train `model` on `data`; return the last evaluation's metrics.

    `product` is what the stage delivers (default: `model.product`, else `model`): one module, saved as
    `<stage>/model.safetensors`, or several named ones, each saved as `<stage>/<name>.safetensors`.
    `eval_fn` and the callbacks receive the product. A stage already finished in this run is
    loaded, not retrained; a stage with a checkpoint continues from it. With `run=None` the stage
    trains in memory only (no checkpoints, logs or saved weights), e.g. for evaluation protocols.
    `model` is a `Trainable`: besides its forward it may say what it delivers (`product`, the default of
    the argument), size its learned parts on a probe batch that `fit` draws before the optimizer exists
    (`build`), own its optimizer groups (`param_groups()`, e.g. two learning rates), and remove the forward
    hooks it put on its models when the stage ends (`close()`).
    """
    product = product if product is not None else getattr(model, "product", cast(nn.Module, model))
    if run is not None and (run.path / stage / "done.json").exists():
        for path, module in product_files(run, stage, product):
            load_model(module, str(path), device=str(accelerator.device))
        if hasattr(model, "close"):
            model.close()
        return run.read_json(f"{stage}/done.json")["metrics"]
    s = _Stage(model, data, cfg, stage, run, accelerator, seed, eval_fn, callbacks or Callbacks(), product)
    s.restore()
    while s.step < s.total:
        epoch, skip = divmod(s.step, s.steps_per_epoch)
        batches = epoch_batches(s.n, cfg.batch_size, seed, epoch, s.rank, s.world, cfg.shuffle)
        batches = batches[skip * cfg.grad_accum : s.steps_per_epoch * cfg.grad_accum]
        for micro, idx in enumerate(batches, start=1):
            s.forward_backward(idx, last_micro=micro % cfg.grad_accum == 0)
            if micro % cfg.grad_accum:
                continue
            s.optimizer_step()
            s.log(epoch)
            s.evaluate_and_save(epoch)
            if s.step >= s.total:
                break
    return s.finish()


class _Stage:
    """One stage in training: its sizes, optimizer and schedule, progress bar and log window, and the
    pieces of `fit`'s loop (restore, one micro-batch, one optimizer step, log, evaluate-and-save, finish)."""

    def __init__(self, model, data, cfg, stage, run, accelerator, seed, eval_fn, hooks, product) -> None:
        self.model, self.data, self.cfg, self.stage = model, data, cfg, stage
        self.run, self.accelerator = run, accelerator
        self.eval_fn, self.hooks, self.product = eval_fn, hooks, product
        self.world, self.rank, self.n = accelerator.num_processes, accelerator.process_index, data_len(data)
        self.steps_per_epoch = check_fits(self.n, cfg, stage, self.world)
        self.total = cfg.max_steps or self.steps_per_epoch * cfg.epochs
        self.per_step = cfg.batch_size * cfg.grad_accum * self.world  # samples per optimizer step
        self.eval_every = cfg.eval_every or self.steps_per_epoch
        self.save_every = cfg.save_every or self.steps_per_epoch
        model.to(accelerator.device)
        if hasattr(model, "build"):  # learned parts sized by one probe batch, before the optimizer is made
            model.build({k: v.to(accelerator.device) for k, v in _probe(data).items()})
        self.groups = model.param_groups() if hasattr(model, "param_groups") else None
        optimizer = make_optimizer(self.groups or [p for p in model.parameters() if p.requires_grad], cfg)
        lambdas = [group_lr_lambda(cfg, self.total, g) for g in optimizer.param_groups]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        self.wrapped, self.optimizer = accelerator.prepare(model, optimizer)
        if sharded(accelerator) and hasattr(model, "place_frozen"):  # frozen models sit outside its parameters
            model.place_frozen(lambda frozen: shard_frozen(accelerator, frozen))
        self.step, self.metrics = 0, cast(dict[str, float], {})

    def restore(self) -> None:
        """Continue from the stage's latest intact checkpoint, if any (every process reads the same one)."""
        run, state = self.run, None
        if run is not None:
            state = latest_intact_checkpoint(run, self.stage, self.accelerator.is_main_process)
        if state is None and run is not None:
            run.truncate_metrics(self.stage, 0)  # killed before its first checkpoint: the stage starts over
        if state is not None:
            load_model_state(self.accelerator, self.wrapped, state["model"])
            load_optimizer_state(self.accelerator, self.wrapped, self.optimizer, state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.step, self.metrics = state["step"], state.get("metrics", {})
            set_rng_state(state["processes"][self.rank]["rng"])
            run.truncate_metrics(self.stage, self.step)
        show = self.cfg.progress and self.accelerator.is_main_process
        self.bar = tqdm(total=self.total, initial=self.step, desc=self.stage, disable=not show, dynamic_ncols=True)
        self.window = Window(state["processes"][self.rank]["window"] if state is not None else None)
        self.wrapped.train()

    def forward_backward(self, idx: Tensor, last_micro: bool) -> None:
        accelerator = self.accelerator
        batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in take(self.data, idx).items()}
        with accelerator.no_sync(self.wrapped) if not last_micro and self.world > 1 else nullcontext():
            with accelerator.autocast():
                loss, terms = self.wrapped(batch)
            accelerator.backward(loss / self.cfg.grad_accum)
        tokens = batch["input_ids"].numel() * self.world if "input_ids" in batch else 0
        self.window.add(loss, terms, len(idx) * self.world, tokens)

    def optimizer_step(self) -> None:
        if self.cfg.clip_grad_norm:  # per optimizer group when the model declares them (a cohort: per member)
            for group in self.optimizer.param_groups if self.groups else [{"params": list(self.wrapped.parameters())}]:
                self.accelerator.clip_grad_norm_(group["params"], self.cfg.clip_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.bar.update(1)
        if self.hooks.on_step:
            self.hooks.on_step(self.product, self.step)

    def _record(self, epoch: int, values: dict[str, float]) -> None:
        self.run.log(
            {
                "stage": self.stage,
                "step": self.step,
                "epoch": epoch,
                "samples_seen": self.step * self.per_step,
                **values,
            }
        )

    def log(self, epoch: int) -> None:
        if self.run is None or (self.step % self.cfg.log_every and self.step != self.total):
            return
        record = self.window.flush(self.accelerator)
        record.update(lr=float(self.scheduler.get_last_lr()[0]))
        self.bar.set_postfix(**postfix(record))
        self._record(epoch, record)

    def evaluate_and_save(self, epoch: int) -> None:
        step, hooks, paused = self.step, self.hooks, False  # evaluating and saving are not training throughput
        if self.eval_fn is not None and (step % self.eval_every == 0 or step == self.total):
            paused = True
            self.metrics = _evaluate(self.wrapped, self.accelerator, self.eval_fn, self.product)
            if self.run is not None:
                self._record(epoch, {f"eval/{k}": v for k, v in self.metrics.items()})
            self.bar.set_postfix(**{k: f"{v:.4f}" for k, v in self.metrics.items()})
            if hooks.on_eval:
                hooks.on_eval(self.product, step, self.metrics)
        if hooks.on_epoch_end and step % self.steps_per_epoch == 0:
            paused = True
            hooks.on_epoch_end(self.product, step // self.steps_per_epoch)
        if self.run is not None and step % self.save_every == 0 and step < self.total:
            paused = True
            save_checkpoint(
                self.run,
                self.stage,
                step,
                self.wrapped,
                self.optimizer,
                self.scheduler,
                self.metrics,
                self.accelerator,
                self.cfg.keep_checkpoints,
                self.window,
            )
            if hooks.on_save and self.accelerator.is_main_process:
                hooks.on_save(self.product, step)
        if paused:
            self.window.restart()

    def finish(self) -> dict[str, float]:
        self.bar.close()
        if self.run is not None:
            save_products(self.run, self.stage, self.product, self.wrapped, self.accelerator)
            self.run.write_json(f"{self.stage}/done.json", {"step": self.step, "metrics": self.metrics})
            self.accelerator.wait_for_everyone()
        if hasattr(self.wrapped, "unshard"):  # FSDP2: the product is used after the stage (evaluated, sampled)
            self.wrapped.unshard()
        if hasattr(self.model, "close"):
            self.model.close()
        return self.metrics


def _probe(data: Data) -> dict[str, Tensor]:
    """The first two samples, drawn outside the training batches (only their shapes matter)."""
    if isinstance(data, Mapping):
        return {k: v[:2] for k, v in data.items()}
    return torch.utils.data.default_collate([data[i] for i in range(min(2, data_len(data)))])


def _evaluate(wrapped: nn.Module, accelerator: Accelerator, eval_fn: EvalFn, product: Product) -> dict[str, float]:
    module = accelerator.unwrap_model(wrapped)
    module.eval()
    with torch.no_grad(), _whole(wrapped):
        metrics = eval_fn(product)
    module.train()
    return metrics


@contextmanager
def _whole(wrapped: nn.Module):
    """Under FSDP2 the product is called on its own, outside the wrapper's forward: gather the wrapper's own
    (root) parameters first; the product's layers gather theirs in their own hooks."""
    if not hasattr(wrapped, "unshard"):
        yield
        return
    fsdp: Any = wrapped  # FSDP2's wrapper class is made at run time
    fsdp.unshard()
    try:
        yield
    finally:
        fsdp.reshard()
