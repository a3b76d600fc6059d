"""Classic teacher -> student knowledge distillation on images.

Stages, in order:
    1. data      load the image set (Fashion-MNIST by default)
    2. teachers  train each teacher with the engine (cross-entropy), or load its checkpoint
    3. signals   optionally (teacher_signals=precomputed), every training image's teacher signals, computed once
    4. baseline  optionally, the student alone with the same budget (for the comparison)
    5. hints     optionally (hint_stage), FitNets' first stage: the student's layers up to each hinted tap
                 and the regressors learn the hint terms alone
    6. student   train the student on the objective (after a hint stage: its other terms)
    7. report    test (and validation) accuracy and parameter counts of everyone, results.json, report.md
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from torch import nn

from distill.config import Section
from distill.context import Context, Result, RuntimeConfig, start
from distill.data import ImageData, ImageSplits, load_images
from distill.engine import TrainConfig, check_fits
from distill.evaluate import accuracy
from distill.kd import (
    CE,
    Distiller,
    Objective,
    TeacherSignals,
    Term,
    Terms,
    check_refs,
    precompute_signals,
    read_precomputed,
    supervised,
)
from distill.models import ModelSpec, build_model, check_accepts, count_parameters
from distill.report import markdown_table

name = "kd"


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
                name="kd", loss="kl", weight=0.9, inputs=["student.logits", "teacher.logits"], args={"temperature": 1.0}
            ),
            CE.model_copy(update={"weight": 0.1}),
        ],
        description="loss terms of the student",
    )
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(epochs=2, lr=2e-3, weight_decay=5e-4), description="how the student trains"
    )
    teacher_signals: TeacherSignals = Field(
        "live",
        description="live: the teacher runs on every student batch; precomputed: its signals (logits and tapped "
        "features) on every training image are computed once and read from memory. Exact here, as the images "
        "are not augmented; it costs memory for feature taps (N x C x H x W floats each)",
    )
    hint_stage: TrainConfig | None = Field(
        None,
        description="FitNets' two stages: train the objective's hint terms alone first, for this budget (only the "
        "student's layers below each hinted tap and the regressors learn), then the other terms; None: all jointly",
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
        if self.teacher_signals == "precomputed" and len(names) > 1:
            raise ValueError("teacher_signals=precomputed takes one teacher; with several, use teacher_signals=live")
        if self.hint_stage is not None:
            hints, rest = _split_hints(self.objective)
            if not hints or not rest:
                raise ValueError("hint_stage needs both hint terms (loss: hint) and other terms in the objective")
        return self


def run(cfg: Config, resume: str | Path | None = None) -> Result:
    data = load_images(cfg.data)  # before the run directory exists: a bad path leaves nothing behind
    shape = {"num_classes": data.num_classes, "in_channels": data.image_shape[0]}
    check(cfg, data, shape)
    ctx = start(name, cfg, cfg.run, resume)

    def evaluate(model: nn.Module) -> dict[str, float]:
        scores = {"accuracy": accuracy(model, data.test, ctx.accelerator, cfg.eval_batch_size)}
        if data.val is not None:
            scores["val_accuracy"] = accuracy(model, data.val, ctx.accelerator, cfg.eval_batch_size)
        return scores

    rows: list[dict[str, Any]] = []
    teachers: dict[str, nn.Module] = {}
    for spec in cfg.teachers:
        stage = _teacher_stage(spec.name)
        ctx.seed_stage(stage)
        model = build_model(spec.model, **shape)
        if spec.model.checkpoint:
            scores = evaluate(model.to(ctx.accelerator.device))
        else:
            scores = train_supervised(ctx, model, data.train, spec.train, stage, evaluate)
        teachers[spec.name] = model
        rows.append(_row(stage.replace("-", " "), model, scores))

    train, terms, live = data.train, cfg.objective, teachers
    if cfg.teacher_signals == "precomputed" and teachers:
        taps = next(iter(Objective(cfg.objective, list(teachers)).taps()[1].values()))  # the only teacher's
        signals = precompute_signals(teachers, taps, data.train, ctx.accelerator.device, cfg.eval_batch_size)
        train, terms, live = {**data.train, **signals}, read_precomputed(cfg.objective), {}

    if cfg.baseline:
        ctx.seed_stage("student/init")  # the same initial weights as the distilled student
        alone = build_model(cfg.student, **shape)
        rows.append(
            _row("student alone", alone, train_supervised(ctx, alone, data.train, cfg.train, "student-alone", evaluate))
        )

    ctx.seed_stage("student/init")
    student = build_model(cfg.student, **shape)
    stages = [("student", terms, cfg.train)]
    if cfg.hint_stage is not None:
        hints, rest = _split_hints(terms)
        stages = [("student-hints", hints, cfg.hint_stage), ("student", rest, cfg.train)]
    for stage, stage_terms, tcfg in stages:
        distiller = Distiller(student, stage_terms, live).to(ctx.accelerator.device)
        scores = ctx.fit(distiller, train, tcfg, stage=stage, eval_fn=evaluate)
    rows.append(_row("student KD" if teachers else "student", student, scores))

    info = {"epochs": cfg.train.epochs, "teacher_epochs": [t.train.epochs for t in cfg.teachers], "seed": cfg.run.seed}
    info["teacher_signals"] = cfg.teacher_signals
    products = {"student": "student/model.safetensors"}
    trained = [t.name for t in cfg.teachers if not t.model.checkpoint]
    products.update({t: f"{_teacher_stage(t)}/model.safetensors" for t in trained})
    return ctx.finish(rows, products=products, info=info)


def check(cfg: Config, data: ImageSplits, shape: dict[str, int]) -> None:
    """What would fail after minutes of training fails now: nets that do not take the images, batches
    larger than the data."""
    sample = data.train["inputs"][:2]
    nets = [("student", cfg.student)] + [(f"teachers.{i}.model", t.model) for i, t in enumerate(cfg.teachers)]
    for where, spec in nets:
        check_accepts(build_model(spec, **shape), sample, f"{where} ({spec.arch})")
    stages = [("train", cfg.train)] + [
        (f"teachers.{i}.train", t.train) for i, t in enumerate(cfg.teachers) if not t.model.checkpoint
    ]
    if cfg.hint_stage is not None:
        stages.append(("hint_stage", cfg.hint_stage))
    for where, tcfg in stages:
        check_fits(len(data.train["labels"]), tcfg, where)


def train_supervised(
    ctx: Context, model: nn.Module, train: dict, tcfg: TrainConfig, stage: str, evaluate
) -> dict[str, float]:
    """A plain supervised run of the same engine: the objective is cross-entropy alone."""
    return ctx.fit(supervised(model), train, tcfg, stage=stage, eval_fn=evaluate)


def _split_hints(terms: list[Term]) -> tuple[list[Term], list[Term]]:
    """FitNets' stages: the hint terms, and the others."""
    return [t for t in terms if t.loss == "hint"], [t for t in terms if t.loss != "hint"]


def _teacher_stage(name: str) -> str:
    return "teacher" if name == "teacher" else f"teacher-{name}"


def _row(name: str, model: nn.Module, scores: dict[str, float]) -> dict[str, Any]:
    row = {"model": name, "params": count_parameters(model), "test_accuracy": round(scores["accuracy"], 4)}
    if "val_accuracy" in scores:
        row["val_accuracy"] = round(scores["val_accuracy"], 4)
    return row


def table(result: Result) -> str:
    """The result rows as a markdown table."""
    validated = any("val_accuracy" in r for r in result.rows)
    return markdown_table(result.rows, ["model", "params", "test_accuracy", *(["val_accuracy"] * validated)])
