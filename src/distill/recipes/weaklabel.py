"""LLM-labelled data -> a small classifier ("What do LLMs Know about Financial Markets?").

Stages, in order:
    1. label     the teacher labels the pool and the test texts (`distill label`'s stages; resumable);
                 splits=[pool] labels the pool only and scores the teacher there (its gold labels needed)
    2. votes     majority label, agreement ratio and soft score of every pool text
    3. students  an encoder trained on the teacher's labels: the soft score (reg, MSE; the default, as in
                 the paper; ties kept) and/or hard majority labels (cls), for each agreement threshold;
                 optionally on the gold labels too
    4. evaluate  accuracy and macro-F1 on the held-out gold labels: teacher vs students; with data.val_size,
                 each student's validation scores too, after every epoch (metrics.jsonl), to choose its epochs on
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from distill.config import Section
from distill.context import Context, Result, start
from distill.engine import TrainConfig
from distill.labeling import Task, scores
from distill.labeling.stages import LabelConfig, check_inputs, label_split
from distill.labeling.store import LabelStore
from distill.models.encoder import EncoderSpec, TextClassifier, load_encoder, load_tokenizer, predict, tokenize
from distill.report import markdown_table

name = "weaklabel"


class StudentConfig(Section):
    """The small model trained on the teacher's labels."""

    encoder: EncoderSpec = Field(default_factory=EncoderSpec)
    objectives: list[Literal["cls", "reg"]] = Field(
        ["reg"],
        description="reg: regress the soft score (the mean label value of the K answers; the paper's student, "
        "tied texts included); cls: the majority label (ties dropped)",
    )
    thresholds: list[float] = Field(
        default_factory=lambda: [0.0], description="train only on texts whose agreement is at least this"
    )

    @field_validator("thresholds")
    @classmethod
    def _shares(cls, thresholds: list[float]) -> list[float]:
        bad = [t for t in thresholds if not 0 <= t <= 1]
        if bad:
            raise ValueError(f"agreement thresholds are shares of the votes, in [0, 1]; got {bad}")
        return thresholds

    gold: bool = Field(True, description="also train on the gold labels (the supervised upper reference)")
    train: TrainConfig = Field(
        # small weak-label sets need many short steps: 3 epochs of batch 32 left MiniLM at the majority class
        default_factory=lambda: TrainConfig(
            epochs=8, batch_size=16, lr=1e-4, weight_decay=0.01, schedule="linear", warmup_steps=5, log_every=10
        )
    )


class Config(LabelConfig):
    """`distill weaklabel`: label texts with a teacher LLM, then train a small classifier on the labels."""

    student: StudentConfig = Field(default_factory=StudentConfig)

    @field_validator("splits")
    @classmethod
    def _pool(cls, splits: list[str]) -> list[str]:
        if "pool" not in splits:
            raise ValueError("the students learn from the pool's labels: splits must include pool")
        return splits


def run(cfg: Config, resume: str | Path | None = None) -> Result:
    task, splits, teacher = check_inputs(cfg, resume, need_gold=True)
    ctx = start(name, cfg, cfg.run, resume)
    store = LabelStore(cfg.store or ctx.run.path / "labels.sqlite")
    pool, test = splits["pool"], splits["test"]

    # 1-2. the teacher's labels and its own score: on the test set, or (splits=[pool]: K answers per test text
    # can cost more than the students) on the pool when its gold labels are known
    labelled = [label_split(cfg, task, pool, teacher, store, "pool")]
    if "test" in cfg.splits:
        labelled.append(label_split(cfg, task, test, teacher, store, "test"))
    store.close()
    del teacher  # a local teacher's weights are not needed any more
    votes, scored = labelled[0][1], labelled[-1][0]
    rows = []
    if "teacher_accuracy" in scored:
        where = "" if scored["split"] == "test" else ", on the pool"
        rows.append(
            {
                "model": f"teacher ({cfg.sampling.mode}, K={cfg.sampling.samples}){where}",
                "trained_on": "-",
                "accuracy": scored["teacher_accuracy"],
                "f1": scored["teacher_f1"],
            }
        )

    # 3-4. students
    s = cfg.student
    tok = load_tokenizer(s.encoder)
    held = {
        k: (tokenize(tok, [i.text for i in splits[k]], s.encoder.max_length), [i.gold for i in splits[k]])
        for k in ("test", "val")
        if splits[k]
    }
    jobs = [(obj, t) for obj in s.objectives for t in s.thresholds]
    for objective, threshold in jobs:
        # a tie has no majority label but a soft score (halfway): regression keeps it, classification cannot
        usable = (lambda v: v.label is not None) if objective == "cls" else (lambda v: v.soft is not None)
        kept = [(i, v) for i, v in zip(pool, votes) if usable(v) and v.agreement >= threshold]
        texts = [i.text for i, _ in kept]
        targets = [v.label for _, v in kept] if objective == "cls" else [v.soft for _, v in kept]
        stage = f"student-{objective}-agree{threshold:g}"
        rows.append(train_student(ctx, cfg, task, stage, objective, texts, targets, held, tok))
    if s.gold:
        gold_texts = [i.text for i in pool if i.gold]
        gold_labels = [i.gold for i in pool if i.gold is not None]  # the same texts' labels
        rows.append(train_student(ctx, cfg, task, "student-gold", "cls", gold_texts, gold_labels, held, tok))

    products = {
        r["model"]: f"{r['model']}/model.safetensors"
        for r in rows
        if r["model"].startswith("student") and r["accuracy"] is not None
    }
    tables = {"labelling": [row for row, _ in labelled]}
    return ctx.finish(
        rows,
        products=products,
        tables=tables,
        info={"teacher": cfg.teacher.name, "task": task.name},
    )


def train_student(
    ctx: Context,
    cfg: Config,
    task: Task,
    stage: str,
    objective: Literal["cls", "reg"],
    texts: list[str],
    targets: list,
    held: dict[str, tuple[dict, list]],
    tok,
) -> dict[str, Any]:
    """Fine-tune a fresh encoder on (texts, targets) through the engine; score it on the gold held-out sets
    (`held`: test, and val if any, each tokenized with its gold labels)."""
    s = cfg.student
    row = {"model": stage, "trained_on": len(texts), "accuracy": None, "f1": None}
    if len(texts) < s.train.batch_size:
        row["note"] = f"only {len(texts)} texts kept: too few for a batch"
        return row
    ctx.seed_stage(f"{stage}/init")
    model, _ = load_encoder(s.encoder, len(task.names) if objective == "cls" else 1)
    data = tokenize(tok, texts, s.encoder.max_length)
    if objective == "cls":
        data["labels"] = torch.tensor([task.names.index(t) for t in targets])
    else:
        data["targets"] = torch.tensor(targets, dtype=torch.float32)

    def evaluate(trained: torch.nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        for split, (tokens, gold) in held.items():
            got = scores(to_labels(task, predict(trained, tokens), objective), gold, task.names)
            out |= {(k if split == "test" else f"{split}_{k}"): v for k, v in got.items()}
        return out

    metrics = ctx.fit(TextClassifier(model, objective), data, s.train, stage=stage, eval_fn=evaluate)
    row.update(accuracy=round(metrics["accuracy"], 4), f1=round(metrics["f1"], 4))
    if "val_accuracy" in metrics:
        row["val_accuracy"] = round(metrics["val_accuracy"], 4)
    return row


def to_labels(task: Task, outputs: torch.Tensor, objective: str) -> list[str]:
    """Class logits -> argmax; a regression score -> the label whose value is nearest."""
    if objective == "cls":
        return [task.names[i] for i in outputs.argmax(-1).tolist()]
    values = torch.tensor([task.values[n] for n in task.names])
    return [task.names[i] for i in (outputs[:, :1] - values).abs().argmin(-1).tolist()]


def table(result: Result) -> str:
    return markdown_table(result.rows)
