"""The labelling stages every labelling recipe shares: its config, the checks before a run starts,
and labelling one split into the store (votes, agreement, the teacher's own scores)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from distill.config import RuntimeConfig, Section
from distill.data.labeled_text import Item, TextItems, load_splits
from distill.errors import DistillError
from distill.labeling.aggregate import scores, vote
from distill.labeling.clients import Generation, LlmTeacher, LocalClient, LocalTeacher, Request, ServerClient, client
from distill.labeling.pipeline import Sampling, label
from distill.labeling.task import Task, load_task

TASKS = Path(__file__).resolve().parent / "tasks"
THRESHOLDS = [0.0, 0.5, 0.625, 0.75, 0.875, 1.0]


class LabelConfig(Section):
    """What a labelling run asks of which teacher, and where the answers go."""

    run: RuntimeConfig = Field(default_factory=RuntimeConfig, description="run directory, seed")
    task: str = Field(
        "movie_sentiment",
        description=f"a task YAML file, or a bundled task: {sorted(p.stem for p in TASKS.glob('*.yaml'))}",
    )
    data: TextItems = Field(default_factory=TextItems, description="the texts")
    teacher: LlmTeacher = Field(default_factory=LocalTeacher, description="teacher.kind: server | local")
    sampling: Sampling = Field(default_factory=Sampling, description="prompt mode and self-consistency")
    store: str | None = Field(
        None, description="SQLite label store (default: <run>/labels.sqlite); share it to reuse answers"
    )
    splits: list[Literal["pool", "test"]] = Field(["pool", "test"], description="what to label")
    export: Literal["jsonl", "parquet", "datasets"] | None = Field("jsonl", description="export format (null: none)")


def resolve_task(name: str) -> Task:
    bundled = TASKS / f"{name}.yaml"
    return load_task(bundled if bundled.is_file() else name)


def check_inputs(cfg, resume, need_gold: bool = False) -> tuple[Task, dict[str, list[Item]], Any]:
    """The task, the splits and the teacher, everything a user can get wrong checked before a run directory
    exists (the recipe makes it next)."""
    task = resolve_task(cfg.task)
    splits = load_splits(cfg.data)
    unknown = {i.gold for s in splits.values() for i in s if i.gold is not None} - set(task.names)
    if unknown:
        raise DistillError(f"gold labels {sorted(unknown)} are not labels of task {task.name!r} {task.names}")
    if need_gold and (not splits["test"] or any(i.gold is None for i in splits["test"])):
        raise DistillError(
            "students are scored on gold labels: the test texts need them (data.label_field, data.test_fraction > 0)"
        )
    if any(i.gold is None for i in splits["val"]):
        raise DistillError("data.val_size: choices are made on gold labels, and some validation texts have none")
    return task, splits, teacher_client(cfg.teacher, resume)


def teacher_client(spec: LlmTeacher, resume: object) -> ServerClient | LocalClient | OnDemand:
    """A new run's teacher, checked now (an unreachable server stops it before its directory exists); a resumed
    run's, reached only when an answer is missing (it may hold every one already)."""
    if resume is not None:
        return OnDemand(spec)
    teacher = client(spec)
    teacher.check()
    return teacher


class OnDemand:
    """A teacher client made (and checked) at the first request it has to send, not before."""

    def __init__(self, spec: LlmTeacher) -> None:
        self.spec = spec
        self._client: ServerClient | LocalClient | None = None

    def generate(self, requests: list[Request]) -> Iterator[tuple[Request, Generation]]:
        if not requests:
            return iter(())
        if self._client is None:
            self._client = client(self.spec)
            self._client.check()
        return self._client.generate(requests)


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
        row.update(
            {
                f"teacher_{k}": round(v, 4)
                for k, v in scores([v.label for v in votes], [i.gold for i in items], task.names).items()
            }
        )
    return row, votes
