"""A classification task for a teacher LLM: labels (names, aliases, values), an instruction, few-shot
exemplars with optional rationales; the chat prompt of each mode, and strict parsing of answers.

Modes: `direct` (the label alone), `cot` (a rationale, then `Answer: <label>`). Self-consistency is
`cot` (or `direct`) sampled K times at a temperature: a matter of sampling, not of the prompt.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from distill.config import format_errors
from distill.errors import DistillError

Mode = Literal["direct", "cot"]
Messages = list[dict[str, str]]
ANSWER = re.compile(r"answer\s*[:\-]\s*(.*)", re.IGNORECASE)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Label(_Strict):
    name: str = Field(min_length=1)
    aliases: list[str] = Field(default_factory=list, description="other words that mean this label")
    value: float = Field(0.0, description="numeric value for the soft score (e.g. bullish +1, bearish -1)")


class Exemplar(_Strict):
    text: str
    label: str
    rationale: str | None = None


class Task(_Strict):
    name: str
    instruction: str
    labels: list[Label] = Field(min_length=2)
    exemplars: list[Exemplar] = Field(default_factory=list)
    input_name: str = Field("Text", description="what the prompt calls an input, e.g. 'Post' or 'Review'")

    @model_validator(mode="after")
    def _consistent(self) -> Task:
        words: dict[str, str] = {}
        for label in self.labels:
            for w in [label.name, *label.aliases]:
                key = _norm(w)
                if key in words and words[key] != label.name:
                    raise ValueError(f"{w!r} names both {words[key]!r} and {label.name!r}")
                words[key] = label.name
        names = [label.name for label in self.labels]
        for ex in self.exemplars:
            if ex.label not in names:
                raise ValueError(f"exemplar label {ex.label!r} is not one of {names}")
        return self

    @property
    def names(self) -> list[str]:
        return [label.name for label in self.labels]

    @property
    def values(self) -> dict[str, float]:
        return {label.name: label.value for label in self.labels}

    # --- prompts -----------------------------------------------------------------------------
    def messages(self, text: str, mode: Mode) -> Messages:
        """The chat: instruction (system), the exemplars as user/assistant turns, then the input."""
        choices = ", ".join(self.names)
        if mode == "cot":
            how = (
                "Think step by step in one or two sentences, then end with a line 'Answer: <label>', "
                f"<label> one of: {choices}."
            )
        else:
            how = f"Reply with a line 'Answer: <label>', <label> one of: {choices}."
        chat = [{"role": "system", "content": f"{self.instruction.strip()} {how}"}]
        for ex in self.exemplars:
            chat.append({"role": "user", "content": f"{self.input_name}: {ex.text}"})
            reasoning = f"{ex.rationale.strip()}\n" if mode == "cot" and ex.rationale else ""
            chat.append({"role": "assistant", "content": f"{reasoning}Answer: {ex.label}"})
        chat.append({"role": "user", "content": f"{self.input_name}: {text}"})
        return chat

    # --- parsing -----------------------------------------------------------------------------
    def parse(self, answer: str) -> str | None:
        """The one label an answer gives, or None when it names none or several (never a guess).

        Looks after the last 'Answer:' when there is one, else at the whole reply; matches label
        names and aliases as whole words, case-insensitively.
        """
        found = ANSWER.findall(answer)
        part = found[-1] if found else answer
        named = {label.name for label in self.labels if any(_mentions(part, w) for w in [label.name, *label.aliases])}
        return named.pop() if len(named) == 1 else None


def _norm(word: str) -> str:
    return " ".join(word.lower().split())


def _mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(_norm(word))}(?![\w-])", _norm(text)) is not None


def prompt_hash(messages: Messages, params: dict) -> str:
    """Key of a prompt in the label store: the exact chat and the sampling parameters."""
    blob = json.dumps({"messages": messages, "params": params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def load_task(path: str | Path) -> Task:
    """Read a task YAML; any problem is one DistillError line naming the file and the field."""
    p = Path(path)
    if not p.is_file():
        raise DistillError(f"task file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise DistillError(f"task file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise DistillError(f"task file {p} must hold a mapping (name, instruction, labels, exemplars)")
    try:
        return Task.model_validate(data)
    except ValidationError as e:
        first = format_errors(e).splitlines()[0].removeprefix("config error: ")
        raise DistillError(f"task file {p}: {first}") from None
