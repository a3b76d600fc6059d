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
from typing import Any, Literal

from pydantic import Field

from distill.config import Section
from distill.data.labeled_text import Item, TextItems, load_items
from distill.errors import DistillError
from distill.labeling import Task, coverage_precision, load_task, scores, vote
from distill.labeling.pipeline import Sampling, label
from distill.recipes.common import Context, RuntimeConfig, start
from distill.report import markdown_table
from distill.store import LabelStore
from distill.teachers.generate import LocalTeacher, TeacherSpec, client

TASKS = Path(__file__).resolve().parent.parent / "labeling" / "tasks"
THRESHOLDS = [0.0, 0.5, 0.625, 0.75, 0.875, 1.0]


class Config(Section):
    """`distill label`: label texts with a teacher LLM into a durable store."""

    run: RuntimeConfig = Field(default_factory=RuntimeConfig, description="run directory, seed")
    task: str = Field(
        "movie_sentiment",
        description=f"a task YAML file, or a bundled task: {sorted(p.stem for p in TASKS.glob('*.yaml'))}",
    )
    data: TextItems = Field(default_factory=TextItems, description="the texts")
    teacher: TeacherSpec = Field(default_factory=LocalTeacher, description="teacher.kind: server | local")
    sampling: Sampling = Field(default_factory=Sampling, description="prompt mode and self-consistency")
    store: str | None = Field(
        None, description="SQLite label store (default: <run>/labels.sqlite); share it to reuse answers"
    )
    splits: list[Literal["pool", "test"]] = Field(default_factory=lambda: ["pool", "test"], description="what to label")
    export: Literal["jsonl", "parquet", "datasets"] | None = Field("jsonl", description="export format (null: none)")


def resolve_task(name: str) -> Task:
    bundled = TASKS / f"{name}.yaml"
    return load_task(bundled if bundled.is_file() else name)


def prepare(
    cfg, recipe: str, resume, need_gold: bool = False
) -> tuple[Context, Task, dict[str, list[Item]], Any, LabelStore]:
    """Everything a user can get wrong is checked before the run directory exists."""
    task = resolve_task(cfg.task)
    pool, test = load_items(cfg.data)
    unknown = {i.gold for i in pool + test if i.gold is not None} - set(task.names)
    if unknown:
        raise DistillError(f"gold labels {sorted(unknown)} are not labels of task {task.name!r} {task.names}")
    if need_gold and (not test or any(i.gold is None for i in test)):
        raise DistillError("students are scored on gold labels: the test texts need them (data.label_field, "
                           "data.test_fraction > 0)")  # fmt: skip
    teacher = client(cfg.teacher)
    teacher.check()
    ctx = start(recipe, cfg, cfg.run, resume)
    store = LabelStore(cfg.store or ctx.run.path / "labels.sqlite")
    return ctx, task, {"pool": pool, "test": test}, teacher, store


def label_split(cfg, task, items, teacher, store, name: str) -> tuple[dict[str, Any], list]:
    """Label one split; its result row and each item's vote."""
    done = label(store, teacher, cfg.teacher.name, task, items, cfg.sampling, desc=f"label {name}")
    votes = [vote(done.labels[i.id], task.values) for i in items]
    answers = [lab for i in items for lab in done.labels[i.id]]
    row: dict[str, Any] = {
        "split": name,
        "texts": len(items),
        "answers": len(answers),
        "parsed": round(sum(a is not None for a in answers) / max(len(answers), 1), 4),
        "agreement": round(sum(v.agreement for v in votes) / max(len(votes), 1), 4),
        "new_answers": done.new,
        "texts_per_s": round(done.new / cfg.sampling.samples / done.seconds, 3) if done.new else None,
    }
    if items and all(i.gold is not None for i in items):
        row.update({f"teacher_{k}": round(v, 4) for k, v in scores([v.label for v in votes], [i.gold for i in items],
                                                                   task.names).items()})  # fmt: skip
    return row, votes


def run(cfg: Config, resume: str | Path | None = None) -> dict[str, Any]:
    ctx, task, splits, teacher, store = prepare(cfg, "label", resume)
    rows, curve = [], []
    for name in cfg.splits:
        row, votes = label_split(cfg, task, splits[name], teacher, store, name)
        rows.append(row)
        if "teacher_accuracy" in row:
            curve += [
                {"split": name, **c} for c in coverage_precision(votes, [i.gold for i in splits[name]], THRESHOLDS)
            ]
    if cfg.export and ctx.run.is_main:
        suffix = {"jsonl": ".jsonl", "parquet": ".parquet", "datasets": ""}[cfg.export]
        store.export(ctx.run.path / f"responses{suffix}", cfg.export, teacher=cfg.teacher.name)
    store.close()
    result = {"recipe": "label", "run_dir": str(ctx.run.path), "rows": rows, "coverage_precision": curve,
              "teacher": cfg.teacher.name, "task": task.name}  # fmt: skip
    return ctx.finish(result)


def table(result: dict[str, Any]) -> str:
    return markdown_table(result["rows"])
