"""Label items with a teacher LLM: build each (prompt, sample) request, skip what the store already
holds, send the rest, and save every answer the moment it arrives."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator
from tqdm.auto import tqdm

from distill.config import Section
from distill.data.labeled_text import Item
from distill.labeling.clients import Request
from distill.labeling.store import LabelStore, Response
from distill.labeling.task import Messages, Task, prompt_hash


class Sampling(Section):
    """How the teacher is asked: the prompt mode and the samples per item (self-consistency)."""

    mode: Literal["direct", "cot"] = Field("cot", description="direct: the label; cot: a rationale, then the label")
    samples: int = Field(8, gt=0, description="answers per item (the paper: 8); 1 with temperature 0 is greedy")
    temperature: float = Field(0.5, ge=0, description="sampling temperature (the paper: 0.5)")
    max_tokens: int = Field(96, gt=0, description="longest answer")
    seed: int = Field(0, description="sample k of a prompt is drawn with a seed derived from this, the prompt and k")

    @model_validator(mode="after")
    def _greedy_once(self) -> Sampling:
        if self.samples > 1 and self.temperature == 0:
            raise ValueError("samples > 1 needs temperature > 0: greedy answers would all be the same")
        return self

    def params(self) -> dict:
        return {"mode": self.mode, "temperature": self.temperature, "max_tokens": self.max_tokens}


@dataclass
class Labelled:
    labels: dict[str, list[str | None]]  # item id -> parsed label of each sample
    new: int  # responses requested in this call
    seconds: float  # wall time of those requests


def requests(task: Task, items: Sequence[Item], sampling: Sampling) -> list[tuple[Item, Request]]:
    return prompt_requests([(item, task.messages(item.text, sampling.mode)) for item in items], sampling)


def prompt_requests(prompts: Sequence[tuple[Any, Messages]], sampling: Sampling) -> list[tuple[Any, Request]]:
    """K requests (samples) of each (item, chat)."""
    out = []
    for item, messages in prompts:
        key = prompt_hash(messages, sampling.params())
        for k in range(sampling.samples):
            seed = request_seed(key, k, sampling.seed)
            out.append((item, Request(key, k, messages, sampling.temperature, sampling.max_tokens, seed)))
    return out


def request_seed(key: str, sample: int, seed: int) -> int:
    """The sampling seed of sample k of a prompt: fixed, so a repeated request gives the same answer."""
    return (int(key[:8], 16) + 1_000_003 * seed + sample) % 2**31


def label(
    store: LabelStore, client, teacher: str, task: Task, items: Sequence[Item], sampling: Sampling, desc: str = "label"
) -> Labelled:
    """Every item's K parsed labels; only the answers the store lacks are requested."""
    return ask(store, client, teacher, requests(task, items, sampling), task.parse, sampling.mode, desc)


def ask(
    store: LabelStore,
    client,
    teacher: str,
    todo: Sequence[tuple[Item, Request]],
    parse: Callable[[str], str | None],
    mode: str,
    desc: str = "ask",
) -> Labelled:
    """Send the requests the store lacks, save each answer (raw and `parse`d) the moment it arrives, and
    return every item's parsed answers in request order. Any prompt and any parser: labels, decompositions."""
    have = store.done(teacher, [(r.key, r.sample) for _, r in todo])
    pending = [(item, r) for item, r in todo if (r.key, r.sample) not in have]
    by_request = {id(r): item for item, r in pending}
    t0 = time.perf_counter()
    with tqdm(total=len(todo), initial=len(todo) - len(pending), desc=desc, unit="answer", dynamic_ncols=True) as bar:
        for r, gen in client.generate([r for _, r in pending]):
            item = by_request[id(r)]
            store.put(
                Response(
                    teacher,
                    r.key,
                    r.sample,
                    item.id,
                    mode,
                    gen.text,
                    parse(gen.text),
                    gen.latency_s,
                    gen.prompt_tokens,
                    gen.completion_tokens,
                    gen.logprobs,
                )
            )
            bar.update(1)
    seconds = time.perf_counter() - t0
    # this call's answers, parsed again from the stored replies: the parser may have learned a form since
    stored = store.raw(teacher, [(r.key, r.sample) for _, r in todo])
    labels: dict[str, list[str | None]] = {item.id: [] for item, _ in todo}
    for item, r in todo:
        labels[item.id].append(parse(stored[(r.key, r.sample)]))
    return Labelled(labels, len(pending), seconds)
