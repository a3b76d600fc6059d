"""Dataset distillation by matching training trajectories (Cazenavette et al., CVPR 2022).

Stages, in order:
    1. data      load the image set, normalise per channel, optionally ZCA-whiten
    2. buffer    train K experts on the real data, saving their parameters after every epoch
    3. distill   learn `ipc` images per class (and a step size alpha) so that N student steps on
                 them from expert epoch t land near expert epoch t+M
    4. evaluate  train fresh nets on the synthetic set, on random real images and on a herding
                 coreset of the same size, and on other architectures; test accuracy mean +- std
    5. outputs   synthetic.safetensors (images, labels, alpha), a grid of the images, the report
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, cast

import torch
from pydantic import Field, model_validator
from safetensors.torch import save
from torch import Tensor
from tqdm.auto import tqdm

from distill.config import Section
from distill.context import Context, Result, RuntimeConfig, stage_seed, start
from distill.data import ImageData, ImageSplits, load_images
from distill.dd import (
    ZCA,
    Classifier,
    DSAConfig,
    SyntheticSet,
    TrajectoryMatcher,
    check_span,
    class_indices,
    evaluate_set,
    herding_select,
    load_buffer,
    random_real,
    save_epoch,
    schedule,
)
from distill.dd.buffer import to_device
from distill.engine import Callbacks, TrainConfig, check_fits, stage_field
from distill.evaluate import accuracy
from distill.models import ModelSpec, build_model, count_parameters
from distill.plots import image_grid
from distill.report import markdown_table
from distill.run import atomic_write

name = "mtt"
CONVNET = {"arch": "dc_convnet", "args": {"width": 128, "depth": 3}}
# how each stage trains by default, as in the paper and the reference code
# fmt: off
EXPERTS = dict(epochs=50, batch_size=256, optimizer="sgd", lr=0.01, momentum=0.0, schedule="constant", log_every=50)
MATCHING = dict(max_steps=5000, batch_size=1, optimizer="sgd", lr=1000.0, momentum=0.5, schedule="constant",
                log_every=10, save_every=50)
PROTOCOL = dict(epochs=1000, batch_size=256, optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4,
                schedule="step", progress=False)
# fmt: on
# The paper's hyperparameters per data set and IPC are named configs: configs/mtt/<set>_ipc<N>.yaml


class BufferConfig(Section):
    """Stage 1: expert trajectories on the real data."""

    experts: int = Field(10, gt=0, description="number of experts K (the paper: 100)")
    train: TrainConfig = stage_field(
        "how each expert trains; its parameters are saved after every epoch (the paper: plain SGD 0.01, 50 epochs)",
        **EXPERTS,
    )
    test_limit: int | None = Field(2000, gt=0, description="test images scored after each expert epoch")
    from_run: str | None = Field(None, description="reuse the finished experts of this run directory")


class DistillConfig(Section):
    """Stage 2: the synthetic set and how it is learned."""

    ipc: int = Field(10, gt=0, description="images per class")
    syn_steps: int = Field(30, gt=0, description="student steps N on synthetic data per iteration")
    expert_epochs: int = Field(2, gt=0, description="M: the target is the expert M epochs after the start")
    max_start_epoch: int = Field(20, gt=0, description="start epochs t are drawn from [0, max_start_epoch)")
    batch_syn: int | None = Field(None, gt=0, description="synthetic images per student step (null: all)")
    lr_lr: float = Field(1e-5, gt=0, description="learning rate of the step size alpha (the pixels' is train.lr)")
    lr_init: float = Field(0.01, gt=0, description="initial alpha (the experts' learning rate)")
    init: Literal["real", "noise"] = Field("real", description="start from random real images or Gaussian noise")
    # default from benchmarks/results/mtt_fmnist.md: as fast as unrolled at a tenth of its memory
    memory: Literal["unrolled", "constant"] = Field(
        "constant",
        description="how the meta-gradient is taken: 'unrolled' keeps all syn_steps student steps' graphs (the "
        "paper's code; memory grows with syn_steps x images per step); 'constant' (TESLA) rebuilds one step's graph "
        "at a time: the same gradient, activation memory independent of syn_steps, a second pass over each step",
    )
    compile: bool = Field(
        False,
        description="torch.compile the per-step derivatives of memory=constant (needs a C++ compiler on the CPU, "
        "Triton on a GPU; the first iteration compiles)",
    )
    soft_labels: bool = Field(
        False,
        description="soft labels for the synthetic images, initialised to the last expert's logits on the initial "
        "images (TESLA's soft label assignment); students and evaluations train on their softmax",
    )
    lr_label: float = Field(
        2.0, ge=0, description="learning rate of the soft labels' logits; 0 keeps TESLA's assigned labels fixed"
    )
    eval_nets: int = Field(1, gt=0, description="networks trained per evaluation during distillation")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(**MATCHING),
        description="the distillation: max_steps iterations, pixels at lr (alpha at lr_lr), SGD momentum 0.5; "
        "eval_every 0 evaluates at the end only",
    )

    @model_validator(mode="after")
    def _iterations(self) -> DistillConfig:
        if self.train.max_steps is None:
            raise ValueError("distill.train.max_steps (the number of iterations) must be set")
        if self.compile and self.memory != "constant":
            raise ValueError(
                "distill.compile needs distill.memory=constant (the unrolled graph's double backward "
                "cannot be compiled)"
            )
        return self


class EvalConfig(Section):
    """Stage 3: the evaluation protocol."""

    nets: int = Field(5, gt=0, description="fresh networks per set and architecture (mean +- std)")
    train: TrainConfig = stage_field(
        "how each fresh net trains on a small set (the MTT code: 1000 epochs); lr is the real-image baselines' (the "
        "synthetic set trains at its learned alpha)",
        **PROTOCOL,
    )
    baselines: list[Literal["random", "herding"]] = Field(["random", "herding"])
    cross_arch: list[ModelSpec] = Field(
        default_factory=lambda: [ModelSpec(arch="mlp", args={"hidden": [128, 128]}), ModelSpec(arch="resnet")],
        description="other architectures the synthetic set is evaluated on",
    )


class Config(Section):
    """`distill mtt`: distill a data set into a few images per class by matching training trajectories."""

    run: RuntimeConfig = Field(default_factory=RuntimeConfig, description="run directory, seed, precision")
    data: ImageData = Field(default_factory=ImageData, description="the real image set")
    zca: bool = Field(False, description="ZCA-whiten the images (inverted for saved and shown images)")
    zca_eps: float = Field(0.1, gt=0, description="ZCA regularisation")
    model: ModelSpec = Field(default_factory=lambda: ModelSpec(**CONVNET), description="experts' and students' net")
    dsa: DSAConfig = Field(default_factory=DSAConfig, description="differentiable Siamese augmentation")
    buffer: BufferConfig = Field(default_factory=BufferConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _span(self) -> Config:
        d, saved = self.distill, self.buffer.train.epochs
        if self.buffer.from_run is None and d.max_start_epoch - 1 + d.expert_epochs > saved:
            raise ValueError(
                f"max_start_epoch {d.max_start_epoch} + expert_epochs {d.expert_epochs} runs past the "
                f"{saved} saved expert epochs (buffer.train.epochs)"
            )
        return self


def run(cfg: Config, resume: str | Path | None = None) -> Result:
    # 1. data, before the run directory exists: a bad path or ipc leaves nothing behind
    data = load_images(cfg.data)
    zca = _whiten(data, cfg) if cfg.zca else None
    class_indices(data.train["labels"], data.num_classes, cfg.distill.ipc)  # a clear error if ipc is too large
    if cfg.buffer.from_run is None:
        check_fits(len(data.train["labels"]), cfg.buffer.train, "buffer.train")
    ctx = start(name, cfg, cfg.run, resume)
    shape = _shape(data)
    device = ctx.accelerator.device

    # 2. expert trajectories
    buffer_run = cfg.buffer.from_run or ctx.run.path
    if cfg.buffer.from_run is None:
        train_experts(ctx, cfg, data, shape)
    net = build_model(cfg.model, **shape).to(device)
    trajectories = load_buffer(buffer_run)
    check_span(trajectories, cfg.distill.max_start_epoch, cfg.distill.expert_epochs, net)

    # 3. distillation
    d = cfg.distill
    seed = ctx.seed_stage("distill")
    init = random_real(data.train["labels"], data.num_classes, d.ipc, torch.Generator().manual_seed(seed))
    images = data.train["inputs"][init] if d.init == "real" else torch.randn_like(data.train["inputs"][init])
    soft = _expert_logits(cfg, shape, trajectories, images) if d.soft_labels else None
    synthetic = SyntheticSet(images, data.train["labels"][init], d.lr_init, soft)
    matcher = TrajectoryMatcher(
        synthetic,
        net,
        to_device(trajectories, device),
        syn_steps=d.syn_steps,
        expert_epochs=d.expert_epochs,
        batch_syn=d.batch_syn or len(images),
        lr_img=d.train.lr,
        lr_lr=d.lr_lr,
        dsa_cfg=cfg.dsa,
        memory=d.memory,
        lr_label=d.lr_label,
        compile=d.compile,
    )

    def evaluate_during(syn: SyntheticSet) -> dict[str, float]:
        accs = _evaluate(
            ctx, cfg, "during", cfg.model, shape, syn.images, syn.targets.detach(), float(syn.lr), data, d.eval_nets
        )
        return {"accuracy": sum(accs) / len(accs)}

    plan = schedule(cast(int, d.train.max_steps), len(trajectories), d.max_start_epoch, seed)
    ctx.fit(matcher, plan, d.train, stage="distill", eval_fn=evaluate_during)
    synthetic = synthetic.cpu()
    alpha = float(synthetic.lr.detach())

    # 4. evaluation: the synthetic set, the baselines at the same size, other architectures
    sets = {"mtt": (synthetic.images.detach(), synthetic.targets.detach(), alpha)}
    labels = data.train["labels"]
    if "random" in cfg.eval.baselines:
        idx = random_real(labels, data.num_classes, d.ipc, torch.Generator().manual_seed(stage_seed(seed, "random")))
        sets["random real"] = (data.train["inputs"][idx], labels[idx], cfg.eval.train.lr)
    if "herding" in cfg.eval.baselines:
        expert = _last_expert(cfg, shape, trajectories)
        idx = herding_select(expert, data.train["inputs"], labels, data.num_classes, d.ipc)
        sets["herding"] = (data.train["inputs"][idx], labels[idx], cfg.eval.train.lr)
    jobs = [(n, cfg.model) for n in sets] + [("mtt", spec) for spec in cfg.eval.cross_arch]
    rows = []
    for set_name, spec in tqdm(jobs, desc="evaluate", disable=not ctx.accelerator.is_main_process):
        rows.append(_evaluation_row(ctx, cfg, set_name, spec, shape, sets[set_name], data))

    # 5. outputs
    pixels = data.pixels(zca.inverse(synthetic.images.detach()) if zca else synthetic.images.detach())
    tensors: dict[str, Tensor] = {
        "images": synthetic.images,
        "pixels": pixels,
        "labels": synthetic.labels,
        "lr": synthetic.lr,
        "init_index": init,  # which training images the set started from (its provenance)
        **({"soft_labels": synthetic.soft} if synthetic.soft is not None else {}),  # logits; train on softmax
    }
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    if ctx.run.is_main:
        atomic_write(ctx.run.path / "synthetic.safetensors", save(tensors))
        image_grid(ctx.run.path / "plots" / "synthetic.png", pixels, synthetic.labels, data.classes)
    info = {
        "ipc": d.ipc,
        "iterations": d.train.max_steps,
        "experts": len(trajectories),
        "expert_epochs_saved": len(trajectories[0]) - 1,
        "learned_lr": alpha,
        "seed": cfg.run.seed,
    }
    return ctx.finish(
        rows,
        figures=["plots/synthetic.png"],
        products={"synthetic": "synthetic.safetensors"},
        info=info,
    )


def train_experts(ctx: Context, cfg: Config, data: ImageSplits, shape: dict[str, int]) -> None:
    """Stage 1: K experts, each a resumable engine stage whose parameters are saved after every epoch."""
    test = {k: v[: cfg.buffer.test_limit] for k, v in data.test.items()}
    for k in range(cfg.buffer.experts):
        stage = f"buffer/expert-{k:03d}"
        ctx.seed_stage(stage)
        net = build_model(cfg.model, **shape)
        if ctx.run.is_main:
            save_epoch(ctx.run.path, k, 0, net)  # the initialisation: identical on every (re)start

        def record(trained: torch.nn.Module, epoch: int, k: int = k) -> None:
            if ctx.run.is_main:
                save_epoch(ctx.run.path, k, epoch, trained)

        ctx.fit(
            Classifier(net, cfg.dsa),
            data.train,
            cfg.buffer.train,
            stage=stage,
            eval_fn=lambda trained: {"accuracy": accuracy(trained, test, ctx.accelerator)},
            callbacks=Callbacks(on_epoch_end=record),
        )


def _evaluate(ctx, cfg, tag, spec, shape, images, labels, lr, data, nets) -> list[float]:
    """Fresh nets of `spec` trained on one small set at step size `lr`; seeds derived from the set's tag."""
    return evaluate_set(
        spec,
        shape,
        images,
        labels,
        data.test,
        cfg.eval.train.model_copy(update={"lr": lr}),
        nets=nets,
        dsa_cfg=cfg.dsa,
        accelerator=ctx.accelerator,
        seed=stage_seed(cfg.run.seed, f"evaluate/{tag}"),
    )


def _evaluation_row(ctx, cfg, set_name, spec, shape, the_set, data) -> dict[str, Any]:
    """One row of the result table; saved as it is made so a resumed run does not repeat it."""
    arch = spec.arch if not spec.args else f"{spec.arch}({','.join(f'{k}={v}' for k, v in spec.args.items())})"
    images, labels, lr = the_set

    def row() -> dict[str, Any]:
        t = torch.tensor(_evaluate(ctx, cfg, set_name, spec, shape, images, labels, lr, data, cfg.eval.nets))
        return {
            "set": set_name,
            "model": arch,
            "images": len(labels),
            "params": count_parameters(build_model(spec, **shape)),
            "lr": round(lr, 6),
            "test_accuracy": round(float(t.mean()), 4),
            "std": round(float(t.std()) if len(t) > 1 else 0.0, 4),
            "nets": len(t),
        }

    return ctx.once(f"evaluation/{set_name.replace(' ', '_')}--{arch}", row)


def _last_expert(cfg: Config, shape: dict[str, int], trajectories: list) -> torch.nn.Module:
    """The first expert at its last saved epoch: herding's feature extractor, soft labels' initialiser."""
    expert = build_model(cfg.model, **shape)
    expert.load_state_dict({k: v.cpu() for k, v in trajectories[0][-1].items()}, strict=False)
    return expert.eval()


def _expert_logits(cfg: Config, shape: dict[str, int], trajectories: list, images: torch.Tensor) -> torch.Tensor:
    """TESLA's soft-label initialisation: a trained expert's logits on the initial images."""
    with torch.no_grad():
        return _last_expert(cfg, shape, trajectories)(images)


def _whiten(data: ImageSplits, cfg: Config) -> ZCA:
    zca = ZCA.fit(data.train["inputs"], cfg.zca_eps)
    data.train["inputs"], data.test["inputs"] = zca(data.train["inputs"]), zca(data.test["inputs"])
    return zca


def _shape(data: ImageSplits) -> dict[str, int]:
    c, h, w = data.image_shape
    return {"in_channels": c, "num_classes": data.num_classes, "image_size": h, "in_features": c * h * w}


def table(result: Result) -> str:
    """The evaluation rows as a markdown table."""
    i = result.info
    lines = [
        f"ipc {i['ipc']}, {i['iterations']} iterations, {i['experts']} experts, learned alpha {i['learned_lr']:.4g}",
        "",
    ]
    columns = ["set", "model", "images", "test_accuracy", "std", "nets"]
    return "\n".join(lines) + "\n" + markdown_table(result.rows, columns)
