"""Classic teacher -> student knowledge distillation on images.

Stages, in order:
    1. data      load the image set (Fashion-MNIST by default)
    2. teachers  train each teacher with the engine (cross-entropy), or load its checkpoint
    3. baseline  optionally, the student alone with the same budget (for the comparison)
    4. student   train the student on the objective: any weighted mix of logit and feature terms
    5. report    test accuracy and parameter counts of everyone, results.json, report.md
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from torch import nn

from distill.config import Section
from distill.data import ImageData, ImageSplits, load_images
from distill.engine import TrainConfig, check_fits
from distill.evaluate import accuracy
from distill.kd import Distiller, Term, Terms, check_refs
from distill.models import ModelSpec, build_model, check_accepts, count_parameters
from distill.recipe import Context, Result, RuntimeConfig, start

name = "kd"
CE = Term(name="ce", loss="ce", inputs=["student.logits", "labels"])


class TeacherConfig(Section):
    """A teacher: its network, and how to train it when no checkpoint is given."""

    name: str = Field("teacher", description="name used in objective inputs: teacher[NAME].<tap>")
    model: ModelSpec = Field(
        default_factory=lambda: ModelSpec(arch="convnet", args={"channels": [32, 64, 128]}),
        description="the teacher network (model.checkpoint skips its training)",
    )
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(epochs=2, lr=2e-3, weight_decay=5e-4),
        description="how the teacher is trained when it has no checkpoint",
    )


class Config(Section):
    """`distill kd`: train teacher(s), then distill a student on the objective."""

    run: RuntimeConfig = Field(default_factory=RuntimeConfig, description="run directory, seed, precision")
    data: ImageData = Field(default_factory=ImageData, description="the image data set")
    teachers: list[TeacherConfig] = Field(
        default_factory=lambda: [TeacherConfig()], description="zero or more teachers"
    )
    student: ModelSpec = Field(
        default_factory=lambda: ModelSpec(arch="convnet", args={"channels": [8, 16, 32]}),
        description="the student network",
    )
    objective: Terms = Field(
        default_factory=lambda: [
            Term(
                name="kd", loss="kl", weight=0.9, inputs=["student.logits", "teacher.logits"], args={"temperature": 4.0}
            ),
            CE.model_copy(update={"weight": 0.1}),
        ],
        description="loss terms of the student",
    )
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(epochs=2, lr=2e-3, weight_decay=5e-4), description="how the student trains"
    )
    baseline: bool = Field(False, description="also train the student alone (cross-entropy, same budget)")
    eval_batch_size: int = Field(1000, gt=0, description="batch size of test-set evaluation")

    @model_validator(mode="after")
    def _names(self) -> Config:
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be unique, got {names}")
        problem = check_refs(self.objective, names)
        if problem:
            raise ValueError(problem)
        return self


def run(cfg: Config, resume: str | Path | None = None) -> Result:
    data = load_images(cfg.data)  # before the run directory exists: a bad path leaves nothing behind
    shape = {"num_classes": data.num_classes, "in_channels": data.image_shape[0]}
    check(cfg, data, shape)
    ctx = start(name, cfg, cfg.run, resume)

    def evaluate(model: nn.Module) -> dict[str, float]:
        return {"accuracy": accuracy(model, data.test, ctx.accelerator, cfg.eval_batch_size)}

    rows: list[dict[str, Any]] = []
    teachers: dict[str, nn.Module] = {}
    for spec in cfg.teachers:
        stage = _teacher_stage(spec.name)
        ctx.seed_stage(stage)
        model = build_model(spec.model, **shape)
        if spec.model.checkpoint:
            acc = evaluate(model.to(ctx.accelerator.device))["accuracy"]
        else:
            acc = train_supervised(ctx, model, data.train, spec.train, stage, evaluate)["accuracy"]
        teachers[spec.name] = model
        rows.append(_row(stage.replace("-", " "), model, acc))

    if cfg.baseline:
        ctx.seed_stage("student/init")  # the same initial weights as the distilled student
        alone = build_model(cfg.student, **shape)
        acc = train_supervised(ctx, alone, data.train, cfg.train, "student-alone", evaluate)["accuracy"]
        rows.append(_row("student alone", alone, acc))

    ctx.seed_stage("student/init")
    student = build_model(cfg.student, **shape)
    distiller = Distiller(student, cfg.objective, teachers).to(ctx.accelerator.device)
    distiller.build(_probe(data.train, cfg.train.batch_size, ctx))
    metrics = ctx.fit(distiller, data.train, cfg.train, stage="student", eval_fn=evaluate, product=student)
    rows.append(_row("student KD" if teachers else "student", student, metrics["accuracy"]))

    info = {"epochs": cfg.train.epochs, "teacher_epochs": [t.train.epochs for t in cfg.teachers], "seed": cfg.run.seed}
    products = {"student": "student/model.safetensors"}
    trained = [t.name for t in cfg.teachers if not t.model.checkpoint]
    products.update({t: f"{_teacher_stage(t)}/model.safetensors" for t in trained})
    return ctx.finish(Result(name, ctx.run.path, rows, products=products, info=info))


def check(cfg: Config, data: ImageSplits, shape: dict[str, int]) -> None:
    """What would fail after minutes of training fails now: nets that do not take the images, batches
    larger than the data."""
    sample = data.train["inputs"][:2]
    nets = [("student", cfg.student)] + [(f"teachers.{i}.model", t.model) for i, t in enumerate(cfg.teachers)]
    for where, spec in nets:
        check_accepts(build_model(spec, **shape), sample, f"{where} ({spec.arch})")
    stages = [("train", cfg.train)] + [(f"teachers.{i}.train", t.train) for i, t in enumerate(cfg.teachers)
                                       if not t.model.checkpoint]  # fmt: skip
    for where, tcfg in stages:
        check_fits(len(data.train["labels"]), tcfg, where)


def train_supervised(
    ctx: Context, model: nn.Module, train: dict, tcfg: TrainConfig, stage: str, evaluate
) -> dict[str, float]:
    """A plain supervised run of the same engine: the objective is cross-entropy alone."""
    return ctx.fit(Distiller(model, [CE]), train, tcfg, stage=stage, eval_fn=evaluate, product=model)


def _teacher_stage(name: str) -> str:
    return "teacher" if name == "teacher" else f"teacher-{name}"


def _probe(train: dict, batch_size: int, ctx: Context) -> dict:
    return {k: v[: min(batch_size, 8)].to(ctx.accelerator.device) for k, v in train.items()}


def _row(name: str, model: nn.Module, acc: float) -> dict[str, Any]:
    return {"model": name, "params": count_parameters(model), "test_accuracy": round(acc, 4)}


def table(result: Result) -> str:
    """The result rows as a markdown table."""
    lines = ["| model | params | test accuracy |", "|---|---:|---:|"]
    lines += [f"| {r['model']} | {r['params']:,} | {r['test_accuracy']:.4f} |" for r in result.rows]
    return "\n".join(lines)
