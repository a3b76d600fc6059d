"""Label texts with a teacher LLM: few-shot prompts, optional chain of thought, K samples per text.

Stages, in order:
    1. inputs    the task file and the texts (pool to label, held-out test set)
    2. teacher   an OpenAI-compatible server (checked before anything runs) or a local model
    3. label     every (prompt, sample) the store lacks is asked; answers saved as they arrive
    4. votes     majority label, agreement and soft score per text; accuracy where gold labels exist
    5. export    responses as JSONL / Parquet / a datasets directory; results and report
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.context import Result, start
from distill.labeling import coverage_precision
from distill.labeling.stages import THRESHOLDS, LabelConfig, check_inputs, label_split
from distill.labeling.store import LabelStore
from distill.report import markdown_table

name = "label"


class Config(LabelConfig):
    """`distill label`: label texts with a teacher LLM into a durable store."""


def run(cfg: Config, resume: str | Path | None = None) -> Result:
    task, splits, teacher = check_inputs(cfg, resume)
    ctx = start(name, cfg, cfg.run, resume)
    store = LabelStore(cfg.store or ctx.run.path / "labels.sqlite")
    rows, curve = [], []
    for split in cfg.splits:
        row, votes = label_split(cfg, task, splits[split], teacher, store, split)
        rows.append(row)
        if "teacher_accuracy" in row:
            golds = [i.gold for i in splits[split]]
            curve += [{"split": split, **c} for c in coverage_precision(votes, golds, THRESHOLDS)]
    products: dict[str, Any] = {"store": str(store.path)}
    if cfg.export and ctx.run.is_main:
        suffix = {"jsonl": ".jsonl", "parquet": ".parquet", "datasets": ""}[cfg.export]
        store.export(ctx.run.path / f"responses{suffix}", cfg.export, teacher=cfg.teacher.name)
        products["responses"] = f"responses{suffix}"
    store.close()
    return ctx.finish(
        rows,
        products=products,
        tables={"coverage_precision": curve},
        info={"teacher": cfg.teacher.name, "task": task.name},
    )


def table(result: Result) -> str:
    return markdown_table(result.rows)
