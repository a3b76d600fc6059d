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

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from safetensors.torch import save
from tqdm.auto import tqdm

from distill.augment import DSAConfig
from distill.config import Section
from distill.data import ImageData, ImageSplits, load_images
from distill.data.zca import ZCA
from distill.engine import TrainConfig, fit
from distill.evaluate import accuracy
from distill.models import ModelSpec, build_model, count_parameters
from distill.plots import image_grid
from distill.recipes.common import Context, RuntimeConfig, start
from distill.run import atomic_write
from distill.synthetic import (
    Classifier,
    SyntheticSet,
    TrajectoryMatcher,
    class_indices,
    herding_select,
    random_real,
    schedule,
    train_and_test,
)
from distill.trajectories import check_span, load_buffer, save_epoch, to_device

CONVNET = {"arch": "dc_convnet", "args": {"width": 128, "depth": 3}}


def _preset(source: str, zca: bool, ipc: int, n: int, m: int, t: int, lr_img: float, lr_lr: float) -> dict[str, Any]:
    distill = dict(ipc=ipc, syn_steps=n, expert_epochs=m, max_start_epoch=t, lr_img=lr_img, lr_lr=lr_lr, lr_init=0.01)
    return {"data": {"source": source}, "zca": zca, "distill": distill}


# The paper's hyperparameters (its appendix table and the reference code's commands): synthetic steps N,
# expert epochs M, max start epoch T+, pixel lr, step-size lr; alpha starts at 0.01. The paper gives
# none for Fashion-MNIST: those reuse the reference code's CIFAR-10 settings without ZCA.
# fmt: off
PRESETS = {
    #                          source        zca  ipc  N   M  T+   lr_img  lr_lr
    "cifar10-ipc1":   _preset("cifar10",       True,  1, 50, 2,  2,   100, 1e-7),
    "cifar10-ipc10":  _preset("cifar10",       True, 10, 30, 2, 20,   1e5, 1e-4),
    "cifar10-ipc50":  _preset("cifar10",       True, 50, 30, 2, 40,   100, 1e-5),
    "cifar100-ipc1":  _preset("cifar100",      True,  1, 20, 3, 20,  1000, 1e-5),
    "cifar100-ipc10": _preset("cifar100",     False, 10, 20, 2, 20,  1000, 1e-5),
    "fmnist-ipc1":    _preset("fashion_mnist", False,  1, 50, 2,  2,  1000, 1e-7),
    "fmnist-ipc10":   _preset("fashion_mnist", False, 10, 30, 2, 20,  1000, 1e-5),
}
# fmt: on


class BufferConfig(Section):
    """Stage 1: expert trajectories on the real data."""

    experts: int = Field(10, gt=0, description="number of experts K (the paper: 100)")
    epochs: int = Field(50, gt=0, description="epochs per expert, each saved (as the paper)")
    lr: float = Field(0.01, gt=0, description="expert SGD learning rate (no momentum, no weight decay)")
    batch_size: int = Field(256, gt=0)
    test_limit: int | None = Field(2000, gt=0, description="test images scored after each expert epoch")
    from_run: str | None = Field(None, description="reuse the finished experts of this run directory")


class DistillConfig(Section):
    """Stage 2: the synthetic set and how it is learned."""

    ipc: int = Field(10, gt=0, description="images per class")
    iterations: int = Field(5000, gt=0, description="distillation iterations")
    syn_steps: int = Field(30, gt=0, description="student steps N on synthetic data per iteration")
    expert_epochs: int = Field(2, gt=0, description="M: the target is the expert M epochs after the start")
    max_start_epoch: int = Field(20, gt=0, description="start epochs t are drawn from [0, max_start_epoch)")
    batch_syn: int | None = Field(None, gt=0, description="synthetic images per student step (null: all)")
    lr_img: float = Field(1000.0, gt=0, description="SGD learning rate of the pixels")
    lr_lr: float = Field(1e-5, gt=0, description="SGD learning rate of the step size alpha")
    lr_init: float = Field(0.01, gt=0, description="initial alpha (the experts' learning rate)")
    momentum: float = Field(0.5, ge=0, lt=1, description="SGD momentum of pixels and alpha")
    init: Literal["real", "noise"] = Field("real", description="start from random real images or Gaussian noise")
    log_every: int = Field(10, gt=0)
    eval_every: int = Field(0, ge=0, description="iterations between evaluations of the set (0: at the end only)")
    eval_nets: int = Field(1, gt=0, description="networks trained per evaluation during distillation")
    save_every: int = Field(50, gt=0, description="iterations between checkpoints")


class EvalConfig(Section):
    """Stage 3: the evaluation protocol."""

    nets: int = Field(5, gt=0, description="fresh networks per set and architecture (mean +- std)")
    epochs: int = Field(1000, gt=0, description="training epochs on the small set (the MTT code: 1000)")
    batch_size: int = Field(256, gt=0)
    baseline_lr: float = Field(0.01, gt=0, description="lr for the real-image baselines (no learned alpha)")
    baselines: list[Literal["random", "herding"]] = Field(default_factory=lambda: ["random", "herding"])
    cross_arch: list[ModelSpec] = Field(
        default_factory=lambda: [ModelSpec(arch="mlp", args={"hidden": [128, 128]}), ModelSpec(arch="resnet")],
        description="other architectures the synthetic set is evaluated on",
    )


class Config(Section):
    """`distill mtt`: distill a data set into a few images per class by matching training trajectories."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = PRESETS

    preset: str | None = Field(None, description=f"named hyperparameters: {sorted(PRESETS)}")
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
        d = self.distill
        if self.buffer.from_run is None and d.max_start_epoch - 1 + d.expert_epochs > self.buffer.epochs:
            raise ValueError(
                f"max_start_epoch {d.max_start_epoch} + expert_epochs {d.expert_epochs} runs past the "
                f"{self.buffer.epochs} saved expert epochs (buffer.epochs)"
            )
        return self


def run(cfg: Config, resume: str | Path | None = None) -> dict[str, Any]:
    # 1. data, before the run directory exists: a bad path or ipc leaves nothing behind
    data = load_images(cfg.data)
    zca = _whiten(data, cfg) if cfg.zca else None
    class_indices(data.train["labels"], data.num_classes, cfg.distill.ipc)  # a clear error if ipc is too large
    ctx = start("mtt", cfg, cfg.run, resume)
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
    seed = ctx.seed_stage(10_000)
    init = random_real(data.train["labels"], data.num_classes, d.ipc, torch.Generator().manual_seed(seed))
    images = data.train["inputs"][init] if d.init == "real" else torch.randn_like(data.train["inputs"][init])
    synthetic = SyntheticSet(images, data.train["labels"][init], d.lr_init)
    matcher = TrajectoryMatcher(
        synthetic,
        net,
        to_device(trajectories, device),
        syn_steps=d.syn_steps,
        expert_epochs=d.expert_epochs,
        batch_syn=d.batch_syn or len(images),
        lr_img=d.lr_img,
        lr_lr=d.lr_lr,
        dsa_cfg=cfg.dsa,
    )
    tcfg = TrainConfig(
        max_steps=d.iterations,
        batch_size=1,
        optimizer="sgd",
        lr=d.lr_img,
        momentum=d.momentum,
        schedule="constant",
        log_every=d.log_every,
        eval_every=d.eval_every or d.iterations,
        save_every=d.save_every,
    )

    def evaluate_during(module: TrajectoryMatcher) -> dict[str, float]:
        syn = module.synthetic
        accs = evaluate_set(
            ctx, cfg, cfg.model, shape, syn.images, syn.labels, float(syn.lr.detach()), data, d.eval_nets
        )
        return {"accuracy": sum(accs) / len(accs)}

    plan = schedule(d.iterations, len(trajectories), d.max_start_epoch, seed)
    fit(matcher, plan, tcfg, stage="distill", run=ctx.run, accelerator=ctx.accelerator, seed=seed,
        eval_fn=evaluate_during, product=synthetic)  # fmt: skip
    synthetic = synthetic.cpu()
    alpha = float(synthetic.lr.detach())

    # 4. evaluation: the synthetic set, the baselines at the same size, other architectures
    sets = {"mtt": (synthetic.images.detach(), synthetic.labels, alpha)}
    labels = data.train["labels"]
    if "random" in cfg.eval.baselines:
        idx = random_real(labels, data.num_classes, d.ipc, torch.Generator().manual_seed(seed + 1))
        sets["random real"] = (data.train["inputs"][idx], labels[idx], cfg.eval.baseline_lr)
    if "herding" in cfg.eval.baselines:
        expert = build_model(cfg.model, **shape)
        expert.load_state_dict(trajectories[0][-1], strict=False)
        idx = herding_select(expert, data.train["inputs"], labels, data.num_classes, d.ipc)
        sets["herding"] = (data.train["inputs"][idx], labels[idx], cfg.eval.baseline_lr)
    jobs = [(name, cfg.model) for name in sets] + [("mtt", spec) for spec in cfg.eval.cross_arch]
    rows = []
    for name, spec in tqdm(jobs, desc="evaluate", disable=not ctx.accelerator.is_main_process):
        rows.append(_evaluation_row(ctx, cfg, name, spec, shape, sets[name], data))

    # 5. outputs
    pixels = data.pixels(zca.inverse(synthetic.images.detach()) if zca else synthetic.images.detach())
    tensors = {"images": synthetic.images, "pixels": pixels, "labels": synthetic.labels, "lr": synthetic.lr}
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    if ctx.run.is_main:
        atomic_write(ctx.run.path / "synthetic.safetensors", save(tensors))
        image_grid(ctx.run.path / "plots" / "synthetic.png", pixels, synthetic.labels, data.classes)
    result = {
        "recipe": "mtt",
        "run_dir": str(ctx.run.path),
        "rows": rows,
        "ipc": d.ipc,
        "iterations": d.iterations,
        "experts": len(trajectories),
        "expert_epochs_saved": len(trajectories[0]) - 1,
        "learned_lr": alpha,
        "figures": ["plots/synthetic.png"],
        "seed": cfg.run.seed,
    }
    return ctx.finish(result)


def train_experts(ctx: Context, cfg: Config, data: ImageSplits, shape: dict[str, int]) -> None:
    """Stage 1: K experts, each a resumable engine stage whose per-epoch parameters are saved."""
    b = cfg.buffer
    tcfg = TrainConfig(epochs=b.epochs, batch_size=b.batch_size, optimizer="sgd", lr=b.lr, momentum=0.0,
                       schedule="constant", log_every=50)  # fmt: skip
    test = {k: v[: b.test_limit] for k, v in data.test.items()}
    steps_per_epoch = len(data.train["labels"]) // ctx.accelerator.num_processes // b.batch_size
    for k in range(b.experts):
        seed = ctx.seed_stage(1000 * (k + 1))
        net = build_model(cfg.model, **shape)
        model = Classifier(net, cfg.dsa)
        if ctx.run.is_main:
            save_epoch(ctx.run.path, k, 0, net)  # the initialisation: identical on every (re)start

        def record(module: Classifier, k: int = k) -> dict[str, float]:
            epoch = int(module.steps) // steps_per_epoch
            if ctx.run.is_main:
                save_epoch(ctx.run.path, k, epoch, module.net)
            return {"accuracy": accuracy(module.net, test, ctx.accelerator)}

        fit(model, data.train, tcfg, stage=f"buffer/expert-{k:03d}", run=ctx.run, accelerator=ctx.accelerator,
            seed=seed, eval_fn=record, product=net)  # fmt: skip


def evaluate_set(ctx, cfg, spec, shape, images, labels, lr, data, nets: int, seed: int = 0) -> list[float]:
    """Test accuracies of `nets` fresh networks trained on a small set; randomness apart from the run's."""
    accs = []
    images, labels = images.to(ctx.accelerator.device), labels.to(ctx.accelerator.device)
    for i in range(nets):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.run.seed * 7919 + seed * 101 + i)
            net = build_model(spec, **shape)
            test_acc = train_and_test(
                net,
                images,
                labels,
                lr,
                data.test,
                epochs=cfg.eval.epochs,
                batch_size=cfg.eval.batch_size,
                dsa_cfg=cfg.dsa,
                accelerator=ctx.accelerator,
                seed=cfg.run.seed + i,
            )
        accs.append(test_acc)
    return accs


def _evaluation_row(ctx, cfg, name, spec, shape, the_set, data) -> dict[str, Any]:
    """One row of the result table; saved as it is made so a resumed run does not repeat it."""
    arch = spec.arch if not spec.args else f"{spec.arch}({','.join(f'{k}={v}' for k, v in spec.args.items())})"
    path = ctx.run.path / "evaluation" / f"{name.replace(' ', '_')}--{arch}.json"
    if path.exists():
        return json.loads(path.read_text())
    images, labels, lr = the_set
    accs = evaluate_set(ctx, cfg, spec, shape, images, labels, lr, data, cfg.eval.nets, seed=len(name))
    t = torch.tensor(accs)
    row = {
        "set": name,
        "model": arch,
        "images": len(labels),
        "params": count_parameters(build_model(spec, **shape)),
        "lr": round(lr, 6),
        "test_accuracy": round(float(t.mean()), 4),
        "std": round(float(t.std()) if len(t) > 1 else 0.0, 4),
        "nets": len(accs),
    }
    if ctx.run.is_main:
        atomic_write(path, json.dumps(row))
    return row


def _whiten(data: ImageSplits, cfg: Config) -> ZCA:
    zca = ZCA.fit(data.train["inputs"], cfg.zca_eps)
    data.train["inputs"], data.test["inputs"] = zca(data.train["inputs"]), zca(data.test["inputs"])
    return zca


def _shape(data: ImageSplits) -> dict[str, int]:
    c, h, w = data.image_shape
    return {"in_channels": c, "num_classes": data.num_classes, "image_size": h, "in_features": c * h * w}


def table(result: dict[str, Any]) -> str:
    """The evaluation rows as a markdown table."""
    lines = [
        f"ipc {result['ipc']}, {result['iterations']} iterations, {result['experts']} experts, "
        f"learned alpha {result['learned_lr']:.4g}",
        "",
        "| set | model | images | test accuracy | std | nets |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['set']} | {r['model']} | {r['images']} | {r['test_accuracy']:.4f} | {r['std']:.4f} | {r['nets']} |"
        for r in result["rows"]
    ]
    return "\n".join(lines)
