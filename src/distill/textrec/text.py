"""Words as token ids and back, and the two metrics of text recognition: word accuracy and character
error rate (edit distance over the true characters)."""

from __future__ import annotations

import torch
from torch import Tensor

from distill.errors import DistillError
from distill.models.recognizer import END

DIGITS = "0123456789"
LOWERCASE = "abcdefghijklmnopqrstuvwxyz"


class Charset:
    """Characters 1..n (0 is the end token, n + 1 the start token)."""

    def __init__(self, chars: str) -> None:
        if len(set(chars)) != len(chars) or not chars:
            raise DistillError(f"the character set must be non-empty without repeats, got {chars!r}")
        self.chars = chars
        self.index = {c: i + 1 for i, c in enumerate(chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def check(self, text: str, where: str, max_length: int) -> None:
        bad = sorted({c for c in text if c not in self.index})
        if bad:
            raise DistillError(
                f"{where}: label {text!r} has characters outside the character set: {''.join(bad)!r} "
                f"(set data.charset to include them)"
            )
        if not text or len(text) > max_length:
            raise DistillError(f"{where}: label {text!r} must have 1 to {max_length} characters (data.max_length)")

    def encode(self, texts: list[str], max_length: int) -> dict[str, Tensor]:
        """Teacher-forcing tensors, (N, max_length + 1) each: `labels` (characters then the end token),
        `decoder_input_ids` (the start token then the characters), `mask` (the steps that count)."""
        n, steps = len(texts), max_length + 1
        labels = torch.full((n, steps), END, dtype=torch.long)
        for i, text in enumerate(texts):
            labels[i, : len(text)] = torch.tensor([self.index[c] for c in text], dtype=torch.long)
        lengths = torch.tensor([len(t) for t in texts])
        start = torch.full((n, 1), len(self) + 1, dtype=torch.long)
        mask = torch.arange(steps)[None, :] <= lengths[:, None]  # the characters and the end token
        return {"labels": labels, "decoder_input_ids": torch.cat([start, labels[:, :-1]], 1), "mask": mask}

    def decode(self, ids: Tensor) -> list[str]:
        """Greedy outputs (N, T) to strings, cut at the first end token."""
        out = []
        for row in ids.tolist():
            chars = []
            for i in row:
                if i == END or i > len(self):
                    break
                chars.append(self.chars[i - 1])
            out.append("".join(chars))
        return out


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions each cost 1)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def word_accuracy(predicted: list[str], truth: list[str]) -> float:
    return sum(p == t for p, t in zip(predicted, truth)) / max(len(truth), 1)


def character_error_rate(predicted: list[str], truth: list[str]) -> float:
    """Total edits over total true characters (the corpus-level CER, not a mean of per-word rates)."""
    edits = sum(edit_distance(p, t) for p, t in zip(predicted, truth))
    return edits / max(sum(len(t) for t in truth), 1)
