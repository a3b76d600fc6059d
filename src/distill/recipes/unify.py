"""One text recogniser for printed and handwritten text, distilled from a specialist per domain, as in
"Text is Text, No Matter What: Unifying Text Recognition using Knowledge Distillation" (Bhunia et al.,
ICCV 2021).

Stages, in order:
    1. data       each domain's images (generated from data.seed, or a user's), before the run directory exists
    2. teachers   one specialist per domain, cross-entropy on its own domain only (or loaded from weights)
    3. union      optionally, the student's network on the union of the domains with cross-entropy alone
    4. student    the unified student on the union: cross-entropy plus the four distillation terms, each
                  sample against the teacher of its own domain (`teacher[routed]`, keyed by batch.domain)
    5. ablations  optionally, the student again without each distillation term in turn
    6. report     word accuracy and character error rate of every model on every domain's test set, and a
                  figure of example images with each model's reading

Every student starts from the same weights and sees the same batches, so the rows differ by objective only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import Field, model_validator
from torch import nn

from distill.config import Section
from distill.context import Context, Result, RuntimeConfig, start
from distill.engine import TrainConfig, check_fits
from distill.errors import DistillError
from distill.kd.distiller import Distiller, supervised
from distill.kd.objective import CE, Objective, Term, Terms, check_refs, parse_ref, read_precomputed
from distill.kd.teachers import TeacherSignals, precompute_signals
from distill.models import ModelSpec, build_model, check_accepts, count_parameters
from distill.report import markdown_table
from distill.textrec.data import TextImageData, TextImages, load_text_images
from distill.textrec.evaluate import read, readings_figure, scores

name = "unify"
MASKED_CE = CE.model_copy(update={"mask": "batch.mask"})  # padded words: their masked columns carry no loss


def _routed(term: str, loss: str, tap: str, **args: Any) -> Term:
    return Term(name=term, loss=loss, inputs=[f"student.{tap}", f"teacher[routed].{tap}"], mask="batch.mask", args=args)


def paper_objective() -> list[Term]:
    """Cross-entropy and the paper's four distillation terms, all at weight 1."""
    return [
        MASKED_CE,
        _routed("logits", "kl", "logits", temperature=1.0),  # per decoding step KL of the character distributions
        _routed("hint", "hint", "glimpses"),  # character-localised hint, through a learned projection
        _routed("attention", "attention_maps", "attention"),  # each step's 2-D attention map
        _routed("affinity", "char_affinity", "glimpses"),  # similarities among one word's character features
    ]


class Config(Section):
    """`distill unify`: a specialist teacher per domain, then one student for all domains."""

    run: RuntimeConfig = Field(default_factory=RuntimeConfig, description="run directory, seed, precision")
    data: TextImageData = Field(default_factory=TextImageData, description="the domains and their images")
    teacher: ModelSpec = Field(
        default_factory=lambda: ModelSpec(arch="recognizer", args={"channels": [32, 64, 128], "hidden": 128}),
        description="each specialist's network (one per domain, all the same shape: routing stacks their signals)",
    )
    teacher_checkpoints: dict[str, str] = Field(
        default_factory=dict, description="weights by domain name; a domain listed here skips its teacher's training"
    )
    # 16 epochs of one domain are as many optimizer steps as the student's 8 of the two defaults' union: specialists
    # trained fewer read their own domain no better than the union network, and could not lift a student above it
    teacher_train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(epochs=16, lr=2e-3, batch_size=64, warmup_steps=200, clip_grad_norm=5.0),
        description="how each specialist trains on its own domain",
    )
    student: ModelSpec | None = Field(
        None,
        description="the unified student's network (null: the specialists' own shape, as in the paper: one model "
        "instead of several, not a compressed one; a smaller one is a choice, e.g. {arch: recognizer, args: "
        "{channels: [16, 32, 64], hidden: 64}})",
    )
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(epochs=8, lr=2e-3, batch_size=64, warmup_steps=200, clip_grad_norm=5.0),
        description="how every student trains on the union of the domains",
    )
    objective: Terms = Field(default_factory=paper_objective, description="the unified student's loss terms")
    teacher_signals: TeacherSignals = Field(
        "precomputed",
        description="precomputed: each training image's signals come once from its own domain's teacher before the "
        "students train (exact: frozen teachers, no augmentation); live: every teacher runs on every batch",
    )
    union_baseline: bool = Field(True, description="also train the student on the union with cross-entropy alone")
    ablations: bool = Field(False, description="also train the student without each distillation term in turn")
    eval_batch_size: int = Field(500, gt=0, description="images per batch when reading")
    examples: int = Field(4, ge=0, description="test images per domain in the readings figure")

    @model_validator(mode="after")
    def _teachers(self) -> Config:
        names = [d.name for d in self.data.domains]
        unknown = sorted(set(self.teacher_checkpoints) - set(names))
        if unknown:
            raise ValueError(f"teacher_checkpoints names domains {unknown}; the domains are {names}")
        problem = check_refs(self.objective, names)
        if problem:
            raise ValueError(problem)
        refs = [parse_ref(r) for t in self.objective for r in t.inputs]
        if self.teacher_signals == "precomputed" and any(r.owner == "teacher" and r.teacher != "routed" for r in refs):
            raise ValueError(
                "teacher_signals=precomputed computes each sample's signals with its own domain's teacher, so "
                "the objective must read teacher[routed].<signal>; use teacher_signals=live otherwise"
            )
        return self

    @property
    def student_spec(self) -> ModelSpec:
        """The unified student's network: its own, or the specialists' shape (never their weights)."""
        return self.student or self.teacher.model_copy(update={"checkpoint": None})


def run(cfg: Config, resume: str | Path | None = None) -> Result:
    data = load_text_images(cfg.data)  # before the run directory exists: a bad font or label leaves nothing behind
    shape = {
        "num_chars": len(data.charset),
        "max_length": cfg.data.max_length,
        "image_size": (cfg.data.height, cfg.data.width),
    }
    check(cfg, data, shape)
    ctx = start(name, cfg, cfg.run, resume)
    device = ctx.accelerator.device

    def validate(model: nn.Module) -> dict[str, float]:
        return scores(model, data, "val", device, cfg.eval_batch_size)

    models: dict[str, nn.Module] = {}
    val: dict[str, dict[str, float]] = {}  # each trained model's last validation scores (what choices read)
    teachers: dict[str, nn.Module] = {}
    for index, domain in enumerate(data.names):
        stage = f"teacher-{domain}"
        ctx.seed_stage(stage)
        weights = cfg.teacher_checkpoints.get(domain)
        teacher = build_model(cfg.teacher.model_copy(update={"checkpoint": weights}), **shape)
        if weights is None:
            own = data.splits["train"][index]
            val[f"{domain} specialist"] = ctx.fit(
                supervised(teacher, MASKED_CE), own, cfg.teacher_train, stage=stage, eval_fn=validate
            )
        teachers[domain] = models[f"{domain} specialist"] = teacher.to(device).eval()

    union = data.union("train")
    cached = {}  # the students that read a teacher get these fields; the others' batches stay as they are
    if cfg.teacher_signals == "precomputed" and distillation_terms(cfg.objective):
        taps = sorted({tap for names in Objective(cfg.objective, data.names).taps()[1].values() for tap in names})
        cached = {**union, **precompute_signals(teachers, taps, union, device, cfg.eval_batch_size)}
    students = [("student KD", cfg.objective)]
    if cfg.union_baseline:
        students.insert(0, ("union, cross-entropy", [MASKED_CE]))
    if cfg.ablations:
        students += [
            (f"KD without {t.name}", [u for u in cfg.objective if u is not t])
            for t in distillation_terms(cfg.objective)
        ]
    for label, terms in students:
        ctx.seed_stage("student/init")  # every student starts from the same weights
        student = build_model(cfg.student_spec, **shape)
        live = cfg.teacher_signals == "live" and reads_teacher(terms)
        train = cached if reads_teacher(terms) and not live else union
        if live:
            distiller = Distiller(student, terms, teachers)
        else:  # each sample's signals came from its own domain's teacher: projections per teacher still
            distiller = Distiller(student, read_precomputed(terms), routed=len(teachers))
        distiller.to(device)
        val[label] = ctx.fit(distiller, train, cfg.train, stage=_stage(label), eval_fn=validate, seed_from="student")
        models[label] = student

    rows = [
        _row(label, model, scores(model, data, "test", device, cfg.eval_batch_size), data.names)
        | _validation(val.get(label) or validate(model), data.names)
        for label, model in models.items()
    ]
    figures = _figure(cfg, ctx, data, models) if cfg.examples else []
    products = {_stage(label): f"{_stage(label)}/model.safetensors" for label, _ in students}
    products.update(
        {f"teacher-{d}": f"teacher-{d}/model.safetensors" for d in data.names if d not in cfg.teacher_checkpoints}
    )
    info = {
        "domains": data.names,
        "train_images": {n: len(t) for n, t in zip(data.names, data.texts["train"])},
        "test_images": {n: len(t) for n, t in zip(data.names, data.texts["test"])},
        "epochs": cfg.train.epochs,
        "teacher_epochs": cfg.teacher_train.epochs,
        "seed": cfg.run.seed,
        "data_seed": cfg.data.seed,
        "terms": {t.name: t.weight for t in cfg.objective},
    }
    return ctx.finish(rows, figures=figures, products=products, info=info)


def reads_teacher(terms: list[Term]) -> bool:
    return any(parse_ref(r).owner == "teacher" for t in terms for r in t.inputs)


def distillation_terms(terms: list[Term]) -> list[Term]:
    """The terms that read a teacher (what the ablations remove, one at a time)."""
    return [t for t in terms if reads_teacher([t])]


def check(cfg: Config, data: TextImages, shape: dict[str, Any]) -> None:
    """What would fail after minutes of training fails now: nets that do not take the images, batches larger
    than a domain, teacher weights that are not there."""
    sample = data.splits["train"][0]["pixel_values"][:2]
    for where, spec in (("student", cfg.student_spec), ("teacher", cfg.teacher)):
        check_accepts(
            build_model(spec.model_copy(update={"checkpoint": None}), **shape), sample, f"{where} ({spec.arch})"
        )
    for index, domain in enumerate(data.names):
        if domain not in cfg.teacher_checkpoints:
            check_fits(len(data.texts["train"][index]), cfg.teacher_train, f"teacher_train ({domain})")
    check_fits(sum(len(t) for t in data.texts["train"]), cfg.train, "train")
    for domain, path in cfg.teacher_checkpoints.items():
        if not Path(path).is_file():
            raise DistillError(f"teacher_checkpoints.{domain}: {path} does not exist")


def _stage(label: str) -> str:
    return {"student KD": "student", "union, cross-entropy": "union"}.get(
        label, label.replace("KD without ", "student-no-")
    )


def _row(label: str, model: nn.Module, metrics: dict[str, float], names: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"model": label, "params": count_parameters(model)}
    for n in names:
        row[f"{n}_word_accuracy"] = round(metrics[f"{n}_word_accuracy"], 4)
        row[f"{n}_cer"] = round(metrics[f"{n}_cer"], 4)
    row["mean_word_accuracy"] = round(metrics["mean_word_accuracy"], 4)
    return row


def _validation(metrics: dict[str, float], names: list[str]) -> dict[str, float]:
    """The validation split's scores a choice may read (word accuracy and CER, means over the domains)."""
    cer = sum(metrics[f"{n}_cer"] for n in names) / len(names)
    return {"val_mean_word_accuracy": round(metrics["mean_word_accuracy"], 4), "val_mean_cer": round(cer, 4)}


def _figure(cfg: Config, ctx: Context, data: TextImages, models: dict[str, nn.Module]) -> list[str]:
    images = torch.cat([t["pixel_values"][: cfg.examples] for t in data.splits["test"]])
    truth = [text for texts in data.texts["test"] for text in texts[: cfg.examples]]
    readings = {label: read(m, images, data.charset, ctx.accelerator.device) for label, m in models.items()}
    if ctx.accelerator.is_main_process:
        readings_figure(ctx.run.path / "readings.png", images, truth, readings)
    return ["readings.png"]


def table(result: Result) -> str:
    """Word accuracy (and CER) per domain for every model."""
    columns = {"model": "model", "params": "params"}
    for n in result.info["domains"]:
        columns |= {f"{n}_word_accuracy": f"{n} word acc", f"{n}_cer": f"{n} CER"}
    return markdown_table(result.rows, columns | {"mean_word_accuracy": "mean word acc"})
