"""Distil a causal LM into a smaller one of your choosing: `distill lm teacher.path=... student.path=...`.

Stages, in order:
    1. models    the teacher (an HF directory, a GGUF file or the bundled SmolLM2) and the student (the same,
                 or a Llama shape built from scratch); one vocabulary, checked before anything runs
    2. data      plain text (packed rows of a corpus, shards, mixtures), or a JSONL of prompt / completion
                 records or chat `messages` (rendered with the tokenizer's chat template), where the loss is
                 taken on the completion (assistant) tokens only
    3. distill   the student toward the teacher's next-token distribution: forward KL, reverse KL or the
                 generalized JSD (`beta`) at a temperature, optionally mixed with the LM cross-entropy; from a
                 live teacher, or from a `distill capture` cache (`teacher.cache`: sparse KL on its top-k)
    4. evaluate  held-out loss (on the completion tokens for prompt data) of the teacher, and of the student
                 before and after
    5. export    the student as an HF directory with its tokenizer and a model card (README.md); with `gguf`,
                 also as one GGUF file for llama.cpp
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from safetensors.torch import load_file, save
from torch import Tensor, nn
from tqdm.auto import tqdm

from distill.config import Section
from distill.context import Context, Result, RuntimeConfig, start
from distill.data.sft import PromptData, pad_id, sft_splits
from distill.data.text import Rows, TextData, token_splits
from distill.engine import TrainConfig, check_fits
from distill.errors import DistillError
from distill.evaluate import lm_kl, lm_loss
from distill.kd import CE, Term
from distill.kd.cache import CachedTeacher, check_cache, from_cache, open_or_capture
from distill.kd.lm_stage import export_lm, lm_trainable
from distill.kd.onpolicy import OnPolicy, complete
from distill.models import count_parameters
from distill.models.gguf import OutType, converter_dir
from distill.models.llm import LlamaShape, ModelConfig, load_causal_lm
from distill.report import markdown_table
from distill.run import atomic_write

name = "lm"


class StudentConfig(ModelConfig):
    shape: LlamaShape = Field(
        default_factory=lambda: LlamaShape(layers=10, hidden=384, heads=6, kv_heads=2, ffn=1024),
        description="the from-scratch shape (when path is null): by default about a quarter of SmolLM2-135M",
    )


class Objective(Section):
    """What the student minimises, per kept position."""

    divergence: Literal["kl", "reverse_kl", "jsd"] = Field(
        "kl", description="forward KL(teacher || student), reverse KL(student || teacher), or the generalized JSD"
    )
    beta: float = Field(0.5, ge=0, le=1, description="jsd only: 0 is forward KL, 1 reverse KL (GKD's beta)")
    temperature: float = Field(1.0, ge=0.01, description="softmax temperature of both sides (loss times T^2)")
    ce_weight: float = Field(0.0, ge=0, description="weight of the student's own LM cross-entropy beside it")
    kd_weight: float = Field(1.0, ge=0, description="weight of the divergence")
    chunk_size: int = Field(1024, gt=0, description="positions per chunk of the divergence (memory)")
    fused: bool = Field(
        True,
        description="project onto the vocabulary and compare a chunk of positions at a time, so neither model's full "
        "logits exist (HF decoders with model + lm_head); false: the general objective on the models' logits",
    )

    def terms(self, masked: bool) -> list[Term]:
        mask = "batch.loss_mask" if masked else None
        args: dict = {"temperature": self.temperature, "chunk_size": self.chunk_size}
        if self.divergence == "jsd":
            args["beta"] = self.beta
        kd = Term(name="kd", loss=self.divergence, weight=self.kd_weight, inputs=["student.logits", "teacher.logits"])
        terms = [kd.model_copy(update={"args": args, "mask": mask})] if self.kd_weight else []
        if self.ce_weight:
            terms.append(CE.model_copy(update={"weight": self.ce_weight}))
        return terms


class Generation(Section):
    """Completions that are not the data's: the student's own samples (on-policy, GKD), or the teacher's (sequence
    KD). Prompt data only."""

    lam: float = Field(
        0.0, ge=0, le=1, description="GKD's lambda: the share of batches the student completes itself (0: off)"
    )
    temperature: float = Field(1.0, ge=0, description="the student's sampling temperature (0: greedy)")
    max_new_tokens: int = Field(64, gt=0, description="longest generated completion (also bounded by the row)")
    targets: Literal["data", "teacher"] = Field(
        "data",
        description="teacher: sequence-level KD, the teacher's greedy completions replace the data's (generated "
        "once and kept in the run)",
    )


class Config(Section):
    """`distill lm`: a teacher LLM into a smaller student LLM, on text or on prompts and completions."""

    run: RuntimeConfig = Field(default_factory=RuntimeConfig, description="run directory, seed, precision")
    teacher: CachedTeacher = Field(default_factory=CachedTeacher, description="the teacher (or its signal cache)")
    student: StudentConfig = Field(default_factory=StudentConfig, description="the student: a path or a shape")
    data: TextData = Field(default_factory=lambda: TextData(seq_len=256), description="plain text (without prompts)")
    prompts: PromptData | None = Field(None, description="prompt / completion or chat data instead of plain text")
    objective: Objective = Field(default_factory=Objective)
    generation: Generation = Field(default_factory=Generation, description="on-policy and sequence-level KD")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(
            max_steps=200, batch_size=8, lr=1e-3, warmup_steps=10, log_every=10, eval_every=50, clip_grad_norm=1.0
        ),
    )
    eval_batch_size: int = Field(8, gt=0, description="sequences per evaluation forward pass")
    compile: bool = Field(
        False,
        description="torch.compile both decoders of the distillation step and the student's sampling step (a static "
        "key/value cache); needs objective.fused and a C++ compiler on the CPU; the first steps compile (minutes)",
    )
    gguf: OutType | None = Field(
        None, description="also write model.gguf for llama.cpp, weights in this type (llama.cpp's own converter)"
    )

    @model_validator(mode="after")
    def _learns(self) -> Config:
        if not self.objective.terms(False):
            raise ValueError("the student learns nothing: objective.kd_weight and objective.ce_weight are both 0")
        g = self.generation
        generated = {"generation.lam": g.lam > 0, "generation.targets=teacher": g.targets == "teacher"}
        for what, on in generated.items():
            if on and self.prompts is None:
                raise ValueError(f"{what} generates completions of prompts: give prompts=... (not plain text)")
            if on and self.teacher.cache:
                raise ValueError(f"{what} needs the live teacher: a cache holds no signals for generated completions")
        if self.compile and not self.objective.fused:
            raise ValueError("compile=true compiles the fused distillation step: set objective.fused=true")
        return self


def run(cfg: Config, resume: str | Path | None = None) -> Result:
    # 1-2. everything a user can get wrong fails before the run directory exists
    teacher, tokenizer = load_causal_lm(cfg.teacher)
    logits = cfg.student.widths(tokenizer, "student").get("vocab", teacher.config.vocab_size)
    if logits != teacher.config.vocab_size:  # e.g. one of them padded its embedding: the logits do not line up
        raise DistillError(f"the student has {logits:,} output logits and the teacher {teacher.config.vocab_size:,}")
    train, val = sft_splits(cfg.prompts, tokenizer) if cfg.prompts else token_splits(cfg.data, tokenizer)
    terms = cfg.objective.terms(masked=cfg.prompts is not None)
    if cfg.teacher.cache:
        terms = from_cache(terms)  # a divergence other than forward KL at T=1 needs the live teacher: one line
    check_fits(len(train["input_ids"]), cfg.train, "train")
    expected = check_cache(cfg.teacher.cache, teacher, tokenizer, train) if cfg.teacher.cache else None
    if cfg.gguf:
        converter_dir()  # found (or fetched) now: a missing converter must not end a finished training
    ctx = start(name, cfg, cfg.run, resume)
    dev = ctx.accelerator.device
    teacher.to(dev).eval().requires_grad_(False)
    student = cfg.student.build(tokenizer, lambda: ctx.seed_stage("student/init"), teacher.config.vocab_size).to(dev)

    def held_out(model: nn.Module) -> dict[str, float]:
        loss = lm_loss(model, val, ctx.accelerator, cfg.eval_batch_size)
        return {"val_loss": loss, "val_kl": lm_kl(model, teacher, val, ctx.accelerator, cfg.eval_batch_size)}

    # 3. distil
    before = held_out(student)
    if cfg.teacher.cache:
        train = open_or_capture(
            cfg.teacher.cache, teacher, tokenizer, train, cfg.teacher.capture, ctx.accelerator, expected
        )
    if cfg.generation.targets == "teacher":
        train = teacher_targets(cfg, ctx, teacher, tokenizer, train)
    live = None if cfg.teacher.cache else teacher
    distiller = lm_trainable(student, live, terms, cfg.objective.fused, cfg.compile).to(dev)
    g, pad = cfg.generation, pad_id(tokenizer)
    eos = tokenizer.eos_token_id
    trainee = OnPolicy(distiller, g.lam, g.max_new_tokens, g.temperature, eos, pad, cfg.compile) if g.lam else distiller
    ctx.fit(trainee, train, cfg.train, stage="student", eval_fn=held_out)

    # 4-5. evaluate and export
    rows = [_row("teacher", teacher, held_out(teacher)), _row("student before", student, before)]
    rows.append(_row("student after", student, held_out(student)))
    card = model_card(cfg, rows, len(train["input_ids"]))
    products = export_lm(ctx.accelerator, ctx.run.path, student, tokenizer, card, cfg.gguf)
    info = {"tokens_per_sample": cfg.prompts.seq_len if cfg.prompts else cfg.data.seq_len, "objective": terms[0].loss}
    if isinstance(trainee, OnPolicy):  # how many batches the student completed itself
        info["on_policy_batches"] = int(trainee.sampled)
    return ctx.finish(rows, products=products, info=info)


def teacher_targets(cfg: Config, ctx: Context, teacher: nn.Module, tokenizer: Any, train: Rows) -> dict[str, Tensor]:
    """Sequence-level KD's data: the teacher's greedy completion of every training prompt, generated once and kept
    in the run (a resumed run reads them)."""
    path = ctx.run.path / "teacher_targets.safetensors"
    if not path.is_file():
        pad = pad_id(tokenizer)
        done = []
        for i in tqdm(range(0, len(train["input_ids"]), 8), desc="teacher targets", unit="batch", disable=None):
            rows = {k: v[i : i + 8].to(ctx.accelerator.device) for k, v in train.items()}
            done.append(complete(teacher, rows, cfg.generation.max_new_tokens, 0.0, tokenizer.eos_token_id, pad))
        out = {k: torch.cat([d[k] for d in done]).cpu().contiguous() for k in ("input_ids", "labels", "loss_mask")}
        if ctx.run.is_main:
            atomic_write(path, save(out))
        ctx.accelerator.wait_for_everyone()
    return {**train, **load_file(str(path))}


def _row(model: str, lm: nn.Module, scores: dict[str, float]) -> dict:
    loss = scores["val_loss"]
    return {
        "model": model,
        "params": count_parameters(lm),
        "val_loss": round(loss, 4),
        "ppl": round(math.exp(min(loss, 50)), 2),
        "kl_to_teacher": round(scores["val_kl"], 4),
    }


def model_card(cfg: Config, rows: list[dict], train_rows: int) -> str:
    """The exported directory's README.md: where the student came from and how it scores."""
    o, t = cfg.objective, cfg.train
    if cfg.prompts:
        data = f"prompts `{cfg.prompts.path}` ({cfg.prompts.format}, the loss on completion tokens)"
    else:
        data = f"text `{cfg.data.source}` {' '.join(cfg.data.paths)}".strip()
    teacher = f"`{cfg.teacher.path}`" + (f" (from the signal cache `{cfg.teacher.cache}`)" if cfg.teacher.cache else "")
    student = f"`{cfg.student.path}`" if cfg.student.path else f"from scratch, shape {cfg.student.shape.model_dump()}"
    objective = o.divergence + (f" (beta {o.beta})" if o.divergence == "jsd" else "")
    return "\n".join(
        [
            "---",
            "library_name: transformers",
            "tags: [distill, knowledge-distillation]",
            "---",
            "",
            "# A student distilled with `distill lm`",
            "",
            f"- teacher: {teacher}",
            f"- student: {student}",
            f"- data: {data}; {train_rows:,} training rows",
            f"- objective: {objective} at temperature {o.temperature}, weight {o.kd_weight}; LM cross-entropy "
            f"weight {o.ce_weight}",
            f"- completions: {_completions(cfg.generation)}",
            f"- budget: {t.max_steps} steps of {t.batch_size} x {t.grad_accum} rows, lr {t.lr}, seed {cfg.run.seed}",
            "",
            "Held-out scores (mean next-token loss):",
            "",
            markdown_table(rows),
            "",
        ]
    )


def _completions(g: Generation) -> str:
    if g.targets == "teacher":
        return "the teacher's greedy completions of the prompts (sequence-level KD)"
    if g.lam:
        return f"the student's own samples in a share {g.lam} of the batches (on-policy, temperature {g.temperature})"
    return "the data's"


def table(result: Result) -> str:
    lines = [markdown_table(result.rows), "", f"exported model: {result.run_dir / result.products['model']}"]
    if "gguf" in result.products:
        lines.append(f"for llama.cpp: {result.run_dir / result.products['gguf']}")
    return "\n".join(lines)
