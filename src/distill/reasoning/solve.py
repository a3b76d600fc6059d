"""Inference: every variant writes one line per call (batched greedy generation, left padding), the
calculator checks each line, and the loop stops at the final line '#### N', the stop question, or the
step limit. Socratic: the question generator asks, the answerer answers, in turn."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from distill.reasoning.formats import STOP, header
from distill.reasoning.problems import FINAL, Problem, calculate, final_answer


@dataclass
class Trace:
    problem: Problem
    text: str = ""  # everything generated after the problem line (with the role prefixes)
    tokens: int = 0  # tokens the students generated
    calls: int = 0
    done: bool = False

    @property
    def answer(self) -> float | None:
        return final_answer(self.text.replace("A: ", ""))


@dataclass
class Lm:
    """A student ready to generate: model and tokenizer (left padding, a pad token)."""

    model: torch.nn.Module
    tok: object
    newline: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        # the ids of every token that holds a newline: a row's line ends at the first one it generates
        self.newline = {i for t, i in self.tok.get_vocab().items() if "\n" in self.tok.convert_tokens_to_string([t])}


class _LineEnd:
    """generate() stopping criterion: per row, done once a newline token (or end of text) was generated."""

    def __init__(self, newline: set[int], eos: int | None, start: int) -> None:
        self.ids = torch.tensor(sorted(newline | ({eos} if eos is not None else set())))
        self.start = start

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.isin(input_ids[:, self.start :], self.ids).any(1)


@torch.no_grad()
def lines(lm: Lm, prompts: list[str], max_tokens: int, batch_size: int) -> list[tuple[str, int]]:
    """Greedy continuation of each prompt up to its first newline: (line without the newline, tokens)."""
    from transformers import StoppingCriteriaList

    out: list[tuple[str, int]] = [("", 0)] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths pad little
    device = next(lm.model.parameters()).device
    lm.model.eval()
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        enc = lm.tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        start = enc["input_ids"].shape[1]
        stop = StoppingCriteriaList([_LineEnd(lm.newline, lm.tok.eos_token_id, start)])
        gen = lm.model.generate(
            **enc,
            max_new_tokens=max_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            stopping_criteria=stop,
            pad_token_id=lm.tok.pad_token_id,
        )
        for i, row in zip(idx, gen[:, start:].tolist()):
            n = next((k + 1 for k, t in enumerate(row) if t in lm.newline or t == lm.tok.eos_token_id), len(row))
            text = lm.tok.decode(row[:n], skip_special_tokens=True)
            out[i] = (text.split("\n")[0], n)
    return out


def solve(
    problems: list[Problem],
    variant: str,
    qg: Lm,
    qa: Lm | None = None,
    *,
    max_steps: int = 8,
    max_tokens: int = 96,
    calculator: bool = True,
    batch_size: int = 16,
    desc: str | None = None,
) -> list[Trace]:
    """Each problem solved by `variant`: answer | cot (qg alone) | socratic (qg asks, qa answers; qa=None
    makes qg both, the unified model). At most `max_steps` steps (lines, or question-answer pairs)."""
    traces = [Trace(p) for p in problems]
    check = calculate if calculator else (lambda s: s)
    bar = tqdm(total=len(traces), desc=desc or f"solve {variant}", unit="problem", dynamic_ncols=True)

    def run(lm: Lm, todo: list[Trace], prefix: str) -> list[str]:
        got = lines(lm, [header(t.problem) + t.text + prefix for t in todo], max_tokens, batch_size)
        for t, (_, n) in zip(todo, got):
            t.tokens, t.calls = t.tokens + n, t.calls + 1
        return [check(line) for line, _ in got]

    def finish(t: Trace, done: bool) -> None:
        if done and not t.done:
            t.done = True
            bar.update(1)

    for step in range(max_steps + (variant == "cot")):  # CoT: max_steps lines, then the final line
        todo = [t for t in traces if not t.done]
        if not todo:
            break
        if variant in ("answer", "cot"):
            for t, line in zip(todo, run(qg, todo, "")):
                t.text += line + "\n"
                finish(t, variant == "answer" or line.strip().startswith(FINAL) or step == max_steps)
            continue
        for t, q in zip(todo, run(qg, todo, "Q:")):
            t.text += f"Q:{q}\n"
        for t, a in zip(todo, run(qa or qg, todo, "A:")):
            t.text += f"A:{a}\n"
            asked_last = t.text.rsplit("Q:", 1)[-1].split("\n")[0].strip() == STOP
            finish(t, asked_last or a.strip().startswith(FINAL) or step + 1 >= max_steps)
    for t in traces:
        finish(t, True)
    bar.close()
    return traces
