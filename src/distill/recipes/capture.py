"""Capture a teacher's signals once, for many students: `distill capture teacher.path=... cache=DIR`.

Stages, in order:
    1. data      tokenize and pack the corpus (in memory, or memory-mapped shards); the training split
    2. capture   the teacher over every training row: top-k log-probabilities per position, in shards
                 (resumable: a rerun or `--resume` computes only the shards that are missing)
    3. report    rows, tokens, k, size on disk, tokens/s

A student's recipe reads the cache with `teacher.cache=DIR` (e.g. `distill minitron`), given the same
teacher, tokenizer, corpus and sequence length; anything else is refused with one line.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from distill.config import Section
from distill.context import Result, RuntimeConfig, start
from distill.data.text import TextData, token_splits
from distill.kd.cache import CacheConfig, check_cache, open_or_capture
from distill.models.llm import LlmSpec, load_causal_lm
from distill.report import markdown_table

name = "capture"


class Config(Section):
    """`distill capture`: run an LLM teacher once over a corpus and store its top-k log-probabilities."""

    run: RuntimeConfig = Field(default_factory=RuntimeConfig, description="run directory, seed, precision")
    teacher: LlmSpec = Field(default_factory=LlmSpec, description="the teacher")
    data: TextData = Field(default_factory=TextData, description="the corpus (its training split is captured)")
    cache: str = Field(description="directory of the cache (created, or completed when a capture was cut off)")
    capture: CacheConfig = Field(default_factory=CacheConfig, description="k, shard size, batch size")


def run(cfg: Config, resume: str | Path | None = None) -> Result:
    teacher, tokenizer = load_causal_lm(cfg.teacher)
    train, _ = token_splits(cfg.data, tokenizer)
    expected = check_cache(cfg.cache, teacher, tokenizer, train)  # another teacher's cache: refused before any work
    ctx = start(name, cfg, cfg.run, resume)
    teacher.to(ctx.accelerator.device)
    cache = open_or_capture(cfg.cache, teacher, tokenizer, train, cfg.capture, ctx.accelerator, expected)
    stats, seq_len = cache.captured, cache.manifest["seq_len"]
    size = sum(f.stat().st_size for f in Path(cfg.cache).iterdir())
    row = {
        "rows": len(cache),
        "tokens": len(cache) * seq_len,
        "k": cache.k,
        "shards": len(cache.files),
        "mb_on_disk": round(size / 2**20, 1),
        "captured_now": stats["tokens"],
        "tokens_per_s": round(stats["tokens"] / stats["seconds"], 1) if stats["seconds"] else None,
    }
    return ctx.finish([row], products={"cache": str(cfg.cache)}, info=cache.manifest)


def table(result: Result) -> str:
    return markdown_table(result.rows) + f"\n\ncache: {result.products['cache']}"
