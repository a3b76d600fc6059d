"""Prompt / completion and chat data, tokenized for a causal LM with the loss on the completion only.

A JSONL file of `{"prompt": ..., "completion": ...}` records, or of `{"messages": [{"role", "content"}, ...]}`
conversations rendered with the tokenizer's own chat template. Each record becomes one row of `seq_len` tokens
(right-padded): `input_ids`, `labels` (the next token, -100 where no loss is taken: the prompt, the user's
turns, the padding) and `loss_mask` (labels != -100), the mask the distillation terms read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from distill.config import Section
from distill.errors import DistillError

IGNORE = -100


class PromptData(Section):
    """Prompts and the completions (or assistant turns) the student learns, from a JSONL file."""

    path: str = Field(description="a JSONL file: prompt / completion records, or chat `messages`")
    format: Literal["prompt_completion", "messages"] = Field("prompt_completion", description="what a record holds")
    seq_len: int = Field(256, gt=1, description="tokens per row; a record that does not fit is an error")
    val_fraction: float = Field(0.05, gt=0, lt=1, description="share of records held out (the file's end)")
    max_sequences: int | None = Field(None, gt=0, description="use at most this many training records")
    max_val_sequences: int | None = Field(None, gt=0, description="evaluate on at most this many held-out records")


def pad_id(tokenizer) -> int:
    """The token that fills a row's end: the tokenizer's pad token, else its end of text."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def read_records(cfg: PromptData) -> list[dict[str, Any]]:
    path = Path(cfg.path)
    if not path.is_file():
        raise DistillError(f"prompt data {cfg.path} is not a file (a JSONL of {cfg.format} records)")
    records = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DistillError(f"{cfg.path}:{n}: not a JSON object ({e.msg})") from None
    if not records:
        raise DistillError(f"{cfg.path} holds no records")
    return records


def tokenize_record(record: dict[str, Any], fmt: str, tokenizer, where: str) -> tuple[list[int], list[bool]]:
    """The record's tokens and, per token, whether the model learns to produce it (completion / assistant)."""
    if fmt == "prompt_completion":
        if not isinstance(record.get("prompt"), str) or not isinstance(record.get("completion"), str):
            raise DistillError(f"{where}: a prompt_completion record needs string 'prompt' and 'completion' fields")
        prompt = tokenizer(record["prompt"], add_special_tokens=False)["input_ids"]
        completion = tokenizer(record["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return prompt + completion, [False] * len(prompt) + [True] * len(completion)
    messages = record.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise DistillError(f"{where}: a chat record needs a 'messages' list of {{role, content}} objects")
    if not getattr(tokenizer, "chat_template", None):
        raise DistillError("format=messages renders with the tokenizer's chat template, and this tokenizer has none")
    ids: list[int] = []
    learn: list[bool] = []
    for i, m in enumerate(messages):  # turn by turn: each render extends the last one's tokens
        header = len(ids)
        if m["role"] == "assistant":  # the assistant's header (the generation prompt) is given, not learned
            header = len(_render(tokenizer, messages[:i], True, ids, where))
        new = _render(tokenizer, messages[: i + 1], False, ids, where)
        learn += [False] * (header - len(ids)) + [m["role"] == "assistant"] * (len(new) - header)
        ids = new
    if not any(learn):
        raise DistillError(f"{where}: the conversation has no assistant turn to learn")
    return ids, learn


def _render(tokenizer, messages: list[dict], generation_prompt: bool, before: list[int], where: str) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if ids[: len(before)] != before:
        raise DistillError(f"{where}: the chat template renders a turn differently once later turns follow")
    return ids


def sft_rows(records: list[dict[str, Any]], cfg: PromptData, tokenizer, first: int = 1) -> dict[str, Tensor]:
    """Rows of `seq_len`: input_ids, labels (-100: no loss) and loss_mask; a record too long is an error."""
    pad = pad_id(tokenizer)
    n = len(records)
    input_ids = torch.full((n, cfg.seq_len), pad, dtype=torch.long)
    labels = torch.full((n, cfg.seq_len), IGNORE, dtype=torch.long)
    for r, record in enumerate(records):
        where = f"{cfg.path}: record {first + r}"
        ids, learn = tokenize_record(record, cfg.format, tokenizer, where)
        if len(ids) - 1 > cfg.seq_len:
            raise DistillError(f"{where} has {len(ids)} tokens, more than prompts.seq_len={cfg.seq_len} + 1")
        x, y = torch.tensor(ids[:-1]), torch.tensor(ids[1:])
        input_ids[r, : len(x)] = x
        labels[r, : len(y)] = y.masked_fill(~torch.tensor(learn[1:]), IGNORE)
    return {"input_ids": input_ids, "labels": labels, "loss_mask": labels != IGNORE}


def sft_splits(cfg: PromptData, tokenizer) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(train, held-out): the file's last val_fraction of records is held out."""
    records = read_records(cfg)
    n_val = max(1, int(len(records) * cfg.val_fraction))
    if len(records) - n_val < 1:
        raise DistillError(f"{cfg.path}: {len(records)} records are too few to hold {n_val} out")
    train = records[:-n_val][: cfg.max_sequences]
    val = records[-n_val:][: cfg.max_val_sequences]
    return sft_rows(train, cfg, tokenizer), sft_rows(val, cfg, tokenizer, first=len(records) - n_val + 1)
