"""Minitron: prune an LLM by activation importance, distill it back, export a smaller HF model.

Stages, in order (Compact Language Models via Pruning and Knowledge Distillation, and
LLM Pruning and Distillation in Practice: The Minitron Approach):
    1. data        tokenize and pack the corpus; hold its end out
    2. correct     optionally fine-tune the teacher on the corpus first (teacher correction)
    3. importance  activation importance of channels, neurons, heads and layers (saved; reusable)
    4. target      an explicit shape, or the best of the candidates for a parameter budget (search)
    5. prune       slice the teacher to the target
    6. distill     forward KL to the teacher's logits (T=1), optionally + LM cross-entropy
    7. evaluate    held-out perplexity, parameters, tokens/s and greedy samples of each model
    8. export      the student as a normal Hugging Face directory
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from distill.config import Section
from distill.context import Context, Result, RuntimeConfig, start
from distill.data.text import Rows, TextData, token_splits
from distill.engine import Data, EvalFn, TrainConfig, check_fits
from distill.errors import ConfigError, DistillError
from distill.evaluate import lm_loss
from distill.kd import Term, Terms, supervised
from distill.kd.cache import CachedTeacher, check_cache, from_cache, open_or_capture
from distill.kd.lm_stage import export_lm, lm_trainable
from distill.models.gguf import OutType, converter_dir
from distill.models.llm import load_causal_lm
from distill.pruning import Importance, LlmShape, check_supported, compute_importance, prune
from distill.pruning.prune import layers_to_keep
from distill.pruning.search import candidates, pick
from distill.report import markdown_table

if TYPE_CHECKING:
    from transformers import PreTrainedModel

name = "minitron"
# tokens each search candidate trains on before the ranking: where its pick and ranking settle,
# benchmarks/results/minitron_search.md
SEARCH_TOKENS = 40_960


class Target(Section):
    """The pruned shape: explicit sizes (null keeps the teacher's), or a parameter budget."""

    hidden: int | None = Field(None, gt=0, description="embedding channels")
    ffn: int | None = Field(None, gt=0, description="MLP neurons per layer")
    heads: int | None = Field(None, gt=0, description="query heads per layer (a multiple of the KV heads)")
    layers: int | None = Field(None, gt=0, description="decoder layers")
    params: float | None = Field(None, gt=0, description="budget: a fraction (<= 1) or a count of parameters")
    depth_metric: Literal["lm_loss", "block"] = Field("lm_loss", description="which layers to drop first")

    @model_validator(mode="after")
    def _one_way(self) -> Target:
        explicit = any(v is not None for v in (self.hidden, self.ffn, self.heads, self.layers))
        if explicit == (self.params is not None):
            raise ValueError("give either an explicit shape (hidden/ffn/heads/layers) or a params budget, not both")
        return self


class Search(Section):
    """Architecture search over candidate shapes for a params budget."""

    candidates: int = Field(4, gt=0, description="how many candidate shapes get a short distillation")
    tolerance: float = Field(0.05, gt=0, lt=1, description="candidates lie within this share of the budget")
    tokens: int = Field(
        SEARCH_TOKENS,
        gt=0,
        description="training tokens each candidate is distilled on before the ranking (steps: this over "
        "batch_size x grad_accum x seq_len x processes, rounded up); benchmarks/minitron_search.py measures how "
        "stable the ranking is across budgets",
    )
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(batch_size=4, lr=3e-4, warmup_steps=2, log_every=5, schedule="constant"),
        description="how each candidate trains (its length is search.tokens); a constant rate after warmup, so "
        "a ranking part-way is the ranking a shorter search would give",
    )

    @model_validator(mode="after")
    def _budget_in_tokens(self) -> Search:
        if self.train.max_steps is not None:
            raise ValueError("give the search's budget as search.tokens, not search.train.max_steps")
        return self

    def steps(self, seq_len: int, processes: int = 1) -> int:
        per_step = self.train.batch_size * self.train.grad_accum * seq_len * processes
        return -(-self.tokens // per_step)


class Config(Section):
    """`distill minitron`: prune an LLM by activation importance, then distill it back."""

    run: RuntimeConfig = Field(default_factory=RuntimeConfig, description="run directory, seed, precision")
    teacher: CachedTeacher = Field(default_factory=CachedTeacher, description="the model to prune")
    data: TextData = Field(default_factory=TextData, description="distillation corpus")
    calibration: int = Field(1024, gt=0, description="calibration sequences for importance")
    calibration_batch_size: int = Field(8, gt=0, description="sequences per calibration forward pass")
    depth_batches: int = Field(
        4, ge=0, description="calibration batches scored per dropped layer (0: none, for targets that keep every layer)"
    )
    importance_from: str | None = Field(None, description="a run directory whose importance/ to reuse")
    target: Target = Field(default_factory=lambda: Target(params=0.5), description="the pruned shape")
    search: Search = Field(default_factory=Search, description="architecture search (params budget only)")
    correction: TrainConfig | None = Field(None, description="teacher correction: fine-tune it on the corpus first")
    objective: Terms = Field(
        default_factory=lambda: [
            Term(name="kd", loss="kl", inputs=["student.logits", "teacher.logits"], args={"chunk_size": 1024}),
        ],
        description="distillation loss terms (forward KL at T=1, chunked, by default)",
    )
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(
            max_steps=200, batch_size=8, lr=1e-4, warmup_steps=10, log_every=10, eval_every=50, clip_grad_norm=1.0
        ),
        description="how the pruned student is distilled",
    )
    hidden_loss: float = Field(
        0.0,
        ge=0,
        description="weight of the intermediate hidden-state loss: cosine between each student layer's output and "
        "that of the teacher layer it was pruned from (learned projection when widths differ), scaled each step "
        "to the first objective term's size (0: off)",
    )
    fused: bool = Field(
        True,
        description="a logit divergence (+ CE) objective trains the fused output projection + divergence, a chunk of "
        "positions at a time (the same loss, neither model's full logits in memory); false: the general objective",
    )
    gguf: OutType | None = Field(None, description="also write model.gguf for llama.cpp, weights in this type")
    eval_batch_size: int = Field(8, gt=0, description="sequences per evaluation forward pass")
    samples: list[str] = Field(
        default_factory=lambda: ["It is a truth universally acknowledged", "Emma Woodhouse, handsome,"],
        description="prompts for greedy samples in the report",
    )
    sample_tokens: int = Field(24, ge=0, description="new tokens per greedy sample")
    sample_repetition_penalty: float = Field(
        1.0, ge=1.0, description="generate()'s repetition_penalty for the samples, every model alike (1: plain greedy)"
    )


def run(cfg: Config, resume: str | Path | None = None) -> Result:
    if cfg.teacher.cache and cfg.hidden_loss:
        raise DistillError("hidden_loss reads the teacher's hidden states, which a teacher cache does not hold")
    objective = from_cache(cfg.objective) if cfg.teacher.cache else cfg.objective  # checked before any work
    teacher, tokenizer = load_causal_lm(cfg.teacher, check=check_supported)
    shape, target, shapes = LlmShape.of(teacher.config), None, []
    if cfg.target.params is None:  # check the target before any work (calibration takes minutes)
        target = shape.with_(**cfg.target.model_dump(include={"hidden", "ffn", "heads", "layers"}))
        shape.check_prunable_to(target)
    else:
        shapes = candidate_shapes(cfg, shape)
    if not cfg.depth_batches and cfg.target.depth_metric == "lm_loss":
        dropping = [s for s in ([target] if target else shapes) if s.layers < shape.layers]
        if dropping:
            raise DistillError(
                f"depth_batches=0 skips the layer-drop scores, but a target of {dropping[0].layers} "
                f"layers (the teacher has {shape.layers}) drops layers by them: set depth_batches > 0 "
                "or target.depth_metric=block"
            )
    train, val = token_splits(cfg.data, tokenizer)
    data: Data = train  # what the students read: these rows, or the teacher's cache of them
    search_train = cfg.search.train.model_copy(update={"max_steps": cfg.search.steps(cfg.data.seq_len)})
    for where, tcfg in [("train", cfg.train), ("search.train", search_train), ("correction", cfg.correction)]:
        if tcfg is not None and (where != "search.train" or shapes):
            check_fits(len(train["input_ids"]), tcfg, where)
    expected = None
    if cfg.teacher.cache and cfg.correction is None:  # a corrected teacher is known only after its correction
        expected = check_cache(cfg.teacher.cache, teacher, tokenizer, train)
    if cfg.gguf:
        converter_dir()  # found (or fetched) now: a missing converter must not end a finished run
    ctx = start(name, cfg, cfg.run, resume)
    dev = ctx.accelerator.device
    teacher.to(dev)

    def evaluate(model: nn.Module) -> dict[str, float]:
        loss = lm_loss(model, val, ctx.accelerator, cfg.eval_batch_size)
        return {"val_loss": loss, "ppl": math.exp(min(loss, 50))}

    if cfg.correction is not None:
        ctx.fit(supervised(teacher), train, cfg.correction, stage="correction", eval_fn=evaluate)
        teacher.eval().requires_grad_(False)

    imp = importance(cfg, ctx, teacher, train)
    if cfg.teacher.cache:  # after the correction: the cache holds the teacher the students learn from
        data = open_or_capture(
            cfg.teacher.cache, teacher, tokenizer, train, cfg.teacher.capture, ctx.accelerator, expected
        )
    teachers = {} if cfg.teacher.cache else {"teacher": teacher}
    table: list[dict[str, Any]] = []
    if target is None:
        target, table = search(cfg, ctx, teacher, imp, shapes, data, evaluate, objective, teachers)

    ctx.seed_stage("student/init")
    student = prune(teacher, imp, target, cfg.target.depth_metric).to(dev)
    pruned_eval = evaluate(student)
    distiller = lm_trainable(student, teachers.get("teacher"), objective + hidden_terms(cfg, imp, target), cfg.fused)
    distiller.to(dev)
    final = ctx.fit(distiller, data, cfg.train, stage="student", eval_fn=evaluate)

    rows = [
        _row("teacher", teacher, evaluate(teacher), tokenizer, cfg),
        _row("pruned (before KD)", student, pruned_eval, None, cfg),
        _row("distilled", student, final or evaluate(student), tokenizer, cfg),
    ]
    products = export_lm(ctx.accelerator, ctx.run.path, student, tokenizer, gguf=cfg.gguf)
    info = {
        "target": target.as_dict(),
        "tokens_per_sample": cfg.data.seq_len,
        "train_tokens": _tokens(cfg.train, cfg.data.seq_len, ctx),
    }
    return ctx.finish(rows, products=products, tables={"search": table}, info=info)


def importance(cfg: Config, ctx: Context, teacher: PreTrainedModel, train: Rows) -> Importance:
    """`importance_from`'s saved scores, else this run's (computed once, saved)."""
    if cfg.importance_from:
        d = Path(cfg.importance_from) / "importance"
        if not Importance.exists(d):
            raise DistillError(f"{cfg.importance_from} holds no importance/ scores")
        return Importance.load(d)
    calib = train["input_ids"][: cfg.calibration].to(ctx.accelerator.device)
    return ctx.once(
        "importance",
        lambda: compute_importance(teacher, calib.split(cfg.calibration_batch_size), cfg.depth_batches),
        save=Importance.save,
        load=Importance.load,
    )


def hidden_terms(cfg: Config, imp: Importance, target: LlmShape) -> list[Term]:
    """Student layer i against the teacher layer it came from, each balanced against the first term."""
    if cfg.hidden_loss == 0:
        return []
    kept = layers_to_keep(imp, target.layers, cfg.target.depth_metric).tolist()
    return [
        Term(
            name=f"hidden{i}",
            loss="hint",
            weight=cfg.hidden_loss / len(kept),
            args={"kind": "cosine"},
            inputs=[f"student.model.layers.{i}", f"teacher.model.layers.{k}"],
            balance_with=cfg.objective[0].name,
        )
        for i, k in enumerate(kept)
    ]


def candidate_shapes(cfg: Config, shape: LlmShape) -> list[LlmShape]:
    """The shapes the search tries for the params budget; a clear error when none is near it."""
    params = cfg.target.params
    if params is None:
        raise ConfigError("set target.params: a fraction (<= 1) or a count of the teacher's parameters")
    budget = params * shape.params() if params <= 1 else params
    shapes = pick(candidates(shape, int(budget), cfg.search.tolerance), cfg.search.candidates)
    if not shapes:
        raise DistillError(
            f"no candidate shape lies within {cfg.search.tolerance:.0%} of {int(budget):,} parameters (the teacher "
            f"has {shape.params():,}); change target.params or search.tolerance"
        )
    return shapes


def search(
    cfg: Config,
    ctx: Context,
    teacher: PreTrainedModel,
    imp: Importance,
    shapes: list[LlmShape],
    train: Data,
    evaluate: EvalFn,
    objective: list[Term],
    teachers: dict[str, nn.Module],
) -> tuple[LlmShape, list[dict]]:
    """Prune to each candidate, distill it on search.tokens tokens, keep the lowest validation loss."""
    steps = cfg.search.steps(cfg.data.seq_len, ctx.accelerator.num_processes)
    tcfg = cfg.search.train.model_copy(update={"max_steps": steps})
    tokens = _tokens(tcfg, cfg.data.seq_len, ctx)
    table = []
    for i, cand in enumerate(shapes):
        ctx.seed_stage(f"search-{i}/init")
        student = prune(teacher, imp, cand, cfg.target.depth_metric).to(ctx.accelerator.device)
        distiller = lm_trainable(student, teachers.get("teacher"), objective, cfg.fused).to(ctx.accelerator.device)
        metrics = ctx.fit(distiller, train, tcfg, stage=f"search-{i}", eval_fn=evaluate)
        row = {"stage": f"search-{i}", **cand.as_dict(), "params": cand.params(), "tokens": tokens}
        table.append({**row, "val_loss": metrics["val_loss"]})
    best = min(range(len(shapes)), key=lambda i: table[i]["val_loss"])
    table.sort(key=lambda r: r["val_loss"])
    return shapes[best], table


def _row(name: str, model: Any, metrics: dict[str, float], tokenizer, cfg: Config) -> dict[str, Any]:
    params = sum(p.numel() for p in model.parameters())
    row = {"model": name, "params": params, "val_loss": round(metrics["val_loss"], 4), "ppl": round(metrics["ppl"], 2)}
    if tokenizer is not None:
        row["tokens_per_s"], row["samples"] = _generate(model, tokenizer, cfg)
    return row


@torch.no_grad()
def _generate(model: Any, tokenizer, cfg: Config) -> tuple[float, list[str]]:
    """Greedy continuations of the sample prompts, and decode speed in new tokens per second."""
    model.eval()
    texts, new_tokens, seconds = [], 0, 0.0
    for prompt in cfg.samples:
        ids = tokenizer(prompt, return_tensors="pt").input_ids.to(next(model.parameters()).device)
        t0 = time.perf_counter()
        out = model.generate(
            ids,
            max_new_tokens=cfg.sample_tokens,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
            repetition_penalty=cfg.sample_repetition_penalty,
        )
        seconds += time.perf_counter() - t0
        new_tokens += out.shape[1] - ids.shape[1]
        texts.append(tokenizer.decode(out[0], skip_special_tokens=True))
    return round(new_tokens / max(seconds, 1e-9), 1), texts


def _tokens(tcfg: TrainConfig, seq_len: int, ctx: Context) -> int | None:
    if tcfg.max_steps is None:
        return None
    return tcfg.max_steps * tcfg.batch_size * tcfg.grad_accum * seq_len * ctx.accelerator.num_processes


def table(result: Result) -> str:
    t = result.info["target"]
    columns = ["model", "params", "val_loss", "ppl", "tokens_per_s"]
    lines = [
        markdown_table(result.rows, columns, {"ppl": ".2f", "tokens_per_s": ".1f"}),
        "",
        f"pruned shape: layers {t['layers']}, hidden {t['hidden']}, ffn {t['ffn']}, heads {t['heads']}",
        f"exported model: {result.run_dir / result.products['model']}",
    ]
    return "\n".join(lines)
