"""Online distillation as in ERNIE 3.0 Titan: students learn from the teacher while it trains.

Stages, in order:
    1. data       the corpus and its tokenizer (the teacher's, a given one, or a BPE learned on the corpus)
    2. models     the teacher and the students (from scratch by shape, or an HF directory / GGUF), one
                  vocabulary checked for all
    3. train      online: one cohort, the teacher on its LM loss every step and, every `distill_every`
                  steps, each student toward its source's signals of that step (the teacher's forward
                  is reused, never repeated). offline: the teacher first, then each student from the
                  finished teacher over the same batches (the baseline of equal budget)
    4. alone      optionally, each student trained on the LM loss alone with the same number of steps
    5. evaluate   held-out perplexity of every model, and the teacher forward passes each way spent
    6. export     the teacher and every student as Hugging Face causal-LM directories (auxiliary layers
                  dropped)
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from distill.config import Section
from distill.context import Context, Result, RuntimeConfig, stage_seed, start
from distill.data.text import Rows, TextData, learned_tokenizer, token_splits
from distill.engine import Callbacks, EvalFn, TrainConfig, check_fits
from distill.evaluate import lm_loss
from distill.kd import CE, Cohort, Distiller, Member, Term, supervised
from distill.kd.auxiliary import OnlineStudent, check_relation_heads, lm_of, relation_terms
from distill.kd.cohort import learner_batches, learner_steps
from distill.models import count_parameters
from distill.models.llm import LlamaShape, ModelConfig, load_tokenizer, save_hf
from distill.report import markdown_table

name = "online"
PREMISE_NATS = 0.3  # how much better than the students alone a teacher must start, for distillation to show
BATCHES = "batches"  # every training stage draws its batch order from this one seed: all models see the same data
Models = dict[str, nn.Module]  # by name: the teacher and the students


class TeacherConfig(ModelConfig):
    shape: LlamaShape = Field(default_factory=lambda: LlamaShape(layers=6), description="from-scratch shape")


class StudentConfig(ModelConfig):
    """A student: its shape, whom it learns from, its learning rate, and the auxiliary layer."""

    name: str = Field(description="its name: the stage, the export folder, and what other students' source names")
    source: str = Field("teacher", description="'teacher', or a student listed before it (a teacher assistant)")
    lr: float | None = Field(None, gt=0, description="its learning rate (null: train.lr)")
    weight_decay: float | None = Field(None, ge=0, description="its weight decay (null: train.weight_decay)")
    auxiliary_layer: bool = Field(
        False, description="distil attention relations at an extra layer on top, dropped on export"
    )
    kl: float | None = Field(None, ge=0, description="its weight of the logit KL (null: kl.weight)")
    relation: float | None = Field(None, ge=0, description="its weight of the relations (null: relation.weight)")
    ce: float | None = Field(None, ge=0, description="its weight of its own LM loss (null: student_ce)")

    def weights(self, cfg: Config) -> tuple[float, float, float]:
        """(KL, relations, own LM loss): its own where set, else the run's (one cohort, several objectives)."""
        defaults = (cfg.kl.weight, cfg.relation.weight, cfg.student_ce)
        kl, rel, ce = (o if o is not None else d for o, d in zip((self.kl, self.relation, self.ce), defaults))
        return kl, rel, ce


class KLConfig(Section):
    weight: float = Field(1.0, ge=0, description="weight of the forward KL on the logits (0: off)")
    temperature: float = Field(1.0, ge=0.01, description="softmax temperature of both sides")
    chunk_size: int | None = Field(1024, gt=0, description="positions per chunk of the KL (memory)")


class RelationConfig(Section):
    """MiniLMv2's self-attention relations of one layer (the source's and the student's, or its auxiliary layer)."""

    weight: float = Field(0.0, ge=0, description="weight of each relation's KL (0: off)")
    relations: list[Literal["qq", "kk", "vv"]] = Field(["qq", "kk", "vv"])  # pydantic copies a mutable default
    heads: int = Field(4, gt=0, description="relation heads; must divide every width it splits")
    source_layer: int = Field(-1, description="the source's layer (-1: its last)")
    student_layer: int = Field(-1, description="the student's layer without an auxiliary layer (-1: its last)")


class Config(Section):
    """`distill online`: students learn from a teacher while it trains (ERNIE 3.0 Titan), or after it (offline)."""

    run: RuntimeConfig = Field(default_factory=RuntimeConfig, description="run directory, seed, precision")
    data: TextData = Field(default_factory=lambda: TextData(seq_len=128), description="the corpus")
    tokenizer: str | None = Field(
        None,
        description="an HF directory / .gguf / bundled name (null: the teacher's, "
        "or the bundled SmolLM2's for a teacher from scratch)",
    )
    tokenizer_vocab: int | None = Field(None, gt=255, description="learn a byte-level BPE of this size on the corpus")
    mode: Literal["online", "offline"] = Field(
        "online", description="students learn while the teacher trains, or after"
    )
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    students: list[StudentConfig] = Field(
        description="the students (none: the teacher trains alone, e.g. to be reused by later runs' teacher.path)",
        default_factory=lambda: [
            StudentConfig(name="small", shape=LlamaShape(layers=2)),
            StudentConfig(name="medium", shape=LlamaShape(layers=4)),
        ],
    )
    distill_every: int = Field(1, gt=0, description="students step once every this many teacher steps")
    students_from_step: int = Field(
        0,
        ge=0,
        description="the teacher's optimizer step at which the students join it (Titan's students join a "
        "teacher that has trained for a while); they take no step before it",
    )
    kl: KLConfig = Field(default_factory=KLConfig)
    relation: RelationConfig = Field(default_factory=RelationConfig)
    student_ce: float = Field(0.0, ge=0, description="weight of the students' own LM loss beside distillation")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(
            max_steps=400, batch_size=8, lr=1e-3, warmup_steps=20, log_every=20, eval_every=100, clip_grad_norm=1.0
        ),
        description="the teacher's training (and, online, the cohort's); students take max_steps / distill_every steps",
    )
    alone: bool = Field(False, description="also train each student alone on the LM loss for the same steps")
    eval_batch_size: int = Field(8, gt=0, description="sequences per evaluation forward pass")

    @field_validator("students")
    @classmethod
    def _sources(cls, students: list[StudentConfig]) -> list[StudentConfig]:
        seen = ["teacher"]
        for s in students:
            if s.name in seen:
                raise ValueError(f"student name {s.name!r} is used twice (or is 'teacher')")
            if s.source not in seen:
                raise ValueError(
                    f"student {s.name!r} learns from {s.source!r}, which is neither 'teacher' nor a "
                    f"student listed before it ({seen})"
                )
            seen.append(s.name)
        return students

    @property
    def teacher_steps(self) -> int:
        return cast(int, self.train.max_steps)  # set: _budget checks it

    @model_validator(mode="after")
    def _budget(self) -> Config:
        if self.train.max_steps is None:
            raise ValueError("train.max_steps must be set: the teacher's steps, shared with the students")
        if self.students_from_step >= self.train.max_steps:
            raise ValueError(
                f"students_from_step={self.students_from_step} leaves the students no step of the "
                f"teacher's {self.train.max_steps}"
            )
        for s in self.students:
            if not any(s.weights(self)):
                raise ValueError(f"student {s.name!r} learns nothing: its KL, relation and LM-loss weights are all 0")
        return self


def run(cfg: Config, resume: str | Path | None = None) -> Result:
    # 1-2. data, tokenizer and models: everything a user can get wrong fails before the run directory exists
    tokenizer = _tokenizer(cfg, resume)
    train, val = token_splits(cfg.data, tokenizer)
    student_steps = learner_steps(cfg.teacher_steps, cfg.distill_every, cfg.students_from_step)
    check_fits(len(train["input_ids"]), cfg.train, "train")
    shapes = {"teacher": cfg.teacher.widths(tokenizer, "teacher")}
    shapes.update({s.name: s.widths(tokenizer, s.name) for s in cfg.students})
    if any(s.weights(cfg)[1] for s in cfg.students):
        check_relation_heads(shapes, cfg.relation.relations, cfg.relation.heads)
    ctx = start(name, cfg, cfg.run, resume)
    if ctx.run.is_main and cfg.tokenizer_vocab:
        tokenizer.save_pretrained(ctx.run.path / "tokenizer")

    def held_out(model: nn.Module) -> float:
        return lm_loss(lm_of(model), val, ctx.accelerator, cfg.eval_batch_size)

    def evaluate(models: dict[str, nn.Module]) -> dict[str, float]:
        return {f"{n}/val_loss": held_out(m) for n, m in models.items()}

    # 3. the teacher and the students, each initialised from its own stage seed
    models: dict[str, nn.Module] = {"teacher": _lm(cfg.teacher, tokenizer, ctx)}
    models.update({s.name: OnlineStudent(_lm(s, tokenizer, ctx), s.auxiliary_layer) for s in cfg.students})
    start_file = ctx.run.path / "teacher_start.json"  # measured once, before the teacher trains (kept for a resume)
    if start_file.is_file():
        teacher_start = json.loads(start_file.read_text())["val_loss"]
    else:
        teacher_start = held_out(models["teacher"])
        ctx.run.write_json("teacher_start.json", {"val_loss": teacher_start})
    forwards = (online if cfg.mode == "online" else offline)(cfg, ctx, models, train, evaluate, student_steps)

    # 4. each student alone, the same number of student steps, the same initialisation and batches
    alone: dict[str, nn.Module] = {}
    seen = students_batches(cfg, train, ctx)
    for s in cfg.students if cfg.alone else []:
        alone[s.name] = _lm(s, tokenizer, ctx)  # its stage seed: the distilled student's initial weights
        tcfg = student_train(cfg, s, student_steps)
        ctx.fit(
            supervised(alone[s.name]),
            seen,
            tcfg,
            stage=f"alone/{s.name}",
            seed_from=BATCHES,
            eval_fn=partial(lambda n, m: evaluate({n: m}), s.name),
        )

    # 5-6. evaluate and export
    t_steps = cfg.teacher_steps
    teacher_end = held_out(models["teacher"])
    # the premise compares the teacher the students learn from, as they start: online, when they join
    joined = ctx.run.path / "teacher_joined.json"  # written by `online` at students_from_step
    teacher_then = teacher_end if cfg.mode == "offline" else teacher_start
    if cfg.mode == "online" and joined.is_file():
        teacher_then = json.loads(joined.read_text())["val_loss"]
    rows = [
        _row("teacher at the start", models["teacher"], "-", teacher_start, 0, 0),
        _row("teacher", models["teacher"], "-", teacher_end, forwards["teacher"], t_steps),
    ]
    if cfg.mode == "online" and cfg.students_from_step and cfg.students:
        joined_row = _row("teacher as the students join", models["teacher"], "-", teacher_then, 0, 0)
        rows.insert(1, {**joined_row, "steps": cfg.students_from_step})
    for s in cfg.students:
        kl, relation, ce = s.weights(cfg)
        what = [n for n, w in (("KL", kl), ("relations" + " (aux)" * s.auxiliary_layer, relation), ("LM", ce)) if w]
        how = f"{cfg.mode} from {s.source}: {' + '.join(what)}"
        rows.append(_row(s.name, models[s.name], how, held_out(models[s.name]), forwards.get(s.name, 0), student_steps))
        if s.name in alone:
            rows.append(
                _row(f"{s.name} alone", alone[s.name], "LM loss alone", held_out(alone[s.name]), 0, student_steps)
            )
    products = {}
    if ctx.accelerator.is_main_process:
        for n, m in [("teacher", models["teacher"])] + [(s.name, lm_of(models[s.name])) for s in cfg.students]:
            save_hf(m, tokenizer, ctx.run.path / "models" / n)
            products[n] = f"models/{n}"
    info: dict[str, Any] = {
        "mode": cfg.mode,
        "vocabulary": len(tokenizer),
        "teacher_steps": cfg.train.max_steps,
        "student_steps": student_steps,
        "students_from_step": cfg.students_from_step,
        "distill_every": cfg.distill_every,
        "tokens_per_sample": cfg.data.seq_len,
        "teacher_forwards": sum(forwards.values()),
    }
    if alone:  # the premise of distillation: a teacher clearly better than what the students reach alone
        best = min(r["val_loss"] for r in rows if r["model"].endswith(" alone"))
        info["premise"] = {
            "teacher": round(teacher_then, 4),
            "best_alone": best,
            "needed": PREMISE_NATS,
            "holds": best - teacher_then >= PREMISE_NATS,
        }
    return ctx.finish(rows, products=products, info=info)


def online(cfg: Config, ctx: Context, models: Models, train: Rows, evaluate: EvalFn, steps: int) -> dict[str, int]:
    """One cohort: the teacher on its LM loss every step, each student toward its source every k steps."""
    members = {"teacher": Member(models["teacher"], [CE])}
    members.update(
        {
            s.name: Member(models[s.name], student_terms(cfg, s, models), [s.source], s.lr, s.weight_decay)
            for s in cfg.students
        }
    )
    cohort = Cohort(members, cfg.distill_every, cfg.train.grad_accum, cfg.students_from_step)
    cohort.to(ctx.accelerator.device)
    cohort.build(_probe(train, ctx))
    counts = lambda: {f"forwards/{n}": float(c) for n, c in cohort.forward_counts().items()}  # noqa: E731

    def joining(products: dict[str, nn.Module], step: int) -> None:
        if step == cfg.students_from_step:  # the teacher the students start learning from (written by main)
            loss = evaluate({"teacher": products["teacher"]})["teacher/val_loss"]
            ctx.run.write_json("teacher_joined.json", {"step": step, "val_loss": loss})

    metrics = ctx.fit(
        cohort,
        train,
        cfg.train,
        stage="online",
        seed_from=BATCHES,
        eval_fn=lambda products: {**evaluate(products), **counts()},
        callbacks=Callbacks(on_step=joining),
    )
    return {"teacher": int(metrics["forwards/teacher"])}  # the students reused those: they cost none


def offline(cfg: Config, ctx: Context, models: Models, train: Rows, evaluate: EvalFn, steps: int) -> dict[str, int]:
    """The teacher first; then each student from its finished, frozen source over the same batches."""
    ctx.fit(
        supervised(models["teacher"]),
        train,
        cfg.train,
        stage="teacher",
        seed_from=BATCHES,
        eval_fn=lambda m: evaluate({"teacher": m}),
    )
    forwards = {"teacher": cfg.teacher_steps * cfg.train.grad_accum}
    seen = students_batches(cfg, train, ctx)
    for s in cfg.students:
        distiller = Distiller(models[s.name], student_terms(cfg, s, models), {s.source: models[s.source]})
        distiller.build(_probe(train, ctx))
        source = distiller.teachers[0]  # counts the forward passes it runs for this student
        source.forwards = 0  # the probe that sized the projections is not training
        tcfg = student_train(cfg, s, steps)
        scored = lambda m, n=s.name, c=source: {**evaluate({n: m}), "forwards": c.forwards}  # noqa: E731
        metrics = ctx.fit(distiller, seen, tcfg, stage=f"offline/{s.name}", eval_fn=scored, seed_from=BATCHES)
        forwards[s.name] = int(metrics["forwards"])
    return forwards


def students_batches(cfg: Config, train: Rows, ctx: Context) -> dict[str, Tensor]:
    """What the online students trained on, in their order, for the offline and alone students' unshuffled
    stages (`student_train`): every stage of the run sees the same samples."""
    seed, world = stage_seed(ctx.seed, BATCHES), ctx.accelerator.num_processes
    order = learner_batches(len(train["input_ids"]), cfg.train, seed, cfg.distill_every, cfg.students_from_step, world)
    return {k: v[order] for k, v in train.items()}


def student_train(cfg: Config, s: StudentConfig, steps: int) -> TrainConfig:
    """A student's own stage (offline, alone): its steps, its lr, the schedule it follows online, and the online
    students' batches in their order (`students_batches`)."""
    warmup = -(-cfg.train.warmup_steps // cfg.distill_every)
    own = {"lr": s.lr, "weight_decay": s.weight_decay}
    return cfg.train.model_copy(
        update={
            "max_steps": steps,
            "warmup_steps": warmup,
            "shuffle": False,
            **{k: v for k, v in own.items() if v is not None},
        }
    )


def student_terms(cfg: Config, s: StudentConfig, models: dict[str, nn.Module]) -> list[Term]:
    """KL to the source's logits, MiniLMv2 relations at one layer, optionally the student's own LM loss."""
    ref = "teacher" if s.source == "teacher" else f"teacher[{s.source}]"
    kl, relation, ce = s.weights(cfg)
    terms = []
    if kl:
        args = {"temperature": cfg.kl.temperature, "chunk_size": cfg.kl.chunk_size}
        terms.append(Term(name="kl", loss="kl", weight=kl, inputs=["student.logits", f"{ref}.logits"], args=args))
    if relation:
        r = cfg.relation
        terms += relation_terms(
            models[s.source], models[s.name], ref, r.relations, relation, r.heads, r.source_layer, r.student_layer
        )
    if ce:
        terms.append(CE.model_copy(update={"weight": ce}))
    return terms


def _tokenizer(cfg: Config, resume: str | Path | None):
    if cfg.tokenizer_vocab:  # a resumed run reads the one it learned
        return learned_tokenizer(cfg.data, cfg.tokenizer_vocab, Path(resume) / "tokenizer" if resume else None, name)
    return load_tokenizer(cfg.tokenizer or cfg.teacher.path or "smollm2-135m")


def _lm(spec: ModelConfig, tokenizer, ctx: Context) -> Any:  # an HF causal LM
    """The model of `spec` (checked by `ModelConfig.widths` before the run), new ones from their own stage seed."""
    return spec.build(tokenizer, lambda: ctx.seed_stage(f"init/{getattr(spec, 'name', 'teacher')}"))


def _probe(train: Rows, ctx: Context) -> dict[str, Tensor]:
    return {k: v[:2].to(ctx.accelerator.device) for k, v in train.items()}


def _row(model: str, lm: nn.Module, trained: str, loss: float, forwards: int | None, steps: int) -> dict[str, Any]:
    return {
        "model": model,
        "layers": lm_of(lm).config.num_hidden_layers,
        "params": count_parameters(lm_of(lm)),
        "trained": trained,
        "steps": steps,
        "val_loss": round(loss, 4),
        "ppl": round(math.exp(min(loss, 50)), 2),
        "teacher_forwards": forwards,
    }


def table(result: Result) -> str:
    i = result.info
    lines = [
        markdown_table(result.rows),
        "",
        f"{i['mode']}: teacher {i['teacher_steps']} steps, students {i['student_steps']} (every "
        f"{i['distill_every']}, from step {i.get('students_from_step', 0)}); teacher forward passes in all: "
        f"{i['teacher_forwards']}",
    ]
    if p := i.get("premise"):
        verdict = "holds" if p["holds"] else "does NOT hold: the distilled students cannot show what the method gives"
        lines.append(
            f"premise (the teacher the students start from {p['needed']} nats or more below every student "
            f"alone): {verdict} (teacher {p.get('teacher', p.get('teacher_start')):.4f}, best alone "
            f"{p['best_alone']:.4f})"
        )
    return "\n".join(lines)
