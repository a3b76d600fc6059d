"""Inference: every variant writes one line per call (batched greedy generation, left padding), the
calculator checks each line, and the loop stops at the final line '#### N', the stop question, or the
step limit. Socratic: the question generator asks, the answerer answers, in turn."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

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

    model: Any  # a Hugging Face causal LM
    tok: Any  # its tokenizer
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


class Session:
    """One model's key/value cache over a batch of problems, kept across the calls of the loop: each call feeds
    only the text a row gained since the last (the checked line and the next prefix), never the problem again.

    Rows gain texts of different lengths, so each call's new tokens are right-aligned and padding sits between
    calls as masked slots; positions count real tokens only (the mask's running sum), as left padding does in
    `generate`, so a row reads the same positions as it would alone. The generated tokens are cropped after
    each call: the calculator may rewrite the line, which is then fed back as text."""

    def __init__(self, lm: Lm, rows: int) -> None:
        self.lm, self.fed = lm, [""] * rows
        self.cache: Any = None  # the model's key/value cache (a transformers Cache)
        self.mask: Any = None  # its attention mask (a tensor once the first call ran)
        self.rows = list(range(rows))  # which of the batch's problems the cache's rows are
        self.key = ""  # the name of the model's cache argument, read at the first call

    def keep(self, rows: list[int]) -> None:
        """Keep only these problems of the batch (a subset of the current rows, in order): the others are done."""
        if rows == self.rows:
            return
        at = [self.rows.index(r) for r in rows]
        if self.cache is not None:
            self.cache.batch_select_indices(torch.tensor(at))
            self.mask = self.mask[at]
        self.rows, self.fed = rows, [self.fed[i] for i in at]

    @torch.no_grad()
    def lines(self, prompts: list[str], max_tokens: int) -> list[tuple[str, int]]:
        lm, device = self.lm, next(self.lm.model.parameters()).device
        if self.cache is None:  # transformers 5 names the cache argument `cache`, 4.x `past_key_values`
            self.key = "cache" if "cache" in inspect.signature(lm.model.forward).parameters else "past_key_values"
        assert len(prompts) == len(self.fed) and all(p.startswith(f) for p, f in zip(prompts, self.fed))
        new = lm.tok([p[len(f) :] for p, f in zip(prompts, self.fed)], add_special_tokens=False)["input_ids"]
        width = max(map(len, new))
        ids = torch.full((len(new), width), lm.tok.pad_token_id, dtype=torch.long)
        block = torch.zeros((len(new), width), dtype=torch.long)
        for i, row in enumerate(new):
            ids[i, width - len(row) :], block[i, width - len(row) :] = torch.tensor(row), 1
        mask = block if self.mask is None else torch.cat([self.mask, block], 1)
        start = mask.shape[1]
        done = torch.zeros(len(new), dtype=torch.bool)
        stop = torch.tensor(sorted(lm.newline | {lm.tok.eos_token_id} - {None}))
        out: list[list[int]] = [[] for _ in new]
        for _ in range(max_tokens):
            logits, self.cache = _step(lm.model, ids.to(device), mask.to(device), width, self.cache, self.key)
            nxt = logits.argmax(-1).cpu()
            for i in (~done).nonzero().flatten().tolist():
                out[i].append(int(nxt[i]))
            done |= torch.isin(nxt, stop)
            if done.all():
                break
            ids, width = nxt[:, None], 1
            mask = torch.cat([mask, torch.ones((len(new), 1), dtype=torch.long)], 1)
        self.cache.crop(start - self.cache.get_seq_length())  # a negative count: the tokens to drop
        self.mask, self.fed = mask[:, :start], list(prompts)
        return [(lm.tok.decode(row, skip_special_tokens=True).split("\n")[0], len(row)) for row in out]


def _step(model, ids: torch.Tensor, mask: torch.Tensor, width: int, cache, key: str) -> tuple[torch.Tensor, object]:
    """The next-token logits after `ids` (the last `width` slots of `mask`), and the grown cache (passed as `key`)."""
    positions = (mask.cumsum(1) - 1).clamp(min=0)[:, -width:]
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1, **{key: cache}
    )
    return out.logits[:, -1].float(), getattr(out, key)


@torch.no_grad()
def lines(
    lm: Lm, prompts: list[str], max_tokens: int, batch_size: int, session: Session | None = None
) -> list[tuple[str, int]]:
    """Greedy continuation of each prompt up to its first newline: (line without the newline, tokens). With a
    session, the prompts are its rows' texts so far, and only what they gained since its last call is read."""
    from transformers import StoppingCriteriaList

    if session is not None:
        return session.lines(prompts, max_tokens)

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
    cache: bool = True,
    desc: str | None = None,
) -> list[Trace]:
    """Each problem solved by `variant`: answer | cot (qg alone) | socratic (qg asks, qa answers; qa=None
    makes qg both, the unified model). At most `max_steps` steps (lines, or question-answer pairs). Problems
    go in batches of `batch_size`, each solved to the end; `cache` keeps each model's key/value cache across
    the calls of a batch (else every call reads the problem and every earlier line again)."""
    traces = [Trace(p) for p in problems]
    order = sorted(traces, key=lambda t: len(t.problem.question))  # similar lengths pad little
    bar = tqdm(total=len(traces), desc=desc or f"solve {variant}", unit="problem", dynamic_ncols=True)
    for b in range(0, len(order), batch_size):
        _solve_batch(order[b : b + batch_size], variant, qg, qa, max_steps, max_tokens, calculator, cache, bar)
    bar.close()
    return traces


def _solve_batch(traces, variant, qg, qa, max_steps, max_tokens, calculator, cache, bar) -> None:
    check = calculate if calculator else (lambda s: s)
    sessions = {id(lm): Session(lm, len(traces)) for lm in {id(qg): qg, id(qa or qg): qa or qg}.values()}
    index = {id(t): i for i, t in enumerate(traces)}

    def run(lm: Lm, todo: list[Trace], prefix: str) -> list[str]:
        session = sessions[id(lm)] if cache else None
        if session is not None:
            session.keep([index[id(t)] for t in todo])
        got = lines(lm, [header(t.problem) + t.text + prefix for t in todo], max_tokens, len(traces), session)
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
