"""The text each student is trained on, and which of its tokens are targets.

Every variant writes a problem the same way and ends in the same final line, so one parser scores all:

    answer     Problem: ...            cot   Problem: ...        socratic   Problem: ...
               #### 72                       Natalia sold ...               Q: How many clips ... in May?
                                             Natalia sold ...               A: Natalia sold 48/2 = 24 clips ...
                                             #### 72                        ...
                                                                            Q: What is the final answer?
                                                                            A: #### 72

The Socratic students read the same sequence and differ in their targets: the question generator (QG)
learns the Q lines (the last one, the stop question, ends its turn), the answerer (QA) the A lines, and
the unified model both. With a causal LM, teacher-forced loss on one sequence per problem equals the
loss over every step's (context -> next sub-question) example, at a fraction of the tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill.errors import DistillError
from distill.reasoning.annotate import Decomposition
from distill.reasoning.problems import FINAL, Problem, fmt

STOP = "What is the final answer?"  # the question generator's stop marker
VARIANTS = ("answer", "cot", "qg", "qa", "unified")
Segments = list[tuple[str, bool]]  # (text, is it a target)


def header(problem: Problem) -> str:
    return f"Problem: {problem.question}\n"


def segments(d: Decomposition, variant: str) -> Segments:
    p = d.problem
    final = f"{FINAL} {fmt(p.answer)}\n"
    if variant == "answer":
        return [(header(p), False), (final, True)]
    if variant == "cot":
        return [(header(p), False), *[(f"{a}\n", True) for _, a in d.pairs], (final, True)]
    q_target, a_target = variant in ("qg", "unified"), variant in ("qa", "unified")
    out: Segments = [(header(p), False)]
    for q, a in [*d.pairs, (STOP, final.strip())]:
        out += [("Q:", False), (f" {q}\n", q_target), ("A:", False), (f" {a}\n", a_target)]
    return out


def encode(tok, decomps: list[Decomposition], variant: str, max_length: int) -> dict[str, Tensor]:
    """{"input_ids", "attention_mask", "labels"}: the whole text tokenized at once (as it is at inference),
    labels the next token where that token starts inside a target span, -100 elsewhere; right-padded."""
    rows = []
    for d in decomps:
        segs = segments(d, variant)
        text = "".join(s for s, _ in segs)
        spans, at = [], 0
        for s, target in segs:
            if target:
                spans.append((at, at + len(s)))
            at += len(s)
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"][:max_length]
        is_target = [any(a <= start < b for a, b in spans) for start, _ in enc["offset_mapping"][: len(ids)]]
        rows.append((ids, is_target))
    if not rows:
        raise DistillError(f"no problems to train the {variant} student on")
    n = max(len(ids) for ids, _ in rows) - 1
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = {
        k: torch.full((len(rows), n), v, dtype=torch.long)
        for k, v in [("input_ids", pad), ("attention_mask", 0), ("labels", -100)]
    }
    for i, (ids, is_target) in enumerate(rows):
        m = len(ids) - 1
        out["input_ids"][i, :m] = torch.tensor(ids[:-1])
        out["attention_mask"][i, :m] = 1
        out["labels"][i, :m] = torch.tensor([t if keep else -100 for t, keep in zip(ids[1:], is_target[1:])])
    return out
